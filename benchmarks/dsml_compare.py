"""DSML: Euclidean vs SNR distance, same network, same data, same seeds; only ``distance=`` changes.

    python benchmarks/dsml_compare.py [--iterations 400] [--seeds 0] [--bits 16 32 64]
        [--quickdraw ../shared/data/quickdraw/raw] [--sketchy ../shared/data/sketchy/sketch]

Sketch-to-sketch category retrieval (same class = relevant) on two datasets:

* QuickDraw raw (300 classes, 11-114 drawings each): per class 20% of the drawings (at least 2) are
  queries, the rest the gallery;
* Sketchy sketches (100 classes x 25): per class, whole *photo groups* (every sketch drawn from one photo)
  are queries until at least 20% of the class is, so no query has a sketch of its own photo in the gallery.

The network trains on the gallery (labels known: classic category retrieval, not zero-shot); queries are
unseen drawings of the same classes. Splits are drawn with ``--split-seed`` (0) and saved to
``benchmarks/results/dsml_splits.json``; a re-run reuses that file.

Every row is ``create_method("dsml", distance=D, ...)`` with identical other arguments, trained by the one
training loop (``sketchsearch.train.train``) with the same seed and the same class-balanced batches
(16 classes x 4 drawings), then evaluated:

* float rows (128-d): searched by cosine on the L2-normalised embedding (what the shared ``Retriever``
  does for float methods; for the Euclidean-trained model this is exactly its training distance's order)
  and by the SNR distance (brute force, PML ``SNRDistance`` on the same normalised embeddings, which is what
  the SNR loss measured); MAP@R, P@1, mAP@all from ``sketchsearch.eval.metrics``, with PML's
  ``AccuracyCalculator`` MAP@R as a cross-check stored in the JSON;
* hashing rows: ``hashing=True`` at each ``--bits``, codes = sign of the relaxed code, Hamming ranking
  with ties by gallery position (the project's rule); mAP@all.

Writes ``benchmarks/results/dsml_compare.{json,md}`` after every row.
"""

from __future__ import annotations

import argparse
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

from sketchsearch.data.batching import RasterDataset
from sketchsearch.data.render import image_to_raster, rasterize
from sketchsearch.eval import metrics as M
from sketchsearch.losses.distances import get_distance, knn
from sketchsearch.methods.base import create_method
from sketchsearch.methods.dsml import ClassGroupDataset, collate_groups, load_labelled_drawings
from sketchsearch.train import TrainConfig, train

RASTER = 64
PER_CLASS = 4  # drawings of one class in a batch
CLASSES_PER_BATCH = 16  # -> batches of 64
QUERY_FRACTION = 0.2


# ---------------------------------------------------------------------------------------------- data + splits
def load_dataset(name: str, path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(rasters float32 (N, 64, 64), labels, ids) in reading order (sorted files)."""
    drawings, labels, ids = load_labelled_drawings(path)
    if name == "quickdraw":
        rasters = np.stack([rasterize(s, size=RASTER, line_width=1.5) for s in drawings])
    else:
        rasters = np.stack([image_to_raster(im, size=RASTER) for im in drawings])
    return rasters.astype(np.float32), labels, ids


def make_split(name: str, labels: list[str], ids: list[str], seed: int) -> list[int]:
    """Indices of the query drawings (the rest is the gallery)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_class[y].append(i)
    queries: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]
        want = max(2, round(QUERY_FRACTION * len(idx)))
        if name == "sketchy":  # whole photo groups: "<class>/<photo_id>-<k>"
            groups: dict[str, list[int]] = defaultdict(list)
            for i in idx:
                groups[ids[i].rsplit("-", 1)[0]].append(i)
            taken: list[int] = []
            for g in rng.permutation(sorted(groups)):
                if len(taken) >= want:
                    break
                taken += groups[str(g)]
            queries += taken
        else:
            queries += [idx[j] for j in rng.permutation(len(idx))[:want]]
    return sorted(queries)


