"""Graph reasoning (NLGift): the generator's gold answers against brute force, the encodings against a parser of
their own, the scorer on hand-written answers, the metric through `evaluate.load`, and transfer reports against
hand-computed McNemar tests."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from fractions import Fraction

import numpy as np
import pytest

from hf_memory.graph_reasoning import (  # noqa: E402
    GRAPH_PATTERNS,
    GRAPH_REASONING,
    GRAPH_TASKS,
    generate_graph_problems,
    graph_reasoning_scores,
    mcnemar_exact,
    score_graph_answer,
    shortcut_answers,
    transfer_report,
)


# ---------------------------------------------------------------------------------------------------------------
# Brute force, written without networkx


def _adjacency(record):
    out = {node: {} for node in record["nodes"]}
    for u, v, *weight in record["edges"]:
        out[u][v] = weight[0] if weight else 1
        if not record["directed"]:
            out[v][u] = out[u][v]
    return out


def _reachable(record, start):
    adjacency, seen, todo = _adjacency(record), {start}, [start]
    while todo:
        for nxt in adjacency[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _all_simple_path_weights(record):
    adjacency, source, target = _adjacency(record), record["source"], record["target"]
    others = [node for node in record["nodes"] if node not in (source, target)]
    weights = []
    for size in range(len(others) + 1):
        for middle in itertools.permutations(others, size):
            path = [source, *middle, target]
            if all(b in adjacency[a] for a, b in zip(path, path[1:])):
                weights.append(sum(adjacency[a][b] for a, b in zip(path, path[1:])))
    return weights


def _min_cut(record):
    """The smallest total capacity of edges leaving a node set that holds the source but not the target."""
    source, target = record["source"], record["target"]
    others = [node for node in record["nodes"] if node not in (source, target)]
    best = math.inf
    for size in range(len(others) + 1):
        for chosen in itertools.combinations(others, size):
            side = {source, *chosen}
            best = min(best, sum(w for u, v, w in record["edges"] if u in side and v not in side))
    return best


def _path_nodes(text):
    return [part.strip() for part in text.split("->")]


@pytest.mark.parametrize("task", GRAPH_TASKS)
def test_every_gold_answer_matches_brute_force(task):
    problems = generate_graph_problems(task, "semantic", "edge_list", n=40, seed=11, num_nodes=(3, 7))
    for row in problems:
        record = json.loads(row["graph"])
        assert row["target"].endswith(f"The answer is {row['answer']}.")
        if task == "connectivity":
            assert row["answer"] == ("yes" if record["target"] in _reachable(record, record["source"]) else "no")
        elif task == "shortest_path":
            path = _path_nodes(row["answer"])
            adjacency = _adjacency(record)
            assert path[0] == record["source"] and path[-1] == record["target"]
            assert all(b in adjacency[a] for a, b in zip(path, path[1:]))
            weight = sum(adjacency[a][b] for a, b in zip(path, path[1:]))
            assert weight == min(_all_simple_path_weights(record))
        elif task == "topological_sort":
            order = row["answer"].split(", ")
            assert sorted(order) == sorted(record["nodes"])
            assert all(order.index(u) < order.index(v) for u, v in record["edges"])
        else:
            assert float(row["answer"]) == _min_cut(record) > 0


def test_connectivity_is_balanced_and_needs_no_edge_between_groups():
    problems = generate_graph_problems("connectivity", n=101, seed=3)
    assert problems["answer"].count("yes") == 51
    assert problems["answer"][:10] != sorted(problems["answer"][:10])  # shuffled, not all yes then all no


def test_same_seed_same_data_other_seed_other_data():
    first = generate_graph_problems("max_flow", "numeric", "float", n=20, seed=5)
    again = generate_graph_problems("max_flow", "numeric", "float", n=20, seed=np.int64(5))
    other = generate_graph_problems("max_flow", "numeric", "float", n=20, seed=6)
    assert first.to_dict() == again.to_dict()
    assert first["graph"] != other["graph"]


# ---------------------------------------------------------------------------------------------------------------
# Encodings: parse the prompt back, with a parser written here


def _names(text):
    return [name.strip() for name in re.split(r", | and ", text)]


def _parse_prompt(prompt, encoding, task):
    """(nodes, directed, edges as a set of (u, v, weight or None)) read from the prompt text alone."""
    description = prompt.split("\n")
    edges, directed = set(), None
    number = r"(\d+(?:\.\d+)?)"
    if encoding == "edge_list":
        head = description[0]
        directed = head.startswith("In a directed")
        nodes = _names(re.search(r"The nodes are (.*?)\. The edges", head).group(1))
        for inside in re.findall(r"\(([^()]*)\)", head.split("The edges are:")[1]):
            parts = inside.split(",")
            edges.add((parts[0], parts[1], float(parts[2]) if len(parts) == 3 else None))
    elif encoding == "incident":
        head = description[0]
        directed = head.startswith("In a directed")
        nodes = _names(re.search(r"the nodes are (.*?)\. Node", head).group(1))
        for node, rest in re.findall(r"Node (\w+) (?:is connected to|has edges to) (.*?)\.(?= Node |$)", head):
            weighted = re.findall(rf"node (\w+) \((?:weight|capacity) {number}\)", rest)
            if weighted:
                items = [(v, float(w)) for v, w in weighted]
            else:
                items = [(v, None) for v in re.sub(r"^nodes? ", "", rest).split(", ")]
            for v, w in items:
                edges.add((node, v, w) if directed or (node, v) < (v, node) else (v, node, w))
    elif encoding == "expert":
        directed = "directed graph below" in description[0] and "undirected" not in description[0]
        nodes = _names(description[1][len("Nodes: ") : -1])
        for line in description[3:-1]:
            found = re.fullmatch(rf"(\w+) (?:->|--) (\w+)(?: \((?:weight|capacity) {number}\))?", line)
            edges.add((found.group(1), found.group(2), float(found.group(3)) if found.group(3) else None))
    else:
        listed = re.search(r"(?:people|members) are (.*?)\. ", description[0])
        nodes, head = _names(listed.group(1)), description[0][listed.end() :]
        directed = task in ("topological_sort", "max_flow")
        for u, v, w in re.findall(rf"(\w+) and (\w+) are friends(?: and live {number} miles? apart)?\.", head):
            edges.add((u, v, float(w) if w else None))
        for u, v in re.findall(r"(\w+) must arrive before (\w+)\.", head):
            edges.add((u, v, None))
        for u, w, v in re.findall(rf"(\w+) can pass at most {number} letters? a day to (\w+)\.", head):
            edges.add((u, v, float(w)))
    return nodes, directed, edges


@pytest.mark.parametrize("task", GRAPH_TASKS)
@pytest.mark.parametrize("encoding", GRAPH_PATTERNS["semantic"])
def test_every_encoding_round_trips_to_the_graph(task, encoding):
    problems = generate_graph_problems(task, "semantic", encoding, n=12, seed=2)
    plain = generate_graph_problems(task, "semantic", "edge_list", n=12, seed=2)
    for row, plain_row in zip(problems, plain):
        record = json.loads(row["graph"])
        nodes, directed, edges = _parse_prompt(row["prompt"], encoding, task)
        assert nodes == record["nodes"]
        assert directed == record["directed"]
        expected = {(u, v, float(w[0]) if w else None) for u, v, *w in record["edges"]}
        assert edges == expected
        for name in ("source", "target"):
            if name in record:
                assert re.search(rf"\b{record[name]}\b", row["prompt"].split("\n")[-1])
        # the same seed draws the same graph in every encoding: only the names differ
        plain_record = json.loads(plain_row["graph"])
        rename = dict(zip(plain_record["nodes"], record["nodes"]))
        assert [[rename[u], rename[v], *w] for u, v, *w in plain_record["edges"]] == record["edges"]


# ---------------------------------------------------------------------------------------------------------------
# Numeric and structural variants


@pytest.mark.parametrize(
    ("variant", "low", "high", "integer"),
    [("small_int", 1, 10, True), ("large_int", 1, 100, True), ("float", 0.1, 10.0, False)],
)
@pytest.mark.parametrize("task", ["shortest_path", "max_flow"])
def test_weights_stay_in_the_stated_range(task, variant, low, high, integer):
    problems = generate_graph_problems(task, "numeric", variant, n=60, seed=4)
    weights = [w for graph in problems["graph"] for *_, w in json.loads(graph)["edges"]]
    assert all(low <= w <= high for w in weights)
    if integer:
        assert all(isinstance(w, int) for w in weights)
    else:
        assert all(round(w, 1) == w for w in weights) and any(w != int(w) for w in weights)
    assert max(weights) > (high + low) / 2 and min(weights) < (high + low) / 2  # the whole range is used


@pytest.mark.parametrize(("variant", "low", "high"), [("small", 3, 10), ("large", 11, 25), ("erdos_renyi", 3, 10)])
def test_structural_sizes(variant, low, high):
    problems = generate_graph_problems("shortest_path", "structural", variant, n=60, seed=8)
    sizes = [len(json.loads(graph)["nodes"]) for graph in problems["graph"]]
    assert min(sizes) >= low and max(sizes) <= high and max(sizes) - min(sizes) >= (high - low) // 2


def _degrees(record):
    degrees = {node: 0 for node in record["nodes"]}
    for u, v, *_ in record["edges"]:
        degrees[u] += 1
        degrees[v] += 1
    return degrees


def _centralization(record):
    """Freeman degree centralization: 1 for a star, 0 when every node has the same degree."""
    degrees = list(_degrees(record).values())
    n = len(degrees)
    return sum(max(degrees) - d for d in degrees) / ((n - 1) * (n - 2)) if n > 2 else 0.0


def test_barabasi_albert_graphs_are_connected_trees_or_two_edge_attachments():
    problems = generate_graph_problems("shortest_path", "structural", "barabasi_albert", n=60, seed=9)
    for graph in problems["graph"]:
        record = json.loads(graph)
        n, m = len(record["nodes"]), len(record["edges"])
        assert _reachable({**record, "directed": False}, record["nodes"][0]) == set(record["nodes"])
        assert m in (n - 1, 2 * (n - 2))


def test_erdos_renyi_graphs_vary_in_density_and_connectedness():
    problems = generate_graph_problems("topological_sort", "structural", "erdos_renyi", n=60, seed=9)
    records = [json.loads(graph) for graph in problems["graph"]]
    connected = [
        _reachable({**r, "directed": False}, r["nodes"][0]) == set(r["nodes"]) for r in records if len(r["nodes"]) > 5
    ]
    assert 0 < sum(connected) < len(connected)


def test_high_and_low_centrality_differ_as_stated():
    high = generate_graph_problems("max_flow", "structural", "high_centrality", n=60, seed=10)
    low = generate_graph_problems("max_flow", "structural", "low_centrality", n=60, seed=10)
    high_values = [_centralization(json.loads(graph)) for graph in high["graph"]]
    low_records = [json.loads(graph) for graph in low["graph"]]
    assert all(max(_degrees(r).values()) <= 2 for r in low_records)
    assert np.mean(high_values) > 0.5 > max(_centralization(r) for r in low_records)


def test_friendship_names_work_for_every_task_up_to_forty_nodes():
    problems = generate_graph_problems("max_flow", "semantic", "friendship", n=3, seed=0, num_nodes=(40, 40))
    assert all(len(json.loads(graph)["nodes"]) == 40 for graph in problems["graph"])
    assert graph_reasoning_scores(problems["target"], problems["graph"])["accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Bad generator arguments


BAD_GENERATOR_ARGUMENTS = {
    "unknown_task": ({"task": "coloring"}, "`task` must be one of"),
    "unknown_pattern": ({"task": "connectivity", "pattern": "reasoning"}, "`pattern` must be one of"),
    "unknown_variant": ({"task": "connectivity", "variant": "adjacency"}, "`variant` must be one of"),
    "variant_of_other_pattern": ({"task": "max_flow", "pattern": "numeric", "variant": "large"}, "'small_int'"),
    "numeric_unweighted": ({"task": "connectivity", "pattern": "numeric", "variant": "float"}, "weighted `task`"),
    "n_zero": ({"task": "connectivity", "n": 0}, "`n` must be an integer >= 1"),
    "n_negative": ({"task": "connectivity", "n": -3}, "`n` must be an integer >= 1"),
    "n_bool": ({"task": "connectivity", "n": True}, "`n` must be an integer"),
    "n_float": ({"task": "connectivity", "n": 2.0}, "`n` must be an integer"),
    "n_string": ({"task": "connectivity", "n": "5"}, "`n` must be an integer"),
    "n_huge": ({"task": "connectivity", "n": np.int64(10**12)}, "`n` must be at most 100,000"),
    "seed_negative": ({"task": "connectivity", "seed": -1}, "`seed` must be an integer >= 0"),
    "too_small_for_connectivity": ({"task": "connectivity", "num_nodes": (2, 5)}, "too small"),
    "too_small_for_paths": ({"task": "shortest_path", "num_nodes": (1, 1)}, "2 <= smallest"),
    "more_nodes_than_names": ({"task": "max_flow", "num_nodes": (5, 41)}, "<= 40"),
    "reversed_range": ({"task": "max_flow", "num_nodes": (9, 4)}, "smallest <= largest"),
    "not_a_pair": ({"task": "max_flow", "num_nodes": 5}, "(smallest, largest) pair"),
    "set_pair": ({"task": "max_flow", "num_nodes": {3, 5}}, "(smallest, largest) pair"),  # no order
    "dict_pair": ({"task": "max_flow", "num_nodes": {"a": 3, "b": 5}}, "(smallest, largest) pair"),
    "array_scalar": ({"task": "max_flow", "num_nodes": np.array(5)}, "(smallest, largest) pair"),
    "range_with_size_variant": (
        {"task": "max_flow", "pattern": "structural", "variant": "large", "num_nodes": (3, 5)},
        "cannot be combined",
    ),
}


@pytest.mark.parametrize("case", BAD_GENERATOR_ARGUMENTS.values(), ids=BAD_GENERATOR_ARGUMENTS.keys())
def test_bad_generator_arguments_name_the_argument(case):
    kwargs, message = case
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_graph_problems(**kwargs)


def test_numpy_integers_are_accepted():
    problems = generate_graph_problems("topological_sort", n=np.int32(3), num_nodes=(np.int64(4), np.int8(6)))
    assert len(problems) == 3
    assert all(4 <= len(json.loads(graph)["nodes"]) <= 6 for graph in problems["graph"])
    from_list = generate_graph_problems("topological_sort", n=3, num_nodes=[4, 6])
    assert from_list["graph"] == generate_graph_problems("topological_sort", n=3, num_nodes=np.array([4, 6]))["graph"]


# ---------------------------------------------------------------------------------------------------------------
# The scorer on hand-written answers


CONNECTED = {
    "task": "connectivity",
    "directed": False,
    "nodes": ["0", "1", "2", "3"],
    "edges": [["0", "1"], ["1", "2"]],
}
DIAMOND = {
    "task": "shortest_path",
    "directed": False,
    "nodes": ["A", "B", "C", "D", "E"],
    "edges": [["A", "B", 1], ["B", "D", 2], ["A", "C", 2], ["C", "D", 1], ["A", "D", 5], ["D", "E", 1]],
    "source": "A",
    "target": "E",
}
ORDER = {
    "task": "topological_sort",
    "directed": True,
    "nodes": ["Evan", "Gillian", "Mary", "Jason"],
    "edges": [["Evan", "Mary"], ["Gillian", "Mary"], ["Mary", "Jason"]],
}
FLOW = {
    "task": "max_flow",
    "directed": True,
    "nodes": ["0", "1", "2", "3"],
    "edges": [["0", "1", 3.5], ["0", "2", 2], ["1", "3", 2], ["2", "3", 3], ["1", "2", 1]],
    "source": "0",
    "target": "3",
}
BIG_FLOW = {
    "task": "max_flow",
    "directed": True,
    "nodes": ["0", "1"],
    "edges": [["0", "1", 1500]],
    "source": "0",
    "target": "1",
}

HAND_CASES = [
    # (graph, answer, parsed, correct)
    ({**CONNECTED, "source": "0", "target": "2"}, "There is a path: 0 -> 1 -> 2. The answer is yes.", True, True),
    ({**CONNECTED, "source": "0", "target": "2"}, "Yes, node 0 reaches node 2 through node 1.", True, True),
    ({**CONNECTED, "source": "0", "target": "3"}, "No. Node 3 has no edges.", True, True),
    ({**CONNECTED, "source": "0", "target": "3"}, "The answer is YES", True, False),
    ({**CONNECTED, "source": "0", "target": "3"}, "Yes or no? Hard to say.", False, False),
    ({**CONNECTED, "source": "0", "target": "3"}, "Node 0 and node 3 are in different parts.", False, False),
    (DIAMOND, "The answer is A -> B -> D -> E.", True, True),
    (DIAMOND, "A -> C -> D -> E is as short. The answer is A -> C -> D -> E.", True, True),  # the other optimum
    (DIAMOND, "The answer is node A, node C, node D, node E (total weight 4).", True, True),
    (DIAMOND, "Go from a to b, then d and e: a -> b -> d -> e", True, True),
    (DIAMOND, "The answer is A -> D -> E.", True, False),  # a real path, weight 6 > 4
    (DIAMOND, "The answer is A -> E.", True, False),  # no such edge
    (DIAMOND, "The answer is A -> B -> C -> D -> E.", True, False),  # B - C is no edge
    (DIAMOND, "The answer is B -> D -> E.", True, False),  # wrong start
    (DIAMOND, "I cannot tell.", False, False),
    (ORDER, "The answer is Evan, Gillian, Mary, Jason.", True, True),
    (ORDER, "The answer is: gillian, evan, mary, jason", True, True),  # the other valid order, lower case
    (ORDER, "Order: Gillian -> Evan -> Mary -> Jason", True, True),
    (ORDER, "The answer is Evan, Mary, Jason.", True, False),  # partial: Gillian missing
    (ORDER, "The answer is Mary, Evan, Gillian, Jason.", True, False),  # Evan -> Mary points backwards
    (ORDER, "The answer is Evan, Gillian, Mary, Mary, Jason.", True, False),  # a node twice
    (ORDER, "Everyone arrives at once.", False, False),
    (FLOW, "Route 2 along 0 -> 1 -> 3 and 3 more through 2. The answer is 5.", True, True),
    (FLOW, "The answer is 5.0 units.", True, True),
    (FLOW, "The maximum flow is 5 letters a day.", True, True),
    (FLOW, "The answer is 5.004", True, True),  # within the default tolerance 0.01
    (FLOW, "The answer is 5.5.", True, False),
    (FLOW, "The answer is unknown.", False, False),
    (BIG_FLOW, "The answer is 1,500 letters.", True, True),
]


@pytest.mark.parametrize(("graph", "answer", "parsed", "correct"), HAND_CASES)
def test_scorer_on_hand_written_answers(graph, answer, parsed, correct):
    result = score_graph_answer(answer, json.dumps(graph))
    assert (result["parsed"], result["correct"]) == (parsed, correct)
    assert (result["answer"] is None) == (not parsed)


def test_parsed_answers_are_returned():
    assert score_graph_answer("The answer is a -> c -> d -> e.", DIAMOND)["answer"] == ["A", "C", "D", "E"]
    assert score_graph_answer("The answer is 1,500 letters.", BIG_FLOW)["answer"] == 1500.0
    assert score_graph_answer("Yes!", {**CONNECTED, "source": "0", "target": "1"})["answer"] == "yes"


ONE_EDGE = {
    "task": "connectivity",
    "directed": False,
    "nodes": ["0", "1", "2", "3"],
    "edges": [["0", "1"], ["2", "3"]],
}
TWO_HOPS = {
    "task": "shortest_path",
    "nodes": ["0", "1", "2"],
    "edges": [["0", "1", 1], ["1", "2", 1], ["0", "2", 5]],
    "source": "0",
    "target": "2",
}
SEVEN = {
    "task": "max_flow",
    "nodes": ["0", "1", "2"],
    "edges": [["0", "1", 7], ["1", "2", 9]],
    "source": "0",
    "target": "2",
}
THREE_ORDER = {"task": "topological_sort", "nodes": ["0", "1", "2"], "edges": [["2", "0"], ["0", "1"]]}


@pytest.mark.parametrize(
    ("graph", "text", "answer"),
    [
        # a later, incidental "answer is" with nothing of the task's kind after it
        (
            {**ONE_EDGE, "source": "0", "target": "1"},
            "The answer is yes. The reason this answer is right: 0 and 1 share an edge.",
            "yes",
        ),
        (
            TWO_HOPS,
            "The answer is 0 -> 1 -> 2. The reason this answer is optimal: its total weight is 2, less than 5.",
            ["0", "1", "2"],
        ),
        (SEVEN, "The answer is 7. I am confident that this answer is correct.", 7.0),
        (
            THREE_ORDER,
            "The answer is 2, 0, 1. Another way to check the answer is to verify each edge.",
            ["2", "0", "1"],
        ),
        (THREE_ORDER, "The answer is 2, 0, 1. This answer is right: 2 comes first.", ["2", "0", "1"]),
        # the last "answer is" that holds an answer wins
        (SEVEN, "My first answer is 9. On reflection, the answer is 7.", 7.0),
        (TWO_HOPS, "The answer is 0 -> 2? No: the answer is: 0 -> 1 -> 2.", ["0", "1", "2"]),
        # no "answer is" holds an answer: the whole text is read
        ({**ONE_EDGE, "source": "0", "target": "1"}, "Yes, they share an edge. The answer is clear.", "yes"),
        (SEVEN, "The flow is 7. The answer is obvious.", 7.0),
    ],
)
def test_a_later_answer_is_does_not_hide_the_answer(graph, text, answer):
    result = score_graph_answer(text, graph)
    assert (result["parsed"], result["correct"], result["answer"]) == (True, True, answer)


@pytest.mark.parametrize(
    "text",
    [
        "The answer isn't yes; there is no path, so no.",
        "There is no path, so no. (The answer isn't yes.)",
        "The answer isn’t yes.",
        "The answer is not yes.",
        "The answer is not yes, it is no.",
    ],
)
def test_answer_is_not_is_no_answer_is(text):
    result = score_graph_answer(text, {**ONE_EDGE, "source": "0", "target": "2"})  # true answer: no
    assert result["answer"] != "yes"
    assert result["correct"] == (result["answer"] == "no")


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("The max flow is 5,6 units", 5.0),  # not 56: a thousands group has three digits
        ("The flow is 7,9 is the other capacity", 7.0),
        ("Path capacities: 2,3", 2.0),
        ("The max flow is 1,500 units", 1500.0),
        ("The max flow = 12,345.5", 12345.5),
        ("The answer is 5,6 units", 5.0),  # the same reading with and without "answer is"
    ],
)
def test_stated_numbers_group_thousands_as_after_answer_is(text, answer):
    assert score_graph_answer(text, SEVEN)["answer"] == answer


def test_node_names_that_re_matches_but_lower_does_not_fold():
    """re's case-insensitive matching pairs the micro sign with the Greek mu; the node is still found."""
    graph = {**TWO_HOPS, "nodes": ["0", "µ", "2"], "edges": [["0", "µ", 1], ["µ", "2", 1], ["0", "2", 5]]}
    assert score_graph_answer("The answer is 0 -> μ -> 2", graph)["answer"] == ["0", "µ", "2"]


