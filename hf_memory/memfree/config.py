"""`NgramIndexConfig`: which n-grams of a corpus the MemFree index holds, and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .._utils import HubConfigMixin, check_choice, check_integer, check_number


MEMFREE_MODES = ("bloom", "exact")
MAX_HASH_SEED = 2**63 - 1


@dataclass
class NgramIndexConfig(HubConfigMixin):
    """The settings of an `NgramIndex`: the n-gram order, the storage, its false-positive rate and its hash seed.

    Args:
        n: Length of the indexed n-grams in tokens (>= 2). The guard forbids the token that would complete an
            indexed n-gram, so the longest verbatim run it lets through is n - 1 tokens.
        mode: "bloom" (a Bloom filter from the `memfree` extra: about 1.2 bytes per key at a 1% false-positive rate,
            false positives possible, no false negatives) or "exact" (sorted 64-bit hashes of the (n-1)-token
            prefixes with their next tokens: 12 bytes per distinct n-gram, no false positive short of a 64-bit hash
            collision). "exact" is for small corpora and for checking "bloom" against ground truth.
        false_positive_rate: For "bloom": the probability that a probe of a key that was never added says present,
            in (0, 1). An n-gram that is not in the corpus is forbidden at most this often (less when its prefix is
            not in the corpus either). Ignored by "exact".
        hash_seed: Seed of the n-gram hash (an integer in [0, 2**63 - 1]); the hash is the same in every process
            and on every machine. Indexes of one corpus with different seeds have independent false positives.
        capacity: For "bloom": the number of distinct n-grams to size the filter for, so that a corpus streams
            straight into it; None counts them first (holding 24 bytes per n-gram of the corpus in memory while
            building). Ignored by "exact".

    Examples:
        >>> config = NgramIndexConfig(n=8, mode="exact")
        >>> NgramIndexConfig.from_dict(config.to_dict()) == config
        True
    """

    config_name: ClassVar[str] = "memfree_config.json"

    n: int = field(default=10, metadata={"help": "Length of the indexed n-grams in tokens (>= 2)."})
    mode: str = field(
        default="bloom",
        metadata={
            "help": "'bloom' (a Bloom filter, false positives possible) or 'exact' (hashes of every n-gram).",
            "choices": list(MEMFREE_MODES),
        },
    )
    false_positive_rate: float = field(
        default=0.01, metadata={"help": "For 'bloom': the false-positive rate of one probe, in (0, 1)."}
    )
    hash_seed: int = field(default=0, metadata={"help": "Seed of the n-gram hash (an integer >= 0)."})
    capacity: int | None = field(
        default=None,
        metadata={"help": "For 'bloom': distinct n-grams to size the filter for; None counts them first."},
    )

    def __post_init__(self):
        self.n = check_integer(self.n, "n", minimum=2, hint="tokens per indexed n-gram")
        check_choice(self.mode, "mode", MEMFREE_MODES)
        self.false_positive_rate = check_number(
            self.false_positive_rate,
            "false_positive_rate",
            minimum=0.0,
            maximum=1.0,
            exclusive_minimum=True,
            exclusive_maximum=True,
        )
        self.hash_seed = check_integer(self.hash_seed, "hash_seed", minimum=0, maximum=MAX_HASH_SEED)
        self.capacity = check_integer(
            self.capacity, "capacity", minimum=1, allow_none=True, hint="distinct n-grams the filter is sized for"
        )
