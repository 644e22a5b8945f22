"""The metrics' Space apps (hf_memory/metrics/*/app.py): each page builds on current gradio without being served, its
Compute button's function shows the numbers of the metric's own `compute` on the same input, bad input gets the
metric's message on the page, and (slow) a user's click in headless Chromium shows those numbers."""

from __future__ import annotations

import math
import re
import threading

import pytest


gr = pytest.importorskip("gradio")  # the `spaces` extra (in `dev`)

from tests.metric_app_browser import APPS, chromium, load_app, tables_after_compute  # noqa: E402


@pytest.fixture(scope="module", params=APPS)
def app(request):
    return load_app(request.param)


@pytest.fixture(scope="module")
def extraction():
    return load_app("extractable_memorization").app


@pytest.fixture(scope="module")
def graphs():
    return load_app("graph_reasoning").app


@pytest.fixture(scope="module")
def membership():
    return load_app("membership_inference").app


def split(text):
    return [item for item in re.split(r"[\s,]+", text.strip()) if item]


def compute_arguments(name, example):
    """The metric's arguments for an app's example, read here without the app's helpers."""
    if name == "extractable_memorization":
        table, strict = example
        return {
            "predictions": [[int(token) for token in split(row[0])] for row in table],
            "references": [[int(token) for token in split(row[1])] for row in table],
            "strict_exact_match": strict,
            "return_per_sample": True,
        }
    if name == "graph_reasoning":
        table, tolerance = example
        return {
            "predictions": [row[0] for row in table],
            "references": [row[1] for row in table],
            "flow_tolerance": tolerance,
            "return_per_sample": True,
        }
    scores, labels, fprs, n_bootstrap, confidence, seed = example
    return {
        "predictions": [float(score) for score in split(scores)],
        "references": [int(label) for label in split(labels)],
        "fprs": [float(rate) for rate in split(fprs)],
        "n_bootstrap": n_bootstrap,
        "confidence": confidence,
        "seed": seed,
    }


def expected_numbers(results):
    """{output: number or None}, the rows the results table should have: top-level numbers, then per task."""
    numbers = {}
    for key, value in results.items():
        if key == "per_task":
            numbers.update({f"per_task.{task}.{k}": v for task, values in value.items() for k, v in values.items()})
        elif not key.endswith("_interval") and (value is None or isinstance(value, (int, float))):
            numbers[key] = value
    return numbers


def per_sample_keys(results):
    return [key for key in results if key.endswith("_per_sample") or key in ("correct", "parsed")]


def name_of(module):
    return module.__name__.removeprefix("metric_app_")


def test_every_app_builds_on_current_gradio_and_opens_on_its_first_example(app):
    assert isinstance(app.demo, gr.Blocks)
    loaded = [c.value["data"] if isinstance(c, gr.Dataframe) else c.value for c in app.app.inputs]
    assert loaded == [list(map(list, v)) if isinstance(v, list) else v for v in app.EXAMPLES[0]]
    (examples,) = [block for block in app.demo.blocks.values() if isinstance(block, gr.Dataset)]
    assert len(examples.samples) == len(app.EXAMPLES) == 3
    (compute,) = [fn for fn in app.demo.fns.values() if fn.api_name == "compute"]
    assert compute.fn == app.app.submit and compute.concurrency_limit == 1
    assert [block.elem_id for block in compute.outputs] == ["results", "per-sample"][: len(compute.outputs)]


