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
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Bound:
    """The valid values of one numeric hyper-parameter: an integer (bools refused, so ``3e7`` is not one) or a
    finite real number (integers accepted) in ``[lo, hi]``; ``optional``: ``None`` too (the method's default)."""

    kind: type
    lo: float
    hi: float
    optional: bool = False

    def describe(self) -> str:
        """E.g. ``> 0 and <= 1024 (an integer)``, for messages: ``dz must be ..., got 30000000.0``."""
        lower = "> 0" if self.kind is int and self.lo == 1 else f">= {self.lo:g}"
        what = "an integer" if self.kind is int else "a finite number"
        return f"{lower} and <= {self.hi:g} ({what}{' or null' if self.optional else ''})"

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.kind is int else numbers.Real):
            return False
        return math.isfinite(value) and self.lo <= value <= self.hi


_SIZE = Bound(int, 1, 4096)  # code lengths, embedding and hidden sizes
_WEIGHT = Bound(float, 0, 1e6)  # loss weights, GRL scales, learning-rate multipliers
_WIDTH = Bound(float, 0.01, 16)  # channel multipliers

#: The bounds of every numeric constructor argument of every method, by name (one name = one meaning across
#: methods). ``load_model`` checks a card's kwargs against this table before it builds anything, so a card
#: cannot ask for a 15 GB layer (``dz=3e7``) or a negative size; a numeric kwarg missing from the table is
#: refused there (tests/test_model_identity.py checks that every method's numeric arguments are listed).
#: Constructors check the listed ones too (``Method.__init_subclass__``). Each range is generous next to the
#: paper's and our values (the comments in the method files) and keeps any one tensor well under 1 GB.
HPARAM_BOUNDS: dict[str, Bound] = {
    "nbits": _SIZE,
    "dim": _SIZE,
    "code_size": Bound(int, 1, 4096, optional=True),  # pretrained: bits (binary) or dims (float); None: default
    "embedding_dim": _SIZE,
    "semantic_dim": _SIZE,
    "rnn_hidden": _SIZE,
    "hidden": Bound(int, 0, 16384),  # 0: one linear layer
    "rank": Bound(int, 0, 16384),  # doodle2search residual heads: 0 = full rank
    "semantic_hidden": Bound(int, 1, 16384),
    "domain_hidden": Bound(int, 1, 16384),
    "dz": Bound(int, 1, 1024),
    "n_classes": Bound(int, 1, 100_000),
    "rnn_layers": Bound(int, 1, 16),
    "gen_width": Bound(int, 1, 512),
    "disc_width": Bound(int, 1, 512),
    "hash_width": Bound(int, 1, 512),
    "frozen_blocks": Bound(int, 0, 64),
    "hash_frozen_blocks": Bound(int, 0, 64),
    "cnn_frozen_blocks": Bound(int, 0, 64),
    "cnn_dim": _SIZE,
    "feature_dim": _SIZE,
    "projection_dim": _SIZE,
    "temperature": Bound(float, 1e-3, 100),  # a contrastive loss's softmax temperature
    "gs_res": Bound(int, 0, 64),
    "gi_res": Bound(int, 0, 64),
    "input_size": Bound(int, 16, 1024),
    "image_size": Bound(int, 8, 1024),
    "resolution": Bound(int, 16, 1024, optional=True),  # pretrained: backbone input; None: the backbone's own
    "iterations": Bound(int, 0, 100_000),
    "domain_warmup": Bound(int, 0, 10**9),
    "seed": Bound(int, 0, 2**32 - 1),
    "cnn_width": _WIDTH,
    "width": _WIDTH,
    "dropout": Bound(float, 0, 1),
    "adam_beta1": Bound(float, 0, 1),
    "attention_threshold": _WEIGHT,
    "margin": Bound(float, 0, 1e3, optional=True),
    "pos_margin": Bound(float, -1e3, 1e3, optional=True),
    "neg_margin": Bound(float, -1e3, 1e3, optional=True),
    **dict.fromkeys(
        (
            "quant_weight",
            "centre_weight",
            "regularizer_weight",
            "quantization_weight",
            "triplet_weight",
            "domain_weight",
            "semantic_weight",
            "domain_lambda",
            "semantic_lambda",
            "cycle_weight",
            "alpha",
            "beta",
            "hash_lr_mult",
            "top_lr_mult",
            "projection_weight",
            "code_weight",
            "distill_weight",
        ),
        _WEIGHT,
    ),
}

