"""Latent memorization (Duan et al. 2024): memorization that greedy extraction misses but that is still in the weights.

A sequence that the model does not reproduce from its prefix can come back after a small random perturbation of
the weights (`latent_memorization_scan`), and it shows in the cross-entropy after one small SGD step on the
sequence (`ce_diagnostic`, the diagnostic of the paper's code). Both functions change the weights while they run
and restore them bit-exactly (copied back from a saved clone) on every exit path, KeyboardInterrupt included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._utils import (
    as_sequences,
    cache_io,
    check_integer,
    check_number,
    check_vocabulary,
    eval_mode,
    exclusive,
    leading_windows,
    model_device,
    require_extra,
    restored,
    supports_logits_to_keep,
)


if TYPE_CHECKING:
    import datasets

require_extra("analysis", "Latent memorization")

DEFAULT_N_PERTURBATIONS = 20  # the paper uses 200 on GPUs; 20 keeps a CPU scan of a small model in minutes


@dataclass
class LatentScanResult:
    """Token-level Levenshtein distances of greedy suffixes to the true ones, per sequence (in input order).

    `distances[k][i]` is sequence i's distance under perturbation k; `best_perturbation[i]` is the first
    perturbation reaching `best_distance[i]`, the minimum over perturbations (the unperturbed model not included).

    Attributes:
        unperturbed_distance: Per sequence, the distance of the unperturbed model's greedy suffix.
        best_distance: Per sequence, the smallest distance over the perturbations.
        best_perturbation: Per sequence, the index of the first perturbation reaching `best_distance`.
        distances: Per perturbation, then per sequence, the distance under that perturbation.
        unperturbed_predictions: Per sequence, the unperturbed model's greedy suffix (token ids).
        best_predictions: Per sequence, the greedy suffix under `best_perturbation`.
        sigma: Standard deviation of the weight noise.
        seed: Seed of perturbation 0 (perturbation k uses `seed + k`).
        config: The other scan settings: `prefix_len`, `suffix_len` and `n_perturbations`.
    """

    unperturbed_distance: list[int]
    best_distance: list[int]
    best_perturbation: list[int]
    distances: list[list[int]]
    unperturbed_predictions: list[list[int]]
    best_predictions: list[list[int]]
    sigma: float
    seed: int
    config: dict = field(default_factory=dict)

    def recovered(self, max_distance: int = 0) -> list[bool]:
        """Per sequence: some perturbation gets within `max_distance` edits while the unperturbed model does not.

        Args:
            max_distance: The largest Levenshtein distance that counts as reproducing the suffix (0: exactly).

        Returns:
            One flag per sequence, in input order: the latently memorized ones are True.

        Example:
            >>> result = LatentScanResult([3, 0, 4], [0, 0, 2], [1, 0, 0], [[3, 0, 2], [0, 1, 5]], [], [], 2e-3, 0)
            >>> result.recovered(), result.recovered(max_distance=2)
            ([True, False, False], [True, False, True])
        """
        return [b <= max_distance < u for u, b in zip(self.unperturbed_distance, self.best_distance)]


@dataclass
class CEDiagnosticResult:
    """Per sequence (input order): cross-entropy before and after `steps` SGD steps on it, and the weight change.

    Attributes:
        loss: Per sequence, the mean next-token cross-entropy under the original weights.
        loss_after: Per sequence, the cross-entropy after the `steps` SGD steps on that sequence.
        weight_change: Per sequence, the L2 norm over all parameters of (weights after the steps - weights before).
        lr: The SGD learning rate.
        steps: SGD steps taken per sequence.
        reference_loss: Per sequence, the plain cross-entropy under `reference_model`; None when none was given.
    """

    loss: list[float]
    loss_after: list[float]
    weight_change: list[float]
    lr: float
    steps: int
    reference_loss: list[float] | None = None

    @property
    def calibrated_loss(self) -> list[float] | None:
        """`loss_after - reference_loss` per sequence (lower = more likely seen), or None without a reference model.

        The reference-model calibration of membership inference: a sequence that is merely easy has a low CE under
        both models, one the target model trained on has a lower CE under it than under the reference.
        """
        if self.reference_loss is None:
            return None
        return [a - r for a, r in zip(self.loss_after, self.reference_loss)]


def _greedy_suffixes(model, prefixes: torch.Tensor, suffix_len: int) -> torch.Tensor:
    """Exactly `suffix_len` greedy tokens after equal-length prefixes.

    Argmax only: no EOS stop, no logits processors.
    """
    cache_name, get_cache = cache_io(model)
    kwargs = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    out = model(input_ids=prefixes, use_cache=True, **kwargs)
    token = out.logits[:, -1].argmax(-1)
    tokens = [token]
    for _ in range(suffix_len - 1):
        out = model(input_ids=token[:, None], use_cache=True, **{cache_name: get_cache(out)})
        token = out.logits[:, -1].argmax(-1)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def _decode_all(model, windows, prefix_len, suffix_len, batch_size, device) -> list[list[int]]:
    predictions = []
    for b in range(0, len(windows), batch_size):
        prefixes = windows[b : b + batch_size, :prefix_len].to(device)
        predictions += _greedy_suffixes(model, prefixes, suffix_len).tolist()
    return predictions


def _levenshtein(predictions: list[list[int]], references: list[list[int]]) -> list[int]:
    from rapidfuzz.distance import Levenshtein

    return [int(Levenshtein.distance(p, r)) for p, r in zip(predictions, references)]


def _add_noise(params: dict, saved: dict, sigma: float, seed: int) -> None:
    """params <- saved + N(0, sigma^2), the noise drawn per parameter in a fixed order from one seeded generator."""
    generators = {}
    with torch.no_grad():
        for name, p in params.items():
            device = p.device
            if device not in generators:
                generators[device] = torch.Generator(device=device).manual_seed(seed)
            noise = torch.randn(p.shape, generator=generators[device], device=device, dtype=torch.float32)
            p.copy_(saved[name])
            p.add_(noise.mul_(sigma).to(p.dtype))


def latent_memorization_scan(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]] | torch.Tensor | datasets.Dataset,
    prefix_len: int = 32,
    suffix_len: int = 64,
    sigma: float = 2e-3,
    n_perturbations: int = DEFAULT_N_PERTURBATIONS,
    seed: int = 0,
    batch_size: int = 64,
    show_progress: bool = True,
) -> LatentScanResult:
    """Greedy-decode each suffix under `n_perturbations` random weight perturbations; report Levenshtein distances.

    Perturbation k adds N(0, sigma^2) noise to every parameter, drawn from a generator seeded `seed + k` (the same
    noise whatever the batch size or the sequences), then decodes `suffix_len` tokens greedily after the first
    `prefix_len` tokens of every sequence, in batches of `batch_size`. Distances are token-level Levenshtein
    (rapidfuzz). Sequences shorter than prefix_len + suffix_len are an error. The paper uses sigma 2e-3 and 200
    perturbations; the default here is 20 for CPU budgets. The weights are restored bit-exactly afterwards.

    Args:
        model: A causal language model (`*ForCausalLM`); its weights are perturbed during the scan and restored.
        sequences: Token id sequences (lists, 1-D tensors), a 2-D tensor (one sequence per row), or a
            `datasets.Dataset` with an `input_ids` column; only the first `prefix_len + suffix_len` tokens are used.
        prefix_len: Tokens given to the model.
        suffix_len: Tokens decoded greedily and compared with the true suffix.
        sigma: Standard deviation of the Gaussian noise added to every parameter (> 0).
        n_perturbations: How many perturbations to try (>= 1).
        seed: Seed of the first perturbation's noise (>= 0).
        batch_size: Sequences decoded per batch.
        show_progress: Show a progress bar over the perturbations.

    Returns:
        A `LatentScanResult` with the distances per perturbation and the best one per sequence.

    Raises:
        ValueError: If a sequence is shorter than `prefix_len + suffix_len`, or a setting is out of range.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> scan = latent_memorization_scan(model, [list(range(20))] * 2, prefix_len=8, suffix_len=8,
        ...     n_perturbations=3, show_progress=False)
        >>> len(scan.distances), len(scan.best_distance), scan.best_distance[0] <= 8
        (3, 2, True)
    """
    windows = leading_windows(sequences, prefix_len, suffix_len)
    check_vocabulary(windows, model, "sequences")
    sigma = check_number(sigma, "sigma", minimum=0, exclusive_minimum=True, hint="the noise standard deviation")
    n_perturbations = check_integer(n_perturbations, "n_perturbations", minimum=1)
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    seed = check_integer(seed, "seed", minimum=0)
    device = model_device(model)
    references = windows[:, prefix_len:].tolist()
    with exclusive(model, "latent_memorization_scan"), restored(model) as (params, saved), torch.no_grad():
        model.eval()
        base = _decode_all(model, windows, prefix_len, suffix_len, batch_size, device)
        base_distance = _levenshtein(base, references)
        best, best_k, best_pred = [math.inf] * len(windows), [-1] * len(windows), [None] * len(windows)
        distances = []
        for k in tqdm(range(n_perturbations), desc="perturbations", disable=not show_progress):
            _add_noise(params, saved, sigma, seed + k)
            preds = _decode_all(model, windows, prefix_len, suffix_len, batch_size, device)
            dist = _levenshtein(preds, references)
            distances.append(dist)
            for i, d in enumerate(dist):
                if d < best[i]:
                    best[i], best_k[i], best_pred[i] = d, k, preds[i]
    config = {"prefix_len": prefix_len, "suffix_len": suffix_len, "n_perturbations": n_perturbations}
    return LatentScanResult(base_distance, best, best_k, distances, base, best_pred, sigma, seed, config)


def _sequence_ce(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one sequence (1 x L) under the model's current weights."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def ce_diagnostic(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]] | torch.Tensor | datasets.Dataset,
    lr: float = 1e-5,
    steps: int = 1,
    show_progress: bool = True,
    reference_model: torch.nn.Module | None = None,
) -> CEDiagnosticResult:
    """Cross-entropy of each sequence before and after `steps` plain SGD steps (`lr`) on that sequence alone.

    The latent-memorization code's diagnostic: one step at lr 1e-5 lowers the loss of a sequence the model has seen
    more than that of an unseen one. Every parameter is trained (dropout off), each sequence starts from the
    original weights, and the weights, `requires_grad`, `.grad` and `model.training` are restored bit-exactly.
    `weight_change` is the L2 norm of the total update. Sequences need at least 2 tokens.

    `reference_model` (optional, not part of the official diagnostic): a model that did not train on the sequences
    (e.g. the checkpoint before fine-tuning), same tokenizer. Its plain CE of each sequence goes to
    `reference_loss` (eval mode, no gradients; its mode is restored) and `calibrated_loss = loss_after -
    reference_loss` removes how hard a sequence is in itself, the standard reference-model membership signal.

    Args:
        model: A causal language model (`*ForCausalLM`); it is trained during the diagnostic and restored.
        sequences: Token id sequences (lists, 1-D tensors), a 2-D tensor (one sequence per row), or a
            `datasets.Dataset` with an `input_ids` column; each of at least 2 tokens.
        lr: The SGD learning rate (> 0).
        steps: SGD steps per sequence (>= 1).
        show_progress: Show a progress bar over the sequences.
        reference_model: A model that did not train on `sequences`, with the same tokenizer; None skips the
            reference losses.

    Returns:
        A `CEDiagnosticResult` with the losses before and after, and the weight change, per sequence.

    Raises:
        ValueError: If a sequence has fewer than 2 tokens, or `lr` or `steps` is out of range.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> result = ce_diagnostic(model, [list(range(16))], lr=1e-2, show_progress=False)
        >>> result.loss_after[0] < result.loss[0], result.weight_change[0] > 0
        (True, True)
    """
    rows = as_sequences(sequences)
    for i, row in enumerate(rows):
        check_vocabulary(row, model, f"sequences[{i}]")
    for i, row in enumerate(rows):
        if len(row) < 2:
            raise ValueError(f"`sequences[{i}]` has {len(row)} token(s): the cross-entropy needs at least 2.")
    lr = check_number(lr, "lr", minimum=0, exclusive_minimum=True)
    steps = check_integer(steps, "steps", minimum=1)
    device = model_device(model)
    reference_loss = None
    if reference_model is not None:
        reference_loss = _plain_losses(reference_model, rows)
    losses, after, change = [], [], []
    with exclusive(model, "ce_diagnostic"), restored(model, grads=True) as (params, saved):
        model.eval()  # no dropout: the diagnostic is deterministic
        for p in params.values():
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(list(params.values()), lr=lr)
        for i, row in enumerate(tqdm(rows, desc="ce diagnostic", disable=not show_progress)):
            ids = row[None].to(device)
            if i:
                with torch.no_grad():
                    for name, p in params.items():
                        p.copy_(saved[name])
            for step in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss = _sequence_ce(model, ids)
                loss.backward()
                optimizer.step()
                if step == 0:
                    losses.append(loss.item())
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                after.append(_sequence_ce(model, ids).item())
                squared = sum((p.detach().double() - saved[name].double()).pow(2).sum() for name, p in params.items())
                change.append(math.sqrt(float(squared)))
    return CEDiagnosticResult(losses, after, change, float(lr), steps, reference_loss)


def _plain_losses(model, rows) -> list[float]:
    """Mean next-token CE of each sequence under `model` (eval mode, no gradients; `model.training` restored)."""
    device = model_device(model)
    with eval_mode(model), torch.no_grad():
        return [_sequence_ce(model, row[None].to(device)).item() for row in rows]
