"""`MemControlSearchConfig`: how `MemControlSearch` searches (sampler, trials, seed, the masks' method and fields,
the learning rate and the default training run), as one checked, savable config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .._utils import HubConfigMixin, check_choice, check_integer, check_number
from .mask import MemControlMask
from .training import _check_steps


SAMPLERS = ("nsga2", "tpe", "random", "exhaustive")
CUSTOM_SAMPLER = "custom"  # recorded when an `optuna.samplers.BaseSampler` object was passed as `sampler`
MAX_SEED = 2**32 - 1  # numpy's (and so optuna's samplers') seed range
MASK_FIELDS = ("lora_r", "lora_alpha", "lora_dropout")  # the `MemControlMask` fields `mask_kwargs` may set


@dataclass
class MemControlSearchConfig(HubConfigMixin):
    """The settings of a `MemControlSearch` that are plain values: everything but the model, the data, the
    objectives and training functions, the storage and the cache. `MemControlSearch(..., config=...)` takes it, or
    the same fields as keyword arguments; the search records `to_dict()` in its stored study and its result.

    Args:
        n_trials: How many finished trials the study should hold when `run()` returns (ignored by "exhaustive").
        sampler: "nsga2" (the default), "tpe", "random" or "exhaustive" (every mask; at most 12 groups); "custom"
            records that an `optuna.samplers.BaseSampler` object was passed to the search (which then needs it).
        seed: Seed of the sampler, of the trials' global RNG and of the default training runs, in [0, 2**32 - 1].
        method: The PEFT method of every mask: "lora", "full", "scale_bias" or "svdiff" (see `MemControlMask`).
        granularity: "block" or "module" (see `maskable_groups`).
        groups: The group names to search over (checked against the model by the search); None: every group.
        lr: A learning rate, or a (low, high) pair searched log-uniformly (stored as a tuple).
        train_steps: Optimizer steps of the default training run.
        batch_size: Batch size of the default training run.
        lr_scheduler: Learning-rate schedule of the default training run: "constant", "constant_with_warmup",
            "linear" or "cosine".
        warmup_steps: Warm-up steps of the default training run (below `train_steps`).
        mask_kwargs: Other `MemControlMask` fields for every mask (`lora_r`, `lora_alpha`, `lora_dropout`); None
            for none (stored as an empty dict).

    Raises:
        ValueError: On a value outside its allowed range, naming the field (an unknown sampler, method,
            granularity or schedule, a `warmup_steps` not below `train_steps`, a (low, high) `lr` with "exhaustive",
            a `mask_kwargs` key other than the three above, ...).

    Examples:
        >>> config = MemControlSearchConfig(n_trials=8, method="full", lr=[1e-5, 1e-3])
        >>> config.lr, MemControlSearchConfig.from_dict(config.to_dict()) == config
        ((1e-05, 0.001), True)
    """

    config_name: ClassVar[str] = "memcontrol_search_config.json"

    n_trials: int = field(default=20, metadata={"help": "finished trials the study should hold (not 'exhaustive')"})
    sampler: str = field(default="nsga2", metadata={"help": "nsga2, tpe, random or exhaustive (custom: an object)"})
    seed: int = field(default=0, metadata={"help": "seed of the sampler, the trials' RNG and the training runs"})
    method: str = field(default="lora", metadata={"help": "PEFT method of every mask: lora, full, scale_bias, svdiff"})
    granularity: str = field(default="block", metadata={"help": "block or module (see maskable_groups)"})
    groups: list[str] | None = field(default=None, metadata={"help": "group names to search over; None: every group"})
    lr: float | tuple[float, float] = field(
        default=1e-4, metadata={"help": "learning rate, or a (low, high) pair searched log-uniformly"}
    )
    train_steps: int = field(default=50, metadata={"help": "optimizer steps of the default training run"})
    batch_size: int = field(default=8, metadata={"help": "batch size of the default training run"})
    lr_scheduler: str = field(
        default="constant", metadata={"help": "constant, constant_with_warmup, linear or cosine (default training)"}
    )
    warmup_steps: int = field(default=0, metadata={"help": "warm-up steps of the default training run"})
    mask_kwargs: dict | None = field(
        default=None, metadata={"help": "other MemControlMask fields of every mask: lora_r, lora_alpha, lora_dropout"}
    )

    def __post_init__(self):
        self.n_trials = check_integer(self.n_trials, "n_trials", minimum=1)
        self.sampler = check_choice(self.sampler, "sampler", SAMPLERS + (CUSTOM_SAMPLER,))
        self.seed = check_integer(
            self.seed, "seed", minimum=0, maximum=MAX_SEED, hint="the sampler's and the trials' seed"
        )
        self.train_steps = check_integer(self.train_steps, "train_steps", minimum=1)
        self.batch_size = check_integer(self.batch_size, "batch_size", minimum=1)
        *_, self.lr_scheduler, self.warmup_steps = _check_steps(
            self.train_steps, self.batch_size, self.seed, None, self.lr_scheduler, self.warmup_steps, "train_steps"
        )
        if self.groups is not None:
            if isinstance(self.groups, (str, bytes)) or not hasattr(self.groups, "__iter__"):
                raise ValueError(f"`groups` must be a non-empty list of group names, got {self.groups!r}.")
            groups = list(self.groups)
            if not groups or not all(isinstance(g, str) for g in groups):
                raise ValueError(f"`groups` must be a non-empty list of group names, got {groups!r}.")
            self.groups = groups
        if isinstance(self.lr, (tuple, list)):
            if len(self.lr) != 2:
                raise ValueError(f"`lr` must be a number or a (low, high) pair, got {self.lr!r}.")
            low = check_number(self.lr[0], "lr[0]", minimum=0, exclusive_minimum=True)
            high = check_number(self.lr[1], "lr[1]", minimum=low, exclusive_minimum=True, hint="above lr[0]")
            self.lr = (low, high)
            if self.sampler == "exhaustive":
                raise ValueError("sampler='exhaustive' enumerates masks at one learning rate: give `lr` a number.")
        else:
            self.lr = check_number(self.lr, "lr", minimum=0, exclusive_minimum=True)
        if self.mask_kwargs is None:
            self.mask_kwargs = {}
        if not isinstance(self.mask_kwargs, dict):
            raise ValueError(f"`mask_kwargs` must be a dict of MemControlMask fields, got {self.mask_kwargs!r}.")
        unknown = sorted(set(self.mask_kwargs) - set(MASK_FIELDS), key=str)
        if unknown:
            raise ValueError(f"`mask_kwargs` has unknown keys {unknown}; allowed: {list(MASK_FIELDS)}.")
        # one mask checks the method, the granularity and the mask fields, and gives them as plain Python values
        template = MemControlMask(["group"], [1], self.method, self.granularity, **self.mask_kwargs)
        self.mask_kwargs = {name: getattr(template, name) for name in MASK_FIELDS if name in self.mask_kwargs}
