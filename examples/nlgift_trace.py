"""NLGift with a skill the model can learn: connectivity traced before it is answered, then its transfer.

The earlier recipe (`graph_reasoning.py`) made SmolLM2-135M commit to yes/no at the first reply token and trained
for 2 epochs; it never gained the skill, so there was nothing whose transfer could be measured. Here:

* The target computes before it answers, with one uniform trace for every item: a breadth-first search that
  lists each visited node's neighbours in the order the prompt gives its edges, and stops when the target shows
  up (or when nothing is left to visit), e.g. "Start at 4. 4 touches 0, 2. 0 touches 4, 7. 7 is reached. The
  answer is yes." Every step is a lookup in the prompt; no step asks for a path to be guessed.
* LoRA on the last layers, trained on the reply only for the paper's 10 epochs, with the frozen first layers run
  once per item (their output cached: the "cached tail"), which halves the time per epoch on a CPU.
* Scoring by greedy generation with the `graph_reasoning` metric, for the untuned and the tuned model on the same
  items of every test cell: in distribution (edge list, 3-10 nodes), the three other encodings (semantic shifts)
  and the structural shifts (11-25 nodes, Barabasi-Albert graphs, a hub, rings and paths). Connectivity has no
  weights, so NLGift's numeric shift does not apply to it.
* The control beside it: the one-edge rule (yes iff source and target share an edge) judged by the same report.
  A tuned model that does no better than that rule has learned the rule.

Reproduction needs first a significant in-distribution gain (exact McNemar, p < 0.05); only then is the transfer
table read. Each seed trains its own adapter (its own training items and order); the test items are the same for
every seed. Results are written after every scored cell, and a rerun resumes.

    python examples/nlgift_trace.py                 # the evidence in docs/graph_reasoning.md
    python examples/nlgift_trace.py --summary       # print the tables of the results file
    python examples/nlgift_trace.py --small         # smoke run (a few items, one epoch)
    python examples/nlgift_trace.py --lora-layers 30 --output other.json   # another recipe, its own results file
    python examples/nlgift_trace.py --device cuda --lora-layers 30 --train-items 500 --output gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import graph_reasoning as nlgift  # noqa: E402  (the examples folder is not a package)
import membership_evidence as shared  # noqa: E402


DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "nlgift_trace_smollm2.json")
TRAIN_CELL = "edge_list"
# Test cells: name -> (pattern, variant) of `generate_graph_problems("connectivity", ...)`.
TEST_CELLS = {
    "edge_list": ("semantic", "edge_list"),
    "incident": ("semantic", "incident"),
    "expert": ("semantic", "expert"),
    "friendship": ("semantic", "friendship"),
    "large": ("structural", "large"),
    "barabasi_albert": ("structural", "barabasi_albert"),
    "high_centrality": ("structural", "high_centrality"),
    "low_centrality": ("structural", "low_centrality"),
}
TEST_SEED = 2
STOP_STRINGS = ["The answer is yes.", "The answer is no."]


def settings(small: bool) -> dict:
    """Every count of the run."""
    if small:
        return {
            "train_items": 4,
            "test_items": 2,
            "epochs": 1,
            "seeds": [0],
            "cells": ["edge_list", "incident"],
            "max_new": 12,
        }
    return {
        "train_items": 256,
        "test_items": 60,
        "epochs": 10,
        "seeds": [0, 1, 2],
        "cells": list(TEST_CELLS),
        "max_new": None,
    }


RECIPE = {"lora_layers": 8, "rank": 16, "alpha": 32, "lr": 3e-4, "batch_size": 8}


def neighbours(graph: dict) -> dict[str, list[str]]:
    """Each node's neighbours, in the order the prompt lists the edges."""
    out = {node: [] for node in graph["nodes"]}
    for u, v in graph["edges"]:
        out[u].append(v)
        out[v].append(u)
    return out


