"""Performance: how the package is measured against its peers (``benchmarks/peers.py``, ``make bench``)."""

from benchmarks.perf.measure import (
    PeakMemory,
    Timing,
    count_flops,
    describe_device,
    peak_bf16_flops,
    peak_memory_in_turns,
    peak_memory_of,
    synchronize,
    time_in_turns,
    top_operators,
)

__all__ = [
    "PeakMemory",
    "Timing",
    "count_flops",
    "describe_device",
    "peak_bf16_flops",
    "peak_memory_in_turns",
    "peak_memory_of",
    "synchronize",
    "time_in_turns",
    "top_operators",
]
