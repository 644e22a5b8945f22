"""Reading the answer out of a model's free text: yes/no, a chain of node names, or a number.

Where the answer is read: the prompts ask for "The answer is ...", so the text after each "answer is" (up to the
next one) is tried from the last to the first, and the first of these parts that holds an answer of the task's kind
is taken; a later "this answer is right" therefore does not hide the answer, and "the answer isn't yes" or "the
answer is not yes" is no "answer is". When no part holds one (or the text has no "answer is"), the whole text is
read by looser rules. docs/graph_reasoning.md ("How an answer is read") states every rule with examples; the
repository's answer set (tests/data/graph_answers.jsonl) holds several hundred phrasings with the reading each must
get.
"""

from __future__ import annotations

import re
from fractions import Fraction


# "answer is", but not "answer isn't" / "answer is not" (\b after "is" already rules out "isn't")
_ANSWER_IS = re.compile(r"\banswer\s+is\b(?!n['’]t|\s+not\b)\s*:?", re.IGNORECASE)
# A word a negation rules out: "not yes", "isn't no", "never 0 -> 2"
_NEGATION = re.compile(r"(?:\bnot|\bnever|n['’]t)\s*$", re.IGNORECASE)

# --- yes / no
# the question's "yes or no" echoed, including the prompt's own 'with "The answer is yes." or "The answer is no."'
_YES_OR_NO = re.compile(r"\byes\b\W{0,3}\s*(?:or|/)\s*\W{0,3}(?:the\s+answer\s+is\s+)?no\b", re.IGNORECASE)
_NEGATED_YES_NO = re.compile(r"(?:\bnot|\bnever|n['’]t)\s+\W?(?:yes|no)\b", re.IGNORECASE)
# Words "no" may stand before and still be the answer: path words ("no path") and words no noun phrase starts with
# (conjunctions, pronouns, articles, verbs, prepositions: "no because ...", "no it isn't", "no an easy one"). Before
# any other word on its line it is a determiner ("No shorter one exists", "no doubt") and says nothing about the
# question, except a lower-case "no" before a capitalised word, which starts a new sentence ("no Node 2 is apart").
_NO_ANSWER_BEFORE = (
    "path|paths|route|routes|connection|connections|chain|chains|link|way|"
    "because|since|so|but|and|or|as|there|it|they|i|we|you|he|she|the|this|that|a|an|"
    "is|are|was|were|am|in|on|at|of|to|for|with|from|yes|no|not"
)
_ANSWER_WORD = re.compile(
    rf"\b(yes)\b|\b(no)\b(?![ \t]+(?!(?:{_NO_ANSWER_BEFORE})\b)\w)|\b(?-i:(no))\b(?=[ \t]+(?-i:[A-Z]))", re.IGNORECASE
)

# --- node chains
# Joints between node names: arrows, dashes (also used as prose punctuation) and list words.
_ARROWS = ("->", "→", "⟶", "=>", "-->")  # not ">": rationales compare weights with it ("5 > 4")
_SEPARATORS = r"-->|->|→|⟶|=>|--|—|–|-|,|;|\band\b|\bthen\b|\bfollowed\s+by\b"
_LIST_JOINTS = (",", ";", "and", "then", "followed by")
_JOINT_RANK = {"list": 0, "dash": 1, "arrow": 2}  # the strongest joint between two names decides
# Words of a spoken list that neither join nor end it: "2 first, then 0, then 1, and finally 3"
_FILLERS = r"\b(?:first|firstly|next|finally|lastly)\b"
# Node names that are also ordinary English words (articles, pronouns, short function words): such a name followed by
# another word is read as the word ("B -> D, a total of 3"), unless an arrow or "node" ties it to the chain.
_ORDINARY_WORDS = frozenset(
    "a an i am as at be by do go he if in is it me my no of oh ok on or so to up us we ah ha hi the for via yes not "
    "all any its his her our you they them this that with from into than was are has had can may".split()
)

