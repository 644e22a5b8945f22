"""MemControl on SmolLM2-135M: which layers' attention / FFN may learn a set of documents by LoRA without the model
reproducing them verbatim, at a held-out loss close to all-layers LoRA?

The documents are the goldfish demo's (standard-library docstrings cut to 64 tokens): the first `docs` are trained
on, the next `held_out` measure the held-out loss. The search space is the attention and the FFN of a few evenly
spaced layers (10 groups by default: a deep LM has 60 and a short CPU search cannot cover them); NSGA-II runs a few
trials of a short LoRA run each. Baselines trained the same way: full fine-tuning (every parameter, at its own
`--full-lr`), all-layers LoRA (attention + FFN of every layer), last-FFN LoRA (FastMem's target) and all-layers LoRA
with the goldfish loss (k = 4).

    python examples/memcontrol_lm.py              # ~20 min on 2 busy CPU cores (8 docs, 10 steps, 3 trials)
    python examples/memcontrol_lm.py --docs 16 --steps 24 --batch-size 8 --trials 12 --layers 5   # a GPU run
    python examples/memcontrol_lm.py --small      # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from hf_memory import document_windows, load_model, stdlib_docstrings
from hf_memory.goldfish import GoldfishConfig, goldfish_mask
from hf_memory.memcontrol import (
    MemControlMask,
    MemControlSearch,
    causal_lm_loss,
    count_parameters,
    extraction_rate,
    maskable_groups,
    train_causal_lm,
)


DEFAULT_DIR = os.path.join("demo_output", "memcontrol_lm")


def goldfish_train_fn(steps: int, batch_size: int, seed: int = 0, k: int = 4):
    """`train_causal_lm`'s loop with the goldfish loss: about 1 in k labels dropped, by a hash of the context."""
    config = GoldfishConfig(k=k, h=13)

    def train(model, train_data, mask):
        sequences = [torch.as_tensor(s) for s in train_data]
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=mask.lr, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            index = torch.randint(len(sequences), (batch_size,), generator=generator)
            ids = torch.stack([sequences[i] for i in index.tolist()])
            labels = ids.masked_fill(goldfish_mask(ids, config), -100)
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
        model.eval()

    return train


def main(
    output_dir: str = DEFAULT_DIR,
    small: bool = False,
    docs: int = 8,
    held_out: int = 8,
    steps: int = 10,
    batch_size: int = 4,
    lr: float = 3e-3,
    full_lr: float = 1e-4,
    lora_r: int = 8,
    layers: int = 3,
    trials: int = 3,
    num_threads: int = 1,
) -> dict:
    torch.set_num_threads(num_threads)
    if small:
        docs, held_out, steps, batch_size, trials, layers = 4, 2, 1, 2, 2, 2
    started = time.time()
    os.makedirs(output_dir, exist_ok=True)
    base, tokenizer = load_model()
    base.eval()
    print(f"loaded in {time.time() - started:.0f} s", flush=True)
    windows = document_windows(tokenizer, stdlib_docstrings(), 64)
    train, held = windows[:docs], windows[docs : docs + held_out]
    all_groups = list(maskable_groups(base))
    num_layers = len(all_groups) // 2
    chosen = sorted({round(i * (num_layers - 1) / (layers - 1)) for i in range(layers)})
    groups = [g for g in all_groups if int(g.split(".")[2]) in chosen]

    def factory():
        return copy.deepcopy(base)

    def score(model) -> dict:
        return {
            "extraction": extraction_rate(model, train, 32, 32, batch_size=16),
            "exact_match": extraction_rate(model, train, 32, 32, metric="exact_match", batch_size=16),
            "heldout_loss": causal_lm_loss(model, held),
        }

    results: dict = {
        "machine": f"{os.cpu_count()} CPU cores, {num_threads} torch threads",
        "small": small,
        "settings": {
            "docs": docs,
            "held_out": held_out,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "full_lr": full_lr,
            "lora_r": lora_r,
            "searched_layers": chosen,
            "groups": groups,
        },  # fmt: skip
    }
    results["before fine-tuning"] = score(base)
    mask_kwargs = {"lora_r": lora_r, "lora_alpha": 2 * lora_r}

    # Baselines, trained like every trial (seeded: a rerun with the same settings reuses baselines.json).
    cache_path = os.path.join(output_dir, "baselines.json")
    settings_key = json.dumps(results["settings"], sort_keys=True)
    cache = {}
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            stored = json.load(f)
        cache = stored["results"] if stored.get("settings") == settings_key else {}

    def baseline(label, mask, train_fn=None, whole_model=False):
        if label in cache:
            results[label] = cache[label]
            return
        t0 = time.time()
        torch.manual_seed(0)  # as the search seeds each trial's adapter initialization
        if whole_model:  # every parameter trains: embeddings and norms too, which no group holds
            model = factory().requires_grad_(True)
        else:
            model = mask.apply(factory())
        trainable, total = count_parameters(model)
        (train_fn or (lambda m, d, k: train_causal_lm(m, d, k, steps=steps, batch_size=batch_size)))(
            model, train, mask
        )
        out = {**score(model), "trainable_fraction": trainable / total, "seconds": round(time.time() - t0, 1)}
        print(label, out, flush=True)
        results[label] = cache[label] = out
        with open(cache_path, "w") as f:
            json.dump({"settings": settings_key, "results": cache}, f, indent=2)

    every = MemControlMask.for_model(base, None, lr=lr, **mask_kwargs)
    full = MemControlMask(["all"], [1], method="full", lr=full_lr)  # groups unused: the whole model trains
    baseline("full fine-tune (every parameter)", full, whole_model=True)
    baseline("all-layers LoRA", every)
    baseline("last-FFN LoRA", MemControlMask.for_model(base, [all_groups[-1]], lr=lr, **mask_kwargs))
    baseline("all-layers LoRA + goldfish (k=4)", every, goldfish_train_fn(steps, batch_size))

    # The search.
    t0 = time.time()
    search = MemControlSearch(
        factory,
        train,
        held,
        objectives=["extraction", "heldout_loss"],
        n_trials=trials,
        sampler="nsga2",
        storage=f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'study.db'))}",
        study_name=f"smollm2_{docs}_{steps}_{lr}_b{batch_size}_r{lora_r}_{'-'.join(map(str, chosen))}",
        groups=groups,
        lr=lr,
        train_steps=steps,
        batch_size=batch_size,
        mask_kwargs=mask_kwargs,
        objective_kwargs={"extraction": {"prefix_len": 32, "suffix_len": 32, "batch_size": 16}},
        show_progress=not small,
    )
    os.makedirs(output_dir, exist_ok=True)
    result = search.run()
    result.save(os.path.join(output_dir, "search.json"))
    results["search"] = {
        "seconds": round(time.time() - t0, 1),
        "trials": [
            {"mask": t.mask.selected_groups, **t.values, "trainable_fraction": t.trainable_fraction}
            for t in result.trials
        ],
        "pareto_front": [
            {"mask": t.mask.selected_groups, **t.values, "trainable_fraction": t.trainable_fraction}
            for t in result.pareto_front
        ],
    }
    results["total_seconds"] = round(time.time() - started, 1)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=DEFAULT_DIR)
    parser.add_argument("--small", action="store_true", help="A smoke run: two trials of one step.")
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--layers", type=int, default=3, help="Evenly spaced layers whose attention/FFN are searched.")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--full-lr", type=float, default=1e-4, help="Learning rate of the full fine-tuning arm.")
    parser.add_argument("--num-threads", type=int, default=1)
    print(json.dumps(main(**vars(parser.parse_args())), indent=2))
