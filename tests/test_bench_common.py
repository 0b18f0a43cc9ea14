"""benchmarks/_common.py: the data root from $SKETCHSEARCH_SHARED_DATA, the CPU's model name (not its
architecture), results written as a JSON + markdown pair."""

from __future__ import annotations

import importlib.util
import json
import platform
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

COMMON = Path(__file__).resolve().parents[1] / "benchmarks" / "_common.py"


def _load() -> ModuleType:
    """A fresh copy of the module (its constants are read from the environment at import)."""
    spec = importlib.util.spec_from_file_location("_bench_common_under_test", COMMON)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
stepping\t: 7

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
"""


def test_cpu_model_reads_the_model_name_line_wherever_it_is(tmp_path: Path) -> None:
    f = tmp_path / "cpuinfo"
    f.write_text(CPUINFO)
    assert _load().cpu_model(f) == "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"


def test_cpu_model_falls_back_to_the_platform(tmp_path: Path) -> None:
    mod = _load()
    fallback = platform.processor() or platform.machine()
    no_name = tmp_path / "cpuinfo"
    no_name.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # e.g. some ARM kernels
    assert mod.cpu_model(no_name) == fallback
    assert mod.cpu_model(tmp_path / "absent") == fallback


def test_machine_info_names_the_machine() -> None:
    info = _load().machine_info()
    assert {"cpu", "cores", "platform", "python", "numpy", "torch"} <= set(info)
    assert info["cpu"] and info["cores"] >= 1
    json.dumps(info)  # goes into the results JSON as is


def test_data_root_comes_from_one_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKETCHSEARCH_SHARED_DATA", str(tmp_path / "data"))
    assert _load().DATA_ROOT == tmp_path / "data"
    monkeypatch.delenv("SKETCHSEARCH_SHARED_DATA")
    repo = COMMON.parents[1]
    assert _load().DATA_ROOT == repo.parent / "shared" / "data"


def test_write_results_writes_the_pair(tmp_path: Path) -> None:
    mod = _load()
    doc = {"rows": [{"a": np.float32(0.5), "n": np.int64(3)}], "path": tmp_path, "v": np.arange(2)}
    js, md = mod.write_results(tmp_path / "out" / "bench.json", doc, "# Title\n\ntext")
    assert (js, md) == (tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.md")
    assert json.loads(js.read_text()) == {"rows": [{"a": 0.5, "n": 3}], "path": str(tmp_path), "v": [0, 1]}
    assert md.read_text() == "# Title\n\ntext\n"
    assert sorted(p.name for p in js.parent.iterdir()) == ["bench.json", "bench.md"]  # no temp files
    with pytest.raises(TypeError, match="cannot write a object"):
        mod.write_results(tmp_path / "bad", {"x": object()}, "")


def test_table_markdown_has_the_rows_and_the_machine() -> None:
    mod = _load()
    doc = {"rows": [{"x": 0.123456, "y": "a"}], "machine": {"cpu": "Some CPU", "cores": 4}}
    md = mod.table_markdown(doc, ["x", "y"], "T")
    assert md.startswith("# T\n\n| x | y |\n|---|---|\n| 0.1235 | a |\n")
    assert md.endswith("Machine: Some CPU, 4 cores.\n")
