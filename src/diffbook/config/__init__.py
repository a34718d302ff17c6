"""Configuration, the package's foundation (it imports nothing else of it): reading YAML configs with
overrides (:mod:`~diffbook.config.load`) and the typed sections every layer declares for its kinds
(:mod:`~diffbook.config.schema`)."""

from diffbook.config.load import Config, apply_override, available_configs, parse_value, read_config, to_yaml
from diffbook.config.schema import Registry, check_keys, option_names, parse_options, unknown_key_error

__all__ = [
    "Config",
    "Registry",
    "apply_override",
    "available_configs",
    "check_keys",
    "option_names",
    "parse_options",
    "parse_value",
    "read_config",
    "to_yaml",
    "unknown_key_error",
]
