"""SketchMate: network shapes, 4-d strokes, noise removal, losses by hand, one step per stage, artifacts, the
recipe (split, stages, evaluation) and its determinism, the shipped model on its own split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sketchsearch.data.batching import make_batch, sketch_points
from sketchsearch.data.sketch import Sketch
from sketchsearch.encoders import create_encoder
from sketchsearch.errors import ModelError
from sketchsearch.losses.hashing import class_centres, quantization_loss, sketch_centre_loss
from sketchsearch.methods.base import create_method
from sketchsearch.methods.sketchmate import PHASES, SketchMate, entropy_filter, prediction_entropy

TINY = {"cnn_width": 0.125, "rnn_hidden": 8, "n_classes": 3, "nbits": 16}


def _sketches(rng: np.random.Generator, n: int) -> list[Sketch]:
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        out.append(Sketch([rng.uniform(0, 100, (int(rng.integers(2, 12)), 2)) for _ in range(k)]))
    return out


# ---------------------------------------------------------------------------------------------- shapes
def test_branch_and_fused_shapes(rng: np.random.Generator) -> None:
    cnn = create_encoder("sketch_a_net", raster_size=64, width=0.25)
    assert cnn(torch.rand(2, 1, 64, 64)).shape == (2, cnn.out_dim)
    rnn = create_encoder("stroke_rnn", hidden=8)
    assert rnn(torch.rand(3, 7, 4), torch.tensor([7, 2, 5])).shape == (3, 16)
    m = SketchMate(**TINY)
    b = make_batch(_sketches(rng, 5), m.preprocessing, [0, 1, 2, 0, 1])
    f = m.encode_sketch(b)
    assert f.shape == (5, 16) and bool(((f > 0) & (f < 1)).all())
    assert m.logits(b).shape == (5, 3)
    assert m.binarize(f).shape == (5, 2) and m.binarize(f).dtype == np.uint8


def test_rnn_ignores_padding() -> None:
    torch.manual_seed(0)
    rnn = create_encoder("stroke_rnn", hidden=8).eval()
    x = torch.randn(1, 5, 4)
    padded = torch.cat([x, torch.zeros(1, 4, 4)], dim=1)
    a = rnn(x, torch.tensor([5]))
    b = rnn(padded, torch.tensor([5]))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, rnn(padded, torch.tensor([9])))


def test_single_branch_models_and_bad_kwargs() -> None:
    assert SketchMate(branches="cnn", **TINY).rnn is None
    assert SketchMate(branches="rnn", **TINY).cnn is None
    with pytest.raises(ValueError, match="branches"):
        SketchMate(branches="gru", **TINY)
    from sketchsearch.methods.base import Preprocessing

    with pytest.raises(ValueError, match="points"):
        SketchMate(preprocessing=Preprocessing(inputs=("raster",)), **TINY)


# ---------------------------------------------------------------------------------------------- 4-d strokes
def test_four_d_encoding_by_hand() -> None:
    s = Sketch([[[0, 0], [1, 0]], [[1, 1], [0, 1]]])  # already in the unit box: normalise keeps it
    expected = np.array(
        [
            [0, 0, 1, 0],  # first point, offset from the origin, pen stays down
            [1, 0, 0, 1],  # end of stroke 1: pen up after it
            [0, 1, 1, 0],  # jump to stroke 2's start
            [-1, 0, 0, 1],
        ],  # end of the sketch (no end-of-sketch state in SketchMate's 4-d form)
        dtype=np.float32,
    )
    np.testing.assert_allclose(s.to_4d(), expected)
    np.testing.assert_allclose(sketch_points(s, max_points=100), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------- noise removal
def test_entropy_filter_keeps_middle_90_percent(rng: np.random.Generator) -> None:
    # class 0: 100 sketches, class 1: 20; entropy grows with t (a one-hot mixed with uniform by t)
    sizes = {0: 100, 1: 20}
    labels, ts = [], []
    for c, n in sizes.items():
        t = rng.permutation(np.linspace(0.01, 0.99, n))
        labels += [c] * n
        ts += list(t)
    t = torch.tensor(ts, dtype=torch.float64)[:, None]
    one_hot = torch.zeros(len(ts), 4, dtype=torch.float64)
    one_hot[:, 0] = 1
    probs = (1 - t) * one_hot + t * torch.full_like(one_hot, 0.25)
    y = torch.tensor(labels)
    ent = prediction_entropy(probs)
    mask = entropy_filter(probs, y, keep=0.9)
    for c, n in sizes.items():
        idx = (y == c).nonzero().flatten()
        drop = round(n * 0.05)
        order = idx[torch.argsort(ent[idx])]
        assert mask[idx].sum() == n - 2 * drop
        assert not mask[order[:drop]].any() and not mask[order[n - drop :]].any()
        assert mask[order[drop : n - drop]].all()
    # unknown labels never kept; keep=1 keeps every known one
    y2 = y.clone()
    y2[:3] = -1
    m2 = entropy_filter(probs, y2, keep=1.0)
    assert not m2[:3].any() and m2[3:].all()
    with pytest.raises(ValueError, match="keep"):
        entropy_filter(probs, y, keep=0.0)


def test_prediction_entropy_by_hand() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(prediction_entropy(p), torch.tensor([np.log(2.0), 0.0], dtype=torch.float32))


# ---------------------------------------------------------------------------------------------- losses
def test_centre_and_quantization_losses_by_hand() -> None:
    f = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    centres = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    y = torch.tensor([1, 0])
    # sample 0 vs centre 1: (0.2, -0.2) -> 0.08; sample 1 vs centre 0: (0.1, -0.1) -> 0.02; mean of half
    torch.testing.assert_close(sketch_centre_loss(f, y, centres), torch.tensor((0.5 * 0.08 + 0.5 * 0.02) / 2))
    # unknown labels are ignored
    torch.testing.assert_close(sketch_centre_loss(f, torch.tensor([1, -1]), centres), torch.tensor(0.5 * 0.08))
    # b = [[0, 1], [1, 0]] -> (0.04 + 0.04), (0.16 + 0.16) -> mean 0.2
    torch.testing.assert_close(quantization_loss(f), torch.tensor(0.2))
    with pytest.raises(ValueError, match="centres"):
        sketch_centre_loss(f, y, torch.zeros(2, 3))


def test_class_centres_with_mask() -> None:
    f = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.5, 0.0], [0.9, 0.1]])
    y = torch.tensor([0, 0, 1, 1])
    mask = torch.tensor([True, True, True, False])
    c, n = class_centres(f, y, 3, mask)
    torch.testing.assert_close(c, torch.tensor([[0.5, 1.0], [0.5, 0.0], [0.5, 0.5]]))
    assert n.tolist() == [2, 1, 0]


# ---------------------------------------------------------------------------------------------- training
def _dataset(rng: np.random.Generator, n: int = 12):  # type: ignore[no-untyped-def]
    from sketchsearch.data.batching import SketchDataset

    m = SketchMate(**TINY)
    return SketchDataset(_sketches(rng, n), [i % 3 for i in range(n)], m.preprocessing)


def _batches(m: SketchMate, data, size: int = 256):  # type: ignore[no-untyped-def]
    """Labelled batches of a SketchDataset's drawings, in order."""
    return [
        make_batch(data.items[i : i + size], m.preprocessing, data.labels[i : i + size])
        for i in range(0, len(data.items), size)
    ]


