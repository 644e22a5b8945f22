"""Fact-memorization scaling laws (Lu et al. 2024) measured on tiny Llama models trained here, on a CPU.

* Scaling: several model sizes, each trained on more facts than it can hold (multi-token names spelled from a
  small shared syllable vocabulary, one-token values out of 256), capacity measured every few epochs; capacity at
  the end of training against non-embedding parameters, fitted by the linear law (R², bits per parameter).
* Epochs: one size's capacity curve fitted by C(E) = c_max - alpha * exp(-beta * E).
* Preference: Zipf-frequent facts and two value-set sizes (16 and 256) in a model too small for all of them.
* Overwriting: set A then set B, against A and B mixed.
* Compatibility: facts alone against facts plus their inverses.
* Generalization: rule facts with a held-out quarter of the entities, next to random facts.
* Paraphrases: the same facts with one prompt template and with three.
* LoRA on the embedded SmolLM2: facts learned against LoRA rank (with --lora).

Every model trains on one CPU thread (tiny models gain nothing from more, and lose a lot on a busy machine); every
training job of every part (one per scaling size, one per other part) runs in a pool of `--workers` processes,
longest first. The LoRA part runs after them, in the main process, on every thread.

    python examples/fact_scaling.py                     # the evidence in docs/fact_scaling.md (~14 min on 2 cores)
    python examples/fact_scaling.py --scaling-epochs 240  # run D of the docs: the scaling part twice as long
    python examples/fact_scaling.py --only lora         # the LoRA part alone (~25 min on 2 busy cores)
    python examples/fact_scaling.py --small             # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import time

import torch


DEFAULT_DIR = os.path.join("demo_output", "fact_scaling")
DEFAULT_PARTS = ("scaling", "paraphrase", "preference", "overwriting", "compatibility", "generalization")
DOCS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def settings(small: bool) -> dict:
    """Every size and count of the run, in one place."""
    if small:
        return {
            "scaling": {"entities": 150, "value_set": 64, "hidden": [8, 16, 24], "epochs": 12, "every": 4},
            "preference": {"entities": 80, "hidden": 8, "epochs": 8},
            "overwriting": {"entities": 40, "hidden": 8, "epochs": 10},
            "compatibility": {"entities": 40, "hidden": 8, "epochs": 10},
            "generalization": {"entities": 120, "hidden": 8, "epochs": 10},
            "paraphrase": {"entities": 60, "hidden": 8, "epochs": 6},
            "lora": {"facts": 8, "ranks": [1, 4], "epochs": 2, "layers": 2, "lr": 5e-3},
        }
    return {
        # learning rate per size: picked by a sweep that is not committed (docs/fact_scaling.md says so under
        # "Removed"), so these rates are settings, not evidence; the sweep's figures are not quoted anywhere
        "scaling": {
            "entities": 12000,
            "value_set": 256,
            "hidden": [16, 24, 32, 40],
            "epochs": 120,
            "every": 5,
            "lr": {16: learning_rate(16), 24: learning_rate(24), 32: 1.5e-3, 40: 1.5e-3},
        },
        "preference": {"entities": 1500, "hidden": 16, "epochs": 60},
        "overwriting": {"entities": 600, "hidden": 16, "epochs": 60},
        "compatibility": {"entities": 800, "hidden": 16, "epochs": 60},
        "generalization": {"entities": 1200, "hidden": 16, "epochs": 60},
        "paraphrase": {"entities": 2000, "hidden": 16, "epochs": 60},
        "lora": {"facts": 32, "ranks": [1, 4, 16], "epochs": 15, "layers": 8, "lr": 5e-3},
    }


def learning_rate(hidden: int) -> float:
    """The preference, overwriting, compatibility, generalization and paraphrase parts' rate: 3e-3 at width 32,
    scaled by sqrt(32 / width), from a two-point check at width 32 (1e-2 stayed at chance level for 40 epochs, 3e-3
    learned). The scaling part takes a rate per size from a sweep that is not committed instead (`settings`)."""
    return 3e-3 * math.sqrt(32 / hidden)


# every run trains the same way; only the epochs and the per-size learning rate change
RECIPE = {"batch_size": 128, "warmup_steps": 50, "schedule": "cosine"}


def tiny_llama(vocab_size: int, hidden: int, seed: int = 0):
    """A 2-layer Llama of width `hidden` (MLP 2x), tied embeddings, eager attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


