"""Binary codes, the index contract and its backends (Hamming and dense), and the on-disk index folder.

Every backend module is imported here so that it registers in :data:`~.base.INDEXES` (see
``base.py``). Heavy pieces load lazily: numba only on the first search of the ``"numba"`` backend,
faiss only when a faiss-backed index is first searched, pymilvus (and the embedded milvus-lite)
only when a ``"milvus"`` index first reaches its collection.
"""

from .base import IdStore, Index, create_index, list_indexes
from .codes import pack_bits, sign_to_codes, unpack_bits, validate_codes
from .dense import DenseIndex
from .hamming import MISSING_DISTANCE, HammingIndex, knn_hamming
from .mih import MultiIndexHashingIndex
from .milvus import MilvusHammingIndex
from .sharded import ShardedHammingIndex

__all__ = [
    "MISSING_DISTANCE",
    "DenseIndex",
    "HammingIndex",
    "IdStore",
    "Index",
    "MilvusHammingIndex",
    "MultiIndexHashingIndex",
    "ShardedHammingIndex",
    "create_index",
    "knn_hamming",
    "list_indexes",
    "pack_bits",
    "sign_to_codes",
    "unpack_bits",
    "validate_codes",
]
