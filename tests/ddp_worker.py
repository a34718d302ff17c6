"""A tiny deterministic training run: under ``torchrun`` the DDP side of ``test_trainer``'s comparison.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py RUN_DIR

The objective draws no noise, so each rank's loss depends on its share of the batch alone, and one process
with the same global batch must end with the same weights, up to the order in which all-reduce sums.
"""

import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from diffbook.train import TrainConfig, Trainer, cleanup, init_distributed

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


def fit(run_dir: str | Path) -> None:
    """Train the same small MLP on the same 40 points, whatever the number of processes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
    # 40 items: 5 global batches of 8 per epoch, so 12 steps cross two epoch boundaries.
    data = TensorDataset(torch.randn(40, 4, generator=torch.Generator().manual_seed(1)))
    Trainer(model, regression_loss, data, CONFIG, run_dir, progress=False).fit()


if __name__ == "__main__":
    init_distributed(device_preference="cpu")
    try:
        fit(sys.argv[1])
    finally:
        cleanup()