# --- numbers: thousands separators only in groups of three ("1,500"), so that "5,6" is 5 and not 56
_NUMBER_TEXT = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|-?\d+(?:\.\d+)?(?!\d)"
_NUMBER = re.compile(rf"(?:{_NUMBER_TEXT})")
# A number with the arithmetic around it ("3 + 4 = 7"): read as one item, whose value is its last lone number side
_EXPRESSION = re.compile(rf"(?<![\w.])(?:{_NUMBER_TEXT})(?:\s*[-+−*×/=]\s*(?:{_NUMBER_TEXT}))*")
_STATED = re.compile(r"(?:\bis|\bequals|[:=])\s*$", re.IGNORECASE)
_NODE_WORD = re.compile(r"\b(?:nodes?|person)\s*$", re.IGNORECASE)
_ARROW_BEFORE = re.compile(r"(?:-->|->|→|⟶|=>)\s*$")
_ARROW_AFTER = re.compile(r"\s*(?:-->|->|→|⟶|=>)")


def answer_segments(text: str) -> list[str]:
    """The text after each "answer is", up to the next one, the last first; empty when there is none."""
    found = list(_ANSWER_IS.finditer(text))
    ends = [match.start() for match in found[1:]] + [len(text)]
    return [text[match.end() : end] for match, end in zip(found, ends)][::-1]


def _first_found(text: str, in_segment, in_text):
    """The answer of the last "answer is" part that holds one; else what the whole-text rule finds (or None)."""
    for segment in answer_segments(text):
        answer = in_segment(segment)
        if answer is not None:
            return answer
    return in_text(text)


def _negated(text: str, start: int) -> bool:
    """Whether a negation ("not", "never", "-n't") stands right before position `start`, a "node" word aside."""
    window = _NODE_WORD.sub("", text[max(0, start - 40) : start])
    return _NEGATION.search(window) is not None


# ---------------------------------------------------------------------------------------------------------------
# yes / no


def parse_yes_no(text: str) -> str | None:
    """ "yes", "no" or None. The words count as the answer unless echoed from the question ("yes or no"), ruled out
    by a negation ("not yes", "isn't no"), or, for "no", used as a determiner ("no shorter path")."""
    text = _YES_OR_NO.sub(" ", text)
    text = _NEGATED_YES_NO.sub(" ", text)

    def words(part: str) -> list[re.Match]:
        return list(_ANSWER_WORD.finditer(part))

    def in_segment(segment: str):
        found = words(segment)
        return found[0].group().lower() if found else None

    def in_text(text: str):
        found = words(text)
        kinds = {match.group().lower() for match in found}
        if len(kinds) == 1:
            return kinds.pop()
        if found and not re.search(r"\w", text[: found[0].start()]):  # both: the one that opens the text decides
            return found[0].group().lower()
        return None

    return _first_found(text, in_segment, in_text)


# ---------------------------------------------------------------------------------------------------------------
# chains of node names


def _token_pattern(nodes: list[str]) -> re.Pattern:
    names = "|".join(re.escape(name) for name in sorted(nodes, key=len, reverse=True))
    # the marker of a numbered or bulleted line ("1. ", "2) ", "* ") is a list joint: one name per line is a list
    return re.compile(
        r"(?P<marker>(?m:^)[ \t]*(?:\d{1,3}[.)]|[*•])(?=[ \t]))"
        rf"|(?P<node>(?<![\w.])(?:{names})(?!\w|\.\d))"
        rf"|(?P<note>\([^()]*\)|\[[^\[\]]*\])"
        rf"|(?P<sep>{_SEPARATORS})"
        r"|(?P<skip>\bnodes?\b|\bperson\b)"
        rf"|(?P<filler>{_FILLERS})"
        r"|(?P<other>\w+(?:['’]\w+)*|\S)",
        re.IGNORECASE,
    )


def _tokens(text: str, pattern: re.Pattern, offset: int = 0) -> list[tuple[str, str, int, int]]:
    """(kind, text, start, end) per token. A line's number or bullet becomes a list joint. A bracketed note right
    after a node name and before a joint ("0 -> 2 (weight 4) -> 3") is dropped, so the chain goes on; any other
    bracket is read as text."""
    found = [
        ("sep", ",", m.start() + offset, m.end() + offset)
        if m.lastgroup == "marker"
        else (m.lastgroup, m.group(), m.start() + offset, m.end() + offset)
        for m in pattern.finditer(text)
    ]
    tokens = []
    for i, token in enumerate(found):
        if token[0] != "note":
            tokens.append(token)
            continue
        before = tokens[-1][0] if tokens else None
        after = found[i + 1][0] if i + 1 < len(found) else None
        if before == "node" and after == "sep":
            continue
        kind, note, start, end = token
        tokens.append(("other", note[0], start, start + 1))
        tokens += _tokens(note[1:-1], pattern, start + 1)
        tokens.append(("other", note[-1], end - 1, end))
    return tokens


