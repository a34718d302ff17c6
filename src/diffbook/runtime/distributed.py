"""One process or many under ``torchrun``: who this process is, where it computes, and how ranks agree.

Without ``torchrun`` every helper here is a no-op on a single-process context, so the training code has one
path whatever the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run: ``rank`` of ``world_size``, its GPU index on the node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and draws progress bars."""
        return self.rank == 0


def init_distributed(device_preference: str | torch.device | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` set up (nccl on CUDA, gloo on CPU) and pick this rank's device.

    Without ``torchrun`` (no ``RANK`` in the environment) this starts nothing and returns a single-process
    context on ``device_preference``, or on CUDA when there is one. Calling it again returns the same context.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = _pick_device(device_preference, local_rank)
    if "RANK" in os.environ and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return current_context(device)


def current_context(device: torch.device) -> DistributedContext:
    """The context of this process, computing on ``device``: rank 0 of 1 unless a process group is running."""
    if not dist.is_initialized():
        return DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        device=device,
    )


def cleanup() -> None:
    """Leave the process group, if one was joined, so that ``torchrun`` sees a clean exit."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, context: DistributedContext) -> nn.Module:
    """``module`` in DistributedDataParallel when there are several ranks, as it is otherwise.

    DDP broadcasts rank 0's parameters and buffers when it wraps, so every rank starts from the same weights.
    """
    if context.world_size == 1:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def all_reduce_mean(values: Tensor) -> Tensor:
    """The mean of ``values`` (any shape) over ranks, elementwise; ``values`` itself when there is one rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor: (B, ...)`` concatenated in rank order, ``(W B, ...)``; ``tensor`` itself on one rank.

    Differentiable for this rank's part: every rank computes the same loss of the gathered batch, and the
    gradient of its own rows is scaled by ``W``, so that the average DistributedDataParallel takes over ranks
    is the gradient one process computes on the whole batch. All ranks must pass the same shape.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows] * dist.get_world_size()


def barrier() -> None:
    """Wait until every rank gets here; nothing to wait for with one process."""
    if dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` when there is one rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _pick_device(preference: str | torch.device | None, local_rank: int) -> torch.device:
    if preference is not None:
        device = torch.device(preference)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and device.index is None:
        # Under torchrun each process on a node owns the GPU its local rank names.
        device = torch.device("cuda", local_rank)
    return device
