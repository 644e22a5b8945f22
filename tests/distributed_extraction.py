"""Run under 2 processes by test_extraction.py and test_extraction_store.py: measure_extraction shares the batches
and gathers them in order; with a folder argument, both processes also write their shards there."""

from __future__ import annotations

import json
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def score():
    """The same windows and tiny model in every process (and in the 1-process reference)."""

    from hf_memory import measure_extraction
    from tests.test_extraction import planted_windows
    from tests.testing_utils import tiny_causal_lm

    model = tiny_causal_lm("llama", hidden=32).eval()
    windows, _ = planted_windows(model, n=12, seed=3)
    return measure_extraction(model, windows, 8, 12, batch_size=3, show_progress=False)


if __name__ == "__main__":
    from accelerate import PartialState

    state = PartialState(cpu=True)
    result = score()
    out = {
        "num_processes": state.num_processes,
        "predictions": result.predictions,
        "longest_common_prefix": result.longest_common_prefix,
        "metrics": result.metrics,
    }
    if len(sys.argv) > 2:  # results on disk, one writer per process
        from tests.test_extraction_store import corpus, model, run

        m, rows = model(), corpus()
        out["memory_predictions"] = run(m, rows).predictions
        out["metrics"] = run(m, iter(rows), output_dir=sys.argv[2], flush_every=1).metrics
    from accelerate.utils import gather_object

    everyone = gather_object([out])
    if state.is_main_process:
        with open(sys.argv[1], "w") as f:
            json.dump(everyone, f)
    from tests.testing_utils import leave_process_group

    leave_process_group()
