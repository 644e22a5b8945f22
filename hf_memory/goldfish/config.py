"""`GoldfishConfig`: which labels the goldfish loss drops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from .._utils import HubConfigMixin, check_choice, check_integer


GOLDFISH_STRATEGIES = ("hash", "hash-table", "hash-avalanche", "static")

# Upper bounds. `k`: the "hash" strategy's keys are below 2**31 - 1, so a larger k cannot drop fewer labels (and past
# 2**63 the mask's int64 arithmetic overflows). `h`: the mask costs h passes over every batch, and a label is only
# dropped once h tokens of its document precede it, so a window wider than the documents drops nothing; 1024 leaves
# room far above the paper's 13. `start`: an offset in tokens ("static" drops nothing in a document shorter than it).
MAX_K = 2**31 - 1
MAX_H = 1024
MAX_START = 2**31 - 1


def check_goldfish_settings(
    k: int, h: int, strategy: str, start: int, names: tuple[str, str, str, str] = ("k", "h", "strategy", "start")
) -> tuple[int, int, str, int]:
    """Check the four goldfish settings; return them as plain Python values.

    Args:
        k: Drop about 1 in `k` labels (an integer from 2 to `MAX_K` = 2**31 - 1).
        h: Width of the hashed window (an integer from 1 to `MAX_H` = 1024).
        strategy: One of `GOLDFISH_STRATEGIES`.
        start: Offset of the first dropped label for "static" (an integer from 0 to `MAX_START` = 2**31 - 1).
        names: The argument names shown in error messages (e.g. the `goldfish_*` training arguments).

    Returns:
        `(k, h, strategy, start)`, the integers as Python `int` (numpy integer scalars are accepted).

    Raises:
        ValueError: On the first bad setting, naming it and its allowed values.
    """
    k_name, h_name, strategy_name, start_name = names
    k = check_integer(k, k_name, minimum=2, maximum=MAX_K, hint="drop about 1 in k tokens; the hashes have 31 bits")
    h = check_integer(
        h, h_name, minimum=1, maximum=MAX_H, hint="hash context width in tokens; each costs a pass over the batch"
    )
    check_choice(strategy, strategy_name, GOLDFISH_STRATEGIES)
    start = check_integer(start, start_name, minimum=0, maximum=MAX_START, hint="offset in tokens")
    return k, h, strategy, start


@dataclass
class GoldfishConfig(HubConfigMixin):
    """Which labels the goldfish loss drops.

    Args:
        k: Drop about 1 in `k` labels from the loss (2 <= k <= 2**31 - 1: the hashes have 31 bits).
        h: Width of the hashed token window that decides each drop (1 <= h <= 1024: the mask costs h passes over
            the batch, and no label is dropped before h tokens of its document).
        strategy: "hash" (order-sensitive, portable), "hash-table" or "hash-avalanche" (the official code's two
            hashed strategies, bit-compatible with it) or "static" (every k-th label).
        start: Offset of the first dropped label for "static".
        exempt_token_ids: Target token ids that are never dropped (e.g. special tokens); each from 0 to 2**63 - 1.
        hash_table_device: Device whose random generator builds the "hash-table" table; None = the input's device
            (as the official code).

    Raises:
        ValueError: If a setting is outside its allowed values (named with them), when the config is built.

    Examples:
        >>> config = GoldfishConfig(k=4, h=13)
        >>> GoldfishConfig.from_dict(config.to_dict()) == config
        True
    """

    config_name: ClassVar[str] = "goldfish_config.json"

    k: int = field(default=4, metadata={"help": "Drop about 1 in k labels from the loss (2 <= k <= 2**31 - 1)."})
    h: int = field(
        default=13, metadata={"help": "Width of the hashed token window that decides each drop (1 <= h <= 1024)."}
    )
    strategy: str = field(
        default="hash",
        metadata={
            "help": "'hash' (order-sensitive, portable), 'hash-table' or 'hash-avalanche' (the official code's two "
            "hashed strategies, bit-compatible with it) or 'static' (every k-th label).",
            "choices": list(GOLDFISH_STRATEGIES),
        },
    )
    start: int = field(default=0, metadata={"help": "Offset of the first dropped label for 'static'."})
    exempt_token_ids: Sequence[int] = field(
        default=(), metadata={"help": "Target token ids that are never dropped (e.g. special tokens)."}
    )
    hash_table_device: str | None = field(
        default="cpu",
        metadata={"help": "Device whose RNG builds the 'hash-table' table; None = the input's device (official)."},
    )

    def __post_init__(self):
        self.k, self.h, self.strategy, self.start = check_goldfish_settings(self.k, self.h, self.strategy, self.start)
        if isinstance(self.exempt_token_ids, (str, bytes)) or not hasattr(self.exempt_token_ids, "__iter__"):
            raise ValueError(f"`exempt_token_ids` must be a list of integer token ids, got {self.exempt_token_ids!r}.")
        ids = [
            check_integer(i, "exempt_token_ids", minimum=0, maximum=2**63 - 1, hint="each one a token id")
            for i in self.exempt_token_ids
        ]
        self.exempt_token_ids = tuple(sorted(set(ids)))
        if self.hash_table_device is not None:
            import torch

            try:
                device = torch.device(self.hash_table_device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"`hash_table_device` must be a torch device name ('cpu', 'cuda', ...) or None (the input's "
                    f"device), got {self.hash_table_device!r}."
                ) from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError("`hash_table_device` is 'cuda' but CUDA is not available: use 'cpu' or None.")
            self.hash_table_device = str(device)
