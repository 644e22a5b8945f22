"""NLGift-style graph problems: sample a graph with networkx, solve it exactly, write it in one of four encodings.

Patterns and their variants (each pattern changes one thing; the others keep the defaults: edge-list encoding,
weights 1-10, Erdős-Rényi graphs of 3-10 nodes):

- semantic: the encoding, "edge_list" "(i,j)", "incident" "Node i is connected to nodes ...", "expert" letters
  "A -> B", "friendship" first names ("Evan and Gillian are friends").
- numeric (weighted tasks only): "small_int" weights 1-10, "large_int" 1-100, "float" 0.1-10.0 in steps of 0.1.
- structural: "small" 3-10 nodes, "large" 11-25; "erdos_renyi", "barabasi_albert"; "high_centrality" (one hub joined
  to most nodes), "low_centrality" (every node of degree at most 2: rings and paths).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from .._utils import check_choice, check_integer, require_extra
from .encodings import (
    ENCODINGS,
    MAX_NODES,
    describe_graph,
    joined,
    mention,
    node_names,
    number_text,
    path_text,
    question,
)


GRAPH_TASKS = ("connectivity", "shortest_path", "topological_sort", "max_flow")
GRAPH_PATTERNS = {
    "semantic": ENCODINGS,
    "numeric": ("small_int", "large_int", "float"),
    "structural": (
        "small",
        "large",
        "erdos_renyi",
        "barabasi_albert",
        "high_centrality",
        "low_centrality",
    ),
}
WEIGHTED_TASKS = ("shortest_path", "max_flow")
DIRECTED_TASKS = ("topological_sort", "max_flow")
# The fewest nodes a task's graph can have: connectivity needs two components, one with an edge, for "no" items.
MIN_NODES = {"connectivity": 3, "shortest_path": 2, "topological_sort": 2, "max_flow": 2}
NODE_RANGES = {"small": (3, 10), "large": (11, 25)}
# Weights are drawn as integers in these ranges; "float" weights are tenths (1..100 -> 0.1..10.0).
WEIGHT_RANGES = {"small_int": (1, 10), "large_int": (1, 100), "float": (1, 100)}
_ATTEMPTS = 1000
MAX_PROBLEMS = 100_000  # about a minute and 100 MB in memory; the paper's splits hold 500


def _structure_graph(nx, count: int, structure: str, rng: np.random.Generator):
    """An undirected graph on nodes 0..count-1 with the requested structure (before the nodes are shuffled)."""
    seed = int(rng.integers(2**31))
    if count <= 2:
        return nx.path_graph(count)
    if structure == "barabasi_albert":
        return nx.barabasi_albert_graph(count, 1 if count < 5 else int(rng.integers(1, 3)), seed=seed)
    if structure == "high_centrality":
        graph = nx.gnp_random_graph(count, min(1.0, 0.5 / (count - 1)), seed=seed)
        hub = 0
        graph.remove_edges_from(list(graph.edges(hub)))
        spokes = [node for node in range(1, count) if rng.random() < 0.8] or [1]
        graph.add_edges_from((hub, node) for node in spokes)
        return graph
    if structure == "low_centrality":
        return nx.random_regular_graph(2, count, seed=seed)
    # Erdős-Rényi with a mean degree of about 1.5-3, so that large graphs stay readable
    return nx.gnp_random_graph(count, min(1.0, float(rng.uniform(1.5, 3.0)) / (count - 1)), seed=seed)


def _shuffled(nx, graph, rng: np.random.Generator):
    """The same graph with its node numbers permuted, so numbering reveals neither hubs nor groups nor orders."""
    order = rng.permutation(graph.number_of_nodes())
    return nx.relabel_nodes(graph, {old: int(order[old]) for old in graph.nodes})


def _weights(graph, numeric: str, rng: np.random.Generator) -> None:
    low, high = WEIGHT_RANGES[numeric]
    for u, v in sorted(graph.edges):
        graph[u][v]["weight"] = int(rng.integers(low, high + 1))


def _value(weight: int, numeric: str):
    """An internal integer weight as the problem states it (tenths for float weights)."""
    return weight / 10 if numeric == "float" else weight


def _sorted_edges(graph) -> list[tuple[int, int]]:
    return sorted((min(u, v), max(u, v)) if not graph.is_directed() else (u, v) for u, v in graph.edges)


def _connectivity(nx, count, structure, rng, want_yes: bool):
    """Two separately generated groups of nodes (so that "no" items exist), and a pair in one or across both."""
    split = int(rng.integers(1, count))
    first = _structure_graph(nx, split, structure, rng)
    second = _structure_graph(nx, count - split, structure, rng)
    graph = _shuffled(nx, nx.disjoint_union(first, second), rng)
    if graph.number_of_edges() == 0:
        return None
    components = [sorted(c) for c in nx.connected_components(graph)]
    if want_yes:
        big = [c for c in components if len(c) >= 2]
        sizes = np.array([len(c) for c in big], dtype=float)
        component = big[int(rng.choice(len(big), p=sizes / sizes.sum()))]
        source, target = (int(x) for x in rng.choice(component, size=2, replace=False))
    else:
        a, b = (int(x) for x in rng.choice(len(components), size=2, replace=False))
        source, target = int(rng.choice(components[a])), int(rng.choice(components[b]))
    return graph, source, target


def _shortest_path(nx, count, structure, numeric, rng):
    graph = _shuffled(nx, _structure_graph(nx, count, structure, rng), rng)
    pairs = [(u, v) for c in nx.connected_components(graph) for u in c for v in c if u != v]
    if not pairs:
        return None
    _weights(graph, numeric, rng)
    source, target = pairs[int(rng.integers(len(pairs)))]
    return graph, source, target


def _oriented(nx, graph, rng):
    """The graph's edges pointed from earlier to later in a random ranking: a DAG whose node numbers are no order."""
    rank = rng.permutation(graph.number_of_nodes())
    dag = nx.DiGraph()
    dag.add_nodes_from(sorted(graph.nodes))
    dag.add_edges_from((u, v) if rank[u] < rank[v] else (v, u) for u, v in sorted(graph.edges))
    return dag