def trace_target(graph: dict) -> str:
    """The uniform reply: a breadth-first search from the source that stops once the target is reached.

    Each visited node is written with its neighbours ("4 touches 0, 2."), in the order nodes were first reached;
    the answer comes last. The same steps for every item, whatever the answer.

    Args:
        graph: A connectivity problem's graph (the `graph` column of `generate_graph_problems`, parsed).

    Returns:
        The reply text, ending with "The answer is yes." or "The answer is no.".
    """
    adjacent = neighbours(graph)
    source, target = graph["source"], graph["target"]
    queue, seen, steps = [source], {source}, [f"Start at {source}."]
    while queue:
        node = queue.pop(0)
        found = adjacent[node]
        steps.append(f"{node} touches {', '.join(found)}." if found else f"{node} touches nothing.")
        if target in found:
            return " ".join(steps + [f"{target} is reached. The answer is yes."])
        for other in found:
            if other not in seen:
                seen.add(other)
                queue.append(other)
    return " ".join(steps + [f"Nothing is left to visit; {target} is not reached. The answer is no."])


_STEP = re.compile(r"(?:^|(?<=\. ))(\S+) touches (nothing|[^.]*)\.")


def trace_steps(reply: str, graph: dict) -> dict:
    """How a reply's own trace reads the graph: its steps "X touches A, B." and how many list exactly X's
    neighbours (each once, in any order), and whether the first step (the source's neighbours) is right. This separates
    the lookup a trace needs from the bookkeeping of the search and from the final answer.

    Args:
        reply: A generated reply.
        graph: The problem's graph (parsed).

    Returns:
        {"steps": number of steps, "right": steps whose list is exact, "first_right": bool or None (no steps)}.
    """
    adjacent = neighbours(graph)
    steps = [(node, [] if listed == "nothing" else listed.split(", ")) for node, listed in _STEP.findall(reply)]
    right = [node in adjacent and sorted(found) == sorted(adjacent[node]) for node, found in steps]
    first = steps[0][0] == graph["source"] and right[0] if steps else None
    return {"steps": len(steps), "right": sum(right), "first_right": first}


def problems_for(cell: str, n: int, seed: int):
    from hf_memory.graph_reasoning import generate_graph_problems

    pattern, variant = TEST_CELLS[cell]
    problems = generate_graph_problems("connectivity", pattern, variant, n=n, seed=seed)
    graphs = [json.loads(g) for g in problems["graph"]]
    return problems, graphs


def tail_examples(tokenizer, problems, graphs) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reply ids) per training item; the reply is the trace and the end-of-sequence token."""
    out = []
    for prompt, graph in zip(problems["prompt"], graphs):
        head = tokenizer(nlgift.chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        reply = tokenizer(trace_target(graph) + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        out.append((head, reply))
    return out


@torch.no_grad()
def cache_tail_inputs(model, examples, split: int, batch_size: int = 8) -> list[torch.Tensor]:
    """The hidden states entering layer `split` for each example (prompt and reply), from one forward pass of the
    frozen first layers: with right padding and causal attention, a row's own positions do not see its pads."""
    model.eval()
    cached = []
    for start in range(0, len(examples), batch_size):
        chunk = [head + reply for head, reply in examples[start : start + batch_size]]
        width = max(map(len, chunk))
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, sequence in enumerate(chunk):
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        device = model.device
        states = model.model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        states = states.hidden_states[split]
        cached += [states[row, : len(sequence)].clone() for row, sequence in enumerate(chunk)]
    return cached


_TAIL_LOCK = threading.Lock()
_CUT_DECODERS: set[int] = set()  # id() of the decoders a tail_only block holds


@contextmanager
def tail_only(model):
    """Inside the block the decoder of the peft `model` runs only its last `RECIPE["lora_layers"]` layers (it takes
    their cached inputs as `inputs_embeds`); the full layer list is back afterwards, also after an exception.

    Raises:
        RuntimeError: If the decoder is already cut (a second `tail_only` on it, from this thread or another).
    """
    decoder = model.base_model.model.model  # peft -> LlamaForCausalLM -> LlamaModel
    with _TAIL_LOCK:
        if id(decoder) in _CUT_DECODERS:
            raise RuntimeError(
                "tail_only: this model's decoder already runs only its last layers (another tail_only block holds "
                "it, in this thread or another); wait for it to end, or use a copy of the model."
            )
        _CUT_DECODERS.add(id(decoder))
    full = decoder.layers
    decoder.layers = torch.nn.ModuleList(full[len(full) - RECIPE["lora_layers"] :])
    try:
        yield decoder
    finally:
        decoder.layers = full
        with _TAIL_LOCK:
            _CUT_DECODERS.discard(id(decoder))


