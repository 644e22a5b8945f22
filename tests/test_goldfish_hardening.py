"""Goldfish settings and batches from the third hostile trial (issue 30: P2, P4, P5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_memory import GoldfishConfig, GoldfishDataCollator, GoldfishTrainer, GoldfishTrainingArguments, goldfish_mask
from tests.testing_utils import TINY_VOCAB, tiny_causal_lm


MAX_K, MAX_H = 2**31 - 1, 1024  # the documented bounds of GoldfishConfig


# ---------------------------------------------------------------- P2: values that failed or stalled later


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"k": 10**30}, r"`k` must be an integer in \[2, 2147483647\]"),  # was: OverflowError at the first mask
        ({"k": np.int64(2**62)}, r"`k` must be an integer in \[2, 2147483647\]"),
        ({"h": 300_000}, r"`h` must be an integer in \[1, 1024\]"),  # was: accepted, minutes per batch
        ({"start": 10**30, "strategy": "static"}, r"`start` must be an integer in \[0, 2147483647\]"),
        ({"exempt_token_ids": [5, 10**30]}, r"`exempt_token_ids` must be an integer in \[0, 9223372036854775807\]"),
        ({"exempt_token_ids": [-1]}, r"`exempt_token_ids` must be an integer in \[0, "),
    ],
)
def test_settings_out_of_range_are_refused_when_built(settings, named):
    with pytest.raises(ValueError, match=named):
        GoldfishConfig(**settings)


def test_the_largest_settings_build_and_mask():
    ids = torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(0))
    for strategy in ("hash", "hash-table", "hash-avalanche", "static"):
        config = GoldfishConfig(k=MAX_K, h=MAX_H, strategy=strategy, start=2**31 - 1)
        assert not goldfish_mask(ids, config).any()  # a window wider than the batch drops nothing
        assert goldfish_mask(ids, GoldfishConfig(k=MAX_K, h=2, strategy=strategy)).sum() <= 2  # one a row at most


def test_the_training_arguments_share_the_bounds(tmp_path):
    with pytest.raises(ValueError, match=r"`goldfish_h` must be an integer in \[1, 1024\]"):
        GoldfishTrainingArguments(output_dir=str(tmp_path), goldfish_h=5000)
    with pytest.raises(ValueError, match="`goldfish_exempt_special_tokens` must be"):
        GoldfishTrainingArguments(output_dir=str(tmp_path), goldfish_exempt_special_tokens="no")


# ---------------------------------------------------------------- P5: arguments changed after the trainer was built


def _trainer(tmp_path, **settings):
    ids = torch.randint(3, TINY_VOCAB, (4, 24), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = GoldfishTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True, save_strategy="no",
        goldfish_strategy="static", goldfish_exempt_special_tokens=False, **settings,
    )  # fmt: skip
    return GoldfishTrainer(model=tiny_causal_lm("llama"), args=args, train_dataset=data)


def _dropped_columns(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return sorted(set((batch["labels"] == -100).nonzero()[:, 1].tolist()))


def test_goldfish_arguments_changed_after_the_trainer_was_built_are_honoured(tmp_path):
    trainer = _trainer(tmp_path, goldfish_k=2)
    assert _dropped_columns(trainer) == list(range(1, 24, 2))
    trainer.args.goldfish_k, trainer.args.goldfish_start = 5, 1  # was: ignored (the config was taken at __init__)
    assert trainer.goldfish_config.k == 5 and trainer.goldfish_config.start == 1
    assert _dropped_columns(trainer) == list(range(2, 24, 5))
    trainer.args.goldfish_k = 1
    with pytest.raises(ValueError, match=r"`goldfish_k` must be an integer in \[2, "):
        trainer.get_train_dataloader()  # refused before any step, naming the training argument


# ---------------------------------------------------------------- P4 / P5: seq2seq batches


def _seq2seq_collate(rows):
    width = max(len(r["labels"]) for r in rows)
    return {
        "input_ids": torch.tensor([r["input_ids"] for r in rows]),
        "attention_mask": torch.ones(len(rows), len(rows[0]["input_ids"]), dtype=torch.long),
        "labels": torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]),
    }


def test_seq2seq_labels_shorter_than_the_inputs_are_masked_on_their_own_tokens():
    collator = GoldfishDataCollator(_seq2seq_collate, GoldfishConfig(k=2, strategy="static"))
    rows = [
        {"input_ids": list(range(10, 22)), "labels": [50, 51, 52, 53, 54, 55]},
        {"input_ids": list(range(30, 42)), "labels": [60, 61, 62, 63]},
    ]
    labels = collator(rows)["labels"]  # was: a torch size mismatch
    assert labels.tolist() == [[50, -100, 52, -100, 54, -100], [60, -100, 62, -100, -100, -100]]


def test_seq2seq_labels_of_the_inputs_length_ignore_the_encoder_ids():
    config = GoldfishConfig(k=2, h=2)
    labels = torch.randint(3, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    masked = []
    for seed in (2, 3):  # two different encoder inputs, the same targets
        inputs = torch.randint(3, 100, (3, 16), generator=torch.Generator().manual_seed(seed))
        rows = [{"input_ids": i.tolist(), "labels": t.tolist()} for i, t in zip(inputs, labels)]
        masked.append(GoldfishDataCollator(_seq2seq_collate, config)(rows)["labels"])
    assert torch.equal(masked[0], masked[1])  # was: the mask came from the encoder ids
    assert torch.equal(masked[0], labels.masked_fill(goldfish_mask(labels, config), -100))  # as a decoder-only LM
    assert (masked[0] == -100).any()


def test_causal_batches_with_masked_prompts_still_hash_the_inputs():
    config = GoldfishConfig(k=2, h=2)
    ids = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(4))
    labels = ids.clone()
    labels[:, :6] = -100  # completion only: the prompt is context, not target
    batch = GoldfishDataCollator(lambda rows: {"input_ids": ids, "labels": labels.clone()}, config)([{}])
    assert torch.equal(batch["labels"], labels.masked_fill(goldfish_mask(ids, config), -100))


def test_goldfish_trainer_on_an_encoder_decoder_model(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=TINY_VOCAB, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, decoder_start_token_id=0,
        pad_token_id=0,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config)
    g = torch.Generator().manual_seed(0)
    inputs, labels = (
        torch.randint(3, TINY_VOCAB, (4, 20), generator=g),
        torch.randint(3, TINY_VOCAB, (4, 12), generator=g),
    )
    data = Dataset.from_dict({"input_ids": inputs.tolist(), "labels": labels.tolist()})
    args = GoldfishTrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1, goldfish_k=2, goldfish_strategy="static",
        goldfish_exempt_special_tokens=False,
    )  # fmt: skip
    trainer = GoldfishTrainer(model=model, args=args, train_dataset=data)
    batch = next(iter(trainer.get_train_dataloader()))  # labels shorter than the inputs: was a size mismatch
    assert (batch["labels"] == -100).sum(1).tolist() == [6, 6, 6, 6]  # labels 1, 3, ..., 11 of each row
    trainer.train()
    logged = [entry["goldfish/dropped_fraction"] for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [0.5]  # 24 of 48 targets (was 0.5455: the first label was not counted as a target)