def scaling_fact_set(entities: int, value_set: int):
    from hf_memory.fact_scaling import SyntheticFactSet

    return SyntheticFactSet(
        num_entities=entities,
        attributes={"birthplace": value_set, "employer": value_set},
        templates=["{entity} {attribute}"],
        name_syllables=(1, 2),
        seed=0,
    )


def train_one_size(job: tuple) -> dict:
    """Train one size on the scaling fact set; capacity every `every` epochs (run in a worker process)."""
    from hf_memory.fact_scaling import fact_capacity, non_embedding_parameters, train_on_facts

    hidden, entities, value_set, epochs, every, lr, seed = job
    facts = scaling_fact_set(entities, value_set)
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok), hidden, seed=seed)
    start = time.time()
    curve = []

    def measure(epoch, model):
        if epoch % every == 0 or epoch == epochs:
            curve.append((epoch, fact_capacity(model, tok, facts, batch_size=4096).count))

    curve.append((0, fact_capacity(model, tok, facts, batch_size=4096).count))
    lr = learning_rate(hidden) if lr is None else lr
    train_on_facts(
        model,
        tok,
        facts,
        epochs=epochs,
        lr=lr,
        **RECIPE,
        seed=seed,
        on_epoch_end=measure,
    )
    return {
        "hidden": hidden,
        "non_embedding_params": non_embedding_parameters(model),
        "lr": lr,
        "curve": curve,
        "capacity": curve[-1][1],
        "seconds": round(time.time() - start, 1),
    }


def scaling_jobs(config: dict) -> list[tuple]:
    """One job per model size: (hidden, entities, value set, epochs, measure every, learning rate or None, seed)."""
    rates = config.get("lr") or {}  # width -> rate; a width not in it: learning_rate(hidden), as the other parts use
    return [
        (
            h,
            config["entities"],
            config["value_set"],
            config["epochs"],
            config["every"],
            rates.get(h),
            config.get("seed", 0),
        )
        for h in sorted(config["hidden"], reverse=True)
    ]


def _inflection(counts) -> int:
    """The index of the end of the epoch interval with the largest gain: the approach to saturation starts there."""
    growth = [b - a for a, b in zip(counts, counts[1:])]
    return 1 + growth.index(max(growth))