# ---------------------------------------------------------------------------------------------------------------
# Issue 30: ordinary words are not node names (B5), exact flows (B6), answers outside the format (P6)

LETTERS = ["A", "B", "C", "D", "E"]
PATH_BCD = {
    "task": "shortest_path",
    "nodes": LETTERS,
    "edges": [["A", "B", 1], ["B", "C", 1], ["C", "D", 2], ["B", "D", 4], ["D", "E", 1]],
    "source": "B",
    "target": "D",
}
# B -> E -> A is optimal: an answer "B -> E, a ..." read with the article as node A was scored right
PATH_BEA = {
    "task": "shortest_path",
    "nodes": LETTERS,
    "edges": [["A", "B", 5], ["B", "E", 1], ["E", "A", 1], ["C", "D", 1]],
    "source": "B",
    "target": "A",
}
# B, C, D, A is a valid order: "B, C, D, a complete order" read with the article as node A was scored right
ORDER_BCDA = {"task": "topological_sort", "nodes": LETTERS[:4], "edges": [["B", "C"], ["C", "D"], ["D", "A"]]}
NINE = list("ABCDEFGHI")
PATH_TO_I = {
    "task": "shortest_path",
    "nodes": NINE,
    "edges": [["A", "H", 1], ["H", "I", 1], ["A", "I", 3], ["B", "C", 1]],
    "source": "A",
    "target": "I",
}
PAST_Z = [chr(ord("A") + i) for i in range(26)] + [f"A{chr(ord('A') + i)}" for i in range(14)]  # ..., AM, AN
PATH_AN = {
    "task": "shortest_path",
    "nodes": PAST_Z,
    "edges": [["AL", "AM", 1], ["AM", "AN", 1], ["AL", "AN", 3], ["A", "B", 1]],
    "source": "AL",
    "target": "AN",
}
PATH_023 = {
    "task": "shortest_path",
    "nodes": ["0", "1", "2", "3"],
    "edges": [["0", "2", 4], ["2", "3", 1], ["0", "1", 3], ["1", "3", 3]],
    "source": "0",
    "target": "3",
}
ORDER_2013 = {"task": "topological_sort", "nodes": ["0", "1", "2", "3"], "edges": [["2", "0"], ["0", "1"], ["1", "3"]]}


