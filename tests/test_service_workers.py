"""``sketchsearch serve --workers N``: several processes on one port, each with the index memory-mapped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_service import SHAPES, shape_sketch, strokes_json
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.retrieval import Retriever

ROOT = Path(__file__).resolve().parents[1]


def _index(tmp_path: Path) -> Path:
    from sketchsearch.methods import create_method
    from sketchsearch.model import save_model

    method = create_method("lsh", nbits=64)
    items = [shape_sketch(kind, seed) for kind in SHAPES for seed in range(3)]
    method.fit(items)
    save_model(method, tmp_path / "lsh64")
    r = Retriever.from_model(tmp_path / "lsh64")
    r.add(items, labels=[s.label for s in items])
    r.save(tmp_path / "index")
    return tmp_path / "index"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")
def test_serve_with_two_workers_answers_searches_with_the_codes_memory_mapped(tmp_path: Path) -> None:
    folder = _index(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "sketchsearch", "serve", "--index", str(folder), "--port", "0", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once both workers have loaded the collection
        m = re.search(r"open (http://127\.0\.0\.1:\d+)/ .*2 worker processes", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        url = m.group(1)
        q = shape_sketch("circle", 99)
        body = json.dumps({"strokes": strokes_json(q), "k": 3}).encode()
        for _ in range(4):
            req = urllib.request.Request(
                url + "/api/search", data=body, headers={"content-type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                hits = json.loads(r.read())["hits"]
            assert len(hits) == 3 and hits[0]["label"] == "circle"
        # both workers (the other child is multiprocessing's resource tracker) map the codes file: the codes
        # are shared through the page cache, not read into each worker
        codes = str(folder / "codes.npy")
        mapped = [p for p in _children(proc.pid) if codes in Path(f"/proc/{p}/maps").read_text()]
        assert len(mapped) == 2, _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    time.sleep(0.2)
    assert all(not Path(f"/proc/{p}").exists() for p in mapped)  # the workers went with it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_when_serve_is_killed(tmp_path: Path) -> None:
    """SIGKILL runs none of serve's clean-up: the kernel still ends its workers (no orphan keeps the port)."""
    folder = _index(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "sketchsearch", "serve", "--index", str(folder), "--port", "0", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        assert proc.stdout is not None and "2 worker processes" in proc.stdout.readline()
        codes = str(folder / "codes.npy")
        workers = [p for p in _children(proc.pid) if codes in Path(f"/proc/{p}/maps").read_text()]
        assert len(workers) == 2
    finally:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{p}").exists() for p in workers)


def test_serve_workers_option_errors_are_one_plain_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["serve", "--index", str(tmp_path), "--workers", "0"])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--workers" in lines[0], res.stderr


def test_serve_workers_report_a_collection_that_cannot_load_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "sketchsearch", "serve", "--index", str(tmp_path / "none"), "--workers", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: collection 'none': cannot load"), res.stderr
    assert "open http" not in res.stdout
