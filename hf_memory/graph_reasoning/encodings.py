"""The four ways a graph is written in a prompt (NLGift's semantic patterns): node names, the graph description, the
question, and how a node or a path is spoken of in the rationale."""

from __future__ import annotations


ENCODINGS = ("edge_list", "incident", "expert", "friendship")

# Up to this many nodes per graph: the friendship encoding has one first name per node.
FRIEND_NAMES = (
    "Evan", "Gillian", "Mary", "Jason", "Lucas", "Fiona", "Oscar", "Nadia", "Victor", "Helen",
    "Ravi", "Ingrid", "Tomas", "Zoe", "Brian", "Chloe", "Daniel", "Elena", "Felix", "Grace",
    "Hugo", "Irene", "Kevin", "Laura", "Martin", "Nora", "Peter", "Quinn", "Rosa", "Simon",
    "Tara", "Umar", "Vera", "Walter", "Xenia", "Yusuf", "Anna", "Carlos", "Diana", "Ethan",
)  # fmt: skip
MAX_NODES = len(FRIEND_NAMES)


def node_names(encoding: str, count: int) -> list[str]:
    """The names of `count` nodes as the encoding writes them: "0", "1", ...; "A", ..., "Z", "AA", ...; first names."""
    if encoding == "friendship":
        return list(FRIEND_NAMES[:count])
    if encoding == "expert":
        letters = [chr(ord("A") + i) for i in range(26)]
        return [letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26] for i in range(count)]
    return [str(i) for i in range(count)]


def mention(encoding: str, node: str) -> str:
    """How the question and rationale refer to one node ("node 3", "node C", or the person's name)."""
    return node if encoding == "friendship" else f"node {node}"


def number_text(weight) -> str:
    """A weight or flow value as the prompt writes it (one decimal for float weights)."""
    return f"{weight:.1f}" if isinstance(weight, float) else str(weight)


def joined(items: list[str]) -> str:
    """Items joined as "a", "a and b" or "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def describe_graph(encoding: str, task: str, directed: bool, nodes: list[str], edges: list[list]) -> str:
    """The graph as prompt text: every node is listed, so isolated nodes survive the encoding."""
    weighted = bool(edges) and len(edges[0]) == 3
    kind = "capacity" if task == "max_flow" else "weight"
    if encoding == "edge_list":
        shape = "(i,j,w)" if weighted else "(i,j)"
        meaning = (
            "there is an edge from node i to node j" if directed else "node i and node j are connected by an edge"
        )
        if weighted:
            meaning += f" with {kind} w"
        pairs = " ".join(
            "(" + ",".join([u, v] + ([number_text(e[0])] if weighted else [])) + ")" for u, v, *e in edges
        )
        graph = "a directed graph" if directed else "an undirected graph"
        return f"In {graph}, {shape} means that {meaning}. The nodes are {', '.join(nodes)}. The edges are: {pairs}."
    if encoding == "incident":
        neighbours = {node: [] for node in nodes}
        for u, v, *weight in edges:
            neighbours[u].append((v, weight))
            if not directed:
                neighbours[v].append((u, weight))
        order = {node: i for i, node in enumerate(nodes)}
        lines = [f"In {'a directed' if directed else 'an undirected'} graph, the nodes are {', '.join(nodes)}."]
        for node in nodes:
            linked = sorted(neighbours[node], key=lambda item: order[item[0]])
            if not linked:
                lines.append(f"Node {node} has no outgoing edges." if directed else f"Node {node} has no neighbours.")
                continue
            verb = "has edges to" if directed else "is connected to"
            if weighted:
                parts = [f"node {v} ({kind} {number_text(w[0])})" for v, w in linked]
                lines.append(f"Node {node} {verb} {', '.join(parts)}.")
            else:
                plural = "nodes" if len(linked) > 1 else "node"
                lines.append(f"Node {node} {verb} {plural} {', '.join(v for v, _ in linked)}.")
        return " ".join(lines)
    if encoding == "expert":
        arrow = "->" if directed else "--"
        meaning = "an edge from A to B" if directed else "that A and B are connected"
        if weighted:
            meaning += f", with the {kind} in brackets"
        lines = [
            f"You are a graph analyst. In the {'directed' if directed else 'undirected'} graph below, "
            f"A {arrow} B means {meaning}.",
            f"Nodes: {', '.join(nodes)}.",
            "Edges:",
        ]
        lines += [f"{u} {arrow} {v}" + (f" ({kind} {number_text(e[0])})" if weighted else "") for u, v, *e in edges]
        return "\n".join(lines)
    # friendship: a social setting per task
    people = joined(nodes)
    if task == "topological_sort":
        facts = " ".join(f"{u} must arrive before {v}." for u, v in edges)
        return f"At a club meeting, some members must arrive before others. The members are {people}. {facts}"
    if task == "max_flow":
        facts = " ".join(
            f"{u} can pass at most {number_text(c)} letter{'' if c == 1 else 's'} a day to {v}." for u, v, c in edges
        )
        return f"In an office, letters are handed from person to person. The people are {people}. {facts}"
    if weighted:
        facts = " ".join(
            f"{u} and {v} are friends and live {number_text(w)} mile{'' if w == 1 else 's'} apart."
            for u, v, w in edges
        )
    else:
        facts = " ".join(f"{u} and {v} are friends." for u, v in edges)
    return f"In a social network, the people are {people}. {facts}"


def question(encoding: str, task: str, source: str | None, target: str | None) -> str:
    """The question and the answer format asked for."""
    friends = encoding == "friendship"
    s, t = (mention(encoding, source), mention(encoding, target)) if source is not None else (None, None)
    if task == "connectivity":
        ask = f"Can {s} reach {t} through a chain of friends?" if friends else f"Is there a path between {s} and {t}?"
        return f'{ask} End your answer with "The answer is yes." or "The answer is no."'
    if task == "shortest_path":
        ask = (
            f"Which chain of friends from {s} to {t} covers the fewest miles in total?"
            if friends
            else f"What is the shortest path from {s} to {t}, the one whose edge weights have the least sum?"
        )
        return f'{ask} End your answer with "The answer is" followed by the path, its nodes joined by " -> ".'
    if task == "topological_sort":
        ask = (
            "In what order can all members arrive, so that everyone arrives after the members they must follow?"
            if friends
            else "Give a topological order of the graph: all nodes, each edge going from an earlier node to a later one."
        )
        listed = "names" if friends else "nodes"
        return f'{ask} End your answer with "The answer is" followed by the {listed}, separated by commas.'
    ask = (
        f"How many letters a day can {s} get to {t} at most, if they may be passed on through others?"
        if friends
        else f"What is the maximum flow from {s} to {t}?"
    )
    return f'{ask} End your answer with "The answer is" followed by the number.'


def path_text(path: list[str]) -> str:
    """A path as the rationale and gold answer write it: "0 -> 3 -> 4"."""
    return " -> ".join(path)
