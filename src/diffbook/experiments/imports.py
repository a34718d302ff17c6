"""Released weights as diffbook checkpoints: what ``python -m diffbook import RELEASE FILE`` runs.

A release's converter (:mod:`diffbook.nets.convert_dit`, :mod:`~diffbook.nets.convert_diffit`) maps its keys
strictly, so a missing or unexpected key is an error that names it, into the network of a shipped config. The
result is written as a checkpoint at step 0 that carries that config and the release's licence: ``sample --ckpt``
needs nothing else, and a run fine-tuned from it (``network.init_from``) records the licence again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from diffbook.experiments.experiment import Experiment
from diffbook.nets.releases import RELEASES, Release


@dataclass(frozen=True)
class Importer:
    """How one release becomes a checkpoint: the network kind its weights fill, the shipped config used unless
    ``--config`` names another (one of the release's resolutions), and its converter ``load(path, net_config)``."""

    network_kind: str
    config: str
    load: Callable[[Path, Any], nn.Module]


def _load_dit(path: Path, config: Any) -> nn.Module:
    from diffbook.nets.convert_dit import load_released_dit

    return load_released_dit(path, config)


def _load_diffit(path: Path, config: Any) -> nn.Module:
    from diffbook.nets.convert_diffit import load_released_diffit

    return load_released_diffit(path, config)


def _load_bcm(path: Path, config: Any) -> nn.Module:
    from diffbook.nets.convert_bcm import load_released_bcm

    return load_released_bcm(path, config)


IMPORTERS: dict[str, Importer] = {
    "dit": Importer("dit", "imagenet256/dit", _load_dit),
    "diffit": Importer("diffit", "imagenet256/diffit", _load_diffit),
    "bcm": Importer("adm", "imagenet64/bcm", _load_bcm),
}


def default_import_path(config: str) -> Path:
    """``runs/<dataset>-<method>-release/checkpoint.pt``: apart from ``runs/<dataset>-<method>``, where training
    the same config from scratch would otherwise resume from the release."""
    path = Path(config)
    return Path("runs") / f"{path.parent.name}-{path.stem}-release" / "checkpoint.pt"


def import_release(
    name: str,
    weights: str | Path,
    out: str | Path | None = None,
    config: str | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Path, Release]:
    """Convert the release ``name``'s file ``weights`` into a checkpoint at ``out`` (default
    :func:`default_import_path`) for ``config`` (default: the importer's); returns the path and the release."""
    from diffbook.diffusion import Denoiser
    from diffbook.train import save_checkpoint

    if name not in IMPORTERS:
        raise ValueError(f"unknown release {name!r}; choose from {', '.join(IMPORTERS)}")
    importer, release = IMPORTERS[name], RELEASES[name]
    config = config or importer.config
    experiment = Experiment.load(config, list(overrides))
    if experiment.network.kind != importer.network_kind:
        raise ValueError(
            f"{config} has network.kind {experiment.network.kind!r}; the {release.name} weights fill a "
            f"{importer.network_kind!r} network (e.g. --config {importer.config})"
        )
    model = Denoiser(importer.load(Path(weights), experiment.network.config()), experiment.build_process())
    path = Path(out) if out is not None else default_import_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": 0, "model": model.state_dict(), "ema": None, "config": experiment.config}
    save_checkpoint(state | {"licence": f"{release.licence} ({release.source})"}, path)
    return path, release
