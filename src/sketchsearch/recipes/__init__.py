"""Recipes: how each method is trained. One pipeline for every paper:

    load a collection -> split it (or read a saved split) -> build the method -> the recipe's training
    (data + the one training loop, once per stage) -> evaluate on the split -> a trained model + its card record

A recipe's per-paper part is a small :class:`Recipe` entry: CPU-sized defaults for the loop, the split kind
and its defaults, the method's default kwargs that depend on the data (e.g. the number of classes), and
``fit``: the function that builds that paper's training data and runs the loop. Everything else (reading,
splitting, seeding, evaluating, recording) is :func:`run_recipe`, here, for all of them.

``sketchsearch train METHOD --data PATH`` is ``run_recipe`` then ``save_model``. Options are typed keyword
arguments, checked against the split builder's parameters, the recipe's own options and the method's
constructor: an unknown key is an error listing the valid keys with their defaults.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.collection import Collection
from ..data.sources import load_collection
from ..data.splits import SPLITS, Split, make_split
from ..eval.evaluate import evaluate, fit_on_split
from ..methods.base import METHODS, Method, create_method, list_methods
from ..progress import phase
from ..registry import Registry
from ..train import TrainConfig, seed_everything

__all__ = ["RECIPES", "Recipe", "RecipeResult", "list_recipes", "recipe_options", "run_recipe"]

#: fit(method, collection, split, cfg, **options) -> training record (timings, stage losses, ...)
Fit = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Recipe:
    """The per-paper part of training (see the module docstring)."""

    method: str  # the method's registry name
    fit: Fit
    iterations: int = 1000  # CPU-sized defaults of the one training loop when the command line sets none
    batch_size: int = 64
    lr: float = 1e-3
    split: str | None = "category"  # split kind (sketchsearch.data.splits); None: unlabelled data, no split
    split_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: method kwargs that depend on the data: (collection, split) -> kwargs (e.g. n_classes)
    method_defaults: Callable[[Collection, Split | None], dict[str, Any]] | None = None
    #: extra metrics after the split's evaluation: (method, collection, split) -> dict
    extra_metrics: Callable[[Method, Collection, Split], dict[str, Any]] | None = None
    #: read the data (default: load_collection(data)); e.g. several unlabelled files joined by ","
    load: Callable[[str], Collection] | None = None
    doc: str = ""

    def options(self) -> dict[str, Any]:
        """The recipe's own options (``fit``'s keyword parameters) with their defaults."""
        sig = inspect.signature(self.fit)
        return {n: p.default for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


RECIPES: Registry[Recipe] = Registry("training recipe")
_RECIPE_MODULES = ("baselines", "gan", "sketchmate", "dsml", "doodle2search", "gdh", "pretrained", "universal")


def _import_all() -> None:
    for mod in _RECIPE_MODULES:  # explicit imports: each module registers its recipe
        importlib.import_module(f"{__name__}.{mod}")


def get_recipe(name: str) -> Recipe:
    _import_all()
    return RECIPES.get(name)()


def list_recipes() -> list[str]:
    _import_all()
    return RECIPES.names()


def recipe_options(name: str) -> dict[str, dict[str, Any]]:
    """Every ``--set`` key a recipe accepts, by kind (``split``, ``recipe``, ``method``), with its default."""
    r = get_recipe(name)
    split_opts: dict[str, Any] = {}
    if r.split:
        sig = inspect.signature(SPLITS.get(r.split))
        split_opts = {n: p.default for n, p in list(sig.parameters.items())[1:] if n != "seed"}
        split_opts.update(r.split_defaults)
        split_opts["split_seed"] = "the training seed"
    list_methods()  # imports every method module (their registrations)
    meth = METHODS.get(r.method)
    target = meth.__init__ if isinstance(meth, type) else meth  # a class, or a factory function
    msig = inspect.signature(target)
    method_opts = {
        n: p.default
        for n, p in msig.parameters.items()
        if n not in ("self", "preprocessing") and p.kind is not inspect.Parameter.VAR_KEYWORD
    }
    cls = _method_class(r.method)
    if cls is not None:  # a factory passing **kwargs on: the class constructor's parameters too
        for n, p in inspect.signature(cls.__init__).parameters.items():
            if n not in ("self", "preprocessing") and p.kind is not inspect.Parameter.VAR_KEYWORD:
                method_opts.setdefault(n, p.default)
    return {"split": split_opts, "recipe": r.options(), "method": method_opts}


def _method_class(name: str) -> type[Method] | None:
    ann = inspect.signature(METHODS.get(name)).return_annotation
    obj = getattr(inspect.getmodule(METHODS.get(name)), str(ann), None) if isinstance(ann, str) else ann
    return obj if isinstance(obj, type) and issubclass(obj, Method) else None


@dataclass
class RecipeResult:
    method: Method
    split: Split | None
    training: dict[str, Any]
    metrics: dict[str, Any]


def _fmt(opts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(opts.items()) if v is not inspect.Parameter.empty) or "(none)"


def run_recipe(
    name: str,
    data: str,
    options: Mapping[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    seed: int = 0,
    device: str | None = None,
    iterations: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    split_file: str | Path | None = None,
    progress: bool = True,
    **more_options: Any,
) -> RecipeResult:
    """Train ``name``'s method on ``data`` (see the module docstring). ``iterations`` / ``batch_size`` / ``lr``:
    None keeps the recipe's defaults. ``split_file``: a saved split to use instead of making one. ``options``:
    split parameters (``split_seed`` is the split's seed, default ``seed``), recipe options and method kwargs;
    ``out``: the work folder (split.json, logs, checkpoints). Seeded: the same call gives the same weights.
    ``options`` (a mapping, e.g. the CLI's ``--set`` keys) and ``more_options`` are merged; a method kwarg that
    shares its name with a parameter here (``seed``: LSH's hyperplanes) goes in ``options``."""
    options = {**(options or {}), **more_options}
    recipe = get_recipe(name)
    valid = recipe_options(name)
    split_opts = {k: options.pop(k) for k in list(options) if k in valid["split"] and k != "split_seed"}
    split_seed = int(options.pop("split_seed", seed))
    fit_opts = {k: options.pop(k) for k in list(options) if k in valid["recipe"]}
    unknown = sorted(k for k in options if k not in valid["method"])
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for recipe {name!r}; valid: split: {_fmt(valid['split'])}; "
            f"recipe: {_fmt(valid['recipe'])}; method: {_fmt(valid['method'])}"
        )
    cfg = TrainConfig(
        iterations=iterations or recipe.iterations,
        batch_size=batch_size or recipe.batch_size,
        lr=lr or recipe.lr,
        seed=seed,
        device=device,
        out=str(out) if out else None,
        progress=progress,
    )
    t0 = time.perf_counter()
    with phase(f"reading {data}"):
        coll = recipe.load(data) if recipe.load else load_collection(data)
    split: Split | None = None
    if split_file:
        split = Split.load(split_file)
        split.check(coll.items, split_file)
    elif recipe.split:
        with phase(f"{recipe.split} split of {len(coll)} items"):
            split = make_split(recipe.split, coll.items, seed=split_seed, **{**recipe.split_defaults, **split_opts})
    if split is not None:
        split = Split(
            split.kind, split.seed, split.params, split.parts, split.seen_classes, split.unseen_classes, data=str(data)
        )
        if out:
            split.save(Path(out) / "split.json")
    seed_everything(seed)  # the method's initialisation: the same seed gives the same weights
    kwargs = {**(recipe.method_defaults(coll, split) if recipe.method_defaults else {}), **options}
    # a method's own `seed` (LSH's hyperplanes, ITQ's rotation) is the run's seed unless --set gives it; a
    # closed-form method's `iterations` (ITQ's) is the command's --iterations: the loop has none to run
    if "seed" in valid["method"]:
        kwargs.setdefault("seed", seed)
    if iterations is not None and "iterations" in valid["method"]:
        kwargs.setdefault("iterations", iterations)
    method = create_method(recipe.method, **kwargs)
    record = recipe.fit(method, coll, split, cfg, **fit_opts)
    method.cpu().eval()
    metrics: dict[str, Any] = {}
    if split is not None and split.evaluations():
        with phase("evaluating on the split"):
            metrics = evaluate(method, coll, split)
            if recipe.extra_metrics:
                metrics.update(recipe.extra_metrics(method, coll, split))
        metrics["mAP@all"] = metrics["main"]["mAP@all"]
    training = {
        "recipe": name,
        "data": str(data),
        "seed": seed,
        "iterations": cfg.iterations,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "skipped_records": coll.skipped,
        "split": split.summary() if split is not None else None,
        "split_seed": split_seed,
        "options": {**split_opts, **fit_opts},
        "torch_threads": torch.get_num_threads(),
        **record,
        "recipe_seconds": round(time.perf_counter() - t0, 1),
    }
    return RecipeResult(method, split, training, metrics)


def closed_form_fit(method: Method, coll: Collection, split: Split | None, cfg: TrainConfig) -> dict[str, Any]:
    """``fit`` of the closed-form baselines: fitted on the split's train part, or its gallery (no labels)."""
    if split is None:
        raise ValueError("a closed-form baseline is fitted on a split's train part or gallery")
    with phase(f"fitting {method.name}"):
        return fit_on_split(method, coll, split)
