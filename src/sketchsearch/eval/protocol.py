"""The retrieval protocol: split a labelled set, encode, index, search, score; and the benchmark runner.

* :func:`load_labelled` reads any dataset ``read_any`` knows into drawings + labels (unlabelled and empty
  records are skipped and counted);
* :func:`category_split` is the standard split for category retrieval: per class ``queries_per_class``
  queries, the rest gallery, seeded per class (adding or removing a class leaves the other classes' splits
  unchanged); :func:`save_split` / :func:`load_split` keep it in a JSON file of item ids. (Written here
  because ``data/collection.py``'s ``make_splits`` does not exist yet; it can replace this one when it does.)
* :func:`evaluate_retrieval` scores one retriever (or method, or model path) on gallery + queries, or
  leave-one-out on one set (Omniglot protocol: each item queries the rest);
* :func:`run_benchmark` runs a table of rows (methods x code lengths) on one dataset split and writes JSON and
  a markdown table atomically; :func:`evaluate_baseline` is the one-row call behind
  ``sketchsearch evaluate --method itq --bits 64 --data PATH``.

Search goes through :class:`~sketchsearch.retrieval.Retriever`, the path the CLI and the service use.
``Retriever.search_many(q, k)`` is ``search_encoded(encode(q), k)``; the protocol calls the two halves itself
so that encoding and searching are timed apart (``encode_per_s``, ``ms_per_query``); the results are the
same (``tests/test_protocol.py`` checks it). Rankings are complete (``k`` = gallery size) so that mAP@all
and MAP@R are exact; ties in distance are broken by id, ascending, by the index, and gallery ids are the
gallery positions, so every figure is deterministic.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._io import atomic_write_text
from ..errors import FormatError, ModelError
from .metrics import (
    acc_at_k,
    map_at_all,
    map_at_k,
    map_at_r,
    n_relevant_from_labels,
    precision_at_k,
    relevance_from_labels,
)

__all__ = [
    "DEFAULT_KS",
    "LabelledSet",
    "Split",
    "category_split",
    "evaluate_baseline",
    "evaluate_retrieval",
    "load_labelled",
    "load_split",
    "markdown_table",
    "run_benchmark",
    "save_split",
]

#: cut-offs reported by default: acc@1 (nearest neighbour), @10, P@100 (baseline tables), @200 (DSH / GDH)
DEFAULT_KS: tuple[int, ...] = (1, 10, 100, 200)
SPLIT_FORMAT = 1


# ---------------------------------------------------------------------------------------------- data
@dataclass
class LabelledSet:
    """Drawings (``Sketch``, or the raster / image array for bitmap formats) with their labels and ids."""

    items: list[Any]
    labels: list[str]
    ids: list[str]
    path: str
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


def load_labelled(
    path: str | Path, *, fmt: str | None = None, limit: int | None = None, strict: bool = False
) -> LabelledSet:
    """Read every labelled drawing of ``path`` (any format ``sketchsearch.data.formats.read_any`` knows).

    Bad records are skipped and counted (``strict=True`` raises instead, as the readers do); items without a
    label or without content (no strokes and no image) are skipped and counted too. Raises FormatError when
    nothing usable is left.
    """
    from ..data.sources import item_query, load_items

    res = load_items(path, fmt=fmt, strict=strict, limit=limit)
    ds = LabelledSet(items=[], labels=[], ids=[], path=str(path), skipped=res.skipped)
    errors = [str(e) for e in res.errors[:20]]
    for it in res.items:
        has_content = (it.sketch is not None and not it.sketch.is_empty) or it.image is not None
        if it.label is None or not has_content:
            ds.skipped += 1
            continue
        # strokes, or the image as PIL (ink polarity decided from its border, see data.sources.item_query)
        ds.items.append(item_query(it))
        ds.labels.append(str(it.label))
        ds.ids.append(str(it.id))
    ds.errors = errors
    if not ds.items:
        raise FormatError(path, None, f"no labelled drawings found ({ds.skipped} records skipped)")
    return ds


@dataclass(frozen=True)
class Split:
    """Indices (int64, ascending) into a :class:`LabelledSet`: ``query`` and ``gallery`` (disjoint)."""

    query: np.ndarray
    gallery: np.ndarray
    seed: int
    queries_per_class: int

    def describe(self) -> dict[str, Any]:
        return {"kind": "category", "queries_per_class": self.queries_per_class, "seed": self.seed,
                "n_query": len(self.query), "n_gallery": len(self.gallery)}  # fmt: skip


def category_split(labels: Sequence[str], queries_per_class: int = 10, seed: int = 0) -> Split:
    """Per class, ``queries_per_class`` random queries and the rest gallery.

    Seeded per class (``default_rng([seed, crc32(label)])`` permutes that class's items in input order), so a
    class's split does not depend on the other classes. A class with ``n <= queries_per_class`` items gives
    ``n - 1`` queries, keeping one relevant item in the gallery (a class of one item is gallery only).
    """
    if queries_per_class < 1:
        raise ValueError(f"queries_per_class must be >= 1, got {queries_per_class}")
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(str(lab), []).append(i)
    query: list[int] = []
    for lab in sorted(by_class):
        idx = np.asarray(by_class[lab])
        rng = np.random.default_rng([seed, zlib.crc32(lab.encode("utf-8"))])
        take = min(queries_per_class, len(idx) - 1)
        query.extend(idx[rng.permutation(len(idx))[:take]].tolist())
    q = np.sort(np.asarray(query, dtype=np.int64))
    g = np.setdiff1d(np.arange(len(labels), dtype=np.int64), q)
    return Split(query=q, gallery=g, seed=seed, queries_per_class=queries_per_class)


def save_split(split: Split, path: str | Path, ids: Sequence[str], dataset: str | None = None) -> None:
    """Write the split as item ids (JSON, atomically), so it survives re-reading the data in another order."""
    doc = {"format": SPLIT_FORMAT, **split.describe(), "dataset": dataset,
           "query": [ids[i] for i in split.query], "gallery": [ids[i] for i in split.gallery]}  # fmt: skip
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def load_split(path: str | Path, ids: Sequence[str]) -> Split:
    """Read a split written by :func:`save_split` against the item ids of the loaded data."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        pos = {x: i for i, x in enumerate(ids)}
        q = np.sort(np.asarray([pos[x] for x in doc["query"]], dtype=np.int64))
        g = np.sort(np.asarray([pos[x] for x in doc["gallery"]], dtype=np.int64))
        return Split(
            query=q, gallery=g, seed=int(doc["seed"]), queries_per_class=int(doc["queries_per_class"])
        )
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise FormatError(path, None, f"not a split file ({e})") from None
    except KeyError as e:
        raise FormatError(path, None, f"split names item or field {e} that the data does not have") from None


# ---------------------------------------------------------------------------------------------- evaluation
def _as_retriever(obj: Any) -> Any:
    from ..methods.base import Method
    from ..retrieval import Retriever

    if isinstance(obj, Method):
        return Retriever(obj)
    if isinstance(obj, (str, Path)):
        return Retriever.from_model(obj)
    if all(hasattr(obj, a) for a in ("encode", "add", "search_encoded")):
        if len(obj) != 0:
            raise ValueError(
                f"evaluate_retrieval needs an empty retriever (it adds the gallery itself); this one holds {len(obj)} items"
            )
        return obj
    raise TypeError(f"expected a Retriever, a Method or a model path, got {type(obj).__name__}")


def evaluate_retrieval(
    retriever_or_method: Any,
    gallery: Sequence[Any],
    gallery_labels: Sequence[Any],
    queries: Sequence[Any] | None = None,
    query_labels: Sequence[Any] | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    leave_one_out: bool = False,
    *,
    modality: str = "sketch",
    query_modality: str | None = None,
    chunk: int = 512,
) -> dict[str, Any]:
    """Score category retrieval: same label = relevant.

    ``retriever_or_method``: an *empty* ``Retriever``, a ``Method`` (a fresh in-memory index is made) or a
    model path/name. The gallery gets ids ``0..n-1`` (its positions). ``leave_one_out``: leave ``queries``
    unset; every gallery item queries the gallery, its own entry removed from its ranking.

    Returns floats ``mAP@all``, ``MAP@R``, and per k in ``ks``: ``mAP@k`` (normalised by #relevant),
    ``mAP@k_min`` (by min(k, #relevant)), ``P@k``, ``acc@k``; ints ``n_queries`` (all queries),
    ``n_excluded`` (queries without any relevant item, left out of every mean), ``n_gallery``;
    ``mean_relevant`` (mean #relevant of the counted queries: P@k cannot exceed min(R, k) / k); timings
    ``ms_per_query`` (search only, per query) and ``encode_per_s`` (drawings encoded per second, gallery and
    queries, rendering included).
    """
    ks = tuple(int(k) for k in ks)
    if leave_one_out:
        if queries is not None or query_labels is not None:
            raise ValueError(
                "leave_one_out queries the gallery with itself: leave queries and query_labels unset"
            )
    elif queries is None or query_labels is None:
        raise ValueError("give queries and query_labels, or set leave_one_out=True")
    n_g = len(gallery)
    if n_g == 0:
        raise ValueError("the gallery is empty")
    if len(gallery_labels) != n_g:
        raise ValueError(f"{len(gallery_labels)} gallery labels for {n_g} gallery items")
    if not leave_one_out:
        assert queries is not None and query_labels is not None
        if len(queries) == 0:
            raise ValueError("no queries")
        if len(query_labels) != len(queries):
            raise ValueError(f"{len(query_labels)} query labels for {len(queries)} queries")
    r = _as_retriever(retriever_or_method)

    t0 = time.perf_counter()
    g_codes = r.encode(gallery, modality)
    n_encoded = n_g
    if leave_one_out:
        q_codes, q_labels = g_codes, list(gallery_labels)
    else:
        q_codes, q_labels = r.encode(queries, query_modality or modality), list(query_labels)  # type: ignore[arg-type]
        n_encoded += len(q_codes)
    t_encode = time.perf_counter() - t0
    g_labels = list(gallery_labels)
    r.add(
        gallery,
        ids=np.arange(n_g, dtype=np.int64),
        labels=[None if x is None else str(x) for x in g_labels],
        encoded=g_codes,
    )

    n_q = len(q_codes)
    n_rel_all = n_relevant_from_labels(g_labels, q_labels, leave_one_out=leave_one_out)
    metric_fns: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "mAP@all": map_at_all,
        "MAP@R": map_at_r,
    }
    for k in ks:
        metric_fns[f"mAP@{k}"] = lambda rel, n, k=k: map_at_k(rel, k, n, norm="relevant")
        metric_fns[f"mAP@{k}_min"] = lambda rel, n, k=k: map_at_k(rel, k, n, norm="min")
        metric_fns[f"P@{k}"] = lambda rel, n, k=k: precision_at_k(rel, k, n)
        metric_fns[f"acc@{k}"] = lambda rel, n, k=k: acc_at_k(rel, k, n)
    sums = dict.fromkeys(metric_fns, 0.0)
    r.search_encoded(
        q_codes[:1], 1
    )  # untimed warm-up: a backend may compile its kernels on first use (numba)
    t_search = 0.0
    for s in range(0, n_q, chunk):
        e = min(s + chunk, n_q)
        t1 = time.perf_counter()
        _, ids = r.search_encoded(q_codes[s:e], n_g)
        t_search += time.perf_counter() - t1
        ids = np.asarray(ids, dtype=np.int64)
        if leave_one_out:
            own = np.arange(s, e)[:, None]
            keep = ids != own
            if not (keep.sum(axis=1) == n_g - 1).all():
                raise RuntimeError(
                    "leave-one-out: a query's own item is missing from (or repeated in) its full ranking"
                )
            ids = ids[keep].reshape(e - s, n_g - 1)
        rel = relevance_from_labels(ids, g_labels, q_labels[s:e])
        n_rel = n_rel_all[s:e]
        n_valid = int((n_rel > 0).sum())
        if n_valid:
            for name, fn in metric_fns.items():
                sums[name] += fn(rel, n_rel) * n_valid
    n_valid_all = int((n_rel_all > 0).sum())
    out: dict[str, Any] = {
        name: (v / n_valid_all if n_valid_all else float("nan")) for name, v in sums.items()
    }
    method = getattr(r, "method", None)
    out.update(
        {
            "n_queries": int(n_q),
            "n_excluded": int(n_q - n_valid_all),
            "n_gallery": int(n_g),
            "mean_relevant": float(n_rel_all[n_rel_all > 0].mean()) if n_valid_all else 0.0,
            "leave_one_out": bool(leave_one_out),
            "ks": list(ks),
            "ms_per_query": 1000.0 * t_search / max(n_q, 1),
            "encode_per_s": n_encoded / t_encode if t_encode > 0 else float("inf"),
            "method": getattr(method, "name", None),
            "output": getattr(method, "output", None),
            "code_size": int(method.code_size) if method is not None else None,
            "model_id": getattr(r, "model_id", None),
        }
    )
    return out