def _max_flow(nx, count, structure, numeric, rng):
    dag = _oriented(nx, _shuffled(nx, _structure_graph(nx, count, structure, rng), rng), rng)
    pairs = [(u, v) for u in sorted(dag.nodes) for v in sorted(nx.descendants(dag, u))]
    if not pairs:
        return None
    _weights(dag, numeric, rng)
    source, target = pairs[int(rng.integers(len(pairs)))]
    return dag, source, target


def _flow_paths(nx, flows: dict, source: int, target: int) -> list[tuple[list[int], int]]:
    """Split an integer flow into source-target paths with their amounts (what the rationale tells)."""
    remaining = {(u, v): f for u, targets in flows.items() for v, f in targets.items() if f > 0}
    paths = []
    while True:
        used = nx.DiGraph(list(remaining))
        if source not in used or target not in used or not nx.has_path(used, source, target):
            return paths
        path = nx.shortest_path(used, source, target)
        amount = min(remaining[edge] for edge in zip(path, path[1:]))
        for edge in zip(path, path[1:]):
            remaining[edge] -= amount
            if remaining[edge] == 0:
                del remaining[edge]
        paths.append((path, amount))


def _solve(nx, task, graph, source, target, names, encoding, numeric) -> tuple[str, str]:
    """(rationale ending in "The answer is ...", gold answer text) for one graph."""
    if task == "connectivity":
        if nx.has_path(graph, source, target):
            path = path_text([names[i] for i in nx.shortest_path(graph, source, target)])
            return f"There is a path: {path}. The answer is yes.", "yes"
        reach = sorted(nx.node_connected_component(graph, source))
        whom = ", ".join(names[i] for i in reach)
        return (
            f"From {mention(encoding, names[source])} one can reach only {whom}, "
            f"and {mention(encoding, names[target])} is not among them. The answer is no.",
            "no",
        )
    if task == "shortest_path":
        path = nx.dijkstra_path(graph, source, target)
        steps = [graph[u][v]["weight"] for u, v in zip(path, path[1:])]
        total = number_text(_value(sum(steps), numeric))
        parts = " + ".join(number_text(_value(w, numeric)) for w in steps)
        named = path_text([names[i] for i in path])
        sum_text = f"{parts} = {total}" if len(steps) > 1 else total
        return (
            f"The path {named} has total weight {sum_text}, and no path from {mention(encoding, names[source])} to "
            f"{mention(encoding, names[target])} has a smaller total. The answer is {named}.",
            named,
        )
    if task == "topological_sort":
        order = ", ".join(names[i] for i in nx.lexicographical_topological_sort(graph))
        return (
            f"Take, again and again, a node that no remaining node has to come before. The answer is {order}.",
            order,
        )
    value, flows = nx.maximum_flow(graph, source, target, capacity="weight")
    routes = [
        f"{number_text(_value(amount, numeric))} along {path_text([names[i] for i in path])}"
        for path, amount in _flow_paths(nx, flows, source, target)
    ]
    total = number_text(_value(value, numeric))
    return (
        f"Send {joined(routes)}; after that every route from {mention(encoding, names[source])} to "
        f"{mention(encoding, names[target])} has a full edge. The answer is {total}.",
        total,
    )