def load_splits(datasets: dict[str, tuple[list[str], list[str]]], seed: int) -> dict[str, Any]:
    path = RESULTS / "dsml_splits.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("seed") == seed and all(
            saved["datasets"].get(k, {}).get("ids") == v[1] for k, v in datasets.items()
        ):
            return saved
    out = {"seed": seed, "query_fraction": QUERY_FRACTION, "datasets": {}}
    for name, (labels, ids) in datasets.items():
        q = make_split(name, labels, ids, seed)
        out["datasets"][name] = {"ids": ids, "query_ids": [ids[i] for i in q], "queries": q}
    write_atomic(path, json.dumps(out) + "\n")
    return out


# ---------------------------------------------------------------------------------------------- train + eval
def train_one(
    rasters: np.ndarray, labels: np.ndarray, seed: int, iterations: int, **kw: Any
) -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(seed)
    method = create_method("dsml", **kw)
    ds = ClassGroupDataset(RasterDataset(rasters, labels), labels.tolist(), m=PER_CLASS, seed=seed)
    cfg = TrainConfig(
        iterations=iterations,
        batch_size=CLASSES_PER_BATCH,
        lr=1e-3,
        seed=seed,
        device="cpu",
        progress=False,
        log_every=50,
    )
    res = train(method, ds, cfg, collate_fn=collate_groups)
    last = res.history[-1] if res.history else {}
    return method, {
        "train s": round(res.seconds, 1),
        "final loss": last.get("loss"),
        "mean_abs": last.get("mean_abs"),
    }


@torch.no_grad()
def encode(method: Any, rasters: np.ndarray, raw: bool = False) -> torch.Tensor:
    """Embeddings as the Retriever sees them (``encode_sketch``), or with ``raw`` what the loss saw (``embed``)."""
    method.eval()
    fn = method.embed if raw else method.encode_sketch
    out = [
        fn({"raster": torch.from_numpy(rasters[i : i + 512])[:, None]}) for i in range(0, len(rasters), 512)
    ]
    return torch.cat(out).float()


def scores(order: np.ndarray, g_lab: np.ndarray, q_lab: np.ndarray, full: bool = True) -> dict[str, float]:
    rel = M.relevance_from_labels(order, g_lab, q_lab)
    n_rel = M.n_relevant_from_labels(g_lab, q_lab)
    out = {"mAP@all": M.map_at_all(rel, n_rel)}
    if full:
        out |= {"MAP@R": M.map_at_r(rel, n_rel), "P@1": M.precision_at_k(rel, 1, n_rel)}
    return out


