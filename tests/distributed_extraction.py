"""Run under 2 processes by test_extraction.py: measure_extraction splits the windows and gathers them in order."""

from __future__ import annotations

import json
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def score():
    """The same windows and tiny model in every process (and in the 1-process reference)."""

    from hf_memory import measure_extraction
    from tests.conftest import tiny_causal_lm
    from tests.test_extraction import planted_windows

    model = tiny_causal_lm("llama", hidden=32).eval()
    windows, _ = planted_windows(model, n=12, seed=3)
    return measure_extraction(model, windows, 8, 12, batch_size=3, show_progress=False)


if __name__ == "__main__":
    from accelerate import PartialState

    state = PartialState(cpu=True)
    with state.split_between_processes(list(range(12))) as share:
        share = list(share)
    result = score()
    out = {
        "num_processes": state.num_processes,
        "share": share,
        "predictions": result.predictions,
        "longest_common_prefix": result.longest_common_prefix,
        "metrics": result.metrics,
    }
    from accelerate.utils import gather_object

    everyone = gather_object([out])
    if state.is_main_process:
        with open(sys.argv[1], "w") as f:
            json.dump(everyone, f)
    from tests.conftest import leave_process_group

    leave_process_group()
