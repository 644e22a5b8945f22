"""`MemControlSearch`: the outer loop. Optuna proposes masks, each is applied to a fresh model, fine-tuned briefly and
scored by the objectives; the result is the Pareto front of masks with ready PEFT configs."""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import itertools
import json
import math
import numbers
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._utils import (
    as_sequences,
    check_bool,
    check_choice,
    check_integer,
    check_keywords,
    check_vocabulary,
    config_digest,
    describe_differences,
    read_json,
    require_extra,
    weights_fingerprint,
    write_json,
)
from .config import CUSTOM_SAMPLER, MASK_FIELDS, MAX_SEED, SAMPLERS, MemControlSearchConfig
from .groups import _diffusion_groups, maskable_groups
from .mask import MemControlMask, count_parameters
from .objectives import (
    EXTRACTION_METRICS,
    _check_denoising_arguments,
    _check_fid_arguments,
    _check_noise_magnitude_arguments,
    _loss_rows,
    _sample_shape,
    causal_lm_loss,
    denoising_loss,
    extraction_rate,
    generated_fid,
    noise_magnitude,
)
from .training import check_denoiser, diffusion_data, train_causal_lm, train_unet


OBJECTIVES = {
    "diffusion": ("noise_magnitude", "denoising_loss", "fid"),
    "causal_lm": ("extraction", "exact_match", "heldout_loss"),
}
DEFAULT_OBJECTIVES = {"diffusion": ("noise_magnitude", "denoising_loss"), "causal_lm": ("extraction", "heldout_loss")}
MAX_EXHAUSTIVE_GROUPS = 12
TRAINING_FIELDS = ("train_steps", "batch_size", "lr_scheduler", "warmup_steps")  # of the default training run
RESUMABLE_FIELDS = ("n_trials", "sampler")  # config fields a stored study may be resumed with other values of


