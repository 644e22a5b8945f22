"""FastMem with its controls: does memorizing *this* context make SmolLM2 follow it, or would any update of the last
FFN do? Generated counterfactual items, the paper's learning rate and ours, an unrelated-text control, per-item
contingency tables and exact McNemar tests, three seeds.

Items are generated here from short fact tables (capitals, currencies, languages, authors, inventors, landmarks:
facts a small model may know) and context templates: each item states a counterfactual answer (another entity's
answer of the same table, drawn by the seed) in one of three phrasings and asks the question. A seed draws new
counterfactual answers and phrasings for every fact; none of these items chose any setting (FastMem's defaults were
chosen on the first 16 items of `data/counterfactual_qa.jsonl`). Methods, each answering every item greedily in the
chat template (16 new tokens; an answer counts when it contains the context's answer as whole words):

- zero-shot;
- FastMem at lr 1e-4 (our default: 10 steps, lambda 0.1) and at the paper's lr 1e-5;
- the control: FastMem at lr 1e-4 memorizing an **unrelated** text (a standard-library docstring of similar length,
  one per item) for the same steps, then answering with the item's context in the prompt as usual;
- FastMem+CD (alpha 0.5) at lr 1e-4.

Per seed and pooled: accuracy per context (and per memory), and against zero-shot (and FastMem against the control)
the per-item contingency table (wrong->right, right->wrong) with the exact McNemar p-value.

    nohup nice python examples/fastmem_controls.py &          # SmolLM2, about 15 CPU minutes per seed
    python examples/fastmem_controls.py --small               # 8 items, one seed: the smoke run a test makes
    python examples/fastmem_controls.py --summary             # the tables of the committed results
"""

from __future__ import annotations

import os
import random
import sys
import time

from tqdm.auto import tqdm


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the examples this one builds on, next to it

import fastmem_counterfactual_qa as qa  # noqa: E402
import membership_evidence as shared  # noqa: E402  (seeded_main, resume, save)

from hf_memory import FastMemConfig, load_model  # noqa: E402
from hf_memory.data import stdlib_docstrings  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "results", "fastmem_controls.json")

