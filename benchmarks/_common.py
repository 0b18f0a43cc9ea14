"""Shared by the benchmark scripts: machine description and atomic JSON + markdown output."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sketchsearch._io import atomic_write_text


def machine() -> dict[str, Any]:
    import numpy as np
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def write_atomic(path: str | Path, text: str) -> None:
    atomic_write_text(path, text)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def write_results(stem: str | Path, payload: dict[str, Any], columns: Sequence[str], title: str) -> None:
    stem = Path(stem)
    write_atomic(stem.with_suffix(".json"), json.dumps(payload, indent=2) + "\n")
    md = f"# {title}\n\n" + markdown_table(payload["rows"], columns)
    md += f"\nMachine: {payload['machine']['cpu']}, {payload['machine']['cores']} cores.\n"
    write_atomic(stem.with_suffix(".md"), md)
