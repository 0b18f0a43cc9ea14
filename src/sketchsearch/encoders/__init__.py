"""Networks only (no training logic). Build them by name with :func:`create_encoder`.

Each encoder module registers its factories in :data:`ENCODERS` when imported; the modules are imported
explicitly by name (no import-time scanning), and one not written yet does not break the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from ..registry import Registry

ENCODERS: Registry[nn.Module] = Registry("encoder")

#: encoder modules, imported on first use of the registry (colleagues add theirs here)
_ENCODER_MODULES: list[str] = [
    "sketch_gan",
    "sketch_cnn",
    "stroke_rnn",
    "small_cnn",
    "photo_cnn",
    "heads",
    "domain_migration",
]


def _import_all() -> None:
    for mod in _ENCODER_MODULES:
        try:
            importlib.import_module(f"sketchsearch.encoders.{mod}")
        except ModuleNotFoundError as e:  # a module not written yet must not break the others
            if e.name != f"sketchsearch.encoders.{mod}":
                raise


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered network by name; ``None`` kwargs keep its defaults. Unknown name -> ValueError."""
    _import_all()
    return ENCODERS.create(name, **kwargs)


def list_encoders() -> list[str]:
    _import_all()
    return ENCODERS.names()


__all__ = ["ENCODERS", "create_encoder", "list_encoders"]
