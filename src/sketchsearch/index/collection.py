"""An index's collection: the manifest's ``name``, ``slug``, ``title`` and ``description``.

``name`` is what a person calls the collection (any text, spaces allowed), ``slug`` the URL-safe id derived
from it (:func:`slugify`), ``title`` the heading to show (the name unless given), ``description`` a sentence
or two (or null). See :mod:`sketchsearch.index.store` for the folder they are saved in.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Any

from sketchsearch.errors import IndexArgumentError

__all__ = ["COLLECTION_FIELDS", "GENERIC_NAMES", "collection_fields", "default_collection_name", "slugify"]

#: The manifest's optional fields that present the collection (see the module docstring).
COLLECTION_FIELDS = ("name", "slug", "title", "description")
#: Folder names that say nothing about a collection: an index folder so called does not name it.
GENERIC_NAMES = frozenset(
    {
        "",
        "index",
        "indexes",
        "indices",
        "idx",
        "out",
        "output",
        "outputs",
        "build",
        "tmp",
        "temp",
        "new",
        "result",
        "results",
        "run",
        "runs",
        "data",
        "dataset",
        "db",
        "collection",
        "folder",
    }
)
MAX_NAME_CHARS, MAX_DESCRIPTION_CHARS, MAX_SLUG_CHARS = 200, 2000, 64


def slugify(name: str) -> str:
    """A URL-safe id for ``name``: accents dropped, lowercase ASCII letters and digits, other runs as ``-``,
    at most 64 characters (``"Merchant marks of Bristol"`` -> ``"merchant-marks-of-bristol"``). A name with
    no Latin letters or digits gets ``collection-`` and 8 hex digits of its SHA-256."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:MAX_SLUG_CHARS].rstrip("-")
    return slug or f"collection-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def _says_something(name: str) -> bool:
    """False for folder names such as ``index``, ``idx2``, ``out-1`` (:data:`GENERIC_NAMES`, digits aside)."""
    return re.sub(r"[\W_\d]+$", "", name.lower()) not in GENERIC_NAMES


def default_collection_name(out: str | Path, data: str | Path) -> str:
    """The name of a collection indexed from ``data`` into ``out`` when none is given: the index folder's
    name when it says something (not ``index``, ``idx``, ``out`` ...: :data:`GENERIC_NAMES`), else the
    data's name (a folder's name, a file's stem; ``default`` / ``kanjivg`` for the built-in sources)."""
    out_name = Path(out).resolve().name
    if _says_something(out_name):
        return out_name
    data_path = Path(data)
    if str(data) in ("default", "kanjivg"):
        return str(data)
    data_name = data_path.resolve().stem if data_path.is_file() else data_path.resolve().name
    return data_name or out_name or "collection"


def _text(value: str | None, key: str, limit: int, one_line: bool) -> str | None:
    """``value`` stripped (runs of white space as one space when ``one_line``), None when empty."""
    if value is None:
        return None
    text = " ".join(value.split()) if one_line else value.strip()
    if len(text) > limit:
        raise IndexArgumentError(f"at most {limit} characters, got {len(text)}", key)
    return text or None


def collection_fields(name: str, title: str | None = None, description: str | None = None) -> dict[str, Any]:
    """The manifest's collection fields: ``name`` and ``title`` on one line (white space runs as one space),
    the ``slug`` of the name, ``title`` defaulting to the name, ``description`` (None when empty).
    IndexArgumentError naming ``name`` / ``title`` / ``description`` for an empty name or text over its
    length limit (200 characters; description 2000)."""
    clean = _text(name, "name", MAX_NAME_CHARS, one_line=True)
    if clean is None:
        raise IndexArgumentError(f"a non-empty name is needed, got {name!r}", "name")
    return {
        "name": clean,
        "slug": slugify(clean),
        "title": _text(title, "title", MAX_NAME_CHARS, one_line=True) or clean,
        "description": _text(description, "description", MAX_DESCRIPTION_CHARS, one_line=False),
    }
