"""The book's tools, which the package's models never need: the chapters' interactive explorers, and the
notebook runner with the exercises' students' copies and grading. They need the ``book`` extra."""
