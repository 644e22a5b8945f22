"""`MembershipConfig`: which membership-inference attacks `membership_scores` runs, and how it reads documents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from .._utils import HubConfigMixin, check_bool, check_choice, check_integer, check_number


# From one forward pass of the target model: every one of these comes from the same logits.
ONE_PASS_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
# Every score column `membership_scores` can produce: `reference` needs a reference model (one more forward pass),
# `ce_diagnostic` runs the calibrated CE diagnostic (an SGD step per sequence) and is computed only when asked.
MEMBERSHIP_ATTACKS = (*ONE_PASS_ATTACKS, "reference", "ce_diagnostic")


@dataclass
class MembershipConfig(HubConfigMixin):
    """How `membership_scores` scores each document.

    Every score it returns follows one sign convention: **higher = more likely a member** (a training document).

    Args:
        attacks: The score columns to compute, from `MEMBERSHIP_ATTACKS`; None: the four one-pass attacks (`zlib`
            only where the text is known: text data, or token ids with a tokenizer to decode them) and `reference`
            when a reference model is given. `ce_diagnostic` is computed only when listed.
        k: The fraction of lowest-scoring tokens Min-K% and Min-K%++ average, in (0, 1]; 0.2 as both papers.
        max_tokens: Tokens of each document that are scored (>= 2). Longer documents are cut to their first
            `max_tokens` tokens, or, with `windows=True`, scored whole in windows of `max_tokens` tokens.
        windows: Score long documents whole: consecutive windows of `max_tokens` tokens, each starting on the last
            token of the one before, so that every token after the first is predicted exactly once (with the
            context of its own window); the attacks then pool the tokens of all windows of a document.
        batch_size: Rows per forward pass (>= 1).
        read_ahead: Documents read at a time (>= 1); they are sorted by length into batches and their scores
            returned in input order. Memory grows with it, not with the number of documents.
        add_special_tokens: Tokenize text as the tokenizer does by default (a BOS token where it adds one, so that
            the first word is scored too), as the MIMIR and Min-K%++ code do.
        text_column: The column holding the text in a `datasets.Dataset` / `IterableDataset` or in row dicts.
        ce_lr: The SGD learning rate of the `ce_diagnostic` column (> 0; 1e-5 as the official diagnostic).
        ce_steps: SGD steps per sequence of the `ce_diagnostic` column (>= 1).

    Examples:
        >>> config = MembershipConfig(attacks=["loss", "min_k"], k=0.1)
        >>> config.attacks, MembershipConfig.from_dict(config.to_dict()) == config
        (('loss', 'min_k'), True)
    """

    config_name: ClassVar[str] = "membership_config.json"

    attacks: Sequence[str] | None = field(
        default=None,
        metadata={
            "help": "Score columns to compute (loss, zlib, min_k, min_k_plus_plus, reference, ce_diagnostic); "
            "None: the one-pass attacks, and reference when a reference model is given."
        },
    )
    k: float = field(default=0.2, metadata={"help": "Fraction of lowest tokens Min-K% and Min-K%++ average."})
    max_tokens: int = field(default=512, metadata={"help": "Tokens of each document scored (>= 2)."})
    windows: bool = field(
        default=False, metadata={"help": "Score long documents whole, in windows of max_tokens tokens."}
    )
    batch_size: int = field(default=8, metadata={"help": "Rows per forward pass."})
    read_ahead: int = field(default=256, metadata={"help": "Documents read and length-sorted at a time."})
    add_special_tokens: bool = field(
        default=True, metadata={"help": "Tokenize text with the tokenizer's special tokens (its default)."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text in datasets and row dicts."})
    ce_lr: float = field(default=1e-5, metadata={"help": "SGD learning rate of the ce_diagnostic column."})
    ce_steps: int = field(default=1, metadata={"help": "SGD steps per sequence of the ce_diagnostic column."})

    def __post_init__(self):
        if self.attacks is not None:
            if isinstance(self.attacks, (str, bytes)) or not hasattr(self.attacks, "__iter__"):
                raise ValueError(
                    f"`attacks` must be a list of names from {list(MEMBERSHIP_ATTACKS)} or None, got {self.attacks!r}."
                )
            attacks = tuple(check_choice(name, "attacks", MEMBERSHIP_ATTACKS) for name in self.attacks)
            if not attacks:
                raise ValueError(f"`attacks` must name at least one of {list(MEMBERSHIP_ATTACKS)} (or be None).")
            if len(set(attacks)) != len(attacks):
                raise ValueError(f"`attacks` names an attack twice: {list(attacks)}.")
            self.attacks = attacks
        self.k = check_number(self.k, "k", minimum=0, maximum=1, exclusive_minimum=True, hint="a fraction of tokens")
        self.max_tokens = check_integer(self.max_tokens, "max_tokens", minimum=2, hint="tokens scored per document")
        self.windows = check_bool(self.windows, "windows")
        self.batch_size = check_integer(self.batch_size, "batch_size", minimum=1)
        self.read_ahead = check_integer(self.read_ahead, "read_ahead", minimum=1)
        self.add_special_tokens = check_bool(self.add_special_tokens, "add_special_tokens")
        if not isinstance(self.text_column, str) or not self.text_column:
            raise ValueError(f"`text_column` must be a column name (a non-empty string), got {self.text_column!r}.")
        self.ce_lr = check_number(self.ce_lr, "ce_lr", minimum=0, exclusive_minimum=True)
        self.ce_steps = check_integer(self.ce_steps, "ce_steps", minimum=1)