def batch_loss(model, decoder, examples, cached, rows: list[int]) -> torch.Tensor:
    """The mean cross-entropy of the reply tokens of `rows`, from their cached tail inputs (inside `tail_only`);
    logits are computed only at the positions that predict a reply token."""
    width = max(cached[i].shape[0] for i in rows)
    device = cached[rows[0]].device
    states = torch.zeros((len(rows), width, cached[rows[0]].shape[1]), device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    labels = torch.full((len(rows), width), -100, device=device)
    for r, i in enumerate(rows):
        prompt, reply = examples[i]
        length = len(prompt) + len(reply)
        states[r, :length] = cached[i]
        mask[r, :length] = 1
        labels[r, len(prompt) - 1 : length - 1] = torch.tensor(reply)  # position t predicts token t + 1
    hidden = decoder(inputs_embeds=states, attention_mask=mask).last_hidden_state
    where = labels != -100
    return torch.nn.functional.cross_entropy(model.base_model.model.lm_head(hidden[where]), labels[where])


def train_cached_tail(model, examples, cached, epochs: int, seed: int, on_epoch=None) -> list[float]:
    """LoRA on the last `RECIPE["lora_layers"]` layers of the peft `model`, trained on those layers' cached inputs
    (`cache_tail_inputs`) with AdamW, batches in a seeded random order, the loss on the reply tokens only.

    Returns:
        The mean loss of each epoch.
    """
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=RECIPE["lr"])
    generator = torch.Generator().manual_seed(seed)
    losses = []
    with tail_only(model) as decoder:
        model.train()
        try:
            for epoch in range(epochs):
                total = 0.0
                for order in torch.randperm(len(examples), generator=generator).split(RECIPE["batch_size"]):
                    loss = batch_loss(model, decoder, examples, cached, order.tolist())
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    total += loss.item() * len(order)
                losses.append(total / len(examples))
                if on_epoch is not None:
                    on_epoch(epoch + 1, losses[-1])
        finally:
            model.eval()
    return losses


def max_tokens(tokenizer, graphs) -> int:
    """A decoding budget for a cell: its longest gold trace plus a margin (the untuned model may ramble)."""
    return max(len(tokenizer(trace_target(g), add_special_tokens=False)["input_ids"]) for g in graphs) + 24


def score(model, tokenizer, problems, graphs, budget: int) -> tuple[list[bool], list[str]]:
    """Greedy generation scored by the `graph_reasoning` metric: per item, right or not, and the answers."""
    from hf_memory.graph_reasoning import graph_reasoning_scores

    order = sorted(range(len(graphs)), key=lambda i: len(problems["prompt"][i]))
    prompts = [problems["prompt"][i] for i in order]
    # replies end at the first "The answer is yes." / "no." (the prompt asks to end there): later text is never read
    answers = nlgift.generate_answers(model, tokenizer, prompts, budget, batch_size=32, stop_strings=STOP_STRINGS)
    by_item = [""] * len(graphs)
    for i, answer in zip(order, answers):
        by_item[i] = answer
    correct = graph_reasoning_scores(by_item, problems["graph"], return_per_sample=True)["correct"]
    return [bool(c) for c in correct], by_item


def rule_scores(problems) -> list[bool]:
    from hf_memory.graph_reasoning import graph_reasoning_scores, shortcut_answers

    answers = shortcut_answers(problems["graph"])
    return [bool(c) for c in graph_reasoning_scores(answers, problems["graph"], return_per_sample=True)["correct"]]


