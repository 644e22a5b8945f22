"""Argument checks shared by every capability: token ids, integers and numbers, each with one clear message."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch


def as_token_ids(values, name: str, dims: tuple[int, ...] = (1, 2)) -> torch.Tensor:
    """Return `values` as an int64 tensor of token ids.

    Args:
        values: A tensor, a (nested) list or a numpy array of integer token ids.
        name: The argument name shown in the error message.
        dims: The allowed numbers of dimensions.

    Raises:
        ValueError: If `values` is not integer-typed or has another number of dimensions.
    """
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"`{name}` must hold integer token ids, got dtype {tensor.dtype}.")
    if tensor.dim() not in dims:
        allowed = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"`{name}` must be {allowed}, got a {tensor.dim()}-D tensor of shape {tuple(tensor.shape)}.")
    return tensor.long()


def _is_integer(value) -> bool:
    # numbers.Integral covers numpy integer scalars (numpy's bool is not one); a Python bool is not a count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(value, name: str, minimum: int | None = None, allow_none: bool = False, hint: str = ""):
    """Return `value` as a Python `int`, or raise a `ValueError` naming `name` and the allowed values.

    Args:
        value: The value to check; numpy integer scalars are accepted, booleans are not.
        name: The argument name shown in the error message.
        minimum: The smallest allowed value, or None for no bound.
        allow_none: Whether None is allowed (and returned as is).
        hint: A few words on what the argument means, shown in parentheses.
    """
    if value is None and allow_none:
        return None
    if not _is_integer(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
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
    """
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        if minimum is not None and maximum is not None:
            bound = f" in {'(' if exclusive_minimum else '['}{minimum}, {maximum}]"
        elif minimum is not None:
            bound = f" {'>' if exclusive_minimum else '>='} {minimum}"
        elif maximum is not None:
            bound = f" <= {maximum}"
        else:
            bound = ""
        raise ValueError(
            f"`{name}` must be a finite number{bound}{' or None' if allow_none else ''}"
            f"{f' ({hint})' if hint else ''}, got {value!r}."
        )
    return float(value)


def check_choice(value, name: str, choices: Sequence):
    """Return `value` if it is one of `choices`, else raise a `ValueError` listing them.

    Args:
        value: The value to check.
        name: The argument name shown in the error message.
        choices: The allowed values.
    """
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value
