"""The exposure of planted canaries, measured and logged while `Trainer.train()` runs.

Each measurement is `canary_exposure` on the inserted secrets (and on fresh ones, never inserted, as the control and
the non-members of a membership test); the schedule, the model's unwrapping and modes, the global random states and
the logging through the Trainer come from `_utils.MeasuringCallback`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._utils import MeasuringCallback, check_integer, check_vocabulary, require_extra
from ..membership import DEFAULT_FPRS, membership_inference_scores
from .config import CanaryConfig
from .exposure import ExposureResult, canary_exposure, check_tokenization, exposure_method


if TYPE_CHECKING:
    from transformers import TrainerState, TrainingArguments


CANARY_LOG_PREFIX = "canaries/"


class CanaryExposureCallback(MeasuringCallback):
    """Measure the exposure of the canaries planted in the training data during `Trainer.train()` and log it.

    Each measurement is `canary_exposure` on the inserted secrets and the fresh ones together (one pass over the
    space when enumerating; the estimate draws the same candidates every time, from `seed`, so measurements are
    comparable). It logs through the Trainer's `log`, in an entry of their own with `epoch` and `step`:

    - `canaries/exposure_mean`: the mean exposure (bits) of the inserted canaries;
    - with `repetitions`, `canaries/exposure_x<r>`: the mean exposure of the canaries inserted `r` times;
    - with `fresh_secrets` (canaries of the same format never inserted, e.g. `make_canaries` with another seed):
      `canaries/exposure_fresh`, their mean exposure (the control: about 1 bit for a model that learned nothing
      of the canaries), and the membership test with known ground truth, exposure as the score, inserted canaries
      the members (`membership_inference_scores`): `canaries/auc` and `canaries/tpr_at_<rate>_fpr` for each rate of
      `fprs` that the number of fresh secrets can measure (1% FPR needs 100 of them, 0.1% a thousand; the others are
      listed in `not_measurable`).

    The numbers reach `trainer.state.log_history` and every `report_to` integration, and can select a checkpoint
    (`metric_for_best_model="canaries/exposure_mean"` with `greater_is_better=False`). The schedule, the model
    measured (unwrapped; eval mode and no gradient, its modes given back), the global random states kept (training
    is bit-identical with and without the callback), the behaviour without a Trainer and best-model selection are
    those of `hf_memory._utils.MeasuringCallback`. Enumeration scores the whole space at every measurement
    (`config.space_size` short texts through the model): measure every few hundred steps, not every step.

    Args:
        tokenizer: The tokenizer the canaries are trained with (called on lists of strings).
        config: The canaries' format (`CanaryConfig`).
        secrets: The inserted canaries' secrets (distinct strings of `config.length` symbols of the alphabet).
        repetitions: Copies of each inserted canary in the training data, as given to `insert_canaries`: one
            integer >= 1 per secret, or one for all; None leaves the exposure ungrouped.
        fresh_secrets: Secrets of the same format that were never inserted (distinct, none of `secrets`), or None.
        every: "eval" (after each evaluation the Trainer runs), "epoch", or N (every N optimizer steps and the last).
        method: `canary_exposure`'s method: "auto", "enumerate" or "estimate".
        num_samples: Candidates drawn for the estimate, >= 10.
        batch_size: Texts per forward pass.
        seed: Seed of the candidates drawn for the estimate.
        fprs: The false-positive rates to report the TPR at (with `fresh_secrets`), each in (0, 1).

    Attributes:
        results: The `ExposureResult` of every measurement, in order: the inserted secrets, then the fresh ones.
        not_measurable: Per TPR left out, why (too few fresh secrets for that false-positive rate).
        history: One dict per measurement: `step`, `epoch` and the numbers without the prefix.
        seconds: Wall-clock seconds spent measuring so far.

    Raises:
        TypeError: If `config` is not a `CanaryConfig`.
        ValueError: At construction, if a secret is not of the config's space, a secret repeats or is both inserted
            and fresh, `repetitions` is neither an integer >= 1 nor one per secret, a canary tokenizes to fewer than 2 tokens,
            `method` is unknown or asks to enumerate a space larger than `ENUMERATION_LIMIT`, `fprs` or a number is
            bad, or `every` is not a schedule. When training starts, if a canary token id is outside the model's
            vocabulary, or as `MeasuringCallback`.
        ImportError: At construction, if the estimate or the membership test needs the `analysis` extra and it is
            missing.

    Warns:
        UserWarning: At construction, if the canaries do not tokenize as the template's parts and their symbols one
            by one (exposure then mixes tokenizations).

    Examples:
        >>> from hf_memory.canaries import make_canaries
        >>> from hf_memory.data import word_level_tokenizer
        >>> config = CanaryConfig("pin is {secret}", alphabet="abcd", length=1)
        >>> tokenizer = word_level_tokenizer(["pin", "is", "a", "b", "c", "d"])
        >>> secrets = make_canaries(config, 4, seed=0)  # two to insert, two fresh
        >>> callback = CanaryExposureCallback(tokenizer, config, secrets[:2], repetitions=[1, 4],
        ...     fresh_secrets=secrets[2:], every=100)
        >>> # Trainer(model, args, train_dataset=insert_canaries(...), callbacks=[callback]).train()
        >>> callback.metric_names()
        ['exposure_mean', 'exposure_x1', 'exposure_x4', 'exposure_fresh', 'auc']
        >>> sorted(callback.not_measurable)
        ['tpr_at_0.001_fpr', 'tpr_at_0.01_fpr']
    """

    log_prefix = CANARY_LOG_PREFIX

    def __init__(
        self,
        tokenizer,
        config: CanaryConfig,
        secrets,
        repetitions=None,
        fresh_secrets=None,
        every: str | int = "eval",
        method: str = "auto",
        num_samples: int = 5000,
        batch_size: int = 64,
        seed: int = 0,
        fprs=DEFAULT_FPRS,
    ) -> None:
        super().__init__(every)
        if not isinstance(config, CanaryConfig):
            raise TypeError(f"`config` must be a CanaryConfig, got {type(config).__name__}.")
        if tokenizer is None or not callable(tokenizer):
            raise ValueError(f"`tokenizer` must be a tokenizer (callable on a list of texts), got {tokenizer!r:.80}.")
        self.tokenizer, self.config = tokenizer, config
        self.secrets = _secrets(config, secrets, "secrets")
        self.fresh_secrets = [] if fresh_secrets is None else _secrets(config, fresh_secrets, "fresh_secrets")
        both = sorted(set(self.secrets) & set(self.fresh_secrets))
        if both:
            raise ValueError(
                f"`fresh_secrets` must never have been inserted, but {both[:5]} are also in `secrets`: draw the fresh "
                "ones with another seed and drop the overlap."
            )
        self.repetitions = None if repetitions is None else _repetitions(repetitions, len(self.secrets))
        self.method = exposure_method(config, method)
        self.num_samples = check_integer(num_samples, "num_samples", minimum=10)
        self.batch_size = check_integer(batch_size, "batch_size", minimum=1)
        self.seed = check_integer(seed, "seed", minimum=0)
        if hasattr(fprs, "__iter__") and not isinstance(fprs, (str, bytes)):
            fprs = tuple(fprs)  # read twice: here and at every measurement
        self.fprs = fprs
        self.not_measurable: dict[str, str] = {}
        self._tpr_names: list[str] = []
        if self.fresh_secrets:
            require_extra("analysis", "The canaries' membership test")
            # the rates' checks, and which rates the number of fresh secrets can measure, before any training
            labels = [1] * len(self.secrets) + [0] * len(self.fresh_secrets)
            probe = membership_inference_scores(np.zeros(len(labels)), labels, fprs=fprs)
            self.not_measurable = dict(probe.get("not_measurable", {}))
            self._tpr_names = [k for k in probe if k.startswith("tpr_at_") and probe[k] is not None]
        texts = [config.text(s) for s in self.secrets + self.fresh_secrets]
        texts += [config.text(symbol * config.length) for symbol in config.alphabet]  # every symbol of the space
        ids = tokenizer(texts)["input_ids"]
        short = [text for text, row in zip(texts, ids) if len(row) < 2]
        if short:
            raise ValueError(f"The canary {short[0]!r} tokenizes to fewer than 2 tokens: it has no token to score.")
        self._token_ids = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        check_tokenization(tokenizer, config, self.secrets + self.fresh_secrets)  # warns once, here
        self.results: list[ExposureResult] = []

    def metric_names(self) -> list[str]:
        """The numbers each measurement reports (without the `canaries/` prefix)."""
        names = ["exposure_mean"]
        if self.repetitions is not None:
            names += [f"exposure_x{r}" for r in sorted(set(self.repetitions))]
        if self.fresh_secrets:
            names += ["exposure_fresh", "auc", *self._tpr_names]
        return names

    def check(self, model, args: TrainingArguments, **kwargs: Any) -> None:
        """Refuse a model whose vocabulary lacks a canary token, before the first step.

        Args:
            model: The model about to be trained (unwrapped).
            args: The Trainer's training arguments (unused).
            **kwargs: The other objects the Trainer passes to callbacks (unused).

        Raises:
            ValueError: If a canary's token id is outside the model's vocabulary.
        """
        check_vocabulary(self._token_ids, model, "secrets")

    def measure(self, model, state: TrainerState) -> dict[str, float]:
        """The exposure of the inserted (and fresh) canaries, by count, and the membership test.

        Args:
            model: The model being trained (unwrapped, eval mode, no gradient).
            state: The Trainer's state (unused).
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*mixes tokenizations")  # said once, at construction
            result = canary_exposure(
                model,
                self.tokenizer,
                self.secrets + self.fresh_secrets,
                self.config,
                method=self.method,
                num_samples=self.num_samples,
                batch_size=self.batch_size,
                seed=self.seed,
            )
        self.results.append(result)
        exposure = np.asarray(result.exposure, dtype=np.float64)
        inserted, fresh = exposure[: len(self.secrets)], exposure[len(self.secrets) :]
        numbers = {"exposure_mean": float(inserted.mean())}
        if self.repetitions is not None:
            counts = np.asarray(self.repetitions)
            for r in sorted(set(self.repetitions)):
                numbers[f"exposure_x{r}"] = float(inserted[counts == r].mean())
        if self.fresh_secrets:
            numbers["exposure_fresh"] = float(fresh.mean())
            labels = [1] * len(inserted) + [0] * len(fresh)
            scores = membership_inference_scores(exposure, labels, fprs=self.fprs)
            numbers["auc"] = scores["roc_auc"]
            numbers.update({name: scores[name] for name in self._tpr_names})
        return numbers


def _secrets(config: CanaryConfig, values, name: str) -> list[str]:
    """A non-empty list of distinct secrets of the config's space."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"`{name}` must be a non-empty list of secrets, got {values!r:.80}.")
    secrets = [config.check_secret(s, f"{name}[{i}]") for i, s in enumerate(values)]
    repeated = sorted({s for s in secrets if secrets.count(s) > 1})
    if repeated:
        raise ValueError(
            f"`{name}` repeats {repeated[:5]}: list each secret once (its copies in the data are `repetitions`)."
        )
    return secrets


def _repetitions(values, count: int) -> list[int]:
    """One integer >= 1 per inserted secret (one integer for all, as `insert_canaries` takes it)."""
    if not isinstance(values, (list, tuple, np.ndarray)) or getattr(values, "ndim", 1) == 0:
        return [check_integer(values, "repetitions", minimum=1, hint="or one such integer per secret")] * count
    if len(values) != count:
        raise ValueError(f"`repetitions` gives {len(values)} counts for {count} secrets: give one per secret.")
    return [check_integer(r, f"repetitions[{i}]", minimum=1) for i, r in enumerate(values)]