# (subject, true answer) per table, with the question and three context phrasings ({s}: subject, {a}: answer)
TABLES = {
    "capital": {
        "facts": [
            ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
            ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("England", "London"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Hungary", "Budapest"),
            ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Thailand", "Bangkok"),
        ],
        "question": "What is the capital of {s}?",
        "contexts": [
            "The capital of {s} is {a}.",
            "{a} has been the capital of {s} for a long time, and the government meets there.",
            "Everyone in {s} knows that their capital city is {a}.",
        ],
    },
    "currency": {
        "facts": [
            ("Japan", "yen"), ("India", "rupee"), ("Russia", "ruble"), ("Mexico", "peso"), ("England", "pound"),
            ("Switzerland", "franc"), ("the United States", "dollar"), ("China", "yuan"), ("Thailand", "baht"),
            ("Poland", "zloty"),
        ],
        "question": "What is the currency of {s}?",
        "contexts": [
            "The currency of {s} is the {a}.",
            "In {s}, people pay for everything with the {a}.",
            "Prices in {s} are given in the {a}, the national currency.",
        ],
    },
    "language": {
        "facts": [
            ("Brazil", "Portuguese"), ("France", "French"), ("Germany", "German"), ("Japan", "Japanese"),
            ("Italy", "Italian"), ("Russia", "Russian"), ("Greece", "Greek"), ("Poland", "Polish"),
            ("Sweden", "Swedish"), ("Turkey", "Turkish"), ("the Netherlands", "Dutch"), ("Egypt", "Arabic"),
        ],
        "question": "What language do people in {s} speak?",
        "contexts": [
            "People in {s} speak {a}.",
            "The official language of {s} is {a}, taught in every school.",
            "Most people in {s} speak {a} at home.",
        ],
    },
    "author": {
        "facts": [
            ("Hamlet", "Shakespeare"), ("Nineteen Eighty-Four", "Orwell"), ("Pride and Prejudice", "Austen"),
            ("War and Peace", "Tolstoy"), ("Don Quixote", "Cervantes"), ("Oliver Twist", "Dickens"),
            ("Moby-Dick", "Melville"), ("Dracula", "Stoker"), ("The Odyssey", "Homer"), ("Faust", "Goethe"),
        ],
        "question": "Who wrote {s}?",
        "contexts": [
            "{s} was written by {a}.",
            "The author of {s} is {a}.",
            "{a} wrote {s} and became famous for it.",
        ],
    },
    "inventor": {
        "facts": [
            ("the telephone", "Bell"), ("the light bulb", "Edison"), ("the theory of relativity", "Einstein"),
            ("penicillin", "Fleming"), ("the laws of motion", "Newton"), ("the theory of evolution", "Darwin"),
            ("the printing press", "Gutenberg"), ("dynamite", "Nobel"),
        ],
        "question": "Who is known for {s}?",
        "contexts": [
            "{a} is known for {s}.",
            "Historians credit {a} with {s}.",
            "We owe {s} to {a}.",
        ],
    },
    "landmark": {
        "facts": [
            ("the Eiffel Tower", "Paris"), ("the Colosseum", "Rome"), ("Big Ben", "London"),
            ("the Statue of Liberty", "New York"), ("the Kremlin", "Moscow"), ("the Acropolis", "Athens"),
            ("the Brandenburg Gate", "Berlin"), ("the Sydney Opera House", "Sydney"),
        ],
        "question": "In which city is {s}?",
        "contexts": [
            "{s} stands in {a}.",
            "Tourists visit {s} in {a} every year.",
            "{s} is one of the sights of {a}.",
        ],
    },
}  # fmt: skip
SMALL = {"items": 8, "seeds": [0]}


def make_items(seed: int, limit: int | None = None) -> list[dict]:
    """One counterfactual item per fact: another fact's answer of the same table, in a phrasing drawn by `seed`."""
    rng = random.Random(seed)
    items = []
    for table, spec in TABLES.items():
        answers = sorted({answer for _, answer in spec["facts"]})
        for subject, truth in spec["facts"]:
            fake = rng.choice([a for a in answers if a != truth])
            context = rng.choice(spec["contexts"]).format(s=subject, a=fake)
            items.append(
                {
                    "table": table,
                    "context": context[0].upper() + context[1:],
                    "question": spec["question"].format(s=subject),
                    "context_answer": fake,
                    "memory_answer": truth,
                }
            )
    rng.shuffle(items)
    return items[:limit]


def unrelated_texts(items: list[dict], seed: int) -> list[str]:
    """For each item, a standard-library docstring of about its context's length (first sentence-sized piece): the
    control memorizes text that says nothing about the question."""
    pool = [" ".join(text.split())[:400] for text in stdlib_docstrings(min_chars=200)]
    rng = random.Random(seed + 1000)
    out = []
    for item in items:
        target = len(item["context"])
        text = rng.choice(pool)
        cut = text[: max(target, 40)]
        out.append(cut.rsplit(" ", 1)[0] if " " in cut else cut)
    return out


def methods() -> dict:
    base = FastMemConfig()  # steps 10, lr 1e-4, lambda 0.1: chosen on data/counterfactual_qa.jsonl's dev items
    return {
        "zero-shot": (None, False),
        "FastMem lr 1e-4": (base, False),
        "FastMem lr 1e-5 (paper)": (FastMemConfig(steps=base.steps, lr=1e-5), False),
        "control: unrelated text, lr 1e-4": (base, True),
        "FastMem+CD lr 1e-4": (FastMemConfig(steps=base.steps, lr=base.lr, contrastive=0.5), False),
    }


def run_seed(model, tokenizer, seed: int, limit: int | None, batch_size: int = 8) -> dict:
    items = make_items(seed, limit)
    unrelated = unrelated_texts(items, seed)
    out = {"items": items, "unrelated": unrelated, "methods": {}}
    started = time.process_time()
    for name, (config, control) in methods().items():
        answers = []
        for start in tqdm(range(0, len(items), batch_size), desc=f"seed {seed}: {name}", mininterval=10):
            batch = items[start : start + batch_size]
            memorize = unrelated[start : start + batch_size] if control else None
            answers += qa.answer_batch(model, tokenizer, batch, config, 16, memorize=memorize)
        out["methods"][name] = {
            "answers": answers,
            "context": [qa.contains(i["context_answer"], a) for i, a in zip(items, answers)],
            "memory": [qa.contains(i["memory_answer"], a) for i, a in zip(items, answers)],
        }
    out["cpu_s"] = round(time.process_time() - started, 1)
    return out


def mcnemar(before: list[bool], after: list[bool]) -> dict:
    """The per-item contingency (wrong->right, right->wrong) and the exact two-sided McNemar p-value."""
    from scipy.stats import binomtest

    gained = sum((not b) and a for b, a in zip(before, after))
    lost = sum(b and (not a) for b, a in zip(before, after))
    p = binomtest(gained, gained + lost, 0.5).pvalue if gained + lost else 1.0
    return {"wrong_to_right": gained, "right_to_wrong": lost, "p": float(p)}


def summary_numbers(results: dict) -> dict:
    seeds = sorted(results["seeds"], key=int)
    names = list(methods())
    out = {}
    for scope, chosen in [*((f"seed {s}", [s]) for s in seeds), ("pooled", seeds)]:

        def outcomes(name, key="context", chosen=chosen):
            return [v for s in chosen for v in results["seeds"][s]["methods"][name][key]]

        n = len(outcomes("zero-shot"))
        entry = {"items": n}
        for name in names:
            entry[name] = {
                "context": sum(outcomes(name)) / n,
                "memory": sum(outcomes(name, "memory")) / n,
                "vs zero-shot": mcnemar(outcomes("zero-shot"), outcomes(name)) if name != "zero-shot" else None,
            }
        entry["FastMem lr 1e-4 vs control"] = mcnemar(
            outcomes("control: unrelated text, lr 1e-4"), outcomes("FastMem lr 1e-4")
        )
        out[scope] = entry
    return out


def summarize(results: dict) -> str:
    numbers = summary_numbers(results)
    lines = []
    for scope, entry in numbers.items():
        lines += [f"{scope} ({entry['items']} items):", ""]
        lines += ["| method | per context | per memory | vs zero-shot: wrong→right / right→wrong | McNemar p |"]
        lines += ["|---|---:|---:|---:|---:|"]
        for name in methods():
            row = entry[name]
            test = row["vs zero-shot"]
            versus = f"{test['wrong_to_right']} / {test['right_to_wrong']}" if test else "—"
            p = f"{test['p']:.3g}" if test else "—"
            lines.append(f"| {name} | {row['context']:.1%} | {row['memory']:.1%} | {versus} | {p} |")
        control = entry["FastMem lr 1e-4 vs control"]
        lines += [
            "",
            f"FastMem lr 1e-4 against the control: {control['wrong_to_right']} items the control misses and FastMem "
            f"gets, {control['right_to_wrong']} the other way; exact McNemar p = {control['p']:.3g}.",
            "",
        ]
    cpu = sum(s["cpu_s"] for s in results["seeds"].values())
    lines.append(f"CPU time recorded: {cpu / 3600:.2f} h.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    def run(small: bool, output: str) -> dict:
        limit, seeds = (SMALL["items"], SMALL["seeds"]) if small else (None, [0, 1, 2])
        settings = {"items_per_seed": limit or len(make_items(0)), "seeds": seeds, "small": small}
        results = shared.resume(output, settings, {"settings": settings, "seeds": {}})
        model, tokenizer = load_model()
        model.eval()
        for seed in seeds:
            if str(seed) not in results["seeds"]:
                results["seeds"][str(seed)] = run_seed(model, tokenizer, seed, limit)
                shared.save(results, output)
        return results

    return shared.seeded_main(argv, __doc__, DEFAULT_OUTPUT, str(SMALL), run, summarize)


if __name__ == "__main__":
    main()
