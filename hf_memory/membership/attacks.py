"""The attacks' definitions, from per-token statistics of one forward pass.

Each score is oriented so that **higher = more likely a member**. The published codes differ in orientation (MIMIR
returns lower-is-member scores and negates them before its ROC; the Min-K%++ authors' code returns
higher-is-member scores); the values here equal the Min-K%++ code's and are the negation of MIMIR's.
"""

from __future__ import annotations

import zlib

import torch


# A one-hot next-token distribution has sigma = 0: the floor keeps the Min-K%++ z-score finite (0 for the top
# token, very negative for any other), where the reference codes would divide by zero.
SIGMA_FLOOR = 1e-6


def token_statistics(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: the log-probability of the true next token, and its Min-K%++ standardization.

    The standardization is `(log p(x_t) - mu_t) / sigma_t`, with `mu_t` and `sigma_t` the mean and standard deviation
    of `log p(z)` for `z` drawn from the model's own next-token distribution at that position (over the whole
    vocabulary): `mu = sum_z p(z) log p(z)`, `sigma^2 = sum_z p(z) (log p(z) - mu)^2` (the centred form, which equals
    the authors' `E[log p^2] - mu^2` without its cancellation). Computed in float32.

    Args:
        logits: `[positions, vocabulary]` next-token logits.
        targets: `[positions]` the true next tokens.

    Returns:
        `(log_probs, z)`, each `[positions]` float32.
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    true = log_p.gather(-1, targets[:, None]).squeeze(-1)
    # A masked logit (-inf) has p = 0 and must add 0 to both moments: clamping its log-probability to a finite
    # floor gives 0 * finite instead of 0 * inf = NaN (exp(-1e4) is 0 in every float type).
    log_p.clamp_min_(-1e4)
    p = log_p.exp()
    mu = torch.bmm(p[:, None, :], log_p[:, :, None]).view(-1)  # batched dot products: no [positions, vocab] product
    log_p.sub_(mu[:, None]).square_()
    variance = torch.bmm(p[:, None, :], log_p[:, :, None]).view(-1)
    sigma = variance.clamp_min(0).sqrt().clamp_min(SIGMA_FLOOR)
    return true, (true - mu) / sigma


def lowest_fraction_mean(values: torch.Tensor, k: float) -> float:
    """The mean of the lowest `int(len(values) * k)` values (at least one), in float64.

    `int(n * k)` (rounding down) is what the MIMIR and Min-K%++ codes take; they average an empty list (NaN) when
    `n * k < 1`, where this takes the single lowest value.

    Args:
        values: A 1-D tensor, not empty.
        k: The fraction, in (0, 1].
    """
    count = max(1, int(len(values) * k))
    lowest = torch.topk(values.double(), count, largest=False, sorted=False).values
    return float(lowest.mean())


def zlib_bytes(text: str) -> int:
    """The zlib-compressed size of the UTF-8 text in bytes (default level), as Carlini et al. (2021), MIMIR and the
    Min-K%++ code measure it.

    Args:
        text: The scored text.
    """
    return len(zlib.compress(text.encode("utf-8")))


def attack_scores(log_probs: torch.Tensor, z: torch.Tensor, k: float, compressed: int | None) -> dict[str, float]:
    """The one-pass scores of one document from its scored tokens (higher = more likely a member).

    - `loss`: the mean token log-likelihood, i.e. minus the mean NLL (LOSS, Yeom et al. 2018).
    - `zlib`: minus the mean NLL divided by the zlib-compressed size of the text in bytes (Carlini et al. 2021).
    - `min_k`: the mean of the lowest k% token log-probabilities (Min-K% Prob, Shi et al. 2024).
    - `min_k_plus_plus`: the mean of the lowest k% standardized token log-probabilities (Min-K%++, Zhang et al.
      2025).

    Args:
        log_probs: The log-probability of every scored token (1-D, not empty).
        z: The Min-K%++ standardization of every scored token, same order.
        k: The Min-K% / Min-K%++ fraction.
        compressed: The zlib size of the text in bytes, or None when the text is unknown (no `zlib`).

    Returns:
        Attack name -> score.
    """
    mean_log_prob = float(log_probs.double().mean())
    scores = {"loss": mean_log_prob}
    if compressed is not None:
        scores["zlib"] = mean_log_prob / compressed
    scores["min_k"] = lowest_fraction_mean(log_probs, k)
    scores["min_k_plus_plus"] = lowest_fraction_mean(z, k)
    return scores