# ---------------------------------------------------------------------------------------------- benchmark
_DATA_CACHE: dict[tuple[str, str | None, int | None], LabelledSet] = {}


def _dataset(spec: str | Path | Mapping[str, Any]) -> tuple[LabelledSet, dict[str, Any]]:
    d = {"path": str(spec)} if isinstance(spec, (str, Path)) else dict(spec)
    key = (str(Path(d["path"]).resolve()), d.get("fmt"), d.get("limit"))
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_labelled(d["path"], fmt=d.get("fmt"), limit=d.get("limit"))
    ds = _DATA_CACHE[key]
    desc = {**d, "n_items": len(ds), "n_classes": len(set(ds.labels)), "skipped": ds.skipped}
    return ds, desc


def _split(ds: LabelledSet, spec: Mapping[str, Any] | None) -> Split:
    spec = dict(spec or {})
    qpc, seed, file = int(spec.get("queries_per_class", 10)), int(spec.get("seed", 0)), spec.get("file")
    if file and Path(file).is_file():
        split = load_split(file, ds.ids)
        if (split.seed, split.queries_per_class) != (seed, qpc):
            raise ValueError(f"{file}: split made with seed={split.seed}, queries_per_class={split.queries_per_class}; "
                             f"asked for seed={seed}, queries_per_class={qpc}")  # fmt: skip
        return split
    split = category_split(ds.labels, queries_per_class=qpc, seed=seed)
    if file:
        save_split(split, file, ds.ids, dataset=ds.path)
    return split


