"""Concurrent writers and readers on one index folder (issue 12, point 1): several processes each run
`sketchsearch index add` repeatedly on the same folder while another process loads it over and over.
Every acknowledged item must be there afterwards, ids must be unique, and the reader must always load
(a folder being swapped is never reported as corrupt). Also: the write lock waits (bounded) instead of
failing, and a killed writer's temp folder is removed by the next writer."""

from __future__ import annotations

import json
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
from sketchsearch.methods.base import Preprocessing
from sketchsearch.model import save_model

WRITERS, ADDS, PER_ADD = 3, 5, 2
SRC = str(Path(sketchsearch.__file__).resolve().parents[1])

#: one writer: ADDS times `index add IDX --data DATA/<prefix>-<j>.ndjson --json`, a JSON line per add
WRITER = """
import json, sys
from typer.testing import CliRunner
from sketchsearch.cli import app
idx, data, prefix, adds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
runner = CliRunner()
for j in range(adds):
    res = runner.invoke(app, ["index", "add", idx, "--data", f"{data}/{prefix}-{j}.ndjson", "--json"])
    out = {"file": f"{prefix}-{j}.ndjson", "exit": res.exit_code}
    out.update(json.loads(res.stdout) if res.exit_code == 0 else {"output": res.output})
    print(json.dumps(out), flush=True)
"""

#: the reader: loads the index (with the Retriever, as `serve` does) until the stop file exists
READER = """
import json, sys, time
from pathlib import Path
from sketchsearch.retrieval import Retriever
from sketchsearch.index.store import read_manifest
idx, ready, stop = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
loads, errors, generations, t0 = 0, [], set(), time.monotonic()
while True:
    last = stop.exists()  # one more load after the writers are done
    try:
        r = Retriever.load(idx)
        generations.add(read_manifest(idx)["generation"])
        loads += 1
        r.store.close()
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    ready.touch()
    if last or time.monotonic() - t0 > 120:
        break
    time.sleep(0.02)  # pacing only (two cores are shared): the writers still swap under it hundreds of times
print(json.dumps({"loads": loads, "errors": errors, "generations": len(generations)}))
"""


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
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
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
    ready, stop = tmp_path / "reader-ready", tmp_path / "stop"
    t0 = time.monotonic()
    reader = _python(READER, idx, ready, stop)
    while not ready.exists():  # the reader loads before the writers start (bounded by its own 120 s)
        assert reader.poll() is None, reader.communicate()
        time.sleep(0.05)
    t_ready = time.monotonic() - t0
    writers = [_python(WRITER, idx, data, f"w{w}", ADDS) for w in range(WRITERS)]
    outs = [w.communicate(timeout=300) for w in writers]
    stop.touch()
    r_out, _ = reader.communicate(timeout=300)
    seconds = time.monotonic() - t0
    assert all(w.returncode == 0 for w in writers), [e for _, e in outs]
    adds = [json.loads(line) for out, _ in outs for line in out.splitlines()]
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

    report = json.loads(r_out)
    assert report["errors"] == [], report["errors"]  # never a false "corrupt" or "no such index folder"
    assert report["loads"] >= 2 and report["generations"] >= 2, report  # it did read while writers worked
    assert not list(idx.parent.glob(".idx.tmp-*")) and not list(idx.parent.glob(".idx.old-*"))
    print(
        f"\n{WRITERS} writers x {ADDS} adds x {PER_ADD} items: {len(ids)} items present ({len(acknowledged)} "
        f"acknowledged + 4), {report['loads']} loads by the reader over {report['generations']} generations, "
        f"no error; {seconds:.1f} s ({t_ready:.1f} s until the reader's first load)"
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
