"""DSML: Euclidean vs SNR distance, same network, same data, same seeds; only ``distance=`` changes.

    python benchmarks/dsml_compare.py [--iterations 400] [--seeds 0] [--bits 16 32 64]
        [--quickdraw ../shared/data/quickdraw/raw] [--sketchy ../shared/data/sketchy]

Sketch-to-sketch category retrieval (same class = relevant) on two data sets, read with
``data.sources.load_collection``:

* QuickDraw raw (300 classes, 11-114 drawings each);
* Sketchy's sketches (100 classes x 25; ``--sketchy`` is the Sketchy folder with ``sketch/`` and ``photo/``,
  whose photos are not used).

Each data set is split once by the DSML recipe's split (``class_holdout`` with the recipe's defaults:
20% of the classes unseen, for zero-shot; per seen class 10% queries, 30% gallery, the rest trains), drawn
with ``--split-seed`` (0) and saved beside the results (``<--out>_split_<data set>.json``); every row is
trained and scored on that file. (The split keeps no photo groups together: a Sketchy query may share its
photo with a training or gallery sketch.)

Every row is ``recipes.run_recipe("dsml", data, distance=D, ...)`` with identical other arguments (the
one training loop, the same seed, the same class-balanced batches of 16 classes x 4 drawings), scored by
``eval.evaluate`` on the split: ``main`` = the seen classes' held-out queries against their held-out gallery,
``zero-shot`` = the unseen classes' (the paper's protocol: test classes disjoint from the training ones).
Float rows (128-d) are searched as the shared ``Retriever`` does: cosine on the L2-normalised embedding;
hashing rows (``hashing=True`` at each ``--bits``): Hamming distance on the sign codes, ties by gallery
position.

Writes ``benchmarks/results/dsml_compare.{json,md}`` after every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_ROOT, RESULTS, machine_info, table_markdown, write_atomic, write_results

from sketchsearch.data.sources import load_collection
from sketchsearch.data.splits import make_split
from sketchsearch.recipes import get_recipe, run_recipe

PER_CLASS = 4  # drawings of one class in a batch
CLASSES_PER_BATCH = 16  # -> batches of 64
EVALUATIONS = {"main": "seen", "zero_shot": "zero-shot"}


def save_split(path: Path, file: Path, seed: int) -> dict[str, Any]:
    """Split the sketches of ``path`` with the DSML recipe's split and save it to ``file``; returns its sizes."""
    recipe = get_recipe("dsml")
    sketches = [it for it in load_collection(path) if it.modality == "sketch"]
    split = make_split(recipe.split, sketches, seed=seed, **recipe.split_defaults)
    dataclasses.replace(split, data=str(path)).save(file)
    return {"sketches": len(sketches), **split.summary()}


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quickdraw", type=Path, default=DATA_ROOT / "quickdraw" / "raw")
    ap.add_argument("--sketchy", type=Path, default=DATA_ROOT / "sketchy")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--hash-iterations", type=int, default=None, help="default: --iterations")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--distances", nargs="+", default=["euclidean", "snr"])
    ap.add_argument("--datasets", nargs="+", default=["quickdraw", "sketchy"])
    ap.add_argument(
        "--normalize",
        nargs="+",
        choices=["raw", "l2"],
        default=["raw", "l2"],
        help="embeddings the loss sees: raw (the paper's DSML: scale left free, zero-mean regulariser) "
        "and/or l2 (PML's default; then SNR = 2 - 2 cos on zero-mean vectors, nearly the Euclidean loss)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "dsml_compare")
    ap.add_argument("--render", type=Path, default=None, help="only re-write the markdown of this results JSON")
    a = ap.parse_args(argv)
    if a.render:
        render(a.render)
        return 0
    torch.set_num_threads(1)
    hash_its = a.hash_iterations or a.iterations
    paths = {"quickdraw": a.quickdraw, "sketchy": a.sketchy}
    t0 = time.perf_counter()
    splits: dict[str, Path] = {}
    datasets: dict[str, Any] = {}
    for name in a.datasets:
        if not paths[name].exists():
            print(f"skip {name}: {paths[name]} is absent", file=sys.stderr)
            continue
        splits[name] = a.out.with_name(f"{a.out.name}_split_{name}.json")
        datasets[name] = save_split(paths[name], splits[name], a.split_seed)
        print(f"{name}: {datasets[name]} ({time.perf_counter() - t0:.0f}s)", flush=True)

    common = {
        "loss": "contrastive",
        "miner": "multi_similarity",
        "embedding_dim": 128,
        "encoder": "small_cnn",
        "width": 0.25,
    }
    recipe = get_recipe("dsml")
    payload: dict[str, Any] = {
        "title": "DSML: Euclidean vs SNR distance (sketch-to-sketch category retrieval)",
        "command": "python benchmarks/dsml_compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "protocol": {
            "iterations": a.iterations,
            "hash_iterations": hash_its,
            "batch": f"{CLASSES_PER_BATCH} classes x {PER_CLASS}",
            "lr": 1e-3,
            "optimizer": "Adam",
            "seeds": a.seeds,
            "split_seed": a.split_seed,
            "split": {"kind": recipe.split, **recipe.split_defaults},
            "method_kwargs": common,
            "normalize": a.normalize,
            "split_files": {k: v.name for k, v in splits.items()},
        },
        "datasets": datasets,
        "machine": machine_info(),
        "rows": [],
    }
    for name, split_file in splits.items():
        for norm in a.normalize:
            kw = common | {"normalize": norm == "l2"}
            for seed in a.seeds:
                codes = [(False, None, a.iterations)] + [(True, b, hash_its) for b in a.bits]
                for hashing, nbits, its in codes:
                    for dist in a.distances:
                        bits = {"hashing": True, "nbits": nbits} if hashing else {}
                        res = run_recipe(
                            "dsml",
                            str(paths[name]),
                            seed=seed,
                            device="cpu",
                            iterations=its,
                            batch_size=CLASSES_PER_BATCH * PER_CLASS,
                            lr=1e-3,
                            split_file=split_file,
                            progress=False,
                            per_class=PER_CLASS,
                            distance=dist,
                            **bits,
                            **kw,
                        )
                        last = res.training["last"]
                        for ev, label in EVALUATIONS.items():
                            m = res.metrics.get(ev)
                            if m is None:
                                continue
                            row = {
                                "dataset": name,
                                "seed": seed,
                                "embedding": norm,
                                "trained with": dist,
                                "code": f"{nbits} bits" if hashing else f"float {common['embedding_dim']}",
                                "searched by": "hamming" if hashing else "cosine",
                                "evaluation": label,
                                "MAP@R": m["MAP@R"],
                                "P@1": m["P@1"],
                                "mAP@all": m["mAP@all"],
                                "queries": m["n_queries"],
                                "gallery": m["n_gallery"],
                                "train s": res.training["seconds"],
                                "final loss": last.get("loss"),
                                "mean_abs": last.get("mean_abs"),
                            }
                            payload["rows"].append(row)
                            print(row, flush=True)
                        write(a.out, payload)
    payload["seconds"] = round(time.perf_counter() - t0, 1)
    write(a.out, payload)
    print(f"done in {payload['seconds']}s -> {a.out}.{{json,md}}")
    return 0