def pareto_front(points) -> list[int]:
    """Indices of the non-dominated rows of `points` (every objective minimized), in input order; of identical rows
    only the first is kept.

    Args:
        points: (N, K) objective values.

    Examples:
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

    Examples:
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
        settings: What the values depend on besides the mask: the search's config (`config.to_dict()`), the
            objectives, the groups, the training function, digests of the data and of the objectives' arguments, and
            the model's identity (class, parameter count, configuration hash and weights fingerprint); see
            `MemControlSearch`. A search given this result as `cache` refuses it when they differ. None for a
            result written before these were recorded.
    """

    objective_names: list[str]
    trials: list[MemControlTrial]
    pareto_front: list[MemControlTrial] = field(default_factory=list)
    study_name: str | None = None
    settings: dict | None = None

    @property
    def config(self) -> MemControlSearchConfig | None:
        """The `MemControlSearchConfig` the search ran with (None for a result written before it was recorded)."""
        config = (self.settings or {}).get("config")
        return MemControlSearchConfig.from_dict(config) if isinstance(config, Mapping) else None

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
            "settings": self.settings,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the result (every trial, the front's trial numbers) as JSON to `path`, atomically: an interrupted
        write leaves the previous file as it was.

        Args:
            path: The file to write.
        """
        write_json(os.fspath(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> MemControlResult:
        """Read a result written by `save`.

        Args:
            path: The file.

        Raises:
            ValueError: If the file is not such a result (a key missing or of the wrong type, a front naming no
                trial, an objective value that is not a finite number: a search never writes one), naming the file.
        """
        path = os.fspath(path)
        hint = "write it again with MemControlResult.save"
        data = read_json(path, hint=hint)
        try:
            names = [str(name) for name in data["objective_names"]]
            trials = [MemControlTrial.from_dict(t) for t in data["trials"]]
            by_number = {t.number: t for t in trials}
            front = [by_number[n] for n in data["pareto_front"]]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path} is not a MemControlResult ({type(err).__name__}: {err}); {hint}.") from None
        for trial in trials:
            bad = [
                n
                for n in names
                if not isinstance(trial.values.get(n), (int, float)) or not math.isfinite(trial.values[n])
            ]
            if bad:
                raise ValueError(
                    f"{path} is damaged: trial {trial.number} has no finite value for {bad} (a search never writes "
                    f"one); {hint}."
                )
        settings = data.get("settings")
        if settings is not None and not isinstance(settings, Mapping):
            raise ValueError(f"{path} is not a MemControlResult (its settings are not a JSON object); {hint}.")
        return cls(names, trials, front, data.get("study_name"), settings)

    def save_json(self, path: str | os.PathLike) -> None:
        """Deprecated name of `save` (a `FutureWarning`; it goes in a later release).

        Args:
            path: The file to write.
        """
        warnings.warn(
            "`MemControlResult.save_json` is now `save`; the old name goes in a later release.",
            FutureWarning,
            stacklevel=2,
        )
        self.save(path)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> MemControlResult:
        """Deprecated name of `load` (a `FutureWarning`; it goes in a later release).

        Args:
            path: The file.
        """
        warnings.warn(
            "`MemControlResult.from_json` is now `load`; the old name goes in a later release.",
            FutureWarning,
            stacklevel=2,
        )
        return cls.load(path)


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
    mask runs again). A trial whose process on this machine was killed is marked failed by the next `run()`; one
    killed on another machine once its Optuna heartbeat is `GRACE_PERIOD` seconds old. The study records the
    search's settings (its `MemControlSearchConfig`, the objectives, groups and LoRA fields, digests of the data and
    of `objective_kwargs`, and the model's identity: class, size, configuration hash and a fingerprint of its
    weights) and refuses to resume with other ones (a larger `n_trials` or another sampler is fine), another
    checkpoint of the same architecture included.

    The plain settings (`n_trials` to `mask_kwargs` below, but not `storage` and `study_name`) form a
    `MemControlSearchConfig`: pass one as `config=`, or the fields as keyword arguments (a keyword that differs from
    its default overrides the config's value).

    Several processes can share a stored study: a process trains a trial only while fewer than `n_trials` trials
    are finished or running ahead of it, and the exhaustive sampler skips a queued mask that another trial already
    holds (such a trial is recorded as failed). A `run()` that returns while trials of other processes still run
    warns and lists them.

    Each trial runs with torch's global RNG forked and seeded with `seed` (adapter initialization, dropout, anything
    else that draws from it; the caller's RNG state is left as it was), so the same mask gives the same values, and
    a mask proposed twice is not trained again: its values are reused. The trained model is scored in eval mode.

    Args:
        model_factory: A function returning a fresh model (called once per trial), or a model (deep-copied per trial).
            A diffusers UNet2DConditionModel or a text-conditioned DiT (e.g. PixArtTransformer2DModel), or a
            transformers causal LM. The default training loop and the built-in diffusion objectives call the model
            as described in `predict_noise`; a model that needs more inputs (SDXL's added conditions, SD3, Flux) is
            refused unless `train_fn` and callable objectives are given.
        train_data: Fine-tuning data: for a UNet a dict with "images" (N, C, H, W) and "encoder_hidden_states"
            (N, L, D) (repeat an example to duplicate it); for an LM token id sequences.
        val_data: Held-out data of the same form, for "denoising_loss" / "heldout_loss".
        objectives: Objective names (for a UNet "noise_magnitude", "denoising_loss", "fid"; for an LM "extraction",
            "exact_match", "heldout_loss"), callables `model -> float`, or a dict name -> either (names are
            non-empty strings); at least two, with distinct names (give callables that share a `__name__` through
            the dict). None: ("noise_magnitude", "denoising_loss") or ("extraction", "heldout_loss").
        memorization_data: Data the memorization objectives probe: for a UNet a dict with "encoder_hidden_states"
            (P, L, D) of the duplicated captions and "empty_hidden_states" (L, D) or (1, L, D); for an LM the
            training sequences to extract. None: `train_data` (for a UNet it must then hold "empty_hidden_states").
        train_fn: `train_fn(model, train_data, mask)` fine-tunes the masked model in place. None: `train_unet` or
            `train_causal_lm` with `train_steps`, `batch_size` and `seed`.
        n_trials: How many finished (completed or pruned) trials the study should hold when `run()` returns (trials
            already in a resumed study count, and so do trials of other processes sharing it); ignored by the
            "exhaustive" sampler, which evaluates every non-empty mask once.
        sampler: "nsga2" (NSGA-II, the default), "tpe", "random", "exhaustive" (every mask; at most 12 groups), or an
            `optuna.samplers.BaseSampler` (recorded in the config as "custom").
        storage: An Optuna RDB storage URL ("sqlite:///path.db"), or None for an in-memory study (kept by this
            object: a second `run()` continues it).
        study_name: The study's name in `storage` (needed to resume); None: a generated name.
        seed: Seed of the sampler, of the trials' global RNG and of the default training runs, in [0, 2**32 - 1].
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
        objective_kwargs: Built-in objective name -> keyword arguments of its function (e.g. {"extraction":
            {"prefix_len": 16, "suffix_len": 16}}, {"noise_magnitude": {"timesteps": [999]}}); callable objectives
            take none. A built-in renamed through the dict form of `objectives` takes its arguments under its new
            name (or its built-in name). They are checked before any training.
        cache: An earlier `MemControlResult` (same model, data and training) whose masks' values are reused instead
            of training again, e.g. an exhaustive enumeration. A cached trial is reused only for a mask equal in
            every field (groups, bits, method, granularity, learning rate, LoRA fields); a result whose recorded
            training settings, data, objective arguments or model (weights included) differ from this search's is
            refused (its seed may differ), and so is one that records no weights fingerprint.
        show_progress: Show a tqdm bar over trials with the Pareto front's size.
        config: A `MemControlSearchConfig` holding the settings from `n_trials` to `mask_kwargs` (not `storage` and
            `study_name`); keyword arguments that differ from their defaults override its fields.

    Raises:
        ValueError: Before any training: on a model without maskable groups, an unknown objective name (the message
            lists the valid ones), fewer than two objectives or two with one name, bad `objective_kwargs` (unknown
            keys, values out of range, data too short for the extraction window or with token ids outside the
            vocabulary, an extraction window the model cannot decode), a missing `val_data` / `memorization_data`,
            an unknown sampler or method, a bad number, too many groups for "exhaustive", a `storage` that cannot be
            opened, a diffusion model the default calls cannot drive, or a `cache` made with other settings or on
            another model. `run()` raises it when `storage` holds the study with other settings or another model.
        TypeError: On an unknown keyword argument (in `objective_kwargs` too), or a `config` that is not a
            `MemControlSearchConfig`.
        ImportError: If optuna (the `memcontrol` extra) is missing.
    """

    HEARTBEAT_INTERVAL = 60
    """Seconds between the heartbeats a running trial writes to an RDB storage."""
    GRACE_PERIOD = 600
    """Seconds without a heartbeat after which a running trial (of any machine) is marked failed by a `run()`."""

    def __init__(
        self,
        model_factory: Callable[[], nn.Module] | nn.Module,
        train_data,
        val_data=None,
        objectives: Sequence | Mapping | None = None,
        memorization_data=None,
        train_fn: Callable | None = None,
        n_trials: int = MemControlSearchConfig.n_trials,
        sampler=MemControlSearchConfig.sampler,
        storage: str | None = None,
        study_name: str | None = None,
        seed: int = MemControlSearchConfig.seed,
        method: str = MemControlSearchConfig.method,
        granularity: str = MemControlSearchConfig.granularity,
        groups: Sequence[str] | None = MemControlSearchConfig.groups,
        lr: float | tuple[float, float] = MemControlSearchConfig.lr,
        train_steps: int = MemControlSearchConfig.train_steps,
        batch_size: int = MemControlSearchConfig.batch_size,
        lr_scheduler: str = MemControlSearchConfig.lr_scheduler,
        warmup_steps: int = MemControlSearchConfig.warmup_steps,
        mask_kwargs: dict | None = MemControlSearchConfig.mask_kwargs,
        objective_kwargs: dict | None = None,
        cache: MemControlResult | None = None,
        show_progress: bool = True,
        config: MemControlSearchConfig | None = None,
    ):
        require_extra("memcontrol", "MemControl search")
        import optuna

        sampler_object = None
        if isinstance(sampler, optuna.samplers.BaseSampler):  # a runtime object: the config records "custom"
            sampler_object, sampler = sampler, CUSTOM_SAMPLER
        arguments = {
            "n_trials": n_trials,
            "sampler": sampler,
            "seed": seed,
            "method": method,
            "granularity": granularity,
            "groups": groups,
            "lr": lr,
            "train_steps": train_steps,
            "batch_size": batch_size,
            "lr_scheduler": lr_scheduler,
            "warmup_steps": warmup_steps,
            "mask_kwargs": mask_kwargs,
        }
        self.config = config = MemControlSearchConfig.from_arguments(config, arguments, "`MemControlSearch`")
        if config.sampler == CUSTOM_SAMPLER and sampler_object is None:
            raise ValueError(
                "sampler='custom' stands for an optuna sampler object passed as `sampler`: pass the object, or "
                f"one of {', '.join(map(repr, SAMPLERS))}."
            )
        self.n_trials, self.seed, self.method, self.granularity = (
            config.n_trials,
            config.seed,
            config.method,
            config.granularity,
        )
        self.train_steps, self.batch_size = config.train_steps, config.batch_size
        self.lr_scheduler, self.warmup_steps = config.lr_scheduler, config.warmup_steps
        self.lr, self.mask_kwargs = config.lr, dict(config.mask_kwargs)
        self.show_progress = check_bool(show_progress, "show_progress")
        if isinstance(model_factory, nn.Module):
            template = model_factory
            self.model_factory = lambda: copy.deepcopy(template)
        elif callable(model_factory):
            self.model_factory = model_factory
        else:
            raise ValueError(
                f"`model_factory` must be a model or a function returning one, got {type(model_factory).__name__}."
            )
        with torch.random.fork_rng(devices=_rng_devices()):  # the trials' model: built from the trials' seed
            torch.manual_seed(self.seed)
            self.reference_model = self.model_factory()
        if not isinstance(self.reference_model, nn.Module):
            raise ValueError(
                f"`model_factory` must return a torch.nn.Module, got {type(self.reference_model).__name__}."
            )
        available = list(maskable_groups(self.reference_model, self.granularity))  # raises for no groups
        if config.groups is None:
            self.groups = available
        else:
            unknown = [g for g in config.groups if g not in available]
            if unknown:
                raise ValueError(
                    f"`groups` names {unknown}, which are not groups of the model; its groups: {available}."
                )
            self.groups = [g for g in available if g in set(config.groups)]
        self.kind = "diffusion" if _diffusion_groups(self.reference_model) else "causal_lm"
        # the mask fields every trial shares
        self._template = MemControlMask(
            self.groups, [1] * len(self.groups), self.method, self.granularity, **self.mask_kwargs
        )
        self.train_data = train_data
        self.val_data = val_data
        self.memorization_data = train_data if memorization_data is None else memorization_data
        if objective_kwargs is not None and not isinstance(objective_kwargs, Mapping):
            raise ValueError(f"`objective_kwargs` must be a dict name -> dict, got {type(objective_kwargs).__name__}.")
        self.objective_kwargs = dict(objective_kwargs or {})
        bad = [k for k, v in self.objective_kwargs.items() if not isinstance(v, Mapping)]
        if bad:
            raise ValueError(f"`objective_kwargs` must map objective names to dicts of arguments; {bad} do not.")
        self._memorization_name = "train_data" if memorization_data is None else "memorization_data"
        default_training = train_fn is None
        if default_training:  # the default loops' model calls and data formats, checked before any training
            if self.kind == "diffusion":
                check_denoiser(self.reference_model, "model_factory's model")
            _check_data(self.kind, train_data, "train_data", self.reference_model)
        self.objectives = self._objectives(objectives)
        if default_training:
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
        self.sampler_name = type(sampler_object).__name__ if sampler_object is not None else config.sampler
        if config.sampler == "exhaustive" and len(self.groups) > MAX_EXHAUSTIVE_GROUPS:
            raise ValueError(
                f"sampler='exhaustive' would train 2^{len(self.groups)} - 1 masks; it allows at most "
                f"{MAX_EXHAUSTIVE_GROUPS} groups. Use 'nsga2', or granularity='block'."
            )
        self._sampler = sampler_object if sampler_object is not None else config.sampler
        self.storage = storage
        if storage is not None:
            if not isinstance(storage, str):
                raise ValueError(
                    f"`storage` must be an Optuna storage URL such as 'sqlite:///search.db', got {storage!r}."
                )
            try:
                self._storage = _open_storage(storage, self.HEARTBEAT_INTERVAL, self.GRACE_PERIOD)
            except Exception as err:  # bad URL, unwritable folder, missing driver
                raise ValueError(
                    f"`storage` {storage!r} cannot be opened as an Optuna storage ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}); use e.g. 'sqlite:///memcontrol.db'."
                ) from None
        else:
            self._storage = None
        self.study_name = study_name
        self._study_object = None
        self._total_parameters = count_parameters(self.reference_model)[1]
        self.settings = self._settings(default_training)
        self._cache: dict[str, tuple[dict[str, float], int]] = {}  # mask key -> (values, trainable parameters)
        if cache is not None:
            self._use_cache(cache)

    # ------------------------------------------------------------------ setup

    def _objectives(self, objectives) -> dict[str, Callable]:
        if objectives is None:
            objectives = DEFAULT_OBJECTIVES[self.kind]
        if isinstance(objectives, (str, bytes)) or callable(objectives) or not hasattr(objectives, "__iter__"):
            raise ValueError("`objectives` must be a list (or dict) of at least two objective names or callables.")
        if isinstance(objectives, Mapping):
            items = list(objectives.items())
            bad = [name for name, _ in items if not isinstance(name, str) or not name]
            if bad:
                raise ValueError(f"`objectives` names must be non-empty strings, got {bad}.")
        else:
            items = [(None, o) for o in objectives]
        names: list[str] = []
        builtins: dict[str, str] = {}  # objective name -> the built-in it runs
        for i, (name, objective) in enumerate(items):
            if isinstance(objective, str):
                check_choice(objective, "objectives", OBJECTIVES[self.kind])
                builtins[objective if name is None else name] = objective
                names.append(objective if name is None else name)
            elif callable(objective):
                names.append(name if name is not None else getattr(objective, "__name__", f"objective_{i}"))
            else:
                raise ValueError(
                    f"`objectives` holds {objective!r}: give objective names or callables model -> float."
                )
            if names[-1] in names[:-1]:
                raise ValueError(
                    f"Objectives {names.index(names[-1])} and {i} are both named {names[-1]!r}: give them distinct "
                    "names through a dict name -> objective."
                )
        if len(names) < 2:
            raise ValueError(f"MemControl needs at least two objectives (memorization and quality), got {names}.")
        # a renamed built-in takes its arguments under its name in this search, or under its built-in name
        allowed = set(builtins) | {b for b in builtins.values() if b not in names}
        unknown = sorted(set(self.objective_kwargs) - allowed, key=str)
        if unknown:
            raise ValueError(
                f"`objective_kwargs` names {unknown}, which are not built-in objectives of this search "
                f"({sorted(allowed)}; a callable objective takes no arguments from it)."
            )
        resolved: dict[str, Callable] = {}
        for name, (_, objective) in zip(names, items):
            if name in builtins:
                builtin = builtins[name]
                if name != builtin and name in self.objective_kwargs and builtin in self.objective_kwargs:
                    raise ValueError(
                        f"`objective_kwargs` holds arguments for objective {name!r} under both {name!r} and "
                        f"{builtin!r}: give them once."
                    )
                key = builtin if name not in self.objective_kwargs and builtin in allowed else name
                resolved[name] = self._builtin(builtin, dict(self.objective_kwargs.get(key, {})), key)
            else:
                resolved[name] = objective
        return resolved

    def _builtin(self, name: str, kwargs: dict, key: str) -> Callable:
        """The built-in objective `name` bound to its data and `kwargs`, every argument checked now."""
        label = f"`objective_kwargs[{key!r}]`"
        if name in ("denoising_loss", "heldout_loss") and self.val_data is None:
            raise ValueError(f"The {name!r} objective needs `val_data` (held-out data).")
        if name == "fid":
            required = ("pipeline", "prompts", "reference_images", "feature_extractor")
            missing = [k for k in required if k not in kwargs]
            if missing:
                raise ValueError(
                    f"The 'fid' objective needs {label} with {list(required)} (see `generated_fid`); missing: "
                    f"{missing}."
                )
            _check_keys(kwargs, generated_fid, ("model",), label)
            _check_fid_arguments(
                *(kwargs[k] for k in required),
                kwargs.get("n_per_prompt", 4),
                kwargs.get("seed", 0),
                kwargs.get("generation_kwargs"),
            )
            return functools.partial(generated_fid, **kwargs)
        if name == "denoising_loss":
            _check_keys(kwargs, denoising_loss, ("unet", "data"), label)
            check_denoiser(self.reference_model, "model_factory's model")
            _check_denoising_arguments(
                self.val_data,
                kwargs.get("timesteps", (100, 300, 500, 700, 900)),
                kwargs.get("seed", 0),
                kwargs.get("noise_scheduler"),
                kwargs.get("batch_size", 64),
                "val_data",
            )
            return functools.partial(_call_first, denoising_loss, self.val_data, kwargs)
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
            _check_keys(kwargs, noise_magnitude, ("unet", "encoder_hidden_states", "empty_hidden_states"), label)
            check_denoiser(self.reference_model, "model_factory's model")
            _check_noise_magnitude_arguments(
                data["encoder_hidden_states"],
                data["empty_hidden_states"],
                kwargs.get("images"),
                kwargs.get("timesteps", (999,)),
                kwargs.get("num_noise", 4),
                kwargs.get("seed", 0),
                kwargs.get("noise_scheduler"),
            )
            if kwargs.get("images") is None:
                _sample_shape(self.reference_model)

            def score(model):
                return noise_magnitude(model, data["encoder_hidden_states"], data["empty_hidden_states"], **kwargs)

            return score
        if name == "heldout_loss":
            _check_keys(kwargs, causal_lm_loss, ("model", "sequences"), label)
            check_integer(kwargs.get("batch_size", 8), "batch_size", minimum=1)
            rows = _loss_rows(self.val_data, "val_data")
            check_vocabulary(torch.cat(rows), self.reference_model, "val_data")
            return functools.partial(_call_first, causal_lm_loss, self.val_data, kwargs)
        # "extraction" / "exact_match"
        _check_keys(kwargs, extraction_rate, ("model", "sequences"), label)
        check_choice(kwargs.get("metric", "memorization_score"), "metric", EXTRACTION_METRICS)
        prefix_len = check_integer(kwargs.get("prefix_len", 32), "prefix_len", minimum=1)
        suffix_len = check_integer(kwargs.get("suffix_len", 32), "suffix_len", minimum=1)
        check_integer(kwargs.get("batch_size", 16), "batch_size", minimum=1)
        rows = as_sequences(self.memorization_data, self._memorization_name)
        if not any(len(row) >= prefix_len + suffix_len for row in rows):
            raise ValueError(
                f"No sequence of `{self._memorization_name}` has prefix_len + suffix_len = "
                f"{prefix_len + suffix_len} tokens (the longest has {max(len(r) for r in rows)}): lower "
                f"{label} 'prefix_len' / 'suffix_len' (defaults 32 + 32) or give longer sequences."
            )
        check_vocabulary(torch.cat(rows), self.reference_model, self._memorization_name)
        window = next(row for row in rows if len(row) >= prefix_len + suffix_len)[: prefix_len + suffix_len]
        try:  # the harness's own model checks (learned position limits, prompt learning), on one window
            extraction_rate(self.reference_model, [window], prefix_len, suffix_len, metric="exact_match", batch_size=1)
        except ValueError as err:
            raise ValueError(f"{label}: {err}") from None
        kwargs = {"metric": "exact_match" if name == "exact_match" else "memorization_score", **kwargs}
        return functools.partial(_call_first, extraction_rate, self.memorization_data, kwargs)

    def _settings(self, default_training: bool) -> dict:
        """What a trial's values depend on besides its bits, with the config it ran with: recorded in the study and
        in the result."""
        train_digest = _data_digest(self.kind, self.train_data)
        same = self.memorization_data is self.train_data
        model = self.reference_model
        return {
            "config": self.config.to_dict(),
            "objective_names": list(self.objectives),
            "groups": list(self.groups),
            "mask_fields": {f: getattr(self._template, f) for f in MASK_FIELDS},
            "train_fn": _default_training_name(self.kind) if default_training else "custom",
            "objective_kwargs": _digest(self.objective_kwargs),
            "train_data": train_digest,
            "val_data": _data_digest(self.kind, self.val_data),
            "memorization_data": train_digest if same else _data_digest(self.kind, self.memorization_data),
            "model": {
                "class": type(model).__name__,
                "parameters": self._total_parameters,
                "config_sha256": config_digest(model),
                "weights_sha256": weights_fingerprint(model),
            },
        }

    def _use_cache(self, cache: MemControlResult) -> None:
        if not isinstance(cache, MemControlResult):
            raise ValueError(f"`cache` must be a MemControlResult, got {type(cache).__name__}.")
        if list(cache.objective_names) != list(self.objectives):
            raise ValueError(f"`cache` has objectives {cache.objective_names}, this search {list(self.objectives)}.")
        if not _records_the_model(cache.settings):
            raise ValueError(
                "`cache` records no weights fingerprint of the model it was made on (a result of an older hf-memory, "
                "or written by hand), so its values cannot be checked against this search's model: run the search "
                "without it."
            )
        stored, current = _comparable(cache.settings), _comparable(self.settings)
        keys = ["train_fn", "objective_kwargs", "train_data", "val_data", "memorization_data", "model"]
        keys += [k for k in TRAINING_FIELDS if k in current]
        differing = [k for k in keys if stored.get(k) != current.get(k)]
        if differing:
            raise ValueError(
                f"`cache` was made with other settings: {describe_differences(stored, current, differing)}. Its values would "
                "not be this search's."
            )
        foreign = 0
        for trial in cache.trials:
            mask = trial.mask
            if any(
                getattr(mask, f) != getattr(self._template, f)
                for f in ("groups", "method", "granularity", *MASK_FIELDS)
            ):
                foreign += 1
                continue
            self._cache.setdefault(_mask_key(mask), (dict(trial.values), trial.trainable_parameters))
        if foreign:
            warnings.warn(
                f"`cache`: {foreign} of its {len(cache.trials)} trials have other groups, method, granularity or LoRA "
                "fields than this search's masks; they are not reused.",
                stacklevel=3,
            )

    def _make_sampler(self, offset: int):
        import optuna

        if not isinstance(self._sampler, str):
            return self._sampler
        seed = (self.seed + offset) % (MAX_SEED + 1)  # a resumed study draws new proposals, not the first run's again
        if self._sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, self.n_trials // 3)))
        if self._sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        # "exhaustive" queues every mask itself (`_enqueue_missing_masks`), so its sampler never picks one. Optuna's
        # brute-force sampler would count a failed trial as explored and stop the study before a resumed mask runs.
        return optuna.samplers.RandomSampler(seed=seed)

    # ------------------------------------------------------------------ the trial

    def _mask(self, bits, lr) -> MemControlMask:
        return MemControlMask(self.groups, list(bits), self.method, self.granularity, lr, **self.mask_kwargs)

    def _trial_mask(self, trial) -> MemControlMask:
        """The mask of a finished trial of this study (its learning rate is the searched one, or this search's)."""
        lr = trial.params["lr"] if isinstance(self.lr, tuple) else self.lr
        return self._mask([trial.params[g] for g in self.groups], lr)

    def evaluate(self, mask: MemControlMask) -> tuple[dict[str, float], int, int]:
        """Fine-tune a fresh model with `mask` and score it: (objective values, trainable parameters, total).

        The global torch RNG is forked and seeded with `seed` for the whole evaluation (adapter initialization,
        dropout, the objectives), so two calls give the same values and the caller's RNG state is not changed.

        Args:
            mask: The mask to evaluate.
        """
        with torch.random.fork_rng(devices=_rng_devices()):
            torch.manual_seed(self.seed)
            model = mask.apply(self.model_factory())
            trainable, total = count_parameters(model)
            self.train_fn(model, self.train_data, mask)
            model.eval()  # scored as it would be used, whatever mode the training left it in
            values = {name: _as_value(name, objective(model), mask) for name, objective in self.objectives.items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"Objective(s) {bad} returned a non-finite value for mask {mask.key}.")
        return values, trainable, total

    def _objective(self, trial):
        import optuna

        trial.set_user_attr("host", socket.gethostname())  # lets a later run tell a killed trial from a live one
        trial.set_user_attr("pid", os.getpid())
        study = trial.study
        if self._sampler != "exhaustive":
            self._claim_slot(study, trial)
        bits = [trial.suggest_int(group, 0, 1) for group in self.groups]
        lr = self.lr if not isinstance(self.lr, tuple) else trial.suggest_float("lr", *self.lr, log=True)
        if not any(bits):
            raise optuna.TrialPruned("the empty mask trains nothing")
        mask = self._mask(bits, lr)
        if self._sampler == "exhaustive":
            self._claim_mask(study, trial, bits)
        key = _mask_key(mask)
        known = self._cache.get(key) or self._stored_values(study, bits, lr)
        if known is not None:  # no model is built: the count is the evaluated trial's
            (values, trainable), total, cached = known, self._total_parameters, True
        else:
            (values, trainable, total), cached = self.evaluate(mask), False
        self._cache[key] = (values, trainable)
        trial.set_user_attr("trainable_parameters", trainable)
        trial.set_user_attr("total_parameters", total)
        trial.set_user_attr("cached", cached)
        return [values[name] for name in self.objectives]

    def _claim_slot(self, study, trial) -> None:
        """Stop this process when `n_trials` trials numbered before this one are finished or running (in any
        process): training this one would overshoot `n_trials`."""
        import optuna

        states = optuna.trial.TrialState
        ahead = [
            t
            for t in study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.RUNNING))
            if t.number < trial.number
        ]
        if len(ahead) >= self.n_trials:
            study.stop()
            raise _Skipped(f"the study already holds n_trials={self.n_trials} finished or running trials before it")

    def _claim_mask(self, study, trial, bits) -> None:
        """Skip a queued mask that another trial has completed or started first (another process enqueued it too)."""
        import optuna

        states = optuna.trial.TrialState
        trials = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.RUNNING))
        mine = next(t for t in trials if t.number == trial.number)
        for other in trials:
            if other.number == trial.number or _trial_bits(other, self.groups) != tuple(bits):
                continue
            if other.state == states.COMPLETE or (other.datetime_start, other.number) < (
                mine.datetime_start,
                mine.number,
            ):
                held = "evaluated" if other.state == states.COMPLETE else "being trained"
                raise _Skipped(f"mask {''.join(map(str, bits))} is already {held} by trial {other.number}")

    def _stored_values(self, study, bits, lr) -> tuple[dict[str, float], int] | None:
        """The values and trainable parameters of a completed trial of the study (of any process) with the same
        mask, or None."""
        import optuna

        for other in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if _trial_bits(other, self.groups) == tuple(bits) and (
                not isinstance(self.lr, tuple) or other.params.get("lr") == lr
            ):
                trainable = other.user_attrs.get("trainable_parameters")
                if isinstance(trainable, int):
                    return dict(zip(self.objectives, other.values)), trainable
        return None

    # ------------------------------------------------------------------ running

    def _study(self):
        import optuna

        if self._study_object is not None:
            return self._study_object
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            storage=self._storage,
            study_name=self.study_name,
            directions=["minimize"] * len(self.objectives),
            load_if_exists=True,
        )
        stored = study.user_attrs.get("memcontrol_settings")
        if stored is None:
            if study.get_trials(deepcopy=False):
                raise ValueError(
                    f"Study {study.study_name!r} in `storage` holds trials but no record of the MemControlSearch "
                    "settings they were made with (an older hf-memory, or another program wrote it), so they cannot "
                    "be checked against this search's: give another `study_name`."
                )
            study.set_user_attr("memcontrol_settings", self.settings)  # holds the objective names and groups too
            stored = study.user_attrs["memcontrol_settings"]  # another process may have written it first
        if not _records_the_model(stored):
            raise ValueError(
                f"Study {study.study_name!r} in `storage` records no weights fingerprint of the model its trials were "
                "made on (an older hf-memory wrote it), so they cannot be checked against this search's model: give "
                "another `study_name`."
            )
        stored, current = _comparable(stored), _comparable(self.settings)
        differing = [k for k in current if stored.get(k) != current[k]]
        if differing:
            raise ValueError(
                f"Study {study.study_name!r} in `storage` was run with other settings: "
                f"{describe_differences(stored, current, differing)}. Resume it with its settings, or give another "
                "`study_name`."
            )
        self._study_object = study
        return study

    def run(self) -> MemControlResult:
        """Run (or resume) the study until it holds `n_trials` finished trials (every mask, for "exhaustive").

        Returns:
            The `MemControlResult` over every completed trial of the study.

        Raises:
            ValueError: If `storage` holds this study with other settings.
        """
        import optuna
        from tqdm.auto import tqdm

        study = self._study()
        _fail_killed_trials(study)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # heartbeat-based: trials of killed processes on any machine
        states = optuna.trial.TrialState
        finished = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED))
        study.sampler = self._make_sampler(len(study.get_trials(deepcopy=False)))
        callbacks = []
        if self._sampler == "exhaustive":
            total, remaining = 2 ** len(self.groups), self._enqueue_missing_masks(study)
        else:
            total = self.n_trials
            remaining = max(0, total - len(finished))
            callbacks.append(optuna.study.MaxTrialsCallback(self.n_trials, states=(states.COMPLETE, states.PRUNED)))
        if remaining:
            bar = tqdm(total=total, initial=len(finished), desc="MemControl trials", disable=not self.show_progress)

            def progress(study, trial):
                if trial.state != states.FAIL:
                    bar.update(1)
                complete = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
                front = pareto_front([t.values for t in complete]) if complete else []
                bar.set_postfix(pareto=len(front))

            try:
                study.optimize(
                    self._objective, n_trials=remaining, callbacks=[progress, *callbacks], catch=(_Skipped,)
                )
            finally:
                bar.close()
        self._warn_incomplete(study)
        return self.result(study)

    def _warn_incomplete(self, study) -> None:
        """Warn when the study lacks trials because trials of other processes still run (or were killed where no
        heartbeat can tell)."""
        import optuna

        states = optuna.trial.TrialState
        trials = study.get_trials(deepcopy=False)
        if self._sampler == "exhaustive":
            done = {_trial_bits(t, self.groups) for t in trials if t.state in (states.COMPLETE, states.PRUNED)}
            missing = [
                "".join(map(str, b)) for b in itertools.product((0, 1), repeat=len(self.groups)) if b not in done
            ]
            if not missing:
                return
            lack = f"{len(missing)} of the {2 ** len(self.groups)} masks ({', '.join(missing)}) are not evaluated yet"
        else:
            count = sum(t.state in (states.COMPLETE, states.PRUNED) for t in trials)
            if count >= self.n_trials:
                return
            lack = f"it holds {count} finished trials of n_trials={self.n_trials}"
        running = [
            f"trial {t.number} (mask {''.join(str(b) for b in _trial_bits(t, self.groups))}, host "
            f"{t.user_attrs.get('host')!r}, pid {t.user_attrs.get('pid')})"
            for t in trials
            if t.state == states.RUNNING
        ]
        held = f"; still running elsewhere: {', '.join(running)}" if running else ""
        warnings.warn(
            f"Study {study.study_name!r}: {lack}{held}. Run again once they finish. A trial killed on another "
            f"machine is failed by a later run once its heartbeat is {self.GRACE_PERIOD} s old (RDB storages); one "
            "without a heartbeat can be failed with `study.tell(number, state=optuna.trial.TrialState.FAIL)`.",
            stacklevel=3,
        )

    def _enqueue_missing_masks(self, study) -> int:
        """Queue every mask (the empty one included: it is pruned) that no finished, running or queued trial holds;
        returns how many masks are left for this process to run."""
        import optuna

        states = optuna.trial.TrialState
        trials = study.get_trials(deepcopy=False)
        done = {_trial_bits(t, self.groups) for t in trials if t.state in (states.COMPLETE, states.PRUNED)}
        running = {_trial_bits(t, self.groups) for t in trials if t.state == states.RUNNING}  # live (see run())
        queued = {_trial_bits(t, self.groups) for t in trials if t.state == states.WAITING}
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
            study: The Optuna study; None: this search's study (for an in-memory study, the one `run()` made).

        Raises:
            ValueError: Without `storage` and before any `run()` (there is no study yet), or if `storage` holds the
                study with other settings.
        """
        import optuna

        if study is None:
            if self._storage is None and self._study_object is None:
                raise ValueError(
                    "This search has no study yet: it keeps an in-memory study (no `storage`) from its first `run()`; "
                    "call `run()` first."
                )
            study = self._study()
        names = list(self.objectives)
        trials = []
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            mask = self._trial_mask(trial)
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
        return MemControlResult(names, trials, _front(trials, names), study.study_name, dict(self.settings))

    def all_masks(self) -> list[list[int]]:
        """Every non-empty mask over this search's groups, as bit lists (2^n − 1 of them)."""
        return [list(bits) for bits in itertools.product((0, 1), repeat=len(self.groups)) if any(bits)]


