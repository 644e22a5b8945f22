"""Argument checks shared by every capability: token ids, integers and numbers, each with one clear message."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np
import torch


def as_token_ids(values, name: str, dims: tuple[int, ...] = (1, 2), allow_negative: bool = False) -> torch.Tensor:
    """Return `values` as an int64 tensor of token ids.

    Args:
        values: A tensor, a (nested) list or a numpy array of integer token ids.
        name: The argument name shown in the error message.
        dims: The allowed numbers of dimensions.
        allow_negative: Accept negative values (position ids of left padding); token ids never are.

    Raises:
        ValueError: If `values` is not integer-typed, has another number of dimensions, holds a negative id, or a
            value that does not fit int64.
    """
    if not isinstance(values, torch.Tensor):
        try:
            converted = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            raise ValueError(f"`{name}` must hold integer token ids: {err}") from None
        # An empty list has no dtype to speak of (torch makes it float32): it is an empty sequence of ids.
        values = converted.long() if converted.numel() == 0 and converted.is_floating_point() else converted
    tensor = values
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"`{name}` must hold integer token ids, got dtype {tensor.dtype}.")
    if tensor.dim() not in dims:
        allowed = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"`{name}` must be {allowed}, got a {tensor.dim()}-D tensor of shape {tuple(tensor.shape)}.")
    if tensor.dtype in (torch.uint16, torch.uint32, torch.uint64):  # torch has no max() for these: check in numpy
        array = tensor.cpu().numpy()
        if array.size and int(array.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"`{name}` holds {int(array.max())}, which is no token id (more than 2**63 - 1).")
        tensor = torch.from_numpy(array.astype(np.int64)).to(tensor.device)
    tensor = tensor.long()
    if not allow_negative and tensor.numel() and int(tensor.min()) < 0:
        raise ValueError(f"`{name}` must hold token ids >= 0, got {int(tensor.min())}.")
    return tensor


def vocabulary_size(model) -> int | None:
    """The number of rows of the model's input embedding, or None when it has none to read.

    Args:
        model: A transformers model (anything with `get_input_embeddings`).
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(embeddings, "num_embeddings", None)


def check_vocabulary(ids: torch.Tensor, model, name: str) -> None:
    """Raise a `ValueError` naming `name`, the offending id and the vocabulary size if an id is outside the model's
    vocabulary (the embedding would fail with an `IndexError` deep in torch, or on a GPU with a device assert).

    Args:
        ids: Token ids, any shape.
        model: A transformers model with input embeddings.
        name: The argument name shown in the error message.
    """
    size = vocabulary_size(model)
    if size is None or not ids.numel():
        return
    largest = int(ids.max())
    if largest >= size:
        raise ValueError(
            f"`{name}` holds token id {largest}, outside the model's vocabulary of {size} (ids 0 to {size - 1})."
        )


def _scalar(value):
    """A 0-d numpy array or torch tensor as its Python number; anything else unchanged."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def _is_integer(value) -> bool:
    # numbers.Integral covers numpy integer scalars (numpy's bool is not one); a Python bool is not a count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(
    value, name: str, minimum: int | None = None, allow_none: bool = False, hint: str = "", maximum: int | None = None
):
    """Return `value` as a Python `int`, or raise a `ValueError` naming `name` and the allowed values.

    Args:
        value: The value to check; numpy integer scalars are accepted, booleans are not.
        name: The argument name shown in the error message.
        minimum: The smallest allowed value, or None for no bound.
        allow_none: Whether None is allowed (and returned as is).
        hint: A few words on what the argument means, shown in parentheses.
        maximum: The largest allowed value, or None for no bound.
    """
    if value is None and allow_none:
        return None
    value = _scalar(value)
    low = minimum is not None and _is_integer(value) and value < minimum
    high = maximum is not None and _is_integer(value) and value > maximum
    if not _is_integer(value) or low or high:
        if minimum is not None and maximum is not None:
            bound = f" in [{minimum}, {maximum}]"
        elif minimum is not None:
            bound = f" >= {minimum}"
        else:
            bound = f" <= {maximum}" if maximum is not None else ""
        raise ValueError(
            f"`{name}` must be an integer{bound}{' or None' if allow_none else ''}{f' ({hint})' if hint else ''}, "
            f"got {value!r}."
        )
    return int(value)


def check_number(
    value,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    allow_none: bool = False,
    hint: str = "",
    exclusive_maximum: bool = False,
):
    """Return `value` as a finite Python `float`, or raise a `ValueError` naming `name` and the allowed range.

    Args:
        value: The value to check; integers and numpy scalars are accepted, booleans, NaN and infinities are not.
        name: The argument name shown in the error message.
        minimum: The smallest allowed value, or None for no bound.
        maximum: The largest allowed value, or None for no bound.
        exclusive_minimum: Whether `minimum` itself is excluded (`> minimum` rather than `>= minimum`).
        allow_none: Whether None is allowed (and returned as is).
        hint: A few words on what the argument means, shown in parentheses.
        exclusive_maximum: Whether `maximum` itself is excluded (`< maximum` rather than `<= maximum`).
    """
    if value is None and allow_none:
        return None
    value = _scalar(value)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        ok = False
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if exclusive_maximum else value <= maximum
    if not ok:
        if minimum is not None and maximum is not None:
            bound = f" in {'(' if exclusive_minimum else '['}{minimum}, {maximum}{')' if exclusive_maximum else ']'}"
        elif minimum is not None:
            bound = f" {'>' if exclusive_minimum else '>='} {minimum}"
        elif maximum is not None:
            bound = f" {'<' if exclusive_maximum else '<='} {maximum}"
        else:
            bound = ""
        raise ValueError(
            f"`{name}` must be a finite number{bound}{' or None' if allow_none else ''}"
            f"{f' ({hint})' if hint else ''}, got {value!r}."
        )
    return float(value) + 0.0  # + 0.0: -0.0 is stored as 0.0


def check_choice(value, name: str, choices: Sequence):
    """Return `value` if it is one of `choices`, else raise a `ValueError` listing them.

    Args:
        value: The value to check.
        name: The argument name shown in the error message.
        choices: The allowed values.
    """
    try:
        hash(value)  # unhashable values (lists, arrays) would compare elementwise
    except TypeError:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.") from None
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value


def check_bool(value, name: str, allow_none: bool = False) -> bool | None:
    """Return `value` as a Python `bool`, or raise a `ValueError` naming `name`.

    Only True and False are accepted (numpy's `bool_` and 0-d boolean tensors too): `1`, `"yes"` or a list are
    refused rather than read by their truth value, which would turn a typo into a setting.

    Args:
        value: The value to check.
        name: The argument name shown in the error message.
        allow_none: Whether None is allowed (and returned as is).
    """
    if value is None and allow_none:
        return None
    value = _scalar(value)
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be True or False{' or None' if allow_none else ''}, got {value!r}.")
    return bool(value)


def check_keywords(given: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Raise a `TypeError` naming every keyword of `given` that is not in `allowed`, as Python does for a call that
    does not match a signature (the house rule: a malformed call is a `TypeError`, a bad value a `ValueError`).

    Args:
        given: The keyword names the caller passed.
        allowed: The names the callee takes.
        where: What was called, e.g. "`fact_capacity`", shown in the message.

    Raises:
        TypeError: If a keyword is not allowed (all such are named, with the allowed ones).
    """
    allowed = list(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        noun = "argument" if len(unknown) == 1 else "arguments"
        raise TypeError(f"{where} got unexpected keyword {noun} {unknown}; it takes {sorted(allowed)}.")
