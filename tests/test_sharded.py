"""The sharded backend (``index/sharded.py``) is the numba scan, exactly: the same ids and distances (ties by
id) on codes full of ties, across shard boundaries, with k beyond a shard and beyond the live rows, on 1 and 2
threads; removed rows (tombstones) are never returned and the results equal a fresh index without them;
compaction keeps results and ids; an add leaves earlier shards untouched (memory-mapped ones included); a save
compacts, a load memory-maps and shards by row ranges, and the config survives it; bad config values name
their field; ``index build --backend sharded`` writes a sharded folder."""

from __future__ import annotations

import json
import math
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.data.render import rasterize
from sketchsearch.data.synthetic import merchant_marks
from sketchsearch.errors import IndexArgumentError
from sketchsearch.index import MISSING_DISTANCE, ShardedHammingIndex, _kernels, create_index
from sketchsearch.index.sharded import DEFAULT_SHARD_SIZE, THREADS_ENV, usable_cpus
from sketchsearch.index.store import load_index, read_manifest, save_index
from sketchsearch.methods import create_method
from sketchsearch.methods.base import Preprocessing
from sketchsearch.model import save_model


def tied_codes(rng: np.random.Generator, n: int, nbits: int, distinct: int = 6) -> np.ndarray:
    """n codes drawn from a few distinct ones: nearly every distance is tied many times."""
    return rng.integers(0, 256, size=(distinct, nbits // 8), dtype=np.uint8)[rng.integers(0, distinct, n)]


def sharded(nbits: int = 64, **config: Any) -> ShardedHammingIndex:
    index = create_index("sharded", nbits=nbits, **config)
    assert isinstance(index, ShardedHammingIndex)
    return index


def reference(xb: np.ndarray, ids: np.ndarray, nbits: int, backend: str = "numba") -> Any:
    index = create_index(backend, nbits=nbits)
    index.add(xb, ids)
    return index


def assert_same(a: Any, b: Any, q: np.ndarray, ks: tuple[int, ...]) -> None:
    for k in ks:
        (da, ia), (db, ib) = a.search(q, k), b.search(q, k)
        assert da.dtype == np.int32 and ia.dtype == np.int64 and da.shape == ia.shape == (len(q), k)
        np.testing.assert_array_equal(da, db, err_msg=f"distances, k={k}")
        np.testing.assert_array_equal(ia, ib, err_msg=f"ids, k={k}")


def memory_mapped(a: np.ndarray | None) -> bool:
    """Whether ``a`` is (a view of) a memory-mapped file."""
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = a.base  # type: ignore[assignment]
    return False


def queries(rng: np.random.Generator, xb: np.ndarray) -> np.ndarray:
    nbits = 8 * xb.shape[1]
    return np.concatenate([rng.integers(0, 256, size=(5, nbits // 8), dtype=np.uint8), xb[:3]])


@pytest.mark.parametrize("nbits", [16, 24, 64, 128])
@pytest.mark.parametrize("threads", [1, 2])
def test_equals_the_numba_scan_and_the_popcount_oracle(nbits: int, threads: int, rng: np.random.Generator) -> None:
    n, size = 600, 70  # 9 shards, the last one partial
    xb = tied_codes(rng, n, nbits)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)  # not in insertion order
    index = sharded(nbits, shard_size=size, threads=threads)
    index.add(xb[:250], ids[:250])
    index.add(xb[250:], ids[250:])  # interleaves with the first add's ids
    assert len(index) == n and [len(s[1]) for s in index.shards()] == [size] * 8 + [n - 8 * size]
    assert index.search_threads() == threads
    q = queries(rng, xb)
    ks = (1, 5, size, size + 1, 3 * size + 7, n, n + 9)  # a shard's size, beyond it, all rows, beyond them
    assert_same(index, reference(xb, ids, nbits), q, ks)
    assert_same(index, reference(xb, ids, nbits, "numpy"), q, (n + 9,))  # the popcount oracle
    d, i = index.search(q, n + 9)
    assert (i[:, n:] == -1).all() and (d[:, n:] == MISSING_DISTANCE).all()
    want = reference(xb, ids, nbits, "numpy")
    for radius in (0, nbits // 4, nbits // 2 + 1, nbits + 1):
        for a, b in zip(index.range_search(q, radius), want.range_search(q, radius)):
            np.testing.assert_array_equal(a, b)


def test_one_and_two_threads_and_the_environment_give_the_same_results(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    xb = tied_codes(rng, 3000, 64, distinct=20)
    q = queries(rng, xb)
    one, two, auto = sharded(shard_size=500, threads=1), sharded(shard_size=500, threads=2), sharded(shard_size=500)
    for index in (one, two, auto):
        index.add(xb)
    assert (one.search_threads(), two.search_threads()) == (1, 2)
    assert auto.search_threads() == min(6, usable_cpus())  # the default: one per shard, up to the CPUs
    assert_same(one, two, q, (1, 17, 600, 3001))
    monkeypatch.setenv(THREADS_ENV, "2")
    assert auto.search_threads() == 2 and one.search_threads() == 1  # the config wins over the environment
    assert_same(auto, one, q, (600,))
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(IndexArgumentError, match=THREADS_ENV) as e:
        auto.search(q, 3)
    assert e.value.field == "threads"


def test_the_kernels_release_the_gil() -> None:
    assert _kernels.knn_scan_live.targetoptions["nogil"] and _kernels.knn_scan.targetoptions["nogil"]


def test_a_shared_bound_prunes_and_the_merged_blocks_equal_the_whole_scan(rng: np.random.Generator) -> None:
    """knn_scan_live's ``bound``: blocks scanned in any order with one bound array, merged by (distance,
    position), give exactly the scan of the whole; the bound ends at or above the true k-th distance."""
    _kernels.ensure_compiled()
    xb = tied_codes(rng, 5000, 64, distinct=30).view(np.uint64)
    q = np.concatenate([rng.integers(0, 256, size=(20, 8), dtype=np.uint8).view(np.uint64), xb[:4]])
    for k in (1, 10, 300):
        want_d, want_p = _kernels.knn_scan(q, xb, k, 64)
        bound = np.full(len(q), 64, np.int64)
        parts = []
        for s0, s1 in ((3000, 5000), (0, 1000), (1000, 3000)):  # not in position order
            d, p = _kernels.knn_scan_live(q, xb[s0:s1], np.zeros(0, np.bool_), k, 64, bound)
            parts.append((d, np.where(p >= 0, p + s0, -1)))
        d = np.concatenate([x[0] for x in parts], axis=1)
        p = np.concatenate([x[1] for x in parts], axis=1)
        order = np.lexsort((np.where(p < 0, np.iinfo(np.int64).max, p), d), axis=1)[:, :k]
        np.testing.assert_array_equal(np.take_along_axis(d, order, axis=1), want_d)
        np.testing.assert_array_equal(np.take_along_axis(p, order, axis=1), want_p)
        assert (bound >= want_d[:, -1]).all() and (bound < 64).all()


@pytest.mark.parametrize("seed", range(4))
def test_many_small_shards_on_three_threads_with_tombstones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nbits, n = (8, 16, 64, 128)[seed], 900
    xb = tied_codes(rng, n, nbits, distinct=4 + 3 * seed)
    ids = rng.permutation(5 * n)[:n].astype(np.int64)
    index = sharded(nbits, shard_size=int(rng.integers(5, 60)), threads=3, max_deleted=1.0)
    index.add(xb, ids)
    gone = ids[rng.random(n) < 0.3]
    index.remove(gone)
    keep = ~np.isin(ids, gone)
    assert_same(index, reference(xb[keep], ids[keep], nbits, "numpy"), queries(rng, xb), (1, 3, 40, 200, n))


def test_removed_rows_are_never_returned_and_results_equal_a_fresh_index(rng: np.random.Generator) -> None:
    n, size = 500, 64
    xb = tied_codes(rng, n, 64)
    ids = np.arange(0, 3 * n, 3, dtype=np.int64)
    index = sharded(shard_size=size, threads=2, max_deleted=1.0)  # keep every tombstone
    index.add(xb, ids)
    before = [s[0] for s in index.shards()]
    gone = np.concatenate([ids[rng.permutation(n)[:150]], ids[size : 2 * size]])  # a whole shard among them
    assert index.remove(np.concatenate([gone, [1, 10**9]])) == np.unique(gone).size  # unknown ids ignored
    assert index.remove(gone[:5]) == 0  # already removed
    assert index.deleted == np.unique(gone).size and len(index) == n - index.deleted
    assert all(np.shares_memory(a, s[0]) for a, s in zip(before, index.shards()))  # nothing rewritten
    keep = ~np.isin(ids, gone)
    fresh = reference(xb[keep], ids[keep], 64)
    q = queries(rng, xb)
    live = int(keep.sum())
    assert_same(index, fresh, q, (1, 10, size, 2 * size + 3, live, live + 50))
    _, got = index.search(q, n)
    assert not np.isin(got, gone).any() and (got[:, live:] == -1).all()
    np.testing.assert_array_equal(index.ids, ids[keep])
    want = reference(xb[keep], ids[keep], 64, "numpy")
    for a, b in zip(index.range_search(q, 40), want.range_search(q, 40)):
        np.testing.assert_array_equal(a, b)
    assert index.remove(ids) == live and len(index) == 0  # everything removed: only missing hits
    d, got = index.search(q, 3)
    assert (got == -1).all() and (d == MISSING_DISTANCE).all()


def test_a_shard_past_max_deleted_is_compacted_alone(rng: np.random.Generator) -> None:
    xb = tied_codes(rng, 300, 64)
    index = sharded(shard_size=100, max_deleted=0.25)
    index.add(xb)
    before = index.shards()
    assert index.remove(np.arange(0, 25)) == 25  # 25 of 100: not yet past the fraction
    assert index.deleted == 25 and len(index.shards()[0][1]) == 100
    assert index.remove(np.arange(100, 140)) == 40  # the second shard goes past it
    after = index.shards()
    assert [len(s[1]) for s in after] == [100, 60, 100] and after[1][2] is None and index.deleted == 25
    assert np.shares_memory(after[0][0], before[0][0]) and np.shares_memory(after[2][0], before[2][0])
    assert index.remove(np.arange(200, 300)) == 100 and len(index.shards()) == 2  # an emptied shard goes
    keep = np.ones(300, bool)
    keep[:25] = keep[100:140] = keep[200:] = False
    assert_same(index, reference(xb[keep], np.flatnonzero(keep), 64), queries(rng, xb), (1, 50, 300))
    zero = sharded(shard_size=100, max_deleted=0.0)  # every remove compacts
    zero.add(xb)
    zero.remove([3, 150])
    assert zero.deleted == 0 and [len(s[1]) for s in zero.shards()] == [99, 99, 100]


def test_compaction_keeps_results_and_ids(rng: np.random.Generator) -> None:
    xb = tied_codes(rng, 700, 64)
    index = sharded(shard_size=100, max_deleted=1.0)
    index.add(xb)
    index.remove(rng.permutation(700)[:260])
    q = queries(rng, xb)
    ids, (d, got) = index.ids.copy(), index.search(q, 120)
    assert index.compact() == 260 and index.deleted == 0 and index.compact() == 0
    assert [len(s[1]) for s in index.shards()] == [100] * 4 + [40] and all(s[2] is None for s in index.shards())
    np.testing.assert_array_equal(index.ids, ids)
    for a, b in zip(index.search(q, 120), (d, got)):
        np.testing.assert_array_equal(a, b)
    assert_same(index, reference(xb[ids], ids, 64), q, (1, 120, 500))


def test_an_add_leaves_earlier_shards_untouched(rng: np.random.Generator, tmp_path: Path) -> None:
    xb = tied_codes(rng, 400, 64)
    index = sharded(shard_size=64)
    index.add(xb[:150])  # 64 + 64 + 22
    before = [(c.copy(), c) for c, _, _ in index.shards()]
    index.add(xb[150:300])  # fills the third shard, opens 2 more
    shards = index.shards()
    assert [len(s[1]) for s in shards] == [64, 64, 64, 64, 44]
    for (copy, view), (codes, _, _) in zip(before[:2], shards):
        assert np.shares_memory(view, codes) and np.array_equal(copy, codes)
    assert_same(index, reference(xb[:300], np.arange(300), 64), queries(rng, xb), (1, 70, 301))

    # a loaded index: the shards are row ranges of the memory-mapped codes.npy; an add copies the last one only
    save_index(index, tmp_path / "idx", model_id="m")
    loaded, items = load_index(tmp_path / "idx")
    items.close()
    assert isinstance(loaded, ShardedHammingIndex)
    mapped = loaded.state()["codes"]
    assert memory_mapped(mapped) and all(np.shares_memory(s[0], mapped) for s in loaded.shards())
    loaded.add(xb[300:400])
    shards = loaded.shards()
    assert all(np.shares_memory(s[0], mapped) for s in shards[:4])
    assert not any(np.shares_memory(s[0], mapped) for s in shards[4:])
    assert [len(s[1]) for s in shards] == [64] * 6 + [16]
    # ids among the stored ones rebuild the shards from the first they reach, not those before
    gone = np.arange(200, 220, 2)
    assert loaded.remove(gone) == 10 and loaded.deleted == 10  # tombstones in the fourth shard (ids 192..255)
    loaded.add(xb[:10], gone)  # the removed ids again, with other codes
    shards = loaded.shards()
    assert all(np.shares_memory(s[0], mapped) for s in shards[:3]) and not np.shares_memory(shards[3][0], mapped)
    assert loaded.deleted == 0 and [len(s[1]) for s in shards] == [64] * 6 + [16]
    codes = xb[:400].copy()
    codes[gone] = xb[:10]
    assert_same(loaded, reference(codes, np.arange(400), 64), queries(rng, xb), (1, 30, 401))
    with pytest.raises(IndexArgumentError, match="id 202 is already in the index"):
        loaded.add(xb[:1], [202])


def test_save_and_load_memory_map_compact_and_keep_the_config(rng: np.random.Generator, tmp_path: Path) -> None:
    xb = tied_codes(rng, 500, 128)
    config = {"shard_size": 90, "threads": 2, "max_deleted": 0.5}
    index = sharded(128, **config)
    index.add(xb, rng.permutation(5000)[:500])
    index.remove(index.ids[::7])
    assert index.deleted > 0
    q = queries(rng, xb)
    want = index.search(q, 130)
    save_index(index, tmp_path / "idx", model_id="m")
    assert index.deleted == 0  # a save writes the live rows only: the index is compacted
    manifest = read_manifest(tmp_path / "idx")
    assert manifest["backend"] == "sharded" and manifest["count"] == len(index)
    assert {key: manifest[key] for key in config} == config
    loaded, items = load_index(tmp_path / "idx")
    items.close()
    assert loaded.config() == {"nbits": 128, **config} and memory_mapped(loaded.state()["codes"])
    assert [len(s[1]) for s in loaded.shards()] == [90] * (len(index) // 90) + [len(index) % 90]
    for a, b in zip(loaded.search(q, 130), want):
        np.testing.assert_array_equal(a, b)
    default = sharded()
    assert default.config() == {"nbits": 64, "shard_size": DEFAULT_SHARD_SIZE, "threads": None, "max_deleted": 0.25}
    save_index(default, tmp_path / "empty", model_id="m")
    again, items = load_index(tmp_path / "empty")
    items.close()
    assert (
        again.config() == default.config()
        and len(again) == 0
        and again.search(q[:, :8], 2)[1].tolist() == [[-1, -1]] * len(q)
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("shard_size", 0),
        ("shard_size", -5),
        ("shard_size", 1.5),
        ("shard_size", True),
        ("shard_size", "8"),
        ("threads", 0),
        ("threads", False),
        ("threads", 2.0),
        ("max_deleted", -0.1),
        ("max_deleted", 1.5),
        ("max_deleted", math.nan),
        ("max_deleted", "0.2"),
    ],
)
def test_bad_config_values_name_their_field(field: str, value: object) -> None:
    with pytest.raises(IndexArgumentError, match=f"{field} must be") as e:
        create_index("sharded", nbits=64, **{field: value})
    assert e.value.field == field


def test_index_build_with_backend_sharded(tmp_path: Path) -> None:
    pre = Preprocessing(inputs=("raster",), raster_size=16, line_width=1.5)
    method = create_method("lsh", nbits=64, seed=0, preprocessing=pre)
    method.fit(np.random.default_rng(0).random((8, 16, 16)))
    save_model(method, tmp_path / "lsh")
    for s in merchant_marks(3, 2, seed=7):
        ink = rasterize(s, size=64, line_width=2.5)
        Image.fromarray(((1 - ink) * 255).astype(np.uint8)).save(tmp_path / f"{s.label}-{s.id}.png")
    res = CliRunner().invoke(
        app,
        ["index", "build", "--model", str(tmp_path / "lsh"), "--data", str(tmp_path), "--out", str(tmp_path / "idx")]
        + ["--backend", "sharded", "--json"],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 6
    manifest = read_manifest(tmp_path / "idx")
    assert (manifest["backend"], manifest["shard_size"], manifest["threads"]) == ("sharded", DEFAULT_SHARD_SIZE, None)
    index, items = load_index(tmp_path / "idx")
    items.close()
    assert index.name == "sharded" and len(index) == 6
