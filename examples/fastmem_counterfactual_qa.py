"""Does FastMem make SmolLM2 follow its context? Zero-shot vs FastMem vs FastMem+CD on a counterfactual QA set.

Each item of `data/counterfactual_qa.jsonl` (48, written for this project) has a context that contradicts a well-known
fact, a question, the answer per the context and the answer per the model's memory. The model answers greedily in
its chat template; an answer counts for the context (or for memory) when it contains that answer, case-insensitively.
FastMem memorizes the context as an assistant turn (`context_as_assistant_turn`), as in the paper; items go in
batches of 8, each with its own copy of the FFN weights.

    python examples/fastmem_counterfactual_qa.py                      # defaults, all 48 items
    python examples/fastmem_counterfactual_qa.py --grid 1e-4 3e-4 1e-3 3e-3 --split dev   # how the defaults were chosen
    python examples/fastmem_counterfactual_qa.py --small                # 2 items, every method (the test runs this)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re

import torch
from tqdm.auto import tqdm

from hf_memory import FastMem, FastMemConfig, context_as_assistant_turn, load_model


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "counterfactual_qa.jsonl")
DEV_ITEMS = 16  # the first 16 items choose the defaults; the other 32 only report
SMALL = {"limit": 2}  # --small: a smoke run of every method


def load_items(split: str = "all") -> list[dict]:
    with open(DATA) as f:
        items = [json.loads(line) for line in f if line.strip()]
    return {"all": items, "dev": items[:DEV_ITEMS], "test": items[DEV_ITEMS:]}[split]


def question_prompt(tokenizer, item: dict) -> list[int]:
    content = (
        f"Context: {item['context']}\nQuestion: {item['question']}\n"
        "Answer the question according to the context, in a few words."
    )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, return_dict=True
    )["input_ids"]


def _normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", " ", text.lower())


def contains(answer: str, text: str) -> bool:
    return f" {_normalize(answer).strip()} " in f" {' '.join(_normalize(text).split())} "


def left_pad(rows: list[list[int]], pad_id: int, masks: list[list[bool]] | None = None):
    """Left-padded ids, attention mask and (when given) loss mask for a batch of token lists."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    loss = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], attention[i, width - len(row) :] = torch.tensor(row), 1
        if masks is not None:
            loss[i, width - len(row) :] = torch.tensor(masks[i])
    return ids, attention, loss


def answer_batch(
    model, tokenizer, items: list[dict], config: FastMemConfig | None, max_new_tokens: int, memorize=None
) -> list[str]:
    """Answer a batch of items; with FastMem, each item's context (or its text of `memorize`, one per item: the
    unrelated-text control) is memorized into its own copy of the FFN."""
    pad = tokenizer.pad_token_id
    prompts, attention, _ = left_pad([question_prompt(tokenizer, item) for item in items], pad)
    generate = {"attention_mask": attention, "max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": pad}
    with contextlib.ExitStack() as stack:
        if config is not None:
            texts = memorize if memorize is not None else [item["context"] for item in items]
            turns = [context_as_assistant_turn(tokenizer, text) for text in texts]
            ids, turn_attention, loss_mask = left_pad(
                [t["input_ids"][0].tolist() for t in turns], pad, [t["loss_mask"][0].tolist() for t in turns]
            )
            stack.enter_context(
                FastMem(model, config).memorize(ids, loss_mask=loss_mask, attention_mask=turn_attention)
            )
        with torch.inference_mode():
            out = model.generate(input_ids=prompts, **generate)
    return tokenizer.batch_decode(out[:, prompts.shape[1] :], skip_special_tokens=True)


def evaluate(model, tokenizer, items, methods: dict, max_new_tokens: int = 16, batch_size: int = 8) -> dict:
    """Accuracy per method: the share of answers containing the context's answer, and the memory's answer."""
    results = {}
    for name, config in methods.items():
        answers = []
        for start in tqdm(range(0, len(items), batch_size), desc=name, leave=False):
            answers += answer_batch(model, tokenizer, items[start : start + batch_size], config, max_new_tokens)
        results[name] = {
            "context": sum(contains(i["context_answer"], a) for i, a in zip(items, answers)) / len(items),
            "memory": sum(contains(i["memory_answer"], a) for i, a in zip(items, answers)) / len(items),
            "answers": answers,
        }
    return results


def main(
    split: str = "all",
    lr: float | None = None,
    steps: int | None = None,
    alpha: float = 0.5,
    grid: list[float] | None = None,
    model=None,
    tokenizer=None,
    limit: int | None = None,
) -> dict:
    if model is None:
        model, tokenizer = load_model()
    model.eval()
    items = load_items(split)[:limit]
    base = FastMemConfig(**{k: v for k, v in {"lr": lr, "steps": steps}.items() if v is not None})
    if grid:
        methods = {"zero-shot": None, **{f"FastMem lr={g:g}": FastMemConfig(steps=base.steps, lr=g) for g in grid}}
    else:
        methods = {
            "zero-shot": None,
            "FastMem": base,
            f"FastMem+CD (α={alpha:g})": FastMemConfig(steps=base.steps, lr=base.lr, contrastive=alpha),
        }
    results = evaluate(model, tokenizer, items, methods)
    print(f"\n{len(items)} items ({split}), steps={base.steps}, lr={base.lr:g}, kl_weight={base.kl_weight:g}")
    print(f"{'method':<28}{'answer per context':>20}{'answer per memory':>20}")
    for name, r in results.items():
        print(f"{name:<28}{r['context']:>20.1%}{r['memory']:>20.1%}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="all", choices=["all", "dev", "test"])
    parser.add_argument("--lr", type=float, default=None, help="FastMem learning rate (default: FastMemConfig's)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--alpha", type=float, default=0.5, help="contrastive decoding weight")
    parser.add_argument("--grid", type=float, nargs="*", help="compare FastMem at these learning rates instead")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the answers and accuracies as JSON here")
    parser.add_argument("--small", action="store_true", help=f"a smoke run: {SMALL}")
    args = parser.parse_args()
    limit = SMALL["limit"] if args.small else args.limit
    results = main(args.split, args.lr, args.steps, args.alpha, args.grid, limit=limit)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