def _open_storage(url: str, heartbeat_interval: int, grace_period: int):
    """An RDB storage with Optuna's heartbeat. Two processes creating one new database at once can collide on its
    schema (an IntegrityError in one of them): that one tries again."""
    import optuna

    attempts = 0
    while True:
        try:
            with warnings.catch_warnings():  # the heartbeat arguments are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=heartbeat_interval, grace_period=grace_period
                )
        except Exception as err:
            attempts += 1
            if type(err).__name__ != "IntegrityError" or attempts == 3:
                raise
            time.sleep(0.5 * attempts)


class _Skipped(Exception):
    """A trial this process does not run (the study is full, or another trial holds its mask): recorded as failed,
    so it is not counted and its mask is not taken as done."""


def _rng_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _as_value(name: str, value, mask: MemControlMask) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"Objective {name!r} returned {type(value).__name__} for mask {mask.key}: objectives must return a number."
        ) from None


def _mask_key(mask: MemControlMask) -> str:
    """Every field of the mask (groups, bits, method, granularity, lr, LoRA fields): equal keys, equal training."""
    return json.dumps(mask.to_dict(), sort_keys=True)


def _trial_bits(trial, groups: list[str]) -> tuple:
    """A trial's bits: its parameters, or the fixed parameters it was queued with (before it suggested them)."""
    fixed = trial.system_attrs.get("fixed_params", {}) or {}
    return tuple(trial.params.get(g, fixed.get(g)) for g in groups)