def _snapshot(module: torch.nn.Module | None) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()] if module is not None else []


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize(
    ("phase", "centre_distance"),
    [(p, "euclidean") for p in PHASES] + [("full", "cosine"), ("full", "snr")],
)
def test_one_training_step_per_stage(
    phase: str, centre_distance: str, rng: np.random.Generator, tmp_path: Path
) -> None:
    from sketchsearch.train import TrainConfig, train

    torch.manual_seed(0)
    m = SketchMate(centre_distance=centre_distance, **TINY)
    data = _dataset(rng)
    if phase == "full":
        with pytest.raises(ModelError, match="centres"):
            m.training_losses(_batches(m, data)[0], phase="full")
        info = m.compute_centres(_batches(m, data, size=5))
        assert info["sketches"] == 12 and bool(m.centres_ready)
    cnn0, rnn0, hash0 = _snapshot(m.cnn), _snapshot(m.rnn), _snapshot(m.hash)
    res = train(
        m,
        data,
        TrainConfig(iterations=1, batch_size=6, phase=phase, progress=False, log_every=1, out=str(tmp_path)),
    )
    last = res.history[-1]
    assert np.isfinite(last["loss"]) and "ce_loss" in last
    assert m.cnn is not None and m.rnn is not None
    assert _changed(cnn0, m.cnn) == (phase != "pretrain_rnn")
    assert _changed(rnn0, m.rnn) == (phase != "pretrain_cnn")
    assert _changed(hash0, m.hash) == (phase in ("pretrain_fused", "full"))
    if phase == "full":
        assert {"quantization_loss", "centre_loss"} <= set(last)
    assert (tmp_path / "log.jsonl").read_text().strip()


