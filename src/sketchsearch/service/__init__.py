"""The web service: FastAPI app (REST API + the drawing page) over :class:`~sketchsearch.retrieval.Retriever`.

>>> from sketchsearch.service import create_app, load_collections
>>> app = create_app(load_collections([("quickdraw", None, "indexes/quickdraw")]))
"""

from .app import BatchOptions, Limits, create_app, load_collections, warm_up

__all__ = ["BatchOptions", "Limits", "create_app", "load_collections", "warm_up"]
