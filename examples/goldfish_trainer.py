"""Fine-tune the embedded SmolLM2 with GoldfishTrainer on standard-library docstrings.

python examples/goldfish_trainer.py --max-steps 20
"""

from __future__ import annotations

import argparse
import tempfile

from datasets import Dataset
from transformers import DataCollatorForLanguageModeling

from hf_memory import GoldfishTrainer, GoldfishTrainingArguments, load_model, stdlib_docstrings


def main(max_steps: int = 20, output_dir: str | None = None, model=None, tokenizer=None):
    if model is None:
        model, tokenizer = load_model()  # the embedded SmolLM2-135M-Instruct, offline
    texts = stdlib_docstrings(max_docs=32)
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"]
    )
    args = GoldfishTrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-5,
        logging_steps=max(1, max_steps // 4),
        report_to=[],
        save_strategy="no",
        goldfish_k=4,
        goldfish_h=13,  # drop ~1 in 4 tokens, chosen by a hash of the 13 tokens ending at each
    )
    trainer = GoldfishTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--output-dir", default=None)
    main(**vars(parser.parse_args()))
