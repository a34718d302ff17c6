"""How the benchmarks measure: wall-clock time, peak memory, counted FLOPs and the profiler's top operators.

Timing on a shared machine is noisy, so candidates are timed in turns (round after round, each candidate once
per round) and the median of the rounds is reported with its spread: a change in the machine's load then hits
every candidate alike. CUDA runs asynchronously, so every timed call ends with a synchronisation.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock reads the work's end (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    """``"NVIDIA H200"`` or ``"x86_64 CPU, 2 cores, 2 torch threads"``: what a results table names."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


@dataclass(frozen=True)
class Timing:
    """Seconds per call over the timed rounds."""

    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """Half the interquartile range relative to the median: the run-to-run noise, as a fraction."""
        if len(self.seconds) < 4:
            return (max(self.seconds) - min(self.seconds)) / 2 / self.median
        low, _, high = statistics.quantiles(self.seconds, n=4)
        return (high - low) / 2 / self.median


def time_in_turns(
    candidates: Mapping[str, Callable[[], object]], device: torch.device, warmup: int = 1, rounds: int = 5
) -> dict[str, Timing]:
    """Seconds per call of each candidate, by name: ``warmup`` untimed rounds, then ``rounds`` timed ones in which
    every candidate runs once, in the order given and then reversed, round after round (A B, B A, A B, ...), so
    that going first or last favours none of them."""
    if rounds < 1:
        raise ValueError(f"need at least one timed round, got {rounds}")
    for _ in range(warmup):
        for work in candidates.values():
            work()
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(rounds):
        order = list(candidates.items())
        for name, work in order if round_index % 2 == 0 else reversed(order):
            start = time.perf_counter()
            work()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(values)) for name, values in seconds.items()}


def _status_mib(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status)[1]) / 1024


def _release_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's ``malloc_trim``), so that the
    resident set is what is in use and the next peak above it is what new work needs."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the peak then counts reused memory as new
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory in MiB above the level at :meth:`reset`: CUDA's allocator, or the process's resident set.

    The CPU peak is Linux's ``VmHWM``, reset through ``/proc/self/clear_refs`` after freed memory has been given
    back (:func:`_release_freed_memory`).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            _release_freed_memory()
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
            self.base = _status_mib("VmRSS")

    def peak(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.base
        return _status_mib("VmHWM") - self.base


def peak_memory_of(work: Callable[[], object], device: torch.device) -> float:
    """MiB that ``work()`` needs above what was in use before it (see :class:`PeakMemory`)."""
    memory = PeakMemory(device)
    work()
    synchronize(device)
    return memory.peak()


def peak_memory_in_turns(
    candidates: Mapping[str, Callable[[], object]], device: torch.device, rounds: int = 2
) -> dict[str, float]:
    """The least of ``rounds`` :func:`peak_memory_of` measurements of each candidate, taken in turns: whatever is
    allocated once, on a process's first call of some kind, then burdens neither side."""
    peaks: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, work in candidates.items():
            peaks[name].append(peak_memory_of(work, device))
    return {name: min(values) for name, values in peaks.items()}


def count_flops(work: Callable[[], object]) -> int:
    """FLOPs of the matrix products and convolutions that ``work()`` runs, counted by ``FlopCounterMode`` (a
    multiply-add is 2 FLOPs). Run it on the meta device to count without computing."""
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def top_operators(work: Callable[[], object], device: torch.device, rows: int = 12) -> str:
    """The torch profiler's table of the ``rows`` operators that took most time in one call of ``work()``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    work()  # warm: the first call pays for allocations and kernel selection
    synchronize(device)
    with profile(activities=activities) as profiler:
        work()
        synchronize(device)
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60)


# Dense (no sparsity) peak TFLOP/s of the tensor cores in bf16, from the vendors' data sheets (SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0, "L40S": 362.1, "L4": 121.0}


def peak_bf16_flops(device: torch.device) -> float | None:
    """The device's peak bf16 FLOP/s from :data:`PEAK_BF16_TFLOPS`; None for a CPU or an unlisted GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    matches = [tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name]
    return max(matches) * 1e12 if matches else None
