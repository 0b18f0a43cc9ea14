"""`sketchsearch invariance`: the sketch-GAN paper's invariance study (section 4.3) for any encoders;
`sketchsearch gan-binary`: the 1024-bit (centred sign) artifact of a trained GAN encoder, for the Hamming index.

Registered on the main app by ``sketchsearch.cli`` through :func:`register`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .._io import atomic_write_text
from .app import QUIET, Reporter, friendly_errors

__all__ = ["gan_binary", "invariance", "register", "run_invariance"]


def run_invariance(
    models: list[str],
    data: str,
    samples: int = 100,
    seed: int = 0,
    out: Path = Path("invariance"),
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Load each model, render ``samples`` seeded random drawings of ``data`` with that model's preprocessing,
    measure rotation / scale / shift similarity; write ``invariance.json``, ``rotation.png``, ``scale.png``
    and ``shift.png`` into ``out``. Returns the JSON document. ``reporter``: shows the progress (a bar per
    model over its transformed batches)."""
    import torch

    from ..eval import invariance as inv
    from ..eval import plots
    from ..model import load_model
    from ..recipes.gan import load_unlabelled, render

    if samples < 1:
        raise typer.BadParameter(f"--samples must be >= 1, got {samples}")
    reporter = reporter or Reporter(quiet=True)
    with reporter.phase(f"reading {data}"):
        coll = load_unlabelled(data)
    n_drawn = skipped = 0
    results: dict[str, Any] = {}
    cards: dict[str, Any] = {}
    # study() encodes the untransformed batch once per measurement, then one batch per transformation
    n_batches = 3 + len(inv.ROTATION_ANGLES) + len(inv.SCALE_FACTORS) + len(inv.SHIFTS) ** 2

    def counted(m: Any, step: Callable[[str, int, int], None], what: str) -> inv.EncodeFn:
        """``m``'s sketch encoder, advancing the bar ``what`` by one batch per call."""
        done = 0

        def encode(x: torch.Tensor) -> torch.Tensor:
            nonlocal done
            with torch.no_grad():
                z = m.encode_sketch({"raster": x})
            done += 1
            step(what, done, n_batches)
            return z

        return encode

    for name in models:
        with reporter.phase(f"loading {name} and rendering {samples} drawings"):
            method, card = load_model(name)
            method.eval()
            rasters, skipped = render(coll, method, samples, seed)  # the same seeded subset for every model
        n_drawn = len(rasters)
        label = card.name
        with reporter.steps() as step:
            encode = counted(method, step, f"invariance of {label}")
            results[label] = inv.study({label: encode}, rasters)[label]
        cards[label] = {"model_id": card.model_id, "method": card.method, "kwargs": card.kwargs}
    doc = {
        "data": data,
        "samples": n_drawn,
        "skipped_records": skipped,
        "seed": seed,
        "similarity": "normalised dot product with the untransformed drawing's encoding, mean over drawings",
        "summary_is": "mean similarity over the whole range (all 21 x 21 cells for shift)",
        "models": cards,
        "results": results,
    }
    atomic_write_text(out / "invariance.json", json.dumps(doc, indent=1))
    first = next(iter(results.values()))
    plots.curves(
        first["rotation"]["x"],
        {k: v["rotation"]["mean"] for k, v in results.items()},
        out / "rotation.png",
        xlabel="rotation (degrees)",
        title="Rotation",
        spread={k: v["rotation"]["std"] for k, v in results.items()},
    )
    plots.curves(
        first["scale"]["x"],
        {k: v["scale"]["mean"] for k, v in results.items()},
        out / "scale.png",
        xlabel="scale factor",
        title="Scale",
        spread={k: v["scale"]["std"] for k, v in results.items()},
    )
    xs = first["shift"]["x"]
    plots.heat_maps(
        {k: v["shift"]["mean"] for k, v in results.items()},
        out / "shift.png",
        extent=(xs[0] - 0.5, xs[-1] + 0.5, xs[0] - 0.5, xs[-1] + 0.5),
    )
    return doc


@friendly_errors
def invariance(
    model: list[str] | None = typer.Option(
        None, "--model", help="Model name or path (repeatable). Default: the shipped sketch-gan and thin-gan."
    ),
    data: str = typer.Option("default", "--data", help="Drawings to sample: a data path or 'default'."),
    samples: int = typer.Option(100, "--samples", help="Random drawings to average over (paper: 100)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random sample."),
    out: Path = typer.Option(Path("invariance"), "--out", help="Output folder."),
    quiet: bool = QUIET,
) -> None:
    """Rotation (-10..10 deg by 0.5), scale (0.5..1.5 by 0.05) and shift (-10..10 px) invariance of encoders:
    invariance.json + rotation.png, scale.png, shift.png."""
    doc = run_invariance(model or ["sketch-gan", "thin-gan"], data, samples, seed, out, Reporter(quiet))
    for name, r in doc["results"].items():
        s = r["summary"]
        typer.echo(f"{name}: rotation {s['rotation']:.4f}  scale {s['scale']:.4f}  shift {s['shift']:.4f}")
    typer.echo(f"wrote {out / 'invariance.json'}, rotation.png, scale.png, shift.png")


@friendly_errors
def gan_binary(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="A trained float GAN encoder (name or path), e.g. sketch-gan."),
    out: Path = typer.Option(..., "--out", help="Artifact to write (NAME.safetensors + NAME.json)."),
) -> None:
    """Write the binary variant of a GAN encoder: the same weights and training centre, 1024-bit codes
    (bit = feature above its training mean), so `index build --model OUT` builds a Hamming index."""
    from ..methods.gan_encoder import GANEncoder, binary_variant
    from ..model import load_model, save_model
    from .app import command_line

    method, card = load_model(model)
    if not isinstance(method, GANEncoder) or method.output != "float":
        raise typer.BadParameter(f"{model} is a {card.method} model with {card.output} output, not a float GAN encoder")
    training = {
        "command": command_line(ctx),
        "derived_from": {"model": model, "model_id": card.model_id, "training": card.training},
        "how": "binary_variant(): the same network and centre; relaxed code = features - centre, bits by sign",
    }
    new = save_model(binary_variant(method), out, training=training, metrics={})
    typer.echo(f"saved {out} ({new.model_id}, {new.code_size}-bit codes from {card.model_id})")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.command("invariance")(invariance)
    app.command("gan-binary")(gan_binary)
