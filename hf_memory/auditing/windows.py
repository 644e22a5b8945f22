"""Which windows an audit scores: every `stride`-th window of every document, sampled down to `max_windows`."""

from __future__ import annotations

import random

import torch


def candidate_windows(lengths: list[int], length: int, stride: int) -> list[tuple[int, int]]:
    """`(document, start)` of every window of `length` tokens cut every `stride` tokens, in document order.

    Args:
        lengths: Tokens per document.
        length: Tokens per window (prefix + suffix).
        stride: Tokens between the starts of consecutive windows of one document.

    Returns:
        The windows' positions; a document shorter than `length` gives none.
    """
    return [(doc, start) for doc, n in enumerate(lengths) for start in range(0, n - length + 1, stride)]


def sample_windows(candidates: list[tuple[int, int]], max_windows: int | None, seed: int) -> list[tuple[int, int]]:
    """At most `max_windows` of `candidates`, drawn uniformly with `seed` and kept in document order.

    Args:
        candidates: The `(document, start)` of every window that could be scored.
        max_windows: How many to keep; None keeps all.
        seed: Seed of the draw: the same seed gives the same windows.

    Returns:
        The kept windows, in the order of `candidates`.
    """
    if max_windows is None or len(candidates) <= max_windows:
        return list(candidates)
    keep = sorted(random.Random(seed).sample(range(len(candidates)), max_windows))
    return [candidates[i] for i in keep]


def cut_windows(documents: list[torch.Tensor], positions: list[tuple[int, int]], length: int) -> torch.Tensor:
    """The windows at `positions`, stacked into one (windows, length) tensor of token ids.

    Args:
        documents: The documents' token ids, one 1-D tensor each.
        positions: `(document, start)` per window.
        length: Tokens per window.

    Returns:
        The stacked windows.
    """
    return torch.stack([documents[doc][start : start + length] for doc, start in positions])
