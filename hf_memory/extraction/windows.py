"""Cut token sequences into fixed-length extraction windows (prefix + suffix)."""

from __future__ import annotations

from .._utils import as_sequences


def extraction_windows(sequences, prefix_len: int, suffix_len: int, stride: int | None = None):
    """Cut fixed-length windows (prefix + suffix) every `stride` tokens; returns (windows, index, num_skipped)."""
    length = prefix_len + suffix_len
    windows, index, skipped = [], [], 0
    for i, seq in enumerate(as_sequences(sequences)):
        if len(seq) < length:
            skipped += 1
            continue
        starts = range(0, len(seq) - length + 1, stride) if stride else [0]
        for start in starts:
            windows.append(seq[start : start + length])
            index.append((i, start))
    return windows, index, skipped
