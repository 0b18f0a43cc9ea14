"""Binary codes, Hamming and dense indexes, and the on-disk index folder.

Heavy pieces load lazily: numba only on the first search of the ``"sketchsearch"`` backend, faiss
only when a faiss-backed index is built.
"""

from .codes import pack_bits, sign_to_codes, unpack_bits, validate_codes
from .hamming import MISSING_DISTANCE, HammingIndex, create_index, knn_hamming, list_indexes

__all__ = [
    "MISSING_DISTANCE",
    "HammingIndex",
    "create_index",
    "knn_hamming",
    "list_indexes",
    "pack_bits",
    "sign_to_codes",
    "unpack_bits",
    "validate_codes",
]
