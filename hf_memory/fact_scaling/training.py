"""A plain, fast training loop on fact rows (large or full batches, loss on the answer only), and the parameter
count the laws are stated in."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .._utils import (
    HubConfigMixin,
    check_choice,
    check_integer,
    check_number,
    is_prompt_learning,
    model_device,
    supports_logits_to_keep,
    train_steps,
)
from .capacity import FactCapacityResult, _capacity_rows, _encode_rows, _reusable, fact_capacity
from .facts import SyntheticFactSet


SCHEDULES = ("constant", "cosine")
DIRECTIONS = ("forward", "inverse", "both")


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside every embedding table and the output projection (Kaplan et al.'s N).

    Token and position embeddings (every `nn.Embedding`, with any adapter wrapped around one, e.g. PEFT LoRA's) and
    the LM head (`get_output_embeddings()`, adapters included, counted once when tied) are left out; each shared
    tensor is counted once.

    Args:
        model: A `torch.nn.Module`, usually a transformers causal LM.
    """
    excluded = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) or isinstance(
            getattr(module, "base_layer", None), torch.nn.Embedding
        ):
            excluded.update(id(p) for p in module.parameters())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        excluded.update(id(p) for p in head.parameters())
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and id(p) not in excluded:
            total += p.numel()
        seen.add(id(p))
    return total


@dataclass
class TrainingHistory:
    """What `train_on_facts` recorded.

    Attributes:
        losses: Mean training loss per epoch.
        capacity: `(epoch, FactCapacityResult)` for every measured epoch.
        steps: Optimizer steps taken.
    """

    losses: list[float] = field(default_factory=list)
    capacity: list[tuple[int, FactCapacityResult]] = field(default_factory=list)
    steps: int = 0


def _answer_columns_only(model: torch.nn.Module) -> bool:
    """Whether the model can compute logits at given columns only: its forward takes `logits_to_keep`, and no PEFT
    prompt learning shifts every column by its virtual tokens."""
    return supports_logits_to_keep(model) and not is_prompt_learning(model)


