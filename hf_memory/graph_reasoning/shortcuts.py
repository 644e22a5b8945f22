"""Surface-pattern baselines: the answers a rule that never follows a path would give. Scored like a model's
answers, they show how far a pattern alone goes on a split, and so what a tuned model's accuracy proves."""

from __future__ import annotations

from .._utils import check_choice
from .scoring import _check_problem_list, _graph_record


SHORTCUT_RULES = ("direct_edge", "no_isolated_endpoint", "always_yes")


def shortcut_answers(references, rule: str = "direct_edge") -> list[str]:
    """Answers to connectivity problems from a surface rule, as text ("The answer is yes."), one per problem.

    - "direct_edge": yes exactly when the source and the target share an edge. On small random graphs most
      connected pairs are neighbours, so this rule scores far above chance without reasoning about paths.
    - "no_isolated_endpoint": yes unless the source or the target has no edge at all.
    - "always_yes": yes to everything (chance level on balanced splits).

    Score them with `graph_reasoning_scores(answers, references, return_per_sample=True)` and put the outcomes next to
    a model's in `transfer_report`: a tuned model that does no better than the rule on shifted data has not shown
    that it reasons.

    Args:
        references: The problems' `graph` JSON strings (or parsed dicts); every problem must be a connectivity
            problem.
        rule: "direct_edge", "no_isolated_endpoint" or "always_yes".

    Returns:
        One answer string per problem.

    Raises:
        ValueError: If `rule` is unknown, `references` is not a non-empty list, or a reference is not a valid
            connectivity problem.

    Examples:
        >>> graph = '{"task": "connectivity", "nodes": ["0", "1", "2"], "edges": [["0", "1"]], "source": "1", "target": "0"}'
        >>> shortcut_answers([graph]), shortcut_answers([graph], rule="always_yes")
        (['The answer is yes.'], ['The answer is yes.'])
    """
    check_choice(rule, "rule", SHORTCUT_RULES)
    _check_problem_list(references, "references")
    records = [_graph_record(graph, f"references[{i}]") for i, graph in enumerate(references)]
    for i, record in enumerate(records):
        if record["task"] != "connectivity":
            raise ValueError(
                f"`references[{i}]` is a {record['task']!r} problem; shortcut rules answer connectivity problems only."
            )
    answers = []
    for record in records:
        source, target = record["source"], record["target"]
        if rule == "always_yes":
            yes = True
        elif rule == "direct_edge":
            yes = any(
                (u, v) == (source, target) or (not record["directed"] and (v, u) == (source, target))
                for u, v, *_ in record["edges"]
            )
        else:
            touched = {node for u, v, *_ in record["edges"] for node in (u, v)}
            yes = source in touched and target in touched
        answers.append(f"The answer is {'yes' if yes else 'no'}.")
    return answers
