"""MemFree decoding (Ippolito et al., INLG 2023): an n-gram index of the training data, and a `LogitsProcessor`
that forbids any token completing one of its n-grams, so a model that memorized cannot emit its training text
verbatim (near-verbatim text still comes out: measure both). The Bloom-filter mode needs the `memfree` extra."""

from .config import MEMFREE_MODES, NgramIndexConfig
from .index import NgramIndex
from .processor import MEMFREE_FALLBACKS, MemFreeLogitsProcessor


__all__ = [
    "MEMFREE_FALLBACKS",
    "MEMFREE_MODES",
    "MemFreeLogitsProcessor",
    "NgramIndex",
    "NgramIndexConfig",
]
