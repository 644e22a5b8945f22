"""Exact scoring of free-text answers to graph problems: parse the model's answer (`parsing`), then check it against
the graph.

Connectivity: yes or no against whether a path exists. Shortest path: a chain of node names that starts at the
source, ends at the target, uses only edges of the graph and has the optimal total weight, so every optimal path
counts. Topological sort: every node once with every edge pointing forward, so every valid order counts. Maximum
flow: a number within `flow_tolerance` of the true value. Weights, capacities, answers and the tolerance are
compared exactly as the decimals they are written as (a capacity 0.1 is one tenth), so no float rounding or
summation order (networkx sums flows in set order, which changes with PYTHONHASHSEED) can change a verdict. An
answer with nothing of the task's kind in it is unparseable: it counts as wrong and is reported separately.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Set
from fractions import Fraction

from .._utils import check_bool, check_number, metric_folder, require_extra
from .generator import DIRECTED_TASKS, GRAPH_TASKS, WEIGHTED_TASKS
from .parsing import parse_number, parse_order, parse_path, parse_yes_no


# `evaluate.load(GRAPH_REASONING)`: the metric over `graph_reasoning_scores`, loaded offline from its folder.
GRAPH_REASONING = metric_folder("graph_reasoning")


def _check_problem_list(column, name: str) -> None:
    """One entry per problem: a non-empty list (or any sized sequence that is not a string, a dict or a set)."""
    if isinstance(column, (str, bytes, Mapping, Set)) or not hasattr(column, "__len__"):
        raise ValueError(f"`{name}` must be a list, one entry per problem, got {type(column).__name__}.")
    if len(column) == 0:
        raise ValueError(f"`{name}` is empty: pass at least one problem.")


def _is_weight(value) -> bool:
    """A finite number > 0, numpy scalars included (booleans and integers too large for a float are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:  # an integer too large for a float
        return False


def _short(value, limit: int = 100) -> str:
    """repr(value), cut to about `limit` characters with a visible "..."."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _graph_record(graph, label: str) -> dict:
    """The `graph` JSON (a string or an already-parsed dict), checked enough that scoring cannot fail later."""
    if isinstance(graph, str):
        try:
            graph = json.loads(graph)
        except (ValueError, RecursionError) as err:  # bad JSON, an integer of over 4,300 digits, deep nesting
            raise ValueError(f"`{label}` must be the `graph` JSON of a generated problem: {err}") from None
    if not isinstance(graph, Mapping):
        raise ValueError(f"`{label}` must be a `graph` JSON string or dict, got {type(graph).__name__}.")
    task = graph.get("task")
    if task not in GRAPH_TASKS:
        raise ValueError(f"`{label}` has task {task!r}; it must be one of {', '.join(map(repr, GRAPH_TASKS))}.")
    nodes, edges = graph.get("nodes"), graph.get("edges")
    if not isinstance(nodes, list) or not nodes or not all(isinstance(x, str) for x in nodes):
        raise ValueError(f"`{label}` needs `nodes`, a non-empty list of node names (strings).")
    blank = next((i for i, node in enumerate(nodes) if not node.strip()), None)
    if blank is not None:
        raise ValueError(
            f"`{label}` has the blank node name {nodes[blank]!r} at `nodes[{blank}]`; a name needs a character "
            "that is not a space."
        )
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"`{label}` lists a node twice in `nodes`.")
    spellings = {}
    for node in nodes:
        other = spellings.setdefault(node.casefold(), node)
        if other != node:
            raise ValueError(
                f"`{label}` has the node names {other!r} and {node!r}, which differ only in case; answers are "
                "matched ignoring case, so rename one of them."
            )
    directed = graph.get("directed", task in DIRECTED_TASKS)
    if not isinstance(directed, bool):
        raise ValueError(f"`{label}` has `directed` {directed!r}; it must be true or false.")
    if task == "topological_sort" and not directed:
        raise ValueError(
            f"`{label}` has `directed` false, but task 'topological_sort' needs a directed graph (a topological "
            "order is defined only on one): set `directed` to true or leave it out."
        )
    width = 3 if task in WEIGHTED_TASKS else 2
    known, seen = set(nodes), {}
    for index, edge in enumerate(edges if isinstance(edges, list) else [None]):
        ok = isinstance(edge, list) and len(edge) == width
        ok = ok and all(isinstance(end, str) and end in known for end in edge[:2])
        if not (ok and (width == 2 or _is_weight(edge[2]))):
            shape = "[u, v, weight]" if width == 3 else "[u, v]"
            weight = " and weight a finite number > 0" if width == 3 else ""
            raise ValueError(
                f"`{label}` has edge {_short(edge)}; every edge must be {shape} with u and v names from "
                f"`nodes`{weight}."
            )
        # networkx would keep one edge per pair, the last weight winning: refused rather than merged silently
        first = seen.setdefault(tuple(edge[:2]) if directed else frozenset(edge[:2]), index)
        if first != index:
            u, v = edges[first][:2]
            where = f"from {u!r} to {v!r}" if directed else f"between {u!r} and {v!r}"
            merge = {"max_flow": "sum the capacities", "shortest_path": "keep the smallest weight"}.get(
                task, "drop the repeat"
            )
            raise ValueError(
                f"`{label}` lists the edge {where} twice, as {edges[first]!r} and {edge!r}: parallel edges are not "
                f"supported, so merge them into one ({merge})."
            )
    if task != "topological_sort":
        for key in ("source", "target"):
            if not isinstance(graph.get(key), str) or graph[key] not in known:
                raise ValueError(f"`{label}` needs `{key}`, a node of `nodes`, for task {task!r}.")
        if task != "connectivity" and graph["source"] == graph["target"]:
            raise ValueError(f"`{label}` has the same `source` and `target`, {graph['source']!r}: nothing to ask.")
    return {**graph, "directed": directed}


def _exact(value) -> Fraction:
    """A weight or tolerance as the decimal it is written as: 0.1 is one tenth, not the binary float nearest it.
    `str` gives the shortest decimal that reads back as the value in its own precision, so a numpy float32 0.1 is
    one tenth too (`float()` would turn it into 0.10000000149011612)."""
    return Fraction(int(value)) if isinstance(value, numbers.Integral) else Fraction(str(value))


def _networkx_graph(record: dict):
    """The graph with integer weights: the exact weights times their common denominator, returned with it, so that
    networkx adds integers (exact in any order) and the optimum divided by the denominator is exact."""
    import networkx as nx

    graph = nx.DiGraph() if record["directed"] else nx.Graph()
    graph.add_nodes_from(record["nodes"])
    weights = [_exact(weight) for _, _, *weight in record["edges"] for weight in weight]
    scale = math.lcm(*(weight.denominator for weight in weights)) if weights else 1
    for u, v, *weight in record["edges"]:
        graph.add_edge(u, v, **({"weight": int(_exact(weight[0]) * scale)} if weight else {}))
    return graph, scale


def _check(task: str, answer, record: dict, graph, scale: int, flow_tolerance: Fraction) -> bool:
    import networkx as nx

    if task == "connectivity":
        return answer == ("yes" if nx.has_path(graph, record["source"], record["target"]) else "no")
    if task == "shortest_path":
        source, target = record["source"], record["target"]
        if answer[0] != source or answer[-1] != target or not nx.has_path(graph, source, target):
            return False
        if not all(graph.has_edge(u, v) for u, v in zip(answer, answer[1:])):
            return False
        length = sum(graph[u][v]["weight"] for u, v in zip(answer, answer[1:]))
        return length == nx.dijkstra_path_length(graph, source, target)
    if task == "topological_sort":
        if sorted(answer) != sorted(record["nodes"]):
            return False
        position = {node: i for i, node in enumerate(answer)}
        return all(position[u] < position[v] for u, v in graph.edges)
    value = Fraction(nx.maximum_flow_value(graph, record["source"], record["target"], capacity="weight"), scale)
    return abs(answer - value) <= flow_tolerance


def score_graph_answer(prediction: str, graph, flow_tolerance: float = 0.01) -> dict:
    """Parse one free-text answer and check it exactly against its problem's graph.

    Args:
        prediction: The model's answer, free text. A rationale is fine: the text after each "answer is" is tried
            from the last to the first, and the whole text is read only when none of these parts holds an answer.
        graph: The problem's `graph` column: a JSON string (or the dict it decodes to) with `task`, `directed`,
            `nodes` (distinct even ignoring case, none blank), `edges` (each pair of nodes at most once: parallel
            edges are refused) and, except for topological sort, `source` and `target`. Topological sort needs a
            directed graph.
        flow_tolerance: How far a maximum-flow answer may be from the true value and still count (absolute).

    Returns:
        A dict with `task`, `parsed` (whether an answer of the task's kind was found), `correct` (never True when
        not parsed) and `answer`, the parsed answer: "yes"/"no", a list of node names, or a float; None if
        unparseable.

    Raises:
        ValueError: If `prediction` is not a string, `graph` is not a valid problem graph (bad JSON, an unknown
            task, blank or case-duplicate node names, an edge on an unknown node, a missing or non-positive weight,
            a parallel edge, an undirected topological sort, a missing source or target), or `flow_tolerance` is
            not a finite number >= 0.
        ImportError: If networkx is missing (`pip install "hf-memory[graphs]"`).

    Examples:
        >>> graph = {"task": "shortest_path", "directed": False, "nodes": ["0", "1", "2"],
        ...          "edges": [["0", "1", 1], ["1", "2", 1], ["0", "2", 2]], "source": "0", "target": "2"}
        >>> score_graph_answer("Both routes cost 2. The answer is 0 -> 1 -> 2.", graph)["correct"]
        True
        >>> score_graph_answer("The answer is 0 -> 2. This answer is optimal: it costs 2.", graph)["answer"]
        ['0', '2']
        >>> score_graph_answer("I think it is node 0, then node 2.", graph)["correct"]
        True
        >>> score_graph_answer("No idea.", graph)
        {'task': 'shortest_path', 'parsed': False, 'correct': False, 'answer': None}
    """
    check_number(flow_tolerance, "flow_tolerance", minimum=0.0)
    return _score(prediction, _graph_record(graph, "graph"), _exact(flow_tolerance), "prediction")


def _score(prediction, record: dict, flow_tolerance: float, label: str) -> dict:
    if not isinstance(prediction, str):
        raise ValueError(f"`{label}` must be the model's answer as a string, got {type(prediction).__name__}.")
    require_extra("graphs", "Scoring graph-reasoning answers")
    task = record["task"]
    if task == "connectivity":
        answer = parse_yes_no(prediction)
    elif task == "shortest_path":
        answer = parse_path(prediction, record["nodes"])
    elif task == "topological_sort":
        answer = parse_order(prediction, record["nodes"])
    else:
        answer = parse_number(prediction, record["source"], record["target"])
    parsed = answer is not None
    correct = parsed and _check(task, answer, record, *_networkx_graph(record), flow_tolerance)
    if isinstance(answer, Fraction):
        answer = float(answer)
    return {"task": task, "parsed": parsed, "correct": bool(correct), "answer": answer}


def graph_reasoning_scores(
    predictions, references, return_per_sample: bool = False, flow_tolerance: float = 0.01
) -> dict:
    """Accuracy and the unparseable fraction of free-text answers to generated graph problems, overall and per task.

    The single implementation behind the `graph_reasoning` metric, callable directly.

    Args:
        predictions: The model's answers, one string per problem.
        references: The problems' `graph` JSON strings (the `graph` column of `generate_graph_problems`).
        return_per_sample: Also return `correct` and `parsed`, one bool per problem.
        flow_tolerance: How far a maximum-flow answer may be from the true value and still count (absolute).

    Returns:
        A dict with `accuracy` (unparseable answers count as wrong), `unparseable` (the fraction of answers in
        which no answer of the task's kind was found) and `per_task`: for each task present, its `accuracy`,
        `unparseable` and `count`. With `return_per_sample=True` also `correct` and `parsed` lists.

    Raises:
        ValueError: Naming the argument, if the two lists differ in length or are empty, an answer is not a
            string, a reference is not a valid problem graph (see `score_graph_answer`), or a setting is out of
            range.

    Examples:
        >>> graph = '{"task": "connectivity", "directed": false, "nodes": ["A", "B", "C"], "edges": [["A", "B"]], "source": "A", "target": "C"}'
        >>> graph_reasoning_scores(["The answer is no.", "Hmm."], [graph, graph])
        {'accuracy': 0.5, 'unparseable': 0.5, 'per_task': {'connectivity': {'accuracy': 0.5, 'unparseable': 0.5, 'count': 2}}}
    """
    return_per_sample = check_bool(return_per_sample, "return_per_sample")
    check_number(flow_tolerance, "flow_tolerance", minimum=0.0)
    _check_problem_list(predictions, "predictions")
    _check_problem_list(references, "references")
    if len(predictions) != len(references):
        raise ValueError(
            f"`predictions` and `references` must have the same length, got {len(predictions)} and {len(references)}."
        )
    records = [_graph_record(graph, f"references[{i}]") for i, graph in enumerate(references)]
    for i, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise ValueError(
                f"`predictions[{i}]` must be the model's answer as a string, got {type(prediction).__name__}."
            )
    tolerance = _exact(flow_tolerance)
    scored = [
        _score(prediction, record, tolerance, f"predictions[{i}]")
        for i, (prediction, record) in enumerate(zip(predictions, records))
    ]

    def summary(rows):
        return {
            "accuracy": sum(row["correct"] for row in rows) / len(rows),
            "unparseable": sum(not row["parsed"] for row in rows) / len(rows),
        }

    result = summary(scored)
    result["per_task"] = {
        task: {**summary(rows), "count": len(rows)}
        for task in GRAPH_TASKS
        if (rows := [row for row in scored if row["task"] == task])
    }
    if return_per_sample:
        result["correct"] = [row["correct"] for row in scored]
        result["parsed"] = [row["parsed"] for row in scored]
    return result
