"""What every layer may use and none owns: the process group under ``torchrun`` and progress bars."""

from diffbook.runtime.distributed import DistributedContext, barrier, cleanup, init_distributed
from diffbook.runtime.progress import progress_bar

__all__ = ["DistributedContext", "barrier", "cleanup", "init_distributed", "progress_bar"]
