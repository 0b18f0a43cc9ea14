"""The embedded default: seeded merchant marks and redrawn kanji."""

from __future__ import annotations

import numpy as np
import pytest

from sketchsearch.data.formats.kanjivg import iter_kanjivg
from sketchsearch.data.render import rasterize_batch
from sketchsearch.data.synthetic import (
    LETTERS,
    default_collection,
    kanji_variants,
    merchant_marks,
    redraw,
    simple_kanji,
)


def _same(a: list, b: list) -> bool:
    return all(
        x.id == y.id
        and x.label == y.label
        and len(x.strokes) == len(y.strokes)
        and all(np.array_equal(p, q) for p, q in zip(x.strokes, y.strokes))
        and all(np.array_equal(p, q) for p, q in zip(x.times, y.times))
        for x, y in zip(a, b, strict=True)
    )


def test_marks_are_deterministic_and_seed_dependent() -> None:
    a, b, c = merchant_marks(3, 4, seed=7), merchant_marks(3, 4, seed=7), merchant_marks(3, 4, seed=8)
    assert _same(a, b)
    assert not all(np.array_equal(x.strokes[0], y.strokes[0]) for x, y in zip(a, c))
    # a class's design and samples do not depend on how many classes / samples are asked for
    assert _same(merchant_marks(2, 2, seed=7), [s for s in a if s.meta["class_index"] < 2 and s.meta["sample"] < 2])


def test_marks_shape_labels_ids_and_times() -> None:
    sk = merchant_marks(5, 3, seed=0)
    assert len(sk) == 15 and len({s.id for s in sk}) == 15
    assert [s.label for s in sk[:4]] == ["mark_000"] * 3 + ["mark_001"]
    for s in sk:
        assert s.times is not None and len(s.times) == len(s.strokes) >= 2
        assert all(st.dtype == np.float32 and st.shape[1] == 2 and len(st) >= 2 for st in s.strokes)
        t = np.concatenate(s.times)
        assert t[0] == 0.0 and np.all(np.diff(t) > 0)  # strictly increasing through and across strokes
        assert 200 < t[-1] < 20_000  # a few seconds of drawing, in ms
        x0, y0, x1, y1 = s.bounds()
        assert -20 < x0 < x1 < 120 and -20 < y0 < y1 < 120
    parts = {(s.meta["top"], s.meta["middle"], s.meta["base"]) for s in merchant_marks(30, 1, seed=0)}
    assert len(parts) == 30  # no two classes share the same combination of parts


def test_samples_of_a_class_differ_but_stay_close() -> None:
    a, b = merchant_marks(1, 2, seed=3)
    assert len(a.strokes) == len(b.strokes)
    assert any(len(p) != len(q) or not np.allclose(p, q) for p, q in zip(a.strokes, b.strokes))
    # the staff (first stroke) starts within a few units in both drawings (box of 100)
    assert np.linalg.norm(a.strokes[0][0] - b.strokes[0][0]) < 15


def test_classes_are_distinct_in_raster_space() -> None:
    sk = merchant_marks(6, 4, seed=1) + kanji_variants(6, 4, seed=1)
    R = rasterize_batch(sk, size=32, line_width=2.0).reshape(len(sk), -1)
    labels = np.array([s.label for s in sk])
    D = np.linalg.norm(R[:, None] - R[None], axis=2)
    same = labels[:, None] == labels[None]
    off = ~np.eye(len(sk), dtype=bool)
    within, between = D[same & off].mean(), D[~same].mean()
    assert within < 0.75 * between
    # nearest neighbour of most drawings is a drawing of the same class
    D[~off] = np.inf
    assert (labels[D.argmin(1)] == labels).mean() > 0.9


def test_redraw_respects_amplitudes() -> None:
    line = [np.array([[0.0, 50.0], [100.0, 50.0]])]
    rng = np.random.default_rng(0)
    still, _ = redraw(line, rng, 100.0, wobble=0, misplace=0, overshoot_p=0, rotate_deg=0, scale=0, shear=0, shift=0)
    np.testing.assert_allclose(still[0][:, 1], 50.0, atol=1e-4)
    np.testing.assert_allclose(still[0][[0, -1], 0], [0.0, 100.0], atol=1e-4)
    shaky, _ = redraw(line, np.random.default_rng(0), 100.0, rotate_deg=0, scale=0, shear=0, shift=0)
    assert 0.2 < np.abs(shaky[0][:, 1] - 50.0).max() < 8.0


def test_letters_fit_the_unit_box() -> None:
    for ch, strokes in LETTERS.items():
        pts = np.concatenate(strokes)
        assert pts.min() > -0.15 and pts.max() < 1.15, ch


def test_simple_kanji_counts_strokes_like_the_parser() -> None:
    pool = simple_kanji(2, 6)
    assert len(pool) > 300 and all(0x4E00 <= ord(c) <= 0x9FFF for c in pool)
    sample = [pool[i] for i in np.random.default_rng(0).choice(len(pool), 8, replace=False)]
    for it in iter_kanjivg(chars=sample):
        assert 2 <= it.meta["n_strokes"] <= 6


def test_kanji_variants() -> None:
    a, b = kanji_variants(3, 2, seed=5), kanji_variants(3, 2, seed=5)
    assert _same(a, b)
    assert len({s.label for s in a}) == 3 and all(s.label in simple_kanji(2, 6) for s in a)
    assert all(s.id.startswith("kanji_") and s.meta["family"] == "kanji" for s in a)
    with pytest.raises(ValueError, match="n_classes"):
        kanji_variants(-1, 2)


def test_default_collection_is_small_deterministic_and_labelled() -> None:
    c = default_collection(seed=0, n_mark_classes=4, n_kanji_classes=4, per_class=3)
    assert len(c) == 24 and len(c.classes) == 8
    assert {it.source for it in c} == {"synthetic:merchant_marks", "synthetic:kanji_variants"}
    assert all(it.modality == "sketch" and it.sketch is not None for it in c)
    d = default_collection(seed=0, n_mark_classes=4, n_kanji_classes=4, per_class=3)
    assert _same([it.sketch for it in c], [it.sketch for it in d])


def test_full_default_collection() -> None:  # ~2 s: the size `make demo` uses
    c = default_collection()
    assert len(c) == 960 and len(c.classes) == 80
    assert sum(it.source == "synthetic:kanji_variants" for it in c) == 480