def _check_keys(kwargs: Mapping, function: Callable, bound: tuple[str, ...], label: str) -> None:
    """Refuse keyword arguments `function` does not take (or those the search passes itself)."""
    allowed = [name for name in inspect.signature(function).parameters if name not in bound]
    check_keywords(kwargs, allowed, f"{label} (keyword arguments of `{function.__name__}`)")


def _default_training_name(kind: str) -> str:
    return "train_unet" if kind == "diffusion" else "train_causal_lm"


def _records_the_model(settings) -> bool:
    """Whether a settings record (of a stored study or a result) identifies the model by its weights."""
    return (
        isinstance(settings, Mapping)
        and isinstance(settings.get("model"), Mapping)
        and bool(settings["model"].get("weights_sha256"))
    )


def _comparable(settings: Mapping) -> dict:
    """A settings record as flat key -> value for comparison: the config's fields beside the other entries, without
    those a resumed study may change (`n_trials`, `sampler`), those given resolved (`groups`, `mask_kwargs`:
    the record's "groups" and "mask_fields") and, for a custom `train_fn`, the default training run's."""
    flat = {key: value for key, value in settings.items() if key != "config"}
    config = settings.get("config")
    for name, value in config.items() if isinstance(config, Mapping) else ():
        if name in (*RESUMABLE_FIELDS, "groups", "mask_kwargs"):
            continue
        if name in TRAINING_FIELDS and settings.get("train_fn") == "custom":
            continue
        flat[name] = value
    return flat


