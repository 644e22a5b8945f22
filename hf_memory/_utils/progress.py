"""Progress bars: a measuring function shows its own tqdm bar, or advances one its caller gives it (how `audit`
keeps one bar per stage while each stage runs batch by batch)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .checks import check_bool


def check_progress(value, name: str = "show_progress"):
    """`show_progress` checked before any work: True or False (numpy bools too), or a progress bar to advance.

    A progress bar is anything with callable `update` and `set_postfix_str` (a `tqdm` bar, or an object that looks
    like one).

    Args:
        value: The value to check.
        name: The argument name shown in the error message.

    Returns:
        A Python bool, or the bar as given.

    Raises:
        ValueError: For anything else (`1`, `"yes"`, None).

    Examples:
        >>> from tqdm import tqdm
        >>> check_progress(False), isinstance(check_progress(tqdm(disable=True)), tqdm)
        (False, True)
    """
    if callable(getattr(value, "update", None)) and callable(getattr(value, "set_postfix_str", None)):
        return value
    try:
        return check_bool(value, name)
    except ValueError:
        raise ValueError(
            f"`{name}` must be True, False or a tqdm progress bar to advance, got {value!r:.60}."
        ) from None


@contextlib.contextmanager
def progress_bar(show_progress, **kwargs) -> Iterator:
    """The bar a loop advances: a new `tqdm.auto` bar (hidden when `show_progress` is False), closed on exit; or the
    caller's bar, advanced as is and left open.

    Args:
        show_progress: True, False, or a bar (see `check_progress`).
        **kwargs: `tqdm`'s arguments for a new bar (`total`, `desc`, `unit`, `disable`, ...); `disable` is or-ed
            with `not show_progress`.

    Yields:
        The bar.
    """
    if not isinstance(show_progress, bool):
        yield show_progress
        return
    from tqdm.auto import tqdm

    kwargs["disable"] = kwargs.get("disable", False) or not show_progress
    bar = tqdm(**kwargs)
    try:
        yield bar
    finally:
        bar.close()
