"""The distance option: SNR against a hand computation, scale invariance, the regulariser, knn, SNR search
by inner product, and finite gradients through every loss with every distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance, SNRDistance
from pytorch_metric_learning.losses import (
    ContrastiveLoss,
    SignalToNoiseRatioContrastiveLoss,
    TripletMarginLoss,
)

from sketchsearch.losses.distances import get_distance, knn, list_distances, snr_inner_product_vectors
from sketchsearch.losses.metric import (
    DEFAULT_MARGINS,
    MinedLoss,
    NormalizedZeroMeanRegularizer,
    ZeroMeanRegularizer,
    list_miners,
    make_metric_loss,
    make_miner,
)


def _hand_snr(a: torch.Tensor, b: torch.Tensor) -> float:
    """var(b - a) / var(a) with the sample variance written out (torch.var is unbiased: / (D - 1))."""
    d = len(a)
    noise = b - a
    var_noise = float(((noise - noise.mean()) ** 2).sum()) / (d - 1)
    var_sig = float(((a - a.mean()) ** 2).sum()) / (d - 1)
    return var_noise / var_sig


def test_registry_names_and_types() -> None:
    assert list_distances() == ["cosine", "euclidean", "snr"]
    assert isinstance(get_distance("snr"), SNRDistance)
    assert isinstance(get_distance("euclidean"), LpDistance)
    assert isinstance(get_distance("cosine"), CosineSimilarity)
    d = SNRDistance()
    assert get_distance(d) is d
    with pytest.raises(ValueError, match="valid names: cosine, euclidean, snr"):
        get_distance("manhattan")
    with pytest.raises(ValueError, match="always L2-normalises"):
        get_distance("cosine", normalize=False)


def test_snr_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mat = get_distance("snr", normalize=False)(x)
    for i in range(5):
        for j in range(5):
            assert mat[i, j].item() == pytest.approx(_hand_snr(x[i], x[j]), rel=1e-12)
    assert torch.allclose(torch.diagonal(mat), torch.zeros(5, dtype=torch.float64))
    assert not torch.allclose(mat, mat.T)  # not symmetric: the anchor's variance is the denominator


def test_snr_small_example_by_hand() -> None:
    a = torch.tensor([[1.0, -1.0, 1.0, -1.0]])  # mean 0, var = 4/3
    b = torch.tensor([[1.0, -1.0, -1.0, 1.0]])  # noise b - a = [0,0,-2,2]: mean 0, var = 8/3
    assert get_distance("snr", normalize=False)(a, b).item() == pytest.approx(2.0)


def test_snr_scale_invariance_and_euclidean_is_not() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 16, generator=g, dtype=torch.float64)
    snr, euc = get_distance("snr", normalize=False), get_distance("euclidean", normalize=False)
    for s in (0.01, 3.0, 250.0):
        assert torch.allclose(snr(s * x), snr(x), rtol=1e-10)
    assert not torch.allclose(euc(3.0 * x), euc(x))
    # with PML's default normalisation a per-embedding scale no longer matters either
    scales = torch.rand(6, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    assert torch.allclose(get_distance("snr")(scales * x), get_distance("snr")(x), rtol=1e-10)


def test_snr_of_zero_mean_unit_vectors_is_two_minus_two_cos() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 10, generator=g, dtype=torch.float64)
    x = torch.nn.functional.normalize(x - x.mean(1, keepdim=True), dim=1)
    cos = x @ x.T
    assert torch.allclose(get_distance("snr")(x), 2 - 2 * cos, atol=1e-12)


def test_zero_mean_regularizers_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0, -0.5], [3.0, -3.0, 0.0], [0.5, 0.5, 0.5]])
    raw = ZeroMeanRegularizer()(x)  # PML: mean over embeddings of |sum of elements|
    assert raw.item() == pytest.approx((2.5 + 0.0 + 1.5) / 3)
    norm = NormalizedZeroMeanRegularizer()(x)
    expected = np.mean([abs(r.sum()) / np.linalg.norm(r) for r in x.numpy()])
    assert norm.item() == pytest.approx(expected, rel=1e-6)
    # scale-free: shrinking the embeddings cannot lower it (the raw one can)
    assert NormalizedZeroMeanRegularizer()(0.01 * x).item() == pytest.approx(norm.item(), rel=1e-5)
    assert ZeroMeanRegularizer()(0.01 * x).item() == pytest.approx(0.01 * raw.item(), rel=1e-5)
    centred = x - x.mean(1, keepdim=True)
    assert NormalizedZeroMeanRegularizer()(centred).item() == pytest.approx(0.0, abs=1e-6)


def test_regularizer_is_added_with_its_weight() -> None:
    g = torch.Generator().manual_seed(3)
    emb, labels = torch.randn(12, 8, generator=g), torch.arange(4).repeat(3)
    plain = make_metric_loss("contrastive", "snr", regularizer_weight=0)(emb, labels)
    reg = make_metric_loss("contrastive", "snr", regularizer_weight=0.5)(emb, labels)
    assert reg.item() == pytest.approx(plain.item() + 0.5 * NormalizedZeroMeanRegularizer()(emb).item(), rel=1e-5)
    with pytest.raises(ValueError, match=">= 0"):
        make_metric_loss(regularizer_weight=-1)


def test_default_margins_are_pmls() -> None:
    snr = make_metric_loss("contrastive", "snr")
    assert isinstance(snr, SignalToNoiseRatioContrastiveLoss)
    assert (snr.pos_margin, snr.neg_margin) == (0, 1) == DEFAULT_MARGINS["snr"]
    pml_default = ContrastiveLoss()
    assert (pml_default.pos_margin, pml_default.neg_margin) == DEFAULT_MARGINS["euclidean"]
    assert (
        SignalToNoiseRatioContrastiveLoss().pos_margin,
        SignalToNoiseRatioContrastiveLoss().neg_margin,
    ) == (0, 1)
    euc = make_metric_loss("contrastive", "euclidean", neg_margin=2.0)
    assert type(euc) is ContrastiveLoss and euc.neg_margin == 2.0
    assert isinstance(make_metric_loss("triplet", "snr").distance, SNRDistance)
    assert make_metric_loss("triplet", "cosine").margin == TripletMarginLoss().margin
    with pytest.raises(ValueError, match="'contrastive' or 'triplet'"):
        make_metric_loss("arcface")  # type: ignore[arg-type]


# cosine always normalises, so it has no normalize=False variant
_DIST_NORM = [("euclidean", True), ("euclidean", False), ("snr", True), ("snr", False), ("cosine", True)]


@pytest.mark.parametrize(("distance", "normalize"), _DIST_NORM)
@pytest.mark.parametrize("kind", ["contrastive", "triplet"])
@pytest.mark.parametrize("miner", ["none", "multi_similarity", "pair_margin", "triplet_margin", "batch_hard"])
def test_finite_gradients_every_loss_every_distance(distance: str, normalize: bool, kind: str, miner: str) -> None:
    g = torch.Generator().manual_seed(4)
    emb = (torch.randn(16, 12, generator=g) * 3).requires_grad_(True)
    labels = torch.arange(4).repeat_interleave(4)
    loss = MinedLoss(
        make_metric_loss(kind, distance, normalize=normalize),
        make_miner(miner, distance, normalize=normalize),  # type: ignore[arg-type]
    )
    value = loss(emb, labels)
    value.backward()
    assert torch.isfinite(value)
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_unknown_miner_lists_names() -> None:
    assert "multi_similarity" in list_miners()
    with pytest.raises(ValueError, match="valid names: batch_hard"):
        make_miner("hardest")
    assert make_miner("none") is None


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "snr"])
def test_knn_is_the_stable_brute_force_order(distance: str) -> None:
    g = torch.Generator().manual_seed(5)
    q, r = (
        torch.randn(7, 6, generator=g, dtype=torch.float64),
        torch.randn(20, 6, generator=g, dtype=torch.float64),
    )
    r[11] = r[3]  # an exact tie: the lower position must come first
    d, i = knn(q, r, None, distance)
    dist = get_distance(distance)
    mat = dist(q, r)
    for row in range(7):
        key = [(-v if dist.is_inverted else v, j) for j, v in enumerate(mat[row].tolist())]
        assert i[row].tolist() == [j for _, j in sorted(key)]
        assert torch.allclose(d[row], mat[row, i[row]])
    assert (i == 3).nonzero()[:, 1].lt((i == 11).nonzero()[:, 1]).all()
    _, i3 = knn(q, r, 3, distance)
    assert i3.shape == (7, 3) and torch.equal(i3, i[:, :3])
    with pytest.raises(ValueError, match="k must be in 1..20"):
        knn(q, r, 21, distance)


def test_snr_search_by_inner_product_is_exact() -> None:
    rng = np.random.default_rng(6)
    q = rng.normal(size=(9, 16)) + rng.normal(size=(9, 1))  # non-zero means: not the cosine order
    gal = rng.normal(size=(50, 16)) * rng.uniform(0.2, 3, size=(50, 1)) + rng.normal(size=(50, 1))
    _, ref = knn(torch.from_numpy(q), torch.from_numpy(gal), None, get_distance("snr", normalize=False))
    ip = snr_inner_product_vectors(q, "query").astype(np.float64) @ snr_inner_product_vectors(gal, "gallery").T.astype(
        np.float64
    )
    order = np.argsort(-ip, axis=1, kind="stable")
    assert np.array_equal(order, ref.numpy())
    _, cos_order = knn(torch.from_numpy(q), torch.from_numpy(gal), None, "cosine")
    assert not np.array_equal(cos_order.numpy(), ref.numpy())  # SNR ranking is not cosine ranking here
    with pytest.raises(ValueError, match="'query' or 'gallery'"):
        snr_inner_product_vectors(q, "both")
