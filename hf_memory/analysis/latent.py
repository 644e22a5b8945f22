"""Latent memorization (Duan et al. 2024): memorization that greedy extraction misses but that is still in the weights.

A sequence that the model does not reproduce from its prefix can come back after a small random perturbation of
the weights (`latent_memorization_scan`), and it shows in the cross-entropy after one small SGD step on the
sequence (`ce_diagnostic`, the diagnostic of the paper's code). Both functions change the weights while they run
and restore them bit-exactly (copied back from a saved clone) on every exit path, KeyboardInterrupt included.

The official code (GitHub sunnyddelight/latent_memorization, `scripts/perturbation.py`, `scripts/grad_steps.py`)
is reproduced by options: `latent_memorization_scan(..., min_new_tokens=suffix_len, noise_dtype="model")` and
`ce_diagnostic(..., mode="official")`; docs/analysis.md, "Official setting", lists what differs and why.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._utils import (
    as_sequences,
    cache_io,
    check_choice,
    check_integer,
    check_number,
    check_progress,
    check_vocabulary,
    eval_mode,
    exclusive,
    leading_windows,
    model_device,
    progress_bar,
    require_extra,
    restored,
    supports_logits_to_keep,
)


if TYPE_CHECKING:
    import datasets

require_extra("analysis", "Latent memorization")

DEFAULT_N_PERTURBATIONS = 20  # the paper uses 200 on GPUs; 20 keeps a CPU scan of a small model in minutes
_NOISE_DTYPES = ("float32", "model")
_CE_MODES = ("default", "official")
_AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# scripts/grad_steps.py of the official code: `for i in range(2)`, `if loss < 0.5: break`, `dataset[idx][None, :96]`
_OFFICIAL_STEPS = 2
_OFFICIAL_EARLY_STOP_LOSS = 0.5
_OFFICIAL_TOKENS = 96


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
        config: The other scan settings: `prefix_len`, `suffix_len`, `n_perturbations`, `min_new_tokens` and
            `noise_dtype`.
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

        Examples:
            >>> result = LatentScanResult([3, 0, 4], [0, 0, 2], [1, 0, 0], [[3, 0, 2], [0, 1, 5]], [], [], 2e-3, 0)
            >>> result.recovered(), result.recovered(max_distance=2)
            ([True, False, False], [True, False, True])
        """
        return [b <= max_distance < u for u, b in zip(self.unperturbed_distance, self.best_distance)]


@dataclass
class CEDiagnosticResult:
    """Per sequence (input order): cross-entropy before and after SGD steps on it, and the weight change.

    In `mode="default"` every sequence gets `steps` steps and `loss_after` is the CE after all of them. In
    `mode="official"` (the official `grad_steps.py`) a sequence gets at most 2 steps, none once its loss is under
    0.5; `loss_after` is the loss that code reports (after the first step, or the starting loss when no step was
    taken) and `squared_weight_change` the distance it reports (after every step taken).

    Attributes:
        loss: Per sequence, the mean next-token cross-entropy under the original weights.
        loss_after: Per sequence, the cross-entropy after the `steps` SGD steps (default mode), or after the first
            step (official mode; the starting loss when no step was taken).
        weight_change: Per sequence, the L2 norm over all parameters of (weights after the steps - weights before).
        lr: The SGD learning rate.
        steps: SGD steps per sequence (default mode), or the most steps per sequence (official mode: 2).
        reference_loss: Per sequence, the plain cross-entropy under `reference_model`; None when none was given.
        squared_weight_change: Per sequence, `weight_change ** 2` (summed in float64): the official code's
            `total_dist`.
        steps_taken: Per sequence, the SGD steps actually taken: `steps` in default mode; 0, 1 or 2 in official mode.
        mode: `"default"` or `"official"`.
        autocast_dtype: The autocast dtype of the forward passes (`"float16"`, `"bfloat16"`), or None for none.
    """

    loss: list[float]
    loss_after: list[float]
    weight_change: list[float]
    lr: float
    steps: int
    reference_loss: list[float] | None = None
    squared_weight_change: list[float] = field(default_factory=list)
    steps_taken: list[int] = field(default_factory=list)
    mode: str = "default"
    autocast_dtype: str | None = None

    @property
    def calibrated_loss(self) -> list[float] | None:
        """`loss_after - reference_loss` per sequence (lower = more likely seen), or None without a reference model.

        The reference-model calibration of membership inference: a sequence that is merely easy has a low CE under
        both models, one the target model trained on has a lower CE under it than under the reference.
        """
        if self.reference_loss is None:
            return None
        return [a - r for a, r in zip(self.loss_after, self.reference_loss)]


