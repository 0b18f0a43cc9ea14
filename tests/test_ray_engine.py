"""`index build --engine ray` (sketchsearch.ray_engine): the same index as `--engine local` (ids, codes, items,
bad records) from ndjson and from an image folder; a run stopped part-way resumes without encoding its
finished shards again, redoes a corrupt one, and ends with every item once; the option's errors.

One local Ray runtime of 2 CPUs serves the module (the CLI uses a runtime that is already up)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sketchsearch import ray_engine
from sketchsearch.cli import app
from sketchsearch.data.render import rasterize
from sketchsearch.data.synthetic import merchant_marks
from sketchsearch.retrieval import encode_order

runner = CliRunner()


@pytest.fixture(scope="module")
def ray_up() -> Any:
    """One local Ray runtime (2 CPUs) for the module's builds, started as the engine starts its own."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'sketchsearch[ray]'")
    ray_engine.start_ray(ray, 2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``marks.ndjson``: 21 drawings of 7 classes in QuickDraw's simplified format with one bad line among them;
    ``images/<class>/<id>.png``: 12 drawings as PNG, with a sidecar metadata.csv."""
    root = tmp_path_factory.mktemp("ray-data")
    lines = []
    for s in merchant_marks(7, 3, seed=3):
        strokes = [[[round(float(x), 2) for x in st[:, 0]], [round(float(y), 2) for y in st[:, 1]]] for st in s.strokes]
        lines.append(json.dumps({"word": s.label, "key_id": s.id, "countrycode": "GB", "drawing": strokes}))
    lines.insert(9, '{"word": "broken", "drawing": [[[1, 2]]')  # a bad record: not JSON
    (root / "nd").mkdir()
    (root / "nd" / "marks.ndjson").write_text("\n".join(lines) + "\n")
    for s in merchant_marks(4, 3, seed=7):
        ink = rasterize(s, size=96, line_width=2.5)
        path = root / "images" / s.label / f"{s.id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((1 - ink) * 255).astype(np.uint8)).save(path)
    (root / "images" / "metadata.csv").write_text("source,title\nmark_001/mark_001_02.png,The key\n")
    # drawings and photo-like pictures in alternation (read in name order), for a model with a photo branch
    rng = np.random.default_rng(0)
    for n, png in enumerate(sorted((root / "images").rglob("*.png"))[:6]):
        (root / "mixed").mkdir(exist_ok=True)
        (root / "mixed" / f"{2 * n:02d}.png").write_bytes(png.read_bytes())
        ramp = np.linspace(0, 255, 96)[None, :, None] * rng.uniform(0.3, 1, (1, 1, 3))
        photo = np.clip(ramp + rng.normal(0, 40, (96, 96, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(root / "mixed" / f"{2 * n + 1:02d}.jpg")
    return {"ndjson": root / "nd" / "marks.ndjson", "images": root / "images", "mixed": root / "mixed"}


def _build(*args: Any, ok: bool = True) -> Any:
    res = runner.invoke(app, ["index", "build", *(str(a) for a in args)])
    if ok:
        assert res.exit_code == 0, (res.output, res.exception)
    return res


def _index(folder: Path) -> dict[str, Any]:
    """What an index holds: codes and ids (bytes), items rows, the manifest's content fields."""
    with sqlite3.connect(folder / "items.sqlite") as db:
        items = db.execute("SELECT * FROM items ORDER BY id").fetchall()
    manifest = json.loads((folder / "manifest.json").read_text())
    return {
        "codes": (folder / "codes.npy").read_bytes(),
        "ids": np.load(folder / "ids.npy").tolist(),
        "items": items,
        "manifest": {k: v for k, v in manifest.items() if k not in ("created", "updated", "generation")},
    }


@pytest.mark.parametrize(
    ("kind", "model"),
    [("ndjson", "sketchmate-quickdraw-64"), ("images", "sketch-gan"), ("mixed", "doodle2search-sketchy")],
)
def test_same_index_as_the_local_engine(
    ray_up: Any, data: dict[str, Path], tmp_path: Path, kind: str, model: str
) -> None:
    common = ["--model", model, "--data", data[kind], "--name", "marks", "--json"]
    local = _build(*common, "--out", tmp_path / "local")
    ray = _build(*common, "--out", tmp_path / "ray", "--engine", "ray", "--workers", 2, "--shard-size", 5)
    a, b = json.loads(local.stdout), json.loads(ray.stdout)
    assert b.pop("engine") == "ray" and b.pop("workers") == 2
    assert b.pop("shards") == b.pop("shards_encoded") == -(-a["count"] // 5) and b.pop("shards_reused") == 0
    assert {**a, "index": None} == {**b, "index": None}  # counts, bad records skipped and their errors
    if kind == "ndjson":
        assert a["count"] == 21 and a["skipped"] == 1 and a["errors"][0]["file"].endswith("marks.ndjson")
    elif kind == "images":
        assert a["count"] == 12 and a["skipped"] == 0
    else:  # ids: the drawings of a chunk, then its photos, though shards of 5 cut across them
        assert (a["drawings"], a["photos"]) == (6, 6)
    x, y = _index(tmp_path / "local"), _index(tmp_path / "ray")
    if kind == "mixed":
        # Doodle to Search's convolutions round by batch size: shards of 5 cut the local engine's batches (a
        # chunk's 6 drawings, then its 6 photos), so its float codes agree to rounding (bit for bit when shards
        # are multiples of the 512-item chunk, as the default 2048 is)
        a_codes, b_codes = np.load(tmp_path / "local" / "codes.npy"), np.load(tmp_path / "ray" / "codes.npy")
        np.testing.assert_allclose(a_codes, b_codes, rtol=0, atol=1e-6)
        for d in (x, y):
            d.pop("codes")
            d["manifest"]["files"].pop("codes.npy")
    assert x == y  # byte-identical codes and ids; the same items (sources, labels, metadata, thumbnails)
    assert len({row[2] for row in y["items"]}) == a["count"]  # every source once
    assert not list(tmp_path.glob(".*.ray-parts"))  # the work folder goes once the index is saved
    # bad records named on stderr as the local engine names them
    assert [ln for ln in ray.stderr.splitlines() if ln.startswith("skipped")] == [
        ln for ln in local.stderr.splitlines() if ln.startswith("skipped")
    ]


class _Killed(BaseException):
    """Stands for a kill: not an error the CLI turns into a message."""


def test_resume_encodes_only_unfinished_shards_and_redoes_a_corrupt_one(
    ray_up: Any, data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "idx"
    args = ["--model", "sketch-gan", "--data", data["ndjson"], "--out", out, "--name", "marks", "--engine", "ray"]
    args += ["--workers", 2, "--shard-size", 3]  # 21 items: 7 shards
    stopped_after: list[int] = []

    def stop_after_three(k: int) -> None:
        stopped_after.append(k)
        if len(stopped_after) == 3:
            raise _Killed

    monkeypatch.setattr(ray_engine, "after_shard", stop_after_three)
    with pytest.raises(_Killed):
        _build(*args, "--json", ok=False)
    assert not out.exists()
    work = ray_engine.work_folder(out)
    files = sorted(p.name for p in work.iterdir())
    time.sleep(1.0)  # the stopped run has ended its workers' tasks: nothing is written behind its back
    assert sorted(p.name for p in work.iterdir()) == files
    finished = sorted(int(p.stem.split("-")[1]) for p in work.glob("shard-*.json"))
    assert set(stopped_after) <= set(finished) and len(finished) < 7  # shards in flight may have finished too
    corrupt = finished[0]
    npz = work / f"shard-{corrupt:05d}.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))

    again: list[int] = []
    monkeypatch.setattr(ray_engine, "after_shard", again.append)
    res = _build(*args, "--json")
    doc = json.loads(res.stdout)
    kept = set(finished) - {corrupt}
    assert doc["shards"] == 7 and doc["shards_reused"] == len(kept) and doc["count"] == 21
    assert sorted(again) == sorted(set(range(7)) - kept)  # finished shards are not encoded again
    assert f"resuming: {len(kept)} of 7 shards" in res.stderr
    assert f"shard {corrupt} " in res.stderr and "checksum mismatch" in res.stderr and "encoding it again" in res.stderr
    assert not work.exists()

    monkeypatch.setattr(ray_engine, "after_shard", None)
    _build("--model", "sketch-gan", "--data", data["ndjson"], "--out", tmp_path / "local", "--name", "marks")
    assert _index(out) == _index(tmp_path / "local")  # every item once, as the local engine encodes it


def test_shard_checks(data: dict[str, Path]) -> None:
    """A shard's files verify only for the same items, ids and model; ids follow the local engine's order."""
    from sketchsearch.data.sources import load_collection

    items = load_collection(data["ndjson"]).items
    ids = np.arange(len(items))
    plan = ray_engine.plan_shards("m1", items, ids, 8)
    assert [(s.start, s.stop) for s in plan] == [(0, 8), (8, 16), (16, 21)]
    assert plan == ray_engine.plan_shards("m1", items, ids, 8)  # deterministic
    assert plan[0].fingerprint != ray_engine.plan_shards("m2", items, ids, 8)[0].fingerprint
    assert plan[0].fingerprint != ray_engine.plan_shards("m1", items, ids + 1, 8)[0].fingerprint
    items[3].sketch.strokes[0][0, 0] += 1  # type: ignore[union-attr]
    assert plan[0].fingerprint != ray_engine.plan_shards("m1", items, ids, 8)[0].fingerprint
    assert plan[1].fingerprint == ray_engine.plan_shards("m1", items, ids, 8)[1].fingerprint
    # per chunk of 512: the drawings first, then the photos (each modality through its own branch)
    assert encode_order(["photo", "sketch", "photo", "sketch"]).tolist() == [1, 3, 0, 2]
    assert encode_order(["photo", "sketch"], step=1).tolist() == [0, 1]


def test_workers_in_the_callers_runtime_wait_for_cpus_being_released(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a runtime the caller started, an earlier run's killed actors give their CPUs back a moment later:
    the run waits for them (bounded), never asks beyond the runtime's total, and takes what is free after."""

    class Runtime:
        def __init__(self, total: int, free: list[int]) -> None:
            self.total, self.free = total, free

        def cluster_resources(self) -> dict[str, float]:
            return {"CPU": float(self.total)}

        def available_resources(self) -> dict[str, float]:
            return {"CPU": float(self.free.pop(0) if len(self.free) > 1 else self.free[0])}

    assert ray_engine._free_cpus(Runtime(2, [1, 1, 1, 2]), 2) == 2  # released after three looks
    assert ray_engine._free_cpus(Runtime(1, [1]), 4) == 1  # never beyond the runtime's CPUs
    monkeypatch.setattr(ray_engine, "FREE_CPU_WAIT_S", 0.2)
    assert ray_engine._free_cpus(Runtime(4, [1]), 3) == 1  # held by someone else: what is free
    assert ray_engine._free_cpus(Runtime(4, [0]), 3) == 1  # at least one (it queues for a CPU)


def test_a_local_node_that_did_not_start_is_started_once_more() -> None:
    """Ray's "timed out during startup" (its raylet did not register in a fixed 30 s) gets one more start after a
    shutdown, said through ``note``; a second such failure, or any other error, is raised as Ray raised it."""

    class Runtime:
        def __init__(self, errors: list[Exception | None]) -> None:
            self.errors, self.calls = errors, []

        def init(self, **kw: Any) -> None:
            self.calls.append(("init", kw["num_cpus"]))
            err = self.errors.pop(0)
            if err is not None:
                raise err

        def shutdown(self) -> None:
            self.calls.append(("shutdown", None))

    timeout = Exception("The current node timed out during startup. This could happen because ...")
    notes: list[str] = []
    rt = Runtime([timeout, None])
    ray_engine.start_ray(rt, 2, note=notes.append)
    assert rt.calls == [("init", 2), ("shutdown", None), ("init", 2)]
    assert len(notes) == 1 and "starting it again (2 of 2)" in notes[0] and "timed out during startup" in notes[0]
    with pytest.raises(Exception, match="timed out during startup"):
        ray_engine.start_ray(Runtime([timeout, timeout]), 2)
    other = Runtime([RuntimeError("no such resource")])
    with pytest.raises(RuntimeError, match="no such resource"):
        ray_engine.start_ray(other, 1)
    assert other.calls == [("init", 1)]


def test_engine_option_errors(data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--model", "sketch-gan", "--data", data["ndjson"], "--out", tmp_path / "idx"]
    res = _build(*common, "--workers", 2, ok=False)
    assert res.exit_code == 2 and "--workers and --shard-size apply to --engine ray" in res.output
    res = _build(*common, "--engine", "spark", ok=False)
    assert res.exit_code == 2 and "valid engines are local, ray" in res.output
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if ray were not installed
    res = _build(*common, "--engine", "ray", ok=False)
    assert res.exit_code == 2 and res.stdout == ""
    hint = ray_engine.INSTALL_HINT
    assert "pip install 'sketchsearch[ray]'" in hint
    assert res.stderr.strip().splitlines() == [f"error: --engine ray: Ray is not installed; install it with {hint}"]
    assert not (tmp_path / "idx").exists()


def _descendants(pid: int) -> list[int]:
    import subprocess

    ps = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout.split()
    children: dict[int, list[int]] = {}
    for c, parent in zip(ps[::2], ps[1::2]):
        children.setdefault(int(parent), []).append(int(c))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out += [c]
            todo.append(c)
    return out


@pytest.mark.slow
def test_a_real_kill_of_the_cli_and_a_resume(data: dict[str, Path], tmp_path: Path) -> None:
    """The CLI in a subprocess, SIGKILLed once 3 shards are written; the same command again reuses every shard
    the killed run finished and gives the local engine's index."""
    import signal
    import subprocess
    import sys

    pytest.importorskip("ray")
    lines = []
    for s in merchant_marks(40, 10, seed=5):  # 400 drawings, shards of 4: 100 shards
        strokes = [[[round(float(v), 2) for v in st[:, i]] for i in (0, 1)] for st in s.strokes]
        lines.append(json.dumps({"word": s.label, "key_id": s.id, "drawing": strokes}))
    (tmp_path / "nd").mkdir()
    (tmp_path / "nd" / "many.ndjson").write_text("\n".join(lines) + "\n")
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "sketchsearch", "index", "build", "--model", "sketch-gan", "--data"]
    cmd += [str(tmp_path / "nd"), "--out", str(out), "--name", "many", "--engine", "ray", "--workers", "2"]
    cmd += ["--shard-size", "4", "--json"]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    work = ray_engine.work_folder(out)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while p.poll() is None and len(list(work.glob("shard-*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be killed"
    tree = _descendants(p.pid)
    p.kill()
    p.communicate()
    time.sleep(1)
    finished = {m.name for m in work.glob("shard-*.json")}
    assert 3 <= len(finished) < 100 and not out.exists()
    for pid in tree:  # Ray's processes of the killed run (they would exit by themselves within a minute)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["count"] == 400 and doc["shards"] == 100
    assert doc["shards_reused"] == len(finished) and doc["shards_encoded"] == 100 - len(finished)
    local = _build("--model", "sketch-gan", "--data", tmp_path / "nd", "--out", tmp_path / "local", "--name", "many")
    assert local.exit_code == 0
    assert _index(out) == _index(tmp_path / "local")
