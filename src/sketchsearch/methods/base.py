"""The Method contract: encoders + losses + a training step, behind one interface.

A Method is an ``nn.Module``. The training loop (``sketchsearch.train``) only ever calls:

* ``configure_optimizers(lr) -> dict[str, Optimizer]``
* ``step(model, batch, optimizers) -> dict[str, float]`` — the default sums every ``*_loss`` term that
  ``forward(batch)`` (== ``training_losses``) returns and steps every optimiser; methods with several
  optimisers (GANs) override it. ``model`` is ``self`` or its DistributedDataParallel wrapper, so call
  ``model(batch, phase=...)`` rather than ``self.training_losses`` to keep DDP's gradient sync.

Retrieval only calls ``encode_sketch`` / ``encode_photo`` (float embeddings; for hashing methods the relaxed
code, whose sign is the binary code) and :attr:`output` ("binary" with ``nbits`` or "float" with ``dim``).
``preprocessing`` says what a batch must hold, so every caller builds batches the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..registry import Registry

Batch = dict[str, Tensor]
"""A batch: ``raster`` float (B,1,H,W) ink=1; ``points`` float (B,T,4) zero-padded 4-d strokes with
``lengths`` long (B,); ``photo`` float (B,3,H,W); ``label`` long (B,) (-1 = unknown); ``domain`` long (B,)."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw drawings become tensors for a method (saved in the model card)."""

    inputs: tuple[str, ...] = ("raster",)  # any of "raster", "points", "photo"
    raster_size: int = 64  # pixels
    line_width: float = 1.5  # pixels at raster_size
    max_points: int = (
        256  # points kept for the sequence branch (longer sketches are RDP-simplified, then cut)
    )
    photo_size: int = 224

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        d = dict(d)
        d["inputs"] = tuple(d.get("inputs", ("raster",)))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def check_bounds(
    *, positive: Mapping[str, Any] | None = None, non_negative: Mapping[str, Any] | None = None, who: str = ""
) -> None:
    """Constructor argument checks shared by the methods: every ``positive`` value (sizes, counted as ints)
    must be > 0 and every ``non_negative`` one (weights, scales) >= 0; else ValueError naming the argument,
    prefixed with ``who`` (e.g. ``"gdh: "``)."""
    for n, v in (positive or {}).items():
        if int(v) <= 0:
            raise ValueError(f"{who}{n} must be > 0, got {v}")
    for n, v in (non_negative or {}).items():
        if v < 0:
            raise ValueError(f"{who}{n} must be >= 0, got {v}")


