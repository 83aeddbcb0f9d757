"""Load an experiment: compose YAML parts, merge onto the schema, apply CLI overrides, turn errors into one line.

An experiment file may start with a `defaults:` list of other YAML files (paths relative to that file); they
are merged first, in order, then the file's own keys, then `key=value` overrides from the command line
(OmegaConf dot-list, parsed by parse_overrides). Everything lands on the dataclasses in schema.py, so a typo
fails with the key's full name and the nearest valid key.
"""

from __future__ import annotations

import difflib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from megarank.config.schema import ExperimentConfig
from megarank.errors import MegarankError


def load_config(path: str | Path, overrides: Sequence[str] = (), schema: type = ExperimentConfig):
    """The resolved, checked config (an ExperimentConfig unless another dataclass `schema` is given, such as a
    paper experiment's) for a YAML file plus dot-list overrides."""
    return to_object(compose(path, overrides, schema))


def compose(path: str | Path, overrides: Sequence[str] = (), schema: type = ExperimentConfig) -> DictConfig:
    """The merged OmegaConf tree (schema <- parts <- file <- overrides), still a DictConfig."""
    merged = OmegaConf.structured(schema)
    for part in read_with_defaults(Path(path), chain=()):
        merged = merge_checked(merged, part, schema)
    return merge_checked(merged, parse_overrides(overrides), schema) if overrides else merged


def parse_overrides(items: Sequence[str], example: str = "train.max_steps=50") -> DictConfig:
    """Command-line `key=value` items as a DictConfig (dotted keys nest, values parse as YAML: `[0, 0.1]` is a
    list), not yet checked against any schema: merge it with merge_checked. An item without '=' or with an
    empty key, or a value that does not parse, is a MegarankError naming the item (`example` shows the form)."""
    for item in items:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise MegarankError(f"override '{item}' is not key=value; write e.g. {example}")
        try:
            OmegaConf.from_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError) as err:
            raise MegarankError(f"override '{item}': {_first_line(err)}; write e.g. {example}") from None
    return OmegaConf.from_dotlist(list(items))


def to_object(cfg: DictConfig) -> ExperimentConfig:
    """Resolve interpolations and build the dataclasses (running their __post_init__ checks)."""
    try:
        return OmegaConf.to_object(cfg)
    except MegarankError:
        raise
    except OmegaConfBaseException as err:
        if isinstance(err.__cause__, MegarankError):
            raise err.__cause__ from None
        raise MegarankError(f"config error: {_first_line(err)}") from None


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def read_with_defaults(path: Path, chain: tuple[Path, ...] = ()) -> list[DictConfig]:
    """The file's `defaults:` parts (recursively) followed by the file itself, without the defaults key."""
    if not path.is_file():
        raise MegarankError(f"config file '{path}' not found; pass a YAML file such as configs/default.yaml")
    if path.resolve() in chain:
        raise MegarankError(f"config '{path}' includes itself through its defaults list")
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml.scanner errors and friends: report the file, not the parser's stack
        raise MegarankError(f"config file '{path}' is not valid YAML: {_first_line(err)}") from None
    if not isinstance(node, DictConfig):
        raise MegarankError(f"config file '{path}' must hold a mapping of sections, not a list")
    parts: list[DictConfig] = []
    defaults = node.pop("defaults", [])
    for entry in defaults:
        parts += read_with_defaults(path.parent / str(entry), chain + (path.resolve(),))
    parts.append(node)
    return parts


def merge_checked(base: DictConfig, other: DictConfig, schema: type = ExperimentConfig) -> DictConfig:
    """OmegaConf.merge with its errors as one line naming the key (and the nearest valid key of `schema`)."""
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as err:
        key = err.full_key or str(err.key)
        raise MegarankError(f"unknown config key '{key}'{_did_you_mean(key, schema)}") from None
    except ValidationError as err:
        raise MegarankError(f"config key '{err.full_key}': {_first_line(err)}") from None
    except OmegaConfBaseException as err:
        raise MegarankError(f"config error at '{getattr(err, 'full_key', '?')}': {_first_line(err)}") from None


def _did_you_mean(full_key: str, schema: type = ExperimentConfig) -> str:
    leaves = valid_keys(schema)
    candidates = sorted(set(leaves) | {k.rsplit(".", 1)[0] for k in leaves if "." in k})  # sections too
    parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
    siblings = [c for c in candidates if c.rsplit(".", 1)[0] == parent] if parent else candidates
    close = difflib.get_close_matches(full_key, siblings or candidates, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(full_key, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else "; see docs/configuration.md"


def valid_keys(cls: Any, prefix: str = "") -> list[str]:
    """Every dotted key the schema accepts, e.g. 'optim.wd_attn'."""
    keys = []
    for f in fields(cls):
        name = f"{prefix}{f.name}"
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += valid_keys(type(default), prefix=f"{name}.")
        else:
            keys.append(name)
    return keys


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
