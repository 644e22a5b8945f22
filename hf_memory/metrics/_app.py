"""What the metric folders' Space apps share: a gradio Blocks page with the metric's inputs, examples to load, a
button, and the metric's numbers in a table (and its per-sample scores in a second one).

Each `hf_memory/metrics/<name>/app.py` makes its input components and says how their values become the metric's
`compute` arguments; `MetricApp` does the rest. It needs gradio (the `spaces` extra), which a Space installs.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from numbers import Number
from typing import Any

from hf_memory._utils.imports import require_extra


require_extra("spaces", "The metric apps (hf_memory/metrics/*/app.py)")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402  (a dependency of gradio)


_INTEGER = re.compile(r"[+-]?\d+")


def _items(text: Any, name: str) -> list[str]:
    """The items of a list typed as text: separated by commas or whitespace, in optional [ ] or ( )."""
    if _blank(text):
        return []
    if isinstance(text, Number) and not isinstance(text, bool):
        return [str(text)]
    if not isinstance(text, str):
        raise ValueError(f"`{name}` must be text, got {type(text).__name__}.")
    text = text.strip()
    if text[:1] + text[-1:] in ("[]", "()"):
        text = text[1:-1]
    return [item for item in re.split(r"[\s,]+", text) if item]


def token_ids(text: Any, name: str) -> list[int]:
    """Token ids typed as text ("1 2 3", "1, 2, 3" or "[1, 2, 3]") as a list of integers.

    Args:
        text: The text of one table cell; blank gives an empty list.
        name: The metric argument it fills, e.g. "predictions[0]", named in the error.

    Raises:
        ValueError: If an item is not an integer. Negative ids pass, for the metric to refuse with its own message.
    """
    items = _items(text, name)
    for item in items:
        if not _INTEGER.fullmatch(item):
            raise ValueError(f"`{name}` must be token ids (integers separated by spaces or commas), got {item!r}.")
    return [int(item) for item in items]


def numbers(text: Any, name: str) -> list[float | int]:
    """Numbers typed as text ("0.5, -1.2 3"): integers stay integers, the rest become floats.

    Args:
        text: The text of one text box; blank gives an empty list.
        name: The metric argument it fills, e.g. "predictions", named in the error.

    Raises:
        ValueError: If an item is not a number. "nan" and "inf" pass, for the metric to refuse with its own message.
    """
    values = []
    for item in _items(text, name):
        try:
            values.append(int(item) if _INTEGER.fullmatch(item) else float(item))
        except ValueError:
            raise ValueError(f"`{name}` must be numbers separated by spaces or commas, got {item!r}.") from None
    return values


def _blank(cell: Any) -> bool:
    return (
        cell is None or (isinstance(cell, float) and math.isnan(cell)) or (isinstance(cell, str) and not cell.strip())
    )


def filled_rows(table: Sequence[Sequence[Any]] | None) -> list[list[Any]]:
    """The rows of an input table without the blank rows at its end (a table the user has just grown).

    Args:
        table: The table's rows, as gradio gives them with `type="array"`.
    """
    rows = [list(row) for row in table or []]
    while rows and all(_blank(cell) for cell in rows[-1]):
        rows.pop()
    return rows


def whole_number(value: Any, default: int) -> Any:
    """A number box's value for an integer argument: blank gives `default`, 200.0 gives 200; anything else is passed
    on for the metric to check (and refuse by name).

    Args:
        value: What the box holds (None when it was cleared).
        default: The metric's default for the argument.
    """
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def results_table(results: dict[str, Any], per_sample: Sequence[str] = ()) -> pd.DataFrame:
    """The metric's numbers, one row each: `output`, `value`, and where the metric gives them an `interval low` /
    `interval high` (from `<output>_interval`) and a `note` (from `not_measurable`). Nested results such as
    `per_task` become rows `per_task.<task>.<number>`; lists (per-sample scores, curves) are left out.

    Args:
        results: What the metric's `compute` returned.
        per_sample: Keys of per-sample lists, shown in the per-sample table instead.
    """
    notes = results.get("not_measurable") or {}
    rows = []

    def add(prefix: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            name = f"{prefix}{key}"
            if key in per_sample or key == "not_measurable" or key.endswith("_interval"):
                continue
            if isinstance(value, dict):
                add(f"{name}.", value)
            elif value is None or (isinstance(value, Number) and not isinstance(value, bool)):
                interval = values.get(f"{key}_interval") or (None, None)
                rows.append(
                    {
                        "output": name,
                        "value": value,
                        "interval low": interval[0],
                        "interval high": interval[1],
                        "note": notes.get(key, ""),
                    }
                )

    add("", results)
    table = pd.DataFrame(rows, columns=["output", "value", "interval low", "interval high", "note"], dtype=object)
    if all(row["interval low"] is None for row in rows):
        table = table.drop(columns=["interval low", "interval high"])
    if not notes:
        table = table.drop(columns=["note"])
    return table


def per_sample_table(results: dict[str, Any], per_sample: Sequence[str]) -> pd.DataFrame:
    """One row per sample: its index, then each per-sample list of `results` named without `_per_sample`.

    Args:
        results: What the metric's `compute` returned with its per-sample option on.
        per_sample: The keys of the per-sample lists, in column order.
    """
    columns = {"sample": list(range(len(results[per_sample[0]])))} if per_sample else {}
    columns.update({key.removesuffix("_per_sample"): list(results[key]) for key in per_sample})
    return pd.DataFrame(columns, dtype=object)


class MetricApp:
    """A metric's Space app: its inputs, examples to load, a Compute button and the numbers the metric returns.

    The first example should be the inputs' initial values, so that the page opens ready to compute.

    Args:
        metric: The `evaluate` metric module (`evaluate.load(folder)`).
        title: The page's title.
        description: Markdown under the title: what to enter and what comes out.
        inputs: The input components, made with `render=False`; the page shows them in this order.
        read_inputs: Takes the inputs' values and returns the keyword arguments of `metric.compute`; raises a
            `ValueError` naming the argument on input it cannot read.
        examples: Rows of input values, one value per input.
        per_sample: Keys of per-sample lists in the metric's results (asked for by `read_inputs`), shown one row per
            sample under the numbers.
    """

    def __init__(
        self,
        metric,
        *,
        title: str,
        description: str,
        inputs: Sequence[gr.components.Component],
        read_inputs: Callable[..., dict[str, Any]],
        examples: Sequence[Sequence[Any]],
        per_sample: Sequence[str] = (),
    ):
        self.metric = metric
        self.inputs = list(inputs)
        self.read_inputs = read_inputs
        self.per_sample = tuple(per_sample)
        self._lock = threading.Lock()  # an `evaluate` module's compute breaks when two threads run it at once
        with gr.Blocks(title=title) as self.demo:
            gr.Markdown(f"# {title}\n\n{description}")
            for component in self.inputs:
                component.render()
            button = gr.Button("Compute", variant="primary", elem_id="compute")
            gr.Examples(examples=[list(example) for example in examples], inputs=self.inputs)
            empty = pd.DataFrame(columns=["output", "value"])  # until Compute: headers, no rows
            outputs = [
                gr.Dataframe(empty, label="Results", interactive=False, wrap=True, max_height=1000, elem_id="results")
            ]
            if self.per_sample:
                empty = pd.DataFrame(columns=["sample", *(key.removesuffix("_per_sample") for key in self.per_sample)])
                outputs.append(
                    gr.Dataframe(empty, label="Per sample", interactive=False, max_height=1000, elem_id="per-sample")
                )
            # One computation at a time (see `_lock`): users wait in gradio's queue, which shows their place in it.
            button.click(self.submit, inputs=self.inputs, outputs=outputs, api_name="compute", concurrency_limit=1)

    def submit(self, *values: Any) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
        """What the Compute button runs: the metric on the inputs' values, as the results table (and the per-sample
        table).

        Args:
            *values: One value per input, as gradio passes them.

        Raises:
            gradio.Error: With the metric's message, on input the metric refuses (shown on the page).
        """
        try:
            arguments = self.read_inputs(*values)
            with self._lock:
                results = self.metric.compute(**arguments)
        except ValueError as err:
            raise gr.Error(str(err)) from None
        table = results_table(results, self.per_sample)
        return (table, per_sample_table(results, self.per_sample)) if self.per_sample else table
