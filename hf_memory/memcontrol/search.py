"""`MemControlSearch`: the outer loop. Optuna proposes masks, each is applied to a fresh model, fine-tuned briefly and
scored by the objectives; the result is the Pareto front of masks with ready PEFT configs."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._utils import as_sequences, check_choice, check_integer, check_number, require_extra
from .groups import _diffusion_groups, maskable_groups
from .mask import METHODS, MemControlMask, count_parameters
from .objectives import (
    _check_fid_arguments,
    causal_lm_loss,
    denoising_loss,
    extraction_rate,
    generated_fid,
    noise_magnitude,
)
from .training import _check_steps, diffusion_data, train_causal_lm, train_unet


SAMPLERS = ("nsga2", "tpe", "random", "exhaustive")
OBJECTIVES = {
    "diffusion": ("noise_magnitude", "denoising_loss", "fid"),
    "causal_lm": ("extraction", "exact_match", "heldout_loss"),
}
DEFAULT_OBJECTIVES = {"diffusion": ("noise_magnitude", "denoising_loss"), "causal_lm": ("extraction", "heldout_loss")}
MAX_EXHAUSTIVE_GROUPS = 12


def pareto_front(points) -> list[int]:
    """Indices of the non-dominated rows of `points` (every objective minimized), in input order; of identical rows
    only the first is kept.

    Args:
        points: (N, K) objective values.

    Example:
        >>> pareto_front([[1, 3], [2, 2], [2, 3], [3, 1], [1, 3]])
        [0, 1, 3]
    """
    values = np.asarray(points, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"`points` must be a 2-D (N, K) array of objective values, got shape {values.shape}.")
    front = []
    for i, row in enumerate(values):
        dominated = np.any(np.all(values <= row, axis=1) & np.any(values < row, axis=1))
        duplicate = any(np.array_equal(values[j], row) for j in front)
        if not dominated and not duplicate:
            front.append(i)
    return front


def hypervolume(points, reference_point) -> float:
    """The hypervolume dominated by `points` (minimization) up to `reference_point`: the area (2 objectives) or volume
    a front covers; larger is better. Points not better than the reference in every objective add nothing. Two
    objectives are computed exactly here; more go to optuna's `compute_hypervolume`.

    Args:
        points: (N, K) objective values.
        reference_point: K values, each worse than every point of interest (e.g. the worst values seen, plus a
            margin).

    Example:
        >>> hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4])  # a staircase of three 1-wide steps: 3 + 2 + 1
        6.0
    """
    values = np.asarray(points, dtype=float)
    reference = np.asarray(reference_point, dtype=float)
    if values.ndim != 2 or reference.shape != (values.shape[1],):
        raise ValueError(
            f"`points` must be (N, K) and `reference_point` K values; got shapes {values.shape} and {reference.shape}."
        )
    values = values[np.all(values < reference, axis=1)]
    if not len(values):
        return 0.0
    if values.shape[1] == 2:
        values = values[np.lexsort((values[:, 1], values[:, 0]))]
        area, best_second = 0.0, reference[1]
        for first, second in values:
            if second < best_second:
                area += (reference[0] - first) * (best_second - second)
                best_second = second
        return float(area)
    from optuna._hypervolume import compute_hypervolume  # optuna's own (n-D WFG); no public name for it yet

    return float(compute_hypervolume(values, reference))


@dataclass
class MemControlTrial:
    """One evaluated mask.

    Attributes:
        number: The Optuna trial number.
        mask: The mask (with its learning rate).
        values: Objective name -> value (lower is better).
        trainable_parameters: Parameters the mask trains (adapter weights for LoRA / IA3, shifts for SV-Diff).
        trainable_fraction: `trainable_parameters` over the base model's parameters.
        peft_config: The peft config adapting exactly the mask's groups (None for methods "full" and "svdiff").
        cached: Whether the values were reused from an earlier evaluation of the same mask (no training ran).
    """

    number: int
    mask: MemControlMask
    values: dict[str, float]
    trainable_parameters: int
    trainable_fraction: float
    peft_config: object | None = None
    cached: bool = False

    def to_dict(self) -> dict:
        """The trial as JSON types (the mask and the peft config as dicts)."""
        peft = self.peft_config.to_dict() if self.peft_config is not None else None
        if peft is not None:
            peft = json.loads(json.dumps(peft, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
        return {
            "number": self.number,
            "mask": self.mask.to_dict(),
            "values": dict(self.values),
            "trainable_parameters": self.trainable_parameters,
            "trainable_fraction": self.trainable_fraction,
            "peft_config": peft,
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> MemControlTrial:
        """Rebuild a trial written by `to_dict`.

        Args:
            data: The dict.
        """
        peft = data.get("peft_config")
        if peft is not None:
            from peft import PeftConfig

            peft = PeftConfig.from_peft_type(**peft)
        return cls(
            number=data["number"],
            mask=MemControlMask.from_dict(data["mask"]),
            values=dict(data["values"]),
            trainable_parameters=data["trainable_parameters"],
            trainable_fraction=data["trainable_fraction"],
            peft_config=peft,
            cached=data.get("cached", False),
        )


@dataclass
class MemControlResult:
    """The outcome of a search: every evaluated mask, and the Pareto front among them.

    Attributes:
        objective_names: The objectives, in order (all minimized).
        trials: Every completed trial, in trial order (the same mask may appear more than once when the sampler
            proposed it again; its values were then reused).
        pareto_front: The non-dominated trials, one per distinct (mask, learning rate), sorted by the first objective.
        study_name: The Optuna study's name.
    """

    objective_names: list[str]
    trials: list[MemControlTrial]
    pareto_front: list[MemControlTrial] = field(default_factory=list)
    study_name: str | None = None

    @property
    def num_trained(self) -> int:
        """How many trials trained a model (the others reused an identical mask's values)."""
        return sum(not t.cached for t in self.trials)

    def points(self, trials: Sequence[MemControlTrial] | None = None) -> np.ndarray:
        """The objective values of `trials` (default: the Pareto front) as an (N, K) array.

        Args:
            trials: Trials of this result; None for the Pareto front.
        """
        trials = self.pareto_front if trials is None else trials
        return np.array([[t.values[n] for n in self.objective_names] for t in trials], dtype=float).reshape(
            -1, len(self.objective_names)
        )

    def hypervolume(self, reference_point) -> float:
        """The hypervolume of the Pareto front up to `reference_point` (see `hypervolume`).

        Args:
            reference_point: One value per objective, worse than the front's.
        """
        return hypervolume(self.points(), reference_point)

    def to_dict(self) -> dict:
        """The result as JSON types."""
        return {
            "objective_names": list(self.objective_names),
            "study_name": self.study_name,
            "trials": [t.to_dict() for t in self.trials],
            "pareto_front": [t.number for t in self.pareto_front],
        }

    def save_json(self, path: str | os.PathLike) -> None:
        """Write the result (every trial, the front's trial numbers) as JSON to `path`.

        Args:
            path: The file to write.
        """
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> MemControlResult:
        """Read a result written by `save_json`.

        Args:
            path: The file.
        """
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        trials = [MemControlTrial.from_dict(t) for t in data["trials"]]
        by_number = {t.number: t for t in trials}
        return cls(data["objective_names"], trials, [by_number[n] for n in data["pareto_front"]], data["study_name"])


def _front(trials: list[MemControlTrial], names: list[str]) -> list[MemControlTrial]:
    distinct: dict[tuple, MemControlTrial] = {}
    for trial in trials:
        distinct.setdefault((trial.mask.key, trial.mask.lr), trial)
    unique = list(distinct.values())
    if not unique:
        return []
    points = [[t.values[n] for n in names] for t in unique]
    return sorted((unique[i] for i in pareto_front(points)), key=lambda t: [t.values[n] for n in names])


class MemControlSearch:
    """MemControl's bi-level search (Dutt et al., WACV 2025): an Optuna study over masks (one bit per maskable group,
    optionally the learning rate), each trial fine-tuning a fresh model with its mask and scoring it on two or more
    objectives (all minimized), typically memorization and held-out quality.

    `run()` returns the Pareto front with a ready peft config per mask. With a `storage` URL (e.g.
    "sqlite:///memcontrol.db") the study persists: run again with the same `study_name` after a crash, Ctrl-C or
    SIGKILL and it continues where it stopped (the interrupted trial is recorded as failed, not counted, and its
    mask runs again; a trial whose process on this machine was killed is marked failed by the next `run()`);
    several processes can share it. Training is seeded, so a mask proposed twice is not trained again: its values
    are reused.

    Args:
        model_factory: A function returning a fresh model (called once per trial), or a model (deep-copied per trial).
            A diffusers UNet2DConditionModel / DiT, or a transformers causal LM.
        train_data: Fine-tuning data: for a UNet a dict with "images" (N, C, H, W) and "encoder_hidden_states"
            (N, L, D) (repeat an example to duplicate it); for an LM token id sequences.
        val_data: Held-out data of the same form, for "denoising_loss" / "heldout_loss".
        objectives: Objective names (for a UNet "noise_magnitude", "denoising_loss", "fid"; for an LM "extraction",
            "exact_match", "heldout_loss"), callables `model -> float`, or a dict name -> either; at least two.
            None: ("noise_magnitude", "denoising_loss") or ("extraction", "heldout_loss").
        memorization_data: Data the memorization objectives probe: for a UNet a dict with "encoder_hidden_states"
            (P, L, D) of the duplicated captions and "empty_hidden_states" (L, D) or (1, L, D); for an LM the
            training sequences to extract. None: `train_data` (for a UNet it must then hold "empty_hidden_states").
        train_fn: `train_fn(model, train_data, mask)` fine-tunes the masked model in place. None: `train_unet` or
            `train_causal_lm` with `train_steps`, `batch_size` and `seed`.
        n_trials: How many trials the study should hold when `run()` returns (trials already in a resumed study
            count); ignored by the "exhaustive" sampler, which evaluates every non-empty mask once.
        sampler: "nsga2" (NSGA-II, the default), "tpe", "random", "exhaustive" (every mask; at most 12 groups), or an
            `optuna.samplers.BaseSampler`.
        storage: An Optuna storage URL ("sqlite:///path.db"), or None for an in-memory study.
        study_name: The study's name in `storage` (needed to resume); None: a generated name.
        seed: Seed of the sampler and of the default training runs.
        method: The PEFT method of every mask: "lora", "full", "scale_bias" or "svdiff" (see `MemControlMask`).
        granularity: "block" or "module" (see `maskable_groups`).
        groups: The group names to search over (a subset of `maskable_groups(model, granularity)`, e.g. every
            fifth layer of a deep LM); the other groups stay frozen. None: every group.
        lr: A learning rate, or a (low, high) pair searched log-uniformly (the official code: 1e-5 to 1e-3).
        train_steps: Optimizer steps of the default training run.
        batch_size: Batch size of the default training run.
        lr_scheduler: Learning-rate schedule of the default training run: "constant", "constant_with_warmup",
            "linear" or "cosine" (see `train_unet`).
        warmup_steps: Warm-up steps of the default training run.
        mask_kwargs: Other `MemControlMask` fields for every mask (`lora_r`, `lora_alpha`, `lora_dropout`).
        objective_kwargs: Objective name -> keyword arguments of its function (e.g. {"extraction": {"prefix_len":
            16, "suffix_len": 16}}, {"noise_magnitude": {"timesteps": [999]}}).
        cache: An earlier `MemControlResult` (same model, data and training) whose masks' values are reused instead
            of training again, e.g. an exhaustive enumeration.
        show_progress: Show a tqdm bar over trials with the Pareto front's size.

    Raises:
        ValueError: Before any training: on a model without maskable groups, an unknown objective name (the message
            lists the valid ones), fewer than two objectives, a missing `val_data` / `memorization_data`, an unknown
            sampler or method, a bad number, too many groups for "exhaustive", or a `storage` that cannot be opened.
        ImportError: If optuna (the `memcontrol` extra) is missing.
    """

    def __init__(
        self,
        model_factory: Callable[[], nn.Module] | nn.Module,
        train_data,
        val_data=None,
        objectives: Sequence | Mapping | None = None,
        memorization_data=None,
        train_fn: Callable | None = None,
        n_trials: int = 20,
        sampler="nsga2",
        storage: str | None = None,
        study_name: str | None = None,
        seed: int = 0,
        method: str = "lora",
        granularity: str = "block",
        groups: Sequence[str] | None = None,
        lr: float | tuple[float, float] = 1e-4,
        train_steps: int = 50,
        batch_size: int = 8,
        lr_scheduler: str = "constant",
        warmup_steps: int = 0,
        mask_kwargs: dict | None = None,
        objective_kwargs: dict | None = None,
        cache: MemControlResult | None = None,
        show_progress: bool = True,
    ):
        require_extra("memcontrol", "MemControl search")
        import optuna

        self.n_trials = check_integer(n_trials, "n_trials", minimum=1)
        self.seed = check_integer(seed, "seed")
        self.train_steps = check_integer(train_steps, "train_steps", minimum=1)
        self.batch_size = check_integer(batch_size, "batch_size", minimum=1)
        *_, self.lr_scheduler, self.warmup_steps = _check_steps(
            self.train_steps, self.batch_size, seed, None, lr_scheduler, warmup_steps
        )
        self.method = check_choice(method, "method", METHODS)
        self.granularity = granularity
        self.show_progress = bool(show_progress)
        if isinstance(model_factory, nn.Module):
            template = model_factory
            self.model_factory = lambda: copy.deepcopy(template)
        elif callable(model_factory):
            self.model_factory = model_factory
        else:
            raise ValueError(
                f"`model_factory` must be a model or a function returning one, got {type(model_factory).__name__}."
            )
        self.reference_model = self.model_factory()
        available = list(maskable_groups(self.reference_model, granularity))  # raises for no groups
        if groups is None:
            self.groups = available
        else:
            if isinstance(groups, str) or not groups or not all(isinstance(g, str) for g in groups):
                raise ValueError(f"`groups` must be a non-empty list of group names, got {groups!r}.")
            unknown = [g for g in groups if g not in available]
            if unknown:
                raise ValueError(
                    f"`groups` names {unknown}, which are not groups of the model; its groups: {available}."
                )
            self.groups = [g for g in available if g in set(groups)]
        self.kind = "diffusion" if _diffusion_groups(self.reference_model) else "causal_lm"
        if isinstance(lr, (tuple, list)):
            if len(lr) != 2:
                raise ValueError(f"`lr` must be a number or a (low, high) pair, got {lr!r}.")
            low = check_number(lr[0], "lr[0]", minimum=0, exclusive_minimum=True)
            high = check_number(lr[1], "lr[1]", minimum=low, exclusive_minimum=True, hint="above lr[0]")
            self.lr: float | tuple[float, float] = (low, high)
        else:
            self.lr = check_number(lr, "lr", minimum=0, exclusive_minimum=True)
        self.mask_kwargs = dict(mask_kwargs or {})
        MemControlMask(self.groups, [1] * len(self.groups), method, granularity, **self.mask_kwargs)  # checks them
        self.train_data = train_data
        self.val_data = val_data
        self.memorization_data = train_data if memorization_data is None else memorization_data
        self.objective_kwargs = dict(objective_kwargs or {})
        self.objectives = self._objectives(objectives)
        if train_fn is None:  # the default loops' data formats, checked before any training
            _check_data(self.kind, train_data, "train_data")
            default = train_unet if self.kind == "diffusion" else train_causal_lm
            train_fn = functools.partial(
                default,
                steps=self.train_steps,
                batch_size=self.batch_size,
                seed=self.seed,
                lr_scheduler=self.lr_scheduler,
                warmup_steps=self.warmup_steps,
            )
        elif not callable(train_fn):
            raise ValueError("`train_fn` must be a function (model, train_data, mask) -> None, or None.")
        self.train_fn = train_fn
        if isinstance(sampler, optuna.samplers.BaseSampler):
            self.sampler_name = type(sampler).__name__
        else:
            self.sampler_name = check_choice(sampler, "sampler", SAMPLERS)
            if sampler == "exhaustive":
                if len(self.groups) > MAX_EXHAUSTIVE_GROUPS:
                    raise ValueError(
                        f"sampler='exhaustive' would train 2^{len(self.groups)} - 1 masks; it allows at most "
                        f"{MAX_EXHAUSTIVE_GROUPS} groups. Use 'nsga2', or granularity='block'."
                    )
                if isinstance(self.lr, tuple):
                    raise ValueError("sampler='exhaustive' enumerates masks at one learning rate: give `lr` a number.")
        self._sampler = sampler
        self.storage = storage
        if storage is not None:
            if not isinstance(storage, str):
                raise ValueError(
                    f"`storage` must be an Optuna storage URL such as 'sqlite:///search.db', got {storage!r}."
                )
            try:
                self._storage = optuna.storages.get_storage(storage)
            except Exception as err:  # bad URL, unwritable folder, missing driver
                raise ValueError(
                    f"`storage` {storage!r} cannot be opened as an Optuna storage ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}); use e.g. 'sqlite:///memcontrol.db'."
                ) from None
        else:
            self._storage = None
        self.study_name = study_name
        self._cache: dict[tuple, dict[str, float]] = {}
        if cache is not None:
            if list(cache.objective_names) != list(self.objectives):
                raise ValueError(
                    f"`cache` has objectives {cache.objective_names}, this search {list(self.objectives)}."
                )
            for trial in cache.trials:
                self._cache[(trial.mask.key, trial.mask.lr)] = dict(trial.values)

    # ------------------------------------------------------------------ setup

    def _objectives(self, objectives) -> dict[str, Callable]:
        if objectives is None:
            objectives = DEFAULT_OBJECTIVES[self.kind]
        if isinstance(objectives, (str, bytes)) or callable(objectives):
            raise ValueError("`objectives` must be a list (or dict) of at least two objective names or callables.")
        items = list(objectives.items()) if isinstance(objectives, Mapping) else [(None, o) for o in objectives]
        resolved: dict[str, Callable] = {}
        for name, objective in items:
            if isinstance(objective, str):
                check_choice(objective, "objectives", OBJECTIVES[self.kind])
                resolved[name or objective] = self._builtin(objective)
            elif callable(objective):
                resolved[name or getattr(objective, "__name__", f"objective_{len(resolved)}")] = objective
            else:
                raise ValueError(
                    f"`objectives` holds {objective!r}: give objective names or callables model -> float."
                )
        if len(resolved) < 2:
            raise ValueError(
                f"MemControl needs at least two objectives (memorization and quality), got {list(resolved)}."
            )
        unknown = sorted(set(self.objective_kwargs) - set(resolved))
        if unknown:
            raise ValueError(f"`objective_kwargs` names {unknown}, which are not objectives of this search.")
        return resolved

    def _builtin(self, name: str) -> Callable:
        kwargs = self.objective_kwargs.get(name, {})
        if name in ("denoising_loss", "heldout_loss") and self.val_data is None:
            raise ValueError(f"The {name!r} objective needs `val_data` (held-out data).")
        if name in ("denoising_loss", "heldout_loss"):
            _check_data(self.kind, self.val_data, "val_data")
        if name == "denoising_loss":
            return functools.partial(_call_first, denoising_loss, self.val_data, kwargs)
        if name == "heldout_loss":
            return functools.partial(_call_first, causal_lm_loss, self.val_data, kwargs)
        if name == "fid":
            required = ("pipeline", "prompts", "reference_images", "feature_extractor")
            missing = [key for key in required if key not in kwargs]
            if missing:
                raise ValueError(
                    f"The 'fid' objective needs `objective_kwargs['fid']` with {list(required)} (see `generated_fid`); "
                    f"missing: {missing}."
                )
            unknown = sorted(set(kwargs) - set(required) - {"n_per_prompt", "seed", "generation_kwargs"})
            if unknown:
                raise ValueError(f"`objective_kwargs['fid']` has unknown keys {unknown} (see `generated_fid`).")
            _check_fid_arguments(
                *(kwargs[key] for key in required),
                kwargs.get("n_per_prompt", 4),
                kwargs.get("seed", 0),
                kwargs.get("generation_kwargs"),
            )
            return functools.partial(generated_fid, **kwargs)
        if name == "noise_magnitude":
            data = self.memorization_data
            if (
                not isinstance(data, Mapping)
                or "encoder_hidden_states" not in data
                or "empty_hidden_states" not in data
            ):
                raise ValueError(
                    "The 'noise_magnitude' objective needs `memorization_data` (or `train_data`) to be a dict with "
                    "'encoder_hidden_states' (the duplicated captions) and 'empty_hidden_states' (the empty prompt)."
                )

            def score(model):
                return noise_magnitude(model, data["encoder_hidden_states"], data["empty_hidden_states"], **kwargs)

            return score
        metric = "exact_match" if name == "exact_match" else "memorization_score"
        kwargs = {"metric": metric, **kwargs}
        return functools.partial(_call_first, extraction_rate, self.memorization_data, kwargs)

    def _make_sampler(self, offset: int):
        import optuna

        if not isinstance(self._sampler, str):
            return self._sampler
        seed = self.seed + offset  # a resumed study draws new proposals, not the first run's again
        if self._sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, self.n_trials // 3)))
        if self._sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        # "exhaustive" queues every mask itself (`_enqueue_missing_masks`), so its sampler never picks one. Optuna's
        # brute-force sampler would count a failed trial as explored and stop the study before a resumed mask runs.
        return optuna.samplers.RandomSampler(seed=seed)

    # ------------------------------------------------------------------ the trial

    def evaluate(self, mask: MemControlMask) -> tuple[dict[str, float], int, int]:
        """Fine-tune a fresh model with `mask` and score it: (objective values, trainable parameters, total).

        Args:
            mask: The mask to evaluate.
        """
        with torch.random.fork_rng(devices=[]):  # the adapter's initialization is seeded too: same mask, same model
            torch.manual_seed(self.seed)
            model = mask.apply(self.model_factory())
        trainable, total = count_parameters(model)
        self.train_fn(model, self.train_data, mask)
        values = {name: float(objective(model)) for name, objective in self.objectives.items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"Objective(s) {bad} returned a non-finite value for mask {mask.key}.")
        return values, trainable, total

    def _objective(self, trial):
        import optuna

        trial.set_user_attr("host", socket.gethostname())  # lets a later run tell a killed trial from a live one
        trial.set_user_attr("pid", os.getpid())
        bits = [trial.suggest_int(group, 0, 1) for group in self.groups]
        lr = self.lr if not isinstance(self.lr, tuple) else trial.suggest_float("lr", *self.lr, log=True)
        if not any(bits):
            raise optuna.TrialPruned("the empty mask trains nothing")
        mask = MemControlMask(self.groups, bits, self.method, self.granularity, lr, **self.mask_kwargs)
        key = (mask.key, mask.lr)
        if key in self._cache:
            values, cached = self._cache[key], True
            trainable, total = count_parameters(mask.apply(self.model_factory()))
        else:
            (values, trainable, total), cached = self.evaluate(mask), False
            self._cache[key] = values
        trial.set_user_attr("trainable_parameters", trainable)
        trial.set_user_attr("total_parameters", total)
        trial.set_user_attr("cached", cached)
        return [values[name] for name in self.objectives]

    # ------------------------------------------------------------------ running

    def _study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            storage=self._storage,
            study_name=self.study_name,
            directions=["minimize"] * len(self.objectives),
            load_if_exists=True,
        )
        names = study.user_attrs.get("objective_names")
        if names is None:
            study.set_user_attr("objective_names", list(self.objectives))
            study.set_user_attr("groups", self.groups)
        elif names != list(self.objectives) or study.user_attrs.get("groups") != self.groups:
            raise ValueError(
                f"Study {study.study_name!r} in `storage` was run with objectives {names} and groups "
                f"{study.user_attrs.get('groups')}; this search has {list(self.objectives)} and {self.groups}."
            )
        return study

    def run(self) -> MemControlResult:
        """Run (or resume) the study until it holds `n_trials` finished trials (every mask, for "exhaustive").

        Returns:
            The `MemControlResult` over every completed trial of the study.
        """
        import optuna
        from tqdm.auto import tqdm

        study = self._study()
        _fail_killed_trials(study)
        finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        finished = [t for t in study.get_trials(deepcopy=False) if t.state in finished_states]
        for trial in finished:  # values of a resumed study are not trained again
            if trial.state == optuna.trial.TrialState.COMPLETE:
                bits = [trial.params[g] for g in self.groups]
                lr = trial.params.get("lr", self.lr)
                self._cache.setdefault(("".join(map(str, bits)), lr), dict(zip(self.objectives, trial.values)))
        study.sampler = self._make_sampler(len(study.get_trials(deepcopy=False)))
        if self._sampler == "exhaustive":
            total, remaining = 2 ** len(self.groups), self._enqueue_missing_masks(study)
        else:
            total = self.n_trials
            remaining = max(0, total - len(finished))
        if remaining:
            bar = tqdm(total=total, initial=len(finished), desc="MemControl trials", disable=not self.show_progress)

            def progress(study, trial):
                bar.update(1)
                complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                front = pareto_front([t.values for t in complete]) if complete else []
                bar.set_postfix(pareto=len(front))

            try:
                study.optimize(self._objective, n_trials=remaining, callbacks=[progress], catch=())
            finally:
                bar.close()
        return self.result(study)

    def _enqueue_missing_masks(self, study) -> int:
        """Queue every mask (the empty one included: it is pruned) that no finished, running or queued trial holds;
        returns how many masks are left for this process to run."""
        import optuna

        states = optuna.trial.TrialState

        def bits_of(trial) -> tuple:
            params = trial.system_attrs.get("fixed_params", {}) if trial.state == states.WAITING else trial.params
            return tuple(params.get(group) for group in self.groups)

        trials = study.get_trials(deepcopy=False)
        done = {bits_of(t) for t in trials if t.state in (states.COMPLETE, states.PRUNED)}
        running = {bits_of(t) for t in trials if t.state == states.RUNNING}  # live: `_fail_killed_trials` ran
        queued = {bits_of(t) for t in trials if t.state == states.WAITING}
        missing = 0
        for bits in itertools.product((0, 1), repeat=len(self.groups)):
            if bits in done or bits in running:
                continue
            if bits not in queued:  # a failed trial's mask, or one never proposed
                study.enqueue_trial(dict(zip(self.groups, bits)))
            missing += 1
        return missing

    def result(self, study=None) -> MemControlResult:
        """The `MemControlResult` of the study's completed trials so far.

        Args:
            study: The Optuna study; None loads this search's study.
        """
        import optuna

        study = study or self._study()
        names = list(self.objectives)
        trials = []
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            bits = [trial.params[g] for g in self.groups]
            lr = trial.params.get("lr", self.lr)
            mask = MemControlMask(self.groups, bits, self.method, self.granularity, lr, **self.mask_kwargs)
            trainable = trial.user_attrs.get("trainable_parameters", 0)
            total = trial.user_attrs.get("total_parameters", 1)
            trials.append(
                MemControlTrial(
                    number=trial.number,
                    mask=mask,
                    values=dict(zip(names, trial.values)),
                    trainable_parameters=trainable,
                    trainable_fraction=trainable / total,
                    peft_config=mask.to_peft_config(self.reference_model),
                    cached=bool(trial.user_attrs.get("cached", False)),
                )
            )
        return MemControlResult(names, trials, _front(trials, names), study.study_name)

    def all_masks(self) -> list[list[int]]:
        """Every non-empty mask over this search's groups, as bit lists (2^n − 1 of them)."""
        return [list(bits) for bits in itertools.product((0, 1), repeat=len(self.groups)) if any(bits)]


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # on Windows, os.kill(pid, 0) sends CTRL_C_EVENT: assume alive, fail nothing
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _fail_killed_trials(study) -> list[int]:
    """Mark as failed the study's running trials whose process, on this machine, no longer exists (a SIGKILL, a
    closed terminal, an out-of-memory kill: no chance to record the failure). Left running, such a trial would hold
    its mask forever, and the exhaustive sampler would never train that mask. Trials of live processes and of other
    machines are left alone. Returns the failed trials' numbers."""
    import optuna

    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") != host or not isinstance(pid, int) or pid == os.getpid():
            continue
        if not _process_alive(pid):
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
            failed.append(trial.number)
    return failed


def _check_data(kind: str, data, name: str) -> None:
    if kind == "diffusion":
        diffusion_data(data, name)
    else:
        as_sequences(data, name)


def _call_first(function: Callable, data, kwargs: dict, model) -> float:
    return function(model, data, **kwargs)
