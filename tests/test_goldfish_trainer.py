"""GoldfishTrainer: exact token-weighted loss, training-only masking, logs, resume and the model card."""

from __future__ import annotations

import copy
import inspect
import os
import types

import pytest
import torch
import transformers.trainer
from datasets import Dataset
from huggingface_hub import ModelCard
from transformers import Trainer, TrainingArguments

from hf_memory import GoldfishConfig, GoldfishTrainer, GoldfishTrainingArguments, apply_goldfish, goldfish_mask
from tests.testing_utils import TINY_VOCAB, tiny_causal_lm


def random_dataset(n=8, length=40, seed=0, ragged_prompts=False):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY_VOCAB, (n, length), generator=gen)
    labels = ids.clone()
    if ragged_prompts:  # a different number of prompt tokens per example: kept counts differ per micro-batch
        for i in range(n):
            labels[i, : 3 * i] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def make_args(tmp_path, **overrides):
    settings = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "disable_tqdm": True,
        "seed": 0,
        "goldfish_k": 3,
        "goldfish_h": 3,
        "goldfish_exempt_special_tokens": False,
    }
    settings.update(overrides)
    return GoldfishTrainingArguments(**settings)


def kept_mean_loss(model, input_ids, labels):
    logits = model(input_ids=input_ids).logits[:, :-1].float()
    targets = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )
    return total / (targets != -100).sum()


def test_training_loss_is_the_mean_over_kept_tokens(tmp_path):
    model = tiny_causal_lm("llama")
    dataset = random_dataset(ragged_prompts=True)
    trainer = GoldfishTrainer(model=model, args=make_args(tmp_path), train_dataset=dataset)
    batch = next(iter(trainer.get_train_dataloader()))
    config = trainer.goldfish_config
    rows = {tuple(r): labels for r, labels in zip(dataset["input_ids"], dataset["labels"])}
    original = torch.tensor([rows[tuple(r.tolist())] for r in batch["input_ids"]])

    assert torch.equal(batch["labels"], apply_goldfish(original, batch["input_ids"], config))
    dropped = (goldfish_mask(batch["input_ids"], config) & (original != -100)).sum()
    assert batch["goldfish_dropped_tokens"].sum() == dropped > 0

    samples, num_items = trainer.get_batch_samples(iter([batch]), 1, torch.device("cpu"))
    assert (
        int(num_items)
        == (original[:, 1:] != -100).sum()
        - (goldfish_mask(batch["input_ids"], config)[:, 1:] & (original[:, 1:] != -100)).sum()
    )
    model.train()
    loss = trainer.compute_loss(model, dict(samples[0]), num_items_in_batch=num_items)
    with torch.no_grad():
        expected = kept_mean_loss(model, batch["input_ids"], batch["labels"])
        unmasked = kept_mean_loss(model, batch["input_ids"], original)
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert not torch.allclose(loss, unmasked, rtol=1e-5)


def _one_sgd_step(tmp_path, model, batch_size, accumulation):
    args = make_args(
        tmp_path,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
    )
    trainer = GoldfishTrainer(model=model, args=args, train_dataset=random_dataset(n=4, ragged_prompts=True))
    trainer.train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_gradient_accumulation_2x2_equals_batch_4(tmp_path):
    base = tiny_causal_lm("llama")
    before = {name: p.detach().clone() for name, p in base.named_parameters()}
    big = _one_sgd_step(tmp_path / "a", copy.deepcopy(base), batch_size=4, accumulation=1)
    small = _one_sgd_step(tmp_path / "b", copy.deepcopy(base), batch_size=2, accumulation=2)
    assert any(not torch.equal(big[n], before[n]) for n in big)
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-5, atol=1e-6)


def test_eval_loss_counts_every_token(tmp_path):
    model = tiny_causal_lm("llama")
    dataset = random_dataset(n=4, ragged_prompts=True)
    trainer = GoldfishTrainer(model=model, args=make_args(tmp_path), eval_dataset=dataset)
    metrics = trainer.evaluate()
    ids, labels = torch.tensor(dataset["input_ids"]), torch.tensor(dataset["labels"])
    model.eval()
    with torch.no_grad():
        full = kept_mean_loss(model, ids, labels).item()
        masked = kept_mean_loss(model, ids, apply_goldfish(labels, ids, trainer.goldfish_config)).item()
    assert metrics["eval_loss"] == pytest.approx(full, rel=1e-5)
    assert metrics["eval_loss"] != pytest.approx(masked, rel=1e-5)


