"""Seeded 64-bit hashes of token n-grams, the same in every process and on every machine (never Python's `hash`).

An n-gram is hashed in two parts: its (n - 1)-token prefix, and then its last token mixed into the prefix's hash.
The prefix's hash is a sum (mod 2**64) of one mixed value per position, `mix(token + salt[position])`, with
seed-dependent position salts, passed through splitmix64's finalizer once more: order matters, and a whole batch of
contexts is hashed with a handful of numpy calls (a chain through the positions would cost a call per token, which
dominates the guard's cost on small batches). The index keys all derive from the prefix's hash, so the guard hashes
each row's last n - 1 tokens once per step and derives the keys of every candidate next token from that number.
"""

from __future__ import annotations

import functools

import numpy as np


_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Salts keep the kinds of key apart: a prefix key never equals a bucket key or an n-gram key of the same numbers.
_SEED_SALT = np.uint64(0x632BE59BD9B4E019)
_PREFIX_SALT = np.uint64(0x85EBCA77C2B2AE63)
_BUCKET_SALT = np.uint64(0xC2B2AE3D27D4EB4F)
_NGRAM_SALT = np.uint64(0x165667B19E3779F9)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer applied elementwise to a uint64 array (a bijection with full avalanche).

    Args:
        x: A uint64 array of at least one dimension (numpy warns on overflow of 0-d scalars, not of arrays).
    """
    x = x ^ (x >> _S30)
    x = x * _MUL1
    x ^= x >> _S27
    x *= _MUL2
    x ^= x >> _S31
    return x


def _as_uint64(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64)


@functools.lru_cache(maxsize=64)
def _salts(seed: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The seed's start value (1 element) and one salt per position (read-only)."""
    start = mix64(np.array([seed], dtype=np.uint64) ^ _SEED_SALT)
    salts = mix64(start + _GOLDEN * np.arange(1, width + 1, dtype=np.uint64))
    start.flags.writeable = salts.flags.writeable = False
    return start, salts


def context_hashes(contexts: np.ndarray, seed: int) -> np.ndarray:
    """The hash of each row of `contexts` (one (n - 1)-token prefix per row).

    Args:
        contexts: Token ids, shape (rows, n - 1), non-negative.
        seed: The index's hash seed.

    Returns:
        uint64 array of shape (rows,).
    """
    columns = _as_uint64(contexts)
    start, salts = _salts(int(seed), columns.shape[1])
    return mix64(mix64(columns + salts).sum(axis=1, dtype=np.uint64) ^ start)


def flat_prefix_hashes(flat: np.ndarray, width: int, seed: int) -> np.ndarray:
    """The hash of every `width`-token run of `flat`, at each start 0 .. len(flat) - width (the same numbers
    `context_hashes` gives for those runs as rows).

    Args:
        flat: 1-D token ids.
        width: Tokens per run (n - 1).
        seed: The index's hash seed.
    """
    tokens = _as_uint64(flat)
    start, salts = _salts(int(seed), width)
    count = len(flat) - width + 1
    total = np.zeros(count, dtype=np.uint64)
    for j in range(width):
        total += mix64(tokens[j : j + count] + salts[j])
    return mix64(total ^ start)


def prefix_keys(prefix_hashes: np.ndarray) -> np.ndarray:
    """The filter key saying "some indexed n-gram starts with this prefix"."""
    return mix64(prefix_hashes ^ _PREFIX_SALT)


def bucket_keys(prefix_hashes: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """The filter key saying "some indexed n-gram with this prefix ends in a token of this bucket" (broadcast)."""
    return mix64(prefix_hashes ^ mix64(_as_uint64(buckets) + _BUCKET_SALT))


def ngram_keys(prefix_hashes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The filter key of the n-gram (prefix, token) (broadcast)."""
    return mix64(prefix_hashes ^ mix64(_as_uint64(tokens) + _NGRAM_SALT))
