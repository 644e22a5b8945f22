"""Fact capacity against LoRA rank on the embedded SmolLM2-135M-Instruct, trained to saturation on a CPU.

LoRA sits on one module only, the last decoder block's `mlp.down_proj` (1536 -> 576; rank r trains
r * (1536 + 576) parameters). With everything else frozen and the model in eval mode, the input z of that
down_proj and the block's output h = h_mid + W_down z at every position depend on the input ids alone: after the
last block come only the final RMSNorm and the lm_head, and down_proj acts position by position. So the base model
runs ONCE over all facts (hooks on that down_proj's input and on the block's output, inside `fact_capacity`, which
also gives the capacity before training), z and h are cached at the positions that predict the value tokens, and A
(r x 1536) and B (576 x r) train on

    logits = lm_head(final_norm(h + scaling * (z @ A.T) @ B.T)),   cross-entropy over the full 49,152-token vocabulary

which is exactly what the PEFT model computes there (not an approximation). With `--modules mlp` LoRA sits on the
last block's gate_proj, up_proj and down_proj (rank r trains r * 3 * (1536 + 576) parameters); the MLP acts position
by position too, so the cache holds r (the residual entering the MLP) and n (the MLP input) instead, and the tail is

    logits = lm_head(final_norm(r + down'(silu(gate'(n)) * up'(n)))),   x' = W x + scaling * B A x for each projection

Through the SiLU gate the update moves h along directions that depend on the fact, not inside one r-dimensional
subspace as `--modules down` does. Greedy exact match = the argmax at every
value position is the value token. After each rank, A and B are copied into a real PEFT model
(`LoraConfig(r, lora_alpha=2r, target_modules=["down_proj"] or the three MLP projections,
layers_to_transform=[29])`) and
`hf_memory.fact_scaling.fact_capacity` on it must give the same count (asserted).

Facts: `SyntheticFactSet` with one-token values. Values are one "syllable" (`value_syllables=1`) out of a syllable
list of every 3-6 letter word w whose " W" (leading space, capitalised) is a single SmolLM2 token (5,346 words), so
each value is one token and each fact costs one lm_head row; entity names are two such words ("Lyme Mul"). Two
attributes with `--values` values each (default 16: 4 bits per fact); 1,000 entities = 2,000 facts = 8,000 bits.
AdamW (no weight decay), batch 64, lr 1e-2 with cosine decay to 0, 60 epochs (1e-1 and 3e-1 learned less in a
20-epoch check at rank 1).

What it showed (docs/fact_scaling.md): this module is not a capacity probe. Rank 1 knew 91 and rank 2 159 of the
2,000 facts (PEFT's own count equal), around the 125 that guessing among the 16 values gives, with the loss at
ln 16 = 2.77: the update learned the attribute's value set, not which value belongs to which entity. A rank-r
update moves h inside an r-dimensional subspace, and only tokens on the hull of the readout projected there can
win the argmax, so reachability, not parameter count, binds (1,024 values: rank 1 knew 2 of 256 facts after 125
epochs). With `--modules mlp` (LoRA on gate, up and down) the same facts are learned beyond the value set: 319 /
454 / 623 / 1,174 known at ranks 1 / 2 / 4 / 8 after 60 epochs, linear in LoRA parameters (R² 0.99) at 0.08 bits
per parameter, still a training budget rather than a capacity (the loss keeps falling with rank).

    python examples/fact_capacity_lora.py            # ranks 1, 2, 4, 8 on 2,000 facts, 60 epochs
    python examples/fact_capacity_lora.py --modules mlp   # the same with LoRA on the last block's whole MLP
    python examples/fact_capacity_lora.py --ranks 1 --values 1024 --entities 128 --epochs 125   # reachability
    python examples/fact_capacity_lora.py --small    # smoke run: 64 facts, ranks 1 and 2 (~15 s after loading)

Timings on the 2-core CPU this was written on (shared with other jobs, so they vary 2-7x): loading ~18 s; the base
model over 2,000 facts (caching, = the rank-0 capacity) and each PEFT verification pass about 1 min; one epoch 2.5 s
at rank 1 or 2 alone on the machine, 18 s with two training processes beside it (the lm_head matmul dominates at
any rank). Every phase's time is in summary.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import time

import torch


DEFAULT_DIR = os.path.join("demo_output", "fact_capacity_lora")


def settings(small: bool) -> dict:
    """Every size and count of the run, in one place."""
    if small:
        return {
            "entities": 32,
            "values": 1024,
            "ranks": [1, 2],
            "epochs": 30,
            "every": 5,
            "lr": 1e-2,
            "batch_size": 16,
            "capacity_batch_size": 64,
            "seed": 0,
            "modules": "down",
        }
    return {
        "entities": 1000,
        "values": 16,
        "ranks": [1, 2, 4, 8],
        "epochs": 60,
        "every": 5,
        "lr": 1e-2,
        "batch_size": 64,
        "capacity_batch_size": 128,
        "seed": 0,
        "modules": "down",
    }


def one_token_words(tok) -> list[str]:
    """Every 3-6 letter lowercase word w whose " W" is one token of `tok` (the syllables values are drawn from)."""
    vocab = tok.get_vocab()
    words = set()
    for key in vocab:
        if key.startswith("Ġ") and re.fullmatch(r"[A-Z][a-z]{2,5}", key[1:]):
            word = key[1:].lower()
            if tok.encode(" " + word.capitalize(), add_special_tokens=False) == [vocab[key]]:
                words.add(word)
    return sorted(words)


def build_facts(config: dict, tok):
    from hf_memory.fact_scaling import SyntheticFactSet

    return SyntheticFactSet(
        num_entities=config["entities"],
        attributes={"birthplace": config["values"], "employer": config["values"]},
        templates=["The {attribute} of {entity} is"],
        syllables=one_token_words(tok),
        name_syllables=(1, 1),
        value_syllables=1,
        seed=config["seed"],
    )


def last_block(model):
    return model.model.layers[-1]


TARGETS = {"down": ["down_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]}


@torch.no_grad()
def cache_features(base, tok, facts, batch_size: int, modules: str = "down") -> dict:
    """One `fact_capacity` pass of the base model with hooks, at the positions that predict value tokens: for
    `modules="down"` z (down_proj input) and h (last block output); for `"mlp"` r (the residual entering the last
    MLP, the input of post_attention_layernorm) and n (the MLP input, that norm's output). Also the fact each
    position belongs to, its target, and the rank-0 count.

    The batches, padding and position ids are `fact_capacity`'s own, so the cached features are the very numbers
    the PEFT verification pass computes before its LoRA terms."""
    from hf_memory.fact_scaling import encode_facts, fact_capacity

    rows = facts.rows("train", "forward", repeat=False)
    encoded = encode_facts(tok, [r["prompt"] for r in rows], [r["target"] for r in rows])
    block = last_block(base)
    if modules == "down":
        captured: dict[str, list] = {"z": [], "h": []}
        hooks = [
            block.mlp.down_proj.register_forward_hook(lambda m, args, out: captured["z"].append(args[0].detach())),
            block.register_forward_hook(
                lambda m, args, out: captured["h"].append((out[0] if isinstance(out, tuple) else out).detach())
            ),
        ]
    else:
        captured = {"r": [], "n": []}

        def keep(module, args, out):
            captured["r"].append(args[0].detach())
            captured["n"].append(out.detach())

        hooks = [block.post_attention_layernorm.register_forward_hook(keep)]
    try:
        before = fact_capacity(base, tok, facts, batch_size=batch_size)
    finally:
        for hook in hooks:
            hook.remove()
    names = list(captured)
    assert all(len(captured[k]) == math.ceil(len(encoded) / batch_size) for k in names)
    features: dict[str, list] = {k: [] for k in names}
    fact_ids, targets = [], []
    for b, batch_features in enumerate(zip(*(captured[k] for k in names))):
        batch = encoded[b * batch_size : (b + 1) * batch_size]
        width = batch_features[0].shape[1]
        for i, (_, t) in enumerate(batch):
            first = width - len(t) - 1  # left padding: the position predicting t[0]
            for k, x in zip(names, batch_features):
                features[k].append(x[i, first : first + len(t)].clone())
            fact_ids += [b * batch_size + i] * len(t)
            targets += t
    return {
        # plain tensors (not inference tensors): autograd may save them
        "features": {k: torch.cat(v).clone() for k, v in features.items()},
        "fact": torch.tensor(fact_ids),
        "target": torch.tensor(targets),
        "n_facts": len(encoded),
        "value_tokens": sorted({len(t) for _, t in encoded}),
        "before": before,
    }


def _lora_linear(x, weight, lora, scaling):
    """PEFT's LoRA Linear (no bias, no dropout): the base layer, plus the low-rank term when there is one."""
    out = torch.nn.functional.linear(x, weight)
    if lora is None:
        return out
    A, B = lora
    return out + torch.nn.functional.linear(torch.nn.functional.linear(x, A), B) * scaling


class CachedHead(torch.nn.Module):
    """The frozen tail of the model from the cached features on: for `modules="down"` h plus the down_proj LoRA
    term; for `"mlp"` r plus the last MLP with LoRA on gate, up and down; then final RMSNorm and lm_head."""

    def __init__(self, base, modules: str = "down"):
        super().__init__()
        self.modules_mode = modules
        if modules == "mlp":  # "down" needs no MLP weight: h already holds the MLP's output
            mlp = last_block(base).mlp
            assert all(getattr(mlp, name).bias is None for name in TARGETS["mlp"])
            self.mlp_weights = {name: getattr(mlp, name).weight.detach().clone() for name in TARGETS["mlp"]}
            self.act = mlp.act_fn
        self.norm = copy.deepcopy(base.model.norm).requires_grad_(False)
        self.weight = base.lm_head.weight.detach().clone()
        self.bias = None if base.lm_head.bias is None else base.lm_head.bias.detach().clone()

    def forward(self, features: dict, lora: dict | None, scaling: float):
        lora = lora or {}
        if self.modules_mode == "down":
            hidden = features["h"]
            if "down_proj" in lora:
                A, B = lora["down_proj"]
                hidden = hidden + scaling * ((features["z"] @ A.T) @ B.T)
        else:
            n, w = features["n"], self.mlp_weights
            gate = _lora_linear(n, w["gate_proj"], lora.get("gate_proj"), scaling)
            up = _lora_linear(n, w["up_proj"], lora.get("up_proj"), scaling)
            hidden = features["r"] + _lora_linear(self.act(gate) * up, w["down_proj"], lora.get("down_proj"), scaling)
        return torch.nn.functional.linear(self.norm(hidden), self.weight, self.bias)


def _select(cache: dict, index) -> dict:
    return {k: v[index] for k, v in cache["features"].items()}


@torch.no_grad()
def cached_count(head, cache, lora, scaling, chunk: int = 1024) -> tuple[int, torch.Tensor]:
    """Facts known under the LoRA weights (`{module name: (A, B)}`, None for none) from the cache: greedy exact
    match at every value position."""
    ok = []
    for start in range(0, len(cache["target"]), chunk):
        sl = slice(start, start + chunk)
        logits = head(_select(cache, sl), lora, scaling)
        ok.append(logits.argmax(-1) == cache["target"][sl])
    ok = torch.cat(ok)
    known = torch.ones(cache["n_facts"], dtype=torch.bool).scatter_reduce(0, cache["fact"], ok, "amin")
    return int(known.sum()), known


def peft_model(base, rank: int, modules: str = "down"):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=TARGETS[modules],
        layers_to_transform=[base.config.num_hidden_layers - 1],
        lora_dropout=0.0,
    )
    return get_peft_model(copy.deepcopy(base), config)