def test_unknown_phase_and_missing_branch(rng: np.random.Generator) -> None:
    m = SketchMate(branches="cnn", **TINY)
    b = make_batch(_sketches(rng, 2), m.preprocessing, [0, 1])
    with pytest.raises(ValueError, match="valid phases"):
        m.training_losses(b, phase="warmup")
    with pytest.raises(ValueError, match="branch"):
        m.training_losses(b, phase="pretrain_rnn")
    # without the centre loss the full objective needs no centres
    m2 = SketchMate(use_centre_loss=False, branches="cnn", **TINY)
    assert set(m2.training_losses(b, phase="full")) >= {"ce_loss", "quantization_loss"}


def test_save_load_round_trip(rng: np.random.Generator, tmp_path: Path) -> None:
    from sketchsearch.model import load_model, save_model

    torch.manual_seed(1)
    m = create_method("sketchmate", **TINY)
    assert isinstance(m, SketchMate)
    data = _dataset(rng)
    m.compute_centres(_batches(m, data), noise_removal=False)
    card = save_model(m.eval(), tmp_path / "sm")
    m2, card2 = load_model(tmp_path / "sm")
    assert card2.model_id == card.model_id and card2.code_size == 16 and card2.output == "binary"
    assert isinstance(m2, SketchMate) and bool(m2.centres_ready)
    torch.testing.assert_close(m2.centres, m.centres)
    b = make_batch(data.items[:4], m.preprocessing)
    torch.testing.assert_close(m2.encode_sketch(b), m.encode_sketch(b))
    assert json.loads((tmp_path / "sm.json").read_text())["preprocessing"]["inputs"] == ["raster", "points"]


def test_pretrained_cnn_branch_trains_its_top_and_round_trips(rng: np.random.Generator, tmp_path: Path) -> None:
    """``cnn_backbone="lite0"``: ImageNet Lite0 as the CNN branch; a pretraining step moves its top blocks and
    linear layer but never the frozen trunk, which the artifact leaves to the package."""
    from sketchsearch.model import load_model, save_model
    from sketchsearch.train import TrainConfig, train

    torch.manual_seed(0)
    kw = {**TINY, "cnn_backbone": "lite0", "cnn_frozen_blocks": 14, "cnn_dim": 32}
    m = create_method("sketchmate", **kw)
    assert isinstance(m, SketchMate) and m.preprocessing.raster_size == 96
    assert list(m.external_weights()) == ["cnn.net.trunk."]
    data = _dataset(rng)
    data.pre = m.preprocessing  # render at the Lite0 branch's size
    trunk, top = _snapshot(m.cnn.net.trunk), _snapshot(m.cnn.net.top)
    res = train(m, data, TrainConfig(iterations=1, batch_size=6, phase="pretrain_cnn", progress=False, log_every=1))
    assert np.isfinite(res.history[-1]["loss"])
    assert _changed(top, m.cnn.net.top) and not _changed(trunk, m.cnn.net.trunk)
    m.compute_centres(_batches(m, data), noise_removal=False)
    card = save_model(m.eval(), tmp_path / "smp")
    assert card.external == m.external_weights()
    m2, _ = load_model(tmp_path / "smp")
    b = make_batch(data.items[:4], m.preprocessing)
    torch.testing.assert_close(m2.encode_sketch(b), m.encode_sketch(b))
    with pytest.raises(ValueError, match="cnn_backbone must be one of sketchanet, lite0"):
        SketchMate(cnn_backbone="vgg", **TINY)