@pytest.mark.parametrize("example", [0, 1, 2])
def test_compute_shows_the_metrics_own_numbers_on_each_example(app, example):
    values = app.EXAMPLES[example]
    expected = app.metric.compute(**compute_arguments(name_of(app), values))
    shown = app.app.submit(*values)
    table, per_sample = shown if isinstance(shown, tuple) else (shown, None)
    numbers, notes = expected_numbers(expected), expected.get("not_measurable", {})
    rows = table.to_dict("records")
    assert [row["output"] for row in rows] == list(numbers)
    for row in rows:
        assert row["value"] == numbers[row["output"]], row
        interval = expected.get(f"{row['output']}_interval")
        assert [row.get("interval low"), row.get("interval high")] == (interval or [None, None]), row
        assert row.get("note", "") == notes.get(row["output"], ""), row
    assert ("note" in table) == bool(notes)
    assert ("interval low" in table) == any(expected[key] for key in expected if key.endswith("_interval"))
    assert (per_sample is None) == (per_sample_keys(expected) == [])
    if per_sample is not None:
        assert list(per_sample.columns) == ["sample"] + [
            k.removesuffix("_per_sample") for k in per_sample_keys(expected)
        ]
        for key in per_sample_keys(expected):
            assert list(per_sample[key.removesuffix("_per_sample")]) == list(expected[key]), key
        assert list(per_sample["sample"]) == list(range(len(per_sample)))


def test_the_examples_show_what_they_say():
    """Each app's examples differ in what they show: the numbers are not all the same."""
    for name in APPS:
        module = load_app(name)
        tables = [module.app.submit(*example) for example in module.EXAMPLES]
        tables = [table[0] if isinstance(table, tuple) else table for table in tables]
        assert len({tuple(map(str, table["value"])) for table in tables}) == 3, name


def test_extraction_reads_token_ids_written_every_usual_way(extraction):
    table, _ = extraction.submit(
        [["[1, 2, 3, 4]", "1,2,3,4"], ["(5 6  7)", " 5, 6, 0 "], ["", ""], [None, None]], False
    )
    plain, _ = extraction.submit([["1 2 3 4", "1 2 3 4"], ["5 6 7", "5 6 0"]], False)
    assert table.equals(plain)  # the blank rows at the end (a grown table) are left out
    table, per_sample = extraction.submit([["", "1 2"]], False)  # an empty prediction is scored, as a miss
    assert list(table["value"]) == [0.0, 0.0, 0.0, 0.0] and len(per_sample) == 1


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ([["1 2.5", "1 2"]], r"`predictions\[0\]` must be token ids .*'2.5'"),
        ([["1 2", "one two"]], r"`references\[0\]` must be token ids .*'one'"),
        ([["1 2", "1 2"], ["3", ""]], r"references\[1\]"),  # empty reference: the metric's message
        ([["1 -100", "1 2"]], r"predictions\[0\]"),  # the label mask: the metric refuses it by name
        ([["1 99999999999999999999", "1 2"]], r"predictions\[0\]"),  # beyond int64
        ([["1", "1"], ["", ""], ["2", "2"]], r"references\[1\]"),  # a blank row in the middle is a sample
        ([[]], "empty|no samples|at least one"),
        ([[True, "1"]], r"`predictions\[0\]` must be text"),
    ],
)
def test_extraction_refuses_bad_tables_with_a_message_naming_the_argument(extraction, table, match):
    with pytest.raises(gr.Error, match=match):
        extraction.submit(table, False)


def test_graph_reasoning_refuses_a_bad_graph_and_defaults_a_cleared_tolerance(graphs):
    with pytest.raises(gr.Error, match=r"references\[0\]"):
        graphs.submit([["The answer is yes.", '{"task": "connectivity"']], 0.01)
    with pytest.raises(gr.Error, match=r"predictions\[1\]|references\[1\]"):
        graphs.submit([["The answer is yes.", graphs.inputs[0].value["data"][0][1]], ["", ""], ["yes", "{}"]], 0.01)
    flow = graphs.inputs[0].value["data"][4][1]
    cleared, _ = graphs.submit([["The answer is 3.005.", flow]], None)
    default, _ = graphs.submit([["The answer is 3.005.", flow]], 0.01)
    assert cleared.equals(default) and cleared["value"][0] == 1.0  # 0.005 off, within the default 0.01
    strict, _ = graphs.submit([["The answer is 3.005.", flow]], 0)
    assert strict["value"][0] == 0.0


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (("0.1, abc", "1, 0", "", 0, 0.95, 0), r"`predictions` must be numbers .*'abc'"),
        (("0.1, nan", "1, 0", "", 0, 0.95, 0), "predictions"),
        (("0.1, 0.2", "1, 0.5", "", 0, 0.95, 0), "references"),  # Arrow would have cast 0.5 to 0
        (("0.1, 0.2, 0.3", "1, 0", "", 0, 0.95, 0), "predictions"),
        (("0.1, 0.2", "1, 1", "", 0, 0.95, 0), "single class"),
        (("0.1, 0.2", "1, 0", "0.01, 2", 0, 0.95, 0), "fprs"),
        (("0.1, 0.2", "1, 0", "", 2.5, 0.95, 0), "n_bootstrap"),
        (("0.1, 0.2", "1, 0", "", 200, 0.95, 0), "n_bootstrap|5"),  # too few documents for a bootstrap
    ],
)
def test_membership_refuses_bad_input_with_the_metrics_message(membership, values, match):
    with pytest.raises(gr.Error, match=match):
        membership.submit(*values)


