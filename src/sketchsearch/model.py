"""Model artifacts: weights as safetensors + a JSON card. Loading never unpickles.

An artifact ``NAME`` is two files side by side: ``NAME.safetensors`` (every parameter and buffer of the
method) and ``NAME.json`` (the card)::

    {"format": 1, "name": ..., "method": "itq", "kwargs": {...}, "preprocessing": {...},
     "output": "binary", "code_size": 64, "weights_sha256": "...", "model_id": "itq-64-1a2b3c4d",
     "training": {"command": "...", "data": "...", "split": "...", ...}, "metrics": {...}, "created": "..."}

``model_id`` (method, size and a weights digest) is what an index records, so an index refuses queries
encoded by any other model.

**External weights.** A method whose constructor loads pretrained weights from an installed package (e.g.
Doodle to Search's frozen ImageNet backbone) names them in ``Method.external_weights()`` (state-dict prefix ->
package, file, sha256). The artifact then stores every *other* tensor, the card records that description
under ``external``, and loading rebuilds the method (which loads the package's file itself, e.g. with
``torch.load(weights_only=True)``) and refuses it when the installed file is not the recorded one.

Shipped artifacts live in the package (``sketchsearch/pretrained``); local ones anywhere, found by path, or
by name under ``$SKETCHSEARCH_MODELS`` (default ``./models``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from ._io import atomic_path, atomic_write_bytes
from .data.splits import Split
from .errors import ModelError
from .methods.base import Method, Preprocessing, create_method

__all__ = ["ModelCard", "list_models", "load_model", "model_id_of", "resolve_model", "save_model"]

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


def model_id_of(method_name: str, code_size: int, weights_sha256: str) -> str:
    return f"{method_name}-{code_size}-{weights_sha256[:12]}"


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
        save_file(tensors, str(tmp), metadata={"method": method.name, "format": str(FORMAT)})
        digest = _sha256(tmp)
    card = ModelCard(
        name=stem.name,
        method=method.name,
        kwargs=method.hparams,
        preprocessing=method.preprocessing.to_dict(),
        output=method.output,
        code_size=int(method.code_size),
        weights_sha256=digest,
        model_id=model_id_of(method.id_name or method.name, int(method.code_size), digest),
        training=training,
        metrics=metrics or {},
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        external=external,
    )
    atomic_write_bytes(stem.with_suffix(".json"), card.to_json().encode())
    return card


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


def resolve_model(name_or_path: str | Path) -> Path:
    """A model name (shipped or local) or a path (with or without suffix) -> the artifact stem."""
    p = Path(name_or_path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    candidates = [p]
    if len(p.parts) == 1:
        candidates += [_local_dir() / p.name, _shipped_dir() / p.name]
    for c in candidates:
        if c.with_suffix(".json").is_file() and c.with_suffix(".safetensors").is_file():
            return c
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


def load_model(name_or_path: str | Path, map_location: str = "cpu", verify: bool = True) -> tuple[Method, ModelCard]:
    """Rebuild the method from its card and load the weights (safetensors: no code runs on load)."""
    stem = resolve_model(name_or_path)
    card_path = stem.with_suffix(".json")
    try:
        raw = json.loads(card_path.read_text())
        card = ModelCard(**{k: raw[k] for k in ModelCard.__dataclass_fields__ if k in raw})
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ModelError(f"{card_path}: not a valid model card ({e})") from None
    if card.format != FORMAT:
        raise ModelError(f"{card_path}: card format {card.format}, this version reads {FORMAT}")
    wpath = stem.with_suffix(".safetensors")
    if verify and _sha256(wpath) != card.weights_sha256:
        raise ModelError(f"{wpath}: weights do not match the card's sha256 (corrupt or replaced file)")
    try:
        method = create_method(card.method, preprocessing=Preprocessing.from_dict(card.preprocessing), **card.kwargs)
    except (ValueError, TypeError) as e:
        raise ModelError(f"{card_path}: cannot build method {card.method!r} with {card.kwargs}: {e}") from None
    try:
        state = load_file(str(wpath), device=map_location)
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{wpath}: unreadable safetensors file ({e})") from None
    external = method.external_weights()
    if set(external) != set(card.external) or (verify and external != card.external):
        raise ModelError(
            f"{card_path}: the model was trained on external weights {card.external}, but the installed ones "
            f"are {external}: reinstall the recorded package version (or retrain)"
        )
    try:
        missing, unexpected = method.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise ModelError(f"{wpath}: weights do not fit {card.method} built from {card_path}: {e}") from None
    missing = [k for k in missing if not k.startswith(tuple(external))]
    if missing or unexpected:
        raise ModelError(
            f"{wpath}: weights do not fit {card.method}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if (method.output, method.code_size) != (card.output, card.code_size):
        # An index built from this card's codes would silently mismatch the rebuilt method's codes.
        raise ModelError(
            f"{card_path}: the card says {card.output} codes of size {card.code_size}, but the method it "
            f"describes gives {method.output} codes of size {method.code_size}"
        )
    method.eval()
    return method, card
