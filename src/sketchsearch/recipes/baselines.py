"""The closed-form pixel baselines (ITQ, LSH, PCA): fitted, without labels, on the gallery of the standard
category split (per class ``queries_per_class`` queries, the rest gallery), evaluated on its queries.

``sketchsearch train itq --data PATH --set nbits=64 --set queries_per_class=10``
"""

from __future__ import annotations

from functools import partial

from . import RECIPES, Recipe, closed_form_fit

for _name in ("itq", "lsh", "pca"):
    RECIPES.register(_name)(partial(Recipe, method=_name, fit=closed_form_fit, split="category"))
