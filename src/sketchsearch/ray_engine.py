"""Sharded encoding on Ray: what ``sketchsearch index build --engine ray`` runs.

**What is sharded.** The driver (the CLI's process) reads the data once, through the one data entry point, as
the local engine does (:func:`sketchsearch.data.sources.load_collection`), so bad records, modalities,
sources, sidecar metadata and ``--limit`` are those of ``--engine local`` by construction; reading is cheap
next to encoding (QuickDraw ndjson: ~10,000 drawings/s on one core, vs ~300/s encoded with a thumbnail). The
items, in read order, are cut into shards of ``shard_size``; each item's id is decided up front by the rule of
:meth:`~sketchsearch.retrieval.Retriever.add_items` (:func:`~sketchsearch.retrieval.encode_order`), so the
ids do not depend on which worker encodes what. ``workers`` Ray actors each load the model once (one torch
thread each) and encode whole shards through ``Retriever.add_items`` on a fresh in-memory Retriever: the
same encode path as the local engine, not a copy.

**Code shards.** A worker writes its shard into the work folder (``.<out>.ray-parts`` beside the index
folder, made under the index's write lock) as ``shard-KKKKK.npz`` (codes, ids, the items' rows as JSON,
their thumbnails; no pickle), atomically (temporary file, fsync, rename), then ``shard-KKKKK.json``: the
shard's fingerprint (SHA-256 of the model id, the ids and every item's content, label, source, metadata and
modality), its item count and the ``.npz`` file's SHA-256 and size. When every shard is there, the driver
reads them in order and saves one index through the store (:meth:`Retriever.add_encoded`,
:meth:`Retriever.save`): the same folder, manifest and item store as ``--engine local`` for the same input.
The work folder is removed after the save. Codes are bit-identical to the local engine's when ``shard_size``
is a multiple of ``ENCODE_STEP`` (the default is), so that a worker's batches are the local engine's: a model
whose kernels round differently by batch size (Doodle to Search's convolutions) otherwise gives float codes
that agree to rounding (~1e-7); ids and items are identical whatever the shard size.

**Resume.** A run that is killed leaves its finished shards. The next run with the same arguments reads the
data again, and a shard whose ``.json`` names the same fingerprint and whose ``.npz`` has the recorded size
and SHA-256 is not encoded again; a missing, partial, changed or corrupt one is (noted on stderr). The
shards that were being encoded when the run died (at most two per worker) are lost and redone.

**Why Ray actors and not Ray Data.** ``Dataset.map_batches`` with an actor pool would do the mapping, but its
streaming executor decides block boundaries and order, writes through its own datasinks and has no notion of
"this block is already done"; skipping finished shards, keeping ids independent of scheduling and writing one
verified file per shard would all have to be forced around it. Plain actors fed a queue of shards give that
directly, and need only ``ray`` (no pyarrow / pandas of ``ray[data]``).

**Runtime.** A local runtime of ``workers`` CPUs (``ray.init(num_cpus=workers, include_dashboard=False)``,
its logs kept off the terminal), shut down at the end; a runtime the caller already started
(``ray.is_initialized()``) is used as it is and left running. Workers read and write the work folder by
path, so they must share the driver's file system (true of the local runtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_path, atomic_write_text
from .data.formats.base import Item
from .errors import SketchSearchError

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "INSTALL_HINT",
    "Shard",
    "ShardedRun",
    "encode_sharded",
    "fingerprint",
    "plan_shards",
    "ray_runtime",
    "require_ray",
    "work_folder",
]

#: items per shard by default: a few seconds of encoding per shard and worker, 4 chunks of ``ENCODE_STEP``
DEFAULT_SHARD_SIZE = 2048
INSTALL_HINT = "pip install 'sketchsearch[ray]' (or: pip install ray)"
SHARD_FORMAT = "sketchsearch-code-shard-1"
#: shards in flight per worker: one encoding, one waiting, so a worker never waits for the driver
IN_FLIGHT = 2
#: the most a stopped run waits for its killed workers' tasks to end (seconds)
KILL_WAIT_S = 60.0

#: Test hook: called in the driver with a shard's number each time a worker has written a shard (a test makes
#: it raise to stop a run part-way, as a kill would).
after_shard: Callable[[int], None] | None = None


def require_ray() -> Any:
    """The ``ray`` module, or one plain error naming the option and how to install it."""
    try:
        import ray
    except ImportError:
        raise SketchSearchError(f"--engine ray: Ray is not installed; install it with {INSTALL_HINT}") from None
    return ray


def work_folder(out: Path) -> Path:
    """Where ``index build --engine ray`` keeps the code shards of ``out`` until the index is saved."""
    return out.parent / f".{out.name}.ray-parts"


# ---------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Shard:
    """Items ``start:stop`` of the collection (read order), their ``fingerprint`` and the shard's files."""

    k: int
    start: int
    stop: int
    fingerprint: str

    @property
    def name(self) -> str:
        return f"shard-{self.k:05d}"

    def __len__(self) -> int:
        return self.stop - self.start


