"""eval.evaluate: the metrics of ``score`` on hand-made rankings, leave-one-out, per-item modalities, the
``instance`` protocol and cross-modal encoding on hand-built collections, and ``evaluate_rows`` (a model and a
fitted baseline on one split, written as JSON and markdown).

The toy method places every drawing on a circle: a sketch is one straight stroke, encoded by its direction;
a photo is one flat colour, encoded by its (red, green) as (cos, sin). The Retriever's cosine distance is then
``1 - cos(angle difference)``, so rankings can be worked out by hand from the angles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from torch import Tensor

from sketchsearch.data.collection import Collection
from sketchsearch.data.formats.base import Item
from sketchsearch.data.sketch import Sketch
from sketchsearch.data.splits import Split, make_split
from sketchsearch.errors import InvalidSketchError, ModelError
from sketchsearch.eval.evaluate import Row, evaluate, evaluate_rows, markdown_table, score
from sketchsearch.eval.metrics import map_at_all, n_relevant_from_labels, relevance_from_labels
from sketchsearch.methods.base import Batch, Method, Preprocessing, create_method
from sketchsearch.retrieval import Retriever


class Circle(Method):
    """Sketch -> the direction of its first segment; photo -> (red, green) of its top-left pixel, in [-1, 1]."""

    name = "toy-circle"
    output = "float"

    def __init__(self, preprocessing: Preprocessing | None = None) -> None:
        super().__init__(preprocessing or Preprocessing(inputs=("points",), photo_size=4))

    @property
    def code_size(self) -> int:
        return 2

    def encode_sketch(self, batch: Batch) -> Tensor:
        return batch["points"][:, 1, :2]  # row 0 is the offset to the first point, row 1 the first segment

    def encode_photo(self, batch: Batch) -> Tensor:
        return batch["photo"][:, :2, 0, 0] * 2 - 1


def stroke(angle: float) -> Sketch:
    """A sketch at ``angle`` (radians): one segment in that direction."""
    return Sketch([np.array([[0.0, 0.0], [math.cos(angle), math.sin(angle)]])])


def photo(angle: float) -> np.ndarray:
    """A photo at ``angle``: a flat 8 x 8 RGB image whose (red, green) is (cos, sin) mapped to 0..255."""
    rgb = [round(255 * (math.cos(angle) + 1) / 2), round(255 * (math.sin(angle) + 1) / 2), 0]
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (8, 8, 3)).copy()


def strokes(angles: list[float]) -> list[Sketch]:
    return [stroke(a) for a in angles]


# ------------------------------------------------------------------------------------------------ score
def test_hand_checked_rankings() -> None:
    gallery, g_keys = strokes([0.0, 0.1, 0.2, 1.0, 1.1]), ["a", "a", "b", "b", "b"]
    # query 0.04 ("a"): order 0,1,2,3,4 -> rel 1,1,0,0,0 -> AP 1
    # query 0.16 ("b"): distances .16,.06,.04,.84,.94 -> order 2,1,0,3,4 -> rel 1,0,0,1,1 -> AP (1 + 2/4 + 3/5)/3 = 0.7
    res = score(Circle(), gallery, g_keys, strokes([0.04, 0.16]), ["a", "b"], ks=(1, 2))
    assert res["mAP@all"] == pytest.approx((1 + 0.7) / 2)
    assert res["P@1"] == pytest.approx(1.0) and res["acc@1"] == pytest.approx(1.0)
    assert res["P@2"] == pytest.approx((1 + 0.5) / 2)
    # mAP@2: q0 (1 + 1)/2 = 1 ; q1 P@1 / 3 = 1/3 (by #relevant) or / min(2, 3) = 1/2
    assert res["mAP@2"] == pytest.approx((1 + 1 / 3) / 2)
    assert res["mAP@2_min"] == pytest.approx((1 + 1 / 2) / 2)
    # MAP@R: q0 R=2 -> 1 ; q1 R=3 -> first 3 ranks rel 1,0,0 -> 1/3
    assert res["MAP@R"] == pytest.approx((1 + 1 / 3) / 2)
    assert res["acc@2"] == pytest.approx(1.0) and res["mean_relevant"] == pytest.approx(2.5)
    assert (res["n_queries"], res["n_gallery"], res["n_excluded"]) == (2, 5, 0)
    assert (res["method"], res["output"], res["code_size"], res["leave_one_out"]) == (
        "toy-circle",
        "float",
        2,
        False,
    )
    assert res["ms_per_query"] >= 0 and res["encode_per_s"] > 0


def test_leave_one_out_removes_each_query_itself() -> None:
    feats, keys = strokes([0.0, 0.1, 0.5, 0.6]), ["a", "b", "a", "b"]
    # q0: others .1(b) .5(a) .6(b) -> 0,1,0 -> 1/2 ; q1: 0(a) .5(a) .6(b) -> 1/3 ; q2: .6(b) .1(b) 0(a) -> 1/3 ;
    # q3: .5(a) .1(b) 0(a) -> 1/2
    res = score(Circle(), feats, keys, ks=(1,), leave_one_out=True)
    assert res["mAP@all"] == pytest.approx(5 / 12)
    assert res["acc@1"] == pytest.approx(0.0)
    assert res["n_queries"] == 4 and res["n_gallery"] == 4 and res["leave_one_out"]
    with pytest.raises(ValueError, match="leave queries"):
        score(Circle(), feats, keys, feats, keys, leave_one_out=True)


def test_per_item_modalities_encode_photos_with_the_photo_branch() -> None:
    gallery = [stroke(0.0), photo(0.1), stroke(1.5), photo(1.6)]
    modality = ["sketch", "photo", "sketch", "photo"]
    res = score(Circle(), gallery, ["a", "a", "b", "b"], ks=(1,), leave_one_out=True, gallery_modality=modality)
    assert res["mAP@all"] == pytest.approx(1.0) and res["acc@1"] == pytest.approx(1.0)
    # photos as the queries of a sketch gallery
    res = score(
        Circle(), strokes([0.0, 1.5]), ["a", "b"], [photo(1.4), photo(0.2)], ["b", "a"], ks=(1,), query_modality="photo"
    )
    assert res["acc@1"] == pytest.approx(1.0)
    # a photo through the sketch branch: the stroke reader cannot trace an RGB array
    with pytest.raises(InvalidSketchError, match="2-D array"):
        score(Circle(), gallery, ["a", "a", "b", "b"], leave_one_out=True)


def test_queries_without_relevant_items_are_excluded_and_counted() -> None:
    res = score(Circle(), strokes([0.0, 1.0]), ["a", "b"], strokes([0.1, 0.2]), ["a", "zebra"], ks=(1,))
    assert res["n_excluded"] == 1 and res["mAP@all"] == pytest.approx(1.0)


def test_chunking_does_not_change_results_and_matches_the_metrics_directly() -> None:
    rng = np.random.default_rng(0)
    ga, qa = (
        rng.uniform(0, 3, 60),
        rng.uniform(0, 3, 23),
    )  # angles within pi: distance grows with |difference|
    gk, qk = rng.integers(0, 4, 60).tolist(), rng.integers(0, 4, 23).tolist()
    a = score(Circle(), strokes(list(ga)), gk, strokes(list(qa)), qk, chunk=5)
    b = score(Circle(), strokes(list(ga)), gk, strokes(list(qa)), qk, chunk=1000)
    for key in ("mAP@all", "MAP@R", "mAP@100", "mAP@100_min", "P@10", "acc@1"):
        assert a[key] == pytest.approx(b[key], rel=1e-12), key
    order = np.argsort(np.abs(qa[:, None] - ga[None]), axis=1, kind="stable")
    rel = relevance_from_labels(order, gk, qk)
    assert a["mAP@all"] == pytest.approx(map_at_all(rel, n_relevant_from_labels(gk, qk)))


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="gallery is empty"):
        score(Circle(), [], [], strokes([0.0]), ["a"])
    with pytest.raises(ValueError, match="3 gallery keys for 2"):
        score(Circle(), strokes([0.0, 1.0]), ["a", "b", "c"], strokes([0.0]), ["a"])
    with pytest.raises(ValueError, match="give queries"):
        score(Circle(), strokes([0.0]), ["a"])
    r = Retriever(Circle())
    r.add(strokes([0.0]), ids=np.array([0]))
    with pytest.raises(ValueError, match="empty retriever"):
        score(r, strokes([0.0]), ["a"], strokes([0.0]), ["a"])
    with pytest.raises(TypeError, match="Retriever or a Method"):
        score(object(), strokes([0.0]), ["a"], strokes([0.0]), ["a"])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ real index + metrics
def _clustered(n_classes: int = 5, per_class: int = 30, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    templates = (rng.random((n_classes, 32, 32)) < 0.15).astype(np.float32)
    lab = np.repeat(np.arange(n_classes), per_class)
    x = np.clip(templates[lab] * (rng.random((len(lab), 32, 32)) < 0.7) + 0.1 * rng.random((len(lab), 32, 32)), 0, 1)
    return x.astype(np.float32), [f"c{i}" for i in lab]


@pytest.mark.parametrize("name", ["itq", "lsh"])
def test_baselines_through_the_retriever(name: str) -> None:
    x, labels = _clustered()
    q_idx = np.arange(0, len(x), 6)
    g_idx = np.setdiff1d(np.arange(len(x)), q_idx)
    m = create_method(name, nbits=32)
    m.fit(list(x[g_idx]))
    g, q = list(x[g_idx]), list(x[q_idx])
    gl, ql = [labels[i] for i in g_idx], [labels[i] for i in q_idx]
    res = score(m, g, gl, q, ql)
    assert res["mAP@all"] > 0.5  # chance is 1/5
    # search_many is encode + search_encoded: the evaluation's split timing ranks exactly as the service does
    r = Retriever(m)
    r.add(g, ids=np.arange(len(g)))
    d1, i1 = r.search_many(q, len(g))
    d2, i2 = r.search_encoded(r.encode(q), len(g))
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    rel = relevance_from_labels(i1, gl, ql)
    assert res["mAP@all"] == pytest.approx(map_at_all(rel, n_relevant_from_labels(gl, ql)))


# ------------------------------------------------------------------------------------ evaluate on a split
def instance_collection() -> Collection:
    """Class a: photos p0 0.0, p1 0.3, p2 1.0 and one sketch of each (0.05, 0.12, 0.9); class b: photo p3 at 2.0
    and its sketch at 2.1. Every item is in the dataset's ``test`` split."""
    photos = {"p0": ("a", 0.0), "p1": ("a", 0.3), "p2": ("a", 1.0), "p3": ("b", 2.0)}
    sketches = {"p0": 0.05, "p1": 0.12, "p2": 0.9, "p3": 2.1}
    items = [
        Item(f"photo/{lab}/{p}", lab, "photo", f"{p}.jpg", image=photo(a), pair=p, meta={"split": "test"})
        for p, (lab, a) in photos.items()
    ]
    items += [
        Item(
            f"sketch/{photos[p][0]}/{p}-1",
            photos[p][0],
            "sketch",
            f"{p}-1.svg",
            sketch=stroke(a),
            pair=p,
            meta={"split": "test"},
        )
        for p, a in sketches.items()
    ]
    return Collection(items, name="inst")