def test_logs_the_dropped_fraction(tmp_path):
    dataset = random_dataset(n=8, ragged_prompts=True)
    args = make_args(tmp_path, num_train_epochs=1, logging_steps=2)  # one log covers the whole epoch
    trainer = GoldfishTrainer(model=tiny_causal_lm("llama"), args=args, train_dataset=dataset)
    trainer.train()
    logged = [
        log["goldfish/dropped_fraction"] for log in trainer.state.log_history if "goldfish/dropped_fraction" in log
    ]
    ids, labels = torch.tensor(dataset["input_ids"]), torch.tensor(dataset["labels"])
    kept_before = labels[:, 1:] != -100
    dropped = (goldfish_mask(ids, trainer.goldfish_config)[:, 1:] & kept_before).sum().item()
    assert logged == [pytest.approx(dropped / kept_before.sum().item(), abs=1e-4)]


class RecordingGoldfishTrainer(GoldfishTrainer):
    """Keeps every training batch's input ids and labels, by global step."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.seen = getattr(self, "seen", {})
        self.seen[self.state.global_step] = (inputs["input_ids"].clone(), inputs["labels"].clone())
        return super().compute_loss(model, inputs, *args, **kwargs)


def test_resumed_run_drops_the_same_labels(tmp_path):
    dataset = random_dataset(n=12)
    common = {"per_device_train_batch_size": 2, "max_steps": 6, "save_strategy": "steps", "save_steps": 3}
    full = RecordingGoldfishTrainer(
        model=tiny_causal_lm("llama"), args=make_args(tmp_path / "full", **common), train_dataset=dataset
    )
    full.train()

    first = RecordingGoldfishTrainer(
        model=tiny_causal_lm("llama"),
        args=make_args(tmp_path / "cut", **{**common, "max_steps": 3}),
        train_dataset=dataset,
    )
    first.train()
    resumed = RecordingGoldfishTrainer(
        model=tiny_causal_lm("llama"), args=make_args(tmp_path / "cut", **common), train_dataset=dataset
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-3"))

    assert sorted(resumed.seen) == [3, 4, 5]
    for step in (3, 4, 5):
        ids, labels = resumed.seen[step]
        assert torch.equal(ids, full.seen[step][0]) and torch.equal(labels, full.seen[step][1])
        assert torch.equal(labels, apply_goldfish(ids, ids, resumed.goldfish_config))


def test_model_card_survives_push_to_hub(tmp_path, monkeypatch):
    uploaded = {}

    def upload_folder(folder_path, **kwargs):
        with open(os.path.join(folder_path, "README.md"), encoding="utf-8") as f:
            uploaded["README.md"] = f.read()
        uploaded["files"] = sorted(os.listdir(folder_path))
        return "stub-commit"

    fake_api = types.SimpleNamespace(
        create_repo=lambda name, **kwargs: types.SimpleNamespace(repo_id=f"user/{os.path.basename(name)}"),
        upload_folder=upload_folder,
    )
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda *a, **k: fake_api)
    args = make_args(
        tmp_path / "goldfish-model", max_steps=1, goldfish_k=8, goldfish_h=5, goldfish_strategy="hash-table"
    )
    trainer = GoldfishTrainer(model=tiny_causal_lm("llama"), args=args, train_dataset=random_dataset(n=4))
    trainer.train()
    assert trainer.push_to_hub() == "stub-commit"

    card = ModelCard(uploaded["README.md"])
    assert "goldfish-loss" in card.data.tags
    assert card.data.goldfish == GoldfishConfig(k=8, h=5, strategy="hash-table").to_dict()
    assert "| `goldfish_k` | 8 |" in card.text and "`hash-table`" in card.text
    assert "model.safetensors" in uploaded["files"]


def test_special_tokens_of_the_processing_class_are_exempt(tmp_path, tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    on = GoldfishTrainer(
        model=model, args=make_args(tmp_path, goldfish_exempt_special_tokens=True), processing_class=tokenizer
    )
    off = GoldfishTrainer(model=model, args=make_args(tmp_path), processing_class=tokenizer)
    assert on.goldfish_config.exempt_token_ids == tuple(sorted(tokenizer.all_special_ids)) != ()
    assert off.goldfish_config.exempt_token_ids == ()


def test_requires_goldfish_arguments_and_keeps_trainers_signature(tmp_path):
    with pytest.raises(TypeError, match="`args` of GoldfishTrainer must be a GoldfishTrainingArguments"):
        GoldfishTrainer(model=tiny_causal_lm("llama"), args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))
    assert inspect.signature(GoldfishTrainer) == inspect.signature(Trainer)


def test_trains_every_tiny_architecture(tmp_path, tiny_arch):
    model = tiny_causal_lm(tiny_arch)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = RecordingGoldfishTrainer(
        model=model, args=make_args(tmp_path, max_steps=2), train_dataset=random_dataset(n=8)
    )
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    ids, labels = trainer.seen[0]
    assert torch.equal(labels, apply_goldfish(ids, ids, trainer.goldfish_config))