def _settings(pattern: str, variant: str) -> tuple[str, str, str, tuple[int, int]]:
    """(encoding, numeric, structure, node range) for one pattern variant: the variant replaces one default."""
    encoding, numeric, structure, nodes = "edge_list", "small_int", "erdos_renyi", NODE_RANGES["small"]
    if pattern == "semantic":
        encoding = variant
    elif pattern == "numeric":
        numeric = variant
    elif variant in NODE_RANGES:
        nodes = NODE_RANGES[variant]
    else:
        structure = variant
    return encoding, numeric, structure, nodes


def _check_node_range(num_nodes, task: str) -> tuple[int, int]:
    message = (
        f"`num_nodes` must be a (smallest, largest) pair of integers with {MIN_NODES[task]} <= smallest <= largest "
        f"<= {MAX_NODES} for task {task!r}"
    )
    # a sequence (tuple, list, array): a set has no order and a dict is indexed by its keys
    pair = isinstance(num_nodes, Sequence) and not isinstance(num_nodes, (str, bytes))
    pair = pair or (isinstance(num_nodes, np.ndarray) and num_nodes.ndim == 1)
    if not pair or len(num_nodes) != 2:
        raise ValueError(f"{message}, got {num_nodes!r}.")
    low = check_integer(num_nodes[0], "num_nodes[0]", minimum=1)
    high = check_integer(num_nodes[1], "num_nodes[1]", minimum=1)
    if not MIN_NODES[task] <= low <= high <= MAX_NODES:
        extra = f" ({low} nodes are too small to pose it)" if low < MIN_NODES[task] else ""
        raise ValueError(f"{message}{extra}, got {tuple(num_nodes)!r}.")
    return low, high