def analyse_scaling(config: dict, sizes: list[dict]) -> dict:
    """The laws fitted to the sizes' curves: capacity at the last epoch against parameters, and the epoch curve of
    the middle size, on every point and from its inflection (the end of the epoch with the largest gain) on: before
    it a tiny model's curve is a slow start, flat and then accelerating, which a negative exponential cannot
    follow; after it the curve approaches its limit. Each size's own epoch law, fitted from its inflection, gives
    its limit C*; the linear law is fitted to those limits too (`fit_on_limits`)."""
    from hf_memory.fact_scaling import fit_epoch_capacity, fit_linear_capacity, required_scale

    facts = scaling_fact_set(config["entities"], config["value_set"])
    bits_per_fact = math.log2(config["value_set"])
    for size in sizes:
        size["curve"] = [tuple(point) for point in size["curve"]]
        size["bits_per_param"] = size["capacity"] * bits_per_fact / size["non_embedding_params"]
        last = [c for e, c in size["curve"] if e >= 0.8 * config["epochs"]]
        size["gain_last_20pct"] = last[-1] - last[0]
    params = [s["non_embedding_params"] for s in sizes]
    capacities = [s["capacity"] for s in sizes]
    fit = fit_linear_capacity(params, capacities)
    middle = sizes[len(sizes) // 2]
    epochs, counts = zip(*middle["curve"])
    epoch_fit = fit_epoch_capacity(epochs, counts)
    onset = _inflection(counts)
    onset_fit = fit_epoch_capacity(epochs[onset:], counts[onset:]) if len(epochs) - onset >= 3 else None
    # Each size's limit C* from its own epoch law (fitted from its inflection on): a capacity at saturation that
    # the curve is heading to, extrapolated where the last epoch is still climbing; the size law fitted to those.
    for size in sizes:
        size_epochs, size_counts = zip(*size["curve"])
        start = _inflection(size_counts)
        try:
            limit = fit_epoch_capacity(size_epochs[start:], size_counts[start:])
        except ValueError:  # too few points after the inflection, or no fit (a smoke run)
            size["limit"] = None
            continue
        size["limit"] = {"from_epoch": size_epochs[start], "c_max": limit.params["c_max"]}
        size["limit"].update(c_max_ci=limit.ci["c_max"], r2=limit.r2)
    limits = [s["limit"]["c_max"] if s["limit"] else None for s in sizes]
    limit_fit = fit_linear_capacity(params, limits) if None not in limits else None
    scale = required_scale(100e6, fit, onset_fit or epoch_fit, fraction=0.95)  # ~Wikidata-sized: 100M facts
    return {
        "facts": len(facts),
        "bits_per_fact": bits_per_fact,
        "total_bits": facts.information_bits(),
        "chance": len(facts) / config["value_set"],
        "sizes": sizes,
        "fit": {
            "params": fit.params,
            "ci": fit.ci,
            "r2": fit.r2,
            "bits_per_param": fit.params["slope"] * bits_per_fact,
        },
        "fit_on_limits": None
        if limit_fit is None
        else {
            "params": limit_fit.params,
            "ci": limit_fit.ci,
            "r2": limit_fit.r2,
            "bits_per_param": limit_fit.params["slope"] * bits_per_fact,
        },
        "epoch_fit": {"hidden": middle["hidden"], "params": epoch_fit.params, "ci": epoch_fit.ci, "r2": epoch_fit.r2},
        "epoch_fit_from_onset": None
        if onset_fit is None
        else {"from_epoch": epochs[onset], "params": onset_fit.params, "ci": onset_fit.ci, "r2": onset_fit.r2},
        "required_for_100M_facts": {"non_embedding_params": scale.non_embedding_params, "epochs": scale.epochs},
    }


def run_preference(config: dict) -> dict:
    from hf_memory.fact_scaling import SyntheticFactSet, preference_experiment

    facts = SyntheticFactSet(
        num_entities=config["entities"],
        attributes={"hobby": 16, "employer": 256},
        templates=["{entity} {attribute}"],
        name_syllables=(1, 2),
        zipf_exponent=0.7,
        max_repetitions=64,
        seed=1,
    )
    tok = facts.build_tokenizer()
    out = preference_experiment(
        tiny_llama(len(tok), config["hidden"]),
        tok,
        facts,
        epochs=config["epochs"],
        lr=learning_rate(config["hidden"]),
        **RECIPE,
    )
    out["capacity"] = out["capacity"].count
    out["facts"] = len(facts)
    out["rows_per_epoch"] = sum(f.repetitions for f in facts.train)
    return out


def run_overwriting(config: dict) -> dict:
    from hf_memory.fact_scaling import SyntheticFactSet, overwriting_experiment

    facts = SyntheticFactSet(
        num_entities=2 * config["entities"],
        attributes={"employer": 256},
        templates=["{entity} {attribute}"],
        name_syllables=(1, 2),
        seed=2,
    )
    tok = facts.build_tokenizer()
    n = config["entities"]
    a, b = facts.select(range(n)), facts.select(range(n, 2 * n))
    return overwriting_experiment(
        lambda: tiny_llama(len(tok), config["hidden"], seed=0),
        tok,
        a,
        b,
        epochs=config["epochs"],
        lr=learning_rate(config["hidden"]),
        **RECIPE,
    )


def run_compatibility(config: dict) -> dict:
    from hf_memory.fact_scaling import SyntheticFactSet, compatibility_experiment

    facts = SyntheticFactSet(
        num_entities=config["entities"],
        attributes={"code": max(config["entities"], 64)},
        templates=["{entity} {attribute}"],
        inverse=True,
        inverse_templates=["{value} {attribute} of"],
        name_syllables=(1, 2),
        seed=3,
    )
    tok = facts.build_tokenizer()
    return compatibility_experiment(
        lambda: tiny_llama(len(tok), config["hidden"], seed=0),
        tok,
        facts,
        epochs=config["epochs"],
        lr=learning_rate(config["hidden"]),
        **RECIPE,
    )


def run_generalization(config: dict) -> dict:
    """Rule facts (the value follows the first syllable of the surname) with a quarter of the entities held out,
    next to random facts: memorized facts are known only where trained; a learned rule also answers for entities
    never seen."""
    from hf_memory.fact_scaling import SyntheticFactSet, fact_capacity, train_on_facts

    facts = SyntheticFactSet(
        num_entities=config["entities"],
        attributes={"employer": 64},
        rule_attributes={"birthplace": 16},
        templates=["{entity} {attribute}"],
        held_out_fraction=0.25,
        name_syllables=(1, 2),
        seed=5,
    )
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok), config["hidden"])
    curve = []

    def measure(epoch, model):
        if epoch % 10 == 0 or epoch == config["epochs"]:
            held_out = fact_capacity(model, tok, facts, split="held_out", batch_size=4096)
            curve.append((epoch, held_out.count))

    train_on_facts(
        model, tok, facts, epochs=config["epochs"], lr=learning_rate(config["hidden"]), **RECIPE, on_epoch_end=measure
    )
    trained = fact_capacity(model, tok, facts, batch_size=4096).by_attribute
    held_out = fact_capacity(model, tok, facts, split="held_out", batch_size=4096)
    return {
        "trained_random": trained["employer"],
        "trained_rule": trained["birthplace"],
        "held_out_rule": {"known": held_out.count, "total": held_out.total},
        "chance": {"random": 1 / 64, "rule": 1 / 16},
        "held_out_curve": curve,
    }