def _digest(value) -> str:
    """A short SHA-256 of `value`'s content: tensors and arrays by their bytes, dicts and lists element by element,
    a datasets.Dataset by its fingerprint, an object with a dict `config` (a scheduler) by it, anything else by its
    type."""
    hasher = hashlib.sha256()
    _feed(hasher, value)
    return hasher.hexdigest()[:16]


def _feed(hasher, value) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"tensor{tuple(value.shape)}{value.dtype};".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray) and value.dtype != object:
        hasher.update(f"array{value.shape}{value.dtype};".encode())
        hasher.update(np.ascontiguousarray(value).tobytes())
    elif value is None or isinstance(value, (bool, numbers.Number, str, bytes, np.generic)):
        hasher.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, Mapping):
        hasher.update(b"{")
        for key in sorted(value, key=str):
            _feed(hasher, str(key))
            _feed(hasher, value[key])
        hasher.update(b"}")
    elif isinstance(value, (list, tuple, np.ndarray)):
        hasher.update(b"[")
        for item in value:
            _feed(hasher, item)
        hasher.update(b"]")
    elif isinstance(getattr(value, "_fingerprint", None), str):  # a datasets.Dataset
        hasher.update(f"dataset:{value._fingerprint};".encode())
    elif isinstance(getattr(value, "config", None), Mapping):  # a diffusers scheduler or pipeline
        hasher.update(f"<{type(value).__qualname__}>".encode())
        _feed(hasher, dict(value.config))
    else:
        hasher.update(f"<{type(value).__module__}.{type(value).__qualname__}>".encode())


def _data_digest(kind: str, data) -> str:
    """`_digest` of the data, token sequences taken as id tensors (so a list and a tensor of the same ids agree)."""
    if kind == "causal_lm" and isinstance(data, (torch.Tensor, list, tuple)):
        try:
            data = as_sequences(data)
        except ValueError:
            pass
    return _digest(data)


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


def _check_data(kind: str, data, name: str, model: nn.Module) -> None:
    if kind == "diffusion":
        diffusion_data(data, name)
    else:
        check_vocabulary(torch.cat(as_sequences(data, name)), model, name)


def _call_first(function: Callable, data, kwargs: dict, model) -> float:
    return function(model, data, **kwargs)
