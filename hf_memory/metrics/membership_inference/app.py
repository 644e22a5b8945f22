"""The Space app of the membership-inference metric: `python app.py` serves it on http://127.0.0.1:7860."""

import os

import evaluate
import gradio as gr

import hf_memory.membership
from hf_memory.metrics._app import MetricApp, numbers, whole_number


metric = evaluate.load(os.path.dirname(os.path.abspath(__file__)))


def _text(values):
    return ", ".join(str(value) for value in values)


# Each example: scores, labels, fprs, n_bootstrap, confidence, seed.
EXAMPLES = [
    # A loss-based attack (scores: minus the loss), 3 members and 3 non-members: too few for a TPR at low FPR.
    ("-0.5, -1.2, -0.9, -2.0, -1.1, -3.0", "1, 1, 1, 0, 0, 0", "0.01, 0.001", 0, 0.95, 0),
    # Five members and five non-members, with bootstrap intervals.
    ("-0.5, -1.2, -0.9, -0.7, -1.0, -2.0, -1.1, -3.0, -1.4, -1.6", "1 1 1 1 1 0 0 0 0 0", "0.01", 200, 0.95, 0),
    # 100 members scoring 100..199 and 200 non-members scoring 0..199: at 1% FPR two false positives are allowed.
    (_text(range(100, 200)) + ", " + _text(range(200)), _text([1] * 100 + [0] * 200), "0.01, 0.1", 0, 0.95, 0),
]


def read_inputs(scores, labels, fprs, n_bootstrap, confidence, seed):
    return {
        "predictions": numbers(scores, "predictions"),
        "references": numbers(labels, "references"),
        "fprs": numbers(fprs, "fprs") or list(hf_memory.membership.DEFAULT_FPRS),
        "n_bootstrap": whole_number(n_bootstrap, 0),
        "confidence": 0.95 if confidence is None else confidence,
        "seed": whole_number(seed, 0),
    }


app = MetricApp(
    metric,
    title="Membership inference",
    description=(
        "How well a membership-inference attack tells a model's training documents (members) from documents it "
        "did not train on: ROC AUC and the true-positive rate at low false-positive rates. Enter one score per "
        "document, **higher = more likely a member** (negate a loss or a perplexity), and one label per document, "
        "1 = member and 0 = non-member, separated by commas or spaces. A TPR at a rate needs at least 1 / rate "
        "non-members: with fewer it is left blank and the note says why."
    ),
    inputs=[
        gr.Textbox(value=EXAMPLES[0][0], label="scores (predictions)", lines=3, max_lines=8, render=False),
        gr.Textbox(value=EXAMPLES[0][1], label="labels (references)", lines=2, max_lines=8, render=False),
        gr.Textbox(
            value=EXAMPLES[0][2], label="fprs", info="the false-positive rates to report the TPR at", render=False
        ),
        gr.Number(
            value=EXAMPLES[0][3],
            label="n_bootstrap",
            info="stratified bootstrap resamples for the intervals (0: none)",
            precision=0,
            minimum=0,
            maximum=10_000,
            render=False,
        ),
        gr.Number(value=EXAMPLES[0][4], label="confidence", info="the intervals' coverage", render=False),
        gr.Number(value=EXAMPLES[0][5], label="seed", info="the bootstrap's seed", precision=0, render=False),
    ],
    read_inputs=read_inputs,
    examples=EXAMPLES,
)
demo = app.demo

if __name__ == "__main__":
    demo.launch()
