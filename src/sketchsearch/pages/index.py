"""Page collections: index the marks on document pages, search them with a drawing, answer page + box.

A page index is an ordinary index folder (:mod:`sketchsearch.index.store`) whose items are *boxes*: every
candidate box of every page (:mod:`sketchsearch.pages.proposals`) is cropped, encoded through the one
:class:`~sketchsearch.retrieval.Retriever` and added with ``source`` = its page's file and ``meta =
{"page": page id, "box": [x0, y0, x1, y1], "proposal": "ink" | "window"}``. The pages themselves (size,
source, a JPEG preview) are in the folder's attachment ``pages.sqlite`` (:mod:`sketchsearch.pages.store`),
and the manifest's ``"pages"`` field holds the proposal settings, so that a later ``add`` proposes boxes the
same way. Loading checks every file's checksum like any index, and refuses an index that is not a page
index.

**Search** (:meth:`PageIndex.search_many`): the query's code is searched among all boxes (exactly, like any
query: ``candidates`` nearest boxes), then overlapping hits on the same page are reduced to the best one
(non-maximum suppression at ``nms_iou``), and with ``by_page`` only each page's best box is kept.

**Pages** (:func:`iter_pages`): a folder (searched recursively, in sorted order) or one file; images of any
format the guarded decoder reads, and PDF pages (rendered with ``pypdfium2``, the optional extra ``pdf``),
reduced to ``ProposalConfig.max_side`` pixels a side. A page that cannot be read (not an image, corrupt, a
decompression bomb, a broken PDF) is reported and skipped; with ``strict`` it stops the build.

Memory is bounded by one page at a time (its ink map: 4 bytes a pixel, 16 MB at 2048 px) plus the codes and
one small metadata row per box; crops are encoded in batches as the Retriever does.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.formats.base import READ_LIMITS, report
from ..data.formats.images import IMAGE_SUFFIXES, open_image
from ..data.sketch import Sketch
from ..errors import FormatError, IndexError_
from ..retrieval import Query, Retriever
from .proposals import ProposalConfig, crop, nms, page_ink, propose_boxes, steps_from_invariance
from .store import PAGES_FILE, PageStore, PageWriter, preview_jpeg

__all__ = [
    "PDF_SUFFIXES",
    "PageHit",
    "PageIndex",
    "PageReport",
    "class_threshold",
    "default_pairs",
    "draw_boxes",
    "iter_pages",
    "measure_config",
    "read_truth_metas",
]

PDF_SUFFIXES = (".pdf",)
#: a page source: (its name, a function that reads it as uint8 (H, W) or (H, W, 3))
PageSource = tuple[str, Callable[[], np.ndarray]]
#: margin of paper around a crop, as a fraction of its longer side (so its border is paper: the encoders
#: decide the ink's polarity from an image's border)
CROP_PAD = 0.1


@dataclass
class PageHit:
    """One answer of a page search: the ``page`` (id), its ``source``, the ``box`` (x0, y0, x1, y1 in the
    page's pixels as indexed), the box's ``distance`` to the query (smaller is closer), its ``rank`` (1-based),
    the box item's ``id`` and how it was ``proposal``-ed; ``page_size`` = (width, height)."""

    rank: int
    page: int
    source: str | None
    box: tuple[int, int, int, int]
    distance: float
    id: int
    proposal: str | None = None
    page_size: tuple[int, int] | None = None


@dataclass
class PageReport:
    """What an :meth:`PageIndex.add_pages` did: pages and boxes added, pages skipped (with their errors)."""

    pages: int = 0
    boxes: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    read_s: float = 0.0
    propose_s: float = 0.0
    encode_s: float = 0.0


# ---------------------------------------------------------------------------------------------- sources
def iter_pages(path: str | Path, max_side: int = ProposalConfig.max_side) -> Iterator[PageSource]:
    """The pages under ``path`` (a folder, searched recursively in sorted order, or one file): images and PDF
    pages, each with a reader that returns it at most ``max_side`` pixels a side (see the module docstring).
    Reading happens when the reader is called, so a bad page is found (and reported) in its turn."""
    root = Path(path)
    if not root.exists():
        raise FormatError(root, None, "no such file or folder")
    if root.is_file():
        files, base = [root], root.parent
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + PDF_SUFFIXES)
        base = root
        if not files:
            raise FormatError(root, None, f"no page images ({', '.join(IMAGE_SUFFIXES)}) or PDFs in this folder")
    limits = replace(READ_LIMITS, max_image_side=max_side)
    for f in files:
        name = f.relative_to(base).as_posix()
        if f.suffix.lower() in PDF_SUFFIXES:
            yield from _pdf_pages(f, name, max_side)
        else:
            yield name, (lambda f=f: open_image(f, limits=limits))


