"""The dsml method: registry, one CPU training step per distance (float and hashing), encoding contract,
the recipe's class-balanced batches, the data it reads, the model card round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sketchsearch.data.sketch import Sketch
from sketchsearch.methods.base import create_method, list_methods
from sketchsearch.methods.dsml import DSML, DSMLHash, quantization_loss
from sketchsearch.recipes import list_recipes, run_recipe


def _batch(n_classes: int = 4, m: int = 4, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "raster": (torch.rand(n_classes * m, 1, size, size, generator=g) > 0.9).float(),
        "label": torch.arange(n_classes).repeat_interleave(m),
    }


def test_registered_with_a_recipe() -> None:
    assert "dsml" in list_methods()
    assert "dsml" in list_recipes()


@pytest.mark.parametrize("distance", ["snr", "euclidean", "cosine"])
@pytest.mark.parametrize("hashing", [False, True])
def test_one_training_step_on_cpu(distance: str, hashing: bool) -> None:
    torch.manual_seed(0)
    m = create_method("dsml", distance=distance, hashing=hashing, nbits=16, embedding_dim=32, width=0.125)
    assert isinstance(m, DSMLHash if hashing else DSML)
    assert m.output == ("binary" if hashing else "float")
    assert m.code_size == (16 if hashing else 32)
    batch = _batch()
    opts = m.configure_optimizers(1e-3)
    before = [p.detach().clone() for p in m.parameters()]
    stats = m.step(m, batch, opts)
    assert np.isfinite(stats["loss"]) and stats["metric_loss"] > 0
    assert ("quantization_loss" in stats) == hashing
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    with torch.no_grad():
        z = m.encode_sketch(batch)
    assert z.shape == (16, m.code_size) and z.dtype == torch.float32
    if hashing:
        assert z.abs().max() < 1
    else:
        assert torch.allclose(z.norm(dim=1), torch.ones(16), atol=1e-5)


def test_hashing_codes_are_packed_signs() -> None:
    """Bit i is 1 iff relaxed value i is > 0, stored in byte i // 8 at bit i % 8 (faiss's layout)."""
    m = create_method("dsml", hashing=True, nbits=16, width=0.125).eval()
    z = -torch.ones(3, 16)
    z[1, 0], z[1, 9] = 0.3, 0.9  # byte 0 bit 0, byte 1 bit 1
    z[2] = 0.5
    z[2, 3] = 0.0  # zero is not > 0
    codes = m.binarize(z)
    assert codes.dtype == np.uint8 and codes.tolist() == [[0, 0], [1, 2], [0xF7, 0xFF]]
    with torch.no_grad():
        enc = m.encode_sketch(_batch())
    real = m.binarize(enc)
    assert real.shape == (16, 2)
    assert np.array_equal(m.binarize(-enc), ~real)  # every sign flipped, every bit flipped


def test_hparams_and_weights_rebuild_the_same_encoder(tmp_path: Path) -> None:
    from sketchsearch.model import load_model, save_model

    torch.manual_seed(0)
    m = create_method("dsml", distance="euclidean", hashing=True, nbits=32, width=0.125).eval()
    torch.manual_seed(1)
    again = create_method("dsml", preprocessing=m.preprocessing, **m.hparams).eval()
    assert type(again) is DSMLHash and again.hparams == m.hparams
    batch = _batch()
    with torch.no_grad():
        want = m.encode_sketch(batch)
        assert not torch.allclose(again.encode_sketch(batch), want)  # another init: loading has work to do
        again.load_state_dict(m.state_dict())
        torch.testing.assert_close(again.encode_sketch(batch), want, rtol=0, atol=0)
        save_model(m, tmp_path / "dsml-hash")
        loaded, card = load_model(tmp_path / "dsml-hash")
        loaded.eval()
        assert card.method == "dsml" and card.code_size == 32
        torch.testing.assert_close(loaded.encode_sketch(batch), want, rtol=0, atol=0)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="valid names"):
        create_method("dsml", distance="hamming")
    with pytest.raises(ValueError, match="nbits must be > 0"):
        create_method("dsml", hashing=True, nbits=0)
    m = create_method("dsml", width=0.125)
    batch = _batch()
    batch["label"][0] = -1
    with pytest.raises(ValueError, match="unknown"):
        m.training_losses(batch)


def test_quantization_loss() -> None:
    z = torch.tensor([[0.5, -1.0], [0.0, 0.9]])
    # sign(0) = 0, so an exact 0 costs nothing; the rest: (0.5-1)^2, 0, (0.9-1)^2
    assert quantization_loss(z).item() == pytest.approx((0.25 + 0.0 + 0.0 + 0.01) / 4)


def _write_quickdraw(path: Path, word: str, n: int, rng: np.random.Generator) -> None:
    lines = []
    for i in range(n):
        xs = rng.uniform(0, 255, size=6).round(1).tolist()
        ys = rng.uniform(0, 255, size=6).round(1).tolist()
        ts = list(range(0, 60, 10))
        lines.append(json.dumps({"word": word, "key_id": f"{word}{i}", "drawing": [[xs, ys, ts]]}))
    lines.append("{not json")  # a bad record is skipped, not fatal
    path.write_text("\n".join(lines) + "\n")


