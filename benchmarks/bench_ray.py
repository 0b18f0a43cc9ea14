"""Encoding on Ray (``index build --engine ray``): items/s with 1 and 2 workers vs the local engine, and a kill at 50%.

    python benchmarks/bench_ray.py [--size 100000] [--model sketch-gan] [--shard-size 2048] [--workers 1 2]
        [--reference-items 2048] [--no-kill]

Issue "Past one machine's linear scan", item 4: encoding throughput with 2 workers >= 1.6x one worker on the
same 100,000 drawings; a kill at 50% and a resume finish with every item encoded exactly once.

Data: ``--size`` QuickDraw drawings in the simplified ndjson format, cycled from ``../shared/data/quickdraw/
simplified`` (7,475 drawings, so each is repeated ~13 times at 100,000, with its ``key_id`` made unique) into
files of 10,000 lines in a temporary folder; where that folder is absent, generated merchant marks instead.

Throughput, in this process, on the same items read once (the read is timed on its own): the local engine
(``Retriever.add_items``: what ``--engine local`` runs, torch on its default threads) and the Ray engine
(:func:`sketchsearch.ray_engine.encode_sharded`: what ``--engine ray`` runs) with each of ``--workers``, every
figure from the start of the call to codes, ids and item rows (thumbnails included) in memory: for Ray that
includes starting the runtime, loading the model in each worker, writing the shards and reading them back.
``x_1_worker``: items/s over the 1-worker Ray run's; ``same_codes``: codes and ids equal to the local engine's.
The reference row ``2 processes (no Ray)`` measures what the machine gives two workers at that moment: two
spawned processes each encode ``--reference-items`` items with ``add_items`` (model loaded before a common
start), against one process doing the same alone.

Kill and resume: ``sketchsearch index build --engine ray --workers 2`` in a subprocess, killed (SIGKILL, the
CLI process only) once half of its shards are written; what is left of its process session a few seconds later
is counted (Ray's processes share the driver's fate) and then killed; the same command again resumes. Figures:
shards and items finished by the killed run, reused and encoded by the resume, and the final index (count,
distinct ids and sources, codes equal to the local engine's).

Output: ``benchmarks/results/ray.{json,md}``; progress on stderr. The machine is shared (2 cores): the load
average (1 min) before and after each row is recorded, and the ratios compare rows of the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, ROOT, machine_info, markdown_table, write_results

from sketchsearch.data.sources import load_collection
from sketchsearch.ray_engine import encode_sharded, work_folder
from sketchsearch.retrieval import Retriever

COLUMNS = ["engine", "workers", "items", "seconds", "items_per_s", "x_1_worker", "x_local", "same_codes", "load"]
LINES_PER_FILE = 10_000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def make_data(size: int, folder: Path) -> str:
    """``size`` drawings as simplified QuickDraw ndjson files in ``folder``; returns where they came from."""
    src = DATA_ROOT / "quickdraw" / "simplified"
    lines: list[str] = []
    if src.is_dir():
        for f in sorted(src.glob("*.ndjson")):
            lines += [ln for ln in f.read_text().splitlines() if ln.strip()]
        origin = f"{src} ({len(lines)} drawings, cycled)"
    else:
        from sketchsearch.data.synthetic import merchant_marks

        for s in merchant_marks(50, 40, seed=0):
            strokes = [
                [[round(float(v), 1) for v in st[:, 0]], [round(float(v), 1) for v in st[:, 1]]] for st in s.strokes
            ]
            lines.append(json.dumps({"word": s.label, "key_id": s.id, "drawing": strokes}))
        origin = f"generated merchant marks ({len(lines)} drawings, cycled; {src} is absent)"
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(math.ceil(size / LINES_PER_FILE)):
        out = []
        for i in range(part * LINES_PER_FILE, min(size, (part + 1) * LINES_PER_FILE)):
            obj = json.loads(lines[i % len(lines)])
            obj["key_id"] = f"{obj.get('key_id', i)}-{i // len(lines)}"
            out.append(json.dumps(obj))
        (folder / f"part-{part:03d}.ndjson").write_text("\n".join(out) + "\n")
    return origin


def _reference_child(model: str, items: list[Any], barrier: Any, out: Any) -> None:
    import torch

    torch.set_num_threads(1)
    r = Retriever.from_model(model)
    barrier.wait()
    t0 = time.perf_counter()
    r.add_items(items)
    out.put(time.perf_counter() - t0)


def reference(model: str, items: list[Any], procs: int) -> float:
    """Seconds for ``procs`` spawned processes to each encode ``items`` (one torch thread each), started together."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_reference_child, args=(model, items, barrier, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    times = [out.get() for _ in ps]
    for p in ps:
        p.join()
    return max(times)


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (from ``ps``), now."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout.split()
    children: dict[int, list[int]] = {}
    for c, parent in zip(ps[::2], ps[1::2]):
        children.setdefault(int(parent), []).append(int(c))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_and_resume(
    data: Path, tmp: Path, model: str, shard_size: int, size: int, local_codes: np.ndarray, local_ids: np.ndarray
) -> dict[str, Any]:
    out = tmp / "killed-idx"
    work = work_folder(out)
    cmd = [sys.executable, "-m", "sketchsearch", "index", "build", "--model", model, "--data", str(data)]
    cmd += ["--out", str(out), "--engine", "ray", "--workers", "2", "--shard-size", str(shard_size), "--json", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    shards = math.ceil(size / shard_size)
    half = math.ceil(shards / 2)
    log(f"kill and resume: {shards} shards, killing the CLI once {half} are written")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    while p.poll() is None and len(list(work.glob("shard-*.json"))) < half:
        time.sleep(0.2)
    if p.poll() is not None:
        raise SystemExit(f"the run finished before it could be killed: {p.communicate()}")
    tree = descendants(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    t_killed = time.perf_counter() - t0
    left5: list[int] = []
    gone_after = None
    for second in range(1, 121):  # how long the processes it started outlive it
        time.sleep(1)
        left = [pid for pid in tree if alive(pid)]
        if second == 5:
            left5 = left
        if not left:
            gone_after = second
            break
    for pid in left:  # what still outlived it after 2 minutes (Ray's helpers), if any
        os.kill(pid, signal.SIGKILL)
    finished = {}
    for m in work.glob("shard-*.json"):
        finished[int(m.stem.split("-")[1])] = json.loads(m.read_text())["count"]
    log(f"killed after {t_killed:.1f} s: {len(finished)} shards finished; its processes gone after {gone_after} s")
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    t_resume = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"resume failed: {res.stderr}")
    doc = json.loads(res.stdout)
    ids = np.load(out / "ids.npy")
    codes = np.load(out / "codes.npy")
    import sqlite3

    with sqlite3.connect(out / "items.sqlite") as db:
        sources = [r[0] for r in db.execute("SELECT source FROM items")]
    items_killed = sum(finished.values())
    items_resumed = size - items_killed  # the shards not reused (reused_are_those_finished)
    return {
        "shards": shards,
        "killed_after_s": round(t_killed, 1),
        "shards_finished_before_kill": len(finished),
        "items_finished_before_kill": items_killed,
        "processes_started_by_it": len(tree),
        "processes_left_5s_after_kill": len(left5),
        "all_gone_after_s": gone_after if gone_after is not None else "> 120 (killed)",
        "resume_s": round(t_resume, 1),
        "resume_shards_reused": doc["shards_reused"],
        "resume_shards_encoded": doc["shards_encoded"],
        "reused_are_those_finished": doc["shards_reused"] == len(finished)
        and doc["shards_reused"] + doc["shards_encoded"] == shards,
        "items_encoded_by_resume": items_resumed,
        "items_encoded_in_both_runs": items_killed + items_resumed - size,
        "final_count": doc["count"],
        "final_distinct_ids": len(np.unique(ids)),
        "final_distinct_sources": len(set(sources)),
        "final_codes_equal_local": bool(np.array_equal(codes, local_codes) and np.array_equal(ids, local_ids)),
        "resume_stderr": res.stderr.strip().splitlines(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--model", default="sketch-gan")
    ap.add_argument("--shard-size", type=int, default=2048)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reference-items", type=int, default=2048, help="items per process of the reference (0: skip)")
    ap.add_argument("--no-kill", action="store_true", help="skip the kill-and-resume run")
    ap.add_argument("--out", type=Path, default=RESULTS / "ray", help="results path without suffix")
    a = ap.parse_args(argv)

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    data = tmp / "data"
    origin = make_data(a.size, data)
    log(f"{a.size} drawings from {origin} in {data}; load average {os.getloadavg()}")
    t0 = time.perf_counter()
    items = load_collection(data).items
    t_read = time.perf_counter() - t0
    assert len(items) == a.size, len(items)
    log(f"read in {t_read:.1f} s")

    rows: list[dict[str, Any]] = []
    r = Retriever.from_model(a.model)
    ids = r.next_ids(items)
    before = load1()
    log(f"local engine, torch threads {torch.get_num_threads()} ...")
    t0 = time.perf_counter()
    r.add_items(items)
    t_local = time.perf_counter() - t0
    local_codes, local_ids, _ = r.rows()
    del r
    rows.append(
        {
            "engine": f"local (torch threads: {torch.get_num_threads()})",
            "workers": 1,
            "items": a.size,
            "seconds": round(t_local, 1),
            "items_per_s": a.size / t_local,
            "same_codes": True,
            "load": f"{before} / {load1()}",
        }
    )
    log(f"local: {a.size / t_local:.0f} items/s")
    model_id = Retriever.from_model(a.model).model_id
    for w in a.workers:
        before = load1()
        work = tmp / f"work-{w}"
        log(f"ray, {w} workers ...")
        t0 = time.perf_counter()
        run = encode_sharded(a.model, model_id, items, ids, work, workers=w, shard_size=a.shard_size)
        t = time.perf_counter() - t0
        order = np.argsort(run.ids, kind="stable")
        same = bool(np.array_equal(run.codes[order], local_codes) and np.array_equal(run.ids[order], local_ids))
        rows.append(
            {
                "engine": "ray",
                "workers": run.workers,
                "items": a.size,
                "seconds": round(t, 1),
                "items_per_s": a.size / t,
                "same_codes": same,
                "load": f"{before} / {load1()}",
            }
        )
        log(f"ray {w} workers: {a.size / t:.0f} items/s, same codes: {same}")
        del run
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    one = next((row["items_per_s"] for row in rows if row["engine"] == "ray" and row["workers"] == 1), None)
    for row in rows:
        row["x_1_worker"] = row["items_per_s"] / one if one else ""
        row["x_local"] = row["items_per_s"] / rows[0]["items_per_s"]
    if a.reference_items:
        ref_items = items[: a.reference_items]
        before = load1()
        t1 = reference(a.model, ref_items, 1)
        t2 = reference(a.model, ref_items, 2)
        rows.append(
            {
                "engine": "1 process (no Ray, reference)",
                "workers": 1,
                "items": len(ref_items),
                "seconds": round(t1, 1),
                "items_per_s": len(ref_items) / t1,
                "x_1_worker": 1.0,
                "load": f"{before} / {load1()}",
            }
        )
        rows.append(
            {
                "engine": "2 processes (no Ray, reference)",
                "workers": 2,
                "items": 2 * len(ref_items),
                "seconds": round(t2, 1),
                "items_per_s": 2 * len(ref_items) / t2,
                "x_1_worker": (2 * len(ref_items) / t2) / (len(ref_items) / t1),
                "load": f"{before} / {load1()}",
            }
        )
        log(f"reference: 2 processes give {rows[-1]['x_1_worker']:.2f}x one")
    kill = None
    if not a.no_kill:
        kill = kill_and_resume(data, tmp, a.model, a.shard_size, a.size, local_codes, local_ids)
    doc = {
        "benchmark": "ray_encoding",
        "model": a.model,
        "size": a.size,
        "data": origin,
        "shard_size": a.shard_size,
        "read_s": round(t_read, 1),
        "command": "python benchmarks/bench_ray.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "ray": __import__("ray").__version__,
        "rows": rows,
        "kill_and_resume": kill,
    }
    md = f"# Encoding {a.size:,} drawings with {a.model}: the Ray engine on 1 and 2 workers vs the local engine\n\n"
    md += markdown_table(rows, COLUMNS)
    if kill:
        shown = {k: v for k, v in kill.items() if k != "resume_stderr"}
        md += "\nKill at 50% and resume (`index build --engine ray --workers 2`, SIGKILL to the CLI process):\n\n"
        md += markdown_table([shown], list(shown))
    md += (
        f"\nData: {origin}; read once in {t_read:.1f} s (not in the figures above). Shards of {a.shard_size} items. "
        f"Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores, shared with other jobs (`load`: load "
        f"average before / after the row). Ray {doc['ray']}, torch {doc['machine']['torch']}. Command: "
        f"`{doc['command'].strip()}`. Ray rows include starting the runtime, loading the model in each worker, "
        "writing the code shards and reading them back; every row encodes and makes a thumbnail of each item.\n"
    )
    write_results(a.out, doc, md)
    print(md)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
