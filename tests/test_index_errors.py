"""One-line errors, nothing written and nothing lost, where an index is written or read (issue 12, points 6
and 7): a full disk, a folder one may not write in, a manifest missing a key or naming an unknown backend,
paths that are not UTF-8; folders that follow the umask; a symlinked --out followed."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from sketchsearch.cli import app
from sketchsearch.errors import IndexError_
from sketchsearch.index import create_index, store
from sketchsearch.index.dense import DenseIndex
from sketchsearch.index.store import load_index, read_manifest, save_index
from sketchsearch.methods import create_method
from sketchsearch.methods.base import Preprocessing
from sketchsearch.model import save_model


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(res: Any) -> str:
    """The run failed with exit code 2 and one plain ``error:`` line on stderr (no traceback); that line."""
    assert res.exit_code == 2 and res.stdout == "", (res.exit_code, res.output, res.exception)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr
    return res.stderr


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    """A 64-bit LSH model, a data file of 5 drawings and an index of them."""
    pre = Preprocessing(inputs=("raster",), raster_size=16, line_width=1.5)
    method = create_method("lsh", nbits=64, seed=0, preprocessing=pre)
    method.fit(np.random.default_rng(0).random((8, 16, 16)))
    save_model(method, tmp_path / "lsh")
    rng = np.random.default_rng(1)
    data = tmp_path / "marks.ndjson"
    lines = [{"word": "m", "key_id": str(i), "drawing": [[rng.integers(0, 256, 6).tolist()] * 2]} for i in range(5)]
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    res = invoke("index", "build", "--model", tmp_path / "lsh", "--data", data, "--out", tmp_path / "idx")
    assert res.exit_code == 0, res.output
    return {"model": tmp_path / "lsh", "data": data, "idx": tmp_path / "idx", "root": tmp_path}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command gets as far as encoding (the checks must come first)."""
    import sketchsearch.cli.index as cli_index

    def encode(*a: object, **k: object) -> None:
        raise AssertionError("encoded before the check")

    monkeypatch.setattr(cli_index, "_encode_into", encode)


# ---------------------------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("where", ["npy", "sqlite"])
def test_disk_full_during_build_is_one_line_and_the_old_index_still_loads(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    idx = setup["idx"]
    before = _snapshot(idx)

    def full(*a: object, **k: object) -> None:
        if where == "npy":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it: no file name
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store.np, "save", full) if where == "npy" else monkeypatch.setattr(store, "_write_items", full)
    res = invoke("index", "build", "--model", setup["model"], "--data", setup["data"], "--out", idx, "--force")
    line = one_error_line(res)
    named = "codes.npy: No space left on device (the disk is full" if where == "npy" else "database or disk is full"
    assert f"{idx}: the index could not be saved" in line and named in line and "nothing was changed" in line
    monkeypatch.undo()
    assert _snapshot(idx) == before and len(load_index(idx)[0]) == 5
    assert sorted(p.name for p in setup["root"].glob(".idx*")) == [".idx.lock"]  # no temp folder left

    fresh = setup["root"] / "fresh"
    monkeypatch.setattr(store.np, "save", full) if where == "npy" else monkeypatch.setattr(store, "_write_items", full)
    one_error_line(invoke("index", "build", "--model", setup["model"], "--data", setup["data"], "--out", fresh))
    assert not fresh.exists() and not list(setup["root"].glob(".fresh.tmp-*"))


