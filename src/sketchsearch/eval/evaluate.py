"""The one evaluation: any Retriever on any split, with every metric the papers report.

* :func:`score` is the engine: encode a gallery and queries through the Retriever (each item with its own
  modality, so sketch queries meet a photo gallery through the photo branch), add the gallery, search every
  query over the whole gallery and score the ranking: ``mAP@all``, ``MAP@R``, ``mean_rank`` (of the first
  relevant item), and per k ``mAP@k`` (normalised by #relevant), ``mAP@k_min`` (by min(k, #relevant)),
  ``P@k``, ``acc@k``; ``ms_per_query`` (search only) and ``encode_per_s`` (rendering included). Relevance is
  key equality: the class label for category retrieval, the instance (``label``, ``pair``) for fine-grained
  retrieval. ``leave_one_out``: each gallery item queries the others (the sketch-GAN protocol). On request it
  also returns the mean interpolated precision-recall curve (``pr_points``) and each query's top hits with
  their relevance (``top``), and reports its progress (``progress(what, done, total)``: encoding, then
  searching).
* :func:`evaluate` scores a Retriever on a collection and a :class:`~sketchsearch.data.splits.Split`: each
  evaluation the split holds (``main``: query vs gallery; ``zero_shot``: the unseen classes').
* :func:`score_pages` scores search *inside pages* (a :class:`~sketchsearch.pages.PageIndex`): a hit is
  relevant when its box overlaps (IoU >= ``iou``) a true box of the query's key on its page, each true box
  counted once; ``recall@k`` (the share of a query's true boxes found), ``acc@k``, ``P@k``, ``mAP@k``,
  ``mean_rank`` from the same metric functions, and ``ms_per_query`` (search, suppression included).
* :func:`evaluate_rows` scores a table of rows (trained models, closed-form baselines) on one split: a
  baseline is fitted on that split's ``train`` part (or, without one, on its gallery without labels).

Search goes through :class:`~sketchsearch.retrieval.Retriever`, the path the CLI and the service use; its
``search_many(q, k)`` is ``search_encoded(encode(q), k)``, and the two halves are called apart here only to
time them apart. Rankings are complete (``k`` = gallery size) so that mAP@all and MAP@R are exact; ties in
distance are broken by id, and gallery ids are gallery positions, so every figure is deterministic.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import __version__
from .._io import atomic_write_text
from ..data.batching import item_input
from ..data.collection import Collection
from ..data.formats.base import Item
from ..data.splits import Split
from ..errors import ModelError
from ..methods.base import Method, create_method
from ..retrieval import Retriever
from .metrics import (
    acc_at_k,
    map_at_all,
    map_at_k,
    map_at_r,
    mean_rank,
    n_relevant_from_labels,
    precision_at_k,
    recall_at_k,
    relevance_from_labels,
)

if TYPE_CHECKING:
    from ..pages.index import PageIndex

__all__ = [
    "DEFAULT_KS",
    "PROTOCOLS",
    "Progress",
    "Row",
    "evaluate",
    "evaluate_rows",
    "interpolated_precision",
    "markdown_table",
    "score",
    "score_pages",
]

#: cut-offs reported by default: acc@1 (nearest neighbour), @10, P@100 (baseline tables), @200 (DSH / GDH)
DEFAULT_KS: tuple[int, ...] = (1, 10, 100, 200)
#: relevance rules: same class; same instance (a sketch and the photo it was drawn from); same class, each
#: item querying all the others
PROTOCOLS = ("category", "instance", "leave-one-out")
#: ``progress(what, done, total)``: ``done`` of ``total`` units of the step ``what`` ("encoding") are done
Progress = Callable[[str, int, int], None]


def _retriever(obj: Retriever | Method) -> Retriever:
    if isinstance(obj, Method):
        return Retriever(obj)
    if isinstance(obj, Retriever):
        if len(obj) != 0:
            raise ValueError(
                f"evaluation needs an empty retriever (it adds the gallery itself); this one holds {len(obj)}"
            )
        return obj
    raise TypeError(f"expected a Retriever or a Method, got {type(obj).__name__}")


def _encode(
    r: Retriever, inputs: Sequence[Any], modalities: Sequence[str], advance: Callable[[int], None]
) -> np.ndarray:
    """Encode ``inputs``, each through its modality's branch, in input order; ``advance(n)`` after each of the
    Retriever's batches (the same batches it makes itself, so the codes are those of one call)."""
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(modalities):
        groups.setdefault(m, []).append(i)
    out: np.ndarray | None = None
    for m, idx in groups.items():
        for s in range(0, len(idx), r.batch_size):
            part = idx[s : s + r.batch_size]
            codes = r.encode([inputs[i] for i in part], m)
            if out is None:
                out = np.zeros((len(inputs), *codes.shape[1:]), dtype=codes.dtype)
            out[part] = codes
            advance(len(part))
    assert out is not None
    return out