def generate_graph_problems(
    task: str,
    pattern: str = "semantic",
    variant: str = "edge_list",
    n: int = 500,
    seed: int = 0,
    num_nodes: tuple[int, int] | None = None,
):
    """NLGift-style graph-reasoning problems with exact gold answers, as a `datasets.Dataset`.

    Each pattern variant changes one aspect of the default problem (edge-list encoding, integer weights 1-10,
    Erdős-Rényi graphs of 3-10 nodes); see `GRAPH_PATTERNS`. Connectivity items are half "yes" and half "no" (for
    odd `n`, one more "yes"), in shuffled order. The same arguments give the same dataset.

    Args:
        task: One of `GRAPH_TASKS`: "connectivity", "shortest_path", "topological_sort" or "max_flow".
        pattern: "semantic", "numeric" (weighted tasks only: "shortest_path" and "max_flow") or "structural".
        variant: One of `GRAPH_PATTERNS[pattern]`, e.g. "friendship", "float" or "large".
        n: How many problems (an integer from 1 to `MAX_PROBLEMS`, 100,000; numpy integers are accepted).
        seed: The random seed (an integer >= 0).
        num_nodes: A (smallest, largest) node-count range instead of the variant's, as a tuple, list or 1-D array
            (not a set or dict); not with the structural variants "small" and "large", which set it. Between the
            task's minimum (`MIN_NODES`) and 40.

    Returns:
        A `datasets.Dataset` with string columns `prompt` (graph and question), `target` (a short rationale ending
        "The answer is ..."), `answer` (the gold answer as text) and `graph`: JSON with `task`, `directed`,
        `nodes`, `edges` (`[u, v]` or `[u, v, weight]`, node names as in the prompt) and, except for topological
        sort, the queried `source` and `target`.

    Raises:
        ValueError: Naming the argument and its allowed values, for an unknown task, pattern or variant, a numeric
            variant for an unweighted task, `n` or `seed` that is not a non-negative integer (`n` from 1 to
            `MAX_PROBLEMS`), or a node range that is not a (smallest, largest) pair or is too small for the task.
        ImportError: If networkx is missing (`pip install "hf-memory[graphs]"`).

    Examples:
        >>> problems = generate_graph_problems("connectivity", "semantic", "friendship", n=4, seed=0)
        >>> problems.column_names
        ['prompt', 'target', 'answer', 'graph']
        >>> sorted(problems["answer"])
        ['no', 'no', 'yes', 'yes']
    """
    check_choice(task, "task", GRAPH_TASKS)
    check_choice(pattern, "pattern", tuple(GRAPH_PATTERNS))
    if not isinstance(variant, str) or variant not in GRAPH_PATTERNS[pattern]:
        raise ValueError(
            f"`variant` must be one of {', '.join(map(repr, GRAPH_PATTERNS[pattern]))} for pattern {pattern!r}, "
            f"got {variant!r}."
        )
    if pattern == "numeric" and task not in WEIGHTED_TASKS:
        raise ValueError(
            f"`pattern`='numeric' changes edge weights, so it needs a weighted `task` "
            f"({' or '.join(map(repr, WEIGHTED_TASKS))}), got {task!r}."
        )
    n = check_integer(n, "n", minimum=1, hint="the number of problems")
    if n > MAX_PROBLEMS:
        raise ValueError(
            f"`n` must be at most {MAX_PROBLEMS:,} (one dataset is built in memory), got {n:,}: generate several "
            "datasets with different seeds and `datasets.concatenate_datasets` them."
        )
    seed = check_integer(seed, "seed", minimum=0)
    encoding, numeric, structure, node_range = _settings(pattern, variant)
    if num_nodes is not None:
        if pattern == "structural" and variant in NODE_RANGES:
            raise ValueError(
                f"`num_nodes` cannot be combined with the structural variant {variant!r}, which sets the node range "
                f"{NODE_RANGES[variant]}."
            )
        node_range = _check_node_range(num_nodes, task)
    else:
        node_range = (max(node_range[0], MIN_NODES[task]), node_range[1])
    require_extra("graphs", "generate_graph_problems")
    import datasets
    import networkx as nx

    rng = np.random.default_rng(seed)
    answers_yes = rng.permutation([i < (n + 1) // 2 for i in range(n)]) if task == "connectivity" else None
    rows = {"prompt": [], "target": [], "answer": [], "graph": []}
    for index in range(n):
        for _ in range(_ATTEMPTS):
            count = int(rng.integers(node_range[0], node_range[1] + 1))
            if task == "connectivity":
                made = _connectivity(nx, count, structure, rng, bool(answers_yes[index]))
            elif task == "shortest_path":
                made = _shortest_path(nx, count, structure, numeric, rng)
            elif task == "max_flow":
                made = _max_flow(nx, count, structure, numeric, rng)
            else:
                graph = _oriented(nx, _shuffled(nx, _structure_graph(nx, count, structure, rng), rng), rng)
                made = (graph, None, None) if graph.number_of_edges() else None
            if made is not None:
                break
        else:  # pragma: no cover - every generator succeeds with high probability on each attempt
            raise RuntimeError(f"could not generate a {task} graph in {_ATTEMPTS} attempts")
        graph, source, target = made
        names = node_names(encoding, graph.number_of_nodes())
        weighted = task in WEIGHTED_TASKS
        edges = [
            [names[u], names[v]] + ([_value(graph[u][v]["weight"], numeric)] if weighted else [])
            for u, v in _sorted_edges(graph)
        ]
        record = {"task": task, "directed": task in DIRECTED_TASKS, "nodes": names, "edges": edges}
        if source is not None:
            record["source"], record["target"] = names[source], names[target]
        rationale, answer = _solve(nx, task, graph, source, target, names, encoding, numeric)
        description = describe_graph(encoding, task, record["directed"], names, edges)
        ask = question(encoding, task, record.get("source"), record.get("target"))
        rows["prompt"].append(f"{description}\n{ask}")
        rows["target"].append(rationale)
        rows["answer"].append(answer)
        rows["graph"].append(json.dumps(record))
    return datasets.Dataset.from_dict(rows)