def node_chains(text: str, nodes: list[str]) -> list[tuple[list[str], str | None]]:
    """Runs of node names joined only by joints (arrows, dashes, commas, "and", "then", spaces), with their kind:
    "arrow" (arrows or dashes), "list" (commas, semicolons, "and", "then") or None (one node, or names joined by
    spaces only).

    The words "node(s)" and "person" are skipped; any other word or sign ends a run. A run keeps one kind of joint:
    an arrow chain ends at a comma ("0 -> 1 -> 3, and 3 is the target" is 0 -> 1 -> 3). A node name that is also an
    ordinary word ("a", "I", "an") is read as the word when another word follows it ("B -> D, a total of 3"),
    unless it comes right after "node" or an arrow. A run opened by a negation ("not 0 -> 2") is left out.
    """
    lookup = {node.casefold(): node for node in nodes}

    def node_of(found: str) -> str:
        node = lookup.get(found.casefold())
        if node is None:  # re's case-insensitive matching pairs a few letters that casefold() does not (I, ı)
            node = next(name for name in nodes if re.fullmatch(re.escape(name), found, re.IGNORECASE))
        return node

    tokens = _tokens(text, _token_pattern(nodes))

    # word_follows[i]: whether token i is followed by a word ("a total", "3 is the target", "I'm"), not by a joint
    # or a sign. An ordinary-word name followed by a word counts as a word ("am I right"), and list words
    # ("first", "finally") are looked past: "A first, then C" is a list, "a first step" is prose.
    word_follows = [False] * len(tokens)
    for i in range(len(tokens) - 1, -1, -1):
        if re.match(r"['’]\w", text[tokens[i][3] : tokens[i][3] + 2]):
            word_follows[i] = True
        elif i + 1 < len(tokens):
            kind, found = tokens[i + 1][:2]
            if kind in ("other", "skip"):
                word_follows[i] = found[0].isalnum()
            elif kind == "filler" or (kind == "node" and node_of(found).casefold() in _ORDINARY_WORDS):
                word_follows[i] = word_follows[i + 1]

    def arrow_follows(i: int) -> bool:
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        return following is not None and following[0] == "sep" and _joint(following[1]) != "list"

    chains: list[tuple[list[str], str | None]] = []
    current: list[str] = []
    kind = joint = None  # the run's kind of joint; the strongest joint seen since its last node
    negated = joinable = after_node_word = False

    def close():
        nonlocal current, kind
        if current and not negated:
            chains.append((current, kind))
        current, kind = [], None

    for i, (token, found, start, _) in enumerate(tokens):
        if token == "node":
            node = node_of(found)
            if node.casefold() in _ORDINARY_WORDS and not after_node_word and joint != "arrow" and word_follows[i]:
                token = "other"  # the word, not the node
        if token == "node":
            joined = {"list": "list", "arrow": "arrow", "dash": "arrow"}.get(joint)
            if current and joinable and node == current[-1] and kind == "arrow" and joined == "list":
                if not arrow_follows(i):  # else edges one by one: "0 -> 1, 1 -> 3" goes on from 1
                    close()
                    current, negated = [node], False
            elif current and joinable and node == current[-1] and word_follows[i]:
                close()  # "2, 0, 1, 3, and 3 comes last": a new sentence about the last node
                current, negated = [node], False
            elif current and joinable and not (joined and kind and joined != kind):
                current.append(node)
                kind = kind or joined
            else:
                close()
                current, negated = [node], _negated(text, start)
            joinable, joint, after_node_word = True, None, False
        elif token == "sep":
            if current and joinable:
                found_joint = _joint(found)
                if joint is None or _JOINT_RANK[found_joint] > _JOINT_RANK[joint]:
                    joint = found_joint
        elif token == "skip":
            after_node_word = True
        elif token != "filler":
            close()
            joinable, joint, after_node_word = False, None, False
    close()
    return chains


