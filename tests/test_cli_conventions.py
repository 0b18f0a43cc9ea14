"""The CLI's output conventions (see sketchsearch.cli.app): results on stdout, progress and diagnostics
on stderr; ``--json`` prints only JSON; piped tables are tab-separated with every cell whole; errors are one
plain line naming the option, key or file and the valid choices; long steps report progress; ``--data
default`` works; ``evaluate --plot`` and ``train`` write their pictures."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from sketchsearch.cli import app

APP = importlib.import_module("sketchsearch.cli.app")  # the module (the package's `app` is the Typer object)
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str) -> Any:
    """Run the CLI in-process; stdout and stderr apart (``res.stdout``, ``res.stderr``)."""
    res = runner.invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res


def _drawing(rng: np.random.Generator, shape: int) -> list[list[list[int]]]:
    t = np.linspace(0, 2 * np.pi, 16)
    if shape == 0:
        strokes = [(128 + 90 * np.cos(t), 128 + 90 * np.sin(t))]
    elif shape == 1:
        strokes = [
            (np.linspace(30, 220, 8), np.linspace(30, 220, 8)),
            (np.linspace(220, 30, 8), np.linspace(30, 220, 8)),
        ]
    else:
        strokes = [(np.linspace(20, 235, 8), np.full(8, 128.0))]

    def jitter(v: np.ndarray) -> list[int]:
        return np.clip(v + rng.normal(0, 3, len(v)), 0, 255).round().astype(int).tolist()

    return [[jitter(x), jitter(y)] for x, y in strokes]


@pytest.fixture(scope="module")
def qd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QuickDraw-style ndjson: 3 classes x 12 drawings, one class with a long name."""
    folder = tmp_path_factory.mktemp("conv") / "qd"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for c, name in enumerate(("circle", "cross", "a bar drawn with one long horizontal stroke")):
        with open(folder / f"{c}.ndjson", "w") as f:
            f.writelines(
                json.dumps({"word": name, "key_id": f"{c}-{i}", "drawing": _drawing(rng, c)}) + "\n" for i in range(12)
            )
    return folder


