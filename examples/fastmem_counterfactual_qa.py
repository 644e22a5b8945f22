"""Does FastMem make SmolLM2 follow its context? Zero-shot vs FastMem vs FastMem+CD on a counterfactual QA set.

Each item of `data/counterfactual_qa.jsonl` (48, written for this project) has a context that contradicts a well-known
fact, a question, the answer per the context and the answer per the model's memory. The model answers greedily in
its chat template; an answer counts for the context (or for memory) when it contains that answer, case-insensitively.
FastMem memorizes the context as an assistant turn (`context_as_assistant_turn`), as in the paper.

    python examples/fastmem_counterfactual_qa.py                      # defaults, all 48 items
    python examples/fastmem_counterfactual_qa.py --grid 1e-4 3e-4 1e-3 3e-3 --split dev   # how the defaults were chosen
"""

from __future__ import annotations

import argparse
import json
import os
import re

import torch
from tqdm.auto import tqdm

from hf_memory import FastMemConfig, context_as_assistant_turn, fastmem_generate, load_model

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "counterfactual_qa.jsonl")
DEV_ITEMS = 16  # the first 16 items choose the defaults; the other 32 only report


def load_items(split: str = "all") -> list[dict]:
    with open(DATA) as f:
        items = [json.loads(line) for line in f if line.strip()]
    return {"all": items, "dev": items[:DEV_ITEMS], "test": items[DEV_ITEMS:]}[split]


def question_prompt(tokenizer, item: dict) -> torch.Tensor:
    content = (f"Context: {item['context']}\nQuestion: {item['question']}\n"
               "Answer the question according to the context, in a few words.")
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]


def _normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", " ", text.lower())


def contains(answer: str, text: str) -> bool:
    return f" {_normalize(answer).strip()} " in f" {' '.join(_normalize(text).split())} "


def answer(model, tokenizer, item: dict, config: FastMemConfig | None, max_new_tokens: int) -> str:
    prompt = question_prompt(tokenizer, item)
    generate = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if config is None:
        with torch.inference_mode():
            out = model.generate(input_ids=prompt, **generate)
    else:
        turn = context_as_assistant_turn(tokenizer, item["context"])
        out = fastmem_generate(model, prompt, config, memorize_ids=turn["input_ids"], loss_mask=turn["loss_mask"], **generate)
    return tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)


def evaluate(model, tokenizer, items, methods: dict, max_new_tokens: int = 16) -> dict:
    """Accuracy per method: the share of answers containing the context's answer, and the memory's answer."""
    results = {}
    for name, config in methods.items():
        answers = [answer(model, tokenizer, item, config, max_new_tokens) for item in tqdm(items, desc=name, leave=False)]
        results[name] = {
            "context": sum(contains(i["context_answer"], a) for i, a in zip(items, answers)) / len(items),
            "memory": sum(contains(i["memory_answer"], a) for i, a in zip(items, answers)) / len(items),
            "answers": answers,
        }
    return results


def main(split: str = "all", lr: float | None = None, steps: int | None = None, alpha: float = 0.5,
         grid: list[float] | None = None, model=None, tokenizer=None, limit: int | None = None) -> dict:
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
    args = parser.parse_args()
    results = main(args.split, args.lr, args.steps, args.alpha, args.grid, limit=args.limit)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
