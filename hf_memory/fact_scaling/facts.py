"""A synthetic set of atomic facts (entity, attribute, value), deterministic from a seed, rendered through templates.

Entity names are built from a small shared set of syllables ("Zanoru Pelik"), so a tokenizer that splits them into
syllables gives every entity several tokens that many other entities share: a fact cannot live in one embedding row
per entity and has to be stored in the non-embedding weights, which is what the capacity laws are about.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .._utils import check_bool, check_integer, check_number
from .encoding import encode_facts


if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast


DEFAULT_SYLLABLES = tuple(c + v for c in "bdgklmnprstvz" for v in "aeiou")  # 65 consonant-vowel syllables
DEFAULT_ATTRIBUTES = {"birthplace": 64, "employer": 64, "hobby": 16, "pet": 16}
DEFAULT_TEMPLATES = ("The {attribute} of {entity} is",)
DEFAULT_INVERSE_TEMPLATES = ("{value} is the {attribute} of",)
FACT_SPLITS = ("train", "held_out")


@dataclass(frozen=True)
class Fact:
    """One atomic fact.

    Attributes:
        entity: The entity's name, e.g. "Zanoru Pelik".
        attribute: The attribute's name, e.g. "birthplace".
        value: The value, e.g. "Kavo".
        repetitions: How many times the fact appears in the training data (its frequency).
        rule: Whether the value follows a rule of the entity's name (rule attributes) rather than being random.
        held_out: Whether the fact is kept out of training (the held-out split).
        num_values: The size of the attribute's value set (log2 of it is the fact's information in bits).
    """

    entity: str
    attribute: str
    value: str
    repetitions: int = 1
    rule: bool = False
    held_out: bool = False
    num_values: int = 2


def _spelled(word: str, first: set[str], rest: set[str]) -> bool:
    """Whether WordPiece (longest match first) spells `word` without `<unk>`: a piece of `first` (word-initial
    tokens), then pieces of `rest` (the `##` tokens, without their `##`), as the tokenizer of `build_tokenizer`."""
    longest = max(len(w) for w in first | rest)
    start = 0
    while start < len(word):
        vocabulary = first if start == 0 else rest
        end = next((e for e in range(min(len(word), start + longest), start, -1) if word[start:e] in vocabulary), None)
        if end is None:
            return False
        start = end
    return True


def _two_spellings(syllables: Sequence[str], least: int, most: int) -> tuple[list[str], list[str]] | None:
    """Two spellings of one word of `least` to `most` syllables that start with different syllables, or None.

    The rule of a fact set reads the first syllable of the surname, so such a word would give one surname two
    rule values. A search over "what the shorter spelling still owes" (as in the Sardinas-Patterson test), each
    spelling at most `most` syllables long; none exists when no syllable is a prefix of another.
    """
    from collections import deque

    ordered = sorted(syllables)
    for a in ordered:
        for b in ordered:
            if a == b or not b.startswith(a):
                continue
            # spellings (A, B); `owed` is the text the shorter one must still produce; A is the shorter one now
            queue = deque([([a], [b], b[len(a) :], 0)])
            seen = set()
            while queue:
                spelling_a, spelling_b, owed, behind = queue.popleft()
                if (
                    not owed
                    and least <= min(len(spelling_a), len(spelling_b))
                    and max(len(spelling_a), len(spelling_b)) <= most
                ):
                    return spelling_a, spelling_b
                key = (owed, behind if owed else None, len(spelling_a), len(spelling_b))
                if key in seen:
                    continue
                seen.add(key)
                for side in (0, 1) if not owed else (behind,):
                    shorter = spelling_a if side == 0 else spelling_b
                    if len(shorter) >= most:
                        continue
                    for syllable in ordered:
                        if syllable.startswith(owed):
                            rest, next_behind = syllable[len(owed) :], 1 - side
                        elif owed.startswith(syllable):
                            rest, next_behind = owed[len(syllable) :], side
                        else:
                            continue
                        longer = [*shorter, syllable]
                        pair = (longer, spelling_b) if side == 0 else (spelling_a, longer)
                        queue.append((*pair, rest, next_behind))
    return None


def _template_slots(template: str) -> set[str]:
    slots = set()
    for _, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"slot {{{field}}} has a format spec or conversion; write plain slots like {{entity}}")
        slots.add(field)
    return slots


def _check_templates(templates, name: str, required: str, allowed: set[str]) -> tuple[str, ...]:
    if isinstance(templates, str) or not isinstance(templates, Sequence):
        raise ValueError(f"`{name}` must be a non-empty list of template strings, got {templates!r}.")
    templates = tuple(templates)
    if not templates:
        raise ValueError(f"`{name}` must be a non-empty list of template strings, got an empty one.")
    for i, template in enumerate(templates):
        if not isinstance(template, str):
            raise ValueError(f"`{name}[{i}]` must be a string, got {template!r}.")
        try:
            slots = _template_slots(template)
        except ValueError as err:
            raise ValueError(f"`{name}[{i}]` = {template!r} is not a valid template: {err}.") from None
        extra = slots - allowed
        if extra:
            raise ValueError(
                f"`{name}[{i}]` = {template!r} has unknown slots {sorted(extra)}: allowed are "
                f"{', '.join('{' + s + '}' for s in sorted(allowed))}."
            )
        if required not in slots:
            raise ValueError(f"`{name}[{i}]` = {template!r} has no {{{required}}} slot: every template needs one.")
        if template != template.strip() or not template.strip():
            raise ValueError(f"`{name}[{i}]` = {template!r} must be non-empty without leading or trailing spaces.")
    if len(set(templates)) != len(templates):
        raise ValueError(f"`{name}` holds the same template twice: {list(templates)}.")
    return templates


def _check_attributes(attributes, name: str, allow_empty: bool) -> dict[str, int]:
    if not isinstance(attributes, Mapping):
        raise ValueError(
            f"`{name}` must be a mapping from attribute name to value-set size, e.g. {{'birthplace': 64}}, "
            f"got {type(attributes).__name__}."
        )
    if not attributes and not allow_empty:
        raise ValueError(f"`{name}` is empty: give at least one attribute, e.g. {{'birthplace': 64}}.")
    out = {}
    for key, size in attributes.items():
        if not isinstance(key, str) or not key.strip() or key != key.strip() or "{" in key or "}" in key:
            raise ValueError(f"`{name}` keys must be non-empty attribute names without braces, got {key!r}.")
        out[key] = check_integer(size, f"{name}[{key!r}]", minimum=2, hint="the size of the attribute's value set")
    return out


class SyntheticFactSet:
    """Atomic facts (entity, attribute, value) drawn from a seed, with frequencies, redundancy and a held-out split.

    Every entity gets one value per attribute in `attributes` (drawn uniformly from the attribute's value set) and
    per attribute in `rule_attributes` (given by a fixed random map from the first syllable of the entity's
    surname to a value: a rule a model can learn and apply to entities it never saw). The rule facts of a
    `held_out_fraction` of the entities form the held-out split; all other facts form the training split. The same
    arguments always give the same facts.

    Args:
        num_entities: How many entities (distinct names).
        attributes: Attribute name -> value-set size (>= 2) for random facts.
        rule_attributes: Attribute name -> value-set size for facts whose value follows the rule above.
        templates: Paraphrase templates of a fact's prompt, each with an `{entity}` slot and, when there is more
            than one attribute, an `{attribute}` slot; the value follows the prompt after a space. A mapping from
            attribute name to its own list of templates is accepted too (then every attribute needs one). Every
            training fact is rendered once per template (k templates = k paraphrases).
        inverse: Also render each training fact in the inverse direction ("Kavo is the birthplace of" -> the
            entity's name). Values are then drawn without replacement so that each inverse fact has one answer:
            every value set must have at least `num_entities` values.
        inverse_templates: Templates of the inverse direction, each with a `{value}` slot (and `{attribute}`).
        zipf_exponent: None gives every fact one repetition; an exponent s > 0 gives the fact of frequency rank r
            (ranks shuffled by the seed) `max(1, round(max_repetitions * r**-s))` repetitions.
        max_repetitions: Repetitions of the most frequent fact under `zipf_exponent`.
        held_out_fraction: Fraction of the entities (in [0, 1)) whose rule facts are held out of training.
        syllables: The shared sub-word vocabulary names and values are spelled from (distinct, lowercase letters).
            With `rule_attributes`, no surname may be spelled two ways with different first syllables (the rule
            reads the first one): a set where one syllable is a prefix of another may be refused for that.
        name_syllables: `(least, most)` syllables per name part (first name and surname).
        value_syllables: Syllables per value string.
        seed: The random seed.

    Attributes:
        facts: Every fact, training and held out, entity by entity.
        entities: The entity names, in order.
        values: Attribute name -> its value strings.

    Raises:
        ValueError: On an argument outside its allowed values, naming the argument.

    Examples:
        >>> facts = SyntheticFactSet(num_entities=3, attributes={"birthplace": 8}, seed=0)
        >>> len(facts), facts.train[0].attribute
        (3, 'birthplace')
        >>> facts.prompt(facts.train[0]).startswith("The birthplace of ")
        True
    """

    def __init__(
        self,
        num_entities: int = 1000,
        attributes: Mapping[str, int] | None = None,
        rule_attributes: Mapping[str, int] | None = None,
        templates: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        inverse: bool = False,
        inverse_templates: Sequence[str] | None = None,
        zipf_exponent: float | None = None,
        max_repetitions: int = 1,
        held_out_fraction: float = 0.0,
        syllables: Sequence[str] | None = None,
        name_syllables: tuple[int, int] = (2, 3),
        value_syllables: int = 2,
        seed: int = 0,
    ):
        self.num_entities = check_integer(num_entities, "num_entities", minimum=1)
        self.attributes = _check_attributes(
            DEFAULT_ATTRIBUTES if attributes is None else attributes, "attributes", allow_empty=True
        )
        self.rule_attributes = _check_attributes(rule_attributes or {}, "rule_attributes", allow_empty=True)
        if not self.attributes and not self.rule_attributes:
            raise ValueError("`attributes` and `rule_attributes` are both empty: give at least one attribute.")
        both = set(self.attributes) & set(self.rule_attributes)
        if both:
            raise ValueError(f"{sorted(both)} appear in both `attributes` and `rule_attributes`.")
        names = [*self.attributes, *self.rule_attributes]
        self.inverse = check_bool(inverse, "inverse")
        self.zipf_exponent = check_number(
            zipf_exponent, "zipf_exponent", minimum=0.0, exclusive_minimum=True, allow_none=True
        )
        self.max_repetitions = check_integer(max_repetitions, "max_repetitions", minimum=1)
        self.held_out_fraction = check_number(
            held_out_fraction, "held_out_fraction", minimum=0.0, maximum=1.0, exclusive_maximum=True
        )
        if self.held_out_fraction > 0 and not self.rule_attributes:
            raise ValueError(
                "`held_out_fraction` > 0 holds out rule facts, but `rule_attributes` is empty: give at least one."
            )
        self.seed = check_integer(seed, "seed", minimum=0)
        allowed = {"entity", "attribute"}
        if templates is None:
            templates = DEFAULT_TEMPLATES
        if isinstance(templates, Mapping):
            missing = [n for n in names if n not in templates]
            unknown = [k for k in templates if k not in names]
            if missing or unknown:
                raise ValueError(
                    f"`templates` as a mapping needs exactly the attributes {names}: missing {missing}, unknown {unknown}."
                )
            self.templates = {n: _check_templates(templates[n], f"templates[{n!r}]", "entity", allowed) for n in names}
            counts = {len(t) for t in self.templates.values()}
            if len(counts) != 1:
                raise ValueError("`templates` must give every attribute the same number of paraphrases.")
        else:
            checked = _check_templates(templates, "templates", "entity", allowed)
            if len(names) > 1:
                for i, template in enumerate(checked):
                    if "attribute" not in _template_slots(template):
                        raise ValueError(
                            f"`templates[{i}]` = {template!r} has no {{attribute}} slot, but there are {len(names)} "
                            "attributes: the prompt would not say which one is asked. Add the slot or give one "
                            "template list per attribute."
                        )
            self.templates = {n: checked for n in names}
        if inverse_templates is None:
            inverse_templates = DEFAULT_INVERSE_TEMPLATES
        self.inverse_templates = _check_templates(
            inverse_templates, "inverse_templates", "value", {"value", "attribute"}
        )
        if self.inverse and len(names) > 1:
            for i, template in enumerate(self.inverse_templates):
                if "attribute" not in _template_slots(template):
                    raise ValueError(f"`inverse_templates[{i}]` = {template!r} needs an {{attribute}} slot.")
        if syllables is None:
            syllables = DEFAULT_SYLLABLES
        if isinstance(syllables, str) or not isinstance(syllables, Sequence) or len(syllables) < 2:
            raise ValueError(f"`syllables` must be a list of at least 2 syllables, got {syllables!r}.")
        bad = [s for s in syllables if not isinstance(s, str) or not s or not (s.isalpha() and s.islower())]
        if bad or len(set(syllables)) != len(syllables):
            raise ValueError(f"`syllables` must be distinct non-empty lowercase words, got {bad[:3] or 'duplicates'}.")
        self.syllables = tuple(syllables)
        if (
            not isinstance(name_syllables, (tuple, list))
            or len(name_syllables) != 2
            or isinstance(name_syllables[0], bool)
        ):
            raise ValueError(f"`name_syllables` must be a pair (least, most), got {name_syllables!r}.")
        least = check_integer(name_syllables[0], "name_syllables[0]", minimum=1)
        most = check_integer(name_syllables[1], "name_syllables[1]", minimum=least)
        self.name_syllables = (least, most)
        self.value_syllables = check_integer(value_syllables, "value_syllables", minimum=1)
        if self.rule_attributes:
            twice = _two_spellings(self.syllables, least, most)
            if twice is not None:
                word = "".join(twice[0]).capitalize()
                raise ValueError(
                    f"`syllables` spell the surname {word!r} two ways ({' + '.join(twice[0])} and "
                    f"{' + '.join(twice[1])}), with different first syllables: the rule of `rule_attributes` reads the "
                    "first syllable, so such a surname would have two rule values and the held-out rule could not be "
                    "learned. Use syllables none of which is a prefix of another."
                )
        sizes = {**self.attributes, **self.rule_attributes}
        possible_values = len(self.syllables) ** self.value_syllables
        for attribute, size in sizes.items():
            if size > possible_values:
                raise ValueError(
                    f"`attributes[{attribute!r}]` = {size} values, but only {possible_values} distinct values can be "
                    f"spelled with {self.value_syllables} of {len(self.syllables)} syllables: raise `value_syllables`."
                )
            if self.inverse and attribute in self.attributes and size < self.num_entities:
                raise ValueError(
                    f"`attributes[{attribute!r}]` = {size} values, fewer than num_entities={self.num_entities}: "
                    "with inverse=True every value must name one entity (values are drawn without replacement)."
                )
        if self.inverse and self.rule_attributes:
            raise ValueError("`inverse=True` needs one entity per value, which rule attributes cannot give.")
        self._generate()

    # ------------------------------------------------------------------ generation

    def _word(self, rng: np.random.Generator, n: int) -> str:
        return "".join(self.syllables[i] for i in rng.integers(0, len(self.syllables), n)).capitalize()

    def _generate(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.values = {}
        for attribute, size in {**self.attributes, **self.rule_attributes}.items():
            words: list[str] = []
            seen: set[str] = set()
            while len(words) < size:
                word = self._word(rng, self.value_syllables)
                if word not in seen:
                    seen.add(word)
                    words.append(word)
            self.values[attribute] = words
        value_words = {w for words in self.values.values() for w in words}
        value_lengths = {len(w) for w in value_words}
        initial, continuing = set(self._whole_words()) | set(self.syllables), set(self.syllables)
        least, most = self.name_syllables
        parts_possible, k = 0, least
        while k <= most and parts_possible**2 < 2 * self.num_entities:  # small numbers, however long the names
            parts_possible, k = parts_possible + len(self.syllables) ** k, k + 1
        if parts_possible**2 < 2 * self.num_entities:
            raise ValueError(
                f"`num_entities` = {self.num_entities} is too many for names of {least}-{most} of "
                f"{len(self.syllables)} syllables ({parts_possible**2} possible names): add syllables or raise "
                "`name_syllables`."
            )
        entities: list[str] = []
        first_syllables: list[int] = []
        seen = set()
        attempts = 0
        while len(entities) < self.num_entities:
            attempts += 1
            if attempts > 100 * self.num_entities + 1000:
                raise ValueError(
                    f"Could not draw {self.num_entities} distinct names: add syllables or raise `name_syllables`."
                )
            lengths = rng.integers(least, most + 1, 2)
            first, last = (rng.integers(0, len(self.syllables), k) for k in lengths)
            parts = ["".join(self.syllables[i] for i in p).capitalize() for p in (first, last)]
            name = " ".join(parts)
            # A name part that starts with a value word would tokenize (longest match) into that value's token; one
            # that starts with another whole word ("pet" in "Peto") can leave a rest no syllable spells (<unk>).
            if name in seen or any(part[:k] in value_words for part in parts for k in value_lengths):
                continue
            if not all(_spelled(part.lower(), initial, continuing) for part in parts):
                continue
            seen.add(name)
            entities.append(name)
            first_syllables.append(int(last[0]))
        self.entities = entities
        held = set(
            rng.choice(self.num_entities, round(self.held_out_fraction * self.num_entities), replace=False).tolist()
        )
        columns = {}
        for attribute, size in self.attributes.items():
            if self.inverse:
                columns[attribute] = rng.permutation(size)[: self.num_entities]
            else:
                columns[attribute] = rng.integers(0, size, self.num_entities)
        for attribute, size in self.rule_attributes.items():
            rule = rng.integers(0, size, len(self.syllables))  # first syllable of the surname -> value
            columns[attribute] = rule[np.asarray(first_syllables)]
        facts = []
        for e, entity in enumerate(entities):
            for attribute, column in columns.items():
                is_rule = attribute in self.rule_attributes
                facts.append(
                    Fact(
                        entity,
                        attribute,
                        self.values[attribute][int(column[e])],
                        rule=is_rule,
                        held_out=is_rule and e in held,
                        num_values=len(self.values[attribute]),
                    )
                )
        train = [i for i, f in enumerate(facts) if not f.held_out]
        if self.zipf_exponent is not None:
            ranks = rng.permutation(len(train)) + 1
            for i, rank in zip(train, ranks):
                repetitions = max(1, round(self.max_repetitions * float(rank) ** -self.zipf_exponent))
                facts[i] = replace(facts[i], repetitions=repetitions)
        self.facts = facts

    # ------------------------------------------------------------------ views

    @property
    def train(self) -> list[Fact]:
        """The training facts (every fact not held out), in order."""
        return [f for f in self.facts if not f.held_out]

    @property
    def held_out(self) -> list[Fact]:
        """The held-out facts: rule facts of the held-out entities, never in the training rows."""
        return [f for f in self.facts if f.held_out]

    def __len__(self) -> int:
        return len(self.train)

    def __repr__(self) -> str:
        return (
            f"SyntheticFactSet({len(self.entities)} entities, {len(self.train)} training facts, "
            f"{len(self.held_out)} held out, attributes={list(self.values)}, seed={self.seed})"
        )

    def split(self, split: str = "train") -> list[Fact]:
        """The facts of one split.

        Args:
            split: "train" or "held_out".
        """
        if split not in FACT_SPLITS:
            raise ValueError(f"`split` must be one of {FACT_SPLITS}, got {split!r}.")
        return self.train if split == "train" else self.held_out

    def information_bits(self, facts: Sequence[Fact] | None = None) -> float:
        """The information in `facts` (default: the training facts) in bits: the sum of log2(value-set size).

        Args:
            facts: Facts to count; None counts the training split.
        """
        facts = self.train if facts is None else facts
        return float(sum(math.log2(f.num_values) for f in facts))

    def select(self, indices: Sequence[int]) -> SyntheticFactSet:
        """A copy holding only the training facts at `indices` (the held-out facts are kept).

        Args:
            indices: Positions in `self.train`.

        Raises:
            ValueError: If an index is out of range or repeated.
        """
        train = self.train
        checked = [check_integer(i, "indices[...]", minimum=0) for i in indices]
        if any(i >= len(train) for i in checked) or len(set(checked)) != len(checked):
            raise ValueError(f"`indices` must be distinct positions in the {len(train)} training facts.")
        out = object.__new__(SyntheticFactSet)
        out.__dict__.update(self.__dict__)
        out.facts = [train[i] for i in checked] + self.held_out
        return out

    # ------------------------------------------------------------------ rendering

    def prompt(self, fact: Fact, template: int = 0) -> str:
        """The prompt of `fact` under paraphrase template `template` (the value follows it after a space).

        Args:
            fact: A fact of this set.
            template: Index of the paraphrase template.
        """
        if not isinstance(fact, Fact) or fact.attribute not in self.templates:
            raise ValueError(f"`fact` must be a Fact of this set (attributes {list(self.templates)}), got {fact!r}.")
        templates = self.templates[fact.attribute]
        template = check_integer(template, "template", minimum=0)
        if template >= len(templates):
            raise ValueError(f"`template` must be in [0, {len(templates) - 1}], got {template}.")
        return templates[template].format(entity=fact.entity, attribute=fact.attribute)

    def inverse_prompt(self, fact: Fact, template: int = 0) -> str:
        """The prompt of `fact`'s inverse ("Kavo is the birthplace of"), answered by the entity's name.

        Args:
            fact: A fact of this set.
            template: Index of the inverse template.
        """
        template = check_integer(template, "template", minimum=0)
        if template >= len(self.inverse_templates):
            raise ValueError(f"`template` must be in [0, {len(self.inverse_templates) - 1}], got {template}.")
        return self.inverse_templates[template].format(value=fact.value, attribute=fact.attribute)

    def rows(self, split: str = "train", direction: str = "forward", repeat: bool = True) -> list[dict]:
        """The rendered rows of a split, as dicts (see `to_dataset` for the columns).

        Args:
            split: "train" or "held_out".
            direction: "forward" (prompt -> value), "inverse" (value prompt -> entity; needs `inverse=True`) or
                "both".
            repeat: Repeat each fact's rows by its `repetitions` (training data); False gives each once.
        """
        facts = self.split(split)
        if direction not in ("forward", "inverse", "both"):
            raise ValueError(f"`direction` must be 'forward', 'inverse' or 'both', got {direction!r}.")
        if direction != "forward" and not self.inverse:
            raise ValueError(f"`direction={direction!r}` needs a fact set built with inverse=True.")
        repeat = check_bool(repeat, "repeat")
        out = []
        for index, fact in enumerate(facts):
            times = fact.repetitions if repeat else 1
            rendered = []
            if direction in ("forward", "both"):
                for t in range(len(self.templates[fact.attribute])):
                    rendered.append(("forward", t, self.prompt(fact, t), fact.value))
            if direction in ("inverse", "both"):
                for t in range(len(self.inverse_templates)):
                    rendered.append(("inverse", t, self.inverse_prompt(fact, t), fact.entity))
            for kind, t, prompt, answer in rendered:
                row = {
                    "fact": index,
                    "entity": fact.entity,
                    "attribute": fact.attribute,
                    "value": fact.value,
                    "direction": kind,
                    "template": t,
                    "prompt": prompt,
                    "target": " " + answer,
                    "text": f"{prompt} {answer}",
                    "repetitions": fact.repetitions,
                }
                out.extend(dict(row) for _ in range(times))
        return out

    def to_dataset(
        self,
        split: str = "train",
        direction: str = "forward",
        repeat: bool = True,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> datasets.Dataset:
        """The rendered rows as a `datasets.Dataset`.

        Columns: `fact` (index in the split), `entity`, `attribute`, `value`, `direction`, `template` (paraphrase
        index), `prompt`, `target` (the answer with its leading space), `text` (prompt + target) and
        `repetitions`. With a tokenizer also `input_ids`, `attention_mask` and `labels` (-100 on the prompt, so the
        loss is on the answer only), encoded exactly as `fact_capacity` reads them.

        Args:
            split: "train" or "held_out".
            direction: "forward", "inverse" or "both" (see `rows`).
            repeat: Repeat each fact's rows by its `repetitions`.
            tokenizer: Any transformers tokenizer; None gives the text columns only.
        """
        from datasets import Dataset

        rows = self.rows(split, direction, repeat)
        if tokenizer is not None:
            encoded = encode_facts(tokenizer, [r["prompt"] for r in rows], [r["target"] for r in rows])
            for row, (prompt_ids, target_ids) in zip(rows, encoded):
                row["input_ids"] = prompt_ids + target_ids
                row["attention_mask"] = [1] * len(row["input_ids"])
                row["labels"] = [-100] * len(prompt_ids) + target_ids
        return Dataset.from_list(rows)

    def _whole_words(self) -> list[str]:
        """The words `build_tokenizer` keeps whole, lower-cased and in vocabulary order: every template word and
        every value."""
        import re

        words: list[str] = []
        templates = [t for ts in self.templates.values() for t in ts] + list(self.inverse_templates)
        filler = [t.format(entity="", attribute=" ".join(self.values), value="") for t in templates]
        for text in filler:
            words += re.findall(r"\w+|[^\w\s]", text.lower())
        return words + [w.lower() for ws in self.values.values() for w in ws]

    def build_tokenizer(self, max_length: int = 64) -> PreTrainedTokenizerFast:
        """A local tokenizer for this fact set: whole words for templates and values, syllables for names.

        WordPiece over a vocabulary of `<pad>`, `<bos>`, `<eos>`, `<unk>`, every template word, every value and
        every syllable (word-initial and `##`-continuing), lower-cased. An entity name becomes one token per
        syllable, shared with many other names; a value is one token. Encodings start with `<bos>`.

        Args:
            max_length: The tokenizer's `model_max_length`.

        Returns:
            The tokenizer, built in memory (nothing is downloaded).
        """
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        max_length = check_integer(max_length, "max_length", minimum=4)
        words = self._whole_words() + list(self.syllables) + ["##" + s for s in self.syllables]
        vocab = {}
        for token in ["<pad>", "<bos>", "<eos>", "<unk>", *words]:
            vocab.setdefault(token, len(vocab))
        tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.WordPiece()
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            model_max_length=max_length,
            pad_token="<pad>",
            bos_token="<bos>",
            eos_token="<eos>",
            unk_token="<unk>",
        )