class Method(nn.Module):
    """Base class of every retrieval method (one file per paper in ``sketchsearch.methods``)."""

    name: ClassVar[str] = "method"
    #: "binary": encode_* returns relaxed codes whose sign gives ``nbits`` bits; "float": L2-normalised embeddings.
    output: ClassVar[Literal["binary", "float"]] = "float"
    #: whether ``fit`` (closed form, e.g. ITQ) rather than gradient steps trains it
    closed_form: ClassVar[bool] = False
    #: the first part of a saved model's ``model_id`` when it must differ from ``name``: a variant that shares
    #: its registry name and weights with another (the GAN encoder's binary codes) still gets its own id, so an
    #: index of one refuses queries encoded by the other. Empty: ``name``.
    id_name: ClassVar[str] = ""

    def __init__(self, preprocessing: Preprocessing | None = None) -> None:
        super().__init__()
        self.preprocessing = preprocessing or Preprocessing()
        self._hparams: dict[str, Any] = {}

    # ---------------------------------------------------------------- bookkeeping
    def save_hparams(self, **kwargs: Any) -> None:
        """Record the constructor kwargs so a model card can rebuild this method exactly."""
        self._hparams = {k: v for k, v in kwargs.items()}

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self._hparams)

    @property
    def code_size(self) -> int:
        """nbits for binary methods, embedding dim for float ones."""
        raise NotImplementedError

    def external_weights(self) -> dict[str, dict[str, Any]]:
        """Weights a model artifact does not store: ``{state-dict prefix: description}``.

        A method built on pretrained weights that its constructor loads from an installed package (e.g. a
        frozen ImageNet backbone) returns, per prefix, what identifies them (package, file, sha256).
        ``save_model`` leaves those tensors out and records the description in the card; ``load_model``
        rebuilds the method (which loads them again) and refuses it when the description differs.
        Default: none (the artifact holds every tensor).
        """
        return {}

    # ---------------------------------------------------------------- training
    def training_losses(self, batch: Batch, phase: str = "all") -> dict[str, Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} has no gradient training (closed_form={self.closed_form})"
        )

    def forward(self, batch: Batch, phase: str = "all") -> dict[str, Tensor]:
        return self.training_losses(batch, phase=phase)

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"all": torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=lr)}

    def step(
        self,
        model: Callable[..., dict[str, Tensor]],
        batch: Batch,
        optimizers: Mapping[str, torch.optim.Optimizer],
    ) -> dict[str, float]:
        """One optimisation step: sum the ``*_loss`` terms, backprop, step every optimiser."""
        losses = model(batch)
        total = total_loss(losses)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in optimizers.values():
            opt.step()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["loss"] = float(total.detach())
        return out

    def fit(self, batches: Any) -> None:
        """Closed-form training (baselines). Gradient methods use the training loop instead."""
        raise NotImplementedError(f"{type(self).__name__} is trained by sketchsearch.train, not fit()")

    # ---------------------------------------------------------------- retrieval
    def encode_sketch(self, batch: Batch) -> Tensor:
        """(B, code_size) float: relaxed codes (binary methods) or embeddings (float methods)."""
        raise NotImplementedError

    def encode_photo(self, batch: Batch) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not encode photos")

    def encode(self, batch: Batch, modality: str = "sketch") -> Tensor:
        return self.encode_photo(batch) if modality == "photo" else self.encode_sketch(batch)

    def binarize(self, z: Tensor) -> np.ndarray:
        """Relaxed codes -> packed uint8 codes in faiss's layout (bit = z > threshold)."""
        from ..index.codes import sign_to_codes

        return sign_to_codes((z - self.code_threshold).detach().cpu().numpy())

    #: the value of the relaxed code at which a bit flips (0 for tanh/sign, 0.5 for sigmoid outputs)
    code_threshold: ClassVar[float] = 0.0


def total_loss(losses: Mapping[str, Tensor]) -> Tensor:
    """Sum of the terms whose key ends in ``_loss`` (others are logged only)."""
    terms = [v for k, v in losses.items() if k.endswith("_loss")]
    if not terms:
        raise ValueError(f"no '*_loss' term among {sorted(losses)}: a method must return at least one")
    return torch.stack([t.float() for t in terms]).sum()


METHODS: Registry[Method] = Registry("method")


def create_method(name: str, **kwargs: Any) -> Method:
    """Build a registered method by name; ``None`` kwargs keep the method's (paper) defaults."""
    _import_all()
    return METHODS.create(name, **kwargs)


def list_methods() -> list[str]:
    _import_all()
    return METHODS.names()


def _import_all() -> None:
    # Explicit imports (no import-time scanning): each module registers its methods.
    import importlib

    for mod in _METHOD_MODULES:
        try:
            importlib.import_module(f"sketchsearch.methods.{mod}")
        except ModuleNotFoundError as e:  # a method file not written yet must not break the others
            if e.name != f"sketchsearch.methods.{mod}":
                raise


_METHOD_MODULES: list[str] = ["baselines", "gan_encoder", "sketchmate", "dsml", "doodle2search", "gdh"]

__all__ = [
    "METHODS",
    "Batch",
    "Method",
    "Preprocessing",
    "create_method",
    "field",
    "list_methods",
    "total_loss",
]


# ---------------------------------------------------------------------------------------------- recipes
# A recipe turns a data path into a trained method: it builds the dataset the method needs, runs the one
# training loop (once per stage for multi-stage methods) and returns what the model card records.
# ``sketchsearch train METHOD --data PATH`` is just: recipe -> save_model. Signature:
#     recipe(data: str, cfg: TrainConfig, **method_kwargs) -> tuple[Method, dict training_info, dict metrics]
RECIPES: Registry[Any] = Registry("training recipe")
