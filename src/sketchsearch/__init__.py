"""sketchsearch: search collections by drawing.

The public API, imported lazily (``import sketchsearch`` stays cheap; torch loads on first use)::

    from sketchsearch import Retriever, Sketch, create_method, load_model, save_model, rasterize
    from sketchsearch import load_collection, make_split, evaluate, run_recipe   # data -> split -> score / train
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Retriever": "sketchsearch.retrieval",
    "Hit": "sketchsearch.retrieval",
    "Sketch": "sketchsearch.data.sketch",
    "rasterize": "sketchsearch.data.render",
    "create_method": "sketchsearch.methods.base",
    "load_model": "sketchsearch.model",
    "save_model": "sketchsearch.model",
    "default_collection": "sketchsearch.data.synthetic",
    "load_collection": "sketchsearch.data.sources",
    "make_split": "sketchsearch.data.splits",
    "evaluate": "sketchsearch.eval.evaluate",
    "run_recipe": "sketchsearch.recipes",
}
__all__ = [
    "Hit",
    "Retriever",
    "Sketch",
    "__version__",
    "create_method",
    "default_collection",
    "evaluate",
    "load_collection",
    "load_model",
    "make_split",
    "rasterize",
    "run_recipe",
    "save_model",
]
assert set(__all__) == {"__version__", *_EXPORTS}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sketchsearch' has no attribute {name!r}")
