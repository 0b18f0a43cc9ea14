"""Metrics on hand-computed rankings (numbers written out) and against scikit-learn's AP."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sketchsearch.eval.metrics import (
    acc_at_k,
    average_precision,
    count_excluded,
    map_at_all,
    map_at_k,
    map_at_r,
    mean_rank,
    n_relevant_from_labels,
    precision_at_k,
    recall_at_k,
    relevance_from_labels,
)

# q0: relevant at ranks 1, 3, 6 (R = 3); q1: relevant at ranks 2, 5 (R = 2); q2: no relevant item at all.
REL = np.array(
    [
        [1, 0, 1, 0, 0, 1],
        [0, 1, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ],
    dtype=bool,
)
N_REL = np.array([3, 2, 0])


def test_average_precision_by_hand() -> None:
    ap = average_precision(REL, N_REL)
    # q0: (P@1 + P@3 + P@6) / 3 = (1 + 2/3 + 1/2) / 3 = 13/18 ; q1: (P@2 + P@5) / 2 = (1/2 + 2/5) / 2 = 0.45
    assert ap[0] == pytest.approx(13 / 18)
    assert ap[1] == pytest.approx(0.45)
    assert np.isnan(ap[2])  # no relevant item: undefined, excluded from means
    assert map_at_all(REL, N_REL) == pytest.approx((13 / 18 + 0.45) / 2)
    assert count_excluded(N_REL) == 1


def test_truncated_ranking_counts_missing_relevant_as_zero() -> None:
    # q0 cut after 4 ranks, its third relevant item never retrieved: (1 + 2/3) / 3
    assert map_at_all(REL[:1, :4], [3]) == pytest.approx(5 / 9)
    # without n_relevant the function can only trust the ranking: (1 + 2/3) / 2
    assert map_at_all(REL[:1, :4]) == pytest.approx(5 / 6)


def test_map_at_k_normalisations_differ_when_k_below_r() -> None:
    # k = 2. Sums of P@i * rel_i over the top 2: q0 = P@1 = 1 ; q1 = P@2 = 1/2
    # relevant: q0 1/3, q1 (1/2)/2 = 1/4 ; min(k, R): q0 1/min(2,3) = 1/2, q1 (1/2)/min(2,2) = 1/4
    # retrieved: q0 1/1, q1 (1/2)/1
    assert map_at_k(REL, 2, N_REL, norm="relevant") == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert map_at_k(REL, 2, N_REL, norm="min") == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert map_at_k(REL, 2, N_REL, norm="retrieved") == pytest.approx((1 + 1 / 2) / 2)
    # k = 3 >= R for both queries: min(k, R) = R, so the two main normalisations agree
    # q0: (1 + 2/3) / 3 = 5/9 ; q1: (1/2) / 2 = 1/4
    for norm in ("relevant", "min"):
        assert map_at_k(REL, 3, N_REL, norm=norm) == pytest.approx((5 / 9 + 1 / 4) / 2)
    # k past the ranking: mAP@k == mAP@all for the R-normalisation
    assert map_at_k(REL, 100, N_REL) == pytest.approx(map_at_all(REL, N_REL))


def test_precision_and_accuracy_by_hand() -> None:
    # P@2: q0 1/2, q1 1/2 ; P@3: q0 2/3, q1 1/3 ; P@10 on 6 ranks: q0 3/10, q1 2/10
    assert precision_at_k(REL, 2, N_REL) == pytest.approx(0.5)
    assert precision_at_k(REL, 3, N_REL) == pytest.approx(0.5)
    assert precision_at_k(REL, 10, N_REL) == pytest.approx(0.25)
    # acc@1: q0 hit, q1 miss ; acc@2: both hit
    assert acc_at_k(REL, 1, N_REL) == pytest.approx(0.5)
    assert acc_at_k(REL, 2, N_REL) == pytest.approx(1.0)


def test_recall_by_hand() -> None:
    # recall@3: q0 2 of 3, q1 1 of 2 ; recall@6: both all ; q2 (no relevant item) excluded
    assert recall_at_k(REL, 3, N_REL) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert recall_at_k(REL, 6, N_REL) == pytest.approx(1.0)
    # truncated: relevant items beyond the ranking count as not found
    assert recall_at_k(REL[:, :2], 10, N_REL) == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_mean_rank_by_hand() -> None:
    # first relevant item: q0 at rank 1, q1 at rank 2; q2 (no relevant item) excluded
    assert mean_rank(REL, N_REL) == pytest.approx(1.5)
    # a truncated ranking that misses q1's relevant items counts it at n_ranked + 1 = 2 (a lower bound)
    assert mean_rank(REL[:, :1], N_REL) == pytest.approx((1 + 2) / 2)
    # instance retrieval: one true photo per query, at ranks 3, 1, 2 of 3
    one = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=bool)
    assert mean_rank(one) == pytest.approx(2.0)


def test_map_at_r_by_hand() -> None:
    # q0 (R=3): ranks 1..3 -> (P@1 + P@3) / 3 = (1 + 2/3) / 3 = 5/9 ; q1 (R=2): P@2 / 2 = 1/4
    assert map_at_r(REL, N_REL) == pytest.approx((5 / 9 + 1 / 4) / 2)
    with pytest.raises(ValueError, match="at least max"):
        map_at_r(REL[:, :2], N_REL)


def test_all_queries_excluded_is_nan() -> None:
    assert np.isnan(map_at_all(np.zeros((2, 4), bool), [0, 0]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_average_precision_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nq, n = 7, 200
    aps_ours, aps_sk = [], []
    for _ in range(nq):
        labels = rng.random(n) < 0.1
        labels[rng.integers(n)] = True
        scores = rng.permutation(n).astype(float)  # distinct scores: no ties
        order = np.argsort(-scores)
        aps_ours.append(average_precision(labels[order][None])[0])
        aps_sk.append(average_precision_score(labels, scores))
    np.testing.assert_allclose(aps_ours, aps_sk, rtol=1e-12)
    # and the "retrieved" normalisation of AP@k is sklearn's AP on the top-k list alone
    k = 50
    ours = average_precision(labels[order][None, :k], [labels.sum()], k=k, norm="retrieved")[0]
    top = order[:k]
    if labels[top].any():
        assert ours == pytest.approx(average_precision_score(labels[top], scores[top]))


def test_relevance_from_labels_and_counts() -> None:
    gallery = np.array(["cat", "dog", "cat", None, "fish"], dtype=object)
    queries = ["cat", "dog", "bird", None]
    ranked = np.array([[2, 0, 1, -1], [1, 3, -1, -1], [0, 1, 2, 4], [3, 0, 1, 2]])
    rel = relevance_from_labels(ranked, gallery, queries)
    assert rel.tolist() == [
        [True, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
        [False, False, False, False],  # an unlabelled item never matches (not even another None)
    ]
    assert n_relevant_from_labels(gallery, queries).tolist() == [2, 1, 0, 0]
    # leave-one-out: the gallery queries itself; an item does not count as relevant to itself
    assert n_relevant_from_labels(gallery, gallery, leave_one_out=True).tolist() == [1, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="outside the gallery"):
        relevance_from_labels(np.array([[7]]), gallery, ["cat"])


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="k must be an integer"):
        precision_at_k(REL, 0)
    with pytest.raises(ValueError, match="norm must be one of"):
        map_at_k(REL, 2, N_REL, norm="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="whole gallery"):
        map_at_all(REL, [1, 1, 0])
    with pytest.raises(ValueError, match="0/1"):
        map_at_all(np.array([[0.5, 1.0]]))