def _hash_array(h: Any, a: np.ndarray | None) -> None:
    if a is None:
        h.update(b"-")
        return
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def fingerprint(model_id: str, items: Sequence[Item], ids: np.ndarray) -> str:
    """SHA-256 of what decides a shard's file: the model id, the ids, and each item's strokes (and times) or
    pixels, label, source, modality and metadata."""
    h = hashlib.sha256(f"{SHARD_FORMAT}\0{model_id}\0".encode())
    _hash_array(h, np.asarray(ids, np.int64))
    for it in items:
        head = [it.label, it.source, it.modality, it.meta]
        h.update(json.dumps(head, sort_keys=True, default=str).encode("utf-8", "surrogateescape"))
        if it.sketch is not None:
            h.update(b"S%d" % len(it.sketch.strokes))
            for s in it.sketch.strokes:
                _hash_array(h, s)
            for t in it.sketch.times or []:
                _hash_array(h, t)
        _hash_array(h, it.image)
    return h.hexdigest()


def plan_shards(model_id: str, items: Sequence[Item], ids: np.ndarray, shard_size: int) -> list[Shard]:
    """The items cut into shards of ``shard_size`` in read order, each with its fingerprint."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    starts = range(0, len(items), shard_size)
    ends = [min(s + shard_size, len(items)) for s in starts]
    return [Shard(k, s, e, fingerprint(model_id, items[s:e], ids[s:e])) for k, (s, e) in enumerate(zip(starts, ends))]


# ---------------------------------------------------------------------------------------------- shard files
def _write_shard(work: Path, shard: Shard, codes: np.ndarray, ids: np.ndarray, rows: list[dict[str, Any]]) -> None:
    """The shard's ``.npz`` (atomically), then its ``.json`` marker naming the ``.npz``'s checksum."""
    from .index.items import json_default

    thumbs = [r.get("thumbnail") for r in rows]
    lens = np.array([-1 if t is None else len(t) for t in thumbs], np.int64)
    blob = np.frombuffer(b"".join(t for t in thumbs if t is not None), np.uint8)
    text = json.dumps([{k: v for k, v in r.items() if k != "thumbnail"} for r in rows], default=json_default)
    npz = work / f"{shard.name}.npz"
    with atomic_path(npz) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            codes=np.ascontiguousarray(codes),
            ids=np.asarray(ids, np.int64),
            thumb_lens=lens,
            thumbs=blob,
            rows=np.frombuffer(text.encode("utf-8"), np.uint8),
        )
    with open(npz, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    marker = {
        "format": SHARD_FORMAT,
        "fingerprint": shard.fingerprint,
        "count": len(shard),
        "sha256": digest,
        "bytes": npz.stat().st_size,
        "pid": os.getpid(),
        "written": time.time(),
    }
    atomic_write_text(work / f"{shard.name}.json", json.dumps(marker, indent=1) + "\n")


def check_shard(work: Path, shard: Shard) -> str | None:
    """None when the shard's files are there, of this fingerprint, and verify; else why not (``"missing"``
    when the shard was never finished)."""
    npz, marker = work / f"{shard.name}.npz", work / f"{shard.name}.json"
    if not marker.is_file():
        return "missing"
    try:
        m = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "its marker file is unreadable"
    if not isinstance(m, dict) or m.get("format") != SHARD_FORMAT:
        return "its marker file is not a code shard's"
    if m.get("fingerprint") != shard.fingerprint or m.get("count") != len(shard):
        return "it was encoded from other items or another model"
    if not npz.is_file():
        return "its codes file is missing"
    if npz.stat().st_size != m.get("bytes"):
        return f"its codes file has {npz.stat().st_size} bytes, {m.get('bytes')} were written"
    with open(npz, "rb") as f:
        if hashlib.file_digest(f, "sha256").hexdigest() != m.get("sha256"):
            return "checksum mismatch (the codes file changed after it was written)"
    return None


def read_shard(work: Path, shard: Shard) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """(codes, ids, rows with their thumbnails) of a finished shard."""
    with np.load(work / f"{shard.name}.npz", allow_pickle=False) as z:
        codes, ids, lens, blob = z["codes"], z["ids"], z["thumb_lens"], z["thumbs"].tobytes()
        rows = json.loads(z["rows"].tobytes().decode("utf-8"))
    if not len(codes) == len(ids) == len(rows) == len(lens) == len(shard):
        raise SketchSearchError(f"{work / shard.name}.npz: {len(codes)} codes for a shard of {len(shard)} items")
    ends = np.cumsum(np.maximum(lens, 0))
    for r, n, end in zip(rows, lens.tolist(), ends.tolist()):
        r["thumbnail"] = None if n < 0 else blob[end - n : end]
    return codes, ids, rows


_TEMP = re.compile(r"^\.shard-\d+\..*\.tmp\.(npz|json)$")


def _clean_temporaries(work: Path) -> None:
    """Remove the temporary files of writes a killed run left (their shards are redone)."""
    for p in work.iterdir():
        if _TEMP.match(p.name):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- workers
class ShardEncoder:
    """A Ray actor: the model, loaded once; encodes shards with ``Retriever.add_items`` and writes them."""

    def __init__(self, model: str, model_id: str, torch_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(torch_threads)
        from .model import load_model

        self.method, card = load_model(model)
        if card.model_id != model_id:
            raise SketchSearchError(f"{model}: the worker loaded model {card.model_id!r}, the driver {model_id!r}")
        self.model_id = model_id

    def encode(self, work: str, shard: Shard, items: list[Item], ids: np.ndarray) -> tuple[int, int, float]:
        from .retrieval import Retriever

        t0 = time.perf_counter()
        r = Retriever(self.method, model_id=self.model_id, backend="numpy")
        r.add_items(items, ids=ids)
        codes, got, rows = r.rows()
        _write_shard(Path(work), shard, codes, got, rows)
        return shard.k, os.getpid(), time.perf_counter() - t0


#: how many times :func:`start_ray` starts a local runtime whose raylet did not come up
RAY_START_ATTEMPTS = 2


def start_ray(
    ray: Any, num_cpus: int, attempts: int = RAY_START_ATTEMPTS, note: Callable[[str], None] | None = None
) -> None:
    """``ray.init`` of a quiet local runtime of ``num_cpus`` CPUs (no dashboard, logs off the terminal, no usage
    stats), started again (after ``ray.shutdown``) when Ray reports that its node "timed out during startup":
    Ray waits a fixed 30 s for the raylet to register, with no setting to lengthen it, and a CI run on an idle
    2-core machine once saw the raylet never come up while the same tests passed right after (``note`` hears of
    each new start). Any other error, or the last attempt's, is raised as Ray raised it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Ray waits 30 s for its GCS process to start; on a loaded 2-core machine it took longer (seen in a test
    # run beside training jobs: "Timed out waiting for file ...gcs_server_port"). Ray's own override, 120 s.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                configure_logging=True,
            )
            return
        except Exception as e:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise
            if note:
                note(f"ray: the local node did not start ({e}); starting it again ({attempt + 1} of {attempts})")
            ray.shutdown()


