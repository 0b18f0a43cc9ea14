"""Model identity comes from content, never from the card: an impostor card is refused (and so an index of
one model refuses another model whose card claims its id), a local artifact never silently shadows a
shipped one, every numeric card value is bounded before anything is built, and the weights file must fit
the network the card builds tensor by tensor. The shipped models still load, and indexes saved with their
old ids still open with them (and only with them)."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import sketchsearch.model as model_mod
from sketchsearch.data.sketch import Sketch
from sketchsearch.errors import IndexError_, ModelError
from sketchsearch.methods import create_method
from sketchsearch.methods.base import HPARAM_BOUNDS, METHODS, HparamError, Method, Preprocessing, list_methods
from sketchsearch.model import (
    ID_FIELDS,
    LEGACY_MODEL_IDS,
    RESHIPPED_MODELS,
    legacy_model_id,
    load_model,
    model_id_of,
    reidentify_model,
    resolve_model,
    save_model,
)
from sketchsearch.retrieval import Retriever

PRE = Preprocessing(inputs=("raster",), raster_size=16, line_width=1.5)
SHIPPED = ["doodle2search-sketchy", "sketch-gan", "sketchmate-quickdraw-64", "thin-gan"]


def walk(rng: np.random.Generator) -> Sketch:
    return Sketch([np.cumsum(rng.normal(size=(int(rng.integers(3, 12)), 2)), axis=0) for _ in range(2)])


@pytest.fixture(scope="module")
def sketches() -> list[Sketch]:
    rng = np.random.default_rng(3)
    return [walk(rng) for _ in range(30)]


def _itq(sketches: list[Sketch], seed: int) -> Method:
    """ITQ-16 on 16 x 16 rasters; the same kwargs for every seed of the *data* (so two models differ in their
    weights only, the hardest case for an id: nothing but the weights tells them apart)."""
    m = create_method("itq", nbits=16, iterations=5, seed=0, preprocessing=PRE)
    rng = np.random.default_rng(seed)
    m.fit([sketches[i] for i in rng.permutation(len(sketches))[:20]])
    return m


@pytest.fixture(scope="module")
def models(sketches: list[Sketch], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    save_model(_itq(sketches, 1), folder / "a")
    save_model(_itq(sketches, 2), folder / "b")
    return {"a": folder / "a", "b": folder / "b"}


def _copy(stem: Path, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(stem.with_suffix(suffix), to.with_suffix(suffix))
    return to


def _card(stem: Path) -> dict[str, Any]:
    return json.loads(stem.with_suffix(".json").read_text())


def _write_card(stem: Path, raw: dict[str, Any]) -> None:
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=2))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _one_line_model_error(call: Any, *parts: str) -> str:
    with pytest.raises(ModelError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


def _impostor(models: dict[str, Path], tmp_path: Path) -> Path:
    """B's weights and B's (honest) card, except that the card claims A's model_id."""
    stem = _copy(models["b"], tmp_path / "impostor" / "a")
    raw = _card(stem)
    raw["model_id"] = _card(models["a"])["model_id"]
    _write_card(stem, raw)
    return stem


# ---------------------------------------------------------------------------------------------- identity
def test_the_two_models_differ_only_in_their_weights_and_encode_differently(
    models: dict[str, Path], sketches: list[Sketch]
) -> None:
    a, b = _card(models["a"]), _card(models["b"])
    assert {k: a[k] for k in ID_FIELDS} == {k: b[k] for k in ID_FIELDS}
    assert a["weights_sha256"] != b["weights_sha256"] and a["model_id"] != b["model_id"]
    ra, rb = Retriever.from_model(models["a"]), Retriever.from_model(models["b"])
    assert not np.array_equal(ra.encode(sketches), rb.encode(sketches))  # an impostor's hits would be wrong


def test_impostor_card_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    stem = _impostor(models, tmp_path)
    a_id, b_id = _card(models["a"])["model_id"], _card(models["b"])["model_id"]
    _one_line_model_error(lambda: load_model(stem), str(stem.with_suffix(".json")), a_id, b_id)


