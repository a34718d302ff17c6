"""Tiny deterministic training runs: under ``torchrun`` the DDP side of the one-process comparisons.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py RUN_DIR [two_player]

The objectives draw no noise, so each rank's loss depends on the batch alone, and one process with the same
global batch must end with the same weights, up to the order in which all-reduce sums. ``two_player`` trains
the regression with SADM's structure term and its encoder, whose structure spans the global batch.
"""

import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from diffbook.objectives import SADMLoss, structure_encoder
from diffbook.runtime import cleanup, init_distributed
from diffbook.train import TrainConfig, Trainer

CONFIG = TrainConfig(
    steps=12,
    batch_size=8,
    lr=1e-2,
    warmup_steps=3,
    grad_clip=1.0,
    ema_halflife_images=64,
    log_every=4,
    checkpoint_every=6,
)


def regression_loss(model: nn.Module, batch: list[Tensor]) -> dict[str, Tensor]:
    """MSE of the model's output against its input rotated by one coordinate: ``batch = [x: (B, 4)]``."""
    (x,) = batch
    return {"loss": (model(x) - x.roll(1, dims=1)).square().mean()}


def regression_prediction(model: nn.Module, x: Tensor, generator=None) -> dict[str, Tensor]:
    """The regression as a base objective for SADM: the model's output is the prediction ``x0_pred``."""
    prediction = model(x)
    loss = (prediction - x.roll(1, dims=1)).square().mean()
    return {"loss": loss, "x0_pred": prediction, "sigma": torch.ones(len(x))}


def fit(run_dir: str | Path, two_player: bool = False) -> None:
    """Train the same small MLP on the same 40 points, whatever the number of processes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
    # 40 items: 5 global batches of 8 per epoch, so 12 steps cross two epoch boundaries.
    points = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    if two_player:
        encoder = structure_encoder("points", (4,), width=16, feature_dim=4)
        objective = SADMLoss(encoder, weight=1.0, adversary_lr=1e-2, base=regression_prediction)
        Trainer(model, objective, points, CONFIG, run_dir, progress=False).fit()
    else:
        Trainer(model, regression_loss, TensorDataset(points), CONFIG, run_dir, progress=False).fit()


if __name__ == "__main__":
    init_distributed(device_preference="cpu")
    try:
        fit(sys.argv[1], two_player=sys.argv[2:] == ["two_player"])
    finally:
        cleanup()
