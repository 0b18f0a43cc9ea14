"""Shared preamble of the benchmark scripts: where the data is, what ran them, how results are written.

* :data:`DATA_ROOT`: the real datasets, ``$SKETCHSEARCH_SHARED_DATA`` (the variable the tests use too), by
  default ``../shared/data`` beside the repository.
* :func:`machine_info`: CPU model, cores, platform and library versions, recorded in every result file.
* :func:`write_results`: ``NAME.json`` and ``NAME.md`` side by side, each written atomically.

Scripts import it as ``from _common import ...`` after putting this folder on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sketchsearch._io import atomic_write_text

__all__ = [
    "DATA_ROOT",
    "RESULTS",
    "ROOT",
    "machine_info",
    "markdown_table",
    "table_markdown",
    "write_atomic",
    "write_results",
]

#: the repository
ROOT = Path(__file__).resolve().parents[1]
#: where the scripts write by default
RESULTS = ROOT / "benchmarks" / "results"
#: the real datasets (see ``../shared/data/README``)
DATA_ROOT = Path(os.environ.get("SKETCHSEARCH_SHARED_DATA") or ROOT.parent / "shared" / "data").expanduser().absolute()


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name ("AMD EPYC 7B13"): the first ``model name`` line of ``cpuinfo``; where there is
    none (not Linux, some ARM kernels), ``platform.processor()`` or else the architecture ("x86_64")."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, platform, Python, numpy and torch versions."""
    import numpy as np
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def write_atomic(path: str | Path, text: str) -> None:
    """One text file, atomically (for the files that are not a JSON + markdown pair)."""
    atomic_write_text(path, text)


def _jsonable(v: Any) -> Any:
    """numpy / torch scalars and arrays (``.tolist()``) and paths; anything else is refused by name."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"cannot write a {type(v).__name__} to the results JSON: {v!r}")


def write_results(name: str | Path, doc: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``doc`` to ``NAME.json`` (indented) and ``markdown`` to ``NAME.md``, each atomically.

    ``name``: the results' path without suffix (a ``.json`` / ``.md`` suffix is dropped), e.g.
    ``RESULTS / "render"``. Returns the two paths (JSON, markdown).
    """
    stem = Path(name)
    if stem.suffix in (".json", ".md"):
        stem = stem.with_suffix("")
    json_path = stem.with_name(stem.name + ".json")
    md_path = stem.with_name(stem.name + ".md")
    atomic_write_text(json_path, json.dumps(doc, indent=2, default=_jsonable) + "\n")
    atomic_write_text(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
    return json_path, md_path


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of ``rows`` (dicts) over ``columns``; floats to 4 significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def table_markdown(doc: dict[str, Any], columns: Sequence[str], title: str) -> str:
    """The usual results page: ``# title``, the table of ``doc["rows"]`` and the machine line."""
    md = f"# {title}\n\n" + markdown_table(doc["rows"], columns)
    return md + f"\nMachine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores.\n"