@contextmanager
def ray_runtime(workers: int, note: Callable[[str], None] | None = None) -> Iterator[Any]:
    """A local Ray runtime of ``workers`` CPUs for the block, quiet (no dashboard, logs off the terminal,
    no usage stats); a runtime already started by the caller is used as it is and left running."""
    ray = require_ray()
    if ray.is_initialized():
        ray_runtime.borrowed = True
        try:
            yield ray
        finally:
            ray_runtime.borrowed = False
        return
    start_ray(ray, workers, note=note)
    try:
        yield ray
    finally:
        ray.shutdown()


#: whether the runtime :func:`ray_runtime` yields is the caller's (set while it is in use)
ray_runtime.borrowed = False  # type: ignore[attr-defined]


#: how long a run in the caller's runtime waits for CPUs still held by actors being torn down (seconds)
FREE_CPU_WAIT_S = 10.0


def _free_cpus(ray: Any, want: int) -> int:
    """How many of ``want`` CPUs the caller's runtime has free (at least 1). ``ray.kill`` releases an actor's
    CPU asynchronously, so right after an earlier run in the same runtime its actors may still hold theirs (a
    CI run saw 1 of 2 free): wait up to :data:`FREE_CPU_WAIT_S` for ``want`` to come free, never beyond the
    runtime's total, then take what is free."""
    want = max(1, min(want, int(ray.cluster_resources().get("CPU", 1))))
    deadline = time.monotonic() + FREE_CPU_WAIT_S
    while (free := int(ray.available_resources().get("CPU", 0))) < want and time.monotonic() < deadline:
        time.sleep(0.05)
    return max(1, min(want, free))


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class ShardedRun:
    """What :func:`encode_sharded` did: the codes, ids and rows of every item (id order within each shard,
    shards in order), the shards found done and verified (``reused``), encoded by this run (``encoded``),
    and those redone because their files did not verify (``redone``: shard -> why)."""

    codes: np.ndarray
    ids: np.ndarray
    rows: list[dict[str, Any]]
    shards: int
    reused: list[int] = field(default_factory=list)
    encoded: list[int] = field(default_factory=list)
    redone: dict[int, str] = field(default_factory=dict)
    workers: int = 0
    encode_seconds: float = 0.0