def run_paraphrase(config: dict) -> dict:
    """The same facts trained with one prompt template and with three paraphrases (same direction, same
    structure: entity then attribute), in a model too small for all of them, against one template trained on as
    many rows: do paraphrases share storage (capacity per unique fact kept) or compete for it?"""
    from hf_memory.fact_scaling import SyntheticFactSet, fact_capacity, train_on_facts

    templates = ["{entity} {attribute}", "{entity} has {attribute}", "of {entity} the {attribute}"]
    out = {}
    # one template for as many epochs, and for as many rows seen (3x the epochs): the control for 3x the updates
    for name, k, epochs in (
        ("templates_1", 1, config["epochs"]),
        ("templates_1_same_rows", 1, 3 * config["epochs"]),
        ("templates_3", 3, config["epochs"]),
    ):
        facts = SyntheticFactSet(
            num_entities=config["entities"],
            attributes={"employer": 256},
            templates=templates[:k],
            name_syllables=(1, 2),
            seed=6,
        )
        tok = facts.build_tokenizer()
        model = tiny_llama(len(tok), config["hidden"])
        train_on_facts(model, tok, facts, epochs=epochs, lr=learning_rate(config["hidden"]), **RECIPE)
        masks = [fact_capacity(model, tok, facts, template=t, batch_size=4096).known for t in range(k)]
        every = [all(known) for known in zip(*masks)]
        out[name] = {
            "epochs": epochs,
            "facts": len(facts),
            "known_by_template": [sum(mask) for mask in masks],
            "known_in_every_template": sum(every),
            "rows_per_epoch": len(facts) * k,
        }
    return out


