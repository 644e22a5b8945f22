"""NLGift-style graph reasoning (Zhang et al., EMNLP Findings 2024): does a model tuned on graph problems reason, or
recall surface patterns? A problem generator, an exact answer scorer (the `graph_reasoning` metric,
`evaluate.load(GRAPH_REASONING)`), surface-pattern baselines and transfer reports between train and test patterns."""

from .generator import GRAPH_PATTERNS, GRAPH_TASKS, MAX_PROBLEMS, MIN_NODES, generate_graph_problems
from .scoring import GRAPH_REASONING, graph_reasoning_scores, score_graph_answer
from .shortcuts import SHORTCUT_RULES, shortcut_answers
from .transfer import TransferReport, mcnemar_exact, transfer_report


__all__ = [
    "GRAPH_PATTERNS",
    "GRAPH_REASONING",
    "GRAPH_TASKS",
    "MAX_PROBLEMS",
    "MIN_NODES",
    "SHORTCUT_RULES",
    "TransferReport",
    "generate_graph_problems",
    "graph_reasoning_scores",
    "mcnemar_exact",
    "score_graph_answer",
    "shortcut_answers",
    "transfer_report",
]