def interpolated_precision(rel: np.ndarray, n_relevant: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Interpolated precision at recall ``levels`` (in [0, 1]) per query: the best precision at any rank whose
    recall reaches the level. ``rel``: bool (nq, n) ranked relevance; ``n_relevant``: (nq,) relevant items in
    all (> 0), all of them in the ranking. Returns (nq, len(levels)); level 0: the best precision anywhere."""
    out = np.zeros((len(rel), len(levels)))
    for i, (row, n) in enumerate(zip(rel, n_relevant)):
        pos = np.flatnonzero(row)  # rank (0-based) of each relevant item
        precision = np.arange(1, len(pos) + 1) / (pos + 1)  # precision at each relevant item: where it peaks
        best_after = np.maximum.accumulate(precision[::-1])[::-1]
        needed = np.maximum(np.ceil(levels * n - 1e-9).astype(int), 1)  # relevant items a level needs
        ok = needed <= len(pos)
        out[i, ok] = best_after[needed[ok] - 1]
    return out


def score(
    retriever: Retriever | Method,
    gallery: Sequence[Any],
    gallery_keys: Sequence[Any],
    queries: Sequence[Any] | None = None,
    query_keys: Sequence[Any] | None = None,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    leave_one_out: bool = False,
    gallery_modality: str | Sequence[str] = "sketch",
    query_modality: str | Sequence[str] = "sketch",
    chunk: int = 512,
    progress: Progress | None = None,
    pr_points: int = 0,
    top: int = 0,
) -> dict[str, Any]:
    """Score one ranking task (see the module docstring). ``gallery`` / ``queries``: what the encoder reads
    (Sketch, raster, PIL image); ``*_keys``: relevance keys (equal key = relevant); ``*_modality``: one for
    all, or one per item. Returns the metrics and ``n_queries``, ``n_excluded`` (queries with no relevant
    item, left out of every mean), ``n_gallery``, ``mean_relevant``, ``ms_per_query``, ``encode_per_s``.

    ``progress``: called as items are encoded (``"encoding"``) and queries searched (``"searching"``).
    ``pr_points`` > 1: also ``pr_curve`` = ``{"recall": pr_points levels from 0 to 1, "precision": the mean
    over queries (those with a relevant item) of the interpolated precision}``. ``top`` > 0: also ``top_ids``
    (each query's first ``top`` hits, gallery positions; leave-one-out: the query itself left out) and
    ``top_relevant`` (whether each is relevant), lists of lists."""
    ks = tuple(int(k) for k in ks)
    if leave_one_out and (queries is not None or query_keys is not None):
        raise ValueError("leave_one_out queries the gallery with itself: leave queries and query_keys unset")
    if not leave_one_out and (queries is None or query_keys is None):
        raise ValueError("give queries and query_keys, or set leave_one_out=True")
    n_g = len(gallery)
    if n_g == 0:
        raise ValueError("the gallery is empty")
    if len(gallery_keys) != n_g:
        raise ValueError(f"{len(gallery_keys)} gallery keys for {n_g} gallery items")
    if queries is not None and (len(queries) == 0 or len(query_keys or ()) != len(queries)):
        raise ValueError(f"need one key per query, got {len(query_keys or ())} keys for {len(queries)} queries")
    r = _retriever(retriever)

    def per_item(m: str | Sequence[str], n: int) -> list[str]:
        return [m] * n if isinstance(m, str) else list(m)

    report = progress or (lambda what, done, total: None)
    n_encode = n_g + (0 if queries is None else len(queries))
    encoded = 0

    def advance(n: int) -> None:
        nonlocal encoded
        encoded += n
        report("encoding", encoded, n_encode)

    report("encoding", 0, n_encode)
    t0 = time.perf_counter()
    g_codes = _encode(r, gallery, per_item(gallery_modality, n_g), advance)
    if leave_one_out:
        q_codes, q_keys = g_codes, list(gallery_keys)
    else:
        assert queries is not None and query_keys is not None
        q_codes = _encode(r, queries, per_item(query_modality, len(queries)), advance)
        q_keys = list(query_keys)
    t_encode = time.perf_counter() - t0
    n_encoded = n_g + (0 if leave_one_out else len(q_codes))
    g_keys = list(gallery_keys)
    r.add(
        gallery,
        ids=np.arange(n_g, dtype=np.int64),
        labels=[None if x is None else str(x) for x in g_keys],
        encoded=g_codes,
    )

    n_q = len(q_codes)
    n_rel_all = n_relevant_from_labels(g_keys, q_keys, leave_one_out=leave_one_out)
    fns: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "mAP@all": map_at_all,
        "MAP@R": map_at_r,
        "mean_rank": mean_rank,
    }
    for k in ks:
        fns[f"mAP@{k}"] = lambda rel, n, k=k: map_at_k(rel, k, n, norm="relevant")
        fns[f"mAP@{k}_min"] = lambda rel, n, k=k: map_at_k(rel, k, n, norm="min")
        fns[f"P@{k}"] = lambda rel, n, k=k: precision_at_k(rel, k, n)
        fns[f"acc@{k}"] = lambda rel, n, k=k: acc_at_k(rel, k, n)
    sums = dict.fromkeys(fns, 0.0)
    levels = np.linspace(0.0, 1.0, pr_points) if pr_points > 1 else None
    pr_sum = np.zeros(pr_points)
    top_ids: list[list[int]] = []
    top_rel: list[list[bool]] = []
    report("searching", 0, n_q)
    r.search_encoded(q_codes[:1], 1)  # untimed warm-up: a backend may compile its kernels on first use (numba)
    t_search = 0.0
    for s in range(0, n_q, chunk):
        e = min(s + chunk, n_q)
        t1 = time.perf_counter()
        _, ids = r.search_encoded(q_codes[s:e], n_g)
        t_search += time.perf_counter() - t1
        ids = np.asarray(ids, dtype=np.int64)
        if leave_one_out:
            keep = ids != np.arange(s, e)[:, None]
            if not (keep.sum(axis=1) == n_g - 1).all():
                raise RuntimeError("leave-one-out: a query's own item is missing from (or repeated in) its ranking")
            ids = ids[keep].reshape(e - s, n_g - 1)
        rel = relevance_from_labels(ids, g_keys, q_keys[s:e])
        n_rel = n_rel_all[s:e]
        n_valid = int((n_rel > 0).sum())
        if n_valid:
            for name, fn in fns.items():
                sums[name] += fn(rel, n_rel) * n_valid
            if levels is not None:
                pr_sum += interpolated_precision(rel[n_rel > 0], n_rel[n_rel > 0], levels).sum(axis=0)
        if top > 0:
            top_ids += ids[:, :top].tolist()
            top_rel += np.asarray(rel[:, :top], dtype=bool).tolist()
        report("searching", e, n_q)
    n_valid_all = int((n_rel_all > 0).sum())
    out: dict[str, Any] = {name: (v / n_valid_all if n_valid_all else float("nan")) for name, v in sums.items()}
    m = r.method
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
            "method": m.name,
            "output": m.output,
            "code_size": int(m.code_size),
            "model_id": r.model_id,
        }
    )
    if levels is not None:
        mean = pr_sum / n_valid_all if n_valid_all else np.full(pr_points, np.nan)
        out["pr_curve"] = {"recall": levels.tolist(), "precision": mean.tolist()}
    if top > 0:
        out.update(top_ids=top_ids, top_relevant=top_rel)
    return out


def score_pages(
    pages: PageIndex,
    queries: Sequence[Any],
    query_keys: Sequence[Any],
    truth: Mapping[int, Sequence[tuple[Any, Sequence[int]]]],
    *,
    ks: Iterable[int] = (1, 5, 10),
    iou: float = 0.5,
    by_page: bool = False,
    nms_iou: float = 0.3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score page search (module docstring): ``queries`` (drawings) with their ``query_keys`` against the
    page index ``pages``, whose true marks are ``truth``: page id -> [(key, box x0 y0 x1 y1), ...]. Each query
    gets ``max(ks)`` hits after per-page suppression (``by_page``: one a page); a hit is relevant when it is
    on a page holding a true box of the query's key with IoU >= ``iou`` that no better hit matched already.
    Returns ``recall@k``, ``acc@k``, ``P@k``, ``mAP@k`` (normalised by the query's number of true boxes),
    ``mean_rank`` (of the first true box; misses count at max(ks) + 1), ``n_queries``, ``n_excluded``
    (queries whose key is on no page), ``ms_per_query`` (search with suppression, encoding apart),
    ``encode_per_s`` (queries), ``n_pages``, ``n_boxes``."""
    from ..pages.proposals import box_iou

    ks = tuple(int(k) for k in ks)
    if len(queries) == 0 or len(queries) != len(query_keys):
        raise ValueError(f"need one key per query, got {len(query_keys)} keys for {len(queries)} queries")
    k_max = max(ks)
    report = progress or (lambda what, done, total: None)
    report("encoding", 0, len(queries))
    t0 = time.perf_counter()
    codes = pages.retriever.encode(list(queries))
    t_encode = time.perf_counter() - t0
    report("encoding", len(queries), len(queries))
    pages.search_encoded(codes[:1], 1, by_page=by_page, nms_iou=nms_iou)  # untimed warm-up (kernel compile)
    by_key: dict[Any, int] = {}
    for marks in truth.values():
        for key, _ in marks:
            by_key[key] = by_key.get(key, 0) + 1
    rel = np.zeros((len(queries), k_max), dtype=bool)
    t_search = 0.0
    for q, key in enumerate(query_keys):
        t1 = time.perf_counter()
        hits = pages.search_encoded(codes[q : q + 1], k_max, by_page=by_page, nms_iou=nms_iou)[0]
        t_search += time.perf_counter() - t1
        used: set[tuple[int, int]] = set()
        for r, h in enumerate(hits):
            marks = truth.get(h.page, ())
            for m, (mkey, box) in enumerate(marks):
                if mkey == key and (h.page, m) not in used and box_iou(np.array([box]), np.array([h.box]))[0, 0] >= iou:
                    used.add((h.page, m))
                    rel[q, r] = True
                    break
        report("searching", q + 1, len(queries))
    n_rel = np.array([by_key.get(k, 0) for k in query_keys], dtype=np.int64)
    out: dict[str, Any] = {"mean_rank": mean_rank(rel, n_rel)}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(rel, k, n_rel)
        out[f"acc@{k}"] = acc_at_k(rel, k, n_rel)
        out[f"P@{k}"] = precision_at_k(rel, k, n_rel)
        out[f"mAP@{k}"] = map_at_k(rel, k, n_rel, norm="relevant")
    m = pages.retriever.method
    out.update(
        {
            "n_queries": len(queries),
            "n_excluded": int((n_rel == 0).sum()),
            "n_pages": int(pages.page_count),
            "n_boxes": len(pages.retriever),
            "iou": iou,
            "by_page": by_page,
            "ks": list(ks),
            "ms_per_query": 1000.0 * t_search / len(queries),
            "encode_per_s": len(queries) / t_encode if t_encode > 0 else float("inf"),
            "method": m.name,
            "code_size": int(m.code_size),
            "model_id": pages.retriever.model_id,
        }
    )
    return out


def _key(item: Item, protocol: str) -> Any:
    if protocol == "instance":
        return None if item.pair is None else f"{item.label}/{item.pair}"
    return item.label


def evaluate(
    retriever: Retriever | Method | Callable[[], Retriever | Method],
    collection: Collection,
    split: Split,
    *,
    protocol: str | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    progress: Progress | None = None,
    pr_points: int = 0,
    top: int = 0,
) -> dict[str, dict[str, Any]]:
    """Score on every evaluation ``split`` holds: ``{"main": metrics, "zero_shot": metrics}`` (those present).

    ``protocol``: ``category`` (same label), ``instance`` (same ``pair``: a sketch and its photo) or
    ``leave-one-out``; default from the split's kind. Each query and gallery item is encoded with its own
    modality. ``retriever``: an empty Retriever or a Method, or a callable making one per evaluation (a
    Retriever holds one gallery). ``progress``, ``pr_points``, ``top``: as :func:`score`'s, ``what`` prefixed
    with the evaluation's name (``"main: encoding"``)."""
    protocol = protocol or {
        "instance": "instance",
        "heldout_instance": "category",
        "leave_one_out": "leave-one-out",
    }.get(split.kind, "category")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    evaluations = split.evaluations()
    if not evaluations:
        raise ValueError(f"the {split.kind} split holds no query and gallery items to evaluate")
    results: dict[str, dict[str, Any]] = {}
    for name, q_part, g_part in evaluations:
        factory = not isinstance(retriever, (Retriever, Method))
        r = retriever() if factory else retriever  # type: ignore[operator]
        if results and isinstance(r, Retriever) and not factory:
            raise ValueError("a Retriever holds one gallery: pass a Method or a factory to evaluate several parts")
        g_items = [collection[i] for i in split.part(g_part)]
        g_keys = [_key(it, protocol) for it in g_items]
        step = (
            None if progress is None else (lambda what, done, total, p=progress, n=name: p(f"{n}: {what}", done, total))
        )
        common = {
            "ks": ks,
            "gallery_modality": [it.modality for it in g_items],
            "progress": step,
            "pr_points": pr_points,
            "top": top,
        }
        if protocol == "leave-one-out" or q_part == g_part:
            res = score(r, [item_input(it) for it in g_items], g_keys, leave_one_out=True, **common)
        else:
            q_items = [collection[i] for i in split.part(q_part)]
            res = score(
                r,
                [item_input(it) for it in g_items],
                g_keys,
                [item_input(it) for it in q_items],
                [_key(it, protocol) for it in q_items],
                query_modality=[it.modality for it in q_items],
                **common,
            )
        res["protocol"] = protocol
        results[name] = res
    return results


# ---------------------------------------------------------------------------------------------- tables
@dataclass
class Row:
    """One row of a table: a trained ``model`` (artifact name or path), or a closed-form ``method`` with its
    ``kwargs`` (fitted on the split's train part, or its gallery without labels)."""

    label: str
    model: str | None = None
    method: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> tuple[Method, Any]:
        """(method, model card or None)."""
        if self.model:
            from ..model import load_model

            return load_model(self.model)
        if not self.method:
            raise ValueError(f"row {self.label!r} needs a model or a method")
        method = create_method(self.method, **self.kwargs)
        if not method.closed_form:
            raise ModelError(f"row {self.label!r}: method {self.method!r} needs training; give a trained model")
        return method, None


def fit_on_split(method: Method, collection: Collection, split: Split) -> dict[str, Any]:
    """Fit a closed-form method on the split's ``train`` part (sketches), else on its gallery (no labels)."""
    part = "train" if split.train else "gallery"
    items = [collection[i] for i in split.part(part) if collection[i].modality == "sketch"]
    method.fit([item_input(it) for it in items])
    return {"fitted_on": part, **dict(getattr(method, "fit_info", {}))}


def evaluate_rows(
    rows: Sequence[Row],
    collection: Collection,
    split: Split,
    *,
    protocol: str | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    title: str = "Retrieval",
    notes: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    json_path: str | None = None,
    md_path: str | None = None,
    columns: Sequence[str] = ("mAP@all", "P@100"),
    step_progress: Progress | None = None,
    pr_points: int = 0,
    top: int = 0,
    backend: str = "numba",
) -> dict[str, Any]:
    """Score every row on the same split; write JSON and a markdown table (atomically) when paths are given.
    ``backend``: the Hamming index binary rows are searched in (``sketchsearch.index``'s registry: the same
    figures from every exact backend); float rows use the dense index.
    ``progress``: called with a line per finished row; ``step_progress``, ``pr_points``, ``top``: as
    :func:`evaluate`'s, ``what`` prefixed with the row's label (``"itq 64: main: encoding"``; fitting a
    baseline is ``"itq 64: fitting"``).
    Returns ``{"title", "data", "split", "rows": [{label, model, method, kwargs, fit, main, zero_shot?}],
    "notes", "meta", "environment", "created"}``."""
    ks = tuple(ks)
    out_rows = []
    for row in rows:
        step = (
            None
            if step_progress is None
            else (lambda what, done, total, p=step_progress, n=row.label: p(f"{n}: {what}", done, total))
        )
        method, card = row.build()
        fit: dict[str, Any] = {}
        if card is None:
            if step:
                step("fitting", 0, 1)
            fit = fit_on_split(method, collection, split)
        model_id = card.model_id if card is not None else "unsaved"
        res = evaluate(
            lambda m=method, i=model_id: Retriever(m, model_id=i, backend=backend),
            collection,
            split,
            protocol=protocol,
            ks=ks,
            progress=step,
            pr_points=pr_points,
            top=top,
        )
        entry = {
            "label": row.label,
            "model": row.model,
            "method": method.name,
            "kwargs": dict(row.kwargs),
            "model_id": model_id,
            "fit": fit,
            **res,
        }
        out_rows.append(entry)
        if progress:
            progress(
                f"{row.label}: "
                + "; ".join(
                    f"{name} " + ", ".join(f"{c} {r.get(c, float('nan')):.4f}" for c in columns)
                    for name, r in res.items()
                )
            )
    doc = {
        "title": title,
        "data": collection.path,
        "n_items": len(collection),
        "skipped": collection.skipped,
        "split": split.summary(),
        "ks": list(ks),
        "notes": list(notes),
        "meta": {**dict(meta or {}), "backend": backend},
        "rows": out_rows,
        "environment": {
            "sketchsearch": __version__,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
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
    """A results document (from :func:`evaluate_rows`) -> markdown: title, data + split line, one row per
    result and evaluation (a row's zero-shot figures on a line of their own), then the notes."""
    sp = doc["split"]
    parts = ", ".join(f"{k} {v}" for k, v in sp.items() if k not in ("kind", "seed"))
    lines = [
        f"# {doc['title']}",
        "",
        (
            f"Data: `{doc['data']}` ({doc['n_items']} items, {doc['skipped']} skipped). "
            f"Split: {sp['kind']}, seed {sp['seed']} ({parts})."
        ),
        "",
        "| method | bits/dim | " + " | ".join(columns) + " | search ms/query |",
        "|---|---:|" + "---:|" * len(columns) + "---:|",
    ]
    for row in doc["rows"]:
        for name in ("main", "zero_shot"):
            r = row.get(name)
            if r is None:
                continue
            label = row["label"] if name == "main" else f"{row['label']} (zero-shot)"
            vals = " | ".join(f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns)
            lines.append(f"| {label} | {r['code_size']} | {vals} | {r['ms_per_query']:.3f} |")
    if doc.get("notes"):
        lines += [""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"
