"""Reading experiment configs: YAML files in the package, ``configs/<dataset>/<method>.yaml``, or any path,
with ``key.sub=value`` overrides. What the sections mean and how they are checked is
:class:`diffbook.experiments.Experiment`'s business; this module only reads.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

Config = dict[str, Any]


class _Loader(yaml.SafeLoader):
    """A safe loader that reads ``1e-3`` as a float: PyYAML follows YAML 1.1, where a float needs a dot."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?[\d_]*(?:[eE][-+]?\d+)?|\.\d[\d_]*(?:[eE][-+]?\d+)?|\.inf|\.Inf|\.INF|\.nan)$"),
    list("-+0123456789."),
)  # Appended after the int resolver, which PyYAML tries first, so "3" stays an int.


def parse_value(text: str) -> Any:
    """A YAML scalar or flow collection: ``3`` -> int, ``1e-3`` -> float, ``null`` -> None, ``[1, 2]`` -> list."""
    return _load_yaml(text, f"the value {text!r}")


def _load_yaml(text: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"{what} is not valid YAML: {getattr(error, 'problem', None) or error}{where}") from None


def _configs_root() -> Any:
    return resources.files("diffbook") / "configs"


def available_configs() -> list[str]:
    """The shipped config names, ``<dataset>/<method>``, sorted."""
    return sorted(
        f"{dataset.name}/{path.name.removesuffix('.yaml')}"
        for dataset in _configs_root().iterdir()
        if dataset.is_dir()
        for path in dataset.iterdir()
        if path.name.endswith(".yaml")
    )


def _read_config_text(name_or_path: str | Path) -> str:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} not found")
        return path.read_text()
    name = str(name_or_path)
    if name not in available_configs():
        close = difflib.get_close_matches(name, available_configs(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown config {name!r}.{hint} Shipped configs: {', '.join(available_configs())}.")
    return (_configs_root() / f"{name}.yaml").read_text()


def read_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """The config ``name`` (e.g. ``"digits/edm"``) or YAML file as nested dicts, ``key.sub=value`` overrides
    applied in order; values are parsed as YAML (``train.lr=1e-3`` is a float, ``train.grad_clip=null`` None)."""
    cfg = _load_yaml(_read_config_text(name_or_path), f"config {str(name_or_path)!r}") or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config {str(name_or_path)!r} must be a mapping of sections, got {cfg!r}")
    for override in overrides:
        apply_override(cfg, override)
    return cfg


def apply_override(cfg: Config, override: str) -> None:
    """Set ``cfg[a][b] = value`` in place for ``override = "a.b=value"``; missing sections are created."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ValueError(f"an override is key.sub=value, got {override!r}")
    *parents, leaf = key.strip().split(".")
    node = cfg
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {key!r}: {'.'.join(parents[: depth + 1])!r} is a value, not a section")
    node[leaf] = parse_value(text)


def to_yaml(cfg: Config) -> str:
    """The config as YAML, in its section order."""
    return yaml.safe_dump(cfg, sort_keys=False, width=120)