def write(stem: Path, payload: dict[str, Any]) -> None:
    cols = [
        "dataset",
        "seed",
        "embedding",
        "trained with",
        "code",
        "evaluation",
        "MAP@R",
        "P@1",
        "mAP@all",
        "train s",
    ]
    write_results(stem, payload, table_markdown(payload, cols, payload["title"]))
    p = payload["protocol"]
    ds = "; ".join(
        f"{k}: {v['seen_classes']} seen classes ({v['train']} train, {v['query']} queries / {v['gallery']} gallery), "
        f"{v['unseen_classes']} unseen ({v['unseen_query']} queries / {v['unseen_gallery']} gallery)"
        for k, v in payload["datasets"].items()
    )
    notes = (
        f"\nCommand: `{payload['command'].strip()}`"
        + (f" ({payload['seconds']} s in all)" if "seconds" in payload else " (running: rows so far)")
        + f".\n\nData: {ds}. Split: {p['split']}, seed {p['split_seed']} (saved: {p['split_files']}); training "
        f"seed(s) {p['seeds']}; {p['iterations']} iterations (hashing {p['hash_iterations']}) of {p['batch']} "
        f"drawings (64 px rasters), Adam lr {p['lr']}; `dsml` kwargs {p['method_kwargs']}: only `distance` "
        "changes between paired rows. Margins: PML's contrastive defaults (pos 0, neg 1) for both distances; "
        "zero-mean regulariser weight 0.1 in both. `seen`: the training classes' held-out queries against their "
        "held-out gallery; `zero-shot`: the unseen classes' queries against their gallery.\n\n"
        "`embedding raw` = the paper's DSML: the loss sees the raw embedding (scale free, zero-mean regulariser); "
        "`l2` = PML's default, the loss sees L2-normalised embeddings, where on zero-mean vectors "
        "SNR = 2 - 2 cos, i.e. nearly the Euclidean loss. Every row is searched as the shared Retriever does: "
        "float embeddings by cosine, hashing by Hamming distance on sign codes, ties by gallery position. "
        "MAP@R / P@1 / mAP@all from `sketchsearch.eval.evaluate`.\n"
    )
    if payload.get("errata"):
        notes += "\n**Errata.** " + " ".join(payload["errata"]) + "\n"
    md = stem.with_suffix(".md")
    write_atomic(md, md.read_text() + notes + seed_means(payload["rows"]))


