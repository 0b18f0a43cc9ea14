"""The `sketchsearch` command. Command modules register on the app; imported here explicitly."""

from __future__ import annotations

import importlib

# Modules whose commands are plain decorators on `app` / `data_app`.
from . import core, index  # noqa: F401
from .app import app, data_app

# Modules that expose `register(app)`, owned by the method / service code they drive.
_MODULES = (("gan", app), ("serve", app), ("evaluate", app), ("demo", app), ("download", data_app), ("pages", app))
for _mod, _target in _MODULES:
    try:
        _m = importlib.import_module(f"sketchsearch.cli.{_mod}")
    except ModuleNotFoundError as e:  # pragma: no cover - a module not written yet
        if e.name != f"sketchsearch.cli.{_mod}":
            raise
        continue
    if hasattr(_m, "register"):
        _m.register(_target)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``main([...])`` runs the CLI in-process (tests)."""
    app(args=argv, prog_name="sketchsearch")


__all__ = ["app", "main"]