# ---------------------------------------------------------------------------------------------- read-only
@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes in a 0500 folder anyway")
def test_read_only_out_is_one_line_before_encoding(setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    ro = setup["root"] / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _no_encoding(monkeypatch)
        line = one_error_line(
            invoke("index", "build", "--model", setup["model"], "--data", setup["data"], "--out", ro / "idx")
        )
        assert f"--out {ro / 'idx'}: cannot write in {ro}" in line and "choose a folder you can write to" in line
        index = create_index("numba", nbits=64)
        with pytest.raises(IndexError_, match=r"ro/\.idx\.lock: Permission denied \(no permission"):
            save_index(index, ro / "idx", model_id="m")
    finally:
        ro.chmod(0o700)
    assert list(ro.iterdir()) == []


def test_no_permission_is_one_line_before_encoding(setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as the read-only test where it cannot bite (root): the checks are made to see no permission."""
    import sketchsearch.cli.index as cli_index

    _no_encoding(monkeypatch)
    monkeypatch.setattr(cli_index.os, "access", lambda *a, **k: False)
    out = setup["root"] / "ro" / "idx"
    line = one_error_line(invoke("index", "build", "--model", setup["model"], "--data", setup["data"], "--out", out))
    assert f"--out {out}: cannot write in {setup['root']} (permission denied" in line
    monkeypatch.undo()

    def denied(*a: object, **k: object) -> str:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(setup["root"] / ".idx.tmp-x"))

    before = _snapshot(setup["idx"])
    monkeypatch.setattr(store.tempfile, "mkdtemp", denied)
    with pytest.raises(IndexError_, match=r"\.idx\.tmp-x: Permission denied \(no permission to write there"):
        save_index(load_index(setup["idx"])[0], setup["idx"], model_id="m")
    assert _snapshot(setup["idx"]) == before


# ---------------------------------------------------------------------------------------------- manifests
@pytest.mark.parametrize("kind, key", [("binary", "nbits"), ("dense", "dim"), ("dense", "metric"), ("binary", "count")])
def test_a_manifest_missing_a_key_names_the_file_and_the_key(tmp_path: Path, kind: str, key: str) -> None:
    if kind == "binary":
        index = create_index("numba", nbits=64)
        index.add(np.zeros((3, 8), np.uint8), np.arange(3))
    else:
        index = DenseIndex(6, metric="ip")
        index.add(np.eye(3, 6, dtype=np.float32))
    folder = save_index(index, tmp_path / "idx", model_id="m")
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest[key]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexError_, match=rf"idx/manifest.json: field '{key}' is missing"):
        load_index(folder)
    line = one_error_line(invoke("index", "info", folder))
    assert f"{folder / 'manifest.json'}: field '{key}' is missing" in line


def test_an_unknown_backend_names_the_manifest_and_the_valid_backends(setup: dict[str, Path]) -> None:
    idx = setup["idx"]
    manifest = json.loads((idx / "manifest.json").read_text())
    (idx / "manifest.json").write_text(json.dumps({**manifest, "backend": "annoy"}))
    with pytest.raises(IndexError_) as e:
        load_index(idx, verify=False)
    assert str(e.value) == (
        f"{idx / 'manifest.json'}: field 'backend' is 'annoy': cannot make a binary index (no such backend); "
        "valid binary backends: faiss, mih, milvus, numba, numpy, sharded"
    )
    line = one_error_line(invoke("search", setup["data"], "--index", idx))
    assert "manifest.json: field 'backend' is 'annoy'" in line and "faiss, mih, milvus, numba, numpy, sharded" in line


# ---------------------------------------------------------------------------------------------- names
def test_an_out_that_is_not_utf8_is_refused_before_encoding(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = setup["root"] / os.fsdecode(b"marks-\xff")
    _no_encoding(monkeypatch)
    line = one_error_line(invoke("index", "build", "--model", setup["model"], "--data", setup["data"], "--out", out))
    assert "--out b'" in line and "marks-\\xff'" in line and "is not valid UTF-8" in line
    assert sorted(p.name for p in setup["root"].iterdir()) == [
        ".idx.lock",
        "idx",
        "lsh.json",
        "lsh.safetensors",
        "marks.ndjson",
    ]
    with pytest.raises(IndexError_, match=r"marks-\\xff': the path is not valid UTF-8"):
        save_index(load_index(setup["idx"])[0], out, model_id="m")
    assert not os.path.lexists(out)


def test_a_data_file_whose_name_is_not_utf8_is_named_before_encoding(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = setup["root"] / "data"
    data.mkdir()
    (data / os.fsdecode(b"caf\xe9.ndjson")).write_bytes(setup["data"].read_bytes())
    _no_encoding(monkeypatch)
    line = one_error_line(
        invoke("index", "build", "--model", setup["model"], "--data", data, "--out", setup["root"] / "x")
    )
    assert "the file name b'caf\\xe9.ndjson:1' is not valid UTF-8" in line and not (setup["root"] / "x").exists()
    one_error_line(invoke("index", "add", setup["idx"], "--data", data))
    assert len(load_index(setup["idx"])[0]) == 5


# ---------------------------------------------------------------------------------------------- modes, links
@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_folders_follow_the_umask_and_a_chmod_sticks(setup: dict[str, Path], mask: int) -> None:
    old = os.umask(mask)
    try:
        res = invoke("index", "build", "--model", setup["model"], "--data", setup["data"], "--out", setup["root"] / "u")
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    folder = setup["root"] / "u"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o666 & ~mask}
    folder.chmod(0o2770)  # a shared index: group members may change it
    (folder / "codes.npy").chmod(0o660)
    res = invoke("index", "remove", folder, "--id", "0")
    assert res.exit_code == 0, res.output
    assert (
        stat.S_IMODE(folder.stat().st_mode) == 0o2770 and stat.S_IMODE((folder / "codes.npy").stat().st_mode) == 0o660
    )


def test_a_symlinked_out_is_followed_and_stays_a_link(setup: dict[str, Path]) -> None:
    real = setup["root"] / "shared" / "marks-v1"
    real.mkdir(parents=True)
    link = setup["root"] / "current"
    link.symlink_to(real, target_is_directory=True)
    res = invoke("index", "build", "--model", setup["model"], "--data", setup["data"], "--out", link)
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and read_manifest(real)["count"] == 5
    res = invoke("index", "remove", link, "--id", "1")
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and os.readlink(link) == str(real) and len(load_index(link)[0]) == 4
    assert (real.parent / ".marks-v1.lock").exists() and not (setup["root"] / ".current.lock").exists()
    assert sorted(p.name for p in real.parent.iterdir()) == [".marks-v1.lock", "marks-v1"]  # nothing left behind