def run_lora(config: dict) -> dict:
    """LoRA (q, v, up, down projections of the last `layers` blocks) on the embedded SmolLM2, one run per rank."""
    import copy

    from peft import LoraConfig, get_peft_model

    from hf_memory import load_model
    from hf_memory.fact_scaling import SyntheticFactSet, fact_capacity, non_embedding_parameters, train_on_facts

    facts = SyntheticFactSet(
        num_entities=config["facts"],
        attributes={"birthplace": 64},
        templates=["The birthplace of {entity} is"],
        seed=4,
    )
    base, tok = load_model()
    layers = base.config.num_hidden_layers
    before = fact_capacity(base, tok, facts, batch_size=64).count
    out = []
    for rank in config["ranks"]:
        lora = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
            layers_to_transform=list(range(layers - config["layers"], layers)),
            lora_dropout=0.0,
        )
        model = get_peft_model(copy.deepcopy(base), lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        start = time.time()
        train_on_facts(model, tok, facts, epochs=config["epochs"], lr=config["lr"], batch_size=None)
        after = fact_capacity(model, tok, facts, batch_size=64).count
        out.append(
            {"rank": rank, "trainable_params": trainable, "known": after, "seconds": round(time.time() - start, 1)}
        )
        print(f"lora rank {rank}: {after}/{len(facts)} facts", flush=True)
        del model
    return {
        "facts": len(facts),
        "known_before": before,
        "non_embedding_params": non_embedding_parameters(base),
        "runs": out,
    }


PART_RUNNERS = {
    "scaling": train_one_size,  # one job per size; `analyse_scaling` joins them
    "preference": run_preference,
    "overwriting": run_overwriting,
    "compatibility": run_compatibility,
    "generalization": run_generalization,
    "paraphrase": run_paraphrase,
}


def run_job(job: tuple) -> tuple:
    """Run one training job on one thread (in a worker process or in the main one): (part, argument) ->
    (part, result, seconds)."""
    part, argument = job
    torch.set_num_threads(1)
    start = time.time()
    return part, PART_RUNNERS[part](argument), round(time.time() - start, 1)


def run_parts(parts: list[str], config: dict, workers: int):
    """Every training job of the parts, `workers` at a time, the longest first (the scaling sizes, then the parts
    in the order of `DEFAULT_PARTS`, longest first there too); yields (part, result, seconds) as each ends."""
    jobs = [("scaling", job) for job in scaling_jobs(config["scaling"])] if "scaling" in parts else []
    jobs += [(part, config[part]) for part in DEFAULT_PARTS if part in parts and part != "scaling"]
    if workers <= 1:
        yield from map(run_job, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap_unordered(run_job, jobs, chunksize=1)


def plot(summary: dict, folder: str) -> list[str]:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    scaling = summary["scaling"]
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    params = np.array([s["non_embedding_params"] for s in scaling["sizes"]])
    axes[0].plot(params, [s["capacity"] for s in scaling["sizes"]], "o", label="measured")
    grid = np.linspace(0, params.max() * 1.1, 50)
    fit = scaling["fit"]["params"]
    axes[0].plot(grid, fit["slope"] * grid + fit["intercept"], "-", label=f"linear fit, R²={scaling['fit']['r2']:.3f}")
    limited = [s for s in scaling["sizes"] if s.get("limit")]
    if limited and scaling.get("fit_on_limits"):
        c_max = np.array([s["limit"]["c_max"] for s in limited])
        ci = np.array([s["limit"]["c_max_ci"] for s in limited])
        axes[0].errorbar(
            [s["non_embedding_params"] for s in limited],
            c_max,
            yerr=[c_max - ci[:, 0], ci[:, 1] - c_max],
            fmt="s",
            capsize=3,
            label="limit C* of each epoch curve (95% CI)",
        )
        lf = scaling["fit_on_limits"]
        axes[0].plot(
            grid, lf["params"]["slope"] * grid + lf["params"]["intercept"], "--", label=f"fit on C*, R²={lf['r2']:.3f}"
        )
    top = max(s["capacity"] for s in scaling["sizes"])
    if scaling["facts"] < 1.5 * top:  # a far-away ceiling would squash the points
        axes[0].axhline(scaling["facts"], color="grey", ls=":", label="facts in the set")
    axes[0].set(
        xlabel="non-embedding parameters",
        ylabel="facts known (greedy exact match)",
        title=f"capacity vs size ({scaling['facts']:,} facts in the set)",
    )
    axes[0].legend(fontsize=8)
    for size in scaling["sizes"]:
        e, c = zip(*size["curve"])
        axes[1].plot(e, c, "-", label=f"{size['non_embedding_params']:,} params")
    ef = scaling["epoch_fit"]["params"]
    middle = next(s for s in scaling["sizes"] if s["hidden"] == scaling["epoch_fit"]["hidden"])
    grid = np.linspace(0, middle["curve"][-1][0], 100)
    axes[1].plot(
        grid,
        ef["c_max"] - ef["alpha"] * np.exp(-ef["beta"] * grid),
        "k--",
        label=f"C*-αe^(-βE) fit, R²={scaling['epoch_fit']['r2']:.3f}",
    )
    onset = scaling.get("epoch_fit_from_onset")
    if onset:
        of = onset["params"]
        grid = np.linspace(onset["from_epoch"], middle["curve"][-1][0], 100)
        axes[1].plot(
            grid,
            of["c_max"] - of["alpha"] * np.exp(-of["beta"] * grid),
            "k:",
            label=f"fit from the inflection (epoch {onset['from_epoch']}), R²={onset['r2']:.3f}",
        )
    axes[1].set(xlabel="epochs", ylabel="facts known", title="capacity vs epochs")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(folder, "fact_scaling_laws.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    if "preference" in summary:
        pref = summary["preference"]["by_frequency"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar(list(pref), [v["fraction"] for v in pref.values()])
        ax.set(xlabel="repetitions per epoch", ylabel="share known", title="frequent facts are kept")
        fig.tight_layout()
        path = os.path.join(folder, "fact_scaling_preference.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="smoke run (about a minute)")
    parser.add_argument("--output-dir", default=DEFAULT_DIR)
    parser.add_argument("--workers", type=int, default=2, help="processes training models at once")
    parser.add_argument(
        "--scaling-epochs",
        type=int,
        default=0,
        help="epochs of the scaling part (default 120; 240 is run D of docs/fact_scaling.md, about twice as long)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the scaling part's model initialisation and row order (the fact set stays the same)",
    )
    parser.add_argument(
        "--lora", action="store_true", help="also run LoRA on the embedded SmolLM2 (~25 min more on a busy 2-core CPU)"
    )
    parser.add_argument("--only", default="", help="comma-separated parts to run (scaling,preference,...)")
    parser.add_argument(
        "--reanalyse", action="store_true", help="refit and replot the scaling part of an earlier summary.json"
    )
    args = parser.parse_args(argv)
    if args.scaling_epochs < 0 or args.workers < 1 or args.seed < 0:
        parser.error("--scaling-epochs and --seed must be >= 0 (--scaling-epochs 0: the default), --workers >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(args.output_dir, exist_ok=True)
    config = settings(args.small)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    parts = [p for p in args.only.split(",") if p] or list(DEFAULT_PARTS)
    if args.lora and "lora" not in parts:
        parts.append("lora")
    unknown = [p for p in parts if p not in (*DEFAULT_PARTS, "lora")]
    if unknown:
        parser.error(f"unknown parts in --only: {unknown}")
    summary: dict = {"small": args.small, "settings": config, "seconds": {}}
    earlier = os.path.join(args.output_dir, "summary.json")
    if (args.reanalyse or args.only) and os.path.isfile(earlier):  # add to an earlier run of the same mode
        with open(earlier) as f:
            loaded = json.load(f)
        if loaded.get("small") == args.small:
            summary = {**loaded, "settings": config}
    if args.reanalyse:
        summary["scaling"] = analyse_scaling(summary["settings"]["scaling"], summary["scaling"]["sizes"])
        parts = []
    config["scaling"]["epochs"] = args.scaling_epochs or config["scaling"]["epochs"]
    config["scaling"]["seed"] = args.seed
    sizes = []
    start = time.time()
    try:
        for part, result, seconds in run_parts(parts, config, args.workers):
            if part == "scaling":
                sizes.append(result)
                print(f"scaling, width {result['hidden']}: {result['capacity']} facts, {seconds} s", flush=True)
                if len(sizes) < len(config["scaling"]["hidden"]):
                    continue
                result = analyse_scaling(config["scaling"], sorted(sizes, key=lambda size: size["hidden"]))
                seconds = round(sum(size["seconds"] for size in sizes), 1)
            summary[part] = result
            summary["seconds"][part] = seconds  # one thread's time; the parts ran `--workers` at a time
            print(f"{part}: {seconds} s", flush=True)
            with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
                json.dump(_jsonable(summary), f, indent=1)
        if "lora" in parts:
            torch.set_num_threads(threads)
            lora_start = time.time()
            summary["lora"] = run_lora(config["lora"])
            summary["seconds"]["lora"] = round(time.time() - lora_start, 1)
    finally:
        torch.set_num_threads(threads)
    summary["seconds"]["wall"] = round(time.time() - start, 1)
    if "scaling" in summary:
        summary["plots"] = plot(summary, args.output_dir if summary["small"] else DOCS_DIR)
    with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
        json.dump(_jsonable(summary), f, indent=1)
    print(json.dumps(_jsonable({k: v for k, v in summary.items() if k != "settings"}), indent=1, default=str)[:6000])
    return summary


if __name__ == "__main__":
    main()
