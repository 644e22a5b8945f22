"""Cut token sequences into fixed-length extraction windows (prefix + suffix), and draw a seeded sample of them in
one pass."""

from __future__ import annotations

import random
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .._utils import check_integer, check_number, iter_sequences


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
        ValueError: If `prefix_len` or `suffix_len` is not a positive integer, `stride` is not an integer >= 0 or
            None, or `sequences` is empty or holds something other than integer token ids.

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
        stride: Start a window every `stride` tokens; None or 0 cuts one window per sequence, at its start.
        name: The argument's name in error messages.

    Raises:
        ValueError: If `prefix_len` or `suffix_len` is not a positive integer, or `stride` is not an integer >= 0 or
            None (at construction; the items are checked as they are read).

    Examples:
        >>> stream = WindowStream(iter([list(range(10)), [1, 2]]), 3, 2, stride=4)
        >>> [(i, start, w.tolist()) for i, start, w in stream], stream.num_skipped
        ([(0, 0, [0, 1, 2, 3, 4]), (0, 4, [4, 5, 6, 7, 8])], 1)
    """

    def __init__(
        self, sequences: Iterable, prefix_len: int, suffix_len: int, stride: int | None = None, name: str = "sequences"
    ) -> None:
        prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
        suffix_len = check_integer(suffix_len, "suffix_len", minimum=1)
        stride = check_integer(stride, "stride", minimum=0, allow_none=True, hint="0 or None: one window per sequence")
        self.sequences, self.length, self.stride, self.name = sequences, prefix_len + suffix_len, stride, name
        self.num_skipped = 0
        self.num_sequences = 0
        self.longest = 0

    def __iter__(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        self.num_skipped = self.num_sequences = self.longest = 0
        for i, seq in enumerate(iter_sequences(self.sequences, self.name)):
            self.num_sequences += 1
            self.longest = max(self.longest, len(seq))
            if len(seq) < self.length:
                self.num_skipped += 1
                continue
            starts = range(0, len(seq) - self.length + 1, self.stride) if self.stride else [0]
            for start in starts:
                yield i, start, seq[start : start + self.length]


@dataclass
class WindowSample:
    """A seeded sample of extraction windows, with counts of what the pass over the data saw.

    Attributes:
        windows: The sampled windows, a (num_windows, prefix_len + suffix_len) int64 tensor, in input order.
        index: Per window, `(sequence index, start token)`: where in the data it was cut.
        num_sequences: Sequences read.
        num_skipped: Sequences shorter than one window (they give none).
        num_candidates: Windows cut from all sequences, before sampling.
        candidates_per_sequence: Per sequence read, the windows cut from it before sampling (0 for a short one).
    """

    windows: torch.Tensor
    index: list[tuple[int, int]]
    num_sequences: int
    num_skipped: int
    num_candidates: int
    candidates_per_sequence: Sequence[int] = ()

    def mostly_unscored(self, share: float = 0.5) -> list[tuple[int, int, int]]:
        """The sequences of which more than `share` of the windows were left out of the sample.

        Args:
            share: The share of a sequence's windows left out above which it is listed, in [0, 1).

        Returns:
            `(sequence index, windows cut from it, windows kept)` per such sequence, the least covered first (ties
            in input order).

        Examples:
            >>> sample = sample_windows([list(range(40)), list(range(5)), [1]], 3, 2, stride=5, max_windows=3)
            >>> sample.candidates_per_sequence.tolist(), sample.mostly_unscored()  # 8, 1 and no window; 3 drawn
            ([8, 1, 0], [(1, 1, 0), (0, 8, 3)])
        """
        share = check_number(share, "share", minimum=0, maximum=1, exclusive_maximum=True)
        kept: dict[int, int] = {}
        for seq, _ in self.index:
            kept[seq] = kept.get(seq, 0) + 1
        left = [
            (seq, cut, kept.get(seq, 0))
            for seq, cut in enumerate(self.candidates_per_sequence)
            if cut and cut - kept.get(seq, 0) > share * cut
        ]
        return sorted(left, key=lambda item: item[2] / item[1])

    def coverage_warning(self, label=None, name: str = "max_windows") -> str | None:
        """One line saying which sequences a cap on the sample left mostly unscored, or None if none was.

        Args:
            label: A callable giving a sequence's name from its index (a file name); None: "sequence 3".
            name: How the cap is named to the reader (`max_windows`, `--max-windows`).

        Returns:
            The line, naming up to three sequences and the share of their windows left out, or None.

        Examples:
            >>> sample = sample_windows([list(range(40))], 3, 2, stride=5, max_windows=2)
            >>> sample.coverage_warning(name="--max-windows")[:74]
            '--max-windows=2 leaves most of 1 document unscored: sequence 0 (6 of its 8'
        """
        left = self.mostly_unscored()
        if not left:
            return None
        label = label or (lambda seq: f"sequence {seq}")
        shown = ", ".join(
            f"{label(seq)} ({cut - kept} of its {cut} windows, {100 * (cut - kept) / cut:.0f}%, unscored)"
            for seq, cut, kept in left[:3]
        )
        more = f", and {len(left) - 3} more" if len(left) > 3 else ""
        documents = f"{len(left)} document{'s' if len(left) > 1 else ''}"
        kept = len(self.index)
        return (
            f"{name}={kept} leaves most of {documents} unscored: {shown}{more}; {kept} of {self.num_candidates} "
            f"windows are scored. Raise {name} (None: every window) to cover them."
        )


def sample_windows(
    sequences: Iterable,
    prefix_len: int,
    suffix_len: int,
    stride: int | None = None,
    max_windows: int | None = None,
    seed: int = 0,
    name: str = "sequences",
) -> WindowSample:
    """Cut the extraction windows of `sequences` and keep a uniform sample of `max_windows`, in one pass.

    Reservoir sampling (Vitter's algorithm R) with a generator of its own seeded by `seed`: the data is read once and
    only the kept windows are held, so a generator or a streamed `IterableDataset` works and memory does not grow with
    the data. The same data and seed give the same sample; every window is equally likely to be kept. The sample is
    returned in input order. `MemorizationCallback` and `audit` draw their windows with it.

    Args:
        sequences: Anything `WindowStream` takes: token id sequences, a 2-D tensor, a `Dataset` or `IterableDataset`
            with `input_ids`, or any finite iterable of id sequences or row dicts.
        prefix_len: Tokens of each window's prefix.
        suffix_len: Tokens of each window's suffix.
        stride: Cut a window every `stride` tokens of each sequence; None cuts one window per sequence, at its start.
        max_windows: Most windows kept; None keeps every window.
        seed: Seed of the draw; the global random generators are never drawn from.
        name: The argument's name in error messages.

    Returns:
        The `WindowSample`.

    Raises:
        ValueError: If a length, `stride`, `max_windows` or `seed` is out of range, `sequences` is empty or not token
            ids, or no sequence holds `prefix_len + suffix_len` tokens (naming `name`).

    Examples:
        >>> sample = sample_windows([list(range(10)), list(range(20, 30)), [1]], 3, 2, stride=5, max_windows=3)
        >>> sample.windows.shape, sample.num_candidates, sample.num_skipped
        (torch.Size([3, 5]), 4, 1)
        >>> sample.index == sorted(sample.index)  # kept in input order
        True
    """
    prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
    suffix_len = check_integer(suffix_len, "suffix_len", minimum=1)
    stride = check_integer(stride, "stride", minimum=1, allow_none=True)
    max_windows = check_integer(max_windows, "max_windows", minimum=1, allow_none=True)
    seed = check_integer(seed, "seed", minimum=0)
    stream = WindowStream(sequences, prefix_len, suffix_len, stride, name)
    rng = random.Random(seed)
    kept: list[tuple[int, int, torch.Tensor]] = []
    seen = 0
    per_sequence = array("q")  # windows cut per sequence: 8 bytes per document, whatever the data's size
    for item in stream:
        while len(per_sequence) < stream.num_sequences:
            per_sequence.append(0)
        per_sequence[item[0]] += 1
        if max_windows is None or len(kept) < max_windows:
            kept.append(item)
        else:
            slot = rng.randrange(seen + 1)
            if slot < max_windows:
                kept[slot] = item
        seen += 1
    if stream.num_sequences == 0:
        raise ValueError(f"`{name}` is empty: give at least one sequence of token ids.")
    if not kept:
        raise ValueError(
            f"No sequence of `{name}` has prefix_len + suffix_len = {prefix_len + suffix_len} tokens (the longest "
            f"has {stream.longest}): lower `prefix_len` / `suffix_len` or give longer sequences."
        )
    kept.sort(key=lambda item: item[:2])
    return WindowSample(
        windows=torch.stack([window for _, _, window in kept]),
        index=[(seq, start) for seq, start, _ in kept],
        num_sequences=stream.num_sequences,
        num_skipped=stream.num_skipped,
        num_candidates=seen,
        candidates_per_sequence=per_sequence + array("q", bytes(8 * (stream.num_sequences - len(per_sequence)))),
    )
