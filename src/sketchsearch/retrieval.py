"""The Retriever: model + index (+ item store). The only search path: evaluation, the CLI and the web
service all call :meth:`Retriever.search` / :meth:`Retriever.search_many`.

Binary methods are searched by Hamming distance over packed codes; float methods by cosine similarity
(reported as ``distance = 1 - cosine`` so that smaller is always closer). Ties are broken by id, ascending.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from .data.batching import make_batch, make_photo_batch
from .data.render import rasterize
from .data.sketch import Sketch
from .errors import IndexError_, InvalidSketchError
from .methods.base import Method

if TYPE_CHECKING:
    from .data.formats.base import Item
    from .index.base import Index

__all__ = ["ENCODE_STEP", "Hit", "Query", "Retriever", "encode_order", "thumbnail_png"]

Query = Sketch | np.ndarray | Image.Image

#: items of a collection are encoded (and numbered) in chunks of this many (:meth:`Retriever.add_items`)
ENCODE_STEP = 512


@dataclass
class Hit:
    """One search result: the item's ``id``, its 1-based ``rank`` and ``distance`` (smaller is closer), its
    ``label``, ``source`` (its file relative to the collection's folder, with ``:record`` when the file
    holds several, or its record id) and ``meta`` (its metadata, e.g. title, date, place, url; {} when none).
    ``extra`` is kept for callers that attach their own fields."""

    id: int
    rank: int
    distance: float
    label: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def thumbnail_png(item: Query, size: int = 96) -> bytes:
    """A small PNG for result grids: dark ink on white for drawings, the photo itself otherwise."""
    if isinstance(item, Sketch):
        ink = rasterize(item, size=size, line_width=max(1.5, size / 48))
        img = Image.fromarray(((1.0 - ink) * 255).astype(np.uint8))
    elif isinstance(item, Image.Image):
        img = item.convert("RGB")
        img.thumbnail((size, size))
    else:
        arr = np.asarray(item)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).astype(np.uint8)
        if arr.ndim == 2:  # a raster: ink = high; show dark on light
            arr = 255 - arr
        img = Image.fromarray(arr)
        img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def encode_order(modalities: Sequence[str], step: int = ENCODE_STEP) -> np.ndarray:
    """The positions of items of these modalities in the order :meth:`Retriever.add_items` numbers them: chunk
    by chunk of ``step`` items, the drawings of the chunk, then its photos (each modality through its own
    encoder branch). Item ``order[j]`` gets the j-th id."""
    kinds = np.asarray(modalities, dtype=object)
    chunks = np.arange(len(kinds)) // step
    return np.lexsort((np.arange(len(kinds)), kinds == "photo", chunks)).astype(np.int64)


class Retriever:
    """Encode drawings (or photos) with a method and search them in an index.

    >>> r = Retriever(method)              # an empty in-memory index of the right kind
    >>> r.add(sketches, labels=labels)     # ids 0..n-1 unless given
    >>> r.search(query_sketch, k=10)       # -> [Hit(id, rank, distance, label, source), ...]
    """

    def __init__(
        self,
        method: Method,
        index: Index | None = None,
        *,
        model_id: str = "unsaved",
        backend: str = "numba",
        batch_size: int = 256,
        store: Any | None = None,
        model_name: str | None = None,
        collection: dict[str, Any] | None = None,
        attachments: dict[str, Path] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        self.method = method.eval()
        #: further files saved with the index (file name -> path to copy it from: a page collection's
        #: ``pages.sqlite``) and extra manifest fields (``"pages"``); see :mod:`sketchsearch.index.store`
        self.attachments: dict[str, Path] = dict(attachments or {})
        self.fields: dict[str, Any] = dict(fields or {})
        #: the collection's name, slug, title and description (index.store.collection_fields), saved in the
        #: manifest; None keeps those of the folder saved into
        self.collection = collection
        self.model_id = model_id
        #: how to load the model again (artifact name or path); recorded in a saved index's manifest
        self.model_name = model_name
        self.batch_size = batch_size
        self.backend = backend
        self.store = store  # an on-disk item store (labels, sources, thumbnails) when loaded from a folder
        self._meta: dict[int, dict[str, Any]] = {}
        if index is None:  # binary methods: the Hamming ``backend``; float methods: the dense index
            from .index import create_index

            if method.output == "binary":
                index = create_index(backend, nbits=method.code_size)
            else:
                index = create_index("dense", dim=method.code_size)
        self.index: Index = index

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, name_or_path: str | Path, **kw: Any) -> Retriever:
        from .model import load_model

        method, card = load_model(name_or_path)
        return cls(method, model_id=card.model_id, model_name=str(name_or_path), **kw)

    @property
    def binary(self) -> bool:
        return self.method.output == "binary"

    def __len__(self) -> int:
        return len(self.index)

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def embed(self, items: Sequence[Query], modality: str = "sketch") -> np.ndarray:
        """Float (n, code_size): relaxed codes (binary methods) or L2-normalised embeddings."""
        pre = self.method.preprocessing
        device = next(iter(self.method.parameters()), torch.zeros(0)).device
        out = []
        for i in range(0, len(items), self.batch_size):
            chunk = list(items[i : i + self.batch_size])
            for j, it in enumerate(chunk):
                if isinstance(it, Sketch) and it.is_empty:
                    raise InvalidSketchError(f"item {i + j} has no points", "strokes")
            if modality == "photo":
                raw = make_photo_batch(chunk, pre.photo_size)  # RGB photos at the method's photo size
            else:
                raw = make_batch(chunk, pre)
            batch = {k: v.to(device) for k, v in raw.items()}
            z = self.method.encode(batch, modality=modality).float()
            if not self.binary:
                z = torch.nn.functional.normalize(z, dim=1)
            out.append(z.cpu().numpy())
        if not out:
            return np.zeros((0, self.method.code_size), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def encode(self, items: Sequence[Query], modality: str = "sketch") -> np.ndarray:
        """Packed uint8 codes (binary methods) or float32 L2-normalised embeddings (float methods)."""
        z = self.embed(items, modality)
        return self.method.binarize(torch.from_numpy(z)) if self.binary else z

    # ------------------------------------------------------------------ indexing
    def add(
        self,
        items: Sequence[Query],
        ids: Sequence[int] | np.ndarray | None = None,
        labels: Sequence[str | None] | None = None,
        sources: Sequence[str | None] | None = None,
        modality: str = "sketch",
        thumbnails: bool = False,
        encoded: np.ndarray | None = None,
        metas: Sequence[dict[str, Any] | None] | None = None,
    ) -> np.ndarray:
        """Encode ``items`` (unless ``encoded`` is given) and add them; returns their int64 ids.
        ``labels``, ``sources``, ``metas`` (metadata dicts): one per item, kept with it (and saved)."""
        n = len(items) if encoded is None else len(encoded)
        if ids is None:
            # after the largest id in use (a loaded index has ids but no in-memory items)
            start = max(int(np.max(np.asarray(self.index.ids), initial=-1)), max(self._meta, default=-1)) + 1
            ids = np.arange(start, start + n, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids for {n} items")
        codes = self.encode(items, modality) if encoded is None else encoded
        self.index.add(codes, ids)
        for j, i in enumerate(ids.tolist()):
            meta: dict[str, Any] = {
                "label": labels[j] if labels is not None else None,
                "source": sources[j] if sources is not None else None,
                "meta": dict(metas[j] or {}) if metas is not None else {},
                "modality": modality,
            }
            if thumbnails and encoded is None:
                meta["thumbnail"] = thumbnail_png(items[j])
            self._meta[i] = meta
        return ids

    def add_items(
        self,
        items: Sequence[Item],
        ids: Sequence[int] | np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Encode data Items (:class:`~sketchsearch.data.formats.base.Item`) and add them with their label,
        source, metadata, modality and a thumbnail; returns their int64 ids, one per item in item order.

        Items go in chunks of :data:`ENCODE_STEP`, each modality through its own encoder branch; ``ids``
        default to the next free ones in :func:`encode_order` (a chunk's drawings, then its photos).
        ``progress(done, total)`` is called after each chunk. ``index build`` / ``add`` (both engines) encode
        here."""
        from .data.batching import item_input

        items = list(items)
        ids = self.next_ids(items) if ids is None else np.asarray(ids, dtype=np.int64)
        if len(ids) != len(items):
            raise ValueError(f"{len(ids)} ids for {len(items)} items")
        for s in range(0, len(items), ENCODE_STEP):
            for kind in ("sketch", "photo"):
                part = [j for j in range(s, min(s + ENCODE_STEP, len(items))) if items[j].modality == kind]
                if part:
                    self.add(
                        [item_input(items[j]) for j in part],
                        ids=ids[part],
                        labels=[items[j].label for j in part],
                        sources=[items[j].source for j in part],
                        metas=[items[j].meta for j in part],
                        modality=kind,
                        thumbnails=True,
                    )
            if progress is not None:
                progress(min(s + ENCODE_STEP, len(items)), len(items))
        return ids

    def next_ids(self, items: Sequence[Item]) -> np.ndarray:
        """The ids :meth:`add_items` gives ``items`` (one per item, in item order): the next free ones, in
        :func:`encode_order`."""
        start = max(int(np.max(np.asarray(self.index.ids), initial=-1)), max(self._meta, default=-1)) + 1
        ids = np.empty(len(items), np.int64)
        ids[encode_order([i.modality for i in items])] = np.arange(start, start + len(items), dtype=np.int64)
        return ids

    def add_encoded(self, codes: np.ndarray, ids: Sequence[int] | np.ndarray, rows: Sequence[dict[str, Any]]) -> None:
        """Add codes encoded elsewhere (by :meth:`add_items` in a worker of ``--engine ray``: :meth:`rows`) with
        their item rows as :meth:`rows` gives them (label, source, meta, modality, thumbnail). ``codes`` are as
        an index of this kind stores them (its ``state()``): an empty index adopts them as they are (as a load
        does), so a dense index does not normalise its vectors twice; a non-empty one adds them."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(codes) == len(ids) == len(rows):
            raise ValueError(f"{len(codes)} codes, {len(ids)} ids and {len(rows)} rows")
        if len(self.index) == 0 and not self._meta:
            order = np.argsort(ids, kind="stable")
            self.index.load_state({"codes": np.ascontiguousarray(codes[order]), "ids": ids[order]})
        else:
            self.index.add(codes, ids)
        for i, row in zip(ids.tolist(), rows):
            self._meta[i] = dict(row)

    def rows(self) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """(codes, ids, rows) of an index built in memory (not loaded), in id order: what :meth:`add_encoded`
        takes."""
        from .index.base import state_arrays

        codes, ids = state_arrays(self.index.state())
        return codes, ids, [self._meta[int(i)] for i in ids.tolist()]

    def remove(self, ids: Sequence[int]) -> None:
        self.index.remove(np.asarray(ids, dtype=np.int64))
        for i in ids:
            self._meta.pop(int(i), None)

    # ------------------------------------------------------------------ search
    def search_encoded(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances (nq, k), ids int64 (nq, k)); -1 ids pad missing hits. Float methods: 1 - cosine."""
        if len(self.index) == 0:
            raise IndexError_("the index is empty: add items before searching")
        d, ids = self.index.search(codes, k)
        if not self.binary:
            d = (1.0 - d).astype(np.float32)
        return d, ids

    def search_many(self, queries: Sequence[Query], k: int, modality: str = "sketch") -> tuple[np.ndarray, np.ndarray]:
        return self.search_encoded(self.encode(queries, modality), k)

    def search(self, query: Query, k: int = 10, modality: str = "sketch") -> list[Hit]:
        if isinstance(query, Sketch):
            query.validate()
        d, ids = self.search_many([query], k, modality)
        return self.hits(d[0], ids[0])

    def hits(self, dist: np.ndarray, ids: np.ndarray) -> list[Hit]:
        """Ranked ids -> Hits with labels, sources and metadata (from memory or the on-disk store)."""
        return self.hits_and_rows(dist, ids)[0]

    def hits_and_rows(self, dist: np.ndarray, ids: np.ndarray) -> tuple[list[Hit], dict[int, dict[str, Any]]]:
        """:meth:`hits` and the item rows they were made from (:meth:`item_meta`), read once."""
        valid = [(float(dd), int(i)) for dd, i in zip(np.asarray(dist).tolist(), np.asarray(ids).tolist()) if i >= 0]
        rows = self.item_meta([i for _, i in valid])
        return [
            Hit(
                id=i,
                rank=r + 1,
                distance=dd,
                label=rows.get(i, {}).get("label"),
                source=rows.get(i, {}).get("source"),
                meta=dict(rows.get(i, {}).get("meta") or {}),
            )
            for r, (dd, i) in enumerate(valid)
        ], rows

    def item_meta(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        # items added since loading live in memory, the rest in the on-disk store
        out: dict[int, dict[str, Any]] = {}
        if self.store is not None:
            out = {int(r["id"]): r for r in self.store.items([i for i in ids if i not in self._meta])}
        out.update({i: self._meta[i] for i in ids if i in self._meta})
        return out

    def thumbnail(self, item_id: int) -> bytes | None:
        m = self._meta.get(int(item_id))
        if m is None and self.store is not None:
            return self.store.thumbnail(int(item_id))
        return None if m is None else m.get("thumbnail")

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        from .index.store import save_index

        rows: dict[int, dict[str, Any]] = {}
        if self.store is not None:  # keep the stored items (labels, metadata, thumbnails) of a loaded index
            live = [int(i) for i in np.asarray(self.index.ids).tolist() if int(i) not in self._meta]
            for r in self.store.items(live):
                row = {k: v for k, v in r.items() if k != "has_thumbnail"}
                if r.get("has_thumbnail"):
                    row["thumbnail"] = self.store.thumbnail(int(r["id"]))
                rows[int(r["id"])] = row
        rows.update({i: {"id": i, **m} for i, m in self._meta.items()})
        items = [rows[i] for i in sorted(rows)]
        save_index(
            self.index,
            folder,
            model_id=self.model_id,
            items=items,
            model_name=self.model_name,
            collection=self.collection,
            attachments=self.attachments,
            fields=self.fields,
        )

    @classmethod
    def load(cls, folder: str | Path, model: str | Path | Method | None = None, verify: bool = True) -> Retriever:
        """Open an index folder with its model (by default the model named in the index's manifest); its
        collection fields (name, slug, title, description) are kept for :meth:`save`.

        The index must have been made by that model: its manifest's ``model_id`` must be the one
        :func:`~sketchsearch.model.load_model` derived from the model's weights and card (a card claiming
        another model's id is refused there). An index saved before ids covered the card, recording a
        shipped model's old id, opens with that shipped model (:data:`~sketchsearch.model.LEGACY_MODEL_IDS`)
        and records the current id when saved again. A ``Method`` object is trusted as the index's model."""
        from .index.store import COLLECTION_FIELDS, EXTRA_FIELDS, attachment_names, load_index, read_manifest
        from .model import LEGACY_MODEL_IDS, load_model

        manifest = read_manifest(folder)
        if isinstance(model, Method):
            method, model_id = model, manifest.get("model_id", "unsaved")
            expected = model_id
        else:
            name = model if model is not None else manifest.get("model_name")
            if not name:
                raise IndexError_(f"{folder}: the index does not name its model; pass one (--model)")
            method, card = load_model(name)
            model_id = expected = card.model_id
            recorded = manifest.get("model_id")
            if isinstance(recorded, str) and LEGACY_MODEL_IDS.get(recorded) == model_id:
                expected = recorded  # the same shipped model under its pre-derivation id
        index, store = load_index(folder, expected_model_id=expected, verify=verify)
        return cls(
            method,
            index,
            model_id=model_id,
            store=store,
            model_name=str(model)
            if model is not None and not isinstance(model, Method)
            else manifest.get("model_name"),
            collection={k: manifest[k] for k in COLLECTION_FIELDS if k in manifest} or None,
            attachments={name: Path(folder) / name for name in attachment_names(manifest)},
            fields={k: manifest[k] for k in EXTRA_FIELDS if k in manifest},
        )
