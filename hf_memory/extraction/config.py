"""The settings of an extraction run (`measure_extraction`, `hf-memory measure`), checked once where they are built."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._utils import HubConfigMixin, check_choice, check_integer


EXTRACTION_METHODS = ("auto", "prefix", "generate")


@dataclass
class ExtractionConfig(HubConfigMixin):
    """How windows are cut from the data and decoded: what `measure_extraction` and `hf-memory measure` take.

    Every field is also a keyword argument of `measure_extraction` and an option of `hf-memory measure` (with the
    same help text and default), and the whole config is what a results folder's manifest records.

    Args:
        prefix_len: Tokens of each window given to the model.
        suffix_len: Tokens of each window the model must reproduce greedily.
        stride: Cut a window every `stride` tokens of each sequence; None cuts one window per sequence, at its start.
        batch_size: Windows per forward pass.
        method: "auto" (the true suffix verified from the KV cache, greedy decoding where it diverges: the rows of
            `generate` at about the cost of one forward where text is memorized), "prefix" (verification only: exact
            match and longest common prefix are exact, predictions stop at the first wrong token) or "generate"
            (plain batched greedy `generate`, the reference).
        flush_every: With a results folder, batches per Parquet shard: at most this many batches are redone after
            a crash.

    Raises:
        ValueError: If a length, `stride`, `batch_size` or `flush_every` is not a positive integer, or `method` is
            not one of `EXTRACTION_METHODS`.

    Examples:
        >>> ExtractionConfig(prefix_len=50, suffix_len=50).to_dict()["method"]
        'auto'
    """

    config_name = "extraction_config.json"

    prefix_len: int = field(
        default=32, metadata={"help": "Tokens of each window given to the model.", "aliases": ["--prefix"]}
    )
    suffix_len: int = field(
        default=32,
        metadata={"help": "Tokens of each window the model must reproduce greedily.", "aliases": ["--suffix"]},
    )
    stride: int | None = field(
        default=None,
        metadata={"help": "Cut a window every STRIDE tokens of each document (default: one window per document)."},
    )
    batch_size: int = field(default=64, metadata={"help": "Windows per forward pass."})
    method: str = field(
        default="auto",
        metadata={
            "help": "auto: verify the true suffix from the KV cache, decode greedily where it diverges; prefix: "
            "exact match and longest common prefix only (cheapest); generate: plain batched greedy generate.",
            "choices": list(EXTRACTION_METHODS),
        },
    )
    flush_every: int = field(
        default=16,
        metadata={
            "help": "With a results folder: batches per Parquet shard (at most this many redone after a crash)."
        },
    )

    def __post_init__(self):
        self.prefix_len = check_integer(self.prefix_len, "prefix_len", minimum=1)
        self.suffix_len = check_integer(self.suffix_len, "suffix_len", minimum=1)
        self.stride = check_integer(self.stride, "stride", minimum=1, allow_none=True)
        self.batch_size = check_integer(self.batch_size, "batch_size", minimum=1)
        self.method = check_choice(self.method, "method", EXTRACTION_METHODS)
        self.flush_every = check_integer(self.flush_every, "flush_every", minimum=1)

    @property
    def window_len(self) -> int:
        """Tokens of one window: `prefix_len + suffix_len`."""
        return self.prefix_len + self.suffix_len
