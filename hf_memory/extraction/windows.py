"""Cut token sequences into fixed-length extraction windows (prefix + suffix)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from .._utils import iter_sequences


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

    Examples:
        >>> windows, index, skipped = extraction_windows([list(range(10)), [1, 2]], 3, 2, stride=4)
        >>> [w.tolist() for w in windows], index, skipped
        ([[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]], [(0, 0), (0, 4)], 1)
    """
    stream = WindowStream(sequences, prefix_len, suffix_len, stride)
    cut = list(stream)
    if stream.num_sequences == 0:
        raise ValueError("`sequences` is empty: give at least one sequence of token ids.")
    return [window for _, _, window in cut], [(seq, start) for seq, start, _ in cut], stream.num_skipped


class WindowStream:
    """The extraction windows of `sequences`, cut lazily in input order: iterate for `(sequence, start, window)`.

    Nothing is read before iteration starts and only one sequence is held at a time, so the input may be a
    generator, a streamed `datasets.IterableDataset` or a `Dataset` larger than memory. `num_skipped` and
    `num_sequences` count as the stream is consumed.

    Args:
        sequences: Anything `hf_memory._utils.iter_sequences` takes: token id sequences, a 2-D tensor, a `Dataset`
            or `IterableDataset` with `input_ids`, or any iterable of id sequences or row dicts.
        prefix_len: Tokens of each window's prefix.
        suffix_len: Tokens of each window's suffix.
        stride: Start a window every `stride` tokens; None cuts one window per sequence, at its start.

    Examples:
        >>> stream = WindowStream(iter([list(range(10)), [1, 2]]), 3, 2, stride=4)
        >>> [(i, start, w.tolist()) for i, start, w in stream], stream.num_skipped
        ([(0, 0, [0, 1, 2, 3, 4]), (0, 4, [4, 5, 6, 7, 8])], 1)
    """

    def __init__(self, sequences: Iterable, prefix_len: int, suffix_len: int, stride: int | None = None) -> None:
        self.sequences, self.length, self.stride = sequences, prefix_len + suffix_len, stride
        self.num_skipped = 0
        self.num_sequences = 0

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        self.num_skipped = self.num_sequences = 0
        for i, seq in enumerate(iter_sequences(self.sequences)):
            self.num_sequences += 1
            if len(seq) < self.length:
                self.num_skipped += 1
                continue
            starts = range(0, len(seq) - self.length + 1, self.stride) if self.stride else [0]
            for start in starts:
                yield i, start, seq[start : start + self.length]
