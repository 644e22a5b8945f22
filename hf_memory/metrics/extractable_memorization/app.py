"""The Space app of the extractable-memorization metric: `python app.py` serves it on http://127.0.0.1:7860."""

import os

import evaluate
import gradio as gr

from hf_memory.metrics._app import MetricApp, filled_rows, token_ids


metric = evaluate.load(os.path.dirname(os.path.abspath(__file__)))

# Each example: the table (prediction, reference per row) and strict_exact_match.
EXAMPLES = [
    # One continuation memorized verbatim, one reproduced only for its first half.
    ([["1 2 3 4", "1 2 3 4"], ["5 6 7 8", "5 6 0 0"]], False),
    # The second prediction is shifted by one token: only ROUGE-L credits it.
    ([["1 2 3 4", "1 2 3 4"], ["9 1 2 3", "1 2 3 4"]], False),
    # A prediction shorter than its reference and one longer: a match unless exact match is strict.
    ([["1 2", "1 2 3 4"], ["1 2 3 4 5 6", "1 2 3 4"]], True),
]

PER_SAMPLE = ["exact_match_per_sample", "memorization_score_per_sample", "longest_common_prefix_per_sample"]
PER_SAMPLE += ["rouge_l_per_sample"]


def read_inputs(table, strict_exact_match):
    rows = filled_rows(table)
    return {
        "predictions": [token_ids(row[0], f"predictions[{i}]") for i, row in enumerate(rows)],
        "references": [token_ids(row[1], f"references[{i}]") for i, row in enumerate(rows)],
        "strict_exact_match": strict_exact_match,
        "return_per_sample": True,
    }


app = MetricApp(
    metric,
    title="Extractable memorization",
    description=(
        "How much of a training-data continuation a model reproduces from its prefix. One sample per row: the "
        "token ids the model generated after the prefix (**prediction**) and the token ids that really followed "
        "it (**reference**), separated by spaces or commas. Out come exact match (k-extractable), memorization "
        "score, longest common prefix and token-level ROUGE-L, averaged over the samples and per sample."
    ),
    inputs=[
        gr.Dataframe(
            value=EXAMPLES[0][0],
            headers=["prediction (token ids)", "reference (token ids)"],
            datatype="str",
            column_count=2,
            type="array",
            label="Samples",
            render=False,
        ),
        gr.Checkbox(
            value=EXAMPLES[0][1],
            label="strict_exact_match",
            info="exact match means the whole prediction equals the reference (the goldfish paper)",
            render=False,
        ),
    ],
    read_inputs=read_inputs,
    examples=EXAMPLES,
    per_sample=PER_SAMPLE,
)
demo = app.demo

if __name__ == "__main__":
    demo.launch()
