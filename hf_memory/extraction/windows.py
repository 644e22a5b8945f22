"""Cut token sequences into fixed-length extraction windows (prefix + suffix)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from .._utils import as_sequences


if TYPE_CHECKING:
    import datasets


def extraction_windows(
    sequences: Sequence[Sequence[int]] | torch.Tensor | datasets.Dataset,
    prefix_len: int,
    suffix_len: int,
    stride: int | None = None,
) -> tuple[list[torch.Tensor], list[tuple[int, int]], int]:
    """Cut fixed-length windows (prefix + suffix) every `stride` tokens; returns (windows, index, num_skipped).

    Args:
        sequences: Token id sequences (lists, 1-D tensors, a 2-D tensor) or a `datasets.Dataset` with `input_ids`.
        prefix_len: Tokens of each window's prefix.
        suffix_len: Tokens of each window's suffix; a window holds `prefix_len + suffix_len` tokens.
        stride: Start a window every `stride` tokens (while a whole window fits); None or 0 cuts one window per
            sequence, at its start.

    Returns:
        `(windows, index, num_skipped)`: the windows as 1-D int64 tensors, `(sequence index, start token)` of each
        window, and the number of sequences shorter than one window (they give none).

    Raises:
        ValueError: If `sequences` is empty or holds something other than integer token ids.

    Example:
        >>> windows, index, skipped = extraction_windows([list(range(10)), [1, 2]], 3, 2, stride=4)
        >>> [w.tolist() for w in windows], index, skipped
        ([[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]], [(0, 0), (0, 4)], 1)
    """
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
