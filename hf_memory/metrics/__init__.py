"""`evaluate` metric modules shipped with hf-memory, each in its own folder as evaluate's metrics are."""

import os


# `evaluate.load(EXTRACTABLE_MEMORIZATION)` loads the metric offline from its folder.
EXTRACTABLE_MEMORIZATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "extractable_memorization")

# `evaluate.load(GRAPH_REASONING)`: the exact scorer of graph-reasoning answers (hf_memory.graph_reasoning).
GRAPH_REASONING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "graph_reasoning")

# `evaluate.load(MEMBERSHIP_INFERENCE)`: ROC AUC and TPR at low FPR of membership scores (hf_memory.membership).
MEMBERSHIP_INFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "membership_inference")

__all__ = ["EXTRACTABLE_MEMORIZATION", "GRAPH_REASONING", "MEMBERSHIP_INFERENCE"]
