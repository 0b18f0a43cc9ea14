"""Typed errors. Every error that reaches a user names *where* (file, record, field) and *what* was expected.

The CLI and the service catch :class:`SketchSearchError` and print its message without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class SketchSearchError(Exception):
    """Base class of every error this library raises on purpose."""


class FormatError(SketchSearchError, ValueError):
    """A record of a data file could not be read.

    ``file`` is the path, ``record`` the 1-based line / record number or key (None when the whole file
    is bad), ``reason`` says what was wrong and what was expected.
    """

    def __init__(self, file: str | Path, record: int | str | None, reason: str) -> None:
        self.file = str(file)
        self.record = record
        self.reason = reason
        where = self.file if record is None else f"{self.file}: record {record}"
        super().__init__(f"{where}: {reason}")


class InvalidSketchError(SketchSearchError, ValueError):
    """A sketch (or query) is not usable, e.g. it has no points. ``field`` names the offending field."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class IndexError_(SketchSearchError):
    """An index folder is corrupt, incomplete, or was made by another model."""


class IndexArgumentError(IndexError_, ValueError):
    """A bad argument to an index or its store: code width or dtype, ids, ``k``, items.

    ``field`` names the offending argument; the message says what is valid.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class ModelError(SketchSearchError):
    """A model artifact is missing, corrupt, or does not match the code that loads it."""


__all__ = [
    "FormatError",
    "IndexArgumentError",
    "IndexError_",
    "InvalidSketchError",
    "ModelError",
    "SketchSearchError",
]
