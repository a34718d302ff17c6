"""Typed config sections: each kind of a layer (an objective, a network family, a sampler, a dataset) declares
the dataclass of the options it takes, and a :class:`Registry` maps its ``kind`` to that dataclass and its builder.

A section is validated by its dataclass alone: an unknown key is an error naming the closest valid ones, and a
value of the wrong type an error naming the key, the type it needs and the value it got.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast

Options = TypeVar("Options")
Product = TypeVar("Product")


def unknown_key_error(key: str, allowed: typing.Sequence[str], where: str) -> ValueError:
    """The error for ``key`` in the section ``where`` (dotted, ``""`` at the top), with the closest valid keys."""
    prefix = f"{where}." if where else ""
    close = difflib.get_close_matches(str(key), allowed, n=3, cutoff=0.5) or list(allowed)
    return ValueError(
        f"unknown config key {prefix + str(key)!r}; closest valid keys: {', '.join(prefix + k for k in close)}"
    )


def check_keys(mapping: Mapping[str, Any], allowed: typing.Sequence[str], where: str) -> None:
    """Raise :func:`unknown_key_error` for the first key of ``mapping`` not in ``allowed``."""
    for key in mapping:
        if key not in allowed:
            raise unknown_key_error(key, allowed, where)


def option_names(cls: type) -> tuple[str, ...]:
    """The init fields of the dataclass ``cls``: the keys its section may hold."""
    return tuple(f.name for f in dataclasses.fields(cast(Any, cls)) if f.init)


def parse_options(cls: type[Options], mapping: Mapping[str, Any], where: str) -> Options:
    """``cls(**mapping)``, each value checked against its field's annotation; YAML lists become tuples where
    the field is a tuple (the network configs are frozen and hashable). ``where`` names the section in errors."""
    if not isinstance(mapping, Mapping):
        raise ValueError(f"config section {where!r} must be a mapping, got {mapping!r}")
    check_keys(mapping, option_names(cls), where)
    required = [f.name for f in dataclasses.fields(cast(Any, cls)) if f.init and _required(f) and f.name not in mapping]
    if required:
        raise ValueError(f"{where}.{required[0]} is required")
    hints = typing.get_type_hints(cls)
    values = {key: _checked(value, hints[key], f"{where}.{key}") for key, value in mapping.items()}
    return cls(**values)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _checked(value: Any, annotation: Any, where: str) -> Any:
    """``value`` if it is an ``annotation``, a list converted to a tuple where a tuple is wanted; else ValueError."""
    ok, converted = _conform(value, annotation)
    if not ok:
        raise ValueError(f"{where} must be {_describe(annotation)}, got {value!r}")
    return converted


def _conform(value: Any, annotation: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is object:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            ok, converted = _conform(value, option)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return value in args, value
    if annotation is type(None):
        return value is None, value
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if origin is tuple or annotation is tuple:
        return _conform_tuple(value, args)
    if origin is list:
        return isinstance(value, list | tuple), list(value) if isinstance(value, list | tuple) else value
    if origin is dict or annotation is dict:
        return isinstance(value, dict), value
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value  # an annotation this checker does not model: the class's own checks apply


def _conform_tuple(value: Any, args: tuple[Any, ...]) -> tuple[bool, Any]:
    if not isinstance(value, list | tuple):
        return False, value
    if not args or args[-1] is Ellipsis:
        item = args[0] if args else Any
        results = [_conform(v, item) for v in value]
    elif len(args) == len(value):
        results = [_conform(v, a) for v, a in zip(value, args, strict=True)]
    else:
        return False, value
    return all(ok for ok, _ in results), tuple(converted for _, converted in results)


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if annotation is type(None):
        return "null"
    if origin is tuple or origin is list:
        return "a list"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


@dataclass(frozen=True)
class Entry(Generic[Options, Product]):
    """One kind: the dataclass of its options and the function that builds from them."""

    options: type[Options]
    build: Callable[..., Product]


class Registry(Generic[Product]):
    """``kind -> Entry``: what a config section's ``kind`` (or its ``name``, for data) selects, and how it is built.

    ``section`` and ``key`` place the selector in errors (``objective`` and ``kind``). A kind registered without a
    builder is a dataclass that is its own product (``DenoisingLoss``, ``DDPM``): building it is validating it.
    """

    def __init__(self, section: str, key: str = "kind") -> None:
        self.section, self.key = section, key
        self._entries: dict[str, Entry[Any, Product]] = {}

    def register(self, kind: str, options: type, build: Callable[..., Product] | None = None) -> None:
        if kind in self._entries:
            raise ValueError(f"{self.section} {self.key} {kind!r} is registered twice")
        self._entries[kind] = Entry(options, build or _identity)

    def get(self, kind: Any, where: str | None = None) -> Entry[Any, Product]:
        """The entry of ``kind``; ``where`` is the section's place for the error, when not ``section``."""
        if kind not in self._entries:
            place = f"{where or self.section}.{self.key}"
            raise ValueError(f"{place} must be one of {', '.join(self._entries)}, got {kind!r}")
        return self._entries[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def parse(self, section: Mapping[str, Any], where: str | None = None, keep_key: bool = False) -> Any:
        """The options of the kind ``section[key]`` selects, from the rest of ``section`` (or all of it, with
        ``keep_key``: data's ``name`` is one of its options), validated."""
        if not isinstance(section, Mapping):
            raise ValueError(f"config section {where or self.section!r} must be a mapping, got {section!r}")
        entry = self.get(section.get(self.key), where)
        options = dict(section) if keep_key else {k: v for k, v in section.items() if k != self.key}
        return parse_options(entry.options, options, where or self.section)


def _identity(options: Any, *context: Any) -> Any:
    return options
