"""Pixel baselines (LSH, ITQ, PCA): the math against numpy, fitting inputs, artifacts round-trip, recipes,
and the README's QuickDraw table (real data)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from sketchsearch.data.batching import RasterDataset
from sketchsearch.data.sketch import Sketch
from sketchsearch.errors import ModelError
from sketchsearch.methods import create_method, list_methods
from sketchsearch.methods.base import Preprocessing
from sketchsearch.methods.baselines import itq_rotation, pca_basis
from sketchsearch.recipes import list_recipes, run_recipe


@pytest.fixture(autouse=True)
def _one_blas_thread():  # type: ignore[no-untyped-def]
    # the dev machines share 2 cores: multi-threaded LAPACK under contention is 20x slower than one thread
    with threadpool_limits(1):
        yield


def clustered_rasters(
    n_classes: int = 4, per_class: int = 40, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N, size, size) in [0, 1]: a random blob template per class plus pixel noise."""
    rng = np.random.default_rng(seed)
    templates = (rng.random((n_classes, size, size)) < 0.15).astype(np.float32)
    labels = np.repeat(np.arange(n_classes), per_class)
    x = templates[labels] * (rng.random((len(labels), size, size)) < 0.8) + 0.1 * rng.random((len(labels), size, size))
    return np.clip(x, 0, 1).astype(np.float32), labels


def batch_of(x: np.ndarray) -> dict[str, torch.Tensor]:
    return {"raster": torch.from_numpy(x)[:, None]}


def test_registered() -> None:
    assert {"itq", "lsh", "pca"} <= set(list_methods())
    assert {"itq", "lsh", "pca"} <= set(list_recipes())


@pytest.mark.parametrize("nbits", [16, 32, 64, 128])
def test_itq_codes_match_a_numpy_recomputation(nbits: int) -> None:
    x, _ = clustered_rasters(per_class=50)
    m = create_method("itq", nbits=nbits, seed=3)
    m.fit(x)
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean, comps = pca_basis(flat, nbits)
    rot, _ = itq_rotation((flat - mean) @ comps, 50, 3)
    expected = (flat - mean) @ comps @ rot
    z = m.encode_sketch(batch_of(x)).numpy()
    assert z.shape == (len(x), nbits)
    np.testing.assert_allclose(z, expected, rtol=1e-3, atol=1e-3)
    assert m.code_size == nbits and m.output == "binary"


def test_itq_rotation_is_orthogonal_and_lowers_quantization_loss() -> None:
    x, _ = clustered_rasters()
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean, comps = pca_basis(flat, 16)
    v = (flat - mean) @ comps
    rot, losses = itq_rotation(v, 50, seed=0)
    np.testing.assert_allclose(rot.T @ rot, np.eye(16), atol=1e-9)
    assert len(losses) == 50
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(losses))  # each Procrustes step cannot increase it
    # better than the PCA axes themselves (identity rotation), which is the point of ITQ
    b0 = np.where(v >= 0, 1.0, -1.0)
    assert losses[-1] < ((b0 - v) ** 2).sum() / len(v)
    # a fixed point of the alternation: R = polar factor of V^T sign(V R)
    u, _, wt = np.linalg.svd(v.T @ np.where(v @ rot >= 0, 1.0, -1.0))
    np.testing.assert_allclose(u @ wt, rot, atol=1e-6)


def test_pca_basis_is_orthonormal_and_sorted() -> None:
    x, _ = clustered_rasters()
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean, comps = pca_basis(flat, 8)
    np.testing.assert_allclose(comps.T @ comps, np.eye(8), atol=1e-9)
    var = ((flat - mean) @ comps).var(axis=0)
    assert (np.diff(var) <= 1e-9).all()
    np.testing.assert_allclose(mean, flat.mean(axis=0))