def seed_means(rows: list[dict[str, Any]]) -> str:
    """Mean (and spread) over training seeds, Euclidean next to SNR: the comparison the paper makes."""
    key_cols = ["dataset", "embedding", "code", "evaluation"]
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[tuple(r[c] for c in key_cols)][r["trained with"]].append(r["mAP@all"])
    if not groups:
        return ""
    out = [
        "\n## mAP@all by training distance (searched as the Retriever does: cosine / Hamming)\n",
        "| dataset | embedding | code | evaluation | euclidean | snr | snr - euclidean | seeds |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for key, by in groups.items():
        e, s = by.get("euclidean", []), by.get("snr", [])
        if not e or not s:
            continue
        n = min(len(e), len(s))
        diff = [b - a for a, b in zip(e[:n], s[:n], strict=True)]
        out.append(f"| {' | '.join(map(str, key))} | {_mean(e)} | {_mean(s)} | {_mean(diff)} | {n} |")
    out += float_means(rows)
    return "\n".join(out) + "\n\n(± = standard deviation over training seeds, same split.)\n"


def _mean(v: list[float]) -> str:
    return f"{np.mean(v):.4f}" + (f" ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else "")


def float_means(rows: list[dict[str, Any]]) -> list[str]:
    """MAP@R, P@1 and mAP@all of the float rows (cosine, the Retriever's rule), seed means per training distance."""
    metrics = ["MAP@R", "P@1", "mAP@all"]
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["searched by"] == "cosine":
            for m in metrics:
                groups[(r["dataset"], r["embedding"], r["code"], r["evaluation"], r["trained with"])][m].append(r[m])
    if not groups:
        return []
    out = [
        "\n\n## Float embeddings: MAP@R, P@1, mAP@all by training distance (cosine search)\n",
        "| dataset | embedding | code | evaluation | trained with | " + " | ".join(metrics) + " | seeds |",
        "|---|---|---|---|---|" + "---:|" * (len(metrics) + 1),
    ]
    for key, by in groups.items():
        cells = [_mean(by[m]) for m in metrics]
        out.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + f" | {len(by[metrics[0]])} |")
    return out


def render(json_path: Path) -> None:
    """Re-write the markdown of a finished run from its JSON."""
    write(json_path.with_suffix(""), json.loads(json_path.read_text()))


if __name__ == "__main__":
    raise SystemExit(main())