def _answer_loss(model: torch.nn.Module, ids, mask, labels, keep_logits: bool) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens. With `keep_logits` the model computes logits only at the columns
    that predict an answer token in this batch (`logits_to_keep`): the same loss, without the LM head and softmax
    over every prompt position, which cost a tiny model most of its step."""
    if not keep_logits:
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    columns = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(1)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=columns).logits
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels[:, columns + 1].flatten(), ignore_index=-100
    )


def _training_rows(facts, direction: str) -> list[Mapping]:
    check_choice(direction, "direction", ("forward", "inverse", "both"))
    if isinstance(facts, SyntheticFactSet):
        return facts.rows("train", direction, repeat=True)
    if isinstance(facts, (str, bytes)) or not hasattr(facts, "__iter__"):
        raise ValueError(f"`facts` must be a SyntheticFactSet or rows with `prompt` and `target`, got {facts!r}.")
    rows = list(facts)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or "prompt" not in row or "target" not in row:
            raise ValueError(f"`facts[{i}]` must be a mapping with `prompt` and `target`, got {row!r}.")
    return rows


@dataclass
class FactTrainingConfig(HubConfigMixin):
    """The settings of a `train_on_facts` run (and of the experiments, which pass them on): the optimizer, the
    schedule, the direction, how often to measure and the seed. `train_on_facts(..., config=...)` takes it, or the
    same fields as keyword arguments.

    Args:
        epochs: Passes over the rows.
        lr: Peak learning rate.
        batch_size: Rows per step; None for the whole set (one step per epoch).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        schedule: "constant" after warm-up, or "cosine" decay toward 10% of `lr` (reached one step after the last).
        direction: For a `SyntheticFactSet`: "forward", "inverse" or "both".
        measure_every: Measure `fact_capacity` every this many epochs (and after the last); None never.
        seed: Seed of the shuffling.

    Raises:
        ValueError: On a value outside its allowed range, naming the field.

    Examples:
        >>> config = FactTrainingConfig(epochs=20, lr=1e-2, batch_size=512, schedule="cosine")
        >>> FactTrainingConfig.from_dict(config.to_dict()) == config, config.direction
        (True, 'forward')
    """

    config_name: ClassVar[str] = "fact_training_config.json"

    epochs: int = field(metadata={"help": "passes over the training rows"})
    lr: float = field(metadata={"help": "peak learning rate"})
    batch_size: int | None = field(default=None, metadata={"help": "rows per step; None for the whole set"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    schedule: str = field(default="constant", metadata={"help": "constant, or cosine decay toward 10% of lr"})
    direction: str = field(default="forward", metadata={"help": "forward, inverse or both (a SyntheticFactSet)"})
    measure_every: int | None = field(
        default=None, metadata={"help": "measure fact capacity every this many epochs; None never"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the shuffling"})

    def __post_init__(self):
        self.epochs = check_integer(self.epochs, "epochs", minimum=1)
        self.lr = check_number(self.lr, "lr", minimum=0.0, exclusive_minimum=True)
        self.batch_size = check_integer(self.batch_size, "batch_size", minimum=1, allow_none=True)
        self.weight_decay = check_number(self.weight_decay, "weight_decay", minimum=0.0)
        self.warmup_steps = check_integer(self.warmup_steps, "warmup_steps", minimum=0)
        self.schedule = check_choice(self.schedule, "schedule", SCHEDULES)
        self.direction = check_choice(self.direction, "direction", DIRECTIONS)
        self.measure_every = check_integer(self.measure_every, "measure_every", minimum=1, allow_none=True)
        self.seed = check_integer(self.seed, "seed", minimum=0)


def training_config(config: FactTrainingConfig | None, arguments: dict, where: str) -> FactTrainingConfig:
    """The `FactTrainingConfig` a run uses: `config` with the keyword arguments that differ from their defaults laid
    over it, or one built from them (then `epochs` and `lr` are required, as a missing argument: a `TypeError`)."""
    if config is None:
        missing = [name for name in ("epochs", "lr") if arguments.get(name) is None]
        if missing:
            raise TypeError(f"{where} needs {' and '.join(f'`{n}`' for n in missing)}, or a `config`.")
    return FactTrainingConfig.from_arguments(config, arguments, where)


def train_on_facts(
    model: torch.nn.Module,
    tokenizer,
    facts: SyntheticFactSet | Sequence[Mapping],
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = FactTrainingConfig.batch_size,
    weight_decay: float = FactTrainingConfig.weight_decay,
    warmup_steps: int = FactTrainingConfig.warmup_steps,
    schedule: str = FactTrainingConfig.schedule,
    direction: str = FactTrainingConfig.direction,
    measure_every: int | None = FactTrainingConfig.measure_every,
    measure_facts=None,
    seed: int = FactTrainingConfig.seed,
    on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None,
    config: FactTrainingConfig | None = None,
) -> TrainingHistory:
    """Train `model` on the facts' training rows with AdamW, the loss on the answer tokens only.

    The rows are encoded once (as `fact_capacity` encodes them), right-padded into one tensor and shuffled every
    epoch; `batch_size=None` trains full-batch (one step per epoch). Gradients are clipped to norm 1. A model
    whose forward takes `logits_to_keep` (most transformers causal LMs) computes logits only at the columns that
    predict an answer token. This is the loop the experiments use: for a tiny model it is several times faster
    than `Trainer`, whose per-step overhead dominates; `FactCapacityCallback` gives the same measurement inside
    `Trainer`.

    The settings from `epochs` to `seed` (not `measure_facts` and `on_epoch_end`) form a `FactTrainingConfig`:
    pass one as `config=`, or the fields as keyword arguments (positionally too, as before). The loop is the
    package's shared one (`exclusive` on the model: no other in-place call or reading thread overlaps it).

    Args:
        model: A causal language model; trained in place (in train mode; every module gets its own mode back after).
        tokenizer: The tokenizer to encode the rows with.
        facts: A `SyntheticFactSet` (its training rows, each fact as often as its repetitions, every template) or
            rows with `prompt` and `target`.
        epochs: Passes over the rows.
        lr: Peak learning rate.
        batch_size: Rows per step; None for the whole set.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        schedule: "constant" after warm-up, or "cosine" decay toward 10% of `lr` (reached one step after the last).
        direction: For a `SyntheticFactSet`: "forward", "inverse" or "both".
        measure_every: Measure `fact_capacity` every this many epochs (and after the last); None never.
        measure_facts: What to measure (default: `facts`); anything `fact_capacity` takes, measured in the
            direction trained (forward for "both").
        seed: Seed of the shuffling.
        on_epoch_end: Called as `on_epoch_end(epoch, model)` after every epoch (1-based), the model still held by
            this run (reading calls are fine; another call that changes the model in place is refused).
        config: A `FactTrainingConfig` with the settings from `epochs` to `seed`; keyword arguments that differ from
            their defaults override its fields. `epochs` and `lr` are needed, here or in `config`.

    Returns:
        A `TrainingHistory`. Every parameter's `.grad` is None afterwards (also after an error).

    Raises:
        ValueError: On a bad argument, naming it, before any training.
        TypeError: Without `epochs` or `lr` (and no `config`), or with a `config` that is not a `FactTrainingConfig`.
        RuntimeError: If another call is changing `model` in place, or another thread is reading it.
    """
    config = training_config(
        config,
        {
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "weight_decay": weight_decay,
            "warmup_steps": warmup_steps,
            "schedule": schedule,
            "direction": direction,
            "measure_every": measure_every,
            "seed": seed,
        },
        "`train_on_facts`",
    )
    epochs, lr, batch_size, warmup_steps = config.epochs, config.lr, config.batch_size, config.warmup_steps
    direction, measure_every, schedule = config.direction, config.measure_every, config.schedule
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise ValueError(f"`on_epoch_end` must be callable as on_epoch_end(epoch, model), got {on_epoch_end!r}.")
    facts = _reusable(facts)
    rows = _training_rows(facts, direction)
    if not rows:
        raise ValueError("`facts` has no training rows.")
    measure_direction = "inverse" if direction == "inverse" else "forward"
    measure_facts = facts if measure_facts is None else _reusable(measure_facts)
    if measure_every is not None:
        _capacity_rows(measure_facts, "train", measure_direction, 0, 256, "left")
    encoded, pad = _encode_rows(model, tokenizer, rows)
    width = max(len(p) + len(t) for p, t in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (p, t) in enumerate(encoded):
        ids[i, : len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p) : len(p) + len(t)] = torch.tensor(t)
        mask[i, : len(p) + len(t)] = 1
    device = model_device(model)
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    size = len(encoded) if batch_size is None else min(batch_size, len(encoded))
    steps_per_epoch = math.ceil(len(encoded) / size)
    total = epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(total - warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    history = TrainingHistory()
    keep_logits = _answer_columns_only(model)
    step_losses: list[float] = []

    def batches(generator: torch.Generator):
        """Each epoch's shuffled row indices, batch by batch; at an epoch's end (when the next batch is asked for)
        its mean loss, the measurement and `on_epoch_end`, with the model still held."""
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(ids), generator=generator).to(device)
            sizes = []
            for start in range(0, len(ids), size):
                index = order[start : start + size]
                sizes.append(len(index))
                yield index
            running = 0.0
            for loss, count in zip(step_losses[-len(sizes) :], sizes):
                running += loss * count
            history.losses.append(running / len(ids))
            if measure_every is not None and (epoch % measure_every == 0 or epoch == epochs):
                measured = fact_capacity(model, tokenizer, measure_facts, direction=measure_direction)
                history.capacity.append((epoch, measured))
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)

    def loss_fn(index: torch.Tensor) -> torch.Tensor:
        return _answer_loss(model, ids[index], mask[index], labels[index], keep_logits)

    def on_step(loss: float) -> None:
        step_losses.append(loss)
        history.steps += 1

    train_steps(
        model,
        batches,
        loss_fn,
        lr=lr,
        seed=config.seed,
        weight_decay=config.weight_decay,
        betas=(0.9, 0.98),
        max_grad_norm=1.0,
        scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor),
        on_step=on_step,
        what="train_on_facts",
    )
    return history