def test_a_card_with_another_models_weights_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    """A's card with B's weights, the checksum updated to B's: the id still covers the weights."""
    stem = _copy(models["a"], tmp_path / "swap" / "a")
    shutil.copyfile(models["b"].with_suffix(".safetensors"), stem.with_suffix(".safetensors"))
    raw = _card(stem)
    raw["weights_sha256"] = _sha(stem.with_suffix(".safetensors"))
    _write_card(stem, raw)
    _one_line_model_error(lambda: load_model(stem), "recorded model_id", raw["model_id"])


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        ({"preprocessing": {**PRE.to_dict(), "line_width": 3.0}}, "recorded model_id"),  # same shapes
        ({"kwargs": {"nbits": 16, "iterations": 6, "seed": 0}}, "recorded model_id"),
        ({"external": {"x.": {"sha256": "0" * 64}}}, "external weights"),  # checked first: the better message
    ],
    ids=["line-width", "kwargs", "external"],
)
def test_an_edited_card_keeping_its_id_is_refused(
    models: dict[str, Path], tmp_path: Path, edit: dict, expect: str
) -> None:
    """The old id (weights only) let a card change how queries are encoded and keep its id."""
    stem = _copy(models["a"], tmp_path / "edited" / "a")
    raw = _card(stem)
    raw.update(edit)
    _write_card(stem, raw)
    _one_line_model_error(lambda: load_model(stem), str(stem.with_suffix(".json")), expect)


def test_index_refuses_an_impostor_end_to_end(models: dict[str, Path], sketches: list[Sketch], tmp_path: Path) -> None:
    r = Retriever.from_model(models["a"])
    r.add(sketches[:20], labels=[f"c{i % 4}" for i in range(20)])
    r.save(tmp_path / "idx")
    assert len(Retriever.load(tmp_path / "idx", model=models["a"])) == 20  # the right model opens it
    with pytest.raises(IndexError_, match="not comparable"):  # the honest other model: the index refuses it
        Retriever.load(tmp_path / "idx", model=models["b"])
    impostor = _impostor(models, tmp_path)  # other weights claiming A's id: refused before the index is read
    _one_line_model_error(lambda: Retriever.load(tmp_path / "idx", model=impostor), "recorded model_id")


def test_a_legacy_card_is_refused_with_the_fix_and_reidentify_makes_it_load(
    models: dict[str, Path], tmp_path: Path
) -> None:
    stem = _copy(models["a"], tmp_path / "old" / "a")
    raw = _card(stem)
    new_id = raw["model_id"]
    raw["model_id"] = legacy_model_id("itq", 16, raw["weights_sha256"])
    _write_card(stem, raw)
    _one_line_model_error(lambda: load_model(stem), raw["model_id"], new_id, "reidentify_model")
    assert reidentify_model(stem) == new_id
    assert load_model(stem)[1].model_id == new_id
    assert {k: v for k, v in _card(stem).items() if k != "model_id"} == {
        k: v for k, v in raw.items() if k != "model_id"
    }


def test_model_id_is_the_digest_of_the_weights_and_the_encoding_fields(models: dict[str, Path]) -> None:
    raw = _card(models["a"])
    encoding = {k: raw[k] for k in ID_FIELDS}
    digest = hashlib.sha256(
        json.dumps(
            {"weights_sha256": raw["weights_sha256"], **encoding}, sort_keys=True, separators=(",", ":")
        ).encode()
    ).hexdigest()
    assert raw["model_id"] == f"itq-16-{digest[:12]}" == model_id_of("itq", 16, raw["weights_sha256"], encoding)


# ---------------------------------------------------------------------------------------------- shadowing
@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKETCHSEARCH_MODELS", raising=False)
    return tmp_path


@pytest.mark.parametrize("where", ["models/sketch-gan", "sketch-gan"], ids=["models-dir", "current-dir"])
def test_a_local_artifact_never_shadows_a_shipped_one(workdir: Path, where: str) -> None:
    shipped = resolve_model("sketch-gan")  # nothing local yet: the shipped one
    _copy(resolve_model("thin-gan"), workdir / where)  # a valid artifact (thin-gan's) under the shipped name
    msg = _one_line_model_error(lambda: load_model("sketch-gan"), str(shipped), "pass the path")
    assert where in msg
    explicit = where if "/" in where else f"./{where}"
    _, card = load_model(explicit)  # the path given explicitly always works
    assert card.model_id == load_model("thin-gan")[1].model_id and card.name == "thin-gan"
    assert load_model(shipped)[1].name == "sketch-gan"