def run(small: bool, output: str) -> dict:
    from peft import LoraConfig, get_peft_model

    from hf_memory import load_model

    st = settings(small)
    st.update(OVERRIDES)
    recipe = dict(RECIPE)
    results = shared.resume(
        output, st, {"settings": st, "recipe": recipe, "base": {}, "rule": {}, "seeds": {}}, recipe=recipe
    )
    model, tokenizer = load_model()
    model.to(DEVICE)
    if RECIPE["lora_layers"] > model.config.num_hidden_layers:
        raise SystemExit(
            f"--lora-layers must be at most {model.config.num_hidden_layers}, got {RECIPE['lora_layers']}."
        )
    tests = {cell: problems_for(cell, st["test_items"], TEST_SEED) for cell in st["cells"]}
    budgets = {cell: min(max_tokens(tokenizer, graphs), st["max_new"] or 10**6) for cell, (_, graphs) in tests.items()}
    started = time.time()

    for cell, (problems, graphs) in tests.items():
        results["rule"][cell] = rule_scores(problems)
        if cell not in results["base"]:
            correct, answers = score(model, tokenizer, problems, graphs, budgets[cell])
            results["base"][cell] = {"correct": correct, "answers": answers}
            print(f"base {cell}: {np.mean(correct):.2f} ({time.time() - started:.0f} s)", flush=True)
            shared.save(results, output)

    layers = model.config.num_hidden_layers
    for seed in st["seeds"]:
        entry = results["seeds"].setdefault(str(seed), {"cells": {}})
        if set(entry["cells"]) >= set(st["cells"]):
            continue
        torch.manual_seed(seed)
        config = LoraConfig(
            r=RECIPE["rank"],
            lora_alpha=RECIPE["alpha"],
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            layers_to_transform=list(range(layers - RECIPE["lora_layers"], layers)),
            task_type="CAUSAL_LM",
        )
        tuned = get_peft_model(model, config)
        stem = os.path.splitext(os.path.basename(output))[0]  # one adapter folder per results file and seed
        adapter = os.path.join(os.path.dirname(os.path.abspath(output)), f".{stem}_adapter_seed{seed}")
        if entry.get("losses") and os.path.isdir(adapter):  # trained before the run stopped: load, don't retrain
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(tuned, load_file(os.path.join(adapter, "adapter_model.safetensors")))
        else:
            train, train_graphs = problems_for(TRAIN_CELL, st["train_items"], 100 + seed)
            examples = tail_examples(tokenizer, train, train_graphs)
            tick = time.time()
            cached = cache_tail_inputs(model, examples, layers - RECIPE["lora_layers"])
            entry["cache_seconds"] = round(time.time() - tick, 1)

            def report(epoch, loss):
                print(f"seed {seed} epoch {epoch}: loss {loss:.4f} ({time.time() - tick:.0f} s)", flush=True)

            entry["losses"] = train_cached_tail(tuned, examples, cached, st["epochs"], seed, on_epoch=report)
            entry["train_seconds"] = round(time.time() - tick, 1)
            entry["train_tokens"] = sum(len(h) + len(r) for h, r in examples)
            entry["device"] = DEVICE
            tuned.save_pretrained(adapter)
            shared.save(results, output)
        for cell, (problems, graphs) in tests.items():
            if cell in entry["cells"]:
                continue
            tick = time.time()
            correct, answers = score(tuned, tokenizer, problems, graphs, budgets[cell])
            entry["cells"][cell] = {"correct": correct, "answers": answers, "seconds": round(time.time() - tick, 1)}
            print(f"seed {seed} {cell}: {np.mean(correct):.2f} ({time.time() - tick:.0f} s)", flush=True)
            shared.save(results, output)
        model = tuned.unload()  # the base weights back, for the next seed
    results["machine"] = shared.machine()
    shared.save(results, output)
    return results


