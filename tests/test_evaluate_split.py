"""`sketchsearch evaluate` chooses one split for every row, and never scores a model on its own training items
without saying so.

A model here is an LSH fitted on the train part of a zero-shot split of a tiny ndjson folder and saved with
that split (``NAME.split.json`` beside the card), as ``train`` does. On that folder ``evaluate`` must use the
card's split (the card's own figures; baselines fitted on its train part); on other data it leaves the model's
training items out of a fresh split; ``--split FILE`` wins, and the notes name what was evaluated anyway.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import Split, make_split
from sketchsearch.eval.evaluate import evaluate, fit_on_split
from sketchsearch.methods.base import create_method
from sketchsearch.model import load_model, save_model

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


def _save(stem: Path, data: Path, split: Split) -> Path:
    """An LSH fitted on ``split``'s train part, saved with it (what ``train`` writes)."""
    coll = load_collection(data)
    m = create_method("lsh", nbits=16)
    fit_on_split(m, coll, split)
    save_model(m, stem, training={"data": str(data)}, split=split)
    return stem


@pytest.fixture(scope="module")
def modelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Split]:
    """(data folder, model stem, its split): 5 classes x 20 drawings, half of each class trains."""
    root = tmp_path_factory.mktemp("split")
    data = _write(root / "qd", CLASSES, 20, 0, "k")
    split = make_split("zero_shot", load_collection(data).items, query_per_class=2, train_fraction=0.5)
    return data, _save(root / "models" / "tiny", data, split), split


def test_own_data_uses_the_cards_split_and_fits_baselines_on_its_train_part(
    modelled: tuple[Path, Path, Split], tmp_path: Path
) -> None:
    data, model, split = modelled
    code, out = run(
        "evaluate",
        "--model",
        str(model),
        "--method",
        "pca",
        "--bits",
        "4",
        "--data",
        str(data),
        "--queries-per-class",
        "3",
        "--save-split",
        str(tmp_path / "used.json"),
        "--json",
    )
    assert code == 0, out
    doc = json.loads(out)
    # the card's split, byte for byte, not the requested 3 queries per class
    assert (tmp_path / "used.json").read_bytes() == model.with_suffix(".split.json").read_bytes()
    assert doc["split"] == split.summary() and doc["split"]["query"] == 10
    trained, pca = doc["rows"]
    for r in doc["rows"]:
        assert (r["main"]["n_queries"], r["main"]["n_gallery"]) == (len(split.query), len(split.gallery))
    assert pca["fit"]["fitted_on"] == "train" and pca["fit"]["n_train"] == len(split.train) == 50
    # the card's own figures, recomputed the same way
    method, card = load_model(model)
    assert trained["model_id"] == card.model_id
    assert trained["main"]["mAP@all"] == evaluate(method, load_collection(data), split)["main"]["mAP@all"]
    note = (
        f"the split recorded with {model} (zero_shot, seed 0): its queries and gallery are held out from its "
        "training; baselines are fitted on its train part"
    )
    assert doc["notes"] == [note]
    code, out = run("evaluate", "--model", str(model), "--data", str(data))  # the table, then the notes
    assert code == 0 and "note: the split recorded with" in out


def test_training_items_in_other_data_are_left_out(modelled: tuple[Path, Path, Split], tmp_path: Path) -> None:
    data, model, split = modelled
    mixed = _write(tmp_path / "mixed", ("new",), 8, 6, "other")
    shutil.copy(data / f"{CLASSES[0]}.ndjson", mixed / f"{CLASSES[0]}.ndjson")  # a training class's file, copied
    n_train = sum(json.loads(line)["key_id"] in set(split.train) for line in (mixed / "circle.ndjson").open())
    code, out = run(
        "evaluate",
        "--model",
        str(model),
        "--data",
        str(mixed),
        "--queries-per-class",
        "2",
        "--save-split",
        str(tmp_path / "used.json"),
        "--json",
    )
    assert code == 0, out
    doc = json.loads(out)
    used = Split.load(tmp_path / "used.json")
    assert n_train == 10 and used.kind == "category" and not set(used.query + used.gallery) & set(split.train)
    assert len(used.query) + len(used.gallery) == 28 - n_train and doc["rows"][0]["main"]["n_queries"] == 4
    assert doc["notes"] == [f"{n_train} items are training items of a model here and were left out"]


