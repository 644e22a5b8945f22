"""The settings of an extraction run (`measure_extraction`, `hf-memory measure`), checked once where they are built."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._utils import HubConfigMixin, check_choice, check_integer, check_number
from .probabilistic import SamplingConfig


EXTRACTION_METHODS = ("auto", "prefix", "generate")


@dataclass
class ExtractionConfig(HubConfigMixin):
    """How windows are cut from the data and decoded: what `measure_extraction` and `hf-memory measure` take.

    Every field is also a keyword argument of `measure_extraction` and an option of `hf-memory measure` (with the
    same help text and default), and the whole config is what a results folder's manifest records.

    Args:
        prefix_len: Tokens of each window given to the model.
        suffix_len: Tokens of each window the model must reproduce greedily.
        stride: Cut a window every `stride` tokens of each sequence; None cuts one window per sequence, at its start
            (`hf-memory measure` reads None as `prefix_len + suffix_len`: every window, as `audit` cuts them).
        batch_size: Windows per forward pass.
        method: "auto" (the true suffix verified from the KV cache, greedy decoding where it diverges: the rows of
            `generate` at about the cost of one forward where text is memorized), "prefix" (verification only: exact
            match and longest common prefix are exact, predictions stop at the first wrong token) or "generate"
            (plain batched greedy `generate`, the reference).
        temperature: Also measure extraction under sampling at this temperature (probabilistic extraction, Hayes
            et al. 2024): per window, `log p` of sampling the suffix after the prefix, from one teacher-forced
            pass, and the share of windows extracted within `queries` samples with probability >= `min_probability`
            (`probabilistic_extraction`). None measures greedy decoding only.
        top_k: With `temperature`, sample from the `top_k` most likely tokens; None (or 0) keeps all.
        top_p: With `temperature`, the nucleus sampling mass, in (0, 1]; 1 keeps all.
        queries: With `temperature`, the samples an attacker draws per prefix (n >= 1).
        min_probability: With `temperature`, the extraction probability a window needs to count, in (0, 1).
        flush_every: With a results folder, batches per Parquet shard: at most this many batches are redone after
            a crash.

    Raises:
        ValueError: If a length, `stride`, `batch_size`, `queries` or `flush_every` is not a positive integer,
            `method` is not one of `EXTRACTION_METHODS`, or the sampling settings are refused by `SamplingConfig`
            (`top_k` / `top_p` without a `temperature`; `min_probability` outside (0, 1)).

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
        metadata={
            "help": "Tokens between consecutive windows of a document (default: prefix + suffix, every window of the "
            "document with no overlap, as hf-memory audit cuts them; measure_extraction(stride=None) cuts one window "
            "per sequence)."
        },
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
    temperature: float | None = field(
        default=None,
        metadata={
            "help": "Also measure extraction under sampling at this temperature (probabilistic extraction, Hayes et "
            "al. 2024): per window, the probability that sampling emits the suffix, from one teacher-forced pass "
            "(default: greedy only)."
        },
    )
    top_k: int | None = field(
        default=None, metadata={"help": "With --temperature: sample from the k most likely tokens (default: all)."}
    )
    top_p: float = field(
        default=1.0, metadata={"help": "With --temperature: nucleus sampling mass, in (0, 1] (1: all tokens)."}
    )
    queries: int = field(
        default=100,
        metadata={
            "help": "With --temperature: the samples an attacker draws per prefix (the n of (n, p)-extraction)."
        },
    )
    min_probability: float = field(
        default=0.5,
        metadata={
            "help": "With --temperature: a window counts as extracted when the suffix comes out within --queries "
            "samples with at least this probability (the p of (n, p)-extraction), in (0, 1)."
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
        self.queries = check_integer(self.queries, "queries", minimum=1)
        self.min_probability = check_number(
            self.min_probability, "min_probability", minimum=0, maximum=1, exclusive_minimum=True,
            exclusive_maximum=True,
        )  # fmt: skip
        if self.temperature is None:
            if self.top_k is not None or self.top_p != 1.0:
                raise ValueError(
                    f"`top_k` and `top_p` take effect with a `temperature` (got top_k={self.top_k}, "
                    f"top_p={self.top_p}, temperature=None): give the temperature the deployment samples at."
                )
        else:
            sampling = self.sampling
            self.temperature, self.top_k, self.top_p = sampling.temperature, sampling.top_k, sampling.top_p

    @property
    def sampling(self) -> SamplingConfig | None:
        """The sampling scheme of the probabilistic measurement (`SamplingConfig`), or None when there is none."""
        if self.temperature is None:
            return None
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

    @property
    def window_len(self) -> int:
        """Tokens of one window: `prefix_len + suffix_len`."""
        return self.prefix_len + self.suffix_len