def test_lsh_is_seeded_centred_gaussian_hyperplanes() -> None:
    x, _ = clustered_rasters()
    a, b, c = (create_method("lsh", nbits=32, seed=s) for s in (7, 7, 8))
    for m in (a, b, c):
        m.fit(x)
    za, zb, zc = (m.encode_sketch(batch_of(x)).numpy() for m in (a, b, c))
    np.testing.assert_array_equal(za, zb)
    assert not np.array_equal(za > 0, zc > 0)
    flat = x.reshape(len(x), -1).astype(np.float64)
    w = np.random.default_rng(7).standard_normal((flat.shape[1], 32))
    np.testing.assert_allclose(za, (flat - flat.mean(0)) @ w, rtol=1e-3, atol=1e-3)


def test_pca_is_a_normalised_float_embedding() -> None:
    x, _ = clustered_rasters()
    m = create_method("pca", dim=12)
    m.fit(x)
    z = m.encode_sketch(batch_of(x))
    assert m.output == "float" and z.shape == (len(x), 12)
    np.testing.assert_allclose(z.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_fit_accepts_tensors_datasets_and_sketches() -> None:
    x, labels = clustered_rasters()
    ref = create_method("itq", nbits=16)
    ref.fit(x)
    for data in (torch.from_numpy(x), x[:, None], RasterDataset(x, labels)):
        m = create_method("itq", nbits=16)
        m.fit(data)
        torch.testing.assert_close(m.projection, ref.projection)
    rng = np.random.default_rng(0)
    sketches = [Sketch(strokes=[rng.random((5, 2)).astype(np.float32) * 100]) for _ in range(40)]
    m = create_method("lsh", nbits=16)
    m.fit(sketches)
    assert m.fit_info["n_train"] == 40


def test_bad_inputs_raise_clear_errors() -> None:
    x, _ = clustered_rasters()
    with pytest.raises(ValueError, match="multiple of 8"):
        create_method("itq", nbits=12)
    with pytest.raises(ModelError, match="fit"):
        create_method("itq", nbits=16).encode_sketch(batch_of(x))
    with pytest.raises(ValueError, match=r"\(N, 32, 32\)"):
        create_method("lsh", nbits=16).fit(np.zeros((10, 28, 28), np.float32))
    with pytest.raises(ValueError, match="more than 128 training rasters"):
        create_method("itq", nbits=128).fit(x[:100])
    with pytest.raises(ValueError, match="'raster'"):
        create_method("itq", preprocessing=Preprocessing(inputs=("points",)))


@pytest.mark.parametrize("name", ["itq", "lsh", "pca"])
def test_save_load_round_trip(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sketchsearch.model import load_model, save_model

    x, _ = clustered_rasters()
    kw = {"dim": 16} if name == "pca" else {"nbits": 32, "seed": 5}
    m = create_method(name, preprocessing=Preprocessing(raster_size=32, line_width=2.0), **kw)
    m.fit(x)
    card = save_model(m, tmp_path / name, training={"data": "synthetic"})
    assert card.code_size == (16 if name == "pca" else 32)
    loaded, card2 = load_model(tmp_path / name)
    assert type(loaded) is type(m) and loaded.hparams == m.hparams and loaded.preprocessing == m.preprocessing
    torch.testing.assert_close(loaded.encode_sketch(batch_of(x)), m.encode_sketch(batch_of(x)))
    assert card2.model_id == card.model_id


def _write_quickdraw_folder(folder, n_classes: int = 3, per_class: int = 14) -> None:  # type: ignore[no-untyped-def]
    """Tiny QuickDraw raw ndjson files: each class is a distinct polyline shape plus jitter."""
    import json

    rng = np.random.default_rng(1)
    folder.mkdir()
    shapes = [
        np.array([[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]),  # square
        np.array([[0, 100], [50, 0], [100, 100]]),  # caret
        np.array([[0, 0], [100, 100], [0, 100], [100, 0]]),
    ]  # zigzag
    for c in range(n_classes):
        with open(folder / f"class{c}.ndjson", "w") as f:
            for i in range(per_class):
                pts = shapes[c] + rng.normal(0, 4, shapes[c].shape)
                t = list(range(len(pts)))
                rec = {
                    "word": f"class{c}",
                    "key_id": f"{c}{i:04d}",
                    "recognized": True,
                    "countrycode": "US",
                    "drawing": [[pts[:, 0].tolist(), pts[:, 1].tolist(), t]],
                }
                f.write(json.dumps(rec) + "\n")


@pytest.mark.parametrize("name", ["itq", "lsh"])
def test_recipe_reads_data_fits_on_gallery_and_scores_itself(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sketchsearch.data.batching import item_input
    from sketchsearch.data.sources import load_collection
    from sketchsearch.data.splits import make_split

    _write_quickdraw_folder(tmp_path / "qd")
    res = run_recipe(name, str(tmp_path / "qd"), seed=0, progress=False, nbits=16, queries_per_class=4)
    method, training, main = res.method, res.training, res.metrics["main"]
    assert res.split is not None and res.split.kind == "category" and not res.split.train
    assert method.code_size == 16 and training["fitted_on"] == "gallery" and training["n_train"] == 3 * 10
    assert training["split"]["query"] == 12 and training["split"]["gallery"] == 30
    assert main["n_queries"] == 12 and main["n_gallery"] == 30 and "zero_shot" not in res.metrics
    assert main["mAP@all"] > 0.5  # three clearly different shapes; chance is 1/3
    # fitted on exactly the split's gallery, in its order: the same fit by hand gives the same projection
    coll = load_collection(tmp_path / "qd")
    split = make_split("category", coll.items, queries_per_class=4, seed=0)
    assert res.split.parts == split.parts
    by_hand = create_method(name, nbits=16)
    by_hand.fit([item_input(coll[i]) for i in split.gallery])
    torch.testing.assert_close(method.projection, by_hand.projection, rtol=0, atol=0)


def test_rows_on_a_split_with_train_part_and_unseen_classes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The baseline rows of the SketchMate table: fitted on the split's train part, scored on the seen classes'
    held-out queries / gallery and, apart, on the unseen classes (zero-shot)."""
    from sketchsearch.data.sources import load_collection
    from sketchsearch.data.splits import make_split
    from sketchsearch.eval.evaluate import Row, evaluate_rows

    _write_quickdraw_folder(tmp_path / "qd")
    coll = load_collection(tmp_path / "qd")
    split = make_split("class_holdout", coll.items, seed=0, unseen=1)
    doc = evaluate_rows(
        [Row("ITQ 16", method="itq", kwargs={"nbits": 16}), Row("PCA 8", method="pca", kwargs={"dim": 8})], coll, split
    )
    for row in doc["rows"]:
        assert row["fit"]["fitted_on"] == "train" and row["fit"]["n_train"] == len(split.train) == 2 * 9
        assert row["main"]["n_queries"] == len(split.query) == 2 and row["main"]["n_gallery"] == 2 * 4
        assert row["zero_shot"]["n_queries"] == 1 and row["zero_shot"]["n_gallery"] == 13
        assert row["main"]["mAP@all"] > 0.9  # two clearly different shapes
        assert row["zero_shot"]["mAP@all"] == 1.0  # one class: every gallery item is relevant


@pytest.mark.data
def test_readme_itq_16_figures_on_quickdraw(shared_data) -> None:  # type: ignore[no-untyped-def]
    """The README's pixel-baseline table, row ITQ 16: the category split (10 queries per class, seed 0) of
    QuickDraw raw, ITQ fitted on its gallery; the split is the one saved with the benchmark's results."""
    from pathlib import Path

    from sketchsearch.data.sources import load_collection
    from sketchsearch.data.splits import Split, make_split
    from sketchsearch.eval.evaluate import Row, evaluate_rows

    coll = load_collection(shared_data / "quickdraw" / "raw")
    split = make_split("category", coll.items, queries_per_class=10, seed=0)
    saved = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "quickdraw_raw_split_q10_seed0.json"
    assert split.parts == Split.load(saved).parts
    assert (len(split.query), len(split.gallery)) == (3000, 5359)
    doc = evaluate_rows([Row("ITQ 16", method="itq", kwargs={"nbits": 16, "seed": 0})], coll, split, ks=(100,))
    main = doc["rows"][0]["main"]
    assert (round(main["mAP@all"], 4), round(main["P@100"], 4)) == (0.0258, 0.0219)
