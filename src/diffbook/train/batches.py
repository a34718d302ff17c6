"""The data stream of a run: endless, seeded, per-rank batches whose position is the whole of their state."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler


@dataclass
class DataPosition:
    """Where the data stream stands: the epoch, and how many of this epoch's batches were already consumed."""

    epoch: int = 0
    batch: int = 0


class EpochBatches:
    """Endless per-rank batches of a tensor's rows or a dataset's items, reshuffled every epoch.

    A ``DistributedSampler`` orders each epoch from ``(seed, epoch)`` alone; with one replica it is a seeded
    random sampler. So the position is the whole state of the stream: a resumed run skips the consumed batches
    without loading them, and ``W`` ranks drawing ``B / W`` each see between them exactly the global batches
    that one process drawing ``B`` sees. Incomplete batches are dropped.
    """

    def __init__(
        self,
        data: Tensor | Dataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        # The sampler reads nothing of its dataset but the length, which a tensor of rows has as well.
        self.sampler: DistributedSampler[int] = DistributedSampler(
            cast(Dataset, data), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        if len(self.sampler) < batch_size:
            size = len(cast(Sized, data))  # a map-style dataset: torch's Dataset declares no __len__
            raise ValueError(f"{size} samples over {world_size} process(es) make no batch of {batch_size} each")
        self.position = DataPosition()

    def __iter__(self) -> Iterator[Tensor | list]:
        while True:
            self.sampler.set_epoch(self.position.epoch)
            index_batches = list(BatchSampler(self.sampler, self.batch_size, drop_last=True))
            for batch in self._load(index_batches[self.position.batch :]):
                self.position.batch += 1
                yield batch
            self.position = DataPosition(epoch=self.position.epoch + 1)

    def _load(self, index_batches: list[list[int]]) -> Iterable[Tensor | list]:
        if isinstance(self.data, Tensor):
            return (self.data[torch.tensor(indices)] for indices in index_batches)
        # The loader draws its workers' base seed from its own generator, not from the global stream that a
        # resume restores, so starting a loader mid-epoch leaves the objective's noise as it would have been.
        generator = torch.Generator().manual_seed((self.seed + self.position.epoch) * self.world_size + self.rank)
        return DataLoader(
            self.data,
            batch_sampler=index_batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=generator,
        )


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """The share of the global ``batch_size`` that each of ``world_size`` processes draws."""
    if batch_size % world_size:
        raise ValueError(f"the global batch_size {batch_size} must be divisible by the {world_size} processes")
    return batch_size // world_size


def to_device(batch: Tensor | list | tuple, device: torch.device) -> Tensor | tuple:
    """A batch, a tensor or a tuple of tensors (a collated ``(images, labels)``), on ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    return tuple(item.to(device, non_blocking=True) for item in batch)
