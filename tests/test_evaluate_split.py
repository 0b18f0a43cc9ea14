"""A trained model is never evaluated with or against its own training drawings.

A tiny SketchMate is trained here by the real recipe (one iteration per stage) on a tiny ndjson folder; its
card records the class split. ``evaluate`` on that folder must rebuild the split, leave the training drawings
out, report the held-out seen figures and the unseen classes apart (``zero_shot``) - the card's own figures -
and say so in ``notes``; on other data it leaves out what are training drawings and names shared classes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.errors import ModelError
from sketchsearch.eval import protocol
from sketchsearch.eval.protocol import rebuild_training_split, recorded_split, run_benchmark

runner = CliRunner()
CLASSES = ("circle", "cross", "bar", "zig", "box")


def _drawing(rng: np.random.Generator, c: int) -> list[list[list[float]]]:
    strokes = []
    for _ in range(int(rng.integers(1, 3))):
        n = int(rng.integers(3, 8))
        xs = (rng.uniform(0, 150, n) + 20 * c).round().tolist()
        ys = (rng.uniform(0, 150, n) + 10 * c).round().tolist()
        strokes.append([xs, ys, sorted(rng.uniform(0, 3000, n).round().tolist())])
    return strokes


def _write(folder: Path, classes: tuple[str, ...], per_class: int, seed: int, prefix: str) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for c, name in enumerate(classes):
        with open(folder / f"{name}.ndjson", "w") as f:
            for i in range(per_class):
                rec = {"word": name, "key_id": f"{prefix}{c}{i:03d}", "drawing": _drawing(rng, c)}
                f.write(json.dumps(rec) + "\n")
    return folder


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """(data folder, model stem, card): 5 classes x 20 drawings, two of them unseen."""
    root = tmp_path_factory.mktemp("split")
    data = _write(root / "qd", CLASSES, 20, 0, "k")
    model = root / "models" / "tiny-sm"
    code, out = run("train", "sketchmate", "--data", str(data), "--out", str(model), "--iterations", "1",
                    "--batch-size", "8", "--workdir", str(root / "run"), "--set", "unseen=2",
                    "--set", "pretrain_iterations=1", "--set", "fused_iterations=1", "--set", "cnn_width=0.125",
                    "--set", "rnn_hidden=8", "--set", "nbits=16")  # fmt: skip
    assert code == 0, out
    return data, model, json.loads(model.with_suffix(".json").read_text())


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], list[str]]]:
    """Record the (gallery ids, query ids) of every evaluate_retrieval call of the benchmark runner."""
    calls: list[tuple[list[str], list[str]]] = []
    real = protocol.evaluate_retrieval

    def spy(method: Any, gallery: Any, gl: Any, queries: Any = None, ql: Any = None, **kw: Any) -> Any:
        calls.append(([str(s.id) for s in gallery], [str(s.id) for s in queries or []]))
        return real(method, gallery, gl, queries, ql, **kw)

    monkeypatch.setattr(protocol, "evaluate_retrieval", spy)
    return calls


def test_card_records_the_split(trained: tuple[Path, Path, dict[str, Any]]) -> None:
    _, _, card = trained
    rec = recorded_split(card["training"])
    assert rec is not None and rec["kind"] == "by_class" and len(rec["unseen_classes"]) == 2
    ts = rebuild_training_split(card["training"])
    summary = card["training"]["split"]
    assert {p: len(v) for p, v in ts.parts.items()} == {p: summary[p] for p in ts.parts}
    assert recorded_split({"data": "x.npz", "drawings": 10}) is None  # e.g. the GAN cards: no split


def test_own_data_uses_the_cards_split_without_training_items(
    trained: tuple[Path, Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, model, card = trained
    ts = rebuild_training_split(card["training"])
    train_ids = {i for _, i in ts.train}
    calls = _spy(monkeypatch)
    doc = run_benchmark([{"label": "tiny", "model": str(model)}], data, {"queries_per_class": 3, "seed": 1})
    assert len(calls) == 2  # held-out seen classes, then the unseen classes
    for gallery, queries in calls:
        assert not (set(gallery) | set(queries)) & train_ids and not set(gallery) & set(queries)
    (g, q), (zg, zq) = calls
    assert (g, q) == ([i for _, i in ts.parts["gallery"]], [i for _, i in ts.parts["query"]])
    assert (zg, zq) == ([i for _, i in ts.parts["unseen_gallery"]], [i for _, i in ts.parts["unseen_query"]])
    row = doc["rows"][0]
    assert row["split"]["kind"] == "model_card" and row["split"]["n_train_excluded"] == len(train_ids)
    assert doc["split"] == row["split"] and doc["notes"] == row["notes"]
    assert any("left out" in n for n in doc["notes"]) and any("zero_shot" in n for n in doc["notes"])
    # the card's own held-out figures, recomputed the same way
    assert row["mAP@all"] == pytest.approx(card["metrics"]["seen"]["mAP@all"], abs=1e-9)
    assert row["zero_shot"]["mAP@all"] == pytest.approx(card["metrics"]["zero_shot"]["mAP@all"], abs=1e-9)
    md = protocol.markdown_table(doc)
    assert "| tiny (zero-shot) | 16 |" in md and "training drawings left out" in md


def test_cli_json_has_seen_zero_shot_and_notes(trained: tuple[Path, Path, dict[str, Any]]) -> None:
    data, model, card = trained
    code, out = run("evaluate", "--model", str(model), "--data", str(data), "--json")
    assert code == 0, out
    doc = json.loads(out)
    summary = card["training"]["split"]
    assert (doc["n_queries"], doc["n_gallery"]) == (summary["query"], summary["gallery"])
    assert (doc["zero_shot"]["n_queries"], doc["zero_shot"]["n_gallery"]) == (
        summary["unseen_query"],
        summary["unseen_gallery"],
    )
    assert doc["split"]["n_train_excluded"] == summary["train"] and doc["notes"]
    code, out = run("evaluate", "--model", str(model), "--data", str(data))  # the table: both lines + notes
    assert code == 0 and "(zero-s" in out and "note:" in out  # (the narrow table cuts the label)


def test_other_data_with_shared_classes_is_evaluated_as_usual_and_noted(
    trained: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    _, model, card = trained
    seen = card["training"]["classes"][:2]
    other = _write(tmp_path / "other", (*seen, "new"), 8, 5, "other")  # new drawings, two seen classes
    doc = run_benchmark([{"label": "tiny", "model": str(model)}], other, {"queries_per_class": 2})
    row = doc["rows"][0]
    assert row["split"]["kind"] == "category" and row["n_queries"] == 6 and "zero_shot" not in row
    assert any("2 of the 3 classes" in n and "none of the drawings evaluated" in n for n in doc["notes"])


def test_training_drawings_in_other_data_are_left_out(
    trained: tuple[Path, Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, model, card = trained
    cls = card["training"]["classes"][0]
    mixed = _write(tmp_path / "mixed", ("new",), 8, 6, "other")
    shutil.copy(data / f"{cls}.ndjson", mixed / f"{cls}.ndjson")  # a training class's file, copied
    train_ids = {i for _, i in rebuild_training_split(card["training"]).train}
    calls = _spy(monkeypatch)
    doc = run_benchmark([{"label": "tiny", "model": str(model)}], mixed, {"queries_per_class": 2})
    n_train = sum(
        1
        for line in (mixed / f"{cls}.ndjson").read_text().splitlines()
        if json.loads(line)["key_id"] in train_ids
    )
    assert n_train > 0 and doc["rows"][0]["split"]["n_train_excluded"] == n_train
    (gallery, queries), = calls  # fmt: skip
    assert not (set(gallery) | set(queries)) & train_ids and len(gallery) + len(queries) == 28 - n_train
    assert any(f"{n_train} drawings" in n and "left out" in n for n in doc["notes"])
    assert any(
        f"1 of the 2 classes of {mixed} are classes the model was trained on" in n for n in doc["notes"]
    )


def test_changed_training_data_is_a_clear_error(
    trained: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    data, model, card = trained
    moved = tmp_path / "qd"
    shutil.copytree(data, moved)
    training = {**card["training"], "data": str(moved)}
    stem = tmp_path / "moved-sm"  # the same model, its card pointing at a copy of the data...
    shutil.copy(model.with_suffix(".safetensors"), stem.with_suffix(".safetensors"))
    stem.with_suffix(".json").write_text(json.dumps({**card, "training": training}))
    with open(moved / f"{CLASSES[0]}.ndjson", "a") as f:  # ... which then changed
        f.write(json.dumps({"word": CLASSES[0], "key_id": "extra", "drawing": [[[0, 9], [0, 9]]]}) + "\n")
    with pytest.raises(ModelError, match="changed since training"):
        run_benchmark([{"label": "moved", "model": str(stem)}], moved)
    code, out = run("evaluate", "--model", str(stem), "--data", str(moved), "--json")
    assert code != 0 and "changed since training" in out and "Traceback" not in out


def test_card_without_split_on_its_own_data_says_so(
    trained: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    data, model, card = trained
    stem = tmp_path / "nosplit"  # as the GAN cards: the data only
    shutil.copy(model.with_suffix(".safetensors"), stem.with_suffix(".safetensors"))
    stem.with_suffix(".json").write_text(json.dumps({**card, "training": {"data": str(data)}}))
    doc = run_benchmark([{"label": "nosplit", "model": str(stem)}], data, {"queries_per_class": 2})
    assert doc["rows"][0]["split"]["kind"] == "category" and any("not held-out" in n for n in doc["notes"])


@pytest.mark.data
def test_shipped_sketchmate_split_rebuilds_from_the_real_data(shared_data: Path) -> None:
    from sketchsearch.model import resolve_model

    card = json.loads(resolve_model("sketchmate-quickdraw-64").with_suffix(".json").read_text())
    if not Path(card["training"]["data"]).exists():
        pytest.skip(f"the card's training data {card['training']['data']} is not here")
    ts = rebuild_training_split(card["training"])
    summary = card["training"]["split"]
    assert {p: len(v) for p, v in ts.parts.items()} == {p: summary[p] for p in ts.parts}
    assert ts.seen_classes == card["training"]["classes"]


@pytest.mark.data
@pytest.mark.slow
def test_shipped_sketchmate_reproduces_its_card(shared_data: Path) -> None:
    """~35 s on 2 cores: the held-out seen and zero-shot figures of the card, exactly."""
    from sketchsearch.model import resolve_model

    card = json.loads(resolve_model("sketchmate-quickdraw-64").with_suffix(".json").read_text())
    if not Path(card["training"]["data"]).exists():
        pytest.skip(f"the card's training data {card['training']['data']} is not here")
    doc = run_benchmark([{"label": "sm", "model": "sketchmate-quickdraw-64"}], card["training"]["data"])
    row = doc["rows"][0]
    assert row["mAP@all"] == pytest.approx(card["metrics"]["seen"]["mAP@all"], abs=1e-3)
    assert row["zero_shot"]["mAP@all"] == pytest.approx(card["metrics"]["zero_shot"]["mAP@all"], abs=1e-3)
    assert row["split"]["n_train_excluded"] == card["training"]["split"]["train"]
