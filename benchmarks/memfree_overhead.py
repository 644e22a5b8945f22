"""MemFree overhead: the Bloom-filter libraries side by side, index build throughput and memory, the guard's cost
per decoding step, and guarded `generate` against unguarded per token at batch 1 and 16 (goal: <= 1.05x).

1. Libraries (each one installed is measured; `pip install rbloom pybloomfiltermmap3 fastbloom-rs`): one million
   64-bit keys at a 1% false-positive rate: insert and lookup throughput, bits per key, and one lookup of all
   |V| = 49,152 tokens (what a pure n-gram Bloom filter costs per row and step).
2. `NgramIndex.build` on every standard-library docstring tokenized with SmolLM2's tokenizer (n = 10): n-grams
   read per second, memory per million distinct n-grams, "bloom" against "exact".
3. The guard alone (`MemFreeLogitsProcessor` on fixed scores, no model) per step, for contexts from the indexed
   text (the prefix is present) and from other text, against a pure Bloom filter that probes every token.
4. SmolLM2-135M `generate` (greedy, 32 new tokens after 32-token prompts) with and without the guard, runs
   alternating so machine noise hits both alike, prompts from indexed and from other documents.

    python benchmarks/memfree_overhead.py --output benchmarks/results/memfree_overhead.json  # resumes from it
    python benchmarks/memfree_overhead.py --small    # a tiny model and a small corpus (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_memory import MemFreeLogitsProcessor, NgramIndex, load_model, stdlib_docstrings  # noqa: E402
from hf_memory.memfree.hashing import context_hashes, ngram_keys  # noqa: E402


VOCAB = 49_152


def timed(function, repeats: int = 3) -> float:
    """The median wall time of `function()` over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- 1. libraries