@pytest.mark.parametrize(
    ("graph", "text", "answer", "correct"),
    [
        # the three answers
        (PATH_BCD, "The answer is B -> C -> D, a total weight of 3.", ["B", "C", "D"], True),
        (PATH_BEA, "The answer is B -> E, a short path.", ["B", "E"], False),
        (ORDER_BCDA, "The answer is B, C, D, a complete order.", ["B", "C", "D"], False),
        # the pronoun I, the article an, the verb am (names of 9- and 40-node letter graphs)
        (PATH_TO_I, "The answer is A -> H -> I, I think.", ["A", "H", "I"], True),
        (PATH_TO_I, "The answer is A -> H -> I. I'm sure.", ["A", "H", "I"], True),
        (PATH_AN, "The answer is AL -> AN, an optimal path.", ["AL", "AN"], False),
        (PATH_AN, "The answer is AL, AM, AN, am I right?", ["AL", "AM", "AN"], True),
        # a dash before the prose
        (PATH_BCD, "The answer is B -> C -> D — a total weight of 3.", ["B", "C", "D"], True),
        (PATH_BCD, "The answer is B -> C -> D - a total weight of 3.", ["B", "C", "D"], True),
        # the same names are nodes where they are no word: in a list, by an arrow, after "node"
        (ORDER_BCDA, "The answer is B, C, D, A.", ["B", "C", "D", "A"], True),
        (ORDER_BCDA, "The answer is b, c, d, a.", ["B", "C", "D", "A"], True),
        (PATH_BEA, "The answer is B -> E -> A, a detour of weight 2.", ["B", "E", "A"], True),
        (PATH_BEA, "The answer is node B, node E, node a.", ["B", "E", "A"], True),
        (PATH_BCD, "a -> b -> d is longer; the answer is b -> c -> d.", ["B", "C", "D"], True),
        ({**ORDER_BCDA, "nodes": NINE, "edges": [["A", "B"]]}, "The answer is A, B, C, D, E, F, G, H, I.", NINE, True),
        ({**ORDER_BCDA, "nodes": NINE, "edges": [["A", "B"]]}, "A first, then B, C, D, E, F, G, H, I.", NINE, True),
    ],
)
def test_ordinary_words_are_not_read_as_node_names(graph, text, answer, correct):
    result = score_graph_answer(text, graph)
    assert (result["answer"], result["correct"]) == (answer, correct)


