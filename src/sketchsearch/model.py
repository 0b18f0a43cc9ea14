"""Model artifacts: weights as safetensors + a JSON card. Loading never unpickles.

An artifact ``NAME`` is two files side by side: ``NAME.safetensors`` (every parameter and buffer of the
method) and ``NAME.json`` (the card)::

    {"format": 1, "name": ..., "method": "itq", "kwargs": {...}, "preprocessing": {...},
     "output": "binary", "code_size": 64, "weights_sha256": "...", "model_id": "itq-64-1a2b3c4d",
     "training": {"command": "...", "data": "...", "split": "...", ...}, "metrics": {...}, "created": "..."}

**Identity.** ``model_id`` is what an index records, so that an index refuses queries encoded by any other
model. It is derived from content, never trusted from the card: ``{method}-{code size}-{12 hex}``, where the
hex digests the weights' sha256 together with everything on the card that changes the encoding (method,
kwargs, preprocessing, output, code size, external weights; see :func:`model_id_of`). ``load_model`` checks
the weights against ``weights_sha256``, derives the id and refuses a card whose recorded ``model_id``
differs, so weights of model B under a card claiming A's id are refused, and an index of A refuses B.
Before any of that it checks every numeric card value against the bounds in
:data:`~sketchsearch.methods.base.HPARAM_BOUNDS` / ``PREPROCESSING_BOUNDS``, so nothing is allocated for a
card asking for absurd sizes. It then builds the card's network on PyTorch's meta device (shapes, no memory)
and compares it with the weights file's header tensor by tensor (name, shape, dtype): sizes each in bounds
but huge together are refused there too, and the network built for real holds exactly what the file holds.

Ids of older versions (``{method}-{size}-{weights sha256[:12]}``, weights only) are not accepted on cards:
:func:`reidentify_model` rewrites a card's ``model_id`` after checking it (the four shipped cards were
regenerated this way). An index saved with a shipped model's old id still opens with that model: the
explicit table :data:`LEGACY_MODEL_IDS` maps each shipped model's old id to its current one (nothing else is
mapped: an index of another model made before this change is refused, "re-index with the query's model").

**External weights.** A method whose constructor loads pretrained weights from an installed package (e.g.
Doodle to Search's frozen ImageNet backbone) names them in ``Method.external_weights()`` (state-dict prefix ->
package, file, sha256). The artifact then stores every *other* tensor, the card records that description
under ``external``, and loading rebuilds the method (which loads the package's file itself, e.g. with
``torch.load(weights_only=True)``) and refuses it when the installed file is not the recorded one.

Shipped artifacts live in the package (``sketchsearch/pretrained``); local ones anywhere, found by path, or
by name under ``$SKETCHSEARCH_MODELS`` (default ``./models``) or in the current folder. A name that more than
one of those places holds (e.g. a ``./models/sketch-gan.*`` pair beside the shipped ``sketch-gan``) is refused
rather than silently resolved to one of them; a path (anything with a ``/`` or a ``.json`` /
``.safetensors`` suffix) names exactly one artifact and always works.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from ._io import atomic_path, atomic_write_bytes
from .data.splits import Split
from .errors import ModelError
from .methods.base import HparamError, Method, Preprocessing, check_hparams, check_preprocessing, create_method

__all__ = [
    "LEGACY_MODEL_IDS",
    "RESHIPPED_MODELS",
    "ModelCard",
    "list_models",
    "load_model",
    "model_id_of",
    "reidentify_model",
    "resolve_model",
    "save_model",
]

FORMAT = 1
#: the split file saved beside a model: NAME.split.json
SPLIT_SUFFIX = ".split.json"


@dataclass
class ModelCard:
    name: str
    method: str
    kwargs: dict[str, Any]
    preprocessing: dict[str, Any]
    output: str
    code_size: int
    weights_sha256: str
    model_id: str
    training: dict[str, Any]
    metrics: dict[str, Any]
    created: str
    version: str = __version__
    format: int = FORMAT
    #: weights not in the artifact: state-dict prefix -> what identifies them (see the module docstring)
    external: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True, default=str) + "\n"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: the card fields a model_id digests besides the weights: everything that changes the encoding
ID_FIELDS = ("method", "kwargs", "preprocessing", "output", "code_size", "external")

#: old-style ids (weights only, before ids covered the card) of the shipped models -> their current ids.
#: Only for indexes saved before the change: ``Retriever.load`` accepts an index recording the old id of the
#: shipped model it is opened with. Cards never carry old ids (see :func:`reidentify_model`).
LEGACY_MODEL_IDS: dict[str, str] = {
    "doodle2search-256-8b3ed05f45cf": "doodle2search-256-1c4196809cd5",  # doodle2search-sketchy
    "gan-1024-ae8754c2dde3": "gan-1024-2c0bb6df0691",  # sketch-gan
    "sketchmate-64-b5c90febe46a": "sketchmate-64-57ac8292700a",  # sketchmate-quickdraw-64
}
#: Shipped models re-trained since (new weights): their earlier ids are refused, so an index built with the
#: old weights is never searched with the new ones ("re-index with the query's model").
RESHIPPED_MODELS = ("thin-gan",)


def model_id_of(id_name: str, code_size: int, weights_sha256: str, encoding: dict[str, Any]) -> str:
    """``{id_name}-{code_size}-{12 hex}``: the hex is the sha256 of the weights' sha256 and ``encoding`` (the
    card's :data:`ID_FIELDS`) as canonical JSON, so two models share an id only when they have the same
    weights and encode the same way. ``encoding`` is taken as the card stores it (JSON round trip: tuples
    become lists), so save and load derive the same id."""
    canonical = json.dumps(
        {"weights_sha256": weights_sha256, **json.loads(json.dumps(encoding, default=str))},
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{id_name}-{code_size}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def legacy_model_id(id_name: str, code_size: int, weights_sha256: str) -> str:
    """The id of versions before :func:`model_id_of` covered the card (weights only): for messages."""
    return f"{id_name}-{code_size}-{weights_sha256[:12]}"


def save_model(
    method: Method,
    path: str | Path,
    *,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    split: Split | None = None,
) -> ModelCard:
    """Write ``path.safetensors`` and ``path.json`` (``path`` without suffix; any suffix is dropped), and the
    split the model was trained and evaluated on as ``path.split.json``, which the card names (``split_file``,
    relative to the card) so that ``evaluate`` can rebuild that split from the file alone."""
    stem = Path(path)
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    training = dict(training or {})
    if split is not None:
        split.save(stem.parent / f"{stem.name}{SPLIT_SUFFIX}")
        training["split_file"] = f"{stem.name}{SPLIT_SUFFIX}"
    external = method.external_weights()
    tensors = {
        k: v.detach().cpu().contiguous() for k, v in method.state_dict().items() if not k.startswith(tuple(external))
    }
    wpath = stem.with_suffix(".safetensors")
    with atomic_path(wpath) as tmp:
        # one metadata key: safetensors writes its metadata map in a Rust HashMap's random order, so two keys
        # gave the same weights two file digests (two model ids) about half the time
        save_file(tensors, str(tmp), metadata={"sketchsearch": f"method={method.name} format={FORMAT}"})
        digest = _sha256(tmp)
    card = ModelCard(
        name=stem.name,
        method=method.name,
        kwargs=method.hparams,
        preprocessing=method.preprocessing.to_dict(),
        output=method.output,
        code_size=int(method.code_size),
        weights_sha256=digest,
        model_id="",
        training=training,
        metrics=metrics or {},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        external=external,
    )
    card.model_id = _derived_id(card, method.id_name or method.name)
    atomic_write_bytes(stem.with_suffix(".json"), card.to_json().encode())
    return card


def _derived_id(card: ModelCard, id_name: str) -> str:
    return model_id_of(id_name, card.code_size, card.weights_sha256, {k: getattr(card, k) for k in ID_FIELDS})


def _shipped_dir() -> Path:
    return Path(str(resources.files("sketchsearch") / "pretrained"))


def _local_dir() -> Path:
    return Path(os.environ.get("SKETCHSEARCH_MODELS", "models"))


def list_models() -> list[dict[str, Any]]:
    """Shipped and local model artifacts: name, where, method, code size, metrics summary."""
    rows: list[dict[str, Any]] = []
    for where, folder in (("shipped", _shipped_dir()), ("local", _local_dir())):
        if not folder.is_dir():
            continue
        for card_path in sorted(folder.glob("*.json")):
            if not card_path.with_suffix(".safetensors").exists():
                continue
            try:
                card = json.loads(card_path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                rows.append({"name": card_path.stem, "where": where, "path": str(card_path), "error": str(e)})
                continue
            rows.append(
                {
                    "name": card_path.stem,
                    "where": where,
                    "path": str(card_path.with_suffix("")),
                    "method": card.get("method"),
                    "output": card.get("output"),
                    "code_size": card.get("code_size"),
                    "model_id": card.get("model_id"),
                    "metrics": card.get("metrics", {}),
                }
            )
    return rows


def _is_artifact(stem: Path) -> bool:
    return stem.with_suffix(".json").is_file() and stem.with_suffix(".safetensors").is_file()


def _shown(stem: Path) -> str:
    """An artifact stem as a path to pass back: ``./name`` for one in the current folder."""
    return str(stem) if stem.is_absolute() or len(stem.parts) > 1 else f"./{stem}"


def resolve_model(name_or_path: str | Path) -> Path:
    """A model name (shipped or local) or a path (with or without suffix) -> the artifact stem.

    A path (one with a ``/`` or a ``.json`` / ``.safetensors`` suffix) names exactly that artifact. A bare
    name is looked up in the current folder, ``$SKETCHSEARCH_MODELS`` and the shipped models; when more than
    one of them holds it (e.g. ``./models/sketch-gan.*`` beside the shipped ``sketch-gan``) it is refused
    rather than resolved to one silently: pass the path, or rename one."""
    text = str(name_or_path)
    p = Path(name_or_path)
    explicit = "/" in text or os.sep in text or p.suffix in (".json", ".safetensors")
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    if explicit or len(p.parts) != 1:
        if _is_artifact(p):
            return p
    else:
        found: dict[Path, tuple[Path, str]] = {}  # resolved -> (as named, where): the same files count once
        places = (("current folder", p), ("local models", _local_dir() / p.name), ("shipped", _shipped_dir() / p.name))
        for where, c in places:
            if _is_artifact(c):
                found.setdefault(c.resolve(), (c, where))
        if len(found) > 1:
            both = " and ".join(f"{_shown(c)} ({where})" for c, where in found.values())
            raise ModelError(
                f"model name {text!r} is ambiguous: {both} both have it (a local artifact never silently replaces "
                "another); pass the path of the one you mean, or rename the local one"
            )
        if found:
            return next(iter(found.values()))[0]
    known = ", ".join(sorted({r["name"] for r in list_models()})) or "(none)"
    raise ModelError(
        f"no model artifact {str(name_or_path)!r} (need NAME.json + NAME.safetensors); known models: {known}"
    )


def model_split(name_or_path: str | Path) -> Split | None:
    """The split a model was trained on, from the split file its card names (None when it names none:
    a model trained on unlabelled data, or made before split files)."""
    stem = resolve_model(name_or_path)
    card_path = stem.with_suffix(".json")
    try:
        training = json.loads(card_path.read_text()).get("training") or {}
    except (OSError, ValueError, AttributeError) as e:
        raise ModelError(f"{card_path}: not a valid model card ({e})") from None
    name = training.get("split_file")
    if not name:
        return None
    if not isinstance(name, str) or Path(name).name != name:
        raise ModelError(f"{card_path}: split_file must be a file name beside the card, got {name!r}")
    return Split.load(card_path.parent / name)


_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _read_card(card_path: Path) -> ModelCard:
    """Parse a card and check its fields' types and every numeric value's bounds: nothing built yet."""
    try:
        raw = json.loads(card_path.read_text())
        card = ModelCard(**{k: raw[k] for k in ModelCard.__dataclass_fields__ if k in raw})
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ModelError(f"{card_path}: not a valid model card ({e})") from None
    if card.format != FORMAT:
        raise ModelError(f"{card_path}: card format {card.format}, this version reads {FORMAT}")
    types = {"method": str, "model_id": str, "weights_sha256": str, "kwargs": dict, "preprocessing": dict}
    for key, kind in types.items():
        if not isinstance(getattr(card, key), kind):
            raise ModelError(f"{card_path}: {key} must be a JSON {kind.__name__}, got {getattr(card, key)!r}")
    if not isinstance(card.external, dict):
        raise ModelError(f"{card_path}: external must be a JSON object, got {card.external!r}")
    if card.output not in ("binary", "float"):
        raise ModelError(f"{card_path}: output={card.output!r} is not one of 'binary', 'float'")
    try:
        if isinstance(card.code_size, bool) or not isinstance(card.code_size, int) or not 1 <= card.code_size <= 65536:
            raise HparamError("code_size", card.code_size, "> 0 and <= 65536 (an integer)")
        check_hparams(card.kwargs)
        check_preprocessing(card.preprocessing)
    except HparamError as e:
        where = "preprocessing." if e.key in card.preprocessing or e.key == "inputs" else ""
        where = "kwargs." if e.key in card.kwargs else where
        raise ModelError(
            f"{card_path}: out of bounds, nothing built: {where}{e.key} must be {e.valid}, got {e.value!r}"
        ) from None
    return card


def _check_tensors(wpath: Path, method: Method, external: dict[str, Any], card_path: Path) -> None:
    """Every tensor the file holds has the name, shape and dtype of the network built from the card (read
    from the file's header: no tensor is loaded before this passes)."""
    want = {k: v for k, v in method.state_dict().items() if not k.startswith(tuple(external))}
    try:
        with safe_open(str(wpath), framework="pt") as f:
            have = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{wpath}: unreadable safetensors file ({e})") from None
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise ModelError(
            f"{wpath}: weights do not fit {method.name} built from {card_path}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for k, t in want.items():
        expected = (_ST_DTYPES.get(t.dtype, str(t.dtype)), list(t.shape))
        if have[k] != expected:
            raise ModelError(
                f"{wpath}: tensor {k!r} is {have[k][0]} {have[k][1]}, but {method.name} built from {card_path} "
                f"has {expected[0]} {expected[1]}"
            )


def _build(card: ModelCard, card_path: Path, *, meta: bool = False) -> Method:
    """The method the card describes. ``meta``: on PyTorch's meta device (shapes and dtypes, no memory), to
    compare with the weights file before anything is allocated; a method whose constructor cannot run there
    is built for real (its kwargs are within bounds by then)."""
    try:
        if not meta:
            return create_method(card.method, preprocessing=Preprocessing.from_dict(card.preprocessing), **card.kwargs)
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")  # external weights loaded into meta tensors: a no-op, as meant
                return create_method(
                    card.method, preprocessing=Preprocessing.from_dict(card.preprocessing), **card.kwargs
                )
        except (RuntimeError, NotImplementedError):
            return _build(card, card_path)
    except (ValueError, TypeError) as e:
        raise ModelError(f"{card_path}: cannot build method {card.method!r} with {card.kwargs}: {e}") from None


def load_model(name_or_path: str | Path, map_location: str = "cpu", verify: bool = True) -> tuple[Method, ModelCard]:
    """Rebuild the method from its card and load the weights (safetensors: no code runs on load).

    In order: the card's values are checked against their bounds (nothing is built for an absurd size); the
    weights against ``weights_sha256`` (``verify``); the method is built on the meta device (no memory) and
    the ``model_id`` derived from the weights and the card (:func:`model_id_of`) must equal the recorded one;
    the file's tensors must have the names, shapes and dtypes of that network (so the network built for real
    next holds exactly what the file holds); then they are loaded. Any failure: a one-line ModelError naming
    the file. ``verify=False`` skips hashing the weights, so the id is then derived from the card's
    unverified ``weights_sha256``: use it only for files you trust."""
    stem = resolve_model(name_or_path)
    card_path = stem.with_suffix(".json")
    card = _read_card(card_path)
    wpath = stem.with_suffix(".safetensors")
    if verify and _sha256(wpath) != card.weights_sha256:
        raise ModelError(f"{wpath}: weights do not match the card's sha256 (corrupt or replaced file)")
    shape = _build(card, card_path, meta=True)
    external = shape.external_weights()
    if set(external) != set(card.external) or (verify and external != card.external):
        raise ModelError(
            f"{card_path}: the model was trained on external weights {card.external}, but the installed ones "
            f"are {external}: reinstall the recorded package version (or retrain)"
        )
    id_name = shape.id_name or shape.name
    derived = _derived_id(card, id_name)
    if card.model_id != derived:
        hint = (
            "an id from before ids covered the card (weights only): if the card is yours, run "
            f"sketchsearch.model.reidentify_model({str(stem)!r}) and re-index what it indexed"
            if card.model_id == legacy_model_id(id_name, card.code_size, card.weights_sha256)
            else "the card claims another model's identity, or was edited after saving"
        )
        raise ModelError(
            f"{card_path}: recorded model_id {card.model_id!r} differs from {derived!r} derived from its weights "
            f"and card ({hint})"
        )
    if (shape.output, shape.code_size) != (card.output, card.code_size):
        # An index built from this card's codes would silently mismatch the rebuilt method's codes.
        raise ModelError(
            f"{card_path}: the card says {card.output} codes of size {card.code_size}, but the method it "
            f"describes gives {shape.output} codes of size {shape.code_size}"
        )
    _check_tensors(wpath, shape, external, card_path)
    method = _build(card, card_path)
    try:
        state = load_file(str(wpath), device=map_location)
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{wpath}: unreadable safetensors file ({e})") from None
    try:
        missing, unexpected = method.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False (checked above already)
        raise ModelError(f"{wpath}: weights do not fit {card.method} built from {card_path}: {e}") from None
    missing = [k for k in missing if not k.startswith(tuple(external))]
    if missing or unexpected:
        raise ModelError(
            f"{wpath}: weights do not fit {card.method}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    method.eval()
    return method, card


def reidentify_model(name_or_path: str | Path) -> str:
    """Rewrite a card's ``model_id`` as :func:`model_id_of` derives it, after checking that the weights match
    the card's sha256 and that the card builds a network the weights fit; the weights and every other field
    are untouched. For cards of earlier versions (weights-only ids) and the shipped cards' regeneration::

        for m in doodle2search-sketchy sketch-gan sketchmate-quickdraw-64 thin-gan; do
            PYTHONPATH=src python -c "import sys; from sketchsearch.model import reidentify_model as r
            print(r(sys.argv[1]))" src/sketchsearch/pretrained/$m; done

    Only for cards you trust: it accepts the card's kwargs as they are. Indexes made with the old id must be
    re-indexed (except the shipped models', see :data:`LEGACY_MODEL_IDS`). Returns the new id."""
    stem = resolve_model(name_or_path)
    card_path = stem.with_suffix(".json")
    card = _read_card(card_path)
    if _sha256(stem.with_suffix(".safetensors")) != card.weights_sha256:
        raise ModelError(f"{stem.with_suffix('.safetensors')}: weights do not match the card's sha256")
    method = _build(card, card_path, meta=True)
    _check_tensors(stem.with_suffix(".safetensors"), method, method.external_weights(), card_path)
    raw = json.loads(card_path.read_text())
    raw["model_id"] = _derived_id(card, method.id_name or method.name)
    atomic_write_bytes(card_path, (json.dumps(raw, indent=2, sort_keys=True, default=str) + "\n").encode())
    return str(raw["model_id"])
