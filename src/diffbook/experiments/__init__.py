"""Experiments: a run built once from its resolved config (:class:`Experiment`), and what is made of many runs:
sampling to files, sweeps, the comparison suite, their process pool, scoring and reports."""

from diffbook.experiments.experiment import SECTIONS, Experiment, run_config

__all__ = ["SECTIONS", "Experiment", "run_config"]