def test_other_data_without_training_items_gets_the_requested_split(
    modelled: tuple[Path, Path, Split], tmp_path: Path
) -> None:
    _, model, _ = modelled
    other = _write(tmp_path / "other", (*CLASSES[:2], "new"), 8, 5, "other")  # new drawings, seen classes
    code, out = run("evaluate", "--model", str(model), "--data", str(other), "--queries-per-class", "2", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["split"]["kind"] == "category" and doc["rows"][0]["main"]["n_queries"] == 6 and doc["notes"] == []
    assert "zero_shot" not in doc["rows"][0]


def test_a_split_file_wins_and_evaluated_training_items_are_noted(
    modelled: tuple[Path, Path, Split], tmp_path: Path
) -> None:
    data, model, split = modelled
    coll = load_collection(data)
    every = make_split("category", coll.items, queries_per_class=4).save(tmp_path / "every.json")
    code, out = run("evaluate", "--model", str(model), "--data", str(data), "--split", str(every), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["split"]["kind"] == "category" and doc["rows"][0]["main"]["n_queries"] == 20
    leak = f"{model}: {len(split.train)} of the items evaluated are its training items: its figures are not held-out"
    assert doc["notes"] == [f"split read from {every}", leak]
    ghost = tmp_path / "ghost.json"
    replace(Split.load(every), parts={"query": ["ghost-7"], "gallery": []}).save(ghost)
    code, out = run("evaluate", "--model", str(model), "--data", str(data), "--split", str(ghost))
    assert code == 2 and "ghost.json" in out and "parts.query" in out and "Traceback" not in out


def test_models_trained_on_different_splits_are_refused_together(
    modelled: tuple[Path, Path, Split], tmp_path: Path
) -> None:
    data, model, split = modelled
    other = _save(
        tmp_path / "tiny-seed1",
        data,
        replace(split, seed=1, parts={**split.parts, "train": split.train[:-1]}),
    )
    code, out = run("evaluate", "--model", str(model), "--model", str(other), "--data", str(data))
    assert code != 0 and "different splits" in out and "Traceback" not in out


def test_a_second_models_training_items_among_the_evaluated_are_noted(
    modelled: tuple[Path, Path, Split], tmp_path: Path
) -> None:
    data, model, split = modelled
    # trained partly elsewhere (so its split is not this data's) and on the first model's queries
    other = replace(split, parts={"train": [*split.query, "elsewhere-1"]})
    stem = tmp_path / "other"
    m = create_method("lsh", nbits=16)
    m.fit([it.sketch for it in load_collection(data).items[:20]])
    save_model(m, stem, training={"data": "elsewhere"}, split=other)
    code, out = run("evaluate", "--model", str(model), "--model", str(stem), "--data", str(data), "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["split"] == split.summary() and doc["notes"][0].startswith(f"the split recorded with {model}")
    assert doc["notes"][1:] == [
        f"{stem}: {len(split.query)} of the items evaluated are its training items: its figures are not held-out"
    ]


def test_cards_without_a_usable_split_on_their_own_data_are_noted(
    modelled: tuple[Path, Path, Split], tmp_path: Path
) -> None:
    data, model, _ = modelled
    card = json.loads(model.with_suffix(".json").read_text())
    for name, training in (
        ("nosplit", {"data": str(data)}),  # as the GAN cards: the data only
        ("old", {"data": str(data), "split_file": "runs/old/split.json"}),
    ):  # before split files
        stem = tmp_path / name
        shutil.copy(model.with_suffix(".safetensors"), stem.with_suffix(".safetensors"))
        stem.with_suffix(".json").write_text(json.dumps({**card, "name": name, "training": training}))
        code, out = run("evaluate", "--model", str(stem), "--data", str(data), "--queries-per-class", "2", "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert doc["split"]["kind"] == "category" and doc["rows"][0]["main"]["n_queries"] == 10
        assert any(n.startswith(f"{stem}: trained on {data}") and "not held-out" in n for n in doc["notes"])
        assert any("split_file must be a file name beside the card" in n for n in doc["notes"]) == (name == "old")


def test_unseen_classes_of_the_cards_split_are_reported_apart(
    modelled: tuple[Path, Path, Split], tmp_path: Path
) -> None:
    data, _, _ = modelled
    split = make_split(
        "zero_shot", load_collection(data).items, query_per_class=2, train_fraction=0.5, unseen_classes=2
    )
    model = _save(tmp_path / "zs", data, split)
    code, out = run("evaluate", "--model", str(model), "--data", str(data), "--json")
    assert code == 0, out
    row = json.loads(out)["rows"][0]
    assert (row["zero_shot"]["n_queries"], row["zero_shot"]["n_gallery"]) == (
        len(split.part("unseen_query")),
        len(split.part("unseen_gallery")),
    )