@pytest.mark.parametrize(
    ("graph", "text", "answer", "correct"),
    [
        # an arrow chain ends at a list word: a count or a sentence about its last node is not part of it
        (PATH_023, "The answer is 0 -> 2 -> 3, 2 edges in all.", ["0", "2", "3"], True),
        (PATH_023, "The answer is 0 -> 2 -> 3, and 3 is the target.", ["0", "2", "3"], True),
        # a list's last name said again to start a sentence
        (ORDER_2013, "The answer is 2, 0, 1, 3, and 3 comes last.", ["2", "0", "1", "3"], True),
        (ORDER_2013, "The answer is 2, 0, 1, 1, 3.", ["2", "0", "1", "1", "3"], False),  # a repeat in the list
        # edges one by one, spoken lists, "followed by"
        (PATH_023, "0 -> 2 (4), 2 -> 3 (1)", ["0", "2", "3"], True),
        (PATH_023, "The answer is 0 -> 1, then 1 -> 3.", ["0", "1", "3"], False),
        (ORDER_2013, "2 first, then 0, then 1, and finally 3.", ["2", "0", "1", "3"], True),
        (ORDER_2013, "The answer is 2, followed by 0, followed by 1, followed by 3.", ["2", "0", "1", "3"], True),
        # numbered or bulleted lines; a comparison after the chain is no chain ("<" and ">" are no joints)
        (ORDER_2013, "1. 2\n2. 0\n3. 1\n4. 3", ["2", "0", "1", "3"], True),
        (ORDER_BCDA, "The order:\n* B\n* C\n* D\n* A", ["B", "C", "D", "A"], True),
        (PATH_023, "1. 0 -> 2 (weight 4)\n2. 2 -> 3 (weight 1)", ["0", "2", "3"], True),
        (PATH_023, "0 -> 2 -> 3, since 2 > 1.", ["0", "2", "3"], True),
        # a negated chain is no answer
        (PATH_023, "The shortest path is 0 -> 2 -> 3, not 0 -> 1 -> 3.", ["0", "2", "3"], True),
        (PATH_023, "The answer is not 0 -> 1 -> 3.", None, False),
    ],
)
def test_answers_followed_by_prose_are_scored_on_the_answer(graph, text, answer, correct):
    result = score_graph_answer(text, graph)
    assert (result["answer"], result["correct"]) == (answer, correct)


CONNECTED_03 = {
    "task": "connectivity",
    "nodes": ["0", "1", "2", "3"],
    "edges": [["0", "1"], ["1", "3"]],
    "source": "0",
    "target": "3",
}
FLOW_05 = {
    "task": "max_flow",
    "nodes": ["0", "1", "2", "5"],
    "edges": [["0", "1", 3], ["1", "5", 3], ["0", "2", 4], ["2", "5", 5]],
    "source": "0",
    "target": "5",
}


