"""Lu et al.'s three behaviours of fact memorization as experiments: compatibility of redundant facts, preference
for frequent and difficult facts, and overwriting of earlier facts by later ones."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from .._utils import check_keywords
from .capacity import fact_capacity
from .facts import SyntheticFactSet
from .training import FactTrainingConfig, train_on_facts, training_config


def _check_factory(make_model) -> None:
    if isinstance(make_model, torch.nn.Module) or not callable(make_model):
        raise ValueError(f"`make_model` must be a callable returning a fresh model, got {make_model!r}.")


_TRAIN_SETTINGS = frozenset(inspect.signature(train_on_facts).parameters) - {"model", "tokenizer", "facts"}
_RUNTIME = ("measure_facts", "on_epoch_end")  # `train_on_facts` arguments that are no config fields


def _training(train_kwargs: dict, reserved: tuple[str, ...] = ()) -> tuple[FactTrainingConfig, dict]:
    """The experiment's `train_on_facts` settings as one `FactTrainingConfig` and the other arguments, refused before
    any model is built when a keyword is not a setting, is one the experiment sets, or holds a bad value."""
    where = "the experiment's `train_on_facts` settings" + (
        f" ({', '.join(reserved)} set by the experiment)" if reserved else ""
    )
    check_keywords(train_kwargs, _TRAIN_SETTINGS - set(reserved), where)
    runtime = {name: train_kwargs[name] for name in _RUNTIME if name in train_kwargs}
    fields = {k: v for k, v in train_kwargs.items() if k not in runtime and k != "config"}
    config = training_config(train_kwargs.get("config"), fields, where)
    for name in reserved:
        default = FactTrainingConfig.__dataclass_fields__[name].default
        if getattr(config, name) != default:
            raise ValueError(
                f"The experiment sets `{name}` itself; leave `config.{name}` at {default!r}, got "
                f"{getattr(config, name)!r}."
            )
    return config, runtime


def _fresh(make_model) -> torch.nn.Module:
    model = make_model()
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"`make_model` must return a fresh model (a torch.nn.Module), got {type(model).__name__}.")
    return model


def _check_facts(facts, name: str) -> None:
    if not isinstance(facts, SyntheticFactSet):
        raise ValueError(f"`{name}` must be a SyntheticFactSet, got {type(facts).__name__}.")
    if len(facts) == 0:
        raise ValueError(f"`{name}` has no training facts.")


def _share(known: int, total: int) -> dict[str, float]:
    return {"known": known, "total": total, "fraction": known / total if total else float("nan")}


def compatibility_experiment(
    make_model: Callable[[], torch.nn.Module], tokenizer, facts: SyntheticFactSet, **train_kwargs: Any
) -> dict[str, Any]:
    """Facts alone vs facts plus their inverses, each in a fresh model: does redundancy cost capacity?

    Two runs with the same settings: one on the forward rows, one on the forward and inverse rows. If a model
    stored a fact and its inverse compatibly (in one place), adding the inverses would not lower how many forward
    facts it knows; Lu et al. find it does when direction and structure differ.

    Args:
        make_model: Returns a fresh, identically initialised model each call.
        tokenizer: The tokenizer to train and measure with.
        facts: A `SyntheticFactSet` built with `inverse=True`.
        **train_kwargs: `train_on_facts` settings (`epochs`, `lr`, `batch_size`, ..., or `config=` a
            `FactTrainingConfig`; not `direction`, which the experiment sets), checked before any model is built.

    Returns:
        `{"unique_facts": n, "alone": {"forward": share}, "with_inverse": {"forward": share, "inverse": share,
        "both": share}, "forward_change": known with inverses minus known alone}`, each share
        `{"known", "total", "fraction"}`; "both" counts facts known in both directions.

    Raises:
        ValueError: If `facts` was built without `inverse=True`, or on a bad argument.
    """
    _check_factory(make_model)
    _check_facts(facts, "facts")
    config, runtime = _training(train_kwargs, reserved=("direction",))
    if not facts.inverse:
        raise ValueError("`facts` must be built with inverse=True for the compatibility experiment.")
    n = len(facts)
    alone = _fresh(make_model)
    train_on_facts(alone, tokenizer, facts, config=config, **runtime)
    forward_alone = fact_capacity(alone, tokenizer, facts)
    both = _fresh(make_model)
    train_on_facts(both, tokenizer, facts, config=dataclasses.replace(config, direction="both"), **runtime)
    forward = fact_capacity(both, tokenizer, facts)
    inverse = fact_capacity(both, tokenizer, facts, direction="inverse")
    in_both = sum(f and i for f, i in zip(forward.known, inverse.known))
    return {
        "unique_facts": n,
        "alone": {"forward": _share(forward_alone.count, n)},
        "with_inverse": {
            "forward": _share(forward.count, n),
            "inverse": _share(inverse.count, n),
            "both": _share(in_both, n),
        },
        "forward_change": forward.count - forward_alone.count,
    }


def _bucket(repetitions: int) -> str:
    low = 2 ** int(math.floor(math.log2(repetitions)))
    return str(low) if low == 2 * low - 1 else f"{low}-{2 * low - 1}"


def preference_experiment(
    model: torch.nn.Module, tokenizer, facts: SyntheticFactSet, **train_kwargs: Any
) -> dict[str, Any]:
    """Train on facts of unequal frequency and difficulty; which facts does the model keep?

    Frequency is a fact's number of repetitions (`zipf_exponent`), grouped in powers of two (1, 2-3, 4-7, ...);
    difficulty is the size of the attribute's value set (a value out of 256 carries 8 bits, out of 16 only 4). The
    chance of a correct guess is 1 / value-set size, given per difficulty.

    Args:
        model: A fresh model; trained in place.
        tokenizer: The tokenizer to train and measure with.
        facts: A `SyntheticFactSet`, usually with `zipf_exponent` and attributes of different value-set sizes.
        **train_kwargs: `train_on_facts` settings (`epochs`, `lr`, `batch_size`, ..., or `config=` a
            `FactTrainingConfig`; not `direction`: the facts are trained and measured forward).

    Returns:
        `{"capacity": FactCapacityResult, "by_frequency": {bucket: share}, "by_value_set_size": {size: share with
        "chance"}}`, each share `{"known", "total", "fraction"}`, buckets in increasing order.

    Raises:
        ValueError: On a bad argument.
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"`model` must be a fresh model (a torch.nn.Module), got {type(model).__name__}.")
    _check_facts(facts, "facts")
    config, runtime = _training(train_kwargs, reserved=("direction",))
    train_on_facts(model, tokenizer, facts, config=config, **runtime)
    result = fact_capacity(model, tokenizer, facts)
    by_frequency: dict[str, list[int]] = {}
    by_size: dict[int, list[int]] = {}
    for fact, ok in sorted(zip(facts.train, result.known), key=lambda item: item[0].repetitions):
        for key, table in ((_bucket(fact.repetitions), by_frequency), (fact.num_values, by_size)):
            entry = table.setdefault(key, [0, 0])
            entry[0] += int(ok)
            entry[1] += 1
    return {
        "capacity": result,
        "by_frequency": {k: _share(*v) for k, v in by_frequency.items()},
        "by_value_set_size": {k: {**_share(*v), "chance": 1 / k} for k, v in sorted(by_size.items())},
    }