@pytest.fixture(scope="module")
def index(qd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An LSH-16 index of ``qd`` (the model saved under a models folder of its own)."""
    root = tmp_path_factory.mktemp("idx")
    res = invoke(
        "train",
        "lsh",
        "--data",
        str(qd),
        "--out",
        str(root / "lsh16"),
        "--set",
        "nbits=16",
        "--set",
        "queries_per_class=2",
        "--workdir",
        str(root / "run"),
    )
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith(f"saved {root / 'lsh16'} (lsh-16-") and "mAP@all 0." in res.stdout
    res = invoke("index", "build", "--model", str(root / "lsh16"), "--data", str(qd), "--out", str(root / "idx"))
    assert res.exit_code == 0, res.stderr
    return root / "idx"


def _one_error_line(res: Any) -> str:
    """The run failed with exit code 2, nothing on stdout and exactly one plain ``error:`` line on stderr."""
    assert res.exit_code == 2 and res.stdout == "", (res.exit_code, res.stdout)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "[bold" not in res.stderr and "[/]" not in res.stderr and "Traceback" not in res.stderr
    return res.stderr


# ------------------------------------------------------------------------------------ results vs. the rest
def test_models_table_goes_to_stdout_as_tsv_with_long_names_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_name = "a-local-model-whose-name-is-much-longer-than-eighty-columns-of-a-piped-terminal-table-xyz"
    (tmp_path / f"{long_name}.json").write_text(json.dumps({"method": "lsh", "output": "binary", "code_size": 16}))
    (tmp_path / f"{long_name}.safetensors").write_bytes(b"")
    monkeypatch.setenv("SKETCHSEARCH_MODELS", str(tmp_path))
    res = invoke("models")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "name\twhere\tmethod\toutput\tcode size\tmetrics"
    assert f"{long_name}\tlocal\tlsh\tbinary\t16\t" in lines
    assert all(line.count("\t") == 5 for line in lines)
    assert any(line.startswith("sketch-gan\tshipped\t") for line in lines)  # `models | grep sketch-gan`
    assert res.stderr.strip() == "models"  # the title: not a result row

    res = invoke("models", "--json")
    assert res.exit_code == 0 and any(r["name"] == long_name for r in json.loads(res.stdout))


def test_models_piped_through_a_real_pipe_finds_sketch_gan() -> None:
    out = subprocess.run(
        f"{sys.executable} -m sketchsearch models | grep sketch-gan",
        shell=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.startswith("sketch-gan\tshipped\tgan\t"), out.stderr


def test_models_methods_lists_set_keys_with_defaults() -> None:
    res = invoke("models", "--methods")
    assert res.exit_code == 0, res.stderr
    rows = dict(line.split("\t") for line in res.stdout.splitlines())
    assert rows.pop("method") == "--set keys (default)"
    assert set(rows) >= {"itq", "lsh", "pca", "gan", "sketchmate", "dsml"}
    assert rows["itq"].startswith("split: queries_per_class=10") and "method: nbits=64" in rows["itq"]
    assert "recipe: pretrain_iterations=None" in rows["sketchmate"] and "unseen=0.0" in rows["sketchmate"]
    res = invoke("models", "--methods", "--json")
    doc = json.loads(res.stdout)
    assert doc["sketchmate"]["method"]["nbits"] == 64 and doc["gan"]["split"] == {}


def test_print_table_on_a_terminal_uses_its_width_and_cuts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(APP, "stdout_console", Console(file=buf, force_terminal=True, width=60, color_system=None))
    label = "x" * 150 + "END"
    APP.print_table(("name", "value"), [(label, "1"), ("[bold]x[/]", "2")], title="t")
    out = buf.getvalue()
    assert max(len(line) for line in out.splitlines()) <= 60
    first_cells = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.count("│") == 3)
    assert label in first_cells and "[bold]x[/]" in first_cells  # cells are text, not markup


def test_search_results_on_stdout(index: Path, qd: Path) -> None:
    res = invoke("search", str(qd / "0.ndjson"), "--record", "2", "--index", str(index), "-k", "4")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "rank\tid\tdistance\tlabel\tsource" and len(lines) == 5
    assert all(line.count("\t") == 4 for line in lines) and lines[1].split("\t")[2] == "0"  # the query itself
    assert res.stderr.startswith("top 4 for ")
    res = invoke("search", str(qd / "2.ndjson"), "--index", str(index), "-k", "3", "--json")
    assert res.exit_code == 0, res.stderr
    hits = json.loads(res.stdout)["hits"]
    assert hits[0]["distance"] == 0 and len(hits) == 3


def test_data_info_and_index_build_results_on_stdout(qd: Path, index: Path, tmp_path: Path) -> None:
    data = tmp_path / "qd"
    data.mkdir()
    for f in qd.iterdir():
        (data / f.name).write_text(f.read_text())
    with open(data / "0.ndjson", "a") as f:
        f.write("{not json\n")  # line 13: a bad record
    res = invoke("data", "info", str(data))
    assert res.exit_code == 0 and res.stderr == f"{data}\n"  # the title; the table on stdout
    lines = res.stdout.splitlines()
    assert lines[0] == "field\tvalue" and {"items\t36", "skipped\t1", "classes\t3"} <= set(lines)
    (row,) = [line for line in lines if line.startswith("skipped file\t")]  # a row per bad record, whole
    assert row.startswith(f"skipped file\t{data / '0.ndjson'}: record 13: not valid JSON (")
    model = str(index.parent / "lsh16")
    res = invoke("index", "build", "--model", model, "--data", str(data), "--out", str(tmp_path / "idx"))
    assert res.exit_code == 0, res.stderr
    assert res.stdout == (
        f"indexed 36 items (36 drawings, 0 photos) into {tmp_path / 'idx'}: 'qd' (id qd); skipped 1 bad record\n"
    )
    (skipped,) = res.stderr.splitlines()  # one line per bad record, whole; no progress when not a terminal
    assert skipped.startswith(f"skipped {data / '0.ndjson'}: record 13: ")
    res = invoke(
        "index", "build", "--model", model, "--data", str(data), "--out", str(tmp_path / "idx"), "--force", "--json"
    )
    assert res.exit_code == 0 and res.stderr == ""
    doc = json.loads(res.stdout)
    assert (doc["count"], doc["drawings"], doc["slug"], doc["skipped"]) == (36, 36, "qd", 1)
    assert doc["errors"][0]["record"] == 13
    res = invoke("index", "add", str(tmp_path / "idx"), "--data", str(data), "--json")
    assert res.exit_code == 0 and res.stderr == ""
    assert json.loads(res.stdout) | {"errors": []} == {
        "index": str(tmp_path / "idx"),
        "added": 0,
        "drawings": 0,
        "photos": 0,
        "already_there": 36,
        "count": 36,
        "skipped": 1,
        "errors": [],
    }


def test_evaluate_table_and_json(qd: Path) -> None:
    base = ("evaluate", "--method", "lsh", "--bits", "16", "--data", str(qd), "--queries-per-class", "2")
    res = invoke(*base)
    assert res.exit_code == 0, res.stderr
    header, row = res.stdout.splitlines()
    assert header.split("\t")[:3] == ["method", "bits/dim", "mAP@all"]
    cells = row.split("\t")
    assert cells[:2] == ["lsh 16", "16"] and len(cells) == len(header.split("\t")) and 0 < float(cells[2]) <= 1
    assert res.stderr.startswith("Retrieval on ")  # the title (and any notes) on stderr
    res = invoke(*base, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["rows"][0]["label"] == "lsh 16" and "pr_curve" not in doc["rows"][0]["main"]


# ------------------------------------------------------------------------------------ errors
def test_errors_are_one_plain_line_naming_the_choices(qd: Path, tmp_path: Path) -> None:
    err = _one_error_line(invoke("train", "itqq", "--data", str(qd), "--out", str(tmp_path / "m")))
    assert "unknown method 'itqq'" in err and "itq, lsh, pca" in err
    err = _one_error_line(invoke("evaluate", "--method", "itqq", "--data", str(qd)))
    assert "'itqq'" in err and "itq" in err and "lsh" in err
    err = _one_error_line(
        invoke("train", "sketchmate", "--data", str(qd), "--out", str(tmp_path / "m"), "--set", "foo=1")
    )
    assert err.startswith("error: unknown --set key 'foo' for sketchmate; valid: split: unseen=0.0")
    assert "method: nbits=64" in err and "recipe: pretrain_iterations=None" in err
    err = _one_error_line(invoke("evaluate", "--method", "lsh", "--data", str(tmp_path / "missing")))
    assert str(tmp_path / "missing") in err
    err = _one_error_line(invoke("train", "lsh", "--out", str(tmp_path / "m")))  # a command-line error
    assert "'--data'" in err and "sketchsearch train --help" in err
    err = _one_error_line(invoke("evaluate", "--method", "lsh", "--data", str(qd), "--protocol", "x"))
    assert "--protocol must be one of category, leave-one-out, cross-modal, instance" in err


# ------------------------------------------------------------------------------------ --data default
def test_train_and_evaluate_take_data_default(tmp_path: Path) -> None:
    res = invoke(
        "train",
        "lsh",
        "--data",
        "default",
        "--out",
        str(tmp_path / "lshd"),
        "--set",
        "nbits=16",
        "--workdir",
        str(tmp_path / "run"),
    )
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "lshd.json").read_text())["training"]["data"] == "default"
    res = invoke("evaluate", "--method", "lsh", "--bits", "16", "--data", "default", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["data"] == "default"


# ------------------------------------------------------------------------------------ pictures
def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # drawn, not blank
        return im.size


def test_evaluate_plot_writes_pr_curves_and_retrieval_grids(qd: Path, tmp_path: Path) -> None:
    res = invoke(
        "evaluate",
        "--method",
        "lsh",
        "--method",
        "pca",
        "--bits",
        "16",
        "--data",
        str(qd),
        "--queries-per-class",
        "2",
        "--plot",
        str(tmp_path / "pics"),
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == [
        "pr-main.png",
        "retrieval-lsh_16-main.png",
        "retrieval-pca_16-main.png",
    ]
    for p in (tmp_path / "pics").iterdir():
        _png(p)
    main = doc["rows"][0]["main"]
    pr = main["pr_curve"]
    assert len(pr["recall"]) == len(pr["precision"]) == 21 and pr["recall"][0] == 0.0 and pr["recall"][-1] == 1.0
    assert all(0.0 <= p <= 1.0 for p in pr["precision"]) and pr["precision"] == sorted(pr["precision"], reverse=True)
    assert len(main["top_ids"]) == main["n_queries"] == 6 and all(len(t) == 8 for t in main["top_ids"])
    w, h = _png(tmp_path / "pics" / "retrieval-lsh_16-main.png")
    assert w > h  # 6 query rows of 1 + 8 thumbnails


def test_interpolated_precision_by_hand() -> None:
    from sketchsearch.eval.evaluate import interpolated_precision

    rel = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=bool)
    got = interpolated_precision(rel, np.array([2, 2, 1]), np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(got, [[1, 1, 2 / 3], [2 / 3, 2 / 3, 2 / 3], [0.25, 0.25, 0.25]])


def test_train_writes_a_loss_plot_beside_its_log(qd: Path, tmp_path: Path) -> None:
    res = invoke(
        "train",
        "dsml",
        "--data",
        str(qd),
        "--out",
        str(tmp_path / "dsml"),
        "--iterations",
        "3",
        "--batch-size",
        "8",
        "--workdir",
        str(tmp_path / "run"),
        "--set",
        "unseen=0",
        "--set",
        "width=0.125",
        "--set",
        "per_class=2",
    )
    assert res.exit_code == 0, res.stderr
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(k.endswith("_loss") for k in log[-1])
    w, h = _png(tmp_path / "run" / "loss.png")
    assert h > w / 2  # a panel per loss term, stacked


# ------------------------------------------------------------------------------------ progress
@contextmanager
def _terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Make the CLI's stderr console a terminal writing into a buffer."""
    buf = io.StringIO()
    monkeypatch.setattr(APP, "console", Console(file=buf, force_terminal=True, width=100, color_system=None))
    yield buf


def test_reporter_shows_phases_and_steps_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not APP.Reporter().enabled  # pytest's stderr is not a terminal
    with _terminal(monkeypatch) as buf:
        assert not APP.Reporter(quiet=True).enabled
        rep = APP.Reporter()
        with rep.phase("reading default"), rep.steps() as step:
            step("lsh 16: main: encoding", 3, 10)
            with rep.phase("training loop", live=False):  # the loop's own bar: ours pauses
                assert rep._live is not None and not rep._live.live.is_started
            step("lsh 16: main: encoding", 10, 10)
        assert rep._live is not None and not rep._live.live.is_started and not rep._live.tasks
        assert "reading default: " in buf.getvalue() and " s\n" in buf.getvalue()


def test_training_and_evaluation_report_their_steps(qd: Path) -> None:
    from sketchsearch.eval.evaluate import score
    from sketchsearch.progress import report_phases
    from sketchsearch.recipes import run_recipe

    names: list[str] = []

    @contextmanager
    def record(name: str, live: bool) -> Iterator[None]:
        names.append(name)
        yield

    with report_phases(record):
        res = run_recipe("lsh", str(qd), nbits=16, queries_per_class=2)
    assert names == [f"reading {qd}", "category split of 36 items", "fitting lsh", "evaluating on the split"]

    from sketchsearch.data.batching import item_input
    from sketchsearch.data.sources import load_collection

    drawings = [item_input(it) for it in load_collection(qd).items[:7]]
    calls: list[tuple[str, int, int]] = []
    score(
        res.method,
        drawings[:5],
        list("aabbc"),
        drawings[5:],
        list("ab"),
        progress=lambda what, done, total: calls.append((what, done, total)),
    )
    assert calls[0] == ("encoding", 0, 7) and ("encoding", 7, 7) in calls and calls[-1] == ("searching", 2, 2)


def test_bench_hamming_json_is_the_only_stdout(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_hamming.py"),
            "--sizes",
            "300",
            "--bits",
            "64",
            "--queries",
            "2",
            "--k",
            "3",
            "--repeats",
            "1",
            "--json",
            "--json-out",
            str(tmp_path / "h.json"),
            "--md-out",
            str(tmp_path / "h.md"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["backend"] for r in rows} == {"numba", "faiss-raw", "faiss", "numpy"}
    assert "ms/query" in out.stderr
