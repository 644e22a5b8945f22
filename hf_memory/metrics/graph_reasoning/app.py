"""The Space app of the graph-reasoning metric: `python app.py` serves it on http://127.0.0.1:7860."""

import os

import evaluate
import gradio as gr

from hf_memory.metrics._app import MetricApp, filled_rows


metric = evaluate.load(os.path.dirname(os.path.abspath(__file__)))

CONNECTED = (
    '{"task": "connectivity", "directed": false, "nodes": ["0", "1", "2"], "edges": [["0", "1"]], '
    '"source": "0", "target": "1"}'
)
TWO_SHORTEST_PATHS = (
    '{"task": "shortest_path", "directed": false, "nodes": ["A", "B", "C", "D"], '
    '"edges": [["A", "B", 1], ["B", "D", 1], ["A", "C", 1], ["C", "D", 1]], "source": "A", "target": "D"}'
)
CHAIN = '{"task": "topological_sort", "directed": true, "nodes": ["0", "1", "2"], "edges": [["0", "1"], ["1", "2"]]}'
FLOW = (
    '{"task": "max_flow", "directed": true, "nodes": ["s", "a", "t"], '
    '"edges": [["s", "a", 3], ["a", "t", 2], ["s", "t", 1]], "source": "s", "target": "t"}'
)

# Each example: the table (the model's answer, the problem's graph JSON per row) and flow_tolerance.
EXAMPLES = [
    # One problem of each task, and an answer with no yes or no in it (unparseable).
    (
        [
            ["There is an edge. The answer is yes.", CONNECTED],
            ["Let me think.", CONNECTED],
            ["The answer is A -> C -> D.", TWO_SHORTEST_PATHS],
            ["The answer is 0, 1, 2.", CHAIN],
            ["The answer is 3 units.", FLOW],
        ],
        0.01,
    ),
    # Either of two optimal paths counts; a path over a missing edge does not.
    (
        [
            ["The answer is A -> B -> D.", TWO_SHORTEST_PATHS],
            ["The answer is A -> C -> D.", TWO_SHORTEST_PATHS],
            ["The answer is A -> D.", TWO_SHORTEST_PATHS],
        ],
        0.01,
    ),
    # A flow within the tolerance counts.
    ([["The maximum flow is 3.004.", FLOW], ["The answer is 2.", FLOW]], 0.01),
]


def read_inputs(table, flow_tolerance):
    rows = filled_rows(table)
    return {
        "predictions": [row[0] for row in rows],
        "references": [row[1] for row in rows],
        "flow_tolerance": 0.01 if flow_tolerance is None else flow_tolerance,
        "return_per_sample": True,
    }


app = MetricApp(
    metric,
    title="Graph reasoning",
    description=(
        "Scores free-text answers to graph problems (connectivity, shortest path, topological sort, maximum flow) "
        "exactly, against the graph: any optimal path and any valid order count. One problem per row: the model's "
        "answer (**prediction**) and the problem's graph as JSON (**reference**: `task`, `directed`, `nodes`, "
        "`edges` and, except for a topological sort, `source` and `target`). Unparseable answers count as wrong "
        "and are reported on their own."
    ),
    inputs=[
        gr.Dataframe(
            value=EXAMPLES[0][0],
            headers=["prediction (the model's answer)", "reference (the problem's graph JSON)"],
            datatype="str",
            column_count=2,
            type="array",
            wrap=True,
            column_widths=["35%", "65%"],
            label="Answers",
            render=False,
        ),
        gr.Number(
            value=EXAMPLES[0][1],
            label="flow_tolerance",
            info="how far a maximum-flow answer may be from the true value",
            minimum=0,
            render=False,
        ),
    ],
    read_inputs=read_inputs,
    examples=EXAMPLES,
    per_sample=["correct", "parsed"],
)
demo = app.demo

if __name__ == "__main__":
    demo.launch()
