"""Frozen pretrained features (``methods/pretrained.py``): "trained" as the pixel ITQ is, by fitting the mean,
PCA / whitening and ITQ rotation on the split's train part (or its gallery, without labels); the backbone is
never trained.

``sketchsearch train pretrained --data PATH --set output=binary --set code_size=64 --set backbone=lite2``
"""

from __future__ import annotations

from functools import partial

from . import RECIPES, Recipe, closed_form_fit

RECIPES.register("pretrained")(partial(Recipe, method="pretrained", fit=closed_form_fit, split="category"))
