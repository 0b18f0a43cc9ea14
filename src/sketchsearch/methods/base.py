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

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..data.batching import Batch, Preprocessing
from ..registry import Registry


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

    #: kwargs that select this class through its registry factory (e.g. ``{"binary": True}`` for the GAN
    #: encoder's binary variant): added to the recorded hyper-parameters so a card rebuilds the same class
    variant_kwargs: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        """Record every constructor's arguments (defaults applied) as the method's hyper-parameters, from
        the signature itself: the kwargs a model card saves are exactly what the constructor took, with no
        second hand-written list. The outermost constructor of a call records (a subclass calling
        ``super().__init__`` does not overwrite it); ``preprocessing`` is saved apart in the card."""
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Method, *args: Any, **kwargs: Any) -> None:
            outer = "_recording" not in self.__dict__
            if outer:
                object.__setattr__(self, "_recording", True)
            init(self, *args, **kwargs)
            if outer:
                bound = sig.bind(self, *args, **kwargs)
                bound.apply_defaults()
                params = {k: v for k, v in bound.arguments.items() if k not in ("self", "preprocessing")}
                for name, p in sig.parameters.items():  # **kwargs passed through to a parent's constructor
                    if p.kind is inspect.Parameter.VAR_KEYWORD:
                        params.update(params.pop(name, {}))
                self._hparams = {**params, **type(self).variant_kwargs}
                del self.__dict__["_recording"]

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def __init__(self, preprocessing: Preprocessing | None = None) -> None:
        super().__init__()
        self.preprocessing = preprocessing or Preprocessing()
        self._hparams: dict[str, Any] = {}

    # ---------------------------------------------------------------- bookkeeping
    @property
    def hparams(self) -> dict[str, Any]:
        """The constructor's arguments (defaults applied), recorded when the method was built."""
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
        raise NotImplementedError(f"{type(self).__name__} has no gradient training (closed_form={self.closed_form})")

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