#: The bounds of :class:`Preprocessing`'s numeric fields (``line_width`` in pixels at ``raster_size``).
PREPROCESSING_BOUNDS: dict[str, Bound] = {
    "raster_size": Bound(int, 4, 512),
    "line_width": Bound(float, 0.01, 512),
    "max_points": Bound(int, 1, 10_000),
    "photo_size": Bound(int, 8, 1024),
}
PREPROCESSING_INPUTS = ("raster", "points", "photo")


class HparamError(ValueError):
    """A hyper-parameter or preprocessing value outside its :class:`Bound`: ``key``, ``value``, ``valid``."""

    def __init__(self, key: str, value: Any, valid: str) -> None:
        super().__init__(f"{key} must be {valid}, got {value!r}")
        self.key, self.value, self.valid = key, value, valid


def check_hparams(kwargs: Mapping[str, Any], *, strict: bool = True) -> None:
    """Check constructor kwargs against :data:`HPARAM_BOUNDS` (HparamError on the first bad one).

    ``strict`` (a model card): a number, list or dict under a name the table does not list is refused too, so
    nothing unbounded reaches a constructor; strings, bools and None are left to the constructor's own checks.
    """
    for key, value in kwargs.items():
        bound = HPARAM_BOUNDS.get(key)
        if bound is not None:
            if not bound.accepts(value):
                raise HparamError(key, value, bound.describe())
        elif strict and not (value is None or isinstance(value, str | bool)):
            raise HparamError(key, value, "declared in HPARAM_BOUNDS to be a number (no bounds are declared for it)")


def check_preprocessing(d: Mapping[str, Any]) -> None:
    """Check a preprocessing dict (a card's, or ``Preprocessing.to_dict()``) against
    :data:`PREPROCESSING_BOUNDS` and the known inputs; HparamError on the first bad value."""
    if not isinstance(d, Mapping):
        raise HparamError("preprocessing", d, "a JSON object of preprocessing fields")
    for key, bound in PREPROCESSING_BOUNDS.items():
        if key in d and not bound.accepts(d[key]):
            raise HparamError(key, d[key], bound.describe())
    inputs = d.get("inputs", ["raster"])
    if (
        not isinstance(inputs, list | tuple)
        or not inputs
        or any(not isinstance(i, str) or i not in PREPROCESSING_INPUTS for i in inputs)
    ):
        raise HparamError("inputs", inputs, f"a non-empty list of {', '.join(map(repr, PREPROCESSING_INPUTS))}")


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
                # bounds first: nothing is allocated for an argument out of HPARAM_BOUNDS
                given = dict(sig.bind(self, *args, **kwargs).arguments)
                for name, p in sig.parameters.items():  # **kwargs passed through to a parent's constructor
                    if p.kind is inspect.Parameter.VAR_KEYWORD:
                        given.update(given.pop(name, {}))
                check_hparams({k: v for k, v in given.items() if k in HPARAM_BOUNDS}, strict=False)
                if isinstance(given.get("preprocessing"), Preprocessing):
                    check_preprocessing(given["preprocessing"].to_dict())
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


_METHOD_MODULES: list[str] = [
    "baselines",
    "gan_encoder",
    "sketchmate",
    "dsml",
    "doodle2search",
    "gdh",
    "pretrained",
    "siamese",
    "universal",
]

__all__ = [
    "HPARAM_BOUNDS",
    "METHODS",
    "PREPROCESSING_BOUNDS",
    "Batch",
    "Bound",
    "HparamError",
    "Method",
    "Preprocessing",
    "check_hparams",
    "check_preprocessing",
    "create_method",
    "field",
    "list_methods",
    "total_loss",
]