def _redone_lines(redone: dict[int, str], work: Path, shown: int = 5) -> list[str]:
    """One line per reason a finished shard is encoded again, naming the first ``shown`` shards."""
    by_reason: dict[str, list[int]] = {}
    for k, why in redone.items():
        by_reason.setdefault(why, []).append(k)
    lines = []
    for why, ks in by_reason.items():
        names = ", ".join(map(str, ks[:shown])) + (f" and {len(ks) - shown} more" if len(ks) > shown else "")
        what = f"shard {names}" if len(ks) == 1 else f"shards {names}"
        lines.append(f"{what} in {work}: {why}; encoding {'it' if len(ks) == 1 else 'them'} again")
    return lines


def _cause(e: BaseException) -> BaseException:
    """A worker's own error (an invalid drawing, a model that does not load) rather than Ray's wrapper."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, Exception) else e


def encode_sharded(
    model: str,
    model_id: str,
    items: Sequence[Item],
    ids: np.ndarray,
    work: Path,
    *,
    workers: int,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: Callable[[int, int], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> ShardedRun:
    """Encode ``items`` (ids ``ids``) with ``model`` in shards on ``workers`` Ray actors, keeping finished
    shards in ``work`` and skipping those a previous run finished (see the module docstring). ``progress(done,
    total)`` counts items; ``note(line)`` gets what a person should know (shards reused, redone)."""
    ids = np.asarray(ids, np.int64)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    plan = plan_shards(model_id, items, ids, shard_size)
    work.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(work)
    run = ShardedRun(np.zeros(0), np.zeros(0, np.int64), [], len(plan))
    todo: deque[Shard] = deque()
    for sh in plan:
        why = check_shard(work, sh)
        if why is None:
            run.reused.append(sh.k)
        else:
            if why != "missing":
                run.redone[sh.k] = why
            todo.append(sh)
    if note:
        for line in _redone_lines(run.redone, work):
            note(line)
    done = sum(len(plan[k]) for k in run.reused)
    if run.reused and note:
        note(
            f"resuming: {len(run.reused)} of {len(plan)} shards ({done} items) already encoded in {work}; "
            f"encoding the other {len(todo)}"
        )
    if progress:
        progress(done, len(items))
    if todo:
        t0 = time.perf_counter()
        run.workers = min(workers, len(todo))
        with ray_runtime(workers, note=note) as ray:
            if ray_runtime.borrowed:  # the caller's runtime: as many workers as it has CPUs free
                run.workers = _free_cpus(ray, run.workers)
            actor = ray.remote(num_cpus=1)(ShardEncoder)
            model_arg = str(Path(model).absolute()) if Path(model).exists() else model
            actors = [actor.remote(model_arg, model_id) for _ in range(run.workers)]
            pending: dict[Any, tuple[Shard, Any]] = {}

            def submit(a: Any) -> None:
                sh = todo.popleft()
                ref = a.encode.remote(str(work), sh, list(items[sh.start : sh.stop]), ids[sh.start : sh.stop])
                pending[ref] = (sh, a)

            try:
                for _ in range(IN_FLIGHT):
                    for a in actors:
                        if todo:
                            submit(a)
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    sh, a = pending.pop(ready[0])
                    try:
                        ray.get(ready[0])
                    except ray.exceptions.RayError as e:
                        raise _cause(e) from None
                    run.encoded.append(sh.k)
                    done += len(sh)
                    if progress:
                        progress(done, len(items))
                    if after_shard is not None:
                        after_shard(sh.k)
                    if todo:
                        submit(a)
            finally:
                for a in actors:
                    ray.kill(a)
                # ray.kill returns before the worker process is gone: a run stopped part-way (an error, Ctrl-C)
                # would otherwise return, release the index's write lock, and still have a worker finishing a
                # shard into the work folder behind it. Wait for every task in flight to end (a killed task ends
                # in an actor error; its temporary file is cleaned by the next run).
                if pending:
                    ray.wait(list(pending), num_returns=len(pending), timeout=KILL_WAIT_S)
        run.encode_seconds = time.perf_counter() - t0
    parts = [read_shard(work, sh) for sh in plan]
    if parts:
        run.codes = np.concatenate([p[0] for p in parts])
        run.ids = np.concatenate([p[1] for p in parts])
        run.rows = [r for p in parts for r in p[2]]
    return run