def summarize(results: dict) -> str:
    """The transfer table of each seed, the rule's table, and the tuned model against the rule per cell."""
    from hf_memory.graph_reasoning import transfer_report
    from hf_memory.graph_reasoning.transfer import mcnemar_exact

    base = {cell: entry["correct"] for cell, entry in results["base"].items()}
    lines = ["## The one-edge rule in place of a tuned model", ""]
    cells = [c for c in results["settings"]["cells"] if c in base]
    if TRAIN_CELL in cells:
        rule = {c: results["rule"][c] for c in cells}
        lines.append(transfer_report({c: base[c] for c in cells}, {TRAIN_CELL: rule}).to_markdown())
    for seed, entry in results["seeds"].items():
        done = [c for c in cells if c in entry["cells"]]
        if TRAIN_CELL not in done:
            continue
        tuned = {c: entry["cells"][c]["correct"] for c in done}
        lines += [
            "",
            f"## Seed {seed}: tuned on {TRAIN_CELL}, loss {entry['losses'][0]:.3f} -> {entry['losses'][-1]:.3f}",
        ]
        lines += ["", transfer_report({c: base[c] for c in done}, {TRAIN_CELL: tuned}).to_markdown(), ""]
        lines += [
            "| test | tuned | rule | tuned only / rule only | p (McNemar, tuned vs rule) |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in done:
            test = mcnemar_exact(results["rule"][c], tuned[c])
            lines.append(
                f"| {c} | {np.mean(tuned[c]):.3f} | {np.mean(results['rule'][c]):.3f} | "
                f"{test['tuned_only']} / {test['base_only']} | {test['p_value']:.3g} |"
            )
    lines += ["", "## Lookups in the tuned models' own traces", ""]
    lines += ["| seed | test | replies with a trace | first step right | steps with the exact neighbour list |"]
    lines += ["|---|---|---:|---:|---:|"]
    for seed, entry in results["seeds"].items():
        for c in [c for c in cells if c in entry["cells"]]:
            _, graphs = problems_for(c, results["settings"]["test_items"], TEST_SEED)
            read = [trace_steps(a, g) for a, g in zip(entry["cells"][c]["answers"], graphs)]
            traced = [r for r in read if r["steps"]]
            steps = sum(r["steps"] for r in read)
            lines.append(
                f"| {seed} | {c} | {len(traced)} / {len(read)} | "
                f"{sum(bool(r['first_right']) for r in traced)} / {len(traced)} | "
                f"{sum(r['right'] for r in read)} / {steps} |"
            )
    return "\n".join(lines)


OVERRIDES: dict = {}  # settings changed on the command line (`--train-items`, `--epochs`)
DEVICE = "cpu"  # `--device`: where the model runs (not part of the recipe: a results file resumes on any device)


def recipe_arguments(argv) -> list[str]:
    """Read the recipe options (`--lora-layers`, `--lr`, `--train-items`, `--epochs`) into `RECIPE` and `OVERRIDES`,
    checked before any work; the other arguments are returned for the common command line. A results file keeps
    the recipe and settings it was made with, so another recipe needs another `--output`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--lora-layers", type=int, help="LoRA on the last N layers (default 8 of 30)")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (default 3e-4)")
    parser.add_argument("--train-items", type=int, help="training items per seed (default 256)")
    parser.add_argument("--epochs", type=int, help="training epochs (default 10)")
    parser.add_argument("--device", default="cpu", help="torch device for the model, e.g. cuda (default cpu)")
    known, rest = parser.parse_known_args(argv)
    try:
        device = torch.device(known.device)
    except RuntimeError as error:
        raise SystemExit(f"--device must be a torch device such as cpu or cuda, got {known.device!r}.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here.")
    global DEVICE
    DEVICE = str(device)
    for name in ("lora_layers", "train_items", "epochs"):
        value = getattr(known, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be a positive integer, got {value}.")
    if known.lr is not None and not 0 < known.lr < 1:
        raise SystemExit(f"--lr must be in (0, 1), got {known.lr}.")
    RECIPE.update({k: v for k, v in (("lora_layers", known.lora_layers), ("lr", known.lr)) if v is not None})
    OVERRIDES.update({k: v for k, v in (("train_items", known.train_items), ("epochs", known.epochs)) if v})
    return rest


def main(argv=None) -> dict:
    argv = recipe_arguments(sys.argv[1:] if argv is None else argv)
    return shared.seeded_main(argv, __doc__, DEFAULT_OUTPUT, "a few items, one epoch", run, summarize)


if __name__ == "__main__":
    main()