def _greedy_suffixes(
    model, prefixes: torch.Tensor, suffix_len: int, eos_ids: Sequence[int] = (), min_new_tokens: int = 0
) -> torch.Tensor:
    """Exactly `suffix_len` greedy tokens after equal-length prefixes.

    Argmax only, no EOS stop; the `eos_ids` logits are set to -inf for the first `min_new_tokens` tokens, as
    transformers' `MinNewTokensLengthLogitsProcessor` does (the official code's `min_length=96`).
    """
    cache_name, get_cache = cache_io(model)
    kwargs = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=prefixes.device)

    def pick(logits, step):
        if step < min_new_tokens and len(eos):
            logits = logits.index_fill(-1, eos, -math.inf)
        return logits.argmax(-1)

    out = model(input_ids=prefixes, use_cache=True, **kwargs)
    token = pick(out.logits[:, -1], 0)
    tokens = [token]
    for step in range(1, suffix_len):
        out = model(input_ids=token[:, None], use_cache=True, **{cache_name: get_cache(out)})
        token = pick(out.logits[:, -1], step)
        tokens.append(token)
    return torch.stack(tokens, dim=1)


def _decode_all(model, windows, prefix_len, suffix_len, batch_size, device, eos_ids, min_new_tokens):
    predictions = []
    for b in range(0, len(windows), batch_size):
        prefixes = windows[b : b + batch_size, :prefix_len].to(device)
        predictions += _greedy_suffixes(model, prefixes, suffix_len, eos_ids, min_new_tokens).tolist()
    return predictions


