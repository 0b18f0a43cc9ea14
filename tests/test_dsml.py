"""The dsml method: registry, one CPU training step per distance (float and hashing), encoding contract,
class-balanced batches, the model card round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sketchsearch.data.sketch import Sketch
from sketchsearch.methods.base import RECIPES, create_method, list_methods
from sketchsearch.methods.dsml import (
    DSML,
    ClassGroupDataset,
    DSMLHash,
    collate_groups,
    load_labelled_drawings,
    quantization_loss,
)
from sketchsearch.train import TrainConfig


def _batch(n_classes: int = 4, m: int = 4, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "raster": (torch.rand(n_classes * m, 1, size, size, generator=g) > 0.9).float(),
        "label": torch.arange(n_classes).repeat_interleave(m),
    }


def test_registered_with_a_recipe() -> None:
    assert "dsml" in list_methods()
    assert "dsml" in RECIPES


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


def test_class_groups_hold_one_class_and_are_seeded() -> None:
    labels = [0] * 5 + [1] * 2 + [2] * 9
    base = [{"raster": np.full((4, 4), i, dtype=np.float32), "label": y} for i, y in enumerate(labels)]
    ds = ClassGroupDataset(base, labels, m=4, seed=1)  # type: ignore[arg-type]
    assert len(ds) == 4
    for i in range(6):
        group = ds[i]
        assert len(group) == 4 and len({e["label"] for e in group}) == 1
        assert group[0]["label"] == [0, 1, 2][i % 3]
    again = ClassGroupDataset(base, labels, m=4, seed=1)  # type: ignore[arg-type]
    assert [e["raster"][0, 0] for e in again[0]] == [
        e["raster"][0, 0] for e in ClassGroupDataset(base, labels, m=4, seed=1)[0]
    ]  # type: ignore[arg-type]
    batch = collate_groups([ds[0], ds[1]])
    assert batch["raster"].shape == (8, 1, 4, 4) and batch["label"].tolist() == [0] * 4 + [1] * 4
    with pytest.raises(ValueError, match=">= 2"):
        ClassGroupDataset(base, labels, m=1)  # type: ignore[arg-type]


def _write_quickdraw(path: Path, word: str, n: int, rng: np.random.Generator) -> None:
    lines = []
    for i in range(n):
        xs = rng.uniform(0, 255, size=6).round(1).tolist()
        ys = rng.uniform(0, 255, size=6).round(1).tolist()
        ts = list(range(0, 60, 10))
        lines.append(json.dumps({"word": word, "key_id": f"{word}{i}", "drawing": [[xs, ys, ts]]}))
    lines.append("{not json")  # a bad record is skipped, not fatal
    path.write_text("\n".join(lines) + "\n")


def test_load_labelled_drawings_quickdraw_and_image_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    qd = tmp_path / "qd"
    qd.mkdir()
    _write_quickdraw(qd / "cat.ndjson", "cat", 3, rng)
    _write_quickdraw(qd / "dog.ndjson", "dog", 2, rng)
    drawings, labels, ids = load_labelled_drawings(qd)
    assert labels == ["cat"] * 3 + ["dog"] * 2 and ids[0] == "cat0"
    assert all(isinstance(d, Sketch) for d in drawings)
    imgs = tmp_path / "img"
    for cls in ("a", "b"):
        (imgs / cls).mkdir(parents=True)
        for k in range(2):
            arr = np.full((32, 32), 255, dtype=np.uint8)
            arr[8 + k : 20, 10] = 0
            Image.fromarray(arr).save(imgs / cls / f"p{k}-1.png")
    drawings, labels, ids = load_labelled_drawings(imgs)
    assert labels == ["a", "a", "b", "b"] and ids == ["a/p0-1", "a/p1-1", "b/p0-1", "b/p1-1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no labelled drawings"):
        load_labelled_drawings(tmp_path / "empty")


def test_recipe_trains_a_few_steps(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for word in ("cat", "dog", "sun"):
        _write_quickdraw(tmp_path / f"{word}.ndjson", word, 4, rng)
    cfg = TrainConfig(iterations=2, batch_size=8, seed=0, device="cpu", progress=False, log_every=1)
    method, info, metrics = RECIPES.get("dsml")(str(tmp_path), cfg, width=0.125, embedding_dim=16)
    assert isinstance(method, DSML) and method.code_size == 16
    assert info["n_classes"] == 3 and info["n_drawings"] == 12 and info["iterations"] == 2
    assert np.isfinite(metrics["final_train_loss"])


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