def _pdf_pages(path: Path, name: str, max_side: int) -> Iterator[PageSource]:
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise FormatError(
            path, None, "reading PDF pages needs pypdfium2: pip install 'sketchsearch[pdf]' (or convert them to images)"
        ) from None
    try:
        doc = pdfium.PdfDocument(str(path))
        n = len(doc)
    except (pdfium.PdfiumError, OSError, ValueError) as e:
        # one bad source: its reader raises in its turn, so the build reports it and goes on
        def broken(e: Exception = e) -> np.ndarray:
            raise FormatError(path, None, f"not a readable PDF ({e})")

        yield name, broken
        return

    def render(i: int) -> np.ndarray:
        try:
            page = doc[i]
            w, h = page.get_size()  # points (1/72 inch)
            if w <= 0 or h <= 0:
                raise ValueError(f"page size {w} x {h}")
            scale = min(max_side / max(w, h), 300 / 72)  # up to 300 dpi, at most max_side a side
            return np.asarray(page.render(scale=scale).to_pil().convert("RGB"))
        except (pdfium.PdfiumError, OSError, ValueError) as e:
            raise FormatError(path, f"page {i + 1}", f"the page could not be rendered ({e})") from None

    for i in range(n):
        yield f"{name}:{i + 1}", (lambda i=i: render(i))


def read_truth_metas(data: str | Path) -> dict[str, Any]:
    """Page source -> ``{"truth": [...]}`` from the ``truth.json`` of a folder of generated pages
    (:mod:`sketchsearch.data.page_compose`), so a page index keeps its pages' known marks; {} for any other
    data. A malformed truth file is an error naming it."""
    folder = Path(data)
    if not (folder.is_dir() and (folder / "truth.json").is_file()):
        return {}
    from ..data.page_compose import read_truth

    return {page["file"]: {"truth": page["marks"]} for page in read_truth(folder)}


