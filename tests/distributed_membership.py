"""Run under 2 processes by test_membership.py: membership_scores shares the chunks of documents between the
processes and gathers them in order."""

from __future__ import annotations

import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def score():
    """The same documents, target and reference in every process (and in the 1-process run): 11 documents of
    varied lengths in chunks of 3, so that the two processes get 2 and 2 chunks, the last one short."""
    import torch

    from hf_memory import membership_scores
    from tests.testing_utils import tiny_causal_lm

    model = tiny_causal_lm("llama", hidden=32, seed=0).eval()
    reference = tiny_causal_lm("llama", hidden=32, seed=1).eval()
    generator = torch.Generator().manual_seed(5)
    documents = [torch.randint(3, 60, (int(length),), generator=generator).tolist() for length in range(5, 27, 2)]
    return membership_scores(
        model, documents, reference_model=reference, batch_size=2, read_ahead=3, show_progress=False
    )


if __name__ == "__main__":
    from accelerate import PartialState

    from hf_memory.membership import scoring
    from tests.testing_utils import gather_to_json, leave_process_group

    state = PartialState(cpu=True)
    scored = []  # the documents this process scored itself
    score_chunk = scoring._score_chunk
    scoring._score_chunk = lambda model, reference, chunk, *rest: (
        scored.extend(chunk),
        score_chunk(model, reference, chunk, *rest),
    )
    result = score()
    mine = {
        "num_processes": state.num_processes,
        "scored": len(scored),
        "scores": {name: values.tolist() for name, values in result.scores.items()},
        "num_tokens": result.num_tokens.tolist(),
        "digests": result.digests,
    }
    gather_to_json(mine, sys.argv[1])
    leave_process_group()