def _joint(separator: str) -> str:
    """The kind of a joint: "arrow", "dash" or "list"."""
    word = " ".join(separator.lower().split())
    return "arrow" if word in _ARROWS else "list" if word in _LIST_JOINTS else "dash"


def parse_path(text: str, nodes: list[str]) -> list[str] | None:
    """A path: after "answer is", the first chain of two or more nodes; in the whole text, the last arrow chain (or
    else the last chain of two or more)."""

    def chains_in(part: str) -> list[tuple[list[str], str | None]]:
        return [(chain, kind) for chain, kind in node_chains(part, nodes) if len(chain) >= 2]

    def in_segment(segment: str):
        chains = chains_in(segment)
        return chains[0][0] if chains else None

    def in_text(text: str):
        chains = chains_in(text)
        with_arrows = [chain for chain, kind in chains if kind == "arrow"]
        return with_arrows[-1] if with_arrows else chains[-1][0] if chains else None

    return _first_found(text, in_segment, in_text)


def parse_order(text: str, nodes: list[str]) -> list[str] | None:
    """An order: the longest chain of nodes (the first of equal ones); after "answer is" it needs two nodes."""

    def longest(part: str, shortest: int):
        chains = [chain for chain, _ in node_chains(part, nodes)]
        best = max(chains, key=len) if chains else None
        return best if best is not None and len(best) >= shortest else None

    # after "answer is", a lone node name ("this answer is right: 2 comes first") is not taken for the order
    return _first_found(text, lambda segment: longest(segment, min(2, len(nodes))), lambda text: longest(text, 1))


# ---------------------------------------------------------------------------------------------------------------
# numbers


def _value(expression: str) -> Fraction | None:
    """The value an arithmetic item states: its last side that is one number ("3 + 4 = 7" is 7, "7 = 3 + 4" is 7);
    None when no side is ("3 + 4", "5-7"). Exact, as written in decimal."""
    for side in reversed(re.split(r"\s*=\s*", expression)):
        if _NUMBER.fullmatch(side):
            return Fraction(side.replace(",", ""))
    return None


def _node_reference_spans(text: str, source: str | None, target: str | None) -> list[tuple[int, int]]:
    """Where the question's own node numbers stand in "from 0 to 5" / "between 0 and 5"."""
    if source is None or target is None:
        return []
    end = r"(?![\w]|\.\d)"
    pattern = re.compile(
        rf"\b(?:from|between)\s+(?:node\s+)?({re.escape(source)}){end}\s+(?:to|and)\s+(?:node\s+)?"
        rf"({re.escape(target)}){end}",
        re.IGNORECASE,
    )
    return [match.span(group) for match in pattern.finditer(text) for group in (1, 2)]


def parse_number(text: str, source: str | None = None, target: str | None = None) -> Fraction | None:
    """A number, exactly as written: after "answer is", the first one; in the whole text, the last one stated after
    "is", "=", ":" or "equals" (else the last one). Node numbers ("node 5", "from 0 to 5" with the question's
    source and target), the nodes of a path ("0 -> 1 -> 5"), numbers after a negation ("not 5") and sums without
    their result ("3 + 4") are skipped."""

    def items(part: str) -> list[tuple[Fraction, bool]]:
        spans = _node_reference_spans(part, source, target)
        found = []
        for match in _EXPRESSION.finditer(part):
            start = match.start()
            window = part[max(0, start - 40) : start]
            in_path = _ARROW_BEFORE.search(window) or _ARROW_AFTER.match(part, match.end())
            if (
                in_path
                or _NODE_WORD.search(window)
                or _NEGATION.search(window)
                or any(a <= start < b for a, b in spans)
            ):
                continue
            value = _value(match.group())
            if value is not None:
                found.append((value, _STATED.search(window) is not None))
        return found

    def in_segment(segment: str):
        found = items(segment)
        return found[0][0] if found else None

    def in_text(text: str):
        found = items(text)
        stated = [value for value, is_stated in found if is_stated]
        return stated[-1] if stated else found[-1][0] if found else None

    return _first_found(text, in_segment, in_text)
