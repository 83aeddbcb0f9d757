"""Read-only configs: once resolved and validated, a run's config is never changed again.

The schema's dataclasses cannot be declared `frozen=True`: OmegaConf would then refuse to merge YAML parts and
overrides onto them. They derive from `Freezable` instead, settable while they are being built and merged, and
`frozen(cfg)` returns a read-only deep copy: setting or deleting a field of it, or of any section inside it,
raises dataclasses.FrozenInstanceError. A changed config is a new one, made with dataclasses.replace (whose
copy is settable again until it too is frozen).
"""

from __future__ import annotations

import copy
from dataclasses import FrozenInstanceError, fields, is_dataclass
from typing import TypeVar

_FROZEN = "_frozen"  # an instance attribute, not a dataclass field: OmegaConf and asdict never see it

T = TypeVar("T")


class Freezable:
    """Base of the config dataclasses: attributes settable until `frozen()` marks the instance read-only."""

    def __setattr__(self, name: str, value) -> None:
        self._refuse_if_frozen(name)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._refuse_if_frozen(name)
        object.__delattr__(self, name)

    def _refuse_if_frozen(self, name: str) -> None:
        if self.__dict__.get(_FROZEN):
            raise FrozenInstanceError(f"cannot set {type(self).__name__}.{name}: the config is frozen once resolved "
                                      "and validated; make a changed copy with dataclasses.replace")


def frozen(cfg: T) -> T:
    """A read-only deep copy of the config dataclass `cfg` (every nested section read-only too)."""
    copied = copy.deepcopy(cfg)
    _freeze(copied)
    return copied


def is_frozen(cfg) -> bool:
    return bool(getattr(cfg, "__dict__", {}).get(_FROZEN))


def _freeze(node) -> None:
    if not is_dataclass(node) or isinstance(node, type):
        return
    for f in fields(node):
        _freeze(getattr(node, f.name))
    if isinstance(node, Freezable):
        object.__setattr__(node, _FROZEN, True)
