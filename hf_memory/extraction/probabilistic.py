"""Probabilistic extraction (Hayes et al., 2024): how likely sampling emits a window's true suffix, from one pass.

A deployed model samples. For a window (prefix + suffix), the probability `p` that the deployed decoding emits the
exact suffix after the prefix is the product over suffix positions of the sampling distribution's probability of the
true token, every position conditioned on the true tokens before it: the logits of one teacher-forced forward give
all of them. The sampling distribution is the one `generate(do_sample=True, ...)` draws from: the logits divided by
the temperature, then top-k, then top-p (transformers' logits warpers, in that order), renormalized; a true token
outside the kept set has probability 0 (`log p = -inf`). Greedy decoding is the limit: `p` is 1 when every true
token is the argmax, else 0, exactly what greedy exact match counts.

From `log p`: the probability of extracting the suffix within `n` queries, `1 - (1 - p)^n`; the queries needed to
reach a given probability; and over windows, the share that is (n, p)-extractable (Hayes et al.'s "(n, p)-
discoverable extraction") and its curve over `n`. Everything is computed in log space (`log1p` / `expm1`), so
`p = 1e-30` or `p = 1 - 1e-12` keep their digits.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from .._utils import (
    HubConfigMixin,
    as_token_ids,
    check_bool,
    check_integer,
    check_number,
    check_vocabulary,
    eval_mode,
    is_prompt_learning,
    model_device,
    supports_logits_to_keep,
)


_FIRST_K = 64  # top-p: candidates looked at first per row (grown eightfold while the kept set may reach further)
_CHUNK_ELEMENTS = 1 << 24  # logits rows warped at a time: (rows x vocab) <= 16M floats (64 MiB in float32)
# on a CPU, rows warped a few at a time (4 MiB of float32 logits) stay in cache from one operation to the next and
# reuse the allocator's buffers: temperature alone went from 0.23 s to 0.12 s on 16 windows of SmolLM2 (32-token
# suffixes; the forward took 3.3 s)
_CHUNK_ELEMENTS_CPU = 1 << 20
_LOG_ROUNDING = 1e-6  # log p up to this far above 0 is rounding of p = 1


@dataclass
class SamplingConfig(HubConfigMixin):
    """The decoding a deployed model samples with: temperature, then top-k, then top-p, as `generate` applies them.

    `temperature=None` is greedy decoding (the limit of temperature -> 0): the extraction probability of a window is
    then 1 when greedy decoding reproduces its suffix and 0 otherwise. `generate_kwargs()` gives the matching
    `model.generate` arguments.

    Attributes:
        temperature: The softmax temperature (> 0), or None for greedy decoding. A temperature below about 1e-3 is
            greedy in all but name.
        top_k: Keep only the `top_k` most likely tokens (and any tied with the last of them, as transformers does);
            None or 0 keeps all. Note that `generate` uses `top_k=50` when the caller and the model's generation
            config set none: give `top_k=50` to measure that default.
        top_p: Keep the smallest set of most likely tokens whose probability reaches `top_p` (nucleus sampling), in
            (0, 1]; 1 keeps all.

    Raises:
        ValueError: If `temperature` is <= 0 (use None for greedy decoding) or not a finite number, `top_k` is not an
            integer >= 0 or None, `top_p` is outside (0, 1], or greedy decoding is given a `top_k` or `top_p` (it
            ignores them).
    """

    config_name: ClassVar[str] = "sampling_config.json"

    temperature: float | None = field(
        default=1.0, metadata={"help": "softmax temperature (> 0); None for greedy decoding"}
    )
    top_k: int | None = field(default=None, metadata={"help": "keep the k most likely tokens; None or 0 keeps all"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass in (0, 1]; 1 keeps all"})

    def __post_init__(self):
        temperature = self.temperature
        if getattr(temperature, "ndim", None) == 0 and hasattr(temperature, "item"):
            temperature = temperature.item()
        if (
            isinstance(temperature, numbers.Real)
            and not isinstance(temperature, bool)
            and not math.isnan(temperature)
            and temperature <= 0
        ):
            raise ValueError(
                f"`temperature` must be > 0, got {temperature!r}: a temperature of 0 is greedy decoding, which "
                "SamplingConfig writes `temperature=None` (use greedy)."
            )
        self.temperature = check_number(
            temperature, "temperature", minimum=0, exclusive_minimum=True, allow_none=True, hint="None for greedy"
        )
        top_k = check_integer(self.top_k, "top_k", minimum=0, allow_none=True, hint="None or 0 keeps all tokens")
        self.top_k = None if top_k == 0 else top_k
        self.top_p = check_number(self.top_p, "top_p", minimum=0, maximum=1, exclusive_minimum=True)
        if self.temperature is None and (self.top_k is not None or self.top_p < 1):
            raise ValueError(
                "Greedy decoding (`temperature=None`) keeps only the most likely token: it takes no `top_k` or "
                f"`top_p` (got top_k={self.top_k}, top_p={self.top_p}). Give a temperature to sample."
            )

    @property
    def greedy(self) -> bool:
        """Whether this is greedy decoding (`temperature=None`)."""
        return self.temperature is None

    def generate_kwargs(self) -> dict:
        """The `model.generate` keyword arguments that sample from this distribution (no other processor assumed).

        Examples:
            >>> SamplingConfig(temperature=0.7, top_k=40).generate_kwargs()
            {'do_sample': True, 'temperature': 0.7, 'top_k': 40, 'top_p': 1.0}
            >>> SamplingConfig(temperature=None).generate_kwargs()
            {'do_sample': False}
        """
        if self.greedy:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_k": self.top_k or 0, "top_p": self.top_p}


def _check_logits(logits, suffix_ids) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        kind = f"a tensor of dtype {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"`logits` must be a floating-point tensor of shape (batch, suffix_len, vocab), got {kind}.")
    if logits.dim() != 3:
        raise ValueError(
            f"`logits` must have shape (batch, suffix_len, vocab), got a {logits.dim()}-D tensor of shape "
            f"{tuple(logits.shape)}."
        )
    ids = as_token_ids(suffix_ids, "suffix_ids", dims=(2,))
    if tuple(ids.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"`suffix_ids` has shape {tuple(ids.shape)}, but `logits` has {tuple(logits.shape[:2])} (batch, "
            "suffix_len): logits[:, i] must be the logits that predict suffix_ids[:, i]."
        )
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"`logits` holds no suffix token (shape {tuple(logits.shape)}).")
    vocab = logits.shape[2]
    if vocab == 0 or int(ids.max()) >= vocab:
        raise ValueError(
            f"`suffix_ids` holds token id {int(ids.max())}, outside the logits' vocabulary of {vocab} "
            f"(ids 0 to {vocab - 1})."
        )
    return logits, ids.to(logits.device)


def _warped_log_probs(rows: torch.Tensor, targets: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """log P(target) of each row (shape (rows,), float64) under the sampling distribution of `config`.

    The warped logits z = (x - max) / T are the distribution of generate's x / T with no overflow at tiny
    temperatures. z is monotone in x, so the top-k and top-p candidates are taken from x and only they are
    transformed: apart from the row maxima, one pass over the rows computes the normalizer (without top-k) or none
    does (with it: the k values are all that can be sampled)."""
    x = rows.float()  # generate warps float32 logits
    top = x.max(-1, keepdim=True).values  # a NaN or +inf anywhere in a row is its maximum: one pass checks all
    if torch.isnan(top).any() or torch.isposinf(top).any():
        raise ValueError("`logits` hold NaN or +inf: the model's output is broken (overflow in half precision?).")
    if torch.isneginf(top).any():
        raise ValueError("A row of `logits` is -inf everywhere: no token can be sampled there.")
    if config.greedy:  # greedy takes the first of tied maxima (argmax), as generate does
        hit = x.argmax(-1) == targets
        return torch.where(hit, 0.0, -math.inf).double()
    temperature, vocab = config.temperature, x.shape[-1]

    def warp(values: torch.Tensor, at: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        return (values - top[at]) / temperature

    x_target = x.gather(-1, targets.unsqueeze(-1))
    z_target = warp(x_target).squeeze(-1).double()
    kth = candidates = complete = None
    if config.top_k is not None and config.top_k < vocab:
        k = config.top_k
        values = x.topk(k + 1, dim=-1).values  # descending; the (k+1)-th shows a tie with the k-th
        kth = values[:, k - 1 : k]
        complete = values[:, k] < values[:, k - 1]  # no tie: the k values are all that is left to sample
        candidates = warp(values[:, :k])
        z_target = torch.where((x_target >= kth).squeeze(-1), z_target, -math.inf)  # ties with the k-th are kept
        lse = torch.logsumexp(candidates, -1).double()
        tied = torch.nonzero(~complete).flatten()
        if tied.numel():  # every token tied with the k-th is kept, as TopKLogitsWarper keeps them
            z = warp(x[tied], tied).masked_fill_(x[tied] < kth[tied], -math.inf)
            lse[tied] = torch.logsumexp(z, -1).double()
    else:
        z = x - top
        if temperature != 1:
            z.div_(temperature)
        lse = torch.logsumexp(z, -1).double()
        del z
    if config.top_p >= 1:
        return z_target - lse
    # Top-p keeps a token when the probability of the tokens above it is < top_p (TopPLogitsWarper removes a token
    # when the mass below it and itself is <= 1 - top_p: the same set). The kept tokens are found among the k most
    # likely, k grown while a row's kept set may reach past its k-th token: no sort over the whole vocabulary.
    mass = torch.empty(len(x), dtype=torch.float64, device=x.device)
    threshold = torch.empty(len(x), dtype=torch.float32, device=x.device)
    todo = torch.arange(len(x), device=x.device)
    k = min(_FIRST_K, vocab)
    while todo.numel():
        if candidates is not None:  # top-k's values, sorted already (every row is still to do)
            values, k, candidates = candidates, candidates.shape[1], None
        else:
            raw = (x if len(todo) == len(x) else x[todo]).topk(k, dim=-1).values  # descending
            values = warp(raw, todo)
            if kth is not None:
                values = values.masked_fill(raw < kth[todo], -math.inf)
        probs = (values.double() - lse[todo].unsqueeze(-1)).exp()
        above = probs.cumsum(-1) - probs
        kept = above < config.top_p
        kept[:, 0] = True  # the most likely token is always kept (min_tokens_to_keep=1)
        # a row is done when its kept set ends before its k-th token, or nothing past it has any probability
        done = ~kept[:, -1] | torch.isneginf(values[:, -1]) if k < vocab else torch.ones_like(kept[:, -1])
        if complete is not None:
            done, complete = done | complete, None
        n = kept[done].sum(-1)
        rows_done = todo[done]
        mass[rows_done] = probs[done].cumsum(-1).gather(-1, (n - 1).unsqueeze(-1)).squeeze(-1)
        threshold[rows_done] = values[done].gather(-1, (n - 1).unsqueeze(-1)).squeeze(-1)
        todo = todo[~done]
        k = min(8 * k, vocab)
    # a true token tied with the last kept one counts as kept (transformers' choice among exact ties follows its
    # sort order; ties of float logits at the boundary are measure-zero in practice)
    kept_target = z_target >= threshold.double()
    log_p = z_target - lse - mass.log()
    return torch.where(kept_target, log_p, torch.full_like(log_p, -math.inf))


def suffix_log_probs(
    logits: torch.Tensor,
    suffix_ids,
    config: SamplingConfig | None = None,
    temperature: float | None = SamplingConfig.temperature,
    top_k: int | None = SamplingConfig.top_k,
    top_p: float = SamplingConfig.top_p,
    per_token: bool = False,
) -> torch.Tensor:
    """`log p` of each window: the log-probability that sampling emits its true suffix, from teacher-forced logits.

    `p` is the product over suffix positions of the probability of the true token under the sampling distribution
    (logits / temperature, then top-k, then top-p, renormalized: what `generate(do_sample=True, ...)` draws from),
    each position conditioned on the true tokens before it. A true token outside the kept set gives `p = 0`
    (`-inf`). With greedy decoding (`temperature=None`), `log p` is 0 where the true token is the argmax at every
    position (greedy exact match) and -inf elsewhere. Logits are warped in float32, as `generate` does, a few
    thousand rows at a time.

    Args:
        logits: Shape `(batch, suffix_len, vocab)`: `logits[:, i]` are the logits that predict `suffix_ids[:, i]`
            (a teacher-forced forward's logits at positions `prefix_len - 1 ... prefix_len + suffix_len - 2`).
        suffix_ids: The true suffix tokens, shape `(batch, suffix_len)`.
        config: A `SamplingConfig`; or give its fields (`temperature`, `top_k`, `top_p`) as keywords.
        temperature: The softmax temperature (> 0), or None for greedy decoding.
        top_k: Keep the k most likely tokens (ties with the k-th kept too); None or 0 keeps all.
        top_p: Nucleus mass in (0, 1]; 1 keeps all.
        per_token: Return the per-position log-probabilities, shape `(batch, suffix_len)`, instead of their sums.

    Returns:
        A float64 tensor on the CPU: `log p` per window, shape `(batch,)` (values in [-inf, 0]), or per position.

    Raises:
        TypeError: If `config` is not a `SamplingConfig`.
        ValueError: If a setting is bad (see `SamplingConfig`), `logits` is not a 3-D floating-point tensor, holds
            NaN or +inf or a row that is -inf everywhere, `suffix_ids` does not match its first two dimensions or
            holds an id outside its vocabulary, or there is no suffix token.

    Examples:
        >>> logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]]])  # one window, a suffix of 2 tokens
        >>> suffix_log_probs(logits, [[0, 1]], temperature=None)  # greedy: both true tokens are the argmax
        tensor([0.], dtype=torch.float64)
        >>> suffix_log_probs(logits, [[1, 1]], temperature=1.0, top_k=1)  # token 1 is not the top one at position 0
        tensor([-inf], dtype=torch.float64)
        >>> round(suffix_log_probs(logits, [[0, 1]]).exp().item(), 4)  # softmax(2, 1, 0)[0] * softmax(0, 3, 0)[1]
        0.605
    """
    config = SamplingConfig.from_arguments(
        config, {"temperature": temperature, "top_k": top_k, "top_p": top_p}, "`suffix_log_probs`"
    )
    per_token = check_bool(per_token, "per_token")
    logits, ids = _check_logits(logits, suffix_ids)
    batch, suffix_len, vocab = logits.shape
    rows, targets = logits.reshape(-1, vocab), ids.reshape(-1)
    step = max(1, (_CHUNK_ELEMENTS_CPU if rows.device.type == "cpu" else _CHUNK_ELEMENTS) // vocab)
    out = torch.cat(
        [_warped_log_probs(rows[i : i + step], targets[i : i + step], config) for i in range(0, len(rows), step)]
    )
    out = out.clamp(max=0.0).reshape(batch, suffix_len).cpu()  # log p a hair above 0 is rounding of p = 1
    return out if per_token else out.sum(-1)


def _check_windows(model, windows, prefix_len) -> tuple[torch.Tensor, int]:
    windows = as_token_ids(windows, "windows", dims=(2,))
    if windows.shape[0] == 0:
        raise ValueError("`windows` holds no window (its first dimension is 0).")
    prefix_len = check_integer(prefix_len, "prefix_len", minimum=1)
    if prefix_len >= windows.shape[1]:
        raise ValueError(
            f"`prefix_len` must be smaller than the windows' length {windows.shape[1]} (at least one suffix token), "
            f"got {prefix_len}."
        )
    check_vocabulary(windows, model, "windows")
    if is_prompt_learning(model):
        raise ValueError(
            "`model` is a PEFT prompt-learning model (prompt tuning, prefix tuning or p-tuning): its virtual tokens "
            "shift every position of the output. Measure the base model, or an adapter merged into its weights."
        )
    return windows, prefix_len


@torch.inference_mode()
def extraction_log_probs(
    model: torch.nn.Module,
    windows,
    prefix_len: int,
    config: SamplingConfig | None = None,
    temperature: float | None = SamplingConfig.temperature,
    top_k: int | None = SamplingConfig.top_k,
    top_p: float = SamplingConfig.top_p,
    batch_size: int = 16,
    per_token: bool = False,
) -> torch.Tensor:
    """`log p` of each window under sampling, from one teacher-forced forward per batch of windows.

    Windows all have `prefix_len + suffix_len` tokens, so batches need no padding. Only the logits that predict the
    suffix are computed where the model takes `logits_to_keep` (the last `suffix_len + 1` positions), which makes
    the pass no dearer than a plain forward over the windows (see `benchmarks/probabilistic_extraction.py`). The
    model is put in eval mode for the call and given back its mode.

    Args:
        model: A causal language model on the device to run on. PEFT prompt-learning models are refused.
        windows: Token ids, shape `(num_windows, prefix_len + suffix_len)` (a 2-D tensor, array or nested list).
        prefix_len: Tokens of each window's prefix; the rest is the suffix.
        config: A `SamplingConfig`; or give its fields as keywords.
        temperature: The softmax temperature (> 0), or None for greedy decoding.
        top_k: Keep the k most likely tokens; None or 0 keeps all.
        top_p: Nucleus mass in (0, 1]; 1 keeps all.
        batch_size: Windows per forward pass.
        per_token: Return per-position log-probabilities, shape `(num_windows, suffix_len)`.

    Returns:
        A float64 CPU tensor of `log p` per window (or per position), in window order.

    Raises:
        TypeError: If `config` is not a `SamplingConfig`.
        ValueError: If a setting is bad, `windows` is not a non-empty 2-D array of token ids in the model's
            vocabulary, `prefix_len` is not an integer from 1 to the windows' length - 1, `batch_size` is not a
            positive integer, or `model` is a PEFT prompt-learning model.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> log_p = extraction_log_probs(model, [list(range(12)), list(range(12, 24))], prefix_len=8, temperature=0.7)
        >>> log_p.shape, bool((log_p < 0).all())
        (torch.Size([2]), True)
    """
    config = SamplingConfig.from_arguments(
        config, {"temperature": temperature, "top_k": top_k, "top_p": top_p}, "`extraction_log_probs`"
    )
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    per_token = check_bool(per_token, "per_token")
    windows, prefix_len = _check_windows(model, windows, prefix_len)
    suffix_len = windows.shape[1] - prefix_len
    keep = {"logits_to_keep": suffix_len + 1} if supports_logits_to_keep(model) else {}
    device = model_device(model)
    out = []
    with eval_mode(model, "extraction_log_probs"):
        for batch in windows.split(batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False, **keep).logits
            logits = logits[:, -(suffix_len + 1) : -1]  # the positions that predict the suffix tokens
            out.append(suffix_log_probs(logits, batch[:, prefix_len:], config, per_token=per_token))
    return torch.cat(out)


def _as_log_probs(log_p, name: str = "log_p") -> np.ndarray:
    """`log_p` as a 1-D float64 array of values in [-inf, 0] (a hair above 0 read as 0)."""
    if isinstance(log_p, torch.Tensor):
        log_p = log_p.detach().cpu().double().numpy()
    try:
        array = np.asarray(log_p, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be log-probabilities (numbers in [-inf, 0]), got {log_p!r:.80}.") from None
    if array.ndim > 1:
        raise ValueError(f"`{name}` must be a number or a 1-D array of log-probabilities, got shape {array.shape}.")
    array = array.reshape(-1)
    if array.size == 0:
        raise ValueError(f"`{name}` is empty: give the log-probability of at least one window.")
    bad = np.isnan(array) | (array > _LOG_ROUNDING)
    if bad.any():
        raise ValueError(
            f"`{name}` must hold log-probabilities in [-inf, 0], got {array[bad][0]!r} (a probability, not its log?)."
        )
    return np.minimum(array, 0.0)


def _check_queries(n, name: str = "n") -> int:
    return check_integer(n, name, minimum=1, hint="the number of queries")


def _check_probability(probability, name: str = "probability") -> float:
    return check_number(
        probability, name, minimum=0, maximum=1, exclusive_minimum=True, exclusive_maximum=True, hint="a probability"
    )


def _log1mexp(log_p: np.ndarray) -> np.ndarray:
    """log(1 - exp(log_p)) for log_p <= 0, accurate everywhere (Maechler's switch at log 2)."""
    with np.errstate(divide="ignore"):
        return np.where(log_p > -math.log(2), np.log(-np.expm1(log_p)), np.log1p(-np.exp(log_p)))


def extraction_probability(log_p, n: int) -> np.ndarray:
    """The probability of extracting each window's suffix within `n` independent queries: `1 - (1 - p)^n`.

    Computed as `-expm1(n * log1p(-p))` from `log p`, so tiny and near-one probabilities keep their digits.

    Args:
        log_p: `log p` per window (a number, list, array or tensor; from `suffix_log_probs`).
        n: The number of queries (sampled generations from the prefix), >= 1.

    Returns:
        A float64 array, one probability per window.

    Raises:
        ValueError: If `n` is not an integer >= 1, or `log_p` is empty, not 1-D, or holds NaN or a value above 0.

    Examples:
        >>> extraction_probability([math.log(0.02), 0.0, -math.inf], 50).round(4).tolist()
        [0.6358, 1.0, 0.0]
    """
    n = _check_queries(n)
    log_p = _as_log_probs(log_p)
    return -np.expm1(n * _log1mexp(log_p))


def queries_to_extract(log_p, probability: float) -> np.ndarray:
    """The fewest queries `n` with `1 - (1 - p)^n >= probability`, per window (`inf` where `p = 0`).

    Args:
        log_p: `log p` per window.
        probability: The extraction probability to reach, in (0, 1).

    Returns:
        A float64 array of whole numbers >= 1 (or `inf`), one per window.

    Raises:
        ValueError: If `probability` is not in (0, 1), or `log_p` is empty, not 1-D, or holds NaN or a value above 0.

    Examples:
        >>> queries_to_extract([math.log(0.02), 0.0, -math.inf], 0.5).tolist()
        [35.0, 1.0, inf]
    """
    probability = _check_probability(probability)
    log_p = _as_log_probs(log_p)
    log_miss = _log1mexp(log_p)  # log(1 - p), <= 0
    target = math.log1p(-probability)  # < 0: need n * log_miss <= target
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.ceil(target / log_miss)
    n = np.where(log_miss == 0, np.inf, n)  # p = 0: never
    n = np.where(np.isneginf(log_miss), 1.0, np.maximum(n, 1.0))  # p = 1: one query
    # ceil of a rounded quotient can be one too many or too few: step to the exact fewest (where n is finite and
    # p < 1; elsewhere the products below are inf * 0 or 1 * -inf, and not used)
    with np.errstate(invalid="ignore"):
        fewer = np.isfinite(n) & (n > 1) & (-np.expm1((n - 1) * log_miss) >= probability)
        n = np.where(fewer, n - 1, n)
        short = np.isfinite(n) & np.isfinite(log_miss) & (-np.expm1(n * log_miss) < probability)
    return np.where(short, n + 1, n)


def extractable_fraction(log_p, n: int, probability: float) -> float:
    """The share of windows that are (n, p)-extractable: extracted within `n` queries with probability >= `probability`.

    Args:
        log_p: `log p` per window.
        n: The number of queries, >= 1.
        probability: The extraction probability required, in (0, 1).

    Returns:
        The fraction of windows, in [0, 1].

    Raises:
        ValueError: If `n` is not an integer >= 1, `probability` is not in (0, 1), or `log_p` is empty, not 1-D, or
            holds NaN or a value above 0.

    Examples:
        >>> extractable_fraction([math.log(0.02), 0.0, -math.inf, math.log(1e-6)], n=100, probability=0.5)
        0.5
    """
    n = _check_queries(n)
    probability = _check_probability(probability)
    return float(np.mean(extraction_probability(log_p, n) >= probability))


DEFAULT_QUERIES = tuple(int(m * 10**e) for e in range(7) for m in (1, 2, 5))[:-2]  # 1, 2, 5, 10, ..., 10^6


def extraction_curve(log_p, probability: float, n_values: Sequence[int] | None = None) -> dict:
    """The (n, p)-extractable share of windows, and their mean extraction probability, as the queries `n` grow.

    Args:
        log_p: `log p` per window.
        probability: The extraction probability required, in (0, 1).
        n_values: The numbers of queries to evaluate (integers >= 1, in any order; reported sorted and without
            repeats); None uses 1, 2, 5, 10, 20, 50, ..., 10^6.

    Returns:
        `{"probability": probability, "n": [...], "fraction": [...], "mean_probability": [...]}`: per `n`, the
        share of windows extracted with probability >= `probability` within `n` queries, and the mean over windows
        of that probability.

    Raises:
        ValueError: If `probability` is not in (0, 1), `n_values` is empty or holds something other than integers of
            at least 1, or `log_p` is empty, not 1-D, or holds NaN or a value above 0.

    Examples:
        >>> curve = extraction_curve([math.log(0.02), 0.0, -math.inf, math.log(1e-4)], 0.5, n_values=[1, 100, 10**4])
        >>> curve["n"], curve["fraction"]
        ([1, 100, 10000], [0.25, 0.5, 0.75])
    """
    probability = _check_probability(probability)
    if n_values is None:
        n_values = DEFAULT_QUERIES
    if isinstance(n_values, (str, bytes)) or not hasattr(n_values, "__iter__"):
        raise ValueError(f"`n_values` must be a list of integers >= 1 or None, got {n_values!r:.80}.")
    n_values = sorted({_check_queries(n, f"n_values[{i}]") for i, n in enumerate(n_values)})
    if not n_values:
        raise ValueError("`n_values` is empty: give at least one number of queries, or None for the default.")
    log_p = _as_log_probs(log_p)
    within = [extraction_probability(log_p, n) for n in n_values]
    return {
        "probability": probability,
        "n": n_values,
        "fraction": [float(np.mean(w >= probability)) for w in within],
        "mean_probability": [float(np.mean(w)) for w in within],
    }
