"""Search drawings inside document pages: box proposals, page indexes, page + box answers.

See :mod:`sketchsearch.pages.index` (the page index), :mod:`sketchsearch.pages.proposals` (where marks may
be) and :mod:`sketchsearch.pages.store` (the page table)."""

from .index import PageHit, PageIndex, PageReport, draw_boxes, iter_pages, measure_config
from .proposals import ProposalConfig, box_iou, crop, nms, page_ink, propose_boxes, steps_from_invariance

__all__ = [
    "PageHit",
    "PageIndex",
    "PageReport",
    "ProposalConfig",
    "box_iou",
    "crop",
    "draw_boxes",
    "iter_pages",
    "measure_config",
    "nms",
    "page_ink",
    "propose_boxes",
    "steps_from_invariance",
]