# ---------------------------------------------------------------------------------------------- steps
def default_pairs(method: Any, n: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two drawings of each of ``n`` classes of the embedded default collection (seeded choice of classes),
    rendered at ``method``'s raster size and line width: float (n, H, W) twice, row i of both of one class.
    What ``pages index --step auto`` measures the invariance curves (first drawings) and its threshold on."""
    from ..data.render import rasterize
    from ..data.synthetic import default_collection

    by_class: dict[str, list[Any]] = {}
    for it in default_collection().items:
        if it.sketch is not None:
            by_class.setdefault(str(it.label), []).append(it.sketch)
    names = sorted(k for k, v in by_class.items() if len(v) >= 2)
    pick = np.random.default_rng(seed).choice(len(names), size=min(n, len(names)), replace=False)
    pre = method.preprocessing

    def render(j: int) -> np.ndarray:
        return np.stack(
            [rasterize(by_class[names[i]][j], size=pre.raster_size, line_width=pre.line_width) for i in pick]
        )

    return render(0), render(1)


def class_threshold(retriever: Retriever, first: np.ndarray, second: np.ndarray) -> tuple[float, dict[str, float]]:
    """The similarity a window's encoding must keep, from the model itself: midway between the mean cosine
    similarity of two drawings of one class (``first[i]``, ``second[i]``) and that of drawings of different
    classes (``first[i]``, ``second[j]``, i != j). A drawing moved or scaled within the limits this sets stays
    closer to its own class than another class's drawings are, on average. Returns it and the two means."""
    a = retriever.embed(list(first))
    b = retriever.embed(list(second))
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sim = a @ b.T
    same = float(np.mean(np.diag(sim)))
    other = float(np.mean(sim[~np.eye(len(sim), dtype=bool)])) if len(sim) > 1 else 0.0
    return (same + other) / 2, {"same_class": same, "other_class": other}


def measure_config(
    retriever: Retriever,
    pairs: tuple[np.ndarray, np.ndarray],
    config: ProposalConfig | None = None,
    threshold: float | None = None,
) -> tuple[ProposalConfig, dict[str, Any]]:
    """``config`` with the window step and scale ratio set from the model's own measured shift and scale
    invariance (:func:`~sketchsearch.pages.proposals.steps_from_invariance`), measured on ``pairs[0]`` (float
    rasters (N, H, W), ink = 1, at the model's raster size: :func:`default_pairs`) encoded through the
    Retriever as a page's crops are. ``threshold``: the similarity to keep; None: :func:`class_threshold` of
    the pairs. Returns the config and the curves (with the threshold and how it was set)."""
    from ..eval import invariance as inv

    size = retriever.method.preprocessing.raster_size

    def encode(x: Any) -> np.ndarray:
        return retriever.embed([a for a in x[:, 0].numpy()])

    info: dict[str, Any] = {}
    if threshold is None:
        threshold, info = class_threshold(retriever, *pairs)
    shifts = sorted({int(round(s * size / 64)) for s in inv.SHIFTS})  # the paper's -10..10 px at 64 px, to scale
    shift = inv.shift_curve(encode, pairs[0], shifts)
    scale = inv.scale_curve(encode, pairs[0])
    cfg = steps_from_invariance(shift, scale, size, round(float(threshold), 4), config)
    return cfg, {"shift": shift, "scale": scale, "threshold": float(threshold), **info}


# ---------------------------------------------------------------------------------------------- index
class PageIndex:
    """A page collection: a Retriever over boxes plus the page table (see the module docstring).

    >>> pages = PageIndex(Retriever.from_model("sketch-gan"))
    >>> pages.add_pages(iter_pages("scans/"))
    >>> pages.save("scans-index")
    >>> PageIndex.load("scans-index").search(query, k=5, by_page=True)
    """

    def __init__(
        self, retriever: Retriever, config: ProposalConfig | None = None, pages: PageStore | None = None
    ) -> None:
        self.retriever = retriever
        self.config = config or ProposalConfig()
        self.pages = pages  # the saved page table (a loaded index), else None
        self._tmp: Path | None = None
        self._writer: PageWriter | None = None
        self._added: dict[int, dict[str, Any]] = {}  # pages added since load: id -> row without preview
        self._previews: dict[int, bytes] = {}  # ... and their previews until saved (bounded by pages added)

    # ------------------------------------------------------------------ persistence
    @classmethod
    def load(cls, folder: str | Path, model: Any = None, verify: bool = True) -> PageIndex:
        return cls.from_retriever(Retriever.load(folder, model, verify=verify), folder)

    @staticmethod
    def holds_pages(retriever: Retriever) -> bool:
        """Whether ``retriever`` (loaded with :meth:`Retriever.load`) is a page index's: its manifest has the
        ``"pages"`` field (then :meth:`from_retriever` opens it, or says what is wrong with it)."""
        return "pages" in retriever.fields

    @classmethod
    def from_retriever(cls, r: Retriever, folder: str | Path | None = None) -> PageIndex:
        """The page index whose boxes ``r`` holds (``r`` loaded from a page index folder, named ``folder`` in
        errors): IndexError_ when its manifest has no page table or a malformed ``"pages"`` field."""
        where = folder if folder is not None else "this index"
        info = r.fields.get("pages")
        if not isinstance(info, dict) or PAGES_FILE not in r.attachments:
            raise IndexError_(f"{where}: not a page index (no page table); build one with `sketchsearch pages index`")
        try:
            config = ProposalConfig.from_dict(dict(info.get("config") or {}))
        except (TypeError, ValueError) as e:
            manifest = Path(folder) / "manifest.json" if folder is not None else "the manifest"
            raise IndexError_(f"{manifest}: field 'pages.config' is not valid ({e})") from None
        return cls(r, config, PageStore(r.attachments[PAGES_FILE]))

    def save(self, folder: str | Path) -> None:
        """Write the index (boxes, codes, page table) atomically, like any index folder."""
        if self._writer is not None:
            path = self._writer.close()
            self._writer = None
        elif self.pages is not None:
            path = self.pages.path
        else:
            path = self._new_writer().close()
            self._writer = None
        self.retriever.attachments = {PAGES_FILE: path}
        self.retriever.fields = {
            "pages": {"config": self.config.to_dict(), "count": self.page_count, "boxes": len(self.retriever)}
        }
        self.retriever.save(folder)
        self.pages = PageStore(Path(folder) / PAGES_FILE)  # the saved table (save_index wrote it or raised)
        self.retriever.attachments = {PAGES_FILE: self.pages.path}
        self._added.clear()
        self._previews.clear()
        self.close()

    def close(self) -> None:
        """Drop the temporary page table of unsaved additions."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _new_writer(self) -> PageWriter:
        self._tmp = Path(tempfile.mkdtemp(prefix="sketchsearch-pages-"))
        weakref.finalize(self, shutil.rmtree, self._tmp, True)  # an index dropped unsaved leaves nothing behind
        w = PageWriter(self._tmp / PAGES_FILE)
        if self.pages is not None:
            w.copy_from(self.pages)
        self._writer = w
        return w

    # ------------------------------------------------------------------ pages
    @property
    def page_count(self) -> int:
        return (len(self.pages) if self.pages is not None and self._writer is None else 0) + (
            self._writer.count if self._writer is not None else 0
        )

    def page(self, page_id: int) -> dict[str, Any] | None:
        row = self._added.get(int(page_id))
        if row is None and self.pages is not None:
            row = self.pages.page(page_id)
        return row

    def preview(self, page_id: int) -> bytes | None:
        data = self._previews.get(int(page_id))
        if data is None and self.pages is not None:
            data = self.pages.preview(page_id)
        return data

    def preview_image(self, page_id: int) -> Image.Image | None:
        import io

        data = self.preview(page_id)
        return None if data is None else Image.open(io.BytesIO(data)).convert("RGB")

    def page_rows(self) -> list[dict[str, Any]]:
        rows = {r["id"]: r for r in self.pages.rows()} if self.pages is not None else {}
        rows.update(self._added)
        return [rows[i] for i in sorted(rows)]

    def _next_page_id(self) -> int:
        ids = [r["id"] for r in self.pages.rows()] if self.pages is not None else []
        return max([*ids, *self._added, -1]) + 1

    def add_pages(
        self,
        sources: Iterable[PageSource],
        *,
        strict: bool = False,
        on_error: Callable[[FormatError], None] | None = None,
        progress: Callable[[int, str], None] | None = None,
        metas: dict[str, Any] | None = None,
    ) -> PageReport:
        """Read, propose, crop, encode and add every page of ``sources`` (:func:`iter_pages`); a page that
        cannot be read is reported (``on_error``) and skipped, unless ``strict``. ``progress(pages done,
        source)`` after each page. ``metas``: page source -> a JSON object kept with the page (e.g. its truth).
        """
        rep = PageReport()
        t_start = time.perf_counter()
        writer = self._writer or self._new_writer()
        page_id = self._next_page_id()
        for source, read in sources:
            t0 = time.perf_counter()
            try:
                img = read()
            except FormatError as e:
                rep.skipped.append(str(e))
                report(e, strict, on_error)
                continue
            t1 = time.perf_counter()
            ink = page_ink(img, self.config)
            boxes, kinds = propose_boxes(ink, self.config)
            t2 = time.perf_counter()
            h, w = ink.shape
            if len(boxes):
                self.retriever.add(
                    self._box_inputs(ink, boxes),
                    sources=[source] * len(boxes),
                    metas=[
                        {"page": page_id, "box": [int(v) for v in b], "proposal": str(k)} for b, k in zip(boxes, kinds)
                    ],
                )
            t3 = time.perf_counter()
            preview = preview_jpeg(img)
            meta = (metas or {}).get(source) or {}
            writer.add(page_id, source, w, h, len(boxes), preview, meta)
            self._added[page_id] = {
                "id": page_id,
                "source": source,
                "width": w,
                "height": h,
                "boxes": len(boxes),
                "meta": meta,
            }
            self._previews[page_id] = preview
            rep.pages += 1
            rep.boxes += len(boxes)
            rep.read_s += t1 - t0
            rep.propose_s += t2 - t1
            rep.encode_s += t3 - t2
            page_id += 1
            if progress is not None:
                progress(rep.pages, source)
        rep.seconds = time.perf_counter() - t_start
        return rep

    def _box_inputs(self, ink: np.ndarray, boxes: np.ndarray) -> list[Any]:
        """What the encoder reads for each box: the crop of the ink (dark on white, as an uploaded drawing)
        or, for a model that reads stroke order, the page's traced strokes clipped to the box (see
        :func:`clip_strokes`): the page is traced once (about a second for 1000 x 1400 px) instead of every
        crop (10-20 ms each, thousands a page). A box whose clipped strokes are empty falls back to its crop."""
        if "points" not in self.retriever.method.preprocessing.inputs:
            return [crop(ink, b, CROP_PAD) for b in boxes]
        from ..data.trace import image_to_sketch
        from ..errors import InvalidSketchError

        try:
            page = image_to_sketch(ink, max_side=max(ink.shape))
        except InvalidSketchError:
            return [crop(ink, b, CROP_PAD) for b in boxes]
        out: list[Any] = []
        for b in boxes:
            clipped = clip_strokes(page.strokes, b)
            out.append(Sketch(clipped) if clipped else crop(ink, b, CROP_PAD))
        return out

    # ------------------------------------------------------------------ search
    def search(self, query: Query, k: int = 10, **kw: Any) -> list[PageHit]:
        return self.search_many([query], k, **kw)[0]

    def search_many(
        self,
        queries: Sequence[Query],
        k: int = 10,
        *,
        by_page: bool = False,
        nms_iou: float = 0.3,
        candidates: int | None = None,
    ) -> list[list[PageHit]]:
        """The best ``k`` boxes for each query after per-page non-maximum suppression (``by_page``: the best
        box of each of the best ``k`` pages). ``candidates``: boxes taken from the index before suppression
        (default max(200, 50 k), at most all)."""
        codes = self.retriever.encode(queries)
        return self.search_encoded(codes, k, by_page=by_page, nms_iou=nms_iou, candidates=candidates)

    def search_encoded(
        self,
        codes: np.ndarray,
        k: int = 10,
        *,
        by_page: bool = False,
        nms_iou: float = 0.3,
        candidates: int | None = None,
    ) -> list[list[PageHit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n = len(self.retriever)
        if n == 0:
            raise IndexError_("the page index holds no boxes: add pages before searching")
        m = min(n, candidates if candidates is not None else max(200, 50 * k))
        dist, ids = self.retriever.search_encoded(codes, m)
        out = []
        for d_row, i_row in zip(dist, ids):
            valid = i_row >= 0
            d_row, i_row = d_row[valid], i_row[valid]
            rows = self.retriever.item_meta(i_row.tolist())
            metas = [dict(rows.get(int(i), {}).get("meta") or {}) for i in i_row.tolist()]
            page = np.array([int(mm.get("page", -1)) for mm in metas], dtype=np.int64)
            boxes = np.array([mm.get("box", [0, 0, 0, 0]) for mm in metas], dtype=np.float64).reshape(-1, 4)
            # boxes of different pages must never suppress each other: place each page far to the right
            shifted = boxes + (page.astype(np.float64) * 1e7)[:, None] * np.array([1, 0, 1, 0])
            keep = nms(shifted, -d_row, nms_iou)  # best (smallest distance) first, ties by rank (id)
            hits: list[PageHit] = []
            seen: set[int] = set()
            for j in keep.tolist():
                if by_page:
                    if int(page[j]) in seen:
                        continue
                    seen.add(int(page[j]))
                row = self.page(int(page[j])) or {}
                hits.append(
                    PageHit(
                        rank=len(hits) + 1,
                        page=int(page[j]),
                        source=rows.get(int(i_row[j]), {}).get("source"),
                        box=tuple(int(v) for v in boxes[j]),  # type: ignore[arg-type]
                        distance=float(d_row[j]),
                        id=int(i_row[j]),
                        proposal=metas[j].get("proposal"),
                        page_size=(row["width"], row["height"]) if row else None,
                    )
                )
                if len(hits) == k:
                    break
            out.append(hits)
        return out

    # ------------------------------------------------------------------ pictures
    def draw(self, page_id: int, hits: Sequence[PageHit]) -> Image.Image:
        """The page's preview with the boxes of ``hits`` on it drawn (rank numbers beside them)."""
        img = self.preview_image(page_id)
        row = self.page(page_id)
        if img is None or row is None:
            raise IndexError_(f"no page {page_id} in this page index")
        return draw_boxes(img, [(h.box, str(h.rank)) for h in hits if h.page == page_id], (row["width"], row["height"]))


