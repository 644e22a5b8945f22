"""Where the index keeps its keys: a Bloom filter from fastbloom-rs (the `memfree` extra), or sorted exact hashes.

fastbloom-rs was chosen by measurement against rbloom and pybloomfiltermmap3 (`benchmarks/memfree_overhead.py`,
table in docs/memfree.md): the same bits per key, the fastest build, and the only one with batched lookups, which
the guard needs (one call per decoding step for all rows).
"""

from __future__ import annotations

import math

import numpy as np

from .._utils import require_extra


BLOOM_LIBRARY = "fastbloom-rs"
_CHUNK = 1 << 20  # keys handed to the filter per call: bounds the Python list fastbloom-rs takes


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(BLOOM_LIBRARY)
    except PackageNotFoundError:  # pragma: no cover - require_extra ran first
        return "unknown"


class BloomStore:
    """A Bloom filter of uint64 keys (fastbloom-rs), with batched adds and lookups on numpy arrays.

    Args:
        bloom: A `fastbloom_rs.BloomFilter`.
        num_hashes: How many bit positions each key sets (fastbloom-rs needs it to rebuild a filter from bytes).
    """

    def __init__(self, bloom, num_hashes: int):
        self.bloom = bloom
        self.num_hashes = num_hashes

    @classmethod
    def create(cls, capacity: int, false_positive_rate: float) -> BloomStore:
        """An empty filter sized for `capacity` keys at `false_positive_rate`."""
        require_extra("memfree", "The MemFree Bloom-filter index (mode='bloom')")
        from fastbloom_rs import FilterBuilder

        bloom = FilterBuilder(max(int(capacity), 1), false_positive_rate).build_bloom_filter()
        return cls(bloom, int(bloom.hashes()))

    @classmethod
    def from_bytes(cls, data: bytes, num_hashes: int) -> BloomStore:
        """A filter from the bytes `to_bytes` gave (no pickle)."""
        require_extra("memfree", "The MemFree Bloom-filter index (mode='bloom')")
        from fastbloom_rs import BloomFilter

        return cls(BloomFilter.from_bytes(data, num_hashes), num_hashes)

    @staticmethod
    def library_version() -> str:
        """The installed fastbloom-rs version (recorded with a saved filter)."""
        return _library_version()

    def add(self, keys: np.ndarray) -> None:
        """Add uint64 keys."""
        signed = np.ascontiguousarray(keys, dtype=np.uint64).view(np.int64).ravel()
        for start in range(0, len(signed), _CHUNK):
            self.bloom.add_int_batch(signed[start : start + _CHUNK].tolist())

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Whether each uint64 key may have been added (False is certain, True wrong at the false-positive rate);
        the same shape as `keys`."""
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        signed = np.ascontiguousarray(keys).view(np.int64).ravel().tolist()
        # check_type=False: the keys come from numpy int64 (.tolist() gives ints), and the per-element
        # isinstance check fastbloom-rs makes otherwise costs more than the lookups
        found = self.bloom.contains_int_batch(signed, check_type=False)
        return np.array(found, dtype=bool).reshape(keys.shape)

    def to_bytes(self) -> bytes:
        """The filter's bit array."""
        return bytes(self.bloom.get_bytes())

    @property
    def num_bits(self) -> int:
        """Bits in the filter."""
        return 8 * len(self.bloom.get_bytes())

    def expected_false_positive_rate(self, num_keys: int) -> float:
        """The false-positive rate of one probe once `num_keys` distinct keys are in: (1 - e^(-k n / m))^k."""
        return (1.0 - math.exp(-self.num_hashes * num_keys / max(self.num_bits, 1))) ** self.num_hashes

    def estimated_keys(self) -> int:
        """fastbloom-rs's estimate of how many distinct keys are in (from the bits set); very large for a saturated
        filter."""
        estimate = float(self.bloom.estimate_set_cardinality())
        return int(estimate) if math.isfinite(estimate) else 2**62


class ExactStore:
    """The distinct n-grams as two sorted arrays: the 64-bit hash of each (n - 1)-token prefix, and its next token.

    Args:
        prefixes: uint64 prefix hashes, sorted (ties ordered by token).
        tokens: The next token of each n-gram (uint32), aligned with `prefixes`.
    """

    def __init__(self, prefixes: np.ndarray, tokens: np.ndarray):
        self.prefixes = prefixes
        self.tokens = tokens

    @classmethod
    def from_pairs(cls, prefixes: np.ndarray, tokens: np.ndarray) -> ExactStore:
        """Sort the (prefix hash, next token) pairs and drop repeats."""
        order = np.lexsort((tokens, prefixes))
        prefixes, tokens = prefixes[order], tokens[order]
        keep = np.ones(len(prefixes), dtype=bool)
        keep[1:] = (prefixes[1:] != prefixes[:-1]) | (tokens[1:] != tokens[:-1])
        return cls(np.ascontiguousarray(prefixes[keep]), np.ascontiguousarray(tokens[keep], dtype=np.uint32))

    def successors(self, prefix_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(rows, tokens)`: every indexed next token of each prefix hash (row i of the input)."""
        low = np.searchsorted(self.prefixes, prefix_hashes, side="left")
        high = np.searchsorted(self.prefixes, prefix_hashes, side="right")
        counts = high - low
        if not counts.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = np.repeat(np.arange(len(prefix_hashes)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return rows, self.tokens[np.repeat(low, counts) + offsets].astype(np.int64)

    def contains(self, prefix_hashes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Whether each (prefix hash, token) pair is indexed."""
        rows, successors = self.successors(prefix_hashes)
        found = np.zeros(len(prefix_hashes), dtype=bool)
        found[rows[successors == np.asarray(tokens, dtype=np.int64)[rows]]] = True
        return found

    @property
    def num_ngrams(self) -> int:
        return len(self.prefixes)

    @property
    def nbytes(self) -> int:
        return self.prefixes.nbytes + self.tokens.nbytes
