"""Exposure of a canary (Carlini et al. 2019): how far up the model ranks it among every candidate of its space.

`exposure = log2 |R| - log2 rank`, where `rank` is the canary's place (1 = most likely) among all candidates of its
space ordered by the model's log-perplexity (`-sum log2 P(token | tokens before)` over the text). Exact by
enumeration for spaces up to `ENUMERATION_LIMIT` candidates, streamed in batches (nothing but one float per
candidate is kept); estimated for larger ones as the paper does: the log-perplexities of uniformly sampled
candidates fitted with a skew-normal distribution, exposure = `-log2 CDF(canary's log-perplexity)`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .._utils import check_choice, check_integer, eval_mode, model_device, require_extra
from .config import SLOT, CanaryConfig


ENUMERATION_LIMIT = 10**6  # candidates scored one by one at most; larger spaces are estimated
AUTO_ENUMERATE = 10**5  # method="auto" enumerates spaces up to this size
EXPOSURE_METHODS = ("auto", "enumerate", "estimate")


@dataclass
class ExposureResult:
    """The exposure of each canary of one space.

    Attributes:
        secrets: The canaries' secrets, in the order given.
        exposure: Exposure in bits per canary, from 0 (the least likely candidate) to `log2 |R|` (the most likely).
        log_perplexity: The canary texts' log-perplexity in bits.
        rank: Each canary's rank among all candidates (1 = lowest log-perplexity; ties share the best rank);
            None when estimated.
        method: "enumerate" or "estimate".
        space_size: `|R|`.
        candidates_scored: Candidates whose log-perplexity was computed.
        sampled_exposure: When estimated: `-log2` of the share of sampled candidates ranked at or above the canary
            (capped by the sample size; what the fit extrapolates), else None.
        fit: When estimated: the skew-normal's `shape`, `loc` and `scale` (scipy's `skewnorm`), else None.
    """

    secrets: list
    exposure: list
    log_perplexity: list
    rank: list | None
    method: str
    space_size: int
    candidates_scored: int
    sampled_exposure: list | None = None
    fit: dict | None = None

    def to_dict(self) -> dict:
        """The result as plain JSON types."""
        return asdict(self)


def _padded(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenizer(texts)["input_ids"]
    width = max(len(row) for row in ids)
    if min(len(row) for row in ids) < 2:
        raise ValueError("A canary text tokenizes to fewer than 2 tokens: it has no token to score.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return input_ids, mask


@torch.inference_mode()
def _score(model, tokenizer, texts: list[str]) -> np.ndarray:
    """Log-perplexity in bits of each text (one forward, right-padded)."""
    input_ids, mask = _padded(tokenizer, texts)
    device = model_device(model)
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    targets = input_ids[:, 1:].to(device)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).reshape(targets.shape)
    nll = (nll * mask[:, 1:].to(device)).sum(-1).double().cpu().numpy()
    return nll / math.log(2)


def canary_log_perplexity(model, tokenizer, texts, batch_size: int = 64) -> np.ndarray:
    """The log-perplexity (bits) of each text under `model`: `-sum log2 P(token | tokens before)` over its tokens.

    The tokenizer's special tokens are added as it adds them (a BOS is then the first context, never scored).
    Lower means more likely; a memorized canary's log-perplexity falls below its unseen siblings'.

    Args:
        model: A causal language model.
        tokenizer: Its tokenizer (called on lists of strings).
        texts: The texts (a list of strings).
        batch_size: Texts per forward pass.

    Returns:
        A float64 array, one value per text.

    Raises:
        ValueError: If `texts` is not a non-empty list of strings, a text tokenizes to fewer than 2 tokens, or
            `batch_size` is not a positive integer.
    """
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError(f"`texts` must be a non-empty list of strings, got {texts!r:.80}.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"`texts[{i}]` must be a string, got {type(text).__name__}.")
    with eval_mode(model, "canary_log_perplexity"):
        return np.concatenate(
            [_score(model, tokenizer, list(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
        )


def check_tokenization(tokenizer, config: CanaryConfig, secrets) -> bool:
    """Whether every given secret's canary tokenizes as the template's parts and its symbols tokenized one by one;
    warns (and returns False) if not: candidates then differ in how they are cut, and exposure mixes tokenizations.
    """
    before, after = config.template.split(SLOT)

    def pieces(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    symbol_ids = {symbol: pieces(symbol) for symbol in config.alphabet}
    head, tail = pieces(before), pieces(after)
    for secret in secrets:
        expected = head + [i for symbol in secret for i in symbol_ids[symbol]] + tail
        if pieces(config.text(secret)) != expected:
            warnings.warn(
                f"The canary {config.text(secret)!r} does not tokenize as its template and its symbols one by one: "
                "candidates of this space are cut into tokens differently (symbols merge with each other or with "
                "the template), so exposure mixes tokenizations. Put a separator the tokenizer keeps apart before "
                "the slot, or an alphabet whose symbols never merge.",
                UserWarning,
                stacklevel=3,
            )
            return False
    return True


def exposure_method(config: CanaryConfig, method: str) -> str:
    """The method `canary_exposure` runs for `method` on the config's space: "enumerate" or "estimate".

    Raises:
        ValueError: If `method` is unknown, or enumeration is asked of a space larger than `ENUMERATION_LIMIT`.
        ImportError: If the estimate is needed and scipy (the `analysis` extra) is missing.
    """
    method = check_choice(method, "method", EXPOSURE_METHODS)
    size = config.space_size
    if method == "auto":
        method = "enumerate" if size <= AUTO_ENUMERATE else "estimate"
    if method == "enumerate" and size > ENUMERATION_LIMIT:
        raise ValueError(
            f"The space holds {size} candidates, more than `ENUMERATION_LIMIT` ({ENUMERATION_LIMIT}) to enumerate: "
            "use method='estimate'."
        )
    if method == "estimate":
        require_extra("analysis", "the exposure estimate (a skew-normal fit)")
    return method


def canary_exposure(
    model,
    tokenizer,
    secrets,
    config: CanaryConfig,
    method: str = "auto",
    num_samples: int = 5000,
    batch_size: int = 64,
    seed: int = 0,
) -> ExposureResult:
    """The exposure of each canary: `log2 |R| - log2 rank` among all candidates of its space (Carlini et al. 2019).

    Enumeration scores every candidate of the space in batches of `batch_size` (a space of 10^4 candidates is 10^4
    texts through the model: 157 forwards of 64 short texts), keeping one float per candidate. The estimate scores
    `num_samples` uniformly drawn candidates and fits a skew-normal to their log-perplexities (the paper's method);
    its error against enumeration is measured in `examples/canary_exposure.py`.

    Args:
        model: A causal language model.
        tokenizer: Its tokenizer.
        secrets: The canaries' secrets (strings of `config.length` symbols of `config.alphabet`).
        config: The canaries' format.
        method: "enumerate" (exact), "estimate" (skew-normal fit), or "auto" (enumerate spaces up to 10^5).
        num_samples: Candidates drawn for the estimate, >= 10.
        batch_size: Texts per forward pass.
        seed: Seed of the candidates drawn for the estimate.

    Returns:
        An `ExposureResult`.

    Raises:
        TypeError: If `config` is not a `CanaryConfig`.
        ValueError: If `secrets` is empty or holds a string that is not `length` symbols of the alphabet, `method` is
            unknown, enumeration is asked of a space larger than `ENUMERATION_LIMIT`, or a number is bad.
        ImportError: If the estimate is asked and scipy (the `analysis` extra) is missing.

    Warns:
        UserWarning: If the canaries do not tokenize as the template's parts and their symbols one by one.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from hf_memory.data import word_level_tokenizer
        >>> tokenizer = word_level_tokenizer(["pin", "is", "a", "b", "c"])
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=9, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> config = CanaryConfig("pin is {secret}", alphabet="abc", length=1)
        >>> result = canary_exposure(model, tokenizer, ["a", "b"], config)
        >>> result.method, result.space_size, sorted(result.rank)
        ('enumerate', 3, [1, 3])
    """
    if not isinstance(config, CanaryConfig):
        raise TypeError(f"`config` must be a CanaryConfig, got {type(config).__name__}.")
    num_samples = check_integer(num_samples, "num_samples", minimum=10)
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    seed = check_integer(seed, "seed", minimum=0)
    if isinstance(secrets, str) or not isinstance(secrets, (list, tuple)) or not secrets:
        raise ValueError(f"`secrets` must be a non-empty list of secrets, got {secrets!r:.80}.")
    secrets = [config.check_secret(s, f"secrets[{i}]") for i, s in enumerate(secrets)]
    size = config.space_size
    method = exposure_method(config, method)
    check_tokenization(tokenizer, config, secrets)

    with eval_mode(model, "canary_exposure"):
        if method == "enumerate":
            scores = np.empty(size, dtype=np.float64)
            candidates = config.secrets()
            done = 0
            while done < size:
                chunk = list(itertools.islice(candidates, batch_size))
                scores[done : done + len(chunk)] = _score(model, tokenizer, [config.text(s) for s in chunk])
                done += len(chunk)
            mine = scores[[config.index(s) for s in secrets]]
            order = np.sort(scores)
            rank = (np.searchsorted(order, mine, side="left") + 1).tolist()
            exposure = [math.log2(size) - math.log2(r) for r in rank]
            return ExposureResult(secrets, exposure, mine.tolist(), rank, "enumerate", size, size)

        from scipy.stats import skewnorm

        rng = np.random.default_rng(seed)
        drawn = rng.integers(0, len(config.alphabet), size=(num_samples, config.length))
        sampled = ["".join(config.alphabet[i] for i in row) for row in drawn]
        texts = [config.text(s) for s in sampled + secrets]
        scores = np.concatenate(
            [_score(model, tokenizer, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        )
        sample, mine = scores[:num_samples], scores[num_samples:]
        shape, loc, scale = skewnorm.fit(sample)
        exposure = [float(-skewnorm.logcdf(x, shape, loc, scale) / math.log(2)) for x in mine]
        at_or_above = [(1 + int((sample <= x).sum())) / (num_samples + 1) for x in mine]
        return ExposureResult(
            secrets,
            exposure,
            mine.tolist(),
            None,
            "estimate",
            size,
            num_samples + len(secrets),
            sampled_exposure=[-math.log2(share) for share in at_or_above],
            fit={"shape": float(shape), "loc": float(loc), "scale": float(scale)},
        )
