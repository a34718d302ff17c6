"""The training precisions: ``fp32``, or bf16 / fp16 autocast around the forward pass."""

from __future__ import annotations

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None for fp32. fp16 needs CUDA (and a gradient scaler)."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {', '.join(AUTOCAST_DTYPES)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs CUDA (the model is on {device}); use 'bf16' or 'fp32'")
    return AUTOCAST_DTYPES[precision]