@pytest.mark.parametrize(
    ("graph", "text", "answer", "correct"),
    [
        # the five answers, as decided (docs/graph_reasoning.md, "How an answer is read")
        (CONNECTED_03, "there is a path 0 -> 1 -> 3. No shorter one exists.", None, False),  # no yes or no said
        ({**CONNECTED_03, "target": "2"}, "definitely not yes; it is no.", "no", True),
        ({**CONNECTED_03, "target": "2"}, "The answer is definitely not yes; it is no.", "no", True),
        (PATH_023, "0 -> 2 (weight 4) -> 3 (weight 1)", ["0", "2", "3"], True),
        (PATH_023, "The answer is 0 -> 2 (weight 4) -> 3 (weight 1).", ["0", "2", "3"], True),
        (FLOW_05, "from node 0 to node 5 the maximum flow is 7", 7.0, True),
        (FLOW_05, "The answer is: from node 0 to node 5 the maximum flow is 7", 7.0, True),
        (FLOW_05, "3 + 4 = 7", 7.0, True),
        (FLOW_05, "The answer is 3 + 4 = 7.", 7.0, True),
        # their siblings
        ({**CONNECTED_03, "target": "2"}, "No path joins them.", "no", True),
        ({**CONNECTED_03, "target": "2"}, "The answer is no because node 2 is isolated.", "no", True),
        (CONNECTED_03, "No doubt about it, yes.", "yes", True),
        ({**CONNECTED_03, "target": "2"}, "No\nNode 0 and node 2 are in different groups.", "no", True),
        ({**CONNECTED_03, "target": "2"}, "no Node 2 is not reachable.", "no", True),
        (CONNECTED_03, 'End your answer with "The answer is yes." or "The answer is no."', None, False),
        (FLOW_05, "The answer is from 0 to 5, 7 units.", 7.0, True),
        (FLOW_05, "The answer is 7 = 3 + 4.", 7.0, True),
        (FLOW_05, "The answer is 3 + 4", None, False),  # a sum without its result
        (FLOW_05, "The answer is 5-7 units.", None, False),  # a range
        (FLOW_05, "In total 7, along 0 -> 1 -> 5 and 0 -> 2 -> 5.", 7.0, True),  # a path's nodes are no value
        (FLOW_05, "The maximum flow is 7 units, not 5.", 7.0, True),
        (FLOW_05, "7 units, not 5.", 7.0, True),
    ],
)
def test_answers_outside_the_format_are_read_as_documented(graph, text, answer, correct):
    result = score_graph_answer(text, graph)
    assert (result["answer"], result["correct"], result["parsed"]) == (answer, correct, answer is not None)


def test_flows_and_path_lengths_are_exact_decimals():
    """0.1 + 0.2 is 0.30000000000000004 in floats; the capacities are tenths, so the flow is 0.3 exactly."""
    tenths = {
        "task": "max_flow",
        "nodes": ["0", "1", "2", "3"],
        "edges": [["0", "1", 0.1], ["1", "3", 0.1], ["0", "2", 0.2], ["2", "3", 0.2]],
        "source": "0",
        "target": "3",
    }
    assert score_graph_answer("The answer is 0.3", tenths, flow_tolerance=0)["correct"]
    assert not score_graph_answer("The answer is 0.30000000000000004", tenths, flow_tolerance=0)["correct"]
    assert score_graph_answer("The answer is 0.31", tenths, flow_tolerance=0.01)["correct"]  # the bound counts
    assert not score_graph_answer("The answer is 0.311", tenths, flow_tolerance=0.01)["correct"]
    # numpy scalars are the decimals they print as: float32 0.01 is not 0.009999999776482582
    assert score_graph_answer("The answer is 0.31", tenths, flow_tolerance=np.float32(0.01))["correct"]
    scores = graph_reasoning_scores(["The answer is 0.31"], [json.dumps(tenths)], flow_tolerance=np.float32(0.01))
    assert scores["accuracy"] == 1.0
    as_numpy = {**tenths, "edges": [[u, v, np.float32(w)] for u, v, w in tenths["edges"]]}
    assert score_graph_answer("The answer is 0.3", as_numpy, flow_tolerance=0)["correct"]
    as_numpy["edges"][0][2] = np.int64(1)
    assert score_graph_answer("The answer is 0.3", as_numpy, flow_tolerance=0)["correct"]  # 0.1 + 0.2 still
    # two paths whose lengths differ by 5e-11 of their size: only the shorter one is optimal
    close = {
        "task": "shortest_path",
        "nodes": ["0", "1", "2", "3"],
        "edges": [["0", "1", 1e9], ["1", "3", 1], ["0", "2", 1e9], ["2", "3", 1.05]],
        "source": "0",
        "target": "3",
    }
    assert score_graph_answer("The answer is 0 -> 1 -> 3", close)["correct"]
    assert not score_graph_answer("The answer is 0 -> 2 -> 3", close)["correct"]


def test_every_gold_answer_scores_one_with_zero_flow_tolerance():
    """The generator's own answers are right exactly, float capacities included (they failed about 1 in 20)."""
    for task in GRAPH_TASKS:
        for pattern, variants in GRAPH_PATTERNS.items():
            if pattern == "numeric" and task in ("connectivity", "topological_sort"):
                continue
            for variant in variants:
                n = 200 if (pattern, variant) == ("numeric", "float") else 10
                problems = generate_graph_problems(task, pattern, variant, n=n, seed=3)
                for column in ("target", "answer"):
                    scores = graph_reasoning_scores(problems[column], problems["graph"], flow_tolerance=0)
                    assert scores["accuracy"] == 1.0, (task, pattern, variant, column)


_HASH_SEED_SCRIPT = """
import hashlib, json
from hf_memory.graph_reasoning import GRAPH_PATTERNS, GRAPH_TASKS, generate_graph_problems, graph_reasoning_scores
from hf_memory.graph_reasoning import shortcut_answers
problems = generate_graph_problems("max_flow", "numeric", "float", n=200, seed=0)
accuracy = graph_reasoning_scores(problems["answer"], problems["graph"], flow_tolerance=0)["accuracy"]
data = hashlib.sha256()  # everything the generator and the shortcut rules write
for task in GRAPH_TASKS:
    for pattern, variants in GRAPH_PATTERNS.items():
        for variant in variants if pattern != "numeric" or task in ("shortest_path", "max_flow") else ():
            made = generate_graph_problems(task, pattern, variant, n=6, seed=1)
            data.update(json.dumps([list(made[column]) for column in made.column_names]).encode())
            if task == "connectivity":
                for rule in ("direct_edge", "no_isolated_endpoint"):
                    data.update(json.dumps(shortcut_answers(made["graph"], rule)).encode())
print(json.dumps([accuracy, data.hexdigest()]))
"""


