"""Data: the Sketch model, rendering, real-format readers, collections and the embedded default."""

from .render import image_to_raster, rasterize, rasterize_batch
from .sketch import Sketch

__all__ = ["Sketch", "image_to_raster", "rasterize", "rasterize_batch"]