def _rendered(items: Sequence[Any], pre: Any, cache: dict[tuple[Any, ...], np.ndarray]) -> Sequence[Any]:
    """Raster-only methods: render each drawing once per (size, line width) and hand rasters to the retriever
    (``make_batch`` passes a raster of the right size through unchanged, so the results are identical)."""
    if tuple(pre.inputs) != ("raster",):
        return items
    key = (id(items), pre.raster_size, pre.line_width)
    if key not in cache:
        from ..data.batching import make_example

        cache[key] = np.stack([make_example(x, pre)["raster"] for x in items])
    return cache[key]  # type: ignore[return-value]


def _build(row: Mapping[str, Any]) -> tuple[Any, bool, Any]:
    """A row -> (method, whether it must be fitted on the gallery, the model card or None)."""
    if row.get("model"):
        from ..model import load_model

        method, card = load_model(row["model"])
        return method, False, card
    from ..methods.base import create_method

    method = create_method(row["method"], **dict(row.get("kwargs", {})))
    if not method.closed_form:
        raise ModelError(
            f"row {row.get('label')!r}: method {row['method']!r} needs training; give a trained 'model' path"
        )
    return method, True, None


def run_benchmark(
    rows: Sequence[Mapping[str, Any]],
    dataset: str | Path | Mapping[str, Any],
    split: Mapping[str, Any] | None = None,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    json_path: str | Path | None = None,
    md_path: str | Path | None = None,
    columns: Sequence[str] = ("mAP@all", "P@100"),
    title: str = "Retrieval benchmark",
    notes: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every row on one dataset split; write JSON and a markdown table (atomically) when paths are given.

    ``rows``: dicts with ``label`` and either ``method`` (+ ``kwargs``; closed-form methods are fitted on the
    gallery part) or ``model`` (a trained artifact). ``dataset``: a path, or ``{"path", "fmt", "limit"}``.
    ``split``: ``{"queries_per_class": 10, "seed": 0, "file": optional split JSON (loaded if present, else
    written)}``. ``meta`` (e.g. the command line, the machine) is stored as is. Returns ``{"title", "dataset",
    "split", "rows": [{label, ..., metrics}], "environment", "meta", ...}``.
    """
    ks = tuple(ks)
    ds, ds_desc = _dataset(dataset)
    sp = _split(ds, split)
    gallery = [ds.items[i] for i in sp.gallery]
    queries = [ds.items[i] for i in sp.query]
    g_labels = [ds.labels[i] for i in sp.gallery]
    q_labels = [ds.labels[i] for i in sp.query]
    cache: dict[tuple[Any, ...], np.ndarray] = {}
    results = []
    for row in rows:
        if "label" not in row or not ({"method", "model"} & set(row)):
            raise ValueError(f"a benchmark row needs 'label' and 'method' or 'model', got {dict(row)}")
        method, fit, card = _build(row)
        g_items = _rendered(gallery, method.preprocessing, cache)
        q_items = _rendered(queries, method.preprocessing, cache)
        fit_info: dict[str, Any] = {}
        if fit:
            method.fit(g_items)
            fit_info = dict(getattr(method, "fit_info", {}))
        res = evaluate_retrieval(method, g_items, g_labels, q_items, q_labels, ks=ks)
        entry = {"label": row["label"], "method": row.get("method", res["method"]), "model": row.get("model"),
                 "kwargs": dict(row.get("kwargs", {})), "trained_on": "gallery" if fit else row.get("trained_on"),
                 "fit": fit_info, **res}  # fmt: skip
        if card is not None:  # a trained artifact: say which one, and what it was trained on
            entry["model_id"] = card.model_id
            training = card.training if isinstance(card.training, dict) else {}
            entry["trained_on"] = row.get("trained_on") or training.get("data")
        if g_items is not gallery:  # raster cache: encode_per_s then excludes rendering
            entry["encode_per_s_note"] = "drawings rendered once beforehand; encode_per_s excludes rendering"
        results.append(entry)
        if progress:
            progress(f"{row['label']}: " + ", ".join(f"{c} {res.get(c, float('nan')):.4f}" for c in columns))
    doc = {
        "title": title,
        "dataset": ds_desc,
        "split": sp.describe(),
        "ks": list(ks),
        "notes": list(notes),
        "meta": dict(meta or {}),
        "rows": results,
        "environment": {"sketchsearch": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
                        "numpy": np.__version__, "platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    if json_path:
        atomic_write_text(json_path, json.dumps(doc, indent=2, default=_json_default) + "\n")
    if md_path:
        atomic_write_text(md_path, markdown_table(doc, columns))
    return doc


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def markdown_table(doc: Mapping[str, Any], columns: Sequence[str] = ("mAP@all", "P@100")) -> str:
    """A results document (from :func:`run_benchmark`) -> markdown: title, data + split line, one table row
    per result (label, code size, the chosen metric columns, search ms/query), then the notes."""
    ds, sp = doc["dataset"], doc["split"]
    lines = [f"# {doc['title']}", "",
             (f"Data: `{ds['path']}` ({ds['n_items']} drawings, {ds['n_classes']} classes, {ds['skipped']} skipped). "
              f"Split: {sp['queries_per_class']} queries per class, the rest gallery, seed {sp['seed']} "
              f"({sp['n_query']} queries, {sp['n_gallery']} gallery)."), "",
             "| method | bits/dim | " + " | ".join(columns) + " | search ms/query |",
             "|---|---:|" + "---:|" * len(columns) + "---:|"]  # fmt: skip
    for r in doc["rows"]:
        vals = " | ".join(
            f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns
        )
        lines.append(f"| {r['label']} | {r['code_size']} | {vals} | {r['ms_per_query']:.3f} |")
    if doc.get("notes"):
        lines += [""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def evaluate_baseline(
    method: str,
    bits: int,
    data_path: str | Path,
    split_seed: int = 0,
    queries_per_class: int = 10,
    ks: Iterable[int] = DEFAULT_KS,
    seed: int = 0,
) -> dict[str, Any]:
    """One closed-form baseline (``itq``, ``lsh``; ``pca`` with ``bits`` as its dimension) fitted on the gallery
    of the standard category split of ``data_path`` and evaluated on its queries. Returns the result row
    (``mAP@all``, ``P@100``, ...); this is what ``sketchsearch evaluate --method M --bits B --data PATH`` runs."""
    kwargs: dict[str, Any] = {"dim": bits} if method == "pca" else {"nbits": bits, "seed": seed}
    doc = run_benchmark(
        [{"label": f"{method} {bits}", "method": method, "kwargs": kwargs}],
        data_path,
        {"queries_per_class": queries_per_class, "seed": split_seed},
        ks=ks,
    )
    row = dict(doc["rows"][0])
    row["dataset"], row["split"] = doc["dataset"], doc["split"]
    return row