def _eos_token_ids(model) -> list[int]:
    """The model's end-of-sequence ids, as `generate` reads them: `generation_config` first, then `config`."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if eos is None:
        return []
    if isinstance(eos, torch.Tensor):
        eos = eos.tolist()
    ids = list(eos) if isinstance(eos, (list, tuple, set)) else [eos]
    vocab = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0 or (vocab is not None and i >= vocab):
            raise ValueError(f"The model's eos_token_id {eos!r} is not a token id of its vocabulary.")
    return [int(i) for i in ids]


def _check_min_new_tokens(value, suffix_len: int, model) -> tuple[int, list[int]]:
    """`min_new_tokens` as an int in [0, suffix_len], and the EOS ids it suppresses (none needed when it is 0)."""
    try:
        checked = check_integer(value, "min_new_tokens", minimum=0)
    except ValueError:
        checked = None
    if checked is None or checked > suffix_len:
        raise ValueError(
            f"`min_new_tokens` must be an integer in [0, suffix_len] = [0, {suffix_len}] (EOS is suppressed in the "
            f"first min_new_tokens decoded tokens; the official code suppresses it in all of them), got {value!r}."
        ) from None
    eos_ids = _eos_token_ids(model) if checked else []
    if checked and not eos_ids:
        raise ValueError(
            f"`min_new_tokens` = {checked} suppresses EOS, but the model has no eos_token_id (in generation_config or "
            "config): set one, or pass min_new_tokens=0."
        )
    return checked, eos_ids


def _levenshtein(predictions: list[list[int]], references: list[list[int]]) -> list[int]:
    from rapidfuzz.distance import Levenshtein

    return [int(Levenshtein.distance(p, r)) for p, r in zip(predictions, references)]


def _add_noise(params: dict, saved: dict, sigma: float, seed: int, noise_dtype: str = "float32") -> None:
    """params <- saved + N(0, sigma^2), the noise drawn per parameter in a fixed order from one seeded generator.

    `noise_dtype="float32"` draws and scales the noise in float32 and rounds it once to the parameter's dtype;
    `"model"` draws, scales and adds it in the parameter's dtype, as the official `param + randn_like(p) * 2e-3`.
    """
    generators = {}
    with torch.no_grad():
        for name, p in params.items():
            device = p.device
            if device not in generators:
                generators[device] = torch.Generator(device=device).manual_seed(seed)
            dtype = p.dtype if noise_dtype == "model" else torch.float32
            noise = torch.randn(p.shape, generator=generators[device], device=device, dtype=dtype)
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
    min_new_tokens: int = 0,
    noise_dtype: str = "float32",
) -> LatentScanResult:
    """Greedy-decode each suffix under `n_perturbations` random weight perturbations; report Levenshtein distances.

    Perturbation k adds N(0, sigma^2) noise to every parameter, drawn from a generator seeded `seed + k` (the same
    noise whatever the batch size or the sequences), then decodes `suffix_len` tokens greedily after the first
    `prefix_len` tokens of every sequence, in batches of `batch_size`. Distances are token-level Levenshtein
    (rapidfuzz). Sequences shorter than prefix_len + suffix_len are an error. The paper uses sigma 2e-3 and 200
    perturbations; the default here is 20 for CPU budgets. The weights are restored bit-exactly afterwards.

    The official setting (`scripts/perturbation.py`: fp16 model, `generate(..., min_length=96)`, noise drawn with
    `randn_like` in fp16) is `prefix_len=32, suffix_len=64, sigma=2e-3, n_perturbations=200,
    min_new_tokens=suffix_len, noise_dtype="model"` on a model loaded in float16. The default decodes plain argmax
    (EOS allowed, as in a true suffix that crosses a document boundary) and draws the noise in float32.

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
        min_new_tokens: EOS (the model's `generation_config.eos_token_id`, every one of a list) can not be decoded
            among the first `min_new_tokens` tokens, as with `generate(..., min_new_tokens=...)`; an integer in
            [0, suffix_len]. 0 (the default) is plain argmax; `suffix_len` is the official `min_length`.
        noise_dtype: `"float32"` (the default) draws and scales the noise in float32 and rounds it once to each
            parameter's dtype; `"model"` draws, scales and adds it in the parameter's dtype, as the official
            `param + torch.randn_like(param) * sigma`. The two are the same for a float32 model.

    Returns:
        A `LatentScanResult` with the distances per perturbation and the best one per sequence.

    Raises:
        ValueError: If a sequence is shorter than `prefix_len + suffix_len`, or a setting is out of range.

    Examples:
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
    min_new_tokens, eos_ids = _check_min_new_tokens(min_new_tokens, suffix_len, model)
    noise_dtype = str(check_choice(noise_dtype, "noise_dtype", _NOISE_DTYPES))
    device = model_device(model)
    references = windows[:, prefix_len:].tolist()
    decode = (prefix_len, suffix_len, batch_size, device, eos_ids, min_new_tokens)
    with exclusive(model, "latent_memorization_scan"), restored(model) as (params, saved), torch.no_grad():
        model.eval()
        base = _decode_all(model, windows, *decode)
        base_distance = _levenshtein(base, references)
        best, best_k, best_pred = [math.inf] * len(windows), [-1] * len(windows), [None] * len(windows)
        distances = []
        for k in tqdm(range(n_perturbations), desc="perturbations", disable=not show_progress):
            _add_noise(params, saved, sigma, seed + k, noise_dtype)
            preds = _decode_all(model, windows, *decode)
            dist = _levenshtein(preds, references)
            distances.append(dist)
            for i, d in enumerate(dist):
                if d < best[i]:
                    best[i], best_k[i], best_pred[i] = d, k, preds[i]
    config = {
        "prefix_len": prefix_len,
        "suffix_len": suffix_len,
        "n_perturbations": n_perturbations,
        "min_new_tokens": min_new_tokens,
        "noise_dtype": noise_dtype,
    }
    return LatentScanResult(base_distance, best, best_k, distances, base, best_pred, sigma, seed, config)


def _sequence_ce(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one sequence (1 x L) under the model's current weights.

    The model reads `ids[:, :-1]` and predicts `ids[:, 1:]`, as the official `x, y = batch[:, :-1], batch[:, 1:]`;
    the logits are cast to float32 first (what autocast does for `cross_entropy` too).
    """
    logits = model(input_ids=ids[:, :-1], use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _check_autocast_dtype(value, mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to run the forward passes in, or None for none (float32); refused if torch lacks it."""
    if value is None:
        value = "float16" if mode == "official" else "float32"
    if isinstance(value, torch.dtype):
        name = str(value).removeprefix("torch.")
    else:
        name = str(value) if isinstance(value, str) else None
    if name not in _AUTOCAST_DTYPES:
        raise ValueError(
            "`autocast_dtype` must be None, 'float16', 'bfloat16' or 'float32' (or the torch dtype; None: float16 in "
            f"official mode, no autocast otherwise), got {value!r}."
        )
    dtype = _AUTOCAST_DTYPES[name]
    if dtype == torch.float32:
        return None
    enabled = False
    with warnings.catch_warnings():  # a torch without this autocast warns and runs without it: refuse instead
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device.type, dtype=dtype):
                enabled = torch.is_autocast_enabled(device.type)
        except (RuntimeError, ValueError, TypeError):
            enabled = False
    if not enabled:
        raise ValueError(
            f"`autocast_dtype` = {name!r}: torch {torch.__version__} has no {name} autocast on {device.type}; pass "
            "'float32' (no autocast) or another of 'float16', 'bfloat16'."
        )
    return dtype


def ce_diagnostic(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]] | torch.Tensor | datasets.Dataset,
    lr: float = 1e-5,
    steps: int | None = None,
    show_progress: bool = True,
    reference_model: torch.nn.Module | None = None,
    mode: str = "default",
    autocast_dtype: torch.dtype | str | None = None,
) -> CEDiagnosticResult:
    """Cross-entropy of each sequence before and after plain SGD steps (`lr`) on that sequence alone.

    The latent-memorization code's diagnostic: a small step lowers the loss of a sequence the model has seen more
    than that of an unseen one. Every parameter is trained (dropout off), each sequence starts from the original
    weights, and the weights, `requires_grad`, `.grad` and every module's `training` flag are restored bit-exactly.
    Sequences need at least 2 tokens.

    `mode="default"`: `steps` steps (1 if None) on the whole sequence; `loss_after` is the CE after them, in
    float32 unless `autocast_dtype` says otherwise. `mode="official"` is the loop of the official
    `scripts/grad_steps.py`: the first 96 tokens of each sequence, up to 2 steps, the loop stopping (before the
    step) as soon as the loss is under 0.5, forward passes under float16 autocast; `loss_after` is the loss it
    reports (after the first step) and `squared_weight_change` its `total_dist` (after every step taken). Load the
    model in float32 for it, as the official code does.

    `reference_model` (optional, not part of the official diagnostic): a model that did not train on the sequences
    (e.g. the checkpoint before fine-tuning), same tokenizer. Its plain CE of each sequence (same tokens, same
    autocast) goes to `reference_loss` (eval mode, no gradients; its modes are restored) and `calibrated_loss =
    loss_after - reference_loss` removes how hard a sequence is in itself, the standard reference-model membership
    signal.

    Args:
        model: A causal language model (`*ForCausalLM`); it is trained during the diagnostic and restored.
        sequences: Token id sequences (lists, 1-D tensors), a 2-D tensor (one sequence per row), or a
            `datasets.Dataset` with an `input_ids` column; each of at least 2 tokens.
        lr: The SGD learning rate (> 0); 1e-5 is the official one.
        steps: SGD steps per sequence (>= 1); None: 1 in default mode, 2 in official mode (which takes no other).
        show_progress: Show a progress bar over the sequences: True or False, or a tqdm bar to advance instead of a
            new one.
        reference_model: A model that did not train on `sequences`, with the same tokenizer; None skips the
            reference losses.
        mode: `"default"` or `"official"` (the official `grad_steps.py` loop; see above).
        autocast_dtype: The `torch.autocast` dtype of every forward pass: `"float16"`, `"bfloat16"`, `"float32"`
            (no autocast) or the torch dtype; None: float16 in official mode (the official CUDA autocast; torch has
            it on CPU too), no autocast in default mode.

    Returns:
        A `CEDiagnosticResult` with the losses before and after, and the weight change, per sequence.

    Raises:
        ValueError: If a sequence has fewer than 2 tokens, or `lr`, `steps`, `mode` or `autocast_dtype` is out of
            range.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> result = ce_diagnostic(model, [list(range(16))], lr=1e-2, show_progress=False)
        >>> result.loss_after[0] < result.loss[0], result.weight_change[0] > 0
        (True, True)
        >>> official = ce_diagnostic(model, [list(range(16))], lr=1e-2, mode="official", show_progress=False)
        >>> official.steps_taken, official.loss_after[0] < official.loss[0]
        ([2], True)
    """
    rows = as_sequences(sequences)
    for i, row in enumerate(rows):
        check_vocabulary(row, model, f"sequences[{i}]")
    for i, row in enumerate(rows):
        if len(row) < 2:
            raise ValueError(f"`sequences[{i}]` has {len(row)} token(s): the cross-entropy needs at least 2.")
    lr = check_number(lr, "lr", minimum=0, exclusive_minimum=True)
    show_progress = check_progress(show_progress)
    mode = str(check_choice(mode, "mode", _CE_MODES))
    official = mode == "official"
    if steps is None:
        steps = _OFFICIAL_STEPS if official else 1
    else:
        steps = check_integer(steps, "steps", minimum=1)
        if official and steps != _OFFICIAL_STEPS:
            raise ValueError(
                f"`steps` must be None or {_OFFICIAL_STEPS} with mode='official' (the official loop takes at most "
                f"{_OFFICIAL_STEPS} steps), got {steps}."
            )
    device = model_device(model)
    dtype = _check_autocast_dtype(autocast_dtype, mode, device)
    if reference_model is not None:
        _check_autocast_dtype(autocast_dtype, mode, model_device(reference_model))
    if official:
        rows = [row[:_OFFICIAL_TOKENS] for row in rows]  # the official `dataset[idx][None, :96]`
    reference_loss = None
    if reference_model is not None:
        reference_loss = _plain_losses(reference_model, rows, dtype)
    losses, after, squared_change, taken = [], [], [], []
    with (
        exclusive(model, "ce_diagnostic"),
        restored(model, grads=True) as (params, saved),
        torch.inference_mode(False),  # its SGD steps need gradients, also under a caller's inference_mode
        torch.enable_grad(),
        progress_bar(show_progress, total=len(rows), desc="ce diagnostic", unit="sequence") as bar,
    ):
        model.eval()  # no dropout: the diagnostic is deterministic
        for p in params.values():
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(list(params.values()), lr=lr)
        for i, row in enumerate(rows):
            ids = row[None].to(device).clone()  # a normal tensor, if `rows` came from an inference_mode block
            if i:
                with torch.no_grad():
                    for name, p in params.items():
                        p.copy_(saved[name])
            with _autocast(device, dtype):
                if official:
                    first, last, n = _official_steps(model, ids, optimizer)
                else:
                    first, last, n = _plain_steps(model, ids, optimizer, steps)
            losses.append(first)
            after.append(last)
            taken.append(n)
            bar.update(1)
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                squared = sum((p.detach().double() - saved[name].double()).pow(2).sum() for name, p in params.items())
                squared_change.append(float(squared))
    change = [math.sqrt(s) for s in squared_change]
    return CEDiagnosticResult(
        losses,
        after,
        change,
        float(lr),
        steps,
        reference_loss,
        squared_weight_change=squared_change,
        steps_taken=taken,
        mode=mode,
        autocast_dtype=None if dtype is None else str(dtype).removeprefix("torch."),
    )


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _plain_steps(model, ids, optimizer, steps: int) -> tuple[float, float, int]:
    """`steps` SGD steps; the loss before the first and the loss after the last (a separate no-grad forward)."""
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = _sequence_ce(model, ids)
        loss.backward()
        optimizer.step()
        if step == 0:
            first = loss.item()
    with torch.no_grad():
        return first, _sequence_ce(model, ids).item(), steps


def _official_steps(model, ids, optimizer) -> tuple[float, float, int]:
    """The official grad_steps.py loop: up to 2 steps, stopping before a step once the loss is under 0.5.

    Returns the starting loss, the last loss computed (what the official code reports: after the first step, or the
    starting loss if it stopped at once) and the steps taken.
    """
    taken = 0
    for step in range(_OFFICIAL_STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = _sequence_ce(model, ids)
        value = loss.item()
        if step == 0:
            first = value
        loss.backward()
        if value < _OFFICIAL_EARLY_STOP_LOSS:
            break
        optimizer.step()
        taken += 1
    return first, value, taken


def _plain_losses(model, rows, dtype: torch.dtype | None = None) -> list[float]:
    """Mean next-token CE of each sequence under `model` (eval mode, no gradients; `model.training` restored)."""
    device = model_device(model)
    with eval_mode(model, "the reference loss"), torch.no_grad(), _autocast(device, dtype):
        return [_sequence_ce(model, row[None].to(device)).item() for row in rows]
