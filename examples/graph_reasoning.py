"""Graph reasoning or pattern memorization? NLGift-style transfer on the embedded SmolLM2-135M-Instruct.

1. Zero-shot: connectivity by the log-probability of " yes" vs " no" after "The answer is", per encoding; the other
   tasks by greedy generation scored with the `graph_reasoning` metric (a few items each: decoding is slow on CPU).
2. LoRA-tune on connectivity in the edge-list encoding (small graphs), optionally with goldfish loss.
3. Test the untuned and the tuned model on the same items of every encoding and of large graphs, and report
   transfer (McNemar exact) with a heat map; the same report for the direct-edge rule (`shortcut_answers`) in
   place of a tuned model, as a control.

python examples/graph_reasoning.py                  # the evidence in docs/graph_reasoning.md (about 20 min, 2 cores)
python examples/graph_reasoning.py --goldfish       # also a goldfish-tuned model
python examples/graph_reasoning.py --small          # a smoke run of every step
python examples/graph_reasoning.py --no-tuning      # the untuned model and the direct-edge rule only
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from hf_memory import GoldfishConfig, apply_goldfish, load_model
from hf_memory.graph_reasoning import (
    GRAPH_PATTERNS,
    generate_graph_problems,
    graph_reasoning_scores,
    shortcut_answers,
    transfer_report,
)


TRAIN_PATTERN = "edge_list"
# Test cells: (name, pattern, variant); "large" is the edge-list encoding on 11-25 nodes.
TEST_CELLS = [("edge_list", "semantic", "edge_list"), ("incident", "semantic", "incident")]
TEST_CELLS += [("expert", "semantic", "expert"), ("friendship", "semantic", "friendship")]
TEST_CELLS += [("large", "structural", "large")]
TRAIN_SEED, TEST_SEED = 1, 2  # different seeds: the test graphs are not the training graphs


def chat(tokenizer, prompt: str, reply: str = "") -> str:
    """The prompt as a user turn and the start of the assistant turn (plain text for a tokenizer without a chat
    template), followed by `reply`."""
    if getattr(tokenizer, "chat_template", None):
        turn = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        turn = f"User: {prompt}\nAssistant: "
    return turn + reply


def answer_first(target: str) -> str:
    """The generated target with its closing "The answer is X." moved to the front.

    Scoring reads the answer right after the prompt (log-probabilities, no decoding), so the tuned model must state
    it there; the rationale still follows it in training.
    """
    rationale, answer = target.rsplit(" The answer is ", 1)
    return f"The answer is {answer} {rationale}"


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def yes_no_correct(model, tokenizer, problems, batch_size: int = 8) -> list[bool]:
    """Per problem, whether log p(" yes") vs log p(" no") after "The answer is" picks the gold answer."""
    yes, no = (tokenizer.encode(word, add_special_tokens=False)[0] for word in (" yes", " no"))
    texts = [chat(tokenizer, prompt, "The answer is") for prompt in problems["prompt"]]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
    said_yes = [False] * len(texts)
    tokenizer.padding_side = "left"
    model.eval()
    for chunk in _batches(order, batch_size):
        batch = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        logits = model(**batch, logits_to_keep=1).logits[:, -1]
        for i, row in zip(chunk, logits):
            said_yes[i] = bool(row[yes] > row[no])
    return [(answer == "yes") == s for answer, s in zip(problems["answer"], said_yes)]


@torch.no_grad()
def generate_answers(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8, stop_strings=None
) -> list[str]:
    """Greedy answers, one per prompt, on the model's device; with `stop_strings`, each ends at the first of them."""
    tokenizer.padding_side = "left"
    model.eval()
    stop = {"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}
    answers = []
    for chunk in _batches(prompts, batch_size):
        batch = tokenizer(
            [chat(tokenizer, p) for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(model.device)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, **stop
        )
        answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def tune(
    model, tokenizer, problems, epochs: int, goldfish: bool, batch_size: int = 8, lr: float = 3e-4, seed: int = 0
):
    """LoRA on the attention and MLP projections of the last 8 layers (backward stops there: a third of the cost
    on CPU); the loss covers the reply only, with goldfish (k=4, h=13) dropping about 1 in 4 of its tokens."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    layers = model.config.num_hidden_layers
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=list(range(max(0, layers - 8), layers)),
        task_type="CAUSAL_LM",
    )
    tuned = get_peft_model(model, config)
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=lr)
    tokenizer.padding_side = "right"
    examples = []
    for prompt, target in zip(problems["prompt"], problems["target"]):
        head = tokenizer(chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        reply = tokenizer(answer_first(target) + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        examples.append((head, reply))
    goldfish_config = GoldfishConfig(k=4, h=13) if goldfish else None
    generator = torch.Generator().manual_seed(seed)
    losses = []
    tuned.train()
    for _ in range(epochs):
        for chunk in _batches(torch.randperm(len(examples), generator=generator).tolist(), batch_size):
            width = max(len(examples[i][0]) + len(examples[i][1]) for i in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                head, reply = examples[i]
                ids[row, : len(head) + len(reply)] = torch.tensor(head + reply)
                labels[row, len(head) : len(head) + len(reply)] = torch.tensor(reply)
                mask[row, : len(head) + len(reply)] = 1
            if goldfish_config is not None:
                labels = apply_goldfish(labels, ids, goldfish_config)
            loss = tuned(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    tuned.eval()
    return tuned, losses


def main(
    small: bool = False,
    output_dir: str = "docs",
    train_items: int = 160,
    test_items: int = 50,
    zero_shot_items: int = 3,
    epochs: int = 2,
    goldfish: bool = False,
    no_tuning: bool = False,
    results_file: str | None = None,
    model=None,
    tokenizer=None,
) -> dict:
    if small:
        train_items, test_items, zero_shot_items, epochs = 8, 4, 1, 1
    if model is None:
        model, tokenizer = load_model()  # the embedded SmolLM2-135M-Instruct, offline
    started = time.time()
    results = {"settings": {"train_items": train_items, "test_items": test_items, "epochs": epochs}}

    def save(stage: str) -> None:
        results["seconds"] = round(time.time() - started)
        print(stage, results["seconds"], "s", flush=True)
        if results_file is not None:
            with open(results_file, "w") as f:
                json.dump(results, f, indent=1)

    # 1. the untuned model on every connectivity test cell: its zero-shot accuracy per encoding, and the baseline
    # of the transfer table (the tuned models see the same items)
    tests = {
        name: generate_graph_problems("connectivity", p, v, n=test_items, seed=TEST_SEED) for name, p, v in TEST_CELLS
    }
    base = {name: yes_no_correct(model, tokenizer, problems) for name, problems in tests.items()}
    results["base_per_item"] = base
    results["zero_shot"] = {f"connectivity/{name}": {"log_prob_accuracy": sum(c) / len(c)} for name, c in base.items()}
    save("base scored")

    # 1b. the control: the direct-edge rule (yes iff source and target share an edge) in place of a tuned model,
    # judged by the same criteria; a pattern alone can meet them
    rule = {
        name: graph_reasoning_scores(shortcut_answers(problems["graph"]), problems["graph"], return_per_sample=True)[
            "correct"
        ]
        for name, problems in tests.items()
    }
    rule_report = transfer_report(base, {TRAIN_PATTERN: rule})
    figure = rule_report.plot(
        os.path.join(output_dir, "graph_reasoning_transfer_rule.png"),
        title="Connectivity: the direct-edge rule in place of a tuned model",
    )
    figure.clf()
    results["direct_edge_rule"] = {"table": rule_report.rows, "markdown": rule_report.to_markdown(), "per_item": rule}
    print(rule_report.to_markdown(), flush=True)

    # 2. tune on edge-list connectivity, small graphs; test everywhere
    train = generate_graph_problems("connectivity", "semantic", TRAIN_PATTERN, n=train_items, seed=TRAIN_SEED)
    recipes = [] if no_tuning else [("lora", False)] + ([("lora+goldfish", True)] if goldfish else [])
    results["recipes"] = {}
    for recipe, use_goldfish in recipes:
        tuned, losses = tune(model, tokenizer, train, epochs=epochs, goldfish=use_goldfish)
        save(f"{recipe} tuned")
        scores = {name: yes_no_correct(tuned, tokenizer, problems) for name, problems in tests.items()}
        model = tuned.unload()  # the base weights back, without the adapter, for the next recipe
        report = transfer_report(base, {TRAIN_PATTERN: scores})
        figure = report.plot(
            os.path.join(output_dir, f"graph_reasoning_transfer_{recipe.replace('+', '_')}.png"),
            title=f"Connectivity, tuned on {TRAIN_PATTERN} ({recipe})",
        )
        figure.clf()
        results["recipes"][recipe] = {
            "losses": losses,
            "table": report.rows,
            "markdown": report.to_markdown(),
            "per_item": scores,
        }
        print(report.to_markdown(), flush=True)
        save(f"{recipe} tested")

    # 3. zero-shot generation on the other tasks, per encoding (decoding is the slow part on CPU: a few items)
    for encoding in GRAPH_PATTERNS["semantic"]:
        for task in ("shortest_path", "topological_sort", "max_flow"):
            problems = generate_graph_problems(task, "semantic", encoding, n=zero_shot_items, seed=TEST_SEED)
            answers = generate_answers(model, tokenizer, problems["prompt"], max_new_tokens=8 if small else 40)
            scores = graph_reasoning_scores(answers, problems["graph"])
            results["zero_shot"][f"{task}/{encoding}"] = {
                "generation_accuracy": scores["accuracy"],
                "unparseable": scores["unparseable"],
                "answers": answers,
            }
        save(f"zero-shot {encoding}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a smoke run: a few items, one epoch")
    parser.add_argument("--output-dir", default="docs")
    parser.add_argument("--train-items", type=int, default=160)
    parser.add_argument("--test-items", type=int, default=50)
    parser.add_argument("--zero-shot-items", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--goldfish", action="store_true", help="also tune with goldfish loss (k=4, h=13)")
    parser.add_argument("--no-tuning", action="store_true", help="skip step 2: the untuned model and the rule only")
    parser.add_argument("--results-file", default=None, help="write every number (and per-item outcomes) as JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    main(**{key.replace("-", "_"): value for key, value in vars(args).items()})