# ---------------------------------------------------------------------------------------------- recipe
def _write_ndjson(folder: Path, rng: np.random.Generator, classes: int = 4, per_class: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        with open(folder / f"class{c}.ndjson", "w") as f:
            for i in range(per_class):
                strokes = []
                for _ in range(int(rng.integers(1, 3))):
                    n = int(rng.integers(2, 8))
                    xs = (rng.uniform(0, 200, n) + 20 * c).round().tolist()
                    ys = rng.uniform(0, 200, n).round().tolist()
                    strokes.append([xs, ys, sorted(rng.uniform(0, 3000, n).round().tolist())])
                f.write(json.dumps({"word": f"class{c}", "key_id": f"{c}{i}", "drawing": strokes}) + "\n")
            f.write('{"word": "class0", "drawing": [[[1, 2], [3]]]}\n')  # a bad record: skipped and counted


TINY_RECIPE = {
    "iterations": 2,
    "batch_size": 8,
    "progress": False,
    "unseen": 1,
    "pretrain_iterations": 2,
    "fused_iterations": 1,
    "cnn_width": 0.125,
    "rnn_hidden": 8,
    "nbits": 16,
}


def test_recipe_end_to_end(rng: np.random.Generator, tmp_path: Path) -> None:
    from sketchsearch.data.sources import load_collection
    from sketchsearch.data.splits import make_split
    from sketchsearch.recipes import run_recipe

    _write_ndjson(tmp_path / "qd", rng)
    res = run_recipe("sketchmate", str(tmp_path / "qd"), seed=0, out=tmp_path / "run", **TINY_RECIPE)
    method, training, metrics = res.method, res.training, res.metrics
    assert isinstance(method, SketchMate) and method.n_classes == 3 and method.nbits == 16
    assert training["split"]["unseen_classes"] == 1 and training["skipped_records"] == 4
    assert set(training["stages"]) == set(PHASES) and training["centres"]["sketches"] == len(res.split.train)
    # the split is SketchMate's class hold-out of the data, saved in the work folder
    split = make_split("class_holdout", load_collection(tmp_path / "qd").items, seed=0, unseen=1)
    assert res.split.parts == split.parts and res.split.kind == "class_holdout"
    assert (tmp_path / "run" / "split.json").read_text() == res.split.to_json()
    # seen classes: held-out queries against the held-out gallery; the unseen class apart (zero-shot)
    assert metrics["main"]["n_queries"] == len(split.query)
    assert metrics["main"]["n_gallery"] == len(split.gallery)
    assert metrics["zero_shot"]["n_queries"] == len(split.part("unseen_query"))
    assert metrics["mAP@all"] == metrics["main"]["mAP@all"] and 0.0 < metrics["mAP@all"] <= 1.0
    assert 0.0 <= metrics["recognition_acc"] <= 1.0


def test_recipe_is_deterministic(rng: np.random.Generator, tmp_path: Path) -> None:
    """The same seed on the same data gives bitwise the same weights and the same figures (timings aside).
    (On CPU at the same number of torch threads: another thread count sums in another order.)"""
    from sketchsearch.recipes import run_recipe

    _write_ndjson(tmp_path / "qd", rng)
    runs = [run_recipe("sketchmate", str(tmp_path / "qd"), seed=3, **TINY_RECIPE) for _ in range(2)]
    a, b = (r.method.state_dict() for r in runs)
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    timings = ("ms_per_query", "encode_per_s")
    for name in ("main", "zero_shot"):
        assert {k: v for k, v in runs[0].metrics[name].items() if k not in timings} == {
            k: v for k, v in runs[1].metrics[name].items() if k not in timings
        }
    assert runs[0].metrics["recognition_acc"] == runs[1].metrics["recognition_acc"]
    assert runs[0].training["stages"]["full"]["last"] == runs[1].training["stages"]["full"]["last"]
    # and the seed matters: another one gives other weights
    other = run_recipe("sketchmate", str(tmp_path / "qd"), seed=4, **TINY_RECIPE).method.state_dict()
    assert not torch.equal(other["classifier.weight"], a["classifier.weight"])


# ---------------------------------------------------------------------------------------------- shipped model
@pytest.fixture(scope="module")
def quickdraw_raw(shared_data: Path):  # type: ignore[no-untyped-def]
    from sketchsearch.data.sources import load_collection

    return load_collection(shared_data / "quickdraw" / "raw")


@pytest.mark.data
def test_shipped_model_zero_shot_beats_chance(quickdraw_raw) -> None:  # type: ignore[no-untyped-def]
    """The shipped 64-bit model on 10 of the classes it never saw: mAP@all well above a random ranking."""
    from sketchsearch.data.splits import make_split
    from sketchsearch.eval.evaluate import evaluate
    from sketchsearch.model import load_model

    method, card = load_model("sketchmate-quickdraw-64")
    assert (card.method, card.code_size, card.output) == ("sketchmate", 64, "binary")
    unseen = card.training["unseen_classes"][:10]
    assert not set(unseen) & set(card.training["classes"])
    coll = quickdraw_raw.subset(it.id for it in quickdraw_raw if it.label in unseen)
    assert sorted(coll.classes) == sorted(unseen)
    res = evaluate(method, coll, make_split("leave_one_out", coll.items), ks=(10,))["main"]
    labels = [it.label for it in coll]
    counts = np.array([labels.count(c) for c in labels]) - 1
    chance = float(np.mean(counts / (len(labels) - 1)))  # a random ranking's expected AP is about R / N
    assert res["n_queries"] == len(coll) and res["mAP@all"] > 1.5 * chance, (res["mAP@all"], chance)


@pytest.mark.data
def test_class_holdout_rebuilds_the_shipped_models_split(quickdraw_raw) -> None:  # type: ignore[no-untyped-def]
    """data.splits' class_holdout (SketchMate's split) on QuickDraw raw with the card's parameters gives the
    seen / unseen classes and the part sizes the shipped model's card records, and eval.evaluate on it gives
    the card's figures (the README's 0.0876 and zero-shot 0.1347)."""
    from sketchsearch.data.splits import make_split
    from sketchsearch.eval.evaluate import evaluate
    from sketchsearch.model import load_model

    method, card = load_model("sketchmate-quickdraw-64")
    t = card.training
    split = make_split(
        "class_holdout",
        quickdraw_raw.items,
        seed=t["split_seed"],
        unseen=len(t["unseen_classes"]),
        query_frac=t["query_frac"],
        gallery_frac=t["gallery_frac"],
    )
    assert split.seen_classes == t["classes"] and split.unseen_classes == sorted(t["unseen_classes"])
    assert {p: len(ids) for p, ids in split.parts.items()} == {
        p: t["split"][p] for p in ("train", "query", "gallery", "unseen_query", "unseen_gallery")
    }
    res = evaluate(method, quickdraw_raw, split, ks=(10,))
    for name, card_name in (("main", "seen"), ("zero_shot", "zero_shot")):
        for k in ("mAP@all", "P@10"):
            assert round(res[name][k], 4) == round(card.metrics[card_name][k], 4), (name, k)


def test_centre_loss_distance_option_by_hand() -> None:
    f = torch.tensor([[0.2, 0.8, 0.5], [0.9, 0.1, 0.6]], requires_grad=True)
    centres = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.9, 0.5], [0.8, 0.3, 0.9]])
    y = torch.tensor([1, 2])
    fs, cs = f.detach() - 0.5, centres[y] - 0.5  # the signed code space
    cos = (fs * cs).sum(1) / (fs.norm(dim=1) * cs.norm(dim=1))
    got = sketch_centre_loss(f, y, centres, distance="cosine")
    torch.testing.assert_close(got, (1 - cos).mean())
    snr = ((fs - cs).var(dim=1) / cs.var(dim=1)).mean()
    torch.testing.assert_close(sketch_centre_loss(f, y, centres, distance="snr"), snr)
    # SNR is scale invariant: scaling codes and centres about the threshold leaves it unchanged
    scaled = sketch_centre_loss(0.5 + 0.5 * (f.detach() - 0.5), y, 0.5 + 0.5 * (centres - 0.5), distance="snr")
    torch.testing.assert_close(scaled, snr)
    # a centre with no signal (all 0.5) pulls nothing instead of dividing by zero
    assert sketch_centre_loss(f, torch.tensor([0, 0]), centres, distance="snr").item() == 0.0
    for dist in ("euclidean", "cosine", "snr"):
        f.grad = None
        sketch_centre_loss(f, y, centres, distance=dist).backward()
        assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0, dist
    with pytest.raises(ValueError, match="manhattan"):
        sketch_centre_loss(f, y, centres, distance="manhattan")
    with pytest.raises(ValueError, match="centre_distance"):
        create_method("sketchmate", nbits=16, n_classes=3, centre_distance="manhattan")
