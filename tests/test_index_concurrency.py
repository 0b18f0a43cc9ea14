"""Concurrent writers and readers on one index folder (issue 12, point 1): several processes each run
`sketchsearch index add` repeatedly on the same folder while another process loads it over and over.
Every acknowledged item must be there afterwards, ids must be unique, and the reader must always load
(a folder being swapped is never reported as corrupt). Also: the write lock waits (bounded) instead of
failing, and a killed writer's temp folder is removed by the next writer."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import sketchsearch
from sketchsearch.cli import app
from sketchsearch.errors import IndexError_
from sketchsearch.index.folder import clean_leftovers, write_lock
from sketchsearch.index.store import load_index, read_manifest
from sketchsearch.methods import create_method
from sketchsearch.methods.base import _METHOD_MODULES, Preprocessing
from sketchsearch.model import save_model

WRITERS, ADDS, PER_ADD = 3, 5, 2
SRC = str(Path(sketchsearch.__file__).resolve().parents[1])

#: what the fork server imports once, so that each process it forks starts at once (a spawned process
#: would spend seconds importing torch, on two shared cores)
PRELOAD = ["typer.testing", "sketchsearch.cli", "sketchsearch.retrieval", "sketchsearch.data.sources"] + [
    f"sketchsearch.methods.{m}" for m in _METHOD_MODULES
]


def _writer(idx: str, data: str, prefix: str, adds: int, out: str) -> None:
    """One writer process: ``adds`` times `sketchsearch index add IDX --data DATA/<prefix>-<j>.ndjson --json`
    (the CLI, in this process); a JSON line per add into ``out``."""
    from sketchsearch.cli import app

    runner = CliRunner()
    with open(out, "w") as f:
        for j in range(adds):
            t0 = time.monotonic()
            res = runner.invoke(app, ["index", "add", idx, "--data", f"{data}/{prefix}-{j}.ndjson", "--json"])
            line = {"file": f"{prefix}-{j}.ndjson", "exit": res.exit_code, "seconds": time.monotonic() - t0}
            line.update(json.loads(res.stdout) if res.exit_code == 0 else {"output": res.output})
            f.write(json.dumps(line) + "\n")


def _reader(idx: str, ready: str, stop: str, out: str) -> None:
    """The reader process: loads the index with the Retriever (as `serve` does) until ``stop`` exists (one
    more load after that); writes loads, errors and generations seen into ``out``."""
    from sketchsearch.retrieval import Retriever

    loads, errors, generations, t0 = 0, [], set(), time.monotonic()
    while True:
        last = Path(stop).exists()
        try:
            r = Retriever.load(idx)
            generations.add(read_manifest(idx)["generation"])
            loads += 1
            r.store.close()
        except Exception as e:  # noqa: BLE001 - every failure is reported to the test
            errors.append(f"{type(e).__name__}: {e}")
        Path(ready).touch()
        if last or time.monotonic() - t0 > 120:
            break
        time.sleep(0.02)  # pacing only (two shared cores): writers still swap under it many times
    Path(out).write_text(json.dumps({"loads": loads, "errors": errors, "generations": len(generations)}))


def _drawing(rng: np.random.Generator) -> list[list[list[int]]]:
    n = int(rng.integers(4, 9))
    return [[rng.integers(0, 256, n).tolist(), rng.integers(0, 256, n).tolist()] for _ in range(2)]


def _ndjson(path: Path, rng: np.random.Generator, n: int) -> Path:
    with open(path, "w") as f:
        f.writelines(
            json.dumps({"word": "mark", "key_id": f"{path.stem}-{i}", "drawing": _drawing(rng)}) + "\n"
            for i in range(n)
        )
    return path


@pytest.fixture
def index(tmp_path: Path) -> tuple[Path, Path]:
    """A 64-bit LSH model and an index of 4 drawings built with it: (index folder, data folder)."""
    pre = Preprocessing(inputs=("raster",), raster_size=16, line_width=1.5)
    method = create_method("lsh", nbits=64, seed=0, preprocessing=pre)
    method.fit(np.random.default_rng(0).random((8, 16, 16)))
    model = tmp_path / "models" / "lsh"
    save_model(method, model)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for w in range(WRITERS):
        for j in range(ADDS):
            _ndjson(data / f"w{w}-{j}.ndjson", rng, PER_ADD)
    seed = _ndjson(data / "seed.ndjson", rng, 4)
    res = CliRunner().invoke(
        app, ["index", "build", "--model", str(model), "--data", str(seed), "--out", str(tmp_path / "idx")]
    )
    assert res.exit_code == 0, res.output
    return tmp_path / "idx", data


def _python(code: str, *args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_concurrent_adds_keep_every_acknowledged_item_and_readers_always_load(
    index: tuple[Path, Path], tmp_path: Path
) -> None:
    idx, data = index
    ready, stop, report_file = tmp_path / "reader-ready", tmp_path / "stop", tmp_path / "reader.json"
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    t0 = time.monotonic()
    reader = ctx.Process(target=_reader, args=(str(idx), str(ready), str(stop), str(report_file)))
    reader.start()
    while not ready.exists():  # the reader loads before the writers start (bounded by its own 120 s)
        assert reader.is_alive() or ready.exists(), reader.exitcode
        time.sleep(0.05)
    t_ready = time.monotonic() - t0
    outs = [tmp_path / f"w{w}.jsonl" for w in range(WRITERS)]
    writers = [
        ctx.Process(target=_writer, args=(str(idx), str(data), f"w{w}", ADDS, str(outs[w]))) for w in range(WRITERS)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(300)
    stop.touch()
    reader.join(300)
    seconds = time.monotonic() - t0
    assert [w.exitcode for w in writers] == [0] * WRITERS and reader.exitcode == 0
    adds = [json.loads(line) for out in outs for line in out.read_text().splitlines()]
    assert len(adds) == WRITERS * ADDS
    failed = [a for a in adds if a["exit"] != 0]
    assert not failed, failed  # the lock waits: no writer gives up, none fails
    assert all(a["added"] == PER_ADD for a in adds)

    loaded, store = load_index(idx)
    ids = loaded.ids.tolist()
    assert len(ids) == len(set(ids)) == 4 + WRITERS * ADDS * PER_ADD  # nothing lost, no id given twice
    sources = {row["source"] for row in store.items(ids)}
    acknowledged = {f"{a['file']}:{i}" for a in adds for i in range(1, PER_ADD + 1)}  # records from 1
    missing = sorted(s for s in acknowledged if not any(src.endswith(s) for src in sources))
    assert not missing, (missing, sorted(sources))
    assert read_manifest(idx)["count"] == len(ids)

    report = json.loads(report_file.read_text())
    assert report["errors"] == [], report["errors"]  # never a false "corrupt" or "no such index folder"
    assert report["loads"] >= 2 and report["generations"] >= 2, report  # it did read while writers worked
    assert not list(idx.parent.glob(".idx.tmp-*")) and not list(idx.parent.glob(".idx.old-*"))
    slowest = max(a["seconds"] for a in adds)
    print(
        f"\n{WRITERS} writer processes x {ADDS} adds x {PER_ADD} items: {len(ids)} items present "
        f"({len(acknowledged)} acknowledged + 4), ids unique; the reader loaded {report['loads']} times over "
        f"{report['generations']} generations, no error; {seconds:.1f} s in all ({t_ready:.1f} s until the "
        f"reader's first load, slowest add {slowest:.2f} s)"
    )


def test_a_second_writer_waits_for_the_lock_then_gives_up_naming_it(index: tuple[Path, Path]) -> None:
    idx, _ = index
    holder = _python(
        "import sys, time; from sketchsearch.index.folder import write_lock\n"
        "with write_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.readline()",
        idx,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    held = r"idx: another command is changing this index \(it holds .*\.idx\.lock\)"
    with pytest.raises(IndexError_, match=held), write_lock(idx, timeout=0.3):
        pass
    assert time.monotonic() - t0 >= 0.3  # it waited, it did not fail at once
    holder.kill()
    holder.wait()
    with write_lock(idx, timeout=10) as folder:  # the lock went with the killed process
        assert folder == idx


def test_a_killed_writers_temp_folder_is_removed_by_the_next_writer(index: tuple[Path, Path]) -> None:
    idx, data = index
    stale = idx.parent / ".idx.tmp-dead1234"
    stale.mkdir()
    (stale / "codes.npy").write_bytes(b"\0" * 1000)
    old = time.time() - 60
    os.utime(stale, (old, old))
    with write_lock(idx):
        fresh = idx.parent / ".idx.tmp-mine"  # one made after the lock was taken is not touched
        fresh.mkdir()
        assert not stale.exists() and clean_leftovers(idx, before=old) == [] and fresh.exists()
    fresh.rmdir()
    stale.mkdir()
    os.utime(stale, (old, old))
    res = CliRunner().invoke(app, ["index", "add", str(idx), "--data", str(data / "w0-0.ndjson")])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and len(load_index(idx)[0]) == 4 + PER_ADD


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic-exchange", "two-renames"])
def test_loads_never_fail_while_saves_swap_generations_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    """In one process: a thread saves 25 generations of growing size while this one loads the folder over
    and over; with Linux's atomic exchange and with the two renames used where it is missing."""
    import threading

    from sketchsearch.index import create_index, folder
    from sketchsearch.index.store import save_index

    if not exchange:
        monkeypatch.setattr(folder, "_exchange", lambda a, b: False)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(60, 8), dtype=np.uint8)

    def generation(n: int) -> object:
        index = create_index("numpy", nbits=64)
        index.add(codes[:n], np.arange(n))
        return index

    idx = save_index(generation(10), tmp_path / "idx", model_id="m")  # type: ignore[arg-type]
    done, failures = threading.Event(), []

    def writer() -> None:
        try:
            for n in range(11, 36):
                save_index(generation(n), idx, model_id="m")  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - any failure of the writer is reported below
            failures.append(e)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    sizes, errors = set(), []
    while not done.is_set() or not sizes:
        try:
            index, items = load_index(idx)
            sizes.add(len(index))
            items.close()
        except IndexError_ as e:
            errors.append(str(e))
    t.join()
    assert not failures and not errors, (failures, errors[:3])
    assert len(sizes) >= 2 and len(load_index(idx)[0]) == 35  # it read while generations changed
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]
