"""The ``process`` section of a config: ``kind`` and that process's fields (each process is a dataclass)."""

from __future__ import annotations

from diffbook.config.schema import Registry
from diffbook.diffusion.consistency import BCMProcess
from diffbook.diffusion.ddpm import DDPM
from diffbook.diffusion.edm import EDM, VE, VP

PROCESSES = Registry[DDPM | EDM | VP | VE | BCMProcess]("process")
PROCESSES.register("ddpm", DDPM)
PROCESSES.register("edm", EDM)
PROCESSES.register("vp", VP)
PROCESSES.register("ve", VE)
PROCESSES.register("bcm", BCMProcess)