def test_instance_protocol_a_sketchs_own_photo_is_the_only_relevant_item() -> None:
    coll = instance_collection()
    split = make_split("instance", coll.items)
    res = evaluate(Circle(), coll, split, ks=(1,))
    assert list(res) == ["main"] and res["main"]["protocol"] == "instance"  # the default for this kind
    main = res["main"]
    # sketch p1 (0.12) is nearer photo p0 (0.12 away) than its own p1 (0.18): the only miss at rank 1, its own
    # photo at rank 2 (AP 1/2); the other three find their own photo first
    assert (main["n_queries"], main["n_gallery"], main["mean_relevant"]) == (4, 4, 1.0)
    assert main["acc@1"] == pytest.approx(3 / 4) and main["mAP@all"] == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert main["mean_rank"] == pytest.approx((1 + 2 + 1 + 1) / 4)  # the true photo's rank, per query
    # the same ranking by class: p0 is of the right class, so every query is right at rank 1
    by_class = evaluate(Circle(), coll, split, protocol="category", ks=(1,))["main"]
    assert by_class["acc@1"] == pytest.approx(1.0) and by_class["mAP@all"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(Circle(), coll, split, protocol="instances")


def test_cross_modal_split_encodes_photos_as_photos() -> None:
    coll = instance_collection()
    split = make_split(
        "zero_shot",
        coll.items,
        query_per_class=5,
        train_fraction=0.0,
        query_modality="sketch",
        gallery_modality="photo",
    )
    assert sorted(split.query) == sorted(i for i in coll.ids if i.startswith("sketch"))
    main = evaluate(Circle(), coll, split, ks=(1,))["main"]
    # every sketch's nearest photo is of its class (class b's at 2.1 -> 2.0; class a's all below 1.0)
    assert (main["n_queries"], main["n_gallery"], main["acc@1"]) == (4, 4, pytest.approx(1.0))
    # class a, sketch 0.9: photos 1.0 (a), 0.3 (a), 0.0 (a), 2.0 (b): AP 1; so is every other query
    assert main["mAP@all"] == pytest.approx(1.0)
    # the photo branch is what ranks them: as sketches the photos could not be encoded at all
    bad = Split("category", 0, {}, {"query": split.query, "gallery": split.gallery})
    with pytest.raises(InvalidSketchError, match="2-D array"):
        score(Circle(), [coll[i].image for i in bad.gallery], ["x"] * 4, strokes([0.0]), ["x"])


def _zero_shot_items() -> tuple[Collection, Split]:
    """Four classes of sketches on the circle, u and v unseen; one query per class."""
    angles = {"a": [0.0, 0.1, 0.2], "b": [1.0, 1.1, 1.2], "u": [2.0, 2.1], "v": [2.6, 2.7]}
    items = [Item(f"{c}{j}", c, "sketch", "", sketch=stroke(a)) for c, aa in angles.items() for j, a in enumerate(aa)]
    return Collection(items), make_split(
        "zero_shot", items, query_per_class=1, train_fraction=0.0, unseen_classes=["u", "v"]
    )


def test_leave_one_out_split_and_two_evaluations() -> None:
    coll, zs = _zero_shot_items()
    loo = evaluate(Circle(), coll, make_split("leave_one_out", coll.items), ks=(1,))
    assert list(loo) == ["main"] and loo["main"]["leave_one_out"] and loo["main"]["n_queries"] == 10
    assert loo["main"]["mAP@all"] == pytest.approx(1.0)
    res = evaluate(Circle(), coll, zs, ks=(1,))
    assert list(res) == ["main", "zero_shot"]
    assert (res["main"]["n_queries"], res["zero_shot"]["n_queries"]) == (2, 2)
    assert res["zero_shot"]["n_gallery"] == 2 and res["zero_shot"]["mAP@all"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one gallery"):  # a Retriever holds one gallery, not two
        evaluate(Retriever(Circle()), coll, zs)


def test_a_factory_makes_one_retriever_per_evaluation() -> None:
    coll, zs = _zero_shot_items()
    made: list[Retriever] = []
    evaluate(lambda: made.append(Retriever(Circle())) or made[-1], coll, zs)
    assert [len(r) for r in made] == [4, 2]  # the main gallery (2 seen classes x 2), then the unseen one


# ----------------------------------------------------------------------------------------- evaluate_rows
def test_rows_score_a_model_and_a_baseline_fitted_on_the_train_part(tmp_path: Path) -> None:
    from sketchsearch.data.sources import load_collection
    from sketchsearch.eval.evaluate import fit_on_split
    from sketchsearch.model import load_model, save_model

    coll = load_collection("default", limit=96)  # 8 classes x 12 drawings
    split = make_split("zero_shot", coll.items, query_per_class=2, train_fraction=0.5)
    lsh = create_method("lsh", nbits=16)
    lsh.fit([coll[i].sketch for i in coll.ids[:30]])  # fitted elsewhere, saved as a trained model
    card = save_model(lsh, tmp_path / "lsh16")
    rows = [Row("lsh16", model=str(tmp_path / "lsh16")), Row("pca 8", method="pca", kwargs={"dim": 8})]
    doc = evaluate_rows(
        rows,
        coll,
        split,
        ks=(1, 10),
        title="T",
        notes=["n1"],
        json_path=str(tmp_path / "o.json"),
        md_path=str(tmp_path / "o.md"),
    )
    model_row, base_row = doc["rows"]
    assert model_row["model_id"] == card.model_id and model_row["fit"] == {}
    assert base_row["fit"]["fitted_on"] == "train" and base_row["fit"]["n_train"] == len(split.train) == 48
    for r in doc["rows"]:  # one split for every row
        assert (r["main"]["n_queries"], r["main"]["n_gallery"]) == (16, 32)
    assert doc["split"] == split.summary() and doc["n_items"] == 96 and doc["data"] == "default"
    # the same figures by hand: the baseline fitted on exactly the train part, the model as loaded
    pca = create_method("pca", dim=8)
    assert fit_on_split(pca, coll, split)["fitted_on"] == "train"
    assert base_row["main"]["mAP@all"] == evaluate(pca, coll, split, ks=(1, 10))["main"]["mAP@all"]
    loaded, _ = load_model(tmp_path / "lsh16")
    assert model_row["main"]["mAP@all"] == evaluate(loaded, coll, split, ks=(1, 10))["main"]["mAP@all"]
    # written: JSON (the same figures) and the markdown table of the document
    assert json.loads((tmp_path / "o.json").read_text())["rows"][1]["main"]["mAP@all"] == base_row["main"]["mAP@all"]
    md = (tmp_path / "o.md").read_text()
    assert md == markdown_table(doc) and "| pca 8 | 8 |" in md and "| lsh16 | 16 |" in md
    assert md.startswith("# T\n") and md.rstrip().endswith("- n1")


def test_rows_without_a_train_part_fit_on_the_gallery_and_refuse_untrained_methods() -> None:
    from sketchsearch.data.sources import load_collection

    coll = load_collection("default", limit=36)
    split = make_split("category", coll.items, queries_per_class=2)
    doc = evaluate_rows([Row("lsh", method="lsh", kwargs={"nbits": 8})], coll, split, ks=(1,))
    assert doc["rows"][0]["fit"]["fitted_on"] == "gallery" and "zero_shot" not in doc["rows"][0]
    with pytest.raises(ValueError, match="needs a model or a method"):
        Row("nothing").build()
    with pytest.raises(ModelError, match="needs training"):
        Row("dsml", method="dsml").build()


def test_rows_on_a_split_with_unseen_classes_report_them_apart() -> None:
    coll, zs = _zero_shot_items()
    doc = evaluate_rows([Row("pca", method="pca", kwargs={"dim": 2})], coll, zs, ks=(1,))
    row = doc["rows"][0]
    assert (row["zero_shot"]["n_queries"], row["zero_shot"]["n_gallery"]) == (2, 2)
    assert "| pca (zero-shot) | 2 |" in markdown_table(doc)
