"""The settings of an audit (`audit`, `hf-memory audit`), checked once where they are built."""

from __future__ import annotations

from dataclasses import dataclass, field

from .._utils import HubConfigMixin, check_integer, check_number


DEFAULT_MAX_WINDOWS = 512
MAX_SEED = 2**32 - 1  # numpy's seeds, which transformers' set_seed reaches


@dataclass
class AuditConfig(HubConfigMixin):
    """Which windows an audit draws from the data and how it scores them: what `audit` and `hf-memory audit` take.

    Every field is also a keyword argument of `audit` and an option of `hf-memory audit` (with the same help text
    and default), and the whole config is what the audit's resume manifest and `results.json` record.

    Args:
        prefix_len: Tokens of each window given to the model.
        suffix_len: Tokens of each window the model must reproduce greedily.
        stride: Tokens between consecutive windows of a document; None tiles each document with non-overlapping
            windows (`prefix_len + suffix_len`).
        max_windows: Most windows scored, drawn uniformly with `seed`; None scores them all.
        batch_size: Windows per forward pass.
        ce_lr: Learning rate of the calibrated CE diagnostic's SGD step (> 0; used with a reference model).
        seed: Seed of the window draw.
        top_k: How many of the most extracted windows the report shows with their text.
        flush_every: Batches per chunk written to the resume folder: at most this many batches are scored again
            after an interruption.
        membership_attacks: With non-members (`non_members`, `--held-out`): the membership-inference attacks scored
            on every member and non-member window, from `hf_memory.membership.MEMBERSHIP_ATTACKS`; None: the
            one-pass attacks (`loss`, `zlib`, `min_k`, `min_k_plus_plus`) and `reference` with a reference model.
        membership_k: The fraction of lowest-scoring tokens Min-K% and Min-K%++ average, in (0, 1].
        membership_bootstrap: Bootstrap resamples of the membership AUC and TPR intervals (>= 100).
        sampling_temperature: Also measure extraction under sampling at this temperature (probabilistic extraction,
            `measure_extraction(temperature=...)`): a `log_p` column per window and `probabilistic_extraction`
            in the metrics and on the page. None measures greedy decoding only.
        sampling_top_k: With `sampling_temperature`, the k most likely tokens; None keeps all.
        sampling_top_p: With `sampling_temperature`, the nucleus sampling mass, in (0, 1].
        sampling_queries: With `sampling_temperature`, the samples an attacker draws per prefix (>= 1).
        sampling_min_probability: With `sampling_temperature`, the probability a window needs, in (0, 1).

    Raises:
        ValueError: If a count is not an integer in range, `ce_lr` is not a finite number > 0, or a membership
            setting is one `MembershipConfig` refuses.

    Examples:
        >>> AuditConfig(max_windows=None).stride is None
        True
    """

    config_name = "audit_config.json"

    prefix_len: int = field(
        default=32, metadata={"help": "Tokens of each window given to the model.", "aliases": ["--prefix"]}
    )
    suffix_len: int = field(
        default=32,
        metadata={"help": "Tokens of each window the model must reproduce greedily.", "aliases": ["--suffix"]},
    )
    stride: int | None = field(
        default=None,
        metadata={"help": "Tokens between consecutive windows of a document (default: prefix + suffix, no overlap)."},
    )
    max_windows: int | None = field(
        default=DEFAULT_MAX_WINDOWS,
        metadata={"help": "Most windows scored, drawn uniformly with --seed (None: every window)."},
    )
    batch_size: int = field(default=16, metadata={"help": "Windows per forward pass."})
    ce_lr: float = field(
        default=1e-5,
        metadata={"help": "Learning rate of the calibrated CE diagnostic's SGD step (with a reference model)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the window draw."})
    top_k: int = field(default=10, metadata={"help": "How many of the most extracted windows the report shows."})
    flush_every: int = field(
        default=8,
        metadata={
            "help": "Batches per chunk kept on disk while the audit runs (at most this many redone after a crash)."
        },
    )

    membership_attacks: list[str] | None = field(
        default=None,
        metadata={
            "help": "With --held-out: membership attacks to score (loss, zlib, min_k, min_k_plus_plus, reference, "
            "ce_diagnostic); default: the one-pass attacks, and reference with a reference model."
        },
    )
    membership_k: float = field(
        default=0.2,
        metadata={"help": "With --held-out: fraction of least likely tokens that Min-K and Min-K++ average."},
    )
    membership_bootstrap: int = field(
        default=1000, metadata={"help": "With --held-out: bootstrap resamples of the membership intervals (>= 100)."}
    )
    sampling_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Also measure extraction under sampling at this temperature (probabilistic extraction): the "
            "page says what share of windows sampling emits within --sampling-queries draws (default: greedy only)."
        },
    )
    sampling_top_k: int | None = field(
        default=None, metadata={"help": "With --sampling-temperature: the k most likely tokens (default: all)."}
    )
    sampling_top_p: float = field(
        default=1.0, metadata={"help": "With --sampling-temperature: nucleus sampling mass, in (0, 1]."}
    )
    sampling_queries: int = field(
        default=100, metadata={"help": "With --sampling-temperature: the samples an attacker draws per prefix."}
    )
    sampling_min_probability: float = field(
        default=0.5,
        metadata={"help": "With --sampling-temperature: the probability a window needs to count as extracted."},
    )

    def __post_init__(self):
        self.prefix_len = check_integer(self.prefix_len, "prefix_len", minimum=1)
        self.suffix_len = check_integer(self.suffix_len, "suffix_len", minimum=1)
        self.stride = check_integer(self.stride, "stride", minimum=1, allow_none=True)
        self.max_windows = check_integer(self.max_windows, "max_windows", minimum=1, allow_none=True)
        self.batch_size = check_integer(self.batch_size, "batch_size", minimum=1)
        self.ce_lr = check_number(self.ce_lr, "ce_lr", minimum=0, exclusive_minimum=True)
        self.seed = check_integer(self.seed, "seed", minimum=0, maximum=MAX_SEED)
        self.top_k = check_integer(self.top_k, "top_k", minimum=0)
        self.flush_every = check_integer(self.flush_every, "flush_every", minimum=1)
        from ..membership import MembershipConfig

        try:  # the membership capability's own checks, under the audit's names
            membership = MembershipConfig(attacks=self.membership_attacks, k=self.membership_k)
        except ValueError as err:
            message = str(err).replace("`attacks`", "`membership_attacks`").replace("`k`", "`membership_k`")
            raise ValueError(message) from None
        self.membership_attacks = None if membership.attacks is None else list(membership.attacks)
        self.membership_k = membership.k
        self.membership_bootstrap = check_integer(self.membership_bootstrap, "membership_bootstrap", minimum=100)
        from ..extraction import ExtractionConfig

        names = ("temperature", "top_k", "top_p", "queries", "min_probability")
        try:  # the extraction capability's own checks, under the audit's names
            sampling = ExtractionConfig(**{name: getattr(self, f"sampling_{name}") for name in names})
        except ValueError as err:
            message = str(err)
            for name in names:
                message = message.replace(f"`{name}`", f"`sampling_{name}`")
            raise ValueError(message) from None
        for name in names:
            setattr(self, f"sampling_{name}", getattr(sampling, name))

    @property
    def sampling(self) -> dict:
        """The probabilistic-extraction keywords of `measure_extraction` (`temperature`, `top_k`, ...)."""
        names = ("temperature", "top_k", "top_p", "queries", "min_probability")
        return {name: getattr(self, f"sampling_{name}") for name in names}

    @property
    def window_stride(self) -> int:
        """Tokens between consecutive windows: `stride`, or `prefix_len + suffix_len` when it is None."""
        return self.stride or self.prefix_len + self.suffix_len