@pytest.mark.slow
def test_max_flow_scores_and_generated_data_do_not_depend_on_the_hash_seed():
    """networkx sums float flows in set order, which PYTHONHASHSEED changes: each process must score the gold 1.0.
    Node names are strings, whose set order changes with the hash seed too: the generated data must not."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outcomes = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": root}
        out = subprocess.run(
            [sys.executable, "-c", _HASH_SEED_SCRIPT], env=env, capture_output=True, text=True, check=True, cwd=root
        )
        outcomes.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert [accuracy for accuracy, _ in outcomes] == [1.0, 1.0]
    assert outcomes[0][1] == outcomes[1][1]


def test_the_answer_set_is_read_as_written():
    """tests/data/graph_answers.jsonl: answers phrased many ways, each with the reading it must get."""
    from tests.graph_answers import RESULTS, build_rows, check, read_rows, summary

    rows = read_rows()
    assert rows == build_rows(), "the answer set is stale: python -m tests.graph_answers --write"
    outcome = check(rows)
    assert outcome["failures"] == []
    with open(RESULTS, encoding="utf-8") as f:  # the figures in docs/graph_reasoning.md
        recorded = json.load(f)
    assert recorded["current"] == summary(outcome), "python -m tests.graph_answers --results " + RESULTS
    with open(os.path.join(os.path.dirname(RESULTS), "..", "..", "docs", "graph_reasoning.md"), encoding="utf-8") as f:
        page = " ".join(f.read().split())
    for label, entry in recorded.items():  # the page's table states the recorded counts
        cells = " | ".join(f"{agree} / {count}" for agree, count in entry["per_task"].values())
        assert f"| {cells} | {entry['agree']} / {entry['rows']}" in page, label
    assert outcome["agree"] == outcome["rows"] >= 300
    assert set(outcome["per_task"]) == set(GRAPH_TASKS)
    cases = set(outcome["per_case"])
    assert {"B5: issue example", "P6: issue example", "B6: tenths add exactly", "gold target"} <= cases
    assert sum(row["answer"] is None for row in rows) >= 50  # unparseable answers are in the set too


def test_flow_tolerance_is_configurable():
    assert not score_graph_answer("The answer is 5.3", FLOW)["correct"]
    assert score_graph_answer("The answer is 5.3", FLOW, flow_tolerance=0.5)["correct"]
    scores = graph_reasoning_scores(["The answer is 5.3"], [json.dumps(FLOW)], flow_tolerance=0.5)
    assert scores["accuracy"] == 1.0


def test_scores_report_unparseable_apart_and_per_task():
    graphs = [json.dumps(graph) for graph, *_ in HAND_CASES]
    answers = [answer for _, answer, *_ in HAND_CASES]
    scores = graph_reasoning_scores(answers, graphs, return_per_sample=True)
    assert scores["correct"] == [case[3] for case in HAND_CASES]
    assert scores["parsed"] == [case[2] for case in HAND_CASES]
    assert scores["accuracy"] == pytest.approx(np.mean([case[3] for case in HAND_CASES]))
    assert scores["unparseable"] == pytest.approx(np.mean([not case[2] for case in HAND_CASES]))
    for task in GRAPH_TASKS:
        rows = [case for case in HAND_CASES if case[0]["task"] == task]
        assert scores["per_task"][task] == pytest.approx(
            {
                "accuracy": np.mean([c[3] for c in rows]),
                "unparseable": np.mean([not c[2] for c in rows]),
                "count": len(rows),
            }
        )


def test_gold_targets_and_answers_score_perfectly_in_every_variant():
    for task in GRAPH_TASKS:
        for pattern, variants in GRAPH_PATTERNS.items():
            if pattern == "numeric" and task in ("connectivity", "topological_sort"):
                continue
            for variant in variants:
                problems = generate_graph_problems(task, pattern, variant, n=6, seed=1)
                for column in ("target", "answer"):
                    scores = graph_reasoning_scores(problems[column], problems["graph"])
                    assert scores["accuracy"] == 1.0, (task, pattern, variant, column)


def test_wrong_answers_score_zero():
    problems = generate_graph_problems("connectivity", n=20, seed=0)
    flipped = ["The answer is no." if a == "yes" else "The answer is yes." for a in problems["answer"]]
    assert graph_reasoning_scores(flipped, problems["graph"])["accuracy"] == 0.0


BAD_SCORER_INPUTS = {
    "different_lengths": (["yes"], [json.dumps({**CONNECTED, "source": "0", "target": "1"})] * 2, "same length"),
    "empty": ([], [], "`predictions` is empty"),
    "string_column": ("yes", ["{}"], "`predictions` must be a list"),
    "not_a_string": ([3], [json.dumps(FLOW)], "`predictions[0]` must be the model's answer as a string"),
    "bad_json": (["yes"], ["{not json"], "`references[0]` must be the `graph` JSON"),
    "unknown_task": (["yes"], [json.dumps({**FLOW, "task": "coloring"})], "`references[0]` has task 'coloring'"),
    "unknown_node": (["5"], [json.dumps({**FLOW, "edges": [["0", "9", 1]]})], "`references[0]` has edge"),
    "missing_weight": (["5"], [json.dumps({**FLOW, "edges": [["0", "3"]]})], "weight a finite number > 0"),
    "missing_source": (["yes"], [json.dumps(CONNECTED)], "needs `source`"),
    # a weight too large for a float, endpoints and sources that are not names: no OverflowError / TypeError
    "huge_weight": (
        ["5"],
        [
            '{"task": "max_flow", "nodes": ["0", "1"], "edges": [["0", "1", 1' + "0" * 400 + "]], "
            '"source": "0", "target": "1"}'
        ],
        "weight a finite number > 0",
    ),
    "too_many_digits": (["5"], ['{"task": "max_flow", "edges": [["0", "1", 1' + "0" * 5000 + "]]}"], "`graph` JSON"),
    "list_endpoint": (["5"], [json.dumps({**FLOW, "edges": [[["0"], "1", 3]]})], "`references[0]` has edge"),
    "list_source": (["5"], [json.dumps({**FLOW, "source": ["0"]})], "needs `source`"),
    "list_target": (["yes"], [json.dumps({**CONNECTED, "source": "0", "target": {"1": 1}})], "needs `target`"),
    # parallel edges would be merged by networkx, the last weight winning: refused, naming the edge
    "parallel_arcs": (
        ["6"],
        [json.dumps({**BIG_FLOW, "edges": [["0", "1", 5], ["0", "1", 1]]})],
        "lists the edge from '0' to '1' twice, as ['0', '1', 5] and ['0', '1', 1]",
    ),
    "undirected_both_ways": (
        ["0 -> 1 -> 2"],
        [json.dumps({**DIAMOND, "edges": [["A", "B", 1], ["B", "A", 9], ["B", "E", 1]]})],
        "lists the edge between 'A' and 'B' twice",
    ),
    "repeated_unweighted": (
        ["yes"],
        [json.dumps({**CONNECTED, "source": "0", "target": "1", "edges": [["0", "1"]] * 2})],
        "twice",
    ),
    # a topological order needs a directed graph
    "undirected_sort": (["0, 1"], [json.dumps({**ORDER, "directed": False})], "needs a directed graph"),
    # node names: answers are matched ignoring case, and a blank name would match between any two words
    "case_duplicates": (["a -> b"], [json.dumps({**DIAMOND, "nodes": ["A", "a", "B", "C", "D", "E"]})], "'A' and 'a'"),
    "blank_node": (
        ["a -> b"],
        [json.dumps({**CONNECTED, "nodes": ["0", "1", "2", " "], "source": "0", "target": "1"})],
        "blank node name ' ' at `nodes[3]`",
    ),
    "empty_node": (
        ["a -> b"],
        [json.dumps({**CONNECTED, "nodes": ["", "1"], "edges": [], "source": "1", "target": "1"})],
        "blank node name",
    ),
}


@pytest.mark.parametrize("case", BAD_SCORER_INPUTS.values(), ids=BAD_SCORER_INPUTS.keys())
def test_bad_scorer_inputs_name_the_argument(case):
    predictions, references, message = case
    with pytest.raises(ValueError, match=re.escape(message)):
        graph_reasoning_scores(predictions, references)


def test_bad_tolerance_and_flags():
    with pytest.raises(ValueError, match="`flow_tolerance`"):
        score_graph_answer("5", FLOW, flow_tolerance=-1)
    with pytest.raises(ValueError, match="`return_per_sample`"):
        graph_reasoning_scores(["5"], [json.dumps(FLOW)], return_per_sample="yes")
    assert graph_reasoning_scores(["5"], [json.dumps(FLOW)], return_per_sample=np.True_)["correct"] == [True]
    with pytest.raises(ValueError, match=re.escape("`predictions[1]` must be the model's answer")):
        graph_reasoning_scores(["5", None], [json.dumps(FLOW)] * 2)
    with pytest.raises(ValueError, match="`predictions` must be a list"):
        graph_reasoning_scores({"5"}, [json.dumps(FLOW)])


def test_antiparallel_arcs_and_one_edge_per_pair_are_accepted():
    """Only a repeated pair is refused: u -> v with v -> u is two arcs of a directed graph."""
    flow = {**BIG_FLOW, "edges": [["0", "1", 5], ["1", "0", 1]]}
    assert score_graph_answer("The answer is 5", flow)["correct"]
    cycle = {"task": "topological_sort", "nodes": ["0", "1"], "edges": [["0", "1"], ["1", "0"]]}
    assert not score_graph_answer("The answer is 0, 1", cycle)["correct"]  # no order exists


# ---------------------------------------------------------------------------------------------------------------
# The evaluate metric, offline


@pytest.fixture(scope="module")
def metric():
    import evaluate

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return evaluate.load(GRAPH_REASONING)


def test_evaluate_load_works_offline_and_agrees(metric):
    assert type(metric).__name__ == "GraphReasoning"
    assert "Zhang" in metric.info.citation
    graphs = [json.dumps(graph) for graph, *_ in HAND_CASES]
    answers = [answer for _, answer, *_ in HAND_CASES]
    expected = graph_reasoning_scores(answers, graphs, return_per_sample=True)
    assert metric.compute(predictions=answers, references=graphs, return_per_sample=True) == expected
    for start in range(0, len(answers), 10):
        metric.add_batch(predictions=answers[start : start + 10], references=graphs[start : start + 10])
    assert metric.compute() == graph_reasoning_scores(answers, graphs)


def test_evaluate_refuses_bad_input_before_arrow(metric):
    with pytest.raises(ValueError, match=re.escape("`prediction` must be")):
        metric.add(prediction=5, reference=json.dumps(FLOW))
    with pytest.raises(ValueError, match=re.escape("`references[0]`")):
        metric.add_batch(predictions=["5"], references=["{}"])
    with pytest.raises(ValueError, match="same length"):
        metric.compute(predictions=["5", "6"], references=[json.dumps(FLOW)])


# ---------------------------------------------------------------------------------------------------------------
# Transfer reports


def _pairs(both, tuned_only, base_only, neither):
    """Per-item (base, tuned) outcomes with the given counts of each combination."""
    base = [1] * both + [0] * tuned_only + [1] * base_only + [0] * neither
    tuned = [1] * both + [1] * tuned_only + [0] * base_only + [0] * neither
    return base, tuned


@pytest.mark.parametrize(
    ("tuned_only", "base_only", "p_value"),
    [
        (5, 0, 2 / 2**5),  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
        (8, 1, 2 * (1 + 9) / 2**9),  # 2 * P(X <= 1), X ~ Bin(9, 1/2) = 0.0390625
        (1, 8, 2 * (1 + 9) / 2**9),  # symmetric
        (10, 3, 2 * (1 + 13 + 78 + 286) / 2**13),  # 0.0922851...
        (4, 4, 1.0),  # 2 * P(X <= 4) > 1: capped
        (0, 0, 1.0),  # no disagreement, no evidence
    ],
)
def test_mcnemar_exact_against_hand_computed_values(tuned_only, base_only, p_value):
    base, tuned = _pairs(7, tuned_only, base_only, 3)
    result = mcnemar_exact(base, tuned)
    assert result == {"tuned_only": tuned_only, "base_only": base_only, "p_value": pytest.approx(p_value)}


def test_mcnemar_exact_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        base, tuned = rng.random(60) < 0.5, rng.random(60) < 0.6
        result = mcnemar_exact(base, tuned)
        expected = stats.binomtest(result["tuned_only"], result["tuned_only"] + result["base_only"]).pvalue
        if result["tuned_only"] + result["base_only"]:
            assert result["p_value"] == pytest.approx(expected)


def test_transfer_report_cells_gains_significance_and_recovery():
    base_id, tuned_id = _pairs(2, 16, 0, 2)  # base 0.1, tuned 0.9: gain 0.8, p = 2 / 2**16
    base_a, tuned_a = _pairs(4, 8, 1, 7)  # base 0.25, tuned 0.6: gain 0.35, p = 0.0390625
    base_b, tuned_b = _pairs(10, 3, 1, 6)  # gain 0.1, p = 0.625
    base_c, tuned_c = _pairs(10, 0, 4, 6)  # gain -0.2
    report = transfer_report(
        {"edge": base_id, "friend": base_a, "large": base_b, "expert": base_c},
        {"edge": {"edge": tuned_id, "friend": tuned_a, "large": tuned_b, "expert": tuned_c}},
        threshold=0.4,
    )
    rows = {row["test"]: row for row in report.rows}
    assert [row["test"] for row in report.rows] == ["edge", "friend", "large", "expert"]
    assert rows["edge"]["in_distribution"] and not rows["friend"]["in_distribution"]
    assert rows["edge"]["gain"] == pytest.approx(0.8) and rows["edge"]["p_value"] == pytest.approx(2 / 2**16)
    assert rows["friend"]["gain"] == pytest.approx(0.35) and rows["friend"]["p_value"] == pytest.approx(0.0390625)
    assert rows["large"]["p_value"] == pytest.approx(2 * (1 + 4) / 2**4)
    assert [rows[t]["significant_transfer"] for t in ("edge", "friend", "large", "expert")] == [
        True,
        True,
        False,
        False,
    ]
    assert rows["friend"]["recovery"] == pytest.approx(0.35 / 0.8)
    assert rows["expert"]["recovery"] == pytest.approx(-0.25)
    assert [rows[t]["strong_recovery"] for t in ("edge", "friend", "large", "expert")] == [True, True, False, False]
    stricter = transfer_report(
        {"edge": base_id, "friend": base_a}, {"edge": {"edge": tuned_id, "friend": tuned_a}}, threshold=0.5
    )
    assert not {row["test"]: row for row in stricter.rows}["friend"]["strong_recovery"]
    loose_alpha = transfer_report({"large": base_b}, {"large": {"large": tuned_b}}, alpha=0.7)
    assert loose_alpha.rows[0]["significant_transfer"]


def test_recovery_exactly_at_the_threshold_counts():
    """1/3 over 2/3 is 0.49999999999999994 in floats: the verdict is computed exactly."""
    base = {"a": [0, 0, 1, 0, 1, 0], "b": [0, 1, 0, 0, 1, 0]}
    tuned = {"a": {"a": [1, 1, 1, 1, 1, 1], "b": [1, 1, 0, 1, 1, 0]}}
    row = transfer_report(base, tuned, threshold=0.5).rows[1]
    assert row["recovery"] == 0.5 and row["strong_recovery"]
    assert not transfer_report(base, tuned, threshold=0.5000001).rows[1]["strong_recovery"]


def test_transfer_report_without_in_distribution_gain_has_no_recovery():
    base, tuned = _pairs(5, 0, 3, 2)
    report = transfer_report({"a": base, "b": base}, {"a": {"a": tuned, "b": base}})
    assert [row["recovery"] for row in report.rows] == [None, None]
    assert not any(row["strong_recovery"] for row in report.rows)


def test_transfer_report_markdown_and_heat_map(tmp_path):
    pytest.importorskip("matplotlib")
    base_id, tuned_id = _pairs(2, 16, 0, 2)
    base_a, tuned_a = _pairs(10, 3, 1, 6)
    report = transfer_report(
        {"edge": base_id, "friend": base_a, "large": base_a},
        {"edge": {"edge": tuned_id, "friend": tuned_a}, "large": {"large": tuned_a, "edge": tuned_id}},
    )
    table = report.to_markdown().splitlines()
    assert len(table) == 2 + 4
    assert "| edge | edge (ID) | 20 | 0.100 | 0.900 | +0.800 | 16 / 0 |" in table[2]
    path = tmp_path / "heat.png"
    figure = report.plot(str(path))
    assert path.stat().st_size > 1000
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert "+0.80* R" in labels and "+0.10 R" in labels and len(labels) == 4


BAD_REPORTS = {
    "different_lengths": ({"a": [1, 0]}, {"a": {"a": [1, 0, 1]}}, "has 3 items but `base_scores['a']` has 2"),
    "missing_base": ({"a": [1, 0]}, {"a": {"a": [1, 1], "b": [1, 1]}}, "test pattern 'b', which `base_scores` lacks"),
    "no_in_distribution": ({"a": [1, 0], "b": [0, 0]}, {"a": {"b": [1, 1]}}, "includes 'a' itself"),
    "not_binary": ({"a": [2, 0]}, {"a": {"a": [1, 1]}}, "`base_scores['a']` must hold bools or 0/1"),
    "fractional": ({"a": [1, 0]}, {"a": {"a": [0.5, 1]}}, "`tuned_scores['a']['a']` must hold bools or 0/1"),
    "empty_outcomes": ({"a": []}, {"a": {"a": []}}, "non-empty 1-D"),
    "empty_base": ({}, {"a": {"a": [1]}}, "`base_scores` must be a non-empty dict"),
    "list_not_dict": ({"a": [1]}, [[1]], "`tuned_scores` must be a non-empty dict"),
}


@pytest.mark.parametrize("case", BAD_REPORTS.values(), ids=BAD_REPORTS.keys())
def test_bad_transfer_inputs_name_the_argument(case):
    base, tuned, message = case
    with pytest.raises(ValueError, match=re.escape(message)):
        transfer_report(base, tuned)


@pytest.mark.parametrize(("name", "value"), [("alpha", 0), ("alpha", 1), ("alpha", float("nan")), ("threshold", 0)])
def test_bad_thresholds(name, value):
    with pytest.raises(ValueError, match=f"`{name}`"):
        transfer_report({"a": [1]}, {"a": {"a": [1]}}, **{name: value})


def test_mcnemar_refuses_unpaired_lists():
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact([1, 0], [1])
    with pytest.raises(ValueError, match=re.escape("`base_correct` must be a flat list")):
        mcnemar_exact([[1, 0], [1]], [1, 1])


def _exact_p_value(tuned_only, base_only):
    total = tuned_only + base_only
    tail = sum(math.comb(total, k) for k in range(min(tuned_only, base_only) + 1))
    return min(1.0, float(2 * Fraction(tail, 2**total)))


@pytest.mark.parametrize(("tuned_only", "base_only"), [(700, 600), (1500, 1400), (2000, 1), (0, 2500), (1234, 1234)])
def test_mcnemar_exact_equals_the_full_binomial_sum(tuned_only, base_only):
    base, tuned = _pairs(3, tuned_only, base_only, 2)
    assert mcnemar_exact(base, tuned)["p_value"] == _exact_p_value(tuned_only, base_only)


def test_mcnemar_exact_computes_one_binomial_coefficient_on_large_splits(monkeypatch):
    """The old sum of every binomial coefficient took about 30 s for 20,000 disagreements (hours at 100,000); the
    tail is now one coefficient and an exact recurrence (no timing here: the machine is shared)."""
    import hf_memory.graph_reasoning.transfer as transfer

    calls = []
    real = math.comb
    monkeypatch.setattr(transfer.math, "comb", lambda n, k: calls.append((n, k)) or real(n, k))
    for tuned_only, base_only in ((10_000, 10_000), (48_900, 51_100)):  # MAX_PROBLEMS items, all disagreeing
        calls.clear()
        p_value = mcnemar_exact(*_pairs(0, tuned_only, base_only, 0))["p_value"]
        assert calls == [(tuned_only + base_only, min(tuned_only, base_only))]
    monkeypatch.undo()
    assert mcnemar_exact(*_pairs(0, 10_000, 10_000, 0))["p_value"] == 1.0
    stats = pytest.importorskip("scipy.stats")
    assert p_value == pytest.approx(stats.binomtest(48_900, 100_000).pvalue, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Surface-pattern baselines


def _connectivity_graph(edges, source, target, nodes=("a", "b", "c", "d")):
    return json.dumps(
        {"task": "connectivity", "nodes": list(nodes), "edges": edges, "source": source, "target": target}
    )


@pytest.mark.parametrize(
    "edges, source, target, direct, endpoints",
    [
        ([["a", "b"]], "a", "b", "yes", "yes"),
        ([["b", "a"]], "a", "b", "yes", "yes"),  # undirected: either order is the edge
        ([["a", "c"], ["c", "b"]], "a", "b", "no", "yes"),  # connected through c, no direct edge
        ([["a", "c"]], "a", "b", "no", "no"),  # b has no edge
        ([], "a", "b", "no", "no"),
        ([["c", "d"]], "a", "b", "no", "no"),
    ],
)
def test_shortcut_rules_on_hand_built_graphs(edges, source, target, direct, endpoints):
    graph = _connectivity_graph(edges, source, target)
    assert shortcut_answers([graph]) == [f"The answer is {direct}."]
    assert shortcut_answers([graph], rule="no_isolated_endpoint") == [f"The answer is {endpoints}."]
    assert shortcut_answers([json.loads(graph)], rule="always_yes") == ["The answer is yes."]


def test_direct_edge_rule_scores_far_above_chance_on_small_graphs_and_less_on_large_ones():
    """The generator's small graphs put most connected pairs next to each other: the rule needs no path to score
    high there, and the large-graph shift takes much of that away (the control documented next to tuned models)."""
    accuracy = {}
    for pattern, variant in (("semantic", "edge_list"), ("structural", "large")):
        problems = generate_graph_problems("connectivity", pattern, variant, n=200, seed=5)
        answers = shortcut_answers(problems["graph"])
        scores = graph_reasoning_scores(answers, problems["graph"], return_per_sample=True)
        assert scores["unparseable"] == 0.0
        # the rule is never wrong on a "yes" it gives: a shared edge is a path
        assert all(c for a, c in zip(answers, scores["correct"]) if a.endswith("yes."))
        accuracy[variant] = scores["accuracy"]
    assert accuracy["edge_list"] > 0.8
    assert 0.55 < accuracy["large"] < accuracy["edge_list"] - 0.1
    problems = generate_graph_problems("connectivity", "semantic", "edge_list", n=50, seed=5)
    assert (
        graph_reasoning_scores(shortcut_answers(problems["graph"], "always_yes"), problems["graph"])["accuracy"] == 0.5
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda g: shortcut_answers([g], rule="path"), "`rule` must be one of 'direct_edge'"),
        (lambda g: shortcut_answers(g), "`references` must be a list"),
        (lambda g: shortcut_answers([]), "`references` is empty"),
        (lambda g: shortcut_answers(["{"]), "references\\[0\\]"),
    ],
)
def test_bad_shortcut_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call(_connectivity_graph([["a", "b"]], "a", "b"))


def test_shortcut_rules_refuse_other_tasks():
    problems = generate_graph_problems("shortest_path", "semantic", "edge_list", n=2, seed=0)
    with pytest.raises(ValueError, match="connectivity problems only"):
        shortcut_answers(problems["graph"])


# ---------------------------------------------------------------------------------------------------------------
# The example, as a smoke run


@pytest.mark.slow
def test_example_small_run(tmp_path, tokenizer):
    pytest.importorskip("matplotlib")
    from tests.testing_utils import load_example, tiny_causal_lm

    example = load_example("graph_reasoning")
    results = example.main(
        small=True,
        output_dir=str(tmp_path),
        goldfish=True,
        model=tiny_causal_lm(vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        results_file=str(tmp_path / "results.json"),
    )
    assert set(results["recipes"]) == {"lora", "lora+goldfish"}
    assert (tmp_path / "graph_reasoning_transfer_lora.png").exists()
    assert (tmp_path / "graph_reasoning_transfer_lora_goldfish.png").exists()
    assert len(results["zero_shot"]) == 5 + 3 * 4  # connectivity per test cell, the other tasks per encoding
    assert 0 <= results["zero_shot"]["max_flow/friendship"]["generation_accuracy"] <= 1
    rows = results["recipes"]["lora"]["table"]
    assert [row["test"] for row in rows] == ["edge_list", "incident", "expert", "friendship", "large"]
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["epochs"] == 1
