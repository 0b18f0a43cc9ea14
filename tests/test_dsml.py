"""The dsml method: registry, one CPU training step per distance (float and hashing), encoding contract,
class-balanced batches, the model card round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sketchsearch.methods.base import RECIPES, create_method, list_methods
from sketchsearch.methods.dsml import DSML, ClassGroupDataset, DSMLHash, collate_groups, quantization_loss


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
    codes_mod = pytest.importorskip(
        "sketchsearch.index.codes", reason="index/codes.py (a colleague's) not written yet"
    )
    m = create_method("dsml", hashing=True, nbits=16, width=0.125).eval()
    with torch.no_grad():
        z = m.encode_sketch(_batch())
    codes = m.binarize(z)
    assert codes.dtype == np.uint8 and codes.shape == (16, 2)
    assert np.array_equal(codes, codes_mod.sign_to_codes(z.numpy()))


def test_hparams_rebuild_the_same_method() -> None:
    m = create_method("dsml", distance="euclidean", hashing=True, nbits=32, width=0.125)
    again = create_method("dsml", preprocessing=m.preprocessing, **m.hparams)
    assert type(again) is DSMLHash and again.hparams == m.hparams
    assert again.load_state_dict(m.state_dict()) is not None


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
