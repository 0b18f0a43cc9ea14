"""Retrieval methods, one file per paper; build them with :func:`create_method`."""

from .base import METHODS, Batch, Method, Preprocessing, create_method, list_methods

__all__ = ["METHODS", "Batch", "Method", "Preprocessing", "create_method", "list_methods"]
