"""Model artifacts: save -> load gives identical encodings, the card records what it must, local models are
found by name, and every kind of bad artifact (corrupt, tampered, pickled) is a ModelError with nothing run."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sketchsearch.errors import ModelError
from sketchsearch.methods import create_method
from sketchsearch.methods.base import Method, Preprocessing
from sketchsearch.model import ModelCard, list_models, load_model, model_id_of, resolve_model, save_model

PRE = Preprocessing(inputs=("raster",), raster_size=16)  # 256 pixels: a fast fit


@pytest.fixture(scope="module")
def rasters() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.random((60, 16, 16)) < 0.2).astype(np.float32)


@pytest.fixture(scope="module")
def itq(rasters: np.ndarray) -> Method:
    m = create_method("itq", nbits=16, iterations=10, seed=1, preprocessing=PRE)
    m.fit(rasters)
    return m


@pytest.fixture
def artifact(itq: Method, tmp_path: Path) -> Path:
    save_model(itq, tmp_path / "itq16", training={"data": "random", "n": 60}, metrics={"map": 0.5})
    return tmp_path / "itq16"


def _batch(x: np.ndarray) -> dict[str, torch.Tensor]:
    return {"raster": torch.from_numpy(x)[:, None]}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_save_load_round_trip_gives_identical_encodings(itq: Method, artifact: Path, rasters: np.ndarray) -> None:
    loaded, _ = load_model(artifact)
    assert type(loaded) is type(itq) and not loaded.training
    want = itq.encode_sketch(_batch(rasters))
    got = loaded.encode_sketch(_batch(rasters))
    assert torch.equal(got, want)
    np.testing.assert_array_equal(loaded.binarize(got), itq.binarize(want))
    for k, v in itq.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.preprocessing == PRE


def test_card_fields(itq: Method, artifact: Path) -> None:
    raw = json.loads(artifact.with_suffix(".json").read_text())
    sha = _sha(artifact.with_suffix(".safetensors"))
    assert raw["name"] == "itq16" and raw["method"] == "itq" and raw["format"] == 1
    assert raw["kwargs"] == {"nbits": 16, "iterations": 10, "seed": 1, "features": "pixels"}
    assert raw["preprocessing"] == PRE.to_dict() and raw["preprocessing"]["raster_size"] == 16
    assert raw["output"] == "binary" and raw["code_size"] == 16
    assert raw["weights_sha256"] == sha
    # the id digests the weights' sha256 and everything on the card that changes the encoding, by hand:
    encoding = {k: raw[k] for k in ("method", "kwargs", "preprocessing", "output", "code_size", "external")}
    canonical = json.dumps({"weights_sha256": sha, **encoding}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert raw["model_id"] == model_id_of("itq", 16, sha, encoding) == f"itq-16-{digest}"
    assert raw["training"] == {"data": "random", "n": 60} and raw["metrics"] == {"map": 0.5}
    assert raw["created"] and raw["version"]
    _, card = load_model(artifact)
    assert isinstance(card, ModelCard) and card.model_id == raw["model_id"] and card.kwargs == raw["kwargs"]


def test_suffix_is_dropped_and_no_temp_files_are_left(itq: Method, tmp_path: Path) -> None:
    card = save_model(itq, tmp_path / "m.json")
    assert card.name == "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]
    for name in ("m", "m.json", "m.safetensors"):
        assert resolve_model(tmp_path / name) == tmp_path / "m"


def test_weights_sha_changes_with_the_weights(itq: Method, tmp_path: Path, rasters: np.ndarray) -> None:
    other = create_method("itq", nbits=16, iterations=10, seed=2, preprocessing=PRE)
    other.fit(rasters)
    assert save_model(itq, tmp_path / "a").model_id != save_model(other, tmp_path / "b").model_id


def test_the_same_weights_always_get_the_same_digest_and_id(itq: Method, tmp_path: Path) -> None:
    """A retrained model with the same weights is the same model: the weights file's bytes (and so the id) do not
    depend on the order a map happens to be written in (safetensors writes its metadata in a random order)."""
    cards = [save_model(itq, tmp_path / f"m{i}") for i in range(12)]
    assert len({c.weights_sha256 for c in cards}) == 1 and len({c.model_id for c in cards}) == 1


def test_list_and_resolve_local_models(artifact: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKETCHSEARCH_MODELS", str(tmp_path))
    (tmp_path / "orphan.json").write_text("{}")  # a card without weights is not a model
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "broken.safetensors").write_bytes(b"")
    rows = {r["name"]: r for r in list_models() if r["where"] == "local"}
    assert set(rows) == {"itq16", "broken"}
    row = rows["itq16"]
    assert row["method"] == "itq" and row["code_size"] == 16 and row["output"] == "binary"
    assert row["path"] == str(artifact) and row["metrics"] == {"map": 0.5}
    assert "error" in rows["broken"]
    assert resolve_model("itq16") == artifact
    method, card = load_model("itq16")
    assert card.name == "itq16" and method.code_size == 16


def test_unknown_model_lists_the_known_ones(artifact: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SKETCHSEARCH_MODELS", str(tmp_path))
    with pytest.raises(ModelError) as e:
        resolve_model("no-such-model")
    msg = str(e.value)
    assert "'no-such-model'" in msg and "known models" in msg and "itq16" in msg
    with pytest.raises(ModelError):
        load_model(tmp_path / "nowhere" / "x")


def test_corrupt_weights_byte_flip(artifact: Path) -> None:
    w = artifact.with_suffix(".safetensors")
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: still parseable, wrong values
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model(artifact)


def test_corrupt_header_without_verification(artifact: Path) -> None:
    w = artifact.with_suffix(".safetensors")
    data = bytearray(w.read_bytes())
    data[12] = ord("!")  # inside the JSON header
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="safetensors"):
        load_model(artifact, verify=False)


def _edit_card(artifact: Path, **changes: object) -> None:
    p = artifact.with_suffix(".json")
    raw = json.loads(p.read_text())
    raw.update(changes)
    p.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "changes",
    [
        {"kwargs": {"nbits": 32, "iterations": 10, "seed": 1}},  # builds, but the weights have other shapes
        {"kwargs": {"nbits": 16, "bogus": 1}},  # not a parameter of the method
        {"kwargs": {"nbits": 12}},  # refused by the method's own check
        {"method": "no-such-method"},
        {"preprocessing": {"inputs": ["raster"], "raster_size": 8}},  # 64 pixels: the weights expect 256
        {"format": 99},
        {"code_size": 32},  # the card's code size disagrees with the method it describes
        {"output": "float"},
    ],
    ids=["nbits", "unknown-kwarg", "bad-nbits", "method", "raster-size", "format", "code-size", "output"],
)
def test_tampered_card_is_a_model_error(artifact: Path, changes: dict[str, object]) -> None:
    _edit_card(artifact, **changes)
    with pytest.raises(ModelError) as e:
        load_model(artifact)
    assert "itq16" in str(e.value)  # names the file


@pytest.mark.parametrize("text", ["{not json", "[]", "null", '{"name": "x"}'])
def test_unreadable_card_is_a_model_error(artifact: Path, text: str) -> None:
    artifact.with_suffix(".json").write_text(text)
    with pytest.raises(ModelError, match="model card"):
        load_model(artifact)


class _Boom:
    """Unpickling this would run ``exec`` and leave a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_weights_are_refused_and_nothing_runs(artifact: Path, tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    w = artifact.with_suffix(".safetensors")
    if writer == "pickle":
        w.write_bytes(pickle.dumps({"projection": _Boom(marker)}))
    else:
        torch.save({"projection": _Boom(marker)}, w)
    # the attacker controls the card too: make the checksum match so loading gets as far as parsing
    _edit_card(artifact, weights_sha256=_sha(w))
    with pytest.raises(ModelError):
        load_model(artifact)
    assert not marker.exists()