def test_recipe_batches_hold_whole_class_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every training batch of the recipe is batch_size // per_class classes x per_class drawings of the
    split's train part, drawn the same way for the same seed."""
    rng = np.random.default_rng(1)
    for word in ("cat", "dog", "sun", "cup", "hat"):
        _write_quickdraw(tmp_path / f"{word}.ndjson", word, 20, rng)
    seen: list[list[int]] = []
    step = DSML.step

    def recording_step(self, model, batch, optimizers):  # type: ignore[no-untyped-def]
        seen.append(batch["label"].tolist())
        return step(self, model, batch, optimizers)

    monkeypatch.setattr(DSML, "step", recording_step)
    kw = {
        "seed": 0,
        "iterations": 5,
        "batch_size": 8,
        "progress": False,
        "width": 0.125,
        "embedding_dim": 16,
        "unseen": 1,
        "per_class": 4,
    }
    res = run_recipe("dsml", str(tmp_path), **kw)
    assert len(seen) == 5 and res.split is not None and len(res.split.seen_classes) == 4
    for labels in seen:
        groups = [labels[i : i + 4] for i in range(0, 8, 4)]
        assert all(len(set(g)) == 1 for g in groups), labels  # 2 classes x 4 drawings
    assert len({tuple(b) for b in seen}) > 1  # classes change from batch to batch
    first, seen[:] = list(seen), []
    run_recipe("dsml", str(tmp_path), **kw)
    assert seen == first
    with pytest.raises(ValueError, match=">= 2"):
        run_recipe("dsml", str(tmp_path), **{**kw, "per_class": 1})


def test_reads_quickdraw_and_image_folders(tmp_path: Path) -> None:
    """What DSML trains on: load_collection + item_input give strokes (QuickDraw) or images (class folders),
    both encoded as rasters; bad records are skipped and counted."""
    from sketchsearch.data.batching import item_input, make_batch
    from sketchsearch.data.sources import load_collection
    from sketchsearch.errors import FormatError

    rng = np.random.default_rng(0)
    qd = tmp_path / "qd"
    qd.mkdir()
    _write_quickdraw(qd / "cat.ndjson", "cat", 3, rng)
    _write_quickdraw(qd / "dog.ndjson", "dog", 2, rng)
    coll = load_collection(qd)
    assert [it.label for it in coll] == ["cat"] * 3 + ["dog"] * 2 and coll.ids[0] == "cat0"
    assert coll.skipped == 2
    assert all(isinstance(item_input(it), Sketch) for it in coll)
    imgs = tmp_path / "img"
    for cls in ("a", "b"):
        (imgs / cls).mkdir(parents=True)
        for k in range(2):
            arr = np.full((32, 32), 255, dtype=np.uint8)
            arr[8 + k : 20, 10] = 0
            Image.fromarray(arr).save(imgs / cls / f"p{k}-1.png")
    pics = load_collection(imgs)
    assert [it.label for it in pics] == ["a", "a", "b", "b"]
    assert pics.ids == ["a/p0-1", "a/p1-1", "b/p0-1", "b/p1-1"]
    m = create_method("dsml", width=0.125, embedding_dim=16).eval()
    for c in (coll, pics):
        batch = make_batch([item_input(it) for it in c], m.preprocessing)
        assert batch["raster"].shape == (len(c), 1, 64, 64) and float(batch["raster"].max()) > 0.5
        with torch.no_grad():
            assert m.encode_sketch(batch).shape == (len(c), 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="cannot tell the data format"):
        load_collection(tmp_path / "empty")


def test_recipe_trains_a_few_steps(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for word in ("cat", "dog", "sun"):
        _write_quickdraw(tmp_path / f"{word}.ndjson", word, 8, rng)
    res = run_recipe(
        "dsml",
        str(tmp_path),
        seed=0,
        iterations=2,
        batch_size=8,
        device="cpu",
        progress=False,
        width=0.125,
        embedding_dim=16,
        unseen=1,
    )
    method, training = res.method, res.training
    assert isinstance(method, DSML) and method.code_size == 16
    assert res.split is not None and (len(res.split.seen_classes), len(res.split.unseen_classes)) == (2, 1)
    assert training["iterations"] == 2 and training["skipped_records"] == 3
    assert training["n_train"] == len(res.split.train) == 2 * (8 - 1 - 2)  # per class: 1 query, 2 gallery
    assert np.isfinite(training["last"]["loss"]) and training["last"]["iteration"] == 2
    for name in ("main", "zero_shot"):
        assert 0.0 < res.metrics[name]["mAP@all"] <= 1.0 and res.metrics[name]["code_size"] == 16


def test_regularizer_choice_reaches_the_loss() -> None:
    from pytorch_metric_learning.regularizers import ZeroMeanRegularizer

    from sketchsearch.losses.metric import NormalizedZeroMeanRegularizer

    def reg(m: object) -> object:
        return m.criterion.loss.embedding_regularizer  # type: ignore[attr-defined]

    assert isinstance(reg(create_method("dsml")), NormalizedZeroMeanRegularizer)
    raw = create_method("dsml", regularizer="raw")
    assert type(reg(raw)) is ZeroMeanRegularizer
    assert raw.hparams["regularizer"] == "raw"
    with pytest.raises(ValueError, match="'normalized' or 'raw'"):
        create_method("dsml", regularizer="mean")