def overwriting_experiment(
    make_model: Callable[[], torch.nn.Module],
    tokenizer,
    facts_a: SyntheticFactSet,
    facts_b: SyntheticFactSet,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Set A, then set B, against A and B mixed: how much of A survives learning B?

    Sequential run: a fresh model trains on A, is measured, trains on B with the same settings and is measured
    again. Mixed run: a fresh model trains on A and B shuffled together with the same settings (so each fact is
    seen as often as in the sequential run). Lu et al. find later facts overwrite earlier ones.

    Args:
        make_model: Returns a fresh, identically initialised model each call.
        tokenizer: The tokenizer to train and measure with.
        facts_a: The facts learned first (e.g. `facts.select(range(n))`).
        facts_b: The facts learned second.
        **train_kwargs: `train_on_facts` settings (`epochs`, `lr`, `batch_size`, ..., or `config=` a
            `FactTrainingConfig`), checked before any model is built. With `direction`, both runs train in that
            direction and are measured in it (forward for "both").

    Returns:
        `{"sequential": {"a_after_a": share, "a_after_b": share, "b_after_b": share}, "mixed": {"a": share, "b":
        share}, "a_retained": a_after_b / a_after_a}`, each share `{"known", "total", "fraction"}`.

    Raises:
        ValueError: On a bad argument.
    """
    _check_factory(make_model)
    _check_facts(facts_a, "facts_a")
    _check_facts(facts_b, "facts_b")
    config, runtime = _training(train_kwargs)
    direction = config.direction
    rows = facts_a.rows("train", direction) + facts_b.rows("train", direction)
    measured = {"direction": "inverse" if direction == "inverse" else "forward"}
    sequential = _fresh(make_model)
    train_on_facts(sequential, tokenizer, facts_a, config=config, **runtime)
    a_after_a = fact_capacity(sequential, tokenizer, facts_a, **measured)
    train_on_facts(sequential, tokenizer, facts_b, config=config, **runtime)
    a_after_b = fact_capacity(sequential, tokenizer, facts_a, **measured)
    b_after_b = fact_capacity(sequential, tokenizer, facts_b, **measured)
    mixed = _fresh(make_model)
    train_on_facts(mixed, tokenizer, rows, config=config, **runtime)
    mixed_a = fact_capacity(mixed, tokenizer, facts_a, **measured)
    mixed_b = fact_capacity(mixed, tokenizer, facts_b, **measured)
    return {
        "sequential": {
            "a_after_a": _share(a_after_a.count, a_after_a.total),
            "a_after_b": _share(a_after_b.count, a_after_b.total),
            "b_after_b": _share(b_after_b.count, b_after_b.total),
        },
        "mixed": {"a": _share(mixed_a.count, mixed_a.total), "b": _share(mixed_b.count, mixed_b.total)},
        "a_retained": a_after_b.count / a_after_a.count if a_after_a.count else float("nan"),
    }