def lora_modules(model) -> dict:
    """The LoRA layers of the PEFT model by projection name (all in the last block's MLP)."""
    return {n.rsplit(".", 1)[-1]: m for n, m in model.named_modules() if hasattr(m, "lora_A") and ".mlp." in n}


def train_rank(base, tok, facts, cache, head, rank: int, config: dict) -> dict:
    """Train A, B of one rank on the cache, counting known facts every `every` epochs; then verify with PEFT."""
    from tqdm.auto import tqdm

    from hf_memory.fact_scaling import fact_capacity

    torch.manual_seed(config["seed"] + rank)
    model = peft_model(base, rank, config["modules"])  # lora_A: PEFT's own initialisation (kaiming-uniform)
    modules = lora_modules(model)
    assert sorted(modules) == sorted(TARGETS[config["modules"]])
    (scaling,) = {module.scaling["default"] for module in modules.values()}
    lora = {
        name: (
            module.lora_A["default"].weight.detach().clone().requires_grad_(True),
            module.lora_B["default"].weight.detach().clone().requires_grad_(True),
        )
        for name, module in modules.items()
    }
    tensors = [t for pair in lora.values() for t in pair]
    assert all(torch.all(B == 0) for _, B in lora.values()) and scaling == 2.0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == sum(t.numel() for t in tensors)
    optimizer = torch.optim.AdamW(tensors, lr=config["lr"], weight_decay=0.0)
    n = len(cache["target"])
    steps = config["epochs"] * math.ceil(n / config["batch_size"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)  # decays to 0: the count settles
    generator = torch.Generator().manual_seed(config["seed"])
    curve = [(0, cached_count(head, cache, lora, scaling)[0])]
    losses = []
    start = time.time()
    train_seconds = 0.0
    bar = tqdm(range(1, config["epochs"] + 1), desc=f"rank {rank}", leave=False)
    for epoch in bar:
        t0 = time.time()
        total = 0.0
        for idx in torch.randperm(n, generator=generator).split(config["batch_size"]):
            logits = head(_select(cache, idx), lora, scaling)
            loss = torch.nn.functional.cross_entropy(logits, cache["target"][idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        train_seconds += time.time() - t0
        losses.append(round(total / n, 4))
        if epoch % config["every"] == 0 or epoch == config["epochs"]:
            curve.append((epoch, cached_count(head, cache, lora, scaling)[0]))
            bar.set_postfix(loss=losses[-1], known=curve[-1][1])
    count, known = cached_count(head, cache, lora, scaling)
    train_total = time.time() - start
    t0 = time.time()
    for name, (A, B) in lora.items():
        modules[name].lora_A["default"].weight.data.copy_(A.detach())
        modules[name].lora_B["default"].weight.data.copy_(B.detach())
    verified = fact_capacity(model, tok, facts, batch_size=config["capacity_batch_size"])
    verify_seconds = time.time() - t0
    disagree = int((known != torch.tensor(verified.known)).sum())
    assert verified.count == count and disagree == 0, (rank, count, verified.count, disagree)
    print(f"rank {rank}: {count}/{cache['n_facts']} facts (PEFT fact_capacity: {verified.count})", flush=True)
    return {
        "rank": rank,
        "trainable_params": trainable,
        "capacity": count,
        "peft_capacity": verified.count,
        "disagreements": disagree,
        "curve": curve,
        "loss": losses,
        "bits_per_param": count * cache["bits_per_fact"] / trainable,
        "seconds": {
            "train_and_measure": round(train_total, 1),
            "train_only": round(train_seconds, 1),
            "per_epoch": round(train_seconds / config["epochs"], 2),
            "peft_verification": round(verify_seconds, 1),
        },
    }


def analyse(runs: list[dict], bits_per_fact: float) -> dict | None:
    """The linear law fitted to capacity against trainable parameters (needs 3 ranks)."""
    from hf_memory.fact_scaling import fit_linear_capacity

    if len({r["trainable_params"] for r in runs}) < 2 or len(runs) < 3:
        return None
    fit = fit_linear_capacity([r["trainable_params"] for r in runs], [r["capacity"] for r in runs])
    return {
        "params": fit.params,
        "ci": fit.ci,
        "r2": fit.r2,
        "facts_per_param": fit.params["slope"],
        "bits_per_param": fit.params["slope"] * bits_per_fact,
        "bits_per_param_ci": [v * bits_per_fact for v in fit.ci["slope"]],
    }


def plot(summary: dict, folder: str) -> list[str]:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = summary["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        e, c = zip(*run["curve"])
        axes[0].plot(e, c, "-o", ms=3, label=f"rank {run['rank']} ({run['trainable_params']:,} params)")
    axes[0].axhline(summary["capacity_before"], color="grey", ls=":", label="before training")
    axes[0].set(xlabel="epochs", ylabel="facts known (greedy exact match)", title="capacity vs epochs")
    axes[0].legend(fontsize=8)
    params = np.array([0] + [r["trainable_params"] for r in runs])
    axes[1].plot(params, [summary["capacity_before"]] + [r["capacity"] for r in runs], "o", label="measured")
    fit = summary.get("fit")
    if fit:
        grid = np.linspace(0, params.max() * 1.1, 50)
        axes[1].plot(
            grid,
            fit["params"]["slope"] * grid + fit["params"]["intercept"],
            "-",
            label=f"linear fit: {fit['bits_per_param']:.2f} bits/param, R²={fit['r2']:.3f}",
        )
    axes[1].axhline(summary["facts"], color="grey", ls=":", label="facts in the set")
    axes[1].set(xlabel="trainable LoRA parameters", ylabel="facts known", title="capacity vs LoRA size")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(folder, "fact_capacity_lora.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="smoke run (~20 s after the model loads)")
    parser.add_argument("--output-dir", default=DEFAULT_DIR)
    parser.add_argument("--ranks", type=int, nargs="+", help="LoRA ranks (default 1 2 4 8; --small: 1 2)")
    parser.add_argument("--entities", type=int, help="entities (2 facts each)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--every", type=int, help="count known facts every this many epochs")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--values", type=int, help="value-set size of each of the 2 attributes (log2 = bits/fact)")
    parser.add_argument("--batch-size", type=int, help="facts per AdamW step")
    parser.add_argument(
        "--modules",
        choices=sorted(TARGETS),
        help="LoRA on the last block's down_proj only (default), or on its whole MLP: gate, up and down",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.output_dir, exist_ok=True)
    config = settings(args.small)
    for key in ("ranks", "entities", "epochs", "every", "lr", "values", "batch_size", "modules"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    from hf_memory import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    seconds: dict = {}
    try:
        t0 = time.time()
        base, tok = load_model()
        base.eval().requires_grad_(False)
        seconds["load"] = round(time.time() - t0, 1)
        t0 = time.time()
        facts = build_facts(config, tok)
        seconds["facts"] = round(time.time() - t0, 1)
        bits_per_fact = facts.information_bits() / len(facts)
        t0 = time.time()
        cache = cache_features(base, tok, facts, config["capacity_batch_size"], config["modules"])
        cache["bits_per_fact"] = bits_per_fact
        head = CachedHead(base, config["modules"])
        seconds["cache_and_rank0"] = round(time.time() - t0, 1)
        rank0 = cached_count(head, cache, None, 0.0)[0]
        assert rank0 == cache["before"].count, (rank0, cache["before"].count)
        print(
            f"{len(facts)} facts, {bits_per_fact:.2f} bits each ({facts.information_bits():,.0f} bits), value tokens "
            f"per fact {cache['value_tokens']}; known before training: {rank0}",
            flush=True,
        )
        runs = []
        for rank in config["ranks"]:
            runs.append(train_rank(base, tok, facts, cache, head, rank, config))
    finally:
        torch.set_num_threads(threads)
    seconds["ranks"] = {r["rank"]: r["seconds"] for r in runs}
    summary = {
        "small": args.small,
        "settings": config,
        "torch_threads": os.cpu_count() or 1,
        "model": "SmolLM2-135M-Instruct (embedded GGUF), LoRA on layers[-1].mlp: "
        + ", ".join(TARGETS[config["modules"]]),
        "facts": len(facts),
        "entities": len(facts.entities),
        "value_set_sizes": {k: len(v) for k, v in facts.values.items()},
        "syllables": len(facts.syllables),
        "bits_per_fact": bits_per_fact,
        "total_bits": facts.information_bits(),
        "value_tokens_per_fact": cache["value_tokens"],
        "example_fact": facts.rows(repeat=False)[0]["text"],
        "capacity_before": rank0,
        "capacity_before_peft": cache["before"].count,
        "runs": runs,
        "fit": analyse(runs, bits_per_fact),
        "seconds": seconds,
    }
    summary["plots"] = plot(summary, args.output_dir)
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1, default=str)[:4000])
    return summary


if __name__ == "__main__":
    main()
