"""Command-line scripts for the full-scale settings that need extra dependencies (``pip install diffbook[sd]``)."""
