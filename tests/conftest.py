"""Test-session settings shared by every test module."""

import os

import torch

# pytest-xdist runs one worker per core; torch's own thread pool on top would oversubscribe the cores.
if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)