def pml_map_at_r(
    q: torch.Tensor, g: torch.Tensor, q_lab: np.ndarray, g_lab: np.ndarray, distance: str
) -> float:
    """PML's AccuracyCalculator on the same ranking (cross-check of eval.metrics)."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    def knn_func(query: torch.Tensor, k: int, reference: torch.Tensor, ref_includes_query: bool) -> Any:
        return knn(query, reference, k, distance)

    calc = AccuracyCalculator(include=("mean_average_precision_at_r",), k="max_bin_count", knn_func=knn_func)
    r = calc.get_accuracy(q, torch.from_numpy(q_lab), g, torch.from_numpy(g_lab), ref_includes_query=False)
    return float(r["mean_average_precision_at_r"])


def hamming_order(qz: torch.Tensor, gz: torch.Tensor) -> np.ndarray:
    qb, gb = torch.where(qz > 0, 1.0, -1.0), torch.where(gz > 0, 1.0, -1.0)
    ham = (qb.shape[1] - qb @ gb.T) / 2  # exact small integers in float32
    return torch.sort(ham, dim=1, stable=True).indices.numpy()


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quickdraw", type=Path, default=DATA_ROOT / "quickdraw" / "raw")
    ap.add_argument("--sketchy", type=Path, default=DATA_ROOT / "sketchy" / "sketch")
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
    ap.add_argument(
        "--render", type=Path, default=None, help="only re-write the markdown of this results JSON"
    )
    a = ap.parse_args(argv)
    if a.render:
        render(a.render)
        return 0
    torch.set_num_threads(1)
    hash_its = a.hash_iterations or a.iterations
    paths = {"quickdraw": a.quickdraw, "sketchy": a.sketchy}
    t0 = time.perf_counter()
    data: dict[str, tuple[np.ndarray, list[str], list[str]]] = {}
    for name in a.datasets:
        if not paths[name].exists():
            print(f"skip {name}: {paths[name]} is absent", file=sys.stderr)
            continue
        data[name] = load_dataset(name, paths[name])
        print(
            f"{name}: {len(data[name][0])} drawings, {len(set(data[name][1]))} classes ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    splits = load_splits({k: (v[1], v[2]) for k, v in data.items()}, a.split_seed)

    common = {
        "loss": "contrastive",
        "miner": "multi_similarity",
        "embedding_dim": 128,
        "encoder": "small_cnn",
        "width": 0.25,
    }
    payload: dict[str, Any] = {
        "title": "DSML: Euclidean vs SNR distance (sketch-to-sketch category retrieval)",
        "command": "python benchmarks/dsml_compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "protocol": {
            "iterations": a.iterations,
            "hash_iterations": hash_its,
            "batch": f"{CLASSES_PER_BATCH} classes x {PER_CLASS}",
            "lr": 1e-3,
            "optimizer": "Adam",
            "raster": RASTER,
            "seeds": a.seeds,
            "split_seed": a.split_seed,
            "query_fraction": QUERY_FRACTION,
            "method_kwargs": common,
            "normalize": a.normalize,
            "splits_file": "benchmarks/results/dsml_splits.json",
        },
        "datasets": {},
        "machine": machine_info(),
        "rows": [],
    }
    for name, (rasters, labels, _) in data.items():
        classes = sorted(set(labels))
        lab = np.array([classes.index(y) for y in labels], dtype=np.int64)
        qi = np.array(splits["datasets"][name]["queries"], dtype=np.int64)
        gi = np.setdiff1d(np.arange(len(lab)), qi)
        payload["datasets"][name] = {
            "drawings": len(lab),
            "classes": len(classes),
            "queries": len(qi),
            "gallery": len(gi),
        }
        for norm in a.normalize:
            kw = common | {"normalize": norm == "l2"}
            for seed in a.seeds:
                for dist in a.distances:
                    m, info = train_one(rasters[gi], lab[gi], seed, a.iterations, distance=dist, **kw)
                    raw = norm == "raw"
                    q, g = encode(m, rasters[qi], raw), encode(m, rasters[gi], raw)
                    for search in ("cosine", "snr") if norm == "l2" else ("euclidean", "cosine", "snr"):
                        # raw rows: measured on the raw embedding, as the loss did (PML would L2-normalise)
                        _, order = knn(q, g, None, get_distance(search, normalize=not raw))
                        row = {
                            "dataset": name,
                            "seed": seed,
                            "embedding": norm,
                            "trained with": dist,
                            "code": "float 128",
                            "searched by": search,
                        }
                        row |= scores(order.numpy(), lab[gi], lab[qi])
                        if search != "snr":  # cross-check of the metrics (SNR ranking is checked in tests)
                            row["PML MAP@R"] = pml_map_at_r(q, g, lab[qi], lab[gi], search)
                        row |= info
                        payload["rows"].append(row)
                        print(row, flush=True)
                    write(a.out, payload)
                for nbits in a.bits:
                    for dist in a.distances:
                        m, info = train_one(
                            rasters[gi],
                            lab[gi],
                            seed,
                            hash_its,
                            distance=dist,
                            hashing=True,
                            nbits=nbits,
                            **kw,
                        )
                        order = hamming_order(encode(m, rasters[qi]), encode(m, rasters[gi]))
                        row = {
                            "dataset": name,
                            "seed": seed,
                            "embedding": norm,
                            "trained with": dist,
                            "code": f"{nbits} bits",
                            "searched by": "hamming",
                        }
                        row |= scores(order, lab[gi], lab[qi], full=False)
                        row |= info
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
        "searched by",
        "MAP@R",
        "P@1",
        "mAP@all",
        "train s",
    ]
    p = payload["protocol"]
    ds = "; ".join(
        f"{k}: {v['classes']} classes, {v['queries']} queries / {v['gallery']} gallery"
        for k, v in payload["datasets"].items()
    )
    notes = (
        f"\nCommand: `{payload['command'].strip()}`"
        + (f" ({payload['seconds']} s in all)" if "seconds" in payload else " (running: rows so far)")
        + f".\n\nData: {ds}. Split seed {p['split_seed']} (saved: `{p['splits_file']}`), training seed(s) {p['seeds']}; "
        f"{p['iterations']} iterations (hashing {p['hash_iterations']}) of {p['batch']} rasters ({p['raster']} px), "
        f"Adam lr {p['lr']}; `dsml` kwargs {p['method_kwargs']}: only `distance` changes between paired rows. "
        "Margins: PML's contrastive defaults (pos 0, neg 1) for both distances; zero-mean regulariser weight 0.1 "
        "in both. Queries are unseen drawings of the training classes; the gallery is the training set.\n\n"
        "`embedding raw` = the paper's DSML: the loss sees the raw embedding (scale free, zero-mean regulariser); "
        "`l2` = PML's default, the loss sees L2-normalised embeddings, where on zero-mean vectors "
        "SNR = 2 - 2 cos, i.e. nearly the Euclidean loss. Float rows are searched on the embedding the loss saw: "
        "`cosine` = the shared Retriever's rule for float methods; `euclidean` / `snr` = brute-force PML "
        "distances (on l2 rows Euclidean ranking equals cosine ranking). Hashing: sign codes, Hamming ranking, "
        "ties by gallery position. MAP@R / P@1 / mAP@all from `sketchsearch.eval.metrics` (PML's "
        "AccuracyCalculator's MAP@R on the cosine rows is stored in the JSON as a cross-check).\n"
    )
    if payload.get("errata"):
        notes += "\n**Errata.** " + " ".join(payload["errata"]) + "\n"
    markdown = table_markdown(payload, cols, payload["title"]) + notes + seed_means(payload["rows"])
    write_results(stem, payload, markdown)


def seed_means(rows: list[dict[str, Any]]) -> str:
    """Mean (and spread) over training seeds, Euclidean next to SNR: the comparison the paper makes."""
    key_cols = ["dataset", "embedding", "code", "searched by"]
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["searched by"] not in ("cosine", "hamming"):  # the Retriever's own rule: one row per model
            continue
        groups[tuple(r[c] for c in key_cols)][r["trained with"]].append(r["mAP@all"])
    if not groups:
        return ""
    out = [
        "\n## mAP@all by training distance (searched as the Retriever does: cosine / Hamming)\n",
        "| dataset | embedding | code | euclidean | snr | snr - euclidean | seeds |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for key, by in groups.items():
        e, s = by.get("euclidean", []), by.get("snr", [])
        if not e or not s:
            continue
        fmt = lambda v: f"{np.mean(v):.4f}" + (f" ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else "")
        n = min(len(e), len(s))
        diff = [b - a for a, b in zip(e[:n], s[:n], strict=True)]
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {fmt(e)} | {fmt(s)} | {fmt(diff)} | {n} |")
    out += float_means(rows)
    return "\n".join(out) + "\n\n(± = standard deviation over training seeds, same split.)\n"


def float_means(rows: list[dict[str, Any]]) -> list[str]:
    """MAP@R, P@1 and mAP@all of the float rows (cosine, the Retriever's rule), seed means per training distance."""
    metrics = ["MAP@R", "P@1", "mAP@all"]
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["searched by"] == "cosine":
            for m in metrics:
                groups[(r["dataset"], r["embedding"], r["code"], r["trained with"])][m].append(r[m])
    if not groups:
        return []
    out = [
        "\n\n## Float embeddings: MAP@R, P@1, mAP@all by training distance (cosine search)\n",
        "| dataset | embedding | code | trained with | " + " | ".join(metrics) + " | seeds |",
        "|---|---|---|---|" + "---:|" * (len(metrics) + 1),
    ]
    for key, by in groups.items():
        cells = [
            f"{np.mean(by[m]):.4f}" + (f" ± {np.std(by[m], ddof=1):.4f}" if len(by[m]) > 1 else "")
            for m in metrics
        ]
        out.append(
            "| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + f" | {len(by[metrics[0]])} |"
        )
    return out


def render(json_path: Path) -> None:
    """Re-write the markdown of a finished run from its JSON."""
    write(json_path.with_suffix(""), json.loads(json_path.read_text()))


if __name__ == "__main__":
    raise SystemExit(main())