def test_an_index_naming_a_shadowed_model_refuses_to_open(workdir: Path, sketches: list[Sketch]) -> None:
    method, card = load_model("sketch-gan")
    r = Retriever(method, model_id=card.model_id, model_name="sketch-gan")
    r.add(sketches[:3])
    r.save(workdir / "idx")
    assert len(Retriever.load(workdir / "idx")) == 3
    _copy(resolve_model("thin-gan"), workdir / "models" / "sketch-gan")
    _one_line_model_error(lambda: Retriever.load(workdir / "idx"), "ambiguous", "models/sketch-gan")
    with pytest.raises(IndexError_, match="not comparable"):  # the local one, by path: another model
        Retriever.load(workdir / "idx", model="models/sketch-gan")


def test_a_local_name_without_a_shipped_twin_still_resolves(models: dict[str, Path], workdir: Path) -> None:
    _copy(models["a"], workdir / "models" / "mine")
    assert resolve_model("mine") == Path("models") / "mine"
    assert load_model("mine")[1].model_id == _card(models["a"])["model_id"]


# ---------------------------------------------------------------------------------------------- bounds
def _gan_card(tmp_path: Path) -> Path:
    return _copy(resolve_model("sketch-gan"), tmp_path / "gan" / "g")


BAD_VALUES = [
    ("kwargs", "dz", 3e7),  # the audit's 15 GB layer (a float: not even an integer)
    ("kwargs", "dz", 30_000_000),
    ("kwargs", "dz", 0),
    ("kwargs", "dz", True),
    ("kwargs", "dz", "2"),
    ("kwargs", "bogus_size", 1 << 40),  # a number under a name with no declared bounds
    ("preprocessing", "line_width", 1e9),  # the audit's overflow on the first query
    ("preprocessing", "line_width", 0.0),
    ("preprocessing", "line_width", math.inf),
    ("preprocessing", "line_width", math.nan),
    ("preprocessing", "max_points", -5),  # the audit's
    ("preprocessing", "raster_size", 1 << 20),
    ("preprocessing", "photo_size", 2.5),
    ("preprocessing", "inputs", ["raster", "smell"]),
    ("card", "code_size", -1),
    ("card", "code_size", 1e12),
]


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES, ids=[f"{k}={v!r}" for _, k, v in BAD_VALUES])
def test_out_of_bounds_card_values_are_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, key: str, value: Any
) -> None:
    stem = _gan_card(tmp_path)
    raw = _card(stem)
    if section == "card":
        raw[key] = value
    else:
        raw[section][key] = value
    _write_card(stem, raw)

    def must_not_build(*a: Any, **kw: Any) -> None:
        raise AssertionError("a method was built from an out-of-bounds card")

    monkeypatch.setattr(model_mod, "create_method", must_not_build)
    t0 = time.perf_counter()
    card = str(stem.with_suffix(".json"))
    msg = _one_line_model_error(lambda: load_model(stem), card, f"{key} must be ", f"got {value!r}", "nothing built")
    assert time.perf_counter() - t0 < 2.0
    if key not in ("inputs", "bogus_size"):
        assert " and <= " in msg  # the valid range


