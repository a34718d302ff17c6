"""Training one experiment in a run folder, resuming from its checkpoint: what a sweep and the comparison
suite do for each of their runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from diffbook.experiments.experiment import Experiment, Model
from diffbook.profiles import seed_everything


def train_run(experiment: Experiment, run_dir: Path, progress: bool = True, desc: str = "train") -> tuple[Model, float]:
    """Train ``experiment``'s model in ``run_dir`` (resuming from its checkpoint; a finished run is only loaded).

    Returns the model to sample from (the EMA copy when there is one), in eval mode, and the seconds spent.
    """
    from diffbook.train import Trainer  # the trainer pulls in distributed set-up that scoring does not need

    start = time.perf_counter()
    seed_everything(experiment.train.seed)  # the initial weights differ by seed, not with what ran before
    model = experiment.initial_model()
    objective = experiment.build_objective(model)
    dataset = experiment.build_dataset()
    trainer = Trainer(
        model, objective, dataset, experiment.train, run_dir, progress=progress, desc=desc, record=experiment.record()
    )
    trainer.fit()
    trained = cast(Model, trainer.ema.model) if trainer.ema is not None else model
    return trained.eval(), time.perf_counter() - start