def libraries(count: int) -> dict:
    rng = np.random.default_rng(0)
    keys = rng.integers(-(2**63), 2**63 - 1, count, dtype=np.int64)
    probes = rng.integers(-(2**63), 2**63 - 1, count, dtype=np.int64)
    key_list, probe_list = keys.tolist(), probes.tolist()
    vocabulary = probes[:VOCAB].tolist()
    out = {}

    def report(name, build, contains_one, contains_many, bits, version):
        filt = build()
        single = probe_list[: count // 5]
        seconds_single = timed(lambda: [contains_one(filt, x) for x in single], 1)
        seconds_many = timed(lambda: contains_many(filt, probe_list), 1)
        members = contains_many(filt, key_list)
        out[name] = {
            "version": version,
            "build_keys_per_s": count / timed(build, 1),
            "lookups_per_s_one_at_a_time": len(single) / seconds_single,
            "lookups_per_s_batched": count / seconds_many,
            "vocabulary_lookup_ms": 1000 * timed(lambda: contains_many(filt, vocabulary), 3),
            "bits_per_key": bits(filt) / count,
            "false_positive_rate": float(np.mean(contains_many(filt, probe_list))),
            "no_false_negative": bool(all(members)),
        }
        print(name, json.dumps(out[name]), flush=True)

    from importlib.metadata import version

    try:
        import fastbloom_rs

        def build_fastbloom():
            filt = fastbloom_rs.FilterBuilder(count, 0.01).build_bloom_filter()
            filt.add_int_batch(key_list)
            return filt

        report(
            "fastbloom-rs",
            build_fastbloom,
            lambda f, x: f.contains_int(x),
            lambda f, xs: f.contains_int_batch(xs),
            lambda f: 8 * len(f.get_bytes()),
            version("fastbloom-rs"),
        )
    except ImportError:
        print("fastbloom-rs not installed", flush=True)
    try:
        import rbloom

        def identity(x):  # a hash function of our own is what lets rbloom save a filter
            return x

        def build_rbloom():
            filt = rbloom.Bloom(count, 0.01, hash_func=identity)
            filt.update(key_list)
            return filt

        report(
            "rbloom",
            build_rbloom,
            lambda f, x: x in f,
            lambda f, xs: [x in f for x in xs],  # no batched lookup
            lambda f: f.size_in_bits,
            version("rbloom"),
        )
    except ImportError:
        print("rbloom not installed", flush=True)
    try:
        import pybloomfilter

        def build_mmap():
            filt = pybloomfilter.BloomFilter(count, 0.01)  # anonymous memory map
            filt.update(key_list)
            return filt

        report(
            "pybloomfiltermmap3",
            build_mmap,
            lambda f, x: x in f,
            lambda f, xs: [x in f for x in xs],  # no batched lookup
            lambda f: f.num_bits,
            version("pybloomfiltermmap3"),
        )
    except ImportError:
        print("pybloomfiltermmap3 not installed", flush=True)
    return out


# ---------------------------------------------------------------- 2. index build


def corpus_ids(tokenizer, max_docs: int | None) -> list[list[int]]:
    texts = stdlib_docstrings(min_chars=50, max_docs=max_docs)
    return [ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if len(ids) >= 32]


def build_throughput(sequences, tokenizer, n: int) -> tuple[dict, dict]:
    out, indexes = {}, {}
    for name in ("exact", "bloom", "bloom, capacity given (streamed)"):
        settings = {"n": n, "mode": "exact" if name == "exact" else "bloom"}
        if name.endswith("(streamed)"):
            settings["capacity"] = indexes["exact"].num_ngrams
        start = time.perf_counter()
        index = NgramIndex.build(sequences, tokenizer, show_progress=False, **settings)
        seconds = time.perf_counter() - start
        indexes[name] = index
        distinct = indexes["exact"].num_ngrams
        out[name] = {
            "ngrams_read": index.num_ngram_occurrences,
            "distinct_ngrams": distinct,
            "keys": index.num_keys,
            "seconds": seconds,
            "ngrams_per_s": index.num_ngram_occurrences / seconds,
            "bytes": index.nbytes,
            "mb_per_million_ngrams": index.nbytes / distinct,  # bytes per n-gram = MB per million
            "false_positive_rate_per_probe": index.false_positive_rate,
        }
        print(name, json.dumps(out[name]), flush=True)
    return out, indexes


# ---------------------------------------------------------------- 3. the guard alone


def guard_cost(indexes: dict, sequences, tokenizer, n: int, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    flat = np.concatenate([np.asarray(s) for s in sequences[:2000]])
    out = {}
    for batch in (1, 16):
        starts = rng.integers(0, len(flat) - n, (200, batch))
        indexed = [torch.from_numpy(flat[s[:, None] + np.arange(n - 1)]) for s in starts]
        other = [torch.from_numpy(rng.integers(0, vocab, (batch, n - 1))) for _ in range(200)]
        scores = torch.zeros(batch, vocab)
        for name in ("exact", "bloom"):
            guard = MemFreeLogitsProcessor(indexes[name], tokenizer)
            for kind, contexts in (("indexed", indexed), ("other", other)):
                seconds = timed(lambda: [guard(c, scores) for c in contexts], 3) / len(contexts)
                out[f"batch {batch}, {name}, {kind} text"] = 1e6 * seconds
        # a pure n-gram Bloom filter: every (row, vocabulary token) probed, one batched call per step
        bloom = indexes["bloom"]._store
        tokens = np.arange(vocab, dtype=np.int64)

        def pure(contexts):
            hashes = context_hashes(contexts.numpy(), 0)
            return bloom.contains(ngram_keys(hashes[:, None], tokens[None, :]))

        out[f"batch {batch}, pure Bloom (|V| probes per row)"] = (
            1e6 * timed(lambda: [pure(c) for c in indexed[:5]], 1) / 5
        )
    for key, value in out.items():
        print(f"{key}: {value:.0f} us per step", flush=True)
    return out


# ---------------------------------------------------------------- 4. generate


@torch.inference_mode()
def generate_overhead(model, guards: dict, prompts: dict, new_tokens: int, repeats: int, out: dict, save) -> dict:
    """Fills `out` one (batch, prompts) cell at a time, calling `save()` after each; cells already in `out` are
    skipped (a resumed run)."""
    from transformers import GenerationConfig, LogitsProcessorList

    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0)
    for batch in (1, 16):
        for kind, ids in prompts.items():
            if f"batch {batch}, {kind} prompts, unguarded" in out:
                continue
            rows = ids[:batch]
            arms = {"unguarded": None, **guards}
            times = {arm: [] for arm in arms}

            def run(guard):
                model.generate(
                    rows,
                    attention_mask=torch.ones_like(rows),
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    logits_processor=LogitsProcessorList([guard]) if guard is not None else None,
                )

            run(None)  # warm-up
            for _ in range(repeats):
                for arm, guard in arms.items():  # alternate: noise hits every arm alike
                    start = time.perf_counter()
                    run(guard)
                    times[arm].append((time.perf_counter() - start) / new_tokens)
            base = statistics.median(times["unguarded"])
            for arm in arms:
                key = f"batch {batch}, {kind} prompts, {arm}"
                out[key] = {"ms_per_token": 1000 * statistics.median(times[arm]), "new_tokens": new_tokens}
                out[key]["repeats"] = repeats
                if arm != "unguarded":
                    out[key]["ratio"] = statistics.median(times[arm]) / base
                print(key, json.dumps(out[key]), flush=True)
            save()
    return out


def main(small: bool, output: str | None, threads: int, new_tokens: int | None, repeats: int | None) -> dict:
    torch.set_num_threads(threads)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {threads} torch thread(s), "
        f"torch {torch.__version__}, numpy {np.__version__}"
    )
    new_tokens = new_tokens or (8 if small else 32)
    repeats = repeats or (2 if small else 5)
    results = {}
    if output and os.path.exists(output):  # resume: parts already measured are kept
        with open(output) as f:
            results = json.load(f)
        if results.get("small") != small or results.get("machine") != machine:
            results = {}
    results.update(machine=machine, small=small)
    results.setdefault("generate_settings", {"new_tokens": new_tokens, "repeats": repeats})

    def save() -> None:
        if output:
            with open(output + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(output + ".tmp", output)

    n = 10
    if "libraries" not in results:
        results["libraries"] = libraries(100_000 if small else 1_000_000)
        save()
    if small:
        from transformers import PreTrainedTokenizerFast

        from tests.testing_utils import docstring_bpe, tiny_causal_lm

        tokenizer = PreTrainedTokenizerFast(tokenizer_object=docstring_bpe(), pad_token="<pad>")
        model = tiny_causal_lm(vocab_size=len(tokenizer), hidden=64).eval()
    else:
        model, tokenizer = load_model()
        model.eval()
    sequences = corpus_ids(tokenizer, 300 if small else None)
    build, indexes = build_throughput(sequences, tokenizer, n)
    results.setdefault("build", build)  # the indexes are needed below anyway; a resumed run keeps the first figures
    save()
    vocab = model.get_output_embeddings().weight.shape[0]
    if "guard_step_us" not in results:
        results["guard_step_us"] = guard_cost(indexes, sequences, tokenizer, n, vocab)
        save()
    held = sequences[-16:]  # reordered below, so that the prompts are not in the index
    rng = np.random.default_rng(1)
    indexed_prompts = torch.tensor([sequences[i][:32] for i in rng.choice(len(sequences), 16, replace=False)])
    # prompts of other text: the same documents with their words in another order (not in the index)
    other = [" ".join(tokenizer.decode(s[:48]).split()[::-1]) for s in held]
    other_prompts = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"][:32] for t in other])
    guards = {name: MemFreeLogitsProcessor(indexes[name], tokenizer) for name in ("bloom", "exact")}
    generate_overhead(
        model,
        guards,
        {"indexed": indexed_prompts, "other": other_prompts},
        new_tokens=new_tokens,
        repeats=repeats,
        out=results.setdefault("generate", {}),
        save=save,
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a tiny model and a small corpus")
    parser.add_argument("--output", default=None, help="write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per generate call (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="timed generate calls per arm (default 5)")
    arguments = parser.parse_args()
    main(arguments.small, arguments.output, arguments.threads, arguments.new_tokens, arguments.repeats)
