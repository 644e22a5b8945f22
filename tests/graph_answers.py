"""The graph-answer set: answers to graph problems phrased many ways, each with the reading the scorer must get.

`tests/data/graph_answers.jsonl` holds one row per answer: `graph` (the problem's `graph` JSON), `text` (the
answer), `answer` (what must be read: "yes"/"no", a list of node names, a number, or null for unparseable),
`correct` (the verdict), `case` (the phrasing, named) and `origin` (which problem). The rows come from two sources:

- templates applied to generated problems of every task (every semantic encoding, float weights, and letter names
  past Z such as "AM" and "AN" on 27-40-node expert graphs), to the gold answer and to a wrong one, with the
  reading each template states (the template knows what it wrote; the scorer is not asked);
- hand-written rows on small graphs for the cases of issue 30 (B5, P6) and their siblings.

python -m tests.graph_answers --write     # rebuild the file (a test checks that it is up to date)
python -m tests.graph_answers             # score the set and print the counts per task and per case
python -m tests.graph_answers --results tests/data/graph_answers_results.json            # record the counts
python -m tests.graph_answers --scorer-from DIR --label NAME --results ...                # another scorer's

`--scorer-from DIR` scores with the `hf_memory` package in DIR, for instance the scorer before issue 30:
`mkdir /tmp/old && git archive fb3694e hf_memory | tar -x -C /tmp/old`. A test checks that the committed results'
"current" entry is what the scorer of this checkout gets on this data file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from decimal import Decimal
from fractions import Fraction


PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "graph_answers.jsonl")
RESULTS = os.path.join(os.path.dirname(PATH), "graph_answers_results.json")
SEED = 30  # issue 30
ENCODINGS = ("edge_list", "incident", "expert", "friendship")
# (task, pattern, variant, num_nodes): one problem each (connectivity: one "yes" and one "no"); the 39-40-node
# expert graphs name nodes up to "AN", past the letters: "AM" and "AN" are also English words
CELLS = [
    *[("connectivity", "semantic", encoding, None) for encoding in ENCODINGS],
    *[("shortest_path", "semantic", encoding, None) for encoding in ENCODINGS],
    ("shortest_path", "numeric", "float", None),
    ("shortest_path", "semantic", "expert", (39, 40)),
    *[("topological_sort", "semantic", encoding, None) for encoding in ENCODINGS],
    ("topological_sort", "semantic", "expert", (39, 40)),
    *[("max_flow", "semantic", encoding, None) for encoding in ENCODINGS],
    ("max_flow", "numeric", "float", None),
]


def _decimal(value: Fraction) -> str:
    """A tenths-exact number as a model would write it: 7, 17.3."""
    if value.denominator == 1:
        return str(value.numerator)
    text = str(Decimal(value.numerator) / Decimal(value.denominator))
    return text.rstrip("0").rstrip(".") if "." in text else text


def _number(value: Fraction) -> float | int:
    return int(value) if value.denominator == 1 else float(value)


def _weights(record: dict) -> dict:
    out = {}
    for u, v, *weight in record["edges"]:
        w = (
            Fraction(repr(weight[0]))
            if weight and isinstance(weight[0], float)
            else Fraction(weight[0] if weight else 1)
        )
        out[(u, v)] = w
        if not record["directed"]:
            out[(v, u)] = w
    return out


def _mention(record: dict, node: str) -> str:
    return node if len(node) > 2 and node[0].isupper() and node[1:].islower() else f"node {node}"


def _connectivity_rows(record: dict, gold: str, target: str) -> list[tuple[str, str | None, bool, str]]:
    """(text, answer, correct, case) rows for one connectivity problem."""
    rows = []
    s, t = _mention(record, record["source"]), _mention(record, record["target"])
    for word, correct in ((gold, True), ("no" if gold == "yes" else "yes", False)):
        other = "no" if word == "yes" else "yes"
        rows += [
            (f"The answer is {word}.", word, correct, "format"),
            (f"The answer is {word.upper()}", word, correct, "format: capitals"),
            (f"{word.capitalize()}.", word, correct, "bare word"),
            (f"The answer is **{word}**.", word, correct, "format: markdown"),
            (f'The answer is "{word}".', word, correct, "format: quoted"),
            (f"Answer: {word}", word, correct, "Answer: colon"),
            (f"The answer is {word}. This answer is correct: I checked every edge.", word, correct, "closing remark"),
            (f"Let me think about {s} and {t}. The answer is {word}.", word, correct, "rationale first"),
            (f"The answer is definitely not {other}; it is {word}.", word, correct, "P6: negated word first"),
            (f"definitely not {other}; it is {word}.", word, correct, "P6: negated word first"),
            (f"The answer is not {other}, it is {word}.", word, correct, "negated word first"),
            (f"Yes or no? The answer is {word}.", word, correct, "question echoed"),
            (
                f'End your answer with "The answer is yes." or "The answer is no." The answer is {word}.',
                word,
                correct,
                "instruction echoed",
            ),
            (f"No doubt about it: the answer is {word}.", word, correct, "determiner no"),
        ]
        if word == "yes":
            rows += [
                (f"Yes, {s} can reach {t}.", "yes", correct, "word first, prose"),
                (f"No shorter route matters here, but yes, {s} reaches {t}.", "yes", correct, "determiner no"),
            ]
        else:
            rows += [
                (f"There is no path between {s} and {t}.", "no", correct, "no path"),
                (f"No, {s} cannot reach {t}.", "no", correct, "word first, prose"),
                (f"No\nEvery path from {s} stays in its group.", "no", correct, "no on its own line"),
                (f"The answer is no because {t} is not reachable from {s}.", "no", correct, "no because"),
            ]
    rows += [
        (target, gold, True, "gold target"),
        (f"Is there a path between {s} and {t}? I cannot tell.", None, False, "unparseable: no answer"),
        ('End your answer with "The answer is yes." or "The answer is no."', None, False, "unparseable: echo"),
        (f"The answer is not {gold}.", None, False, "unparseable: only a negation"),
    ]
    if gold == "yes":
        rows.append((f"There is a path from {s} to {t}. No shorter one exists.", None, False, "P6: no yes or no"))
    return rows


def _chain(nodes: list[str], joint: str = " -> ") -> str:
    return joint.join(nodes)


def _path_rows(record: dict, gold: list[str], target: str) -> list[tuple[str, list[str] | None, bool, str]]:
    weights = _weights(record)
    wrong = gold[::-1]  # starts at the target: always wrong
    rows = []
    for path, correct in ((gold, True), (wrong, False)):
        total = _decimal(sum(weights[edge] for edge in zip(path, path[1:])))
        last = path[-1]
        steps = [weights[edge] for edge in zip(path, path[1:])]
        annotated = path[0] + "".join(f" -> {v} (weight {_decimal(w)})" for v, w in zip(path[1:], steps))
        edges = ", ".join(f"{u} -> {v}" for u, v in zip(path, path[1:]))
        spoken = (
            f"First {path[0]}, then {', then '.join(path[1:-1])}, and finally {last}."
            if len(path) > 2
            else f"First {path[0]}, and finally {last}."
        )
        rows += [
            (f"The answer is {_chain(path)}.", path, correct, "format"),
            (f"The answer is {_chain(path, '->')}", path, correct, "format: no spaces"),
            (f"The answer is {_chain(path, ' → ')}.", path, correct, "format: unicode arrows"),
            (f"The answer is {_chain(path, ', ')}.", path, correct, "commas"),
            (f"The answer is [{_chain(path, ', ')}].", path, correct, "brackets"),
            (f"The answer is {_chain(path).lower()}.", path, correct, "lower case"),
            (f"The answer is {_chain(path)}, a total weight of {total}.", path, correct, "B5: prose after the chain"),
            (f"The answer is {_chain(path)}, and {last} is the target.", path, correct, "B5: prose after the chain"),
            (f"The answer is {_chain(path)}, I think.", path, correct, "B5: prose after the chain"),
            (f"The answer is {_chain(path)} (total weight {total}).", path, correct, "note after the chain"),
            (f"The answer is {annotated}.", path, correct, "P6: weights in brackets"),
            (annotated, path, correct, "P6: weights in brackets"),
            (f"The answer is {edges}.", path, correct, "edges one by one"),
            (spoken, path, correct, "spoken list"),
            (f"The answer is {_chain(path)}. This answer is optimal.", path, correct, "closing remark"),
            (
                "\n".join(
                    f"{i}. {u} -> {v} (weight {_decimal(w)})"
                    for i, (u, v, w) in enumerate(zip(path, path[1:], steps), 1)
                ),
                path,
                correct,
                "numbered lines",
            ),  # fmt: skip
        ]
        if all(len(node) <= 2 for node in path):
            named = " -> ".join(f"node {node}" for node in path)
            rows.append((f"The answer is {named}.", path, correct, "node words"))
    rows += [
        (f"The shortest path is {_chain(gold)}, not {_chain(wrong)}.", gold, True, "negated chain last"),
        (f"The answer is {_chain(gold)}, not {_chain(wrong)}.", gold, True, "negated chain last"),
        (target, gold, True, "gold target"),
        (
            f"The shortest path from {_mention(record, gold[0])} to {_mention(record, gold[-1])} is the one with the "
            "least total weight.",
            None,
            False,
            "unparseable: question restated",
        ),
        ("I cannot tell.", None, False, "unparseable: no answer"),
    ]
    return rows


def _order_rows(record: dict, gold: list[str], target: str) -> list[tuple[str, list[str] | None, bool, str]]:
    wrong = gold[::-1]  # every edge points backwards
    rows = []
    for order, correct in ((gold, True), (wrong, False)):
        last = order[-1]
        spoken = (
            f"{order[0]} first, then {', then '.join(order[1:-1])}, and finally {last}." if len(order) > 2 else None
        )
        rows += [
            (f"The answer is {_chain(order, ', ')}.", order, correct, "format"),
            (f"The answer is: {_chain(order, ', ')}", order, correct, "format: colon"),
            (f"The answer is {_chain(order)}.", order, correct, "arrows"),
            (f"The answer is [{_chain(order, ', ')}].", order, correct, "brackets"),
            (f"The answer is {_chain(order[:-1], ', ')} and {last}.", order, correct, "and before the last"),
            (f"The answer is {_chain(order, ', ')}, a complete order.", order, correct, "B5: prose after the list"),
            (
                f"The answer is {_chain(order, ', ')}, and {last} comes last.",
                order,
                correct,
                "B5: prose after the list",
            ),
            (f"The answer is {_chain(order, ', ')}, I believe.", order, correct, "B5: prose after the list"),
            (
                f"The answer is {_chain(order, ', ')}. This answer is right: {order[0]} goes first.",
                order,
                correct,
                "closing remark",
            ),  # fmt: skip
            (f"The answer is {', followed by '.join(order)}.", order, correct, "followed by"),
            ("\n".join(f"{i}. {node}" for i, node in enumerate(order, 1)), order, correct, "numbered lines"),
            ("The order:\n" + "\n".join(f"* {node}" for node in order), order, correct, "bulleted lines"),
        ]
        if spoken:
            rows.append((spoken, order, correct, "spoken list"))
    rows += [
        (f"The answer is {_chain(gold[1:], ', ')}, a complete order.", gold[1:], False, "B5: a node missing"),
        (target, gold, True, "gold target"),
        ("Everyone arrives at once.", None, False, "unparseable: no answer"),
    ]
    return rows


def _flow_rows(record: dict, gold: Fraction, target: str) -> list[tuple[str, float | int | None, bool, str]]:
    s, t = _mention(record, record["source"]), _mention(record, record["target"])
    step = Fraction(1, 10) if gold.denominator != 1 else Fraction(1)
    rows = []
    for value, correct in ((gold, True), (gold + 1, False)):
        v = _decimal(value)
        part = step if value > step else value / 2
        a, b = _decimal(part), _decimal(value - part)
        rows += [
            (f"The answer is {v}.", _number(value), correct, "format"),
            (f"The answer is {v} units.", _number(value), correct, "units"),
            (f"The maximum flow is {v}.", _number(value), correct, "stated"),
            (f"Max flow = {v}", _number(value), correct, "equals"),
            (f"Answer: {v}", _number(value), correct, "Answer: colon"),
            (f"The answer is: from {s} to {t} the maximum flow is {v}", _number(value), correct, "P6: node numbers"),
            (f"From {s} to {t} the maximum flow is {v}.", _number(value), correct, "P6: node numbers"),
            (f"The answer is {a} + {b} = {v}.", _number(value), correct, "P6: a sum"),
            (f"{a} + {b} = {v}", _number(value), correct, "P6: a sum"),
            (f"The answer is {v}, not {_decimal(value + 2)}.", _number(value), correct, "negated number last"),
            (f"The answer is {v}. I am confident this answer is correct.", _number(value), correct, "closing remark"),
        ]
    rows += [
        (target, _number(gold), True, "gold target"),
        (
            f"The answer is {_decimal(gold - step if gold > step else gold / 2)} + {_decimal(step if gold > step else gold / 2)}",
            None,
            False,
            "unparseable: a sum without its result",
        ),  # fmt: skip
        ("I cannot tell.", None, False, "unparseable: no answer"),
    ]
    return rows


def _generated_rows() -> list[dict]:
    from hf_memory.graph_reasoning import generate_graph_problems

    rows = []
    for task, pattern, variant, num_nodes in CELLS:
        problems = generate_graph_problems(task, pattern, variant, n=20, seed=SEED, num_nodes=num_nodes)
        if task == "connectivity":  # one "yes" and one "no" item
            chosen = [problems["answer"].index("yes"), problems["answer"].index("no")]
        elif task == "shortest_path":  # a path with a node between source and target, where there is one
            chosen = [next((i for i, a in enumerate(problems["answer"]) if a.count("->") >= 2), 0)]
        else:
            chosen = [0]
        for index in chosen:
            graph, answer, target = problems[index]["graph"], problems[index]["answer"], problems[index]["target"]
            record = json.loads(graph)
            if task == "connectivity":
                made = _connectivity_rows(record, answer, target)
            elif task == "shortest_path":
                made = _path_rows(record, answer.split(" -> "), target)
            elif task == "topological_sort":
                made = _order_rows(record, answer.split(", "), target)
            else:
                made = _flow_rows(record, Fraction(answer), target)
            size = f", num_nodes={num_nodes}" if num_nodes else ""
            origin = f"generate_graph_problems({task!r}, {pattern!r}, {variant!r}, n=20, seed={SEED}{size})[{index}]"
            for text, expected, correct, case in made:
                rows.append(
                    {
                        "graph": graph,
                        "text": text,
                        "answer": expected,
                        "correct": correct,
                        "case": case,
                        "origin": origin,
                    }
                )
    return rows


def _graph(
    task: str, nodes: list[str], edges: list[list], source: str | None = None, target: str | None = None
) -> str:
    record = {"task": task, "directed": task in ("topological_sort", "max_flow"), "nodes": nodes, "edges": edges}
    if source is not None:
        record["source"], record["target"] = source, target
    return json.dumps(record)


# Hand-written rows: (graph, text, answer, correct, case)
LETTERS = list("ABCDE")
PATH_BCD = _graph(
    "shortest_path", LETTERS, [["A", "B", 1], ["B", "C", 1], ["C", "D", 2], ["B", "D", 4], ["D", "E", 1]], "B", "D"
)
PATH_BEA = _graph("shortest_path", LETTERS, [["A", "B", 5], ["B", "E", 1], ["E", "A", 1], ["C", "D", 1]], "B", "A")
ORDER_BCDA = _graph("topological_sort", LETTERS[:4], [["B", "C"], ["C", "D"], ["D", "A"]])
NINE = list("ABCDEFGHI")
PATH_TO_I = _graph("shortest_path", NINE, [["A", "H", 1], ["H", "I", 1], ["A", "I", 3], ["B", "C", 1]], "A", "I")
ORDER_NINE = _graph("topological_sort", NINE, [["A", "B"], ["H", "I"]])
CONNECTED = _graph("connectivity", ["0", "1", "2", "3"], [["0", "1"], ["1", "3"]], "0", "3")
APART = _graph("connectivity", ["0", "1", "2", "3"], [["0", "1"], ["1", "3"]], "0", "2")
PATH_023 = _graph(
    "shortest_path", ["0", "1", "2", "3"], [["0", "2", 4], ["2", "3", 1], ["0", "1", 3], ["1", "3", 3]], "0", "3"
)
FLOW_05 = _graph(
    "max_flow", ["0", "1", "2", "5"], [["0", "1", 3], ["1", "5", 3], ["0", "2", 4], ["2", "5", 5]], "0", "5"
)
FLOW_TENTHS = _graph(
    "max_flow", ["0", "1", "2", "3"], [["0", "1", 0.1], ["1", "3", 0.1], ["0", "2", 0.2], ["2", "3", 0.2]], "0", "3"
)
ORDER_NUMBERS = _graph("topological_sort", ["0", "1", "2", "3"], [["2", "0"], ["0", "1"], ["1", "3"]])
AN_AM = [*(chr(ord("A") + i) for i in range(26)), *(f"A{chr(ord('A') + i)}" for i in range(14))]  # A..Z, AA..AN
PATH_AN = _graph(
    "shortest_path", AN_AM, [["AL", "AM", 1], ["AM", "AN", 1], ["AL", "AN", 3], ["A", "B", 1]], "AL", "AN"
)

HAND = [
    # B5: the article "a" and the pronoun "I" are not node names
    (PATH_BCD, "The answer is B -> C -> D, a total weight of 3.", ["B", "C", "D"], True, "B5: issue example"),
    (PATH_BEA, "The answer is B -> E, a short path.", ["B", "E"], False, "B5: issue example"),
    (ORDER_BCDA, "The answer is B, C, D, a complete order.", ["B", "C", "D"], False, "B5: issue example"),
    (ORDER_BCDA, "The answer is B, C, D, A.", ["B", "C", "D", "A"], True, "B5: the node A in a list"),
    (ORDER_BCDA, "The answer is b, c, d, a.", ["B", "C", "D", "A"], True, "B5: the node A in a list"),
    (PATH_BCD, "The answer is B -> C -> D -- a total weight of 3.", ["B", "C", "D"], True, "B5: dash before prose"),
    (PATH_BCD, "The answer is B -> C -> D — a total weight of 3.", ["B", "C", "D"], True, "B5: dash before prose"),
    (PATH_BCD, "a -> b -> d is longer; the answer is b -> c -> d.", ["B", "C", "D"], True, "B5: the node a by arrows"),
    (PATH_BEA, "The answer is B -> E -> A, a detour of weight 2.", ["B", "E", "A"], True, "B5: the node A by arrows"),
    (PATH_BEA, "The answer is node B, node E, node a.", ["B", "E", "A"], True, "B5: the node a after 'node'"),
    (PATH_TO_I, "The answer is A -> H -> I, I think.", ["A", "H", "I"], True, "B5: the pronoun I"),
    (PATH_TO_I, "The answer is A -> H -> I. I'm sure.", ["A", "H", "I"], True, "B5: the pronoun I"),
    (PATH_TO_I, "I think the answer is A -> I.", ["A", "I"], False, "B5: the pronoun I"),
    (ORDER_NINE, "The answer is A, B, C, D, E, F, G, H, I, I'm sure.", NINE, True, "B5: the pronoun I"),
    (ORDER_NINE, "The answer is A, B, C, D, E, F, G, H, I, I believe.", NINE, True, "B5: the pronoun I"),
    (ORDER_NINE, "The answer is A, B, C, D, E, F, G, H, I.", NINE, True, "B5: the node I"),
    (PATH_AN, "The answer is AL -> AM -> AN, an optimal path.", ["AL", "AM", "AN"], True, "B5: the article an"),
    (PATH_AN, "The answer is AL -> AN, an optimal path.", ["AL", "AN"], False, "B5: the article an"),
    (PATH_AN, "The answer is AL, AM, AN, am I right?", ["AL", "AM", "AN"], True, "B5: the verb am"),
    # siblings: a number that starts prose after a list, a repeated last node
    (PATH_023, "The answer is 0 -> 2 -> 3, 2 edges in all.", ["0", "2", "3"], True, "B5 sibling: count after chain"),
    (PATH_023, "The answer is 0 -> 2 -> 3, and 3 is the target.", ["0", "2", "3"], True, "B5 sibling: repeat"),
    (ORDER_NUMBERS, "The answer is 2, 0, 1, 3, and 3 comes last.", ["2", "0", "1", "3"], True, "B5 sibling: repeat"),
    (ORDER_NUMBERS, "The answer is 2, 0, 1, 1, 3.", ["2", "0", "1", "1", "3"], False, "a node twice"),
    # P6: answers outside the requested format
    (CONNECTED, "there is a path 0 -> 1 -> 3. No shorter one exists.", None, False, "P6: issue example"),
    (APART, "definitely not yes; it is no.", "no", True, "P6: issue example"),
    (APART, "The answer is definitely not yes; it is no.", "no", True, "P6: issue example"),
    (PATH_023, "0 -> 2 (weight 4) -> 3 (weight 1)", ["0", "2", "3"], True, "P6: issue example"),
    (PATH_023, "The answer is 0 -> 2 (weight 4) -> 3 (weight 1).", ["0", "2", "3"], True, "P6: issue example"),
    (FLOW_05, "from node 0 to node 5 the maximum flow is 7", 7, True, "P6: issue example"),
    (FLOW_05, "The answer is: from node 0 to node 5 the maximum flow is 7", 7, True, "P6: issue example"),
    (FLOW_05, "The answer is from 0 to 5, 7 units.", 7, True, "P6: node numbers"),
    (FLOW_05, "3 + 4 = 7", 7, True, "P6: issue example"),
    (FLOW_05, "The answer is 3 + 4 = 7.", 7, True, "P6: issue example"),
    (FLOW_05, "The answer is 7 = 3 + 4.", 7, True, "P6: a sum"),
    (FLOW_05, "The answer is 3 + 4", None, False, "P6: a sum without its result"),
    (FLOW_05, "The answer is 5-7 units.", None, False, "P6: a range"),
    (FLOW_05, "In total 7, along 0 -> 1 -> 5 and 0 -> 2 -> 5.", 7, True, "P6 sibling: path nodes after the number"),
    (FLOW_05, "Send 3 along 0 -> 1 -> 5 and 4 along 0 -> 2 -> 5: 7 in all.", 7, True, "stated after a colon"),
    (FLOW_05, "The maximum flow is not 5 but 7.", 7, True, "negated number first"),
    (FLOW_05, "The answer is seven.", None, False, "unparseable: a number word"),
    (PATH_023, "The answer is 0 -> 1, 1 -> 3.", ["0", "1", "3"], False, "edges one by one"),
    (PATH_023, "0 -> 2 (4), 2 -> 3 (1)", ["0", "2", "3"], True, "edges one by one"),
    (PATH_023, "Go from node 0 to node 2, then to node 3.", None, False, "unparseable: steps in words"),
    (PATH_023, "The answer is 0 -> 2 -> 3, since 5 < 6.", ["0", "2", "3"], True, "a comparison after the chain"),
    (PATH_023, "0 -> 2 -> 3 is shorter: 5 < 6.", ["0", "2", "3"], True, "a comparison after the chain"),
    (ORDER_BCDA, "The answer is B > C > D > A.", ["B"], False, "> is no joint: one name read"),
    (PATH_023, "The answer is not 0 -> 1 -> 3.", None, False, "unparseable: only a negation"),
    (ORDER_NUMBERS, "2 first, then 0, then 1, and finally 3.", ["2", "0", "1", "3"], True, "spoken list"),
    (CONNECTED, "There is a path: 0 -> 1 -> 3. The answer is yes.", "yes", True, "format"),
    (CONNECTED, "Yes and no: yes.", "yes", True, "both words"),
    (CONNECTED, "Yep.", None, False, "unparseable: slang"),
    (APART, "No\nNode 0 and node 2 are in different groups.", "no", True, "no on its own line"),
    (APART, "no Node 2 is not reachable from node 0.", "no", True, "no before a new sentence"),
    (APART, "No Node can reach node 2, so the answer is no.", "no", True, "determiner no"),
    (APART, "no is the answer: node 2 is apart.", "no", True, "no before a function word"),
    (APART, "no, I checked: no edge reaches node 2.", "no", True, "determiner no"),
    (APART, "No path joins node 0 and node 2.", "no", True, "no path"),
    (APART, "They are not connected.", None, False, "unparseable: no yes or no"),
    # B6: exact decimals
    (FLOW_TENTHS, "The answer is 0.3.", 0.3, True, "B6: tenths add exactly"),
    (FLOW_TENTHS, "The answer is 0.30000000000000004.", 0.30000000000000004, False, "B6: tenths add exactly"),
]


def build_rows() -> list[dict]:
    """Every row of the answer set, generated and hand-written."""
    rows = _generated_rows()
    for graph, text, answer, correct, case in HAND:
        rows.append(
            {"graph": graph, "text": text, "answer": answer, "correct": correct, "case": case, "origin": "hand"}
        )
    return rows


def read_rows(path: str = PATH) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check(rows: list[dict], flow_tolerance: float = 0.0) -> dict:
    """Score every row; per task and per case, how many were read and judged as the row says.

    `flow_tolerance` is 0 so that a number is read exactly (the rows' wrong flows are 1 away, so any tolerance
    below 1 gives the same verdicts)."""
    from hf_memory.graph_reasoning import score_graph_answer

    outcome = {"rows": len(rows), "agree": 0, "per_task": Counter(), "per_task_agree": Counter(), "failures": []}
    per_case, per_case_agree = Counter(), Counter()
    for row in rows:
        result = score_graph_answer(row["text"], row["graph"], flow_tolerance=flow_tolerance)
        expected = row["answer"]
        same = result["answer"] == expected or (
            isinstance(expected, (int, float)) and result["answer"] is not None and float(expected) == result["answer"]
        )
        agree = same and result["correct"] == row["correct"] and result["parsed"] == (expected is not None)
        task = result["task"]
        outcome["per_task"][task] += 1
        per_case[row["case"]] += 1
        if agree:
            outcome["agree"] += 1
            outcome["per_task_agree"][task] += 1
            per_case_agree[row["case"]] += 1
        else:
            outcome["failures"].append({**row, "got": result["answer"], "got_correct": result["correct"]})
    outcome["per_case"] = {case: (per_case_agree[case], count) for case, count in sorted(per_case.items())}
    return outcome


def summary(outcome: dict, path: str = PATH) -> dict:
    """The counts of `check` as JSON, with the data file's SHA-256 (the counts hold for that file only)."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {
        "data": os.path.basename(path),
        "data_sha256": digest,
        "rows": outcome["rows"],
        "agree": outcome["agree"],
        "per_task": {task: [outcome["per_task_agree"][task], count] for task, count in outcome["per_task"].items()},
        "per_case": {case: list(counts) for case, counts in outcome["per_case"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rebuild {os.path.relpath(PATH)}")
    parser.add_argument("--failures", action="store_true", help="print every row read otherwise")
    parser.add_argument("--scorer-from", metavar="DIR", help="score with the hf_memory package in DIR")
    parser.add_argument("--results", metavar="FILE", help="record the counts in this JSON file, under --label")
    parser.add_argument("--label", default="current", help="the name of the scorer in --results (default: current)")
    args = parser.parse_args()
    if args.scorer_from:
        if not os.path.isdir(os.path.join(args.scorer_from, "hf_memory")):
            parser.error(f"--scorer-from {args.scorer_from}: no hf_memory package in that folder")
        sys.path.insert(0, os.path.abspath(args.scorer_from))
    if args.write:
        rows = build_rows()
        with open(PATH, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} rows to {PATH}")
        return
    outcome = check(read_rows())
    import hf_memory

    print(f"scorer: {os.path.dirname(hf_memory.__file__)}")
    print(f"{outcome['agree']} of {outcome['rows']} rows read and judged as expected")
    if args.results:
        recorded = {}
        if os.path.exists(args.results):
            with open(args.results, encoding="utf-8") as f:
                recorded = json.load(f)
        recorded[args.label] = summary(outcome)
        with open(args.results, "w", encoding="utf-8") as f:
            json.dump(recorded, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"recorded under {args.label!r} in {args.results}")
    for task, count in outcome["per_task"].items():
        print(f"  {task}: {outcome['per_task_agree'][task]} of {count}")
    for case, (agree, count) in outcome["per_case"].items():
        print(f"  {agree:4d} / {count:4d}  {case}")
    if args.failures:
        for failure in outcome["failures"]:
            print(json.dumps({k: failure[k] for k in ("text", "answer", "correct", "got", "got_correct")}))


if __name__ == "__main__":
    main()