def test_sizes_within_bounds_whose_product_is_huge_are_refused_before_allocation(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each value in range, the network not: ITQ with 4096 bits on 512 x 512 rasters is a 4 GB projection.
    The network is built on the meta device first and must fit the weights file tensor by tensor, so it is
    refused without a byte allocated (the real build would fail this test)."""
    stem = _copy(models["a"], tmp_path / "big" / "a")
    raw = _card(stem)
    raw["kwargs"]["nbits"] = raw["code_size"] = 4096
    raw["preprocessing"]["raster_size"] = 512
    raw["model_id"] = model_id_of("itq", 4096, raw["weights_sha256"], {k: raw[k] for k in ID_FIELDS})
    _write_card(stem, raw)
    real_create = model_mod.create_method

    def meta_only(*a: Any, **kw: Any) -> Method:
        assert torch.empty(0).device.type == "meta", "built for real before the weights were checked"
        return real_create(*a, **kw)

    monkeypatch.setattr(model_mod, "create_method", meta_only)
    t0 = time.perf_counter()
    _one_line_model_error(lambda: load_model(stem), str(stem.with_suffix(".safetensors")), "tensor '", "but itq built")
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(
    "kwargs", [{"dz": 30_000_000}, {"dz": -1}, {"dz": 2.5}], ids=["dz-huge", "dz-negative", "dz-float"]
)
def test_constructors_check_the_bounds_before_building(kwargs: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    with pytest.raises(HparamError, match="dz must be > 0 and <= 1024"):
        create_method("gan", **kwargs)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(ValueError, match="max_points"):
        create_method("gan", preprocessing=Preprocessing(max_points=-5))


@pytest.mark.parametrize("name", list_methods())
def test_every_numeric_constructor_argument_has_declared_bounds(name: str) -> None:
    """A numeric argument missing from HPARAM_BOUNDS would make every card of that method unloadable (cards
    refuse unbounded numbers): list it there with its range."""
    entry = METHODS.get(name)
    targets = [entry] if not inspect.isclass(entry) else [entry.__init__]
    if not inspect.isclass(entry):  # a factory function (the GAN's): its classes' constructors too
        targets += [c.__init__ for c in Method.__subclasses__() if c.__module__ == entry.__module__]
    for fn in targets:
        for p in inspect.signature(fn).parameters.values():
            if p.name in ("self", "preprocessing") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            numeric = (isinstance(p.default, int | float) and not isinstance(p.default, bool)) or (
                p.default is None and any(t in str(p.annotation) for t in ("int", "float"))
            )
            if numeric:
                assert p.name in HPARAM_BOUNDS, f"{name}: {p.name} has no bounds in HPARAM_BOUNDS"
                assert HPARAM_BOUNDS[p.name].accepts(p.default), f"{name}: default {p.name}={p.default!r}"


# ---------------------------------------------------------------------------------------------- tensors
def _forged(models: dict[str, Path], tmp_path: Path, change: Any) -> Path:
    """A's artifact with its weights file rewritten by ``change`` and a card made consistent again (sha256
    and model_id recomputed, as anyone can): only the tensor check stands in the way."""
    stem = _copy(models["a"], tmp_path / "forged" / "a")
    w = stem.with_suffix(".safetensors")
    tensors = load_file(str(w))
    change(tensors)
    save_file(tensors, str(w))
    raw = _card(stem)
    raw["weights_sha256"] = _sha(w)
    raw["model_id"] = model_id_of("itq", 16, raw["weights_sha256"], {k: raw[k] for k in ID_FIELDS})
    _write_card(stem, raw)
    return stem


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda t: t.__setitem__("rotation", t["rotation"].double()), "F64"),
        (lambda t: t.__setitem__("rotation", torch.zeros(4, 4)), "[4, 4]"),
        (lambda t: t.__setitem__("extra", torch.zeros(1)), "unexpected ['extra']"),
        (lambda t: t.pop("rotation"), "missing ['rotation']"),
    ],
    ids=["dtype", "shape", "extra", "missing"],
)
def test_a_tensor_that_does_not_fit_the_network_is_refused(
    models: dict[str, Path], tmp_path: Path, change: Any, expect: str
) -> None:
    stem = _forged(models, tmp_path, change)
    msg = _one_line_model_error(lambda: load_model(stem), str(stem.with_suffix(".safetensors")), expect)
    if expect in ("F64", "[4, 4]"):
        assert "'rotation'" in msg


# ---------------------------------------------------------------------------------------------- shipped
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_load_with_derived_ids_and_their_legacy_ids_map_to_them(
    name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    method, card = load_model(name)
    assert card.model_id.startswith(f"{method.id_name or method.name}-{card.code_size}-")
    old = legacy_model_id(method.id_name or method.name, card.code_size, card.weights_sha256)
    if name in RESHIPPED_MODELS:  # new weights: no earlier id of them exists, none of the old weights' ids maps
        assert old not in LEGACY_MODEL_IDS and card.model_id not in LEGACY_MODEL_IDS.values()
    else:
        assert LEGACY_MODEL_IDS[old] == card.model_id


def test_an_index_with_a_shipped_models_legacy_id_opens_with_that_model_only(
    workdir: Path, sketches: list[Sketch]
) -> None:
    method, card = load_model("sketch-gan")
    old = next(k for k, v in LEGACY_MODEL_IDS.items() if v == card.model_id)
    r = Retriever(method, model_id=old, model_name="sketch-gan")  # as an earlier version saved it
    r.add(sketches[:4])
    r.save(workdir / "idx")
    loaded = Retriever.load(workdir / "idx")
    assert len(loaded) == 4 and loaded.model_id == card.model_id  # saved again: the current id
    with pytest.raises(IndexError_, match="not comparable"):
        Retriever.load(workdir / "idx", model="thin-gan")
    loaded.save(workdir / "idx")
    assert Retriever.load(workdir / "idx").model_id == card.model_id
