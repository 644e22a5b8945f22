"""Goldfish overhead: training step time of GoldfishTrainer against Trainer, and goldfish_mask throughput.

Both trainers train the same model copy on the same batches; their runs alternate so machine noise hits both
alike. A step is timed from one `on_step_end` to the next, so it includes fetching and collating the batch
(where goldfish works). Goal: ratio <= 1.02.

    python benchmarks/goldfish_overhead.py                # embedded SmolLM2-135M, batch 4 x 256 tokens
    python benchmarks/goldfish_overhead.py --model tiny   # a 2-layer Llama, for a quick look
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_memory import (  # noqa: E402
    GOLDFISH_STRATEGIES,
    GoldfishConfig,
    GoldfishTrainer,
    GoldfishTrainingArguments,
    goldfish_mask,
    load_model,
)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def time_steps(trainer_class, args_class, model, dataset, steps, tmp, **extra) -> list[float]:
    args = args_class(
        output_dir=tmp,
        max_steps=steps,
        per_device_train_batch_size=extra.pop("batch_size"),
        learning_rate=1e-5,
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        **extra,
    )
    timer = StepTimer()
    trainer_class(model=model, args=args, train_dataset=dataset, callbacks=[timer]).train()
    return [b - a for a, b in zip(timer.ends, timer.ends[1:])]  # the first step (warm-up) is never timed


def mask_throughput(batch: int, length: int, repeats: int) -> dict[str, float]:
    ids = torch.randint(0, 49_152, (batch, length), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(length).repeat(batch, 1)
    rates = {}
    for strategy in GOLDFISH_STRATEGIES:
        config = GoldfishConfig(strategy=strategy, exempt_token_ids=(0, 1, 2))
        goldfish_mask(ids, config, positions)  # builds the hash table once
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            goldfish_mask(ids, config, positions)
            times.append(time.perf_counter() - start)
        rates[strategy] = ids.numel() / statistics.median(times)
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="steps per run (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per trainer")
    parser.add_argument("--strategy", default="hash", choices=list(GOLDFISH_STRATEGIES))
    args = parser.parse_args()
    hf_logging.set_verbosity_error()

    if args.model == "smollm2":
        model, _ = load_model()
        vocab = model.config.vocab_size
    else:
        torch.manual_seed(0)
        vocab = 49_152
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            )
        )
    n = args.batch_size * args.steps
    ids = torch.randint(3, vocab, (n, args.seq_len), generator=torch.Generator().manual_seed(1)).tolist()
    dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})

    arms = {
        "Trainer": (Trainer, TrainingArguments, {}),
        "GoldfishTrainer": (GoldfishTrainer, GoldfishTrainingArguments, {"goldfish_strategy": args.strategy}),
    }
    steps = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, (trainer_class, args_class, extra) in (
                arms.items() if round_ % 2 == 0 else reversed(arms.items())
            ):
                steps[name] += time_steps(
                    trainer_class,
                    args_class,
                    copy.deepcopy(model),
                    dataset,
                    args.steps,
                    tmp,
                    batch_size=args.batch_size,
                    **extra,
                )
    medians = {name: statistics.median(times) for name, times in steps.items()}

    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    )
    print(f"\nGoldfish overhead on {device}, torch {torch.__version__}")
    print(
        f"model {args.model}, batch {args.batch_size} x {args.seq_len} tokens, strategy {args.strategy}, "
        f"{len(steps['Trainer'])} timed steps per trainer\n"
    )
    print(f"{'trainer':<18}{'median step (s)':>16}")
    for name, value in medians.items():
        print(f"{name:<18}{value:>16.4f}")
    print(
        f"\nstep-time ratio GoldfishTrainer / Trainer: {medians['GoldfishTrainer'] / medians['Trainer']:.3f}x (goal <= 1.02x)"
    )

    print("\ngoldfish_mask throughput, batch 64 x 4096 tokens with position_ids and 3 exempt ids:")
    rates = mask_throughput(64, 4096, repeats=5)
    for strategy, rate in rates.items():
        print(f"  {strategy:<11}{rate / 1e6:>8.1f} M tokens/s")
    # The step ratio above is bounded by machine noise; the mask's own share of a step is far below it.
    mask_seconds = args.batch_size * args.seq_len / rates[args.strategy]
    print(
        f"\n'{args.strategy}' mask for one training batch: {mask_seconds * 1e3:.3f} ms = "
        f"{100 * mask_seconds / medians['Trainer']:.4f}% of a Trainer step"
    )


if __name__ == "__main__":
    main()
