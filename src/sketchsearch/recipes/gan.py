"""sketch-GAN / thin-GAN's recipe: unlabelled drawings rendered once, Algorithm 1 in the one training loop,
then the discriminator's batch statistics and centre calibrated on real drawings; ``samples.png`` of G.

Unlabelled: no split and no evaluation here (the GAN cards are evaluated leave-one-out on labelled Omniglot,
``sketchsearch evaluate --protocol leave-one-out``). ``--data`` takes any spec the data entry point reads, or
several joined by ``","``; items without strokes are skipped and counted.

``sketchsearch train gan --data ../shared/data/sketchrnn/omniglot.npz --set arch=sketch-gan --iterations 2000
--batch-size 128 --lr 0.002`` (the paper's Adam 0.002, batch 128, 2,000 iterations)
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.batching import RasterDataset
from ..data.collection import Collection
from ..data.render import rasterize
from ..data.sketch import Sketch
from ..data.sources import load_collection
from ..data.splits import Split
from ..errors import FormatError, InvalidSketchError
from ..eval.plots import image_grid
from ..methods.gan_encoder import ADAM_BETAS, GANEncoder
from ..progress import phase
from ..train import TrainConfig, train
from . import RECIPES, Recipe


def load_unlabelled(data: str) -> Collection:
    """Every item of each ``","``-separated spec, through the one data entry point. With several specs an
    item's id is prefixed by its spec's position (``"1:omniglot.npz:train:0"``), so that two files with the
    same record ids (e.g. two copies of one file name) can be joined."""
    specs = [p.strip() for p in data.split(",") if p.strip()]
    items, skipped, errors = [], 0, []
    for n, part in enumerate(specs):
        if part != "default" and not Path(part).exists():
            raise FormatError(part, None, "no such file or folder (give a data path, or 'default')")
        coll = load_collection(part)
        items += coll.items if len(specs) == 1 else [replace(it, id=f"{n}:{it.id}") for it in coll.items]
        skipped, errors = skipped + coll.skipped, errors + coll.errors
    return Collection(items, name=data, path=data, skipped=skipped, errors=errors)


def drawings(coll: Collection, limit: int | None, seed: int) -> tuple[list[Sketch], int]:
    """The strokes of the items that have them, in order (a seeded subset of at most ``limit``, order kept);
    (sketches, items without strokes)."""
    sketches = [it.sketch for it in coll.items if it.sketch is not None and not it.sketch.is_empty]
    skipped = len(coll.items) - len(sketches)
    if limit is not None and len(sketches) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(sketches), size=limit, replace=False))
        sketches = [sketches[i] for i in keep]
    return sketches, skipped


def render(coll: Collection, method: GANEncoder, limit: int | None, seed: int) -> tuple[np.ndarray, int]:
    """Rasters float32 (N, S, S) of :func:`drawings` at the method's preprocessing; (rasters, skipped)."""
    sketches, skipped = drawings(coll, limit, seed)
    pre, rows = method.preprocessing, []
    for s in sketches:
        try:
            rows.append(rasterize(s, size=pre.raster_size, line_width=pre.line_width))
        except InvalidSketchError:
            skipped += 1
    if not rows:
        raise FormatError(coll.path or "data", None, f"no drawings with strokes found ({skipped} records skipped)")
    return np.stack(rows), skipped


def fit(
    method: GANEncoder,
    coll: Collection,
    split: Split | None,
    cfg: TrainConfig,
    *,
    limit: int | None = None,  # at most this many training drawings (a seeded subset)
    calibrate_on: int = 10_000,  # drawings used to re-estimate D's batch statistics and the centre
) -> dict[str, Any]:
    t0 = time.perf_counter()
    with phase("rendering the drawings"):
        rasters, skipped = render(coll, method, limit, cfg.seed)
    render_s = time.perf_counter() - t0
    result = train(method, RasterDataset(rasters), cfg)
    n = min(len(rasters), calibrate_on)
    idx = np.sort(np.random.default_rng(cfg.seed).choice(len(rasters), size=n, replace=False))
    with phase(f"calibrating on {n} drawings"):
        calib = method.calibrate(torch.from_numpy(rasters[idx])[:, None])
    if cfg.out:
        with torch.no_grad():
            samples = method.sample(64, generator=torch.Generator().manual_seed(cfg.seed)).cpu().numpy()[:, 0]
        image_grid(samples, Path(cfg.out) / "samples.png", ncol=8, title=f"{method.arch}: G(z), z ~ N(0, I)")
    last = result.history[-1] if result.history else {}
    return {
        "drawings": len(rasters),
        "skipped_records": int(coll.skipped + skipped),
        "render_seconds": round(render_s, 1),
        "adam_betas": list(ADAM_BETAS),
        "seconds": round(result.seconds, 1),
        "device": result.device,
        "torch_threads": torch.get_num_threads(),
        "final_losses": {k: round(v, 4) for k, v in last.items() if k in ("d_loss", "g_loss", "d_real", "d_fake")},
        "batch_norm": f"D's running statistics re-estimated on {calib['calibrated_on']} real training drawings",
        "centre": f"mean encoding of the same drawings ({calib['active_dims']} of 1024 dims ever active)",
        "parameters": method.parameter_counts(),
    }


RECIPES.register("gan")(
    lambda: Recipe(
        method="gan",
        fit=fit,
        iterations=2000,
        batch_size=128,
        lr=2e-3,  # the paper's Algorithm 1 settings
        split=None,
        load=load_unlabelled,
    )
)
