"""The point of it all: a tiny model memorizes its training documents with the standard loss, not with goldfish."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_memory import GoldfishTrainer, GoldfishTrainingArguments, measure_extraction
from tests.testing_utils import tiny_causal_lm


PREFIX, SUFFIX, VOCAB = 16, 32, 128


def train(tmp_path, args_class, trainer_class, docs, **extra):
    model = tiny_causal_lm("llama", vocab_size=VOCAB, hidden=64, layers=2, seed=0)
    args = args_class(
        output_dir=str(tmp_path),
        num_train_epochs=200,
        per_device_train_batch_size=len(docs),
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=100,
        disable_tqdm=True,
        seed=0,
        **extra,
    )
    dataset = Dataset.from_dict({"input_ids": docs, "labels": docs})
    trainer_class(model=model, args=args, train_dataset=dataset).train()
    return measure_extraction(model, docs, PREFIX, SUFFIX, show_progress=False).longest_common_prefix


def test_goldfish_prevents_verbatim_reproduction(tmp_path):
    docs = torch.randint(0, VOCAB, (4, PREFIX + SUFFIX), generator=torch.Generator().manual_seed(0)).tolist()
    standard = train(tmp_path / "standard", TrainingArguments, Trainer, docs)
    goldfish = train(
        tmp_path / "goldfish",
        GoldfishTrainingArguments,
        GoldfishTrainer,
        docs,
        goldfish_k=4,
        goldfish_h=4,
        goldfish_exempt_special_tokens=False,
    )
    assert standard == [SUFFIX] * len(docs)  # every document reproduced in full
    assert all(matched < SUFFIX for matched in goldfish)  # none with goldfish