def test_membership_reads_cleared_boxes_as_the_metrics_defaults(membership):
    scores, labels = "-0.5 -1.2 -0.9 -2.0 -1.1 -3.0", "1 1 1 0 0 0"
    cleared = membership.submit(scores, labels, "", None, None, None)
    default = membership.submit(scores, labels, "0.01, 0.001", 0, 0.95, 0)
    assert cleared.equals(default) and list(cleared["output"])[1:3] == ["tpr_at_0.01_fpr", "tpr_at_0.001_fpr"]
    scores, labels = "1 2 3 4 5 6 0 1 2 3 4 5", "1 1 1 1 1 1 0 0 0 0 0 0"
    as_float = membership.submit(scores, labels, "0.5", 200.0, 0.9, 3.0)  # a number box may hold 200.0
    assert as_float["interval low"][0] < as_float["value"][0] < as_float["interval high"][0]


def test_two_users_at_once_get_their_own_numbers(extraction):
    """Two threads computing at once (an `evaluate` module's compute then fails: 'NoneType' object is not iterable)
    each get the numbers of their own input; gradio also runs one Compute at a time (concurrency_limit=1)."""
    tables, errors = {}, []

    def run(key, table):
        try:
            for _ in range(5):
                tables.setdefault(key, []).append(extraction.submit(table, False)[0])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [
        threading.Thread(target=run, args=("same", [["1 2 3", "1 2 3"]])),
        threading.Thread(target=run, args=("different", [["1 2 3", "4 5 6"]])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert {tuple(table["value"]) for table in tables["same"]} == {(1.0, 1.0, 3.0, 1.0)}
    assert {tuple(table["value"]) for table in tables["different"]} == {(0.0, 0.0, 0.0, 0.0)}


@pytest.mark.slow  # serves each app and opens it in a browser (about 15 s each)
@pytest.mark.parametrize("name", APPS)
def test_a_click_in_chromium_shows_the_metrics_numbers(name):
    pytest.importorskip("playwright.sync_api", reason="`pip install playwright` drives the browser")
    if chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    module = load_app(name)
    expected = module.metric.compute(**compute_arguments(name, module.EXAMPLES[0]))
    tables = tables_after_compute(module)
    numbers = expected_numbers(expected)
    assert [row["output"] for row in tables["results"]] == list(numbers)
    for row in tables["results"]:
        value = numbers[row["output"]]
        if value is None:
            assert row["value"] == "" and row["note"] == expected["not_measurable"][row["output"]]
        else:
            assert math.isclose(float(row["value"]), value, rel_tol=1e-12), row
    if "per-sample" in tables:
        for key in per_sample_keys(expected):
            shown = [row[key.removesuffix("_per_sample")] for row in tables["per-sample"]]
            assert shown == [str(v).lower() if isinstance(v, bool) else shown_number(v) for v in expected[key]]


def shown_number(value):
    """A number as the page writes it (JavaScript's shortest form: 1.0 as 1)."""
    return str(int(value)) if float(value).is_integer() else repr(value)
