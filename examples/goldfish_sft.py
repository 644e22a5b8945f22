"""Supervised fine-tuning of the embedded SmolLM2 with TRL + goldfish: chat data, packed padding-free.

python examples/goldfish_sft.py --max-steps 20
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from datasets import Dataset

from hf_memory import GoldfishSFTConfig, GoldfishSFTTrainer, load_model, stdlib_docstrings


def main(max_steps: int = 20, output_dir: str | None = None, model=None, tokenizer=None):
    if model is None:
        model, tokenizer = load_model()  # the embedded SmolLM2-135M-Instruct, offline
    docs = stdlib_docstrings(max_docs=32)
    conversations = [
        [
            {"role": "user", "content": "Document this: " + doc.split("\n")[0]},
            {"role": "assistant", "content": doc[:400]},
        ]
        for doc in docs
    ]
    args = GoldfishSFTConfig(
        output_dir=output_dir or tempfile.mkdtemp(),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-5,
        logging_steps=max(1, max_steps // 4),
        report_to=[],
        save_strategy="no",
        max_length=256,
        packing=True,  # padding-free: each packed conversation is hashed on its own
        goldfish_k=4,
        goldfish_h=13,
        use_cpu=not torch.cuda.is_available(),  # TRL defaults to bf16, which needs this flag on a CPU-only machine
    )
    trainer = GoldfishSFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"messages": conversations}),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--output-dir", default=None)
    main(**vars(parser.parse_args()))
