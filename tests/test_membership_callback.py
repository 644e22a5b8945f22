"""MembershipCallback: membership AUCs logged while a real Trainer overfits its members, its schedules, bad input."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

import hf_memory
from hf_memory.membership import MEMBERSHIP_LOG_PREFIX, MembershipCallback, membership_report, membership_scores
from tests.testing_utils import TINY_VOCAB, tiny_causal_lm


def rows(n, length=24, seed=0):
    return torch.randint(3, TINY_VOCAB, (n, length), generator=torch.Generator().manual_seed(seed)).tolist()


def training_args(tmp_path, **overrides):
    settings = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "max_steps": 60,
        "learning_rate": 1e-2,
        "logging_steps": 10,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    settings.update(overrides)
    return TrainingArguments(**settings)


def test_the_auc_rises_as_a_real_trainer_overfits_the_members(tmp_path):
    torch.set_num_threads(1)
    members, non_members = rows(8, seed=0), rows(8, seed=1)
    model = tiny_causal_lm("llama", hidden=32)
    callback = MembershipCallback(members, non_members, every="eval", batch_size=8)
    data = Dataset.from_dict({"input_ids": members, "labels": members})
    args = training_args(tmp_path, eval_strategy="steps", eval_steps=20)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, callbacks=[callback])
    before = membership_scores(model, members + non_members, show_progress=False)
    trainer.train()
    keys = [f"{MEMBERSHIP_LOG_PREFIX}auc_{a}" for a in ("loss", "min_k", "min_k_plus_plus")]
    logged = [entry for entry in trainer.state.log_history if keys[0] in entry]
    assert [entry["step"] for entry in logged] == [20, 40, 60] and all(set(keys) <= set(e) for e in logged)
    assert [h["step"] for h in callback.history] == [20, 40, 60]
    first = membership_report(before, [1] * 8 + [0] * 8, n_bootstrap=100).attacks["loss"]["auc"]
    last = logged[-1][keys[0]]
    assert last > first and last >= 0.9, (first, [e[keys[0]] for e in logged])
    # the logged AUC is the evaluation's of the model as it is at the end
    after = membership_scores(model, members + non_members, show_progress=False)
    report = membership_report(after, [1] * 8 + [0] * 8, n_bootstrap=100)
    assert last == pytest.approx(report.attacks["loss"]["auc"])
    assert callback.seconds > 0


def test_every_n_steps_text_documents_and_the_trainers_tokenizer(tmp_path, tokenizer):
    from hf_memory.data import stdlib_docstrings

    texts = stdlib_docstrings(max_docs=12)
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    callback = MembershipCallback(texts[:6], texts[6:], every=2, max_tokens=32)
    assert callback.metric_names() == ["auc_loss", "auc_zlib", "auc_min_k", "auc_min_k_plus_plus"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:32] for t in texts[:6]]
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path, max_steps=3, per_device_train_batch_size=2),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    assert [h["step"] for h in callback.history] == [2, 3]
    assert all(0 <= h["auc_zlib"] <= 1 for h in callback.history)


def test_bad_input_is_refused_at_construction_or_before_the_first_step(tmp_path):
    members, non_members = rows(6, seed=0), rows(6, seed=1)
    cases = [
        ((iter(members), non_members), {}, "`members` is an iterator"),
        ((members, "text"), {}, "`non_members` must be documents"),
        ((members[:4], non_members), {}, "`members` needs at least 5 documents, got 4"),
        (
            (members, non_members[:5] + [members[2]]),
            {},
            r"both in `members` and `non_members` \(e.g. `non_members\[5\]`",
        ),
        ((members, ["a text"] * 6), {}, "mix texts and token ids"),
        ((members, non_members), {"attacks": ["ce_diagnostic"]}, "'ce_diagnostic'"),
        ((members, non_members), {"attacks": ["reference"]}, "needs a `reference_model`"),
        ((members, non_members), {"k": 0}, "`k` must be"),
        ((members, non_members), {"every": 0}, "`every` must be"),
        ((members, non_members), {"reference_model": "base"}, "`reference_model` must be"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            MembershipCallback(*args, **kwargs)
    with pytest.raises(TypeError):
        MembershipCallback(members, non_members, nope=1)
    model = tiny_causal_lm("llama")
    data = Dataset.from_dict({"input_ids": members, "labels": members})
    for callback, message in (
        (MembershipCallback(members, non_members[:5] + [[TINY_VOCAB + 1] * 5], every=1), r"non_members\[5\]"),
        (MembershipCallback(["one text"] * 3 + ["two", "three"], ["four"] * 5, every=1), "give the model's `tok"),
    ):
        trainer = Trainer(model=model, args=training_args(tmp_path, max_steps=1), train_dataset=data,
                          callbacks=[callback])  # fmt: skip
        with pytest.raises(ValueError, match=message):
            trainer.train()
        assert trainer.state.global_step == 0


def test_it_is_public_and_a_dataset_works_as_members():
    assert hf_memory.MembershipCallback is MembershipCallback
    members = Dataset.from_dict({"input_ids": rows(5)})
    callback = MembershipCallback(members, rows(5, seed=2), reference_model=tiny_causal_lm("llama", seed=1))
    assert callback.metric_names()[-1] == "auc_reference" and len(callback.members) == 5
    numbers = callback.measure(tiny_causal_lm("llama"), None)
    assert set(numbers) == {f"auc_{a}" for a in ("loss", "min_k", "min_k_plus_plus", "reference")}