def clip_strokes(strokes: Sequence[np.ndarray], box: Sequence[int], margin: float = 1.0) -> list[np.ndarray]:
    """The parts of ``strokes`` (float (n, 2) x, y arrays, in page order) inside ``box`` (x0, y0, x1, y1,
    widened by ``margin`` pixels): each stroke cut where it leaves the box, runs of at least two points kept
    (a lone dot only when the whole stroke is one point), in the strokes' order."""
    x0, y0, x1, y1 = (float(v) for v in box)
    out: list[np.ndarray] = []
    for s in strokes:
        inside = (
            (s[:, 0] >= x0 - margin)
            & (s[:, 0] <= x1 - 1 + margin)
            & (s[:, 1] >= y0 - margin)
            & (s[:, 1] <= y1 - 1 + margin)
        )
        if not inside.any():
            continue
        if len(s) == 1:
            out.append(s)
            continue
        edges = np.flatnonzero(np.diff(np.r_[0, inside.astype(np.int8), 0]))
        for a, b in zip(edges[::2], edges[1::2]):
            if b - a >= 2:
                out.append(s[a:b])
    return out


def draw_boxes(
    img: Image.Image, boxes: Sequence[tuple[Sequence[int], str]], size: tuple[int, int], colour: str = "#d0021b"
) -> Image.Image:
    """``img`` (a page, maybe scaled) with ``boxes`` given in a ``size`` = (width, height) page's pixels drawn
    on it, each with its text."""
    out = img.convert("RGB").copy()
    sx, sy = out.width / size[0], out.height / size[1]
    draw = ImageDraw.Draw(out)
    width = max(2, round(out.width / 400))
    font = ImageFont.load_default(size=max(12, round(out.width / 60)))
    for box, text in boxes:
        x0, y0, x1, y1 = box
        r = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        draw.rectangle(r, outline=colour, width=width)
        if text:
            draw.text((r[0] + 2, max(0, r[1] - font.size - 4)), text, fill=colour, font=font)
    return out
