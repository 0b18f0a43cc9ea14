"""sketchsearch: search collections by drawing."""

__version__ = "0.1.0"
