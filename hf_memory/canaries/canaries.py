"""Random canaries from a config, and their insertion into a training corpus at chosen repetition counts."""

from __future__ import annotations

import random
import sys

from .._utils import check_integer
from .config import CanaryConfig


def make_canaries(config: CanaryConfig, num_canaries: int, seed: int = 0) -> list[str]:
    """`num_canaries` distinct random secrets of the config's space, drawn uniformly (seeded).

    Fresh canaries drawn with another seed are the natural non-members of a membership test: the same distribution
    as the inserted ones, never trained on. (Two draws may share a secret: remove the overlap if it matters.)

    Args:
        config: The canary format.
        num_canaries: How many secrets, from 1 to the size of the space.
        seed: The random seed.

    Returns:
        The secrets (strings of `config.length` symbols); `config.text(secret)` is a canary's text.

    Raises:
        TypeError: If `config` is not a `CanaryConfig`.
        ValueError: If `num_canaries` is not an integer from 1 to `config.space_size`, or `seed` is not an integer >= 0.

    Examples:
        >>> make_canaries(CanaryConfig(length=4), 3, seed=0)
        ['6311', '6890', '0663']
    """
    if not isinstance(config, CanaryConfig):
        raise TypeError(f"`config` must be a CanaryConfig, got {type(config).__name__}.")
    num_canaries = check_integer(num_canaries, "num_canaries", minimum=1, maximum=config.space_size)
    seed = check_integer(seed, "seed", minimum=0)
    rng = random.Random(seed)
    if config.space_size <= sys.maxsize:
        chosen = rng.sample(range(config.space_size), num_canaries)  # distinct, without building the space
    else:  # beyond a machine-sized range: draw until distinct (a repeat is then all but impossible)
        chosen, seen = [], set()
        while len(chosen) < num_canaries:
            index = rng.randrange(config.space_size)
            if index not in seen:
                seen.add(index)
                chosen.append(index)
    base = len(config.alphabet)
    out = []
    for index in chosen:
        symbols = []
        for _ in range(config.length):
            index, digit = divmod(index, base)
            symbols.append(config.alphabet[digit])
        out.append("".join(reversed(symbols)))
    return out


def insert_canaries(texts, canaries, repetitions, seed: int = 0, column: str = "text"):
    """The corpus with each canary text added `repetitions` times, as separate documents at random places (seeded).

    Args:
        texts: A list of strings, or a `datasets.Dataset` with a string column `column`.
        canaries: The canary texts to insert (e.g. `[config.text(s) for s in make_canaries(config, 3)]`).
        repetitions: Copies of each canary: one integer >= 1 for all, or one per canary (e.g. `[1, 4, 16]`).
        seed: The random seed of the places.
        column: The text column of a `Dataset` (other columns of an inserted row are None).

    Returns:
        A new list (or `Dataset`) of the texts and the canary copies; the input is not changed.

    Raises:
        ValueError: If `texts` is not a list of strings or a `Dataset` with the string column `column`, a canary is not
            a string, `repetitions` is neither an integer >= 1 nor one such integer per canary, or `seed` is bad.

    Examples:
        >>> insert_canaries(["a", "b"], ["my PIN is 0042"], repetitions=2, seed=0)
        ['a', 'my PIN is 0042', 'b', 'my PIN is 0042']
    """
    seed = check_integer(seed, "seed", minimum=0)
    if isinstance(canaries, str) or not isinstance(canaries, (list, tuple)) or not canaries:
        raise ValueError(f"`canaries` must be a non-empty list of canary texts, got {canaries!r:.80}.")
    for i, canary in enumerate(canaries):
        if not isinstance(canary, str) or not canary:
            raise ValueError(f"`canaries[{i}]` must be a non-empty string, got {canary!r:.80}.")
    if isinstance(repetitions, (list, tuple)):
        if len(repetitions) != len(canaries):
            raise ValueError(
                f"`repetitions` gives {len(repetitions)} counts for {len(canaries)} canaries: give one per canary."
            )
        counts = [check_integer(r, f"repetitions[{i}]", minimum=1) for i, r in enumerate(repetitions)]
    else:
        counts = [check_integer(repetitions, "repetitions", minimum=1)] * len(canaries)
    copies = [canary for canary, count in zip(canaries, counts) for _ in range(count)]

    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        datasets = None
    if datasets is not None and isinstance(texts, datasets.Dataset):
        if column not in texts.column_names:
            raise ValueError(f"`texts` has no column {column!r} (columns: {texts.column_names}).")
        rows = texts.to_list()
        others = [name for name in texts.column_names if name != column]
        new = [{column: canary, **dict.fromkeys(others)} for canary in copies]
        return datasets.Dataset.from_list(_shuffled_in(rows, new, seed), features=texts.features)
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise ValueError(f"`texts` must be a list of strings or a datasets.Dataset, got {type(texts).__name__}.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"`texts[{i}]` must be a string, got {type(text).__name__}.")
    return _shuffled_in(list(texts), copies, seed)


def _shuffled_in(rows: list, new: list, seed: int) -> list:
    """`rows` in their order with the `new` items put at uniformly random places."""
    rng = random.Random(seed)
    total = len(rows) + len(new)
    places = set(rng.sample(range(total), len(new)))
    rows_iter, new_iter = iter(rows), iter(new)
    return [next(new_iter) if i in places else next(rows_iter) for i in range(total)]
