"""Fact-memorization scaling laws: the synthetic fact set, fact capacity against plain greedy `generate`, the
callback inside `Trainer`, the fitted laws and their inverse, the experiments, and bad input."""

from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import pytest
import torch

from hf_memory.fact_scaling import (
    FactCapacityCallback,
    SyntheticFactSet,
    compatibility_experiment,
    encode_prompt_target,
    fact_capacity,
    fit_epoch_capacity,
    fit_linear_capacity,
    non_embedding_parameters,
    overwriting_experiment,
    preference_experiment,
    required_scale,
    train_on_facts,
)
from tests.testing_utils import tiny_causal_lm


def small_facts(**kwargs) -> SyntheticFactSet:
    settings = {"num_entities": 12, "attributes": {"birthplace": 8, "pet": 4}, "seed": 0}
    return SyntheticFactSet(**{**settings, **kwargs})


def tiny_llama(vocab_size: int, hidden: int = 32, seed: int = 0):
    return tiny_causal_lm("llama", vocab_size=vocab_size, hidden=hidden, seed=seed)


def partly_trained(model, tokenizer, facts, lr=1e-2, batch_size=8):
    """Train one epoch at a time until the model knows some facts but not all (so agreement tests can fail)."""
    for epoch in range(80):
        train_on_facts(model, tokenizer, facts, epochs=1, lr=lr, batch_size=batch_size, seed=epoch)
        if 0.3 < fact_capacity(model, tokenizer, facts).fraction < 0.9:
            return model
    raise AssertionError("the tiny model never reached a mix of known and unknown facts")


def greedy_knows(model, tokenizer, rows) -> list[bool]:
    """The reference: plain `generate`, one unpadded prompt at a time, as many new tokens as the value has."""
    known = []
    for row in rows:
        prompt_ids, target_ids = encode_prompt_target(tokenizer, row["prompt"], row["target"])
        ids = torch.tensor([prompt_ids])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=len(target_ids),
            min_new_tokens=len(target_ids),
            do_sample=False,
            num_beams=1,
            eos_token_id=None,
            pad_token_id=0,
        )
        known.append(out[0, len(prompt_ids) :].tolist() == target_ids)
    return known


# ---------------------------------------------------------------- the fact set


def test_fact_set_is_deterministic_and_seed_dependent():
    a, b = small_facts(seed=3), small_facts(seed=3)
    assert a.facts == b.facts and a.entities == b.entities and a.values == b.values
    assert a.to_dataset().to_list() == b.to_dataset().to_list()
    assert small_facts(seed=4).facts != a.facts
    assert small_facts(seed=np.int64(3)).facts == a.facts  # numpy integers are integers


def test_entities_are_distinct_multi_token_names_from_a_small_shared_vocabulary():
    facts = SyntheticFactSet(num_entities=3000, attributes={"pet": 4}, syllables=["ka", "lo", "mi", "tu", "re"])
    assert len(set(facts.entities)) == 3000
    tok = facts.build_tokenizer()
    pieces = [tok.tokenize(name) for name in facts.entities[:300]]
    assert all(len(p) >= 4 for p in pieces)  # two name parts of >= 2 syllables each
    assert "<unk>" not in {t for p in pieces for t in p}
    assert len({t for p in pieces for t in p}) <= 2 * 5  # syllables and continuing syllables, never a value word
    assert len(facts) == 3000 and all(f.attribute == "pet" for f in facts.train)


def test_values_cover_each_attribute_and_information_counts_bits():
    facts = small_facts(num_entities=200)
    for attribute, size in {"birthplace": 8, "pet": 4}.items():
        assert len(facts.values[attribute]) == size
        assert {f.value for f in facts.train if f.attribute == attribute} <= set(facts.values[attribute])
    assert facts.information_bits() == pytest.approx(200 * (3 + 2))


def test_rendering_with_a_locally_trained_tokenizer(tokenizer):
    facts = small_facts(templates=["The {attribute} of {entity} is", "{entity} has {attribute}"])
    rows = facts.to_dataset(tokenizer=tokenizer)
    assert len(rows) == 2 * len(facts)  # one row per paraphrase
    for row in rows:
        assert row["text"] == row["prompt"] + row["target"] and row["target"] == " " + row["value"]
        prompt_ids, target_ids = encode_prompt_target(tokenizer, row["prompt"], row["target"])
        assert row["input_ids"] == prompt_ids + target_ids
        assert row["labels"] == [-100] * len(prompt_ids) + target_ids
        assert tokenizer.decode(target_ids).strip() == row["value"]
        assert tokenizer.decode(row["input_ids"], skip_special_tokens=True) == row["text"]
    assert {r["template"] for r in rows} == {0, 1}


def test_rendering_with_the_fact_set_tokenizer_gives_one_token_values():
    facts = small_facts()
    tok = facts.build_tokenizer()
    for row in facts.to_dataset(tokenizer=tok):
        assert row["input_ids"][0] == tok.bos_token_id
        assert len([x for x in row["labels"] if x != -100]) == 1
        assert tok.decode(row["input_ids"][-1:]) == row["value"].lower()


def test_rendering_with_smollm2_tokenizer(smollm2):
    _, tok = smollm2
    facts = small_facts(inverse=False)
    for row in facts.to_dataset(tokenizer=tok):
        prompt_ids = [i for i, label in zip(row["input_ids"], row["labels"]) if label == -100]
        target_ids = [label for label in row["labels"] if label != -100]
        assert tok.decode(prompt_ids) == row["prompt"]
        assert tok.decode(target_ids) == row["target"]


def test_paraphrases_inverse_zipf_and_held_out_rule_split():
    facts = SyntheticFactSet(
        num_entities=40,
        attributes={"code": 64},
        templates=["The {attribute} of {entity} is", "{entity}'s {attribute} is"],
        inverse=True,
        zipf_exponent=1.0,
        max_repetitions=8,
        seed=1,
    )
    reps = [f.repetitions for f in facts.train]
    assert max(reps) == 8 and min(reps) == 1 and sorted(reps)[-2] == 4  # rank 1 -> 8, rank 2 -> 4
    assert len(facts.rows()) == 2 * sum(reps)
    assert len(facts.rows(repeat=False)) == 2 * 40
    inverse = facts.rows(direction="inverse", repeat=False)
    assert len({r["prompt"] for r in inverse}) == 40  # each value names one entity
    assert all(r["target"] == " " + r["entity"] for r in inverse)
    ruled = SyntheticFactSet(
        num_entities=200, attributes={"pet": 4}, rule_attributes={"clan": 8}, held_out_fraction=0.25, seed=2
    )
    held = ruled.held_out
    assert len(held) == 50 and all(f.rule and f.attribute == "clan" for f in held)
    train_rows = {(r["entity"], r["attribute"]) for r in ruled.rows()}
    assert not any((f.entity, f.attribute) in train_rows for f in held)
    surname_rule = {}
    for f in ruled.facts:
        if f.rule:
            key = f.entity.split()[1][:2].lower()
            assert surname_rule.setdefault(key, f.value) == f.value  # the value is a function of the surname
    assert len(ruled) == 200 + 150


def test_select_keeps_chosen_training_facts():
    facts = small_facts()
    part = facts.select([3, 1])
    assert part.train == [facts.train[3], facts.train[1]]
    assert len(facts) == 24  # the original is untouched
    with pytest.raises(ValueError, match="indices"):
        facts.select([0, 0])
    with pytest.raises(ValueError, match="indices"):
        facts.select([24])


# ---------------------------------------------------------------- fact capacity


@pytest.fixture(scope="module")
def trained_bpe_llama(tokenizer):
    """A tiny Llama trained a little on facts with multi-token values (BPE): some facts known, some not."""
    torch.set_num_threads(1)
    facts = SyntheticFactSet(num_entities=24, attributes={"birthplace": 16, "pet": 4}, seed=5)
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden=32)
    partly_trained(model, tokenizer, facts, batch_size=16)
    return model, facts


def test_fact_capacity_agrees_with_greedy_generate_on_padded_batches(trained_bpe_llama, tokenizer):
    model, facts = trained_bpe_llama
    rows = facts.rows(repeat=False)
    assert len({len(encode_prompt_target(tokenizer, r["prompt"], r["target"])[1]) for r in rows}) > 1
    assert len({len(encode_prompt_target(tokenizer, r["prompt"], r["target"])[0]) for r in rows}) > 1
    model.eval()
    reference = greedy_knows(model, tokenizer, rows)
    assert 0 < sum(reference) < len(reference)  # a mix of known and unknown facts, or the test proves nothing
    for padding_side in ("left", "right"):
        for batch_size in (1, 5, 64):
            result = fact_capacity(model, tokenizer, facts, batch_size=batch_size, padding_side=padding_side)
            assert result.known == reference, (padding_side, batch_size)
            assert result.count == sum(reference) and result.total == len(rows)
    by_attribute = result.by_attribute
    assert sum(v["total"] for v in by_attribute.values()) == len(rows)
    for name, entry in by_attribute.items():
        assert entry["known"] == sum(k for k, r in zip(reference, rows) if r["attribute"] == name)
    assert result.bits == pytest.approx(sum(math.log2(f.num_values) for f, k in zip(facts.train, reference) if k))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_fact_capacity_agrees_with_generate_on_other_architectures(arch):
    facts = small_facts(num_entities=10)
    tok = facts.build_tokenizer()
    model = tiny_causal_lm(arch, vocab_size=len(tok), hidden=32)
    partly_trained(model, tok, facts)
    model.eval()
    reference = greedy_knows(model, tok, facts.rows(repeat=False))
    assert 0 < sum(reference) < len(reference)
    for padding_side in ("left", "right"):
        assert fact_capacity(model, tok, facts, batch_size=7, padding_side=padding_side).known == reference


def test_fact_capacity_takes_rows_and_datasets_and_restores_training_mode(trained_bpe_llama, tokenizer):
    model, facts = trained_bpe_llama
    model.train()
    model.model.layers[0].eval()  # a submodule with its own flag
    direct = fact_capacity(model, tokenizer, facts)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    model.eval()
    dataset = facts.to_dataset(repeat=False)
    assert fact_capacity(model, tokenizer, dataset).known == direct.known
    rows = [{"prompt": r["prompt"], "target": r["target"]} for r in facts.rows(repeat=False)]
    result = fact_capacity(model, tokenizer, rows)
    assert result.known == direct.known and result.by_attribute == {} and result.bits is None


def test_fact_capacity_counts_a_model_that_was_taught_every_fact():
    facts = small_facts(num_entities=6)
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok)).eval()
    history = train_on_facts(model, tok, facts, epochs=150, lr=2e-2, measure_every=50)
    assert not model.training  # trained in train mode, given its own mode back
    assert [e for e, _ in history.capacity] == [50, 100, 150]
    assert history.capacity[-1][1].count == len(facts) == 12
    assert history.losses[-1] < history.losses[0] / 10
    untrained = fact_capacity(tiny_llama(len(tok), seed=1), tok, facts)
    assert untrained.count < len(facts)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "opt"])
def test_training_on_answer_columns_only_is_the_full_loss(arch):
    """The loop asks the model for logits only at the columns that predict an answer (`logits_to_keep`): the loss
    and every gradient equal the full-logits loss, on rows whose answers sit at different columns; a model whose
    forward lacks the argument takes the full path."""
    from hf_memory.fact_scaling.training import _answer_columns_only, _answer_loss

    facts = small_facts(name_syllables=(1, 3))
    tok = facts.build_tokenizer()
    model = tiny_causal_lm(arch, vocab_size=len(tok), seed=3).eval()  # no dropout: both passes see one model
    rows = facts.rows(repeat=False)
    encoded = [encode_prompt_target(tok, r["prompt"], r["target"]) for r in rows]
    assert len({len(p) for p, _ in encoded}) > 1  # answers at several columns
    width = max(len(p) + len(t) for p, t in encoded) + 2  # and padding after every row
    ids = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (p, t) in enumerate(encoded):
        ids[i, : len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p) : len(p) + len(t)] = torch.tensor(t)
        mask[i, : len(p) + len(t)] = 1
    assert _answer_columns_only(model)
    losses, grads = [], []
    for keep in (True, False):
        model.zero_grad()
        loss = _answer_loss(model, ids, mask, labels, keep)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(losses[0], losses[1])
    for kept, full in zip(*grads):
        torch.testing.assert_close(kept, full, rtol=1e-4, atol=1e-6)

    class NoKeep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, labels=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    assert not _answer_columns_only(NoKeep(model))
    train_on_facts(NoKeep(model), tok, facts, epochs=1, lr=1e-3)


def test_fact_capacity_takes_the_split_once_not_once_per_fact(monkeypatch):
    """`SyntheticFactSet.split` builds a fresh list on every call; looking each fact's value set up through it made
    `fact_capacity` quadratic in the facts (10 s of every 12 on 24,000 facts)."""
    facts = small_facts(num_entities=40)
    tok = facts.build_tokenizer()
    calls = []
    original = SyntheticFactSet.split

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SyntheticFactSet, "split", counting)
    result = fact_capacity(tiny_llama(len(tok)), tok, facts)
    assert result.total == len(facts) == 80
    assert len(calls) <= 3


def test_non_embedding_parameters_leave_out_embeddings_and_head():
    model = tiny_llama(100, hidden=16)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = 0 if model.config.tie_word_embeddings else model.get_output_embeddings().weight.numel()
    assert non_embedding_parameters(model) == total - embedding - head
    gpt2 = tiny_causal_lm("gpt2", vocab_size=100, hidden=16)
    positions = gpt2.transformer.wpe.weight.numel()
    total = sum(p.numel() for p in gpt2.parameters())
    assert non_embedding_parameters(gpt2) == total - 100 * 16 - positions


# ---------------------------------------------------------------- callback


@pytest.mark.parametrize("logging_steps", [1000, 1])
def test_callback_logs_what_a_direct_call_measures(tmp_path, logging_steps):
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    facts = small_facts(num_entities=8)
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok))
    data = facts.to_dataset(tokenizer=tok).select_columns(["input_ids", "attention_mask", "labels"])
    callback = FactCapacityCallback(facts, tokenizer=tok)
    modes = []
    original = callback.on_epoch_end

    def spy(args, state, control, model=None, **kwargs):
        out = original(args, state, control, model=model, **kwargs)
        modes.append(model.training)
        return out

    callback.on_epoch_end = spy
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        learning_rate=2e-2,
        logging_strategy="steps",
        logging_steps=logging_steps,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tok, padding=True),
        callbacks=[callback],
    )
    trainer.train()
    assert modes == [True, True, True]  # training mode given back at every epoch end
    logged = [entry for entry in trainer.state.log_history if "fact_capacity/count" in entry]
    assert [round(e["epoch"]) for e in logged] == [1, 2, 3]
    assert [e["fact_capacity/count"] for e in logged] == [r.count for r in callback.results]
    assert [e["fact_capacity/count"] for e in logged] == [h["count"] for h in callback.history]
    direct = fact_capacity(model, tok, facts)
    assert logged[-1]["fact_capacity/count"] == direct.count
    assert logged[-1]["fact_capacity/known/pet"] == direct.by_attribute["pet"]["known"]
    assert logged[-1]["fact_capacity/fraction"] == pytest.approx(direct.fraction)
    assert [e["step"] for e in logged] == [2, 4, 6]  # an entry of their own at each epoch end


def test_callback_numbers_reach_the_reporting_integrations(tmp_path):
    """`report_to` integrations run before user callbacks; numbers added in `on_log` would never reach them."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    class Integration(TrainerCallback):  # stands in for TensorBoard / W&B: registered before the user's callbacks
        def __init__(self):
            self.seen = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs or {}))

    facts = small_facts(num_entities=8)
    tok = facts.build_tokenizer()
    data = facts.to_dataset(tokenizer=tok).select_columns(["input_ids", "attention_mask", "labels"])
    integration = Integration()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=tiny_llama(len(tok)),
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tok, padding=True),
        callbacks=[integration, FactCapacityCallback(facts, tokenizer=tok)],
    )
    trainer.train()
    seen = [entry["fact_capacity/count"] for entry in integration.seen if "fact_capacity/count" in entry]
    logged = [entry["fact_capacity/count"] for entry in trainer.state.log_history if "fact_capacity/count" in entry]
    assert len(seen) == 2 and seen == logged


# ---------------------------------------------------------------- fitting


def test_linear_fit_recovers_known_constants_from_noisy_points():
    rng = np.random.default_rng(0)
    params = np.array([5e3, 1e4, 2e4, 3e4, 4e4, 6e4])
    capacities = 0.25 * params + 300 + rng.normal(0, 150, len(params))
    fit = fit_linear_capacity(params, capacities, seed=1)
    assert set(fit.params) == set(fit.ci) == {"slope", "intercept"}
    low, high = fit.ci["slope"]
    assert low < 0.25 < high and high - low < 0.05
    low, high = fit.ci["intercept"]
    assert low < 300 < high
    assert fit.r2 > 0.99
    assert fit.predict(1e5) == pytest.approx(fit.params["slope"] * 1e5 + fit.params["intercept"])


def test_epoch_fit_recovers_known_constants_from_noisy_points():
    rng = np.random.default_rng(0)
    epochs = np.arange(0, 201, 10)
    capacities = 5000 - 4500 * np.exp(-0.03 * epochs) + rng.normal(0, 60, len(epochs))
    fit = fit_epoch_capacity(epochs.tolist(), capacities, n_bootstrap=300)
    for name, true in {"c_max": 5000, "alpha": 4500, "beta": 0.03}.items():
        low, high = fit.ci[name]
        assert low < true < high, (name, fit.ci[name])
        assert abs(fit.params[name] - true) < 0.1 * true
    assert fit.r2 > 0.99


def test_fits_are_deterministic_and_bootstrap_intervals_widen_with_noise():
    x = [1e4, 2e4, 4e4, 8e4]
    clean = [0.2 * v for v in x]
    noisy = [c + n for c, n in zip(clean, [300, -400, 350, -250])]
    a, b = fit_linear_capacity(x, noisy, seed=3), fit_linear_capacity(x, noisy, seed=3)
    assert a.params == b.params and a.ci == b.ci
    exact = fit_linear_capacity(x, clean)
    assert exact.ci["slope"][1] - exact.ci["slope"][0] < 1e-9
    assert a.ci["slope"][1] - a.ci["slope"][0] > 1e-3


def test_required_scale_inverts_the_laws():
    linear = fit_linear_capacity([1e4, 2e4, 4e4], [2e3 + 100, 4e3 + 100, 8e3 + 100])
    scale = required_scale(1e6, linear)
    assert scale.non_embedding_params == pytest.approx((1e6 - 100) / 0.2)
    assert scale.epochs is None
    assert linear.predict(scale.non_embedding_params) == pytest.approx(1e6)
    e = np.arange(0, 100, 5)
    epoch = fit_epoch_capacity(e, 1000 - 800 * np.exp(-0.1 * e), n_bootstrap=20)
    scale = required_scale(1e6, linear, epoch, fraction=0.9)
    assert scale.non_embedding_params == pytest.approx((1e6 / 0.9 - 100) / 0.2)
    assert epoch.predict(scale.epochs) / epoch.params["c_max"] == pytest.approx(0.9, rel=1e-4)
    assert required_scale(10, linear).non_embedding_params == 0.0  # fewer facts than the intercept
    with pytest.raises(ValueError, match="slope"):
        required_scale(10, fit_linear_capacity([1, 2, 3], [9, 8, 7]))
    with pytest.raises(ValueError, match="fraction"):
        required_scale(10, linear, epoch, fraction=1.0)
    with pytest.raises(ValueError, match="linear_fit"):
        required_scale(10, epoch)
    with pytest.raises(ValueError, match="n_facts"):
        required_scale(0, linear)


# ---------------------------------------------------------------- experiments


def test_experiments_return_their_numbers():
    facts = SyntheticFactSet(num_entities=8, attributes={"code": 16}, inverse=True, seed=0)
    tok = facts.build_tokenizer()
    settings = {"epochs": 60, "lr": 2e-2}
    out = compatibility_experiment(lambda: tiny_llama(len(tok)), tok, facts, **settings)
    assert out["unique_facts"] == 8
    assert out["alone"]["forward"]["known"] == 8  # 8 facts fit easily
    assert out["with_inverse"]["inverse"]["total"] == 8
    assert out["forward_change"] == out["with_inverse"]["forward"]["known"] - 8
    zipf = SyntheticFactSet(
        num_entities=30, attributes={"a": 4, "b": 64}, zipf_exponent=1.0, max_repetitions=8, seed=0
    )
    tok = zipf.build_tokenizer()
    out = preference_experiment(tiny_llama(len(tok), hidden=16), tok, zipf, epochs=5, lr=1e-2)
    assert list(out["by_frequency"]) == ["1", "2-3", "4-7", "8-15"]
    assert sum(v["total"] for v in out["by_frequency"].values()) == 60
    assert out["by_value_set_size"][4]["chance"] == 0.25 and out["by_value_set_size"][64]["total"] == 30
    facts = small_facts(num_entities=6)
    tok = facts.build_tokenizer()
    a, b = facts.select(range(6)), facts.select(range(6, 12))
    out = overwriting_experiment(lambda: tiny_llama(len(tok)), tok, a, b, epochs=80, lr=2e-2)
    assert out["sequential"]["a_after_a"]["known"] == 6 and out["sequential"]["b_after_b"]["known"] == 6
    assert out["a_retained"] == out["sequential"]["a_after_b"]["known"] / 6
    assert out["mixed"]["a"]["total"] == out["mixed"]["b"]["total"] == 6


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_entities": 0}, "num_entities"),
        ({"num_entities": 2.0}, "num_entities"),
        ({"num_entities": True}, "num_entities"),
        ({"attributes": {}}, "both empty"),
        ({"attributes": {"pet": 1}}, r"attributes\['pet'\]"),
        ({"attributes": {"pet": 4.5}}, r"attributes\['pet'\]"),
        ({"attributes": ["pet"]}, "mapping"),
        ({"attributes": {"": 4}}, "attribute names"),
        ({"templates": []}, "empty"),
        ({"templates": "The {attribute} of {entity} is"}, "list"),
        ({"templates": ["The {attribute} of someone is"]}, "no {entity} slot"),
        ({"templates": ["{entity} is"]}, "no {attribute} slot"),
        ({"templates": ["{entity} {attribute} {colour}"]}, "unknown slots"),
        ({"templates": ["{entity} {attribute"]}, "not a valid template"),
        ({"templates": {"birthplace": ["{entity} born in"]}}, "missing"),
        ({"inverse": 1}, "inverse"),
        ({"inverse": True}, "fewer than num_entities"),
        ({"inverse_templates": ["the {attribute} of"]}, r"no \{value\} slot"),
        ({"zipf_exponent": 0}, "zipf_exponent"),
        ({"max_repetitions": 0}, "max_repetitions"),
        ({"held_out_fraction": 0.5}, "rule_attributes"),
        ({"held_out_fraction": 1.0, "rule_attributes": {"c": 2}}, "held_out_fraction"),
        ({"syllables": []}, "syllables"),
        ({"syllables": ["ka", "ka"]}, "syllables"),
        ({"syllables": ["Ka", "lo"]}, "syllables"),
        ({"name_syllables": (3, 2)}, r"name_syllables\[1\]"),
        ({"name_syllables": 2}, "name_syllables"),
        ({"value_syllables": 0}, "value_syllables"),
        ({"attributes": {"pet": 5000}, "value_syllables": 1}, "raise `value_syllables`"),
        (
            {"num_entities": 10**6, "attributes": {"p": 2}, "syllables": ["ka", "lo"], "name_syllables": (1, 1)},
            "too many",
        ),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_fact_set_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_facts(**kwargs)


def test_bad_capacity_and_fit_inputs_are_named(tokenizer):
    facts = small_facts()
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok), hidden=16)
    with pytest.raises(ValueError, match="empty"):
        fact_capacity(model, tok, [])
    with pytest.raises(ValueError, match="prompt"):
        fact_capacity(model, tok, [{"text": "x"}])
    with pytest.raises(ValueError, match="batch_size"):
        fact_capacity(model, tok, facts, batch_size=0)
    with pytest.raises(ValueError, match="padding_side"):
        fact_capacity(model, tok, facts, padding_side="middle")
    with pytest.raises(ValueError, match="split"):
        fact_capacity(model, tok, facts, split="test")
    with pytest.raises(ValueError, match="inverse=True"):
        fact_capacity(model, tok, facts, direction="inverse")
    with pytest.raises(ValueError, match="template"):
        fact_capacity(model, tok, facts, template=3)
    with pytest.raises(ValueError, match="vocabulary"):
        fact_capacity(tiny_llama(8, hidden=16), tok, facts)
    with pytest.raises(ValueError, match="SyntheticFactSet"):
        fact_capacity(model, tok, "The pet of Bob is")
    with pytest.raises(ValueError, match="fewer than 3|at least 3"):
        fit_linear_capacity([1, 2], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        fit_epoch_capacity([], [])
    with pytest.raises(ValueError, match="> 0"):
        fit_linear_capacity([0, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="> 0"):
        fit_linear_capacity([-5, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="4 values but `capacities` has 3"):
        fit_linear_capacity([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match=r"capacities\[1\]"):
        fit_linear_capacity([1, 2, 3], [1, float("nan"), 3])
    with pytest.raises(ValueError, match=r"params\[0\]"):
        fit_linear_capacity([True, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        fit_epoch_capacity([1, 1, 2, 2], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="n_bootstrap"):
        fit_linear_capacity([1, 2, 3], [1, 2, 3], n_bootstrap=0)
    with pytest.raises(ValueError, match="confidence"):
        fit_linear_capacity([1, 2, 3], [1, 2, 3], confidence=1.0)
    with pytest.raises(ValueError, match="epochs"):
        train_on_facts(model, tok, facts, epochs=0, lr=1e-3)
    with pytest.raises(ValueError, match="every"):
        FactCapacityCallback(facts, every=0)
    with pytest.raises(TypeError, match=r"unexpected keyword argument \['batchsize'\]"):
        FactCapacityCallback(facts, batchsize=4)
    with pytest.raises(ValueError, match="inverse=True"):
        compatibility_experiment(lambda: model, tok, facts, epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="make_model"):
        overwriting_experiment(model, tok, facts, facts, epochs=1, lr=1e-3)


# ---------------------------------------------------------------- the house rules


def test_every_public_name_documents_its_arguments():
    import hf_memory.fact_scaling as package

    problems = []
    for name in package.__all__:
        obj = getattr(package, name)
        functions = [(name, obj)] if inspect.isfunction(obj) else []
        if dataclasses.is_dataclass(obj):
            fields = [f.name for f in dataclasses.fields(obj)]
            described = (obj.__doc__ or "").split("Attributes:", 1)[-1]
            problems += [f"{name}.{f}" for f in fields if f"{f}:" not in described]
        elif inspect.isclass(obj):
            functions += [(f"{name}.__init__", obj.__init__)] if "__init__" in vars(obj) else []
        if inspect.isclass(obj):
            functions += [
                (f"{name}.{k}", v) for k, v in vars(obj).items() if inspect.isfunction(v) and not k.startswith("_")
            ]
        assert inspect.getdoc(obj), name
        for label, function in functions:
            doc = (obj.__doc__ or "") + (function.__doc__ or "") if label.endswith("__init__") else function.__doc__
            assert doc, label
            parameters = [
                p.name
                for p in inspect.signature(function).parameters.values()
                if p.name not in ("self", "cls") and p.kind is not p.VAR_POSITIONAL
            ]
            if parameters:
                described = doc.split("Args:", 1)[1] if "Args:" in doc else ""
                problems += [f"{label}({p})" for p in parameters if f"{p}:" not in described]
    assert problems == []


@pytest.mark.slow
def test_example_small_mode_runs(tmp_path):
    from tests.testing_utils import load_example

    summary = load_example("fact_scaling").main(
        ["--small", "--workers", "2", "--seed", "1", "--output-dir", str(tmp_path)]
    )
    assert summary["settings"]["scaling"]["seed"] == 1
    sizes = summary["scaling"]["sizes"]  # trained in two worker processes, joined in order of width
    assert len(sizes) >= 3 and [s["hidden"] for s in sizes] == sorted(s["hidden"] for s in sizes)
    assert set(summary["seconds"]) == {
        "scaling",
        "paraphrase",
        "preference",
        "overwriting",
        "compatibility",
        "generalization",
        "wall",
    }
    assert 0 <= summary["scaling"]["fit"]["r2"] <= 1
    # each size's epoch-law limit, or None where a smoke curve is too short to fit; the size law on the limits only
    # when every size has one
    limits = [size["limit"] for size in summary["scaling"]["sizes"]]
    assert all(limit is None or limit["c_max_ci"][0] <= limit["c_max"] <= limit["c_max_ci"][1] for limit in limits)
    assert (summary["scaling"]["fit_on_limits"] is None) == (None in limits)
    assert summary["overwriting"]["sequential"]["a_after_a"]["total"] > 0
    generalization = summary["generalization"]
    assert generalization["held_out_rule"]["total"] > 0 and generalization["trained_rule"]["total"] > 0
    paraphrase = summary["paraphrase"]
    assert len(paraphrase["templates_3"]["known_by_template"]) == 3
    assert paraphrase["templates_1_same_rows"]["epochs"] == 3 * paraphrase["templates_1"]["epochs"]
    assert paraphrase["templates_3"]["known_in_every_template"] <= min(paraphrase["templates_3"]["known_by_template"])


def test_callback_outside_a_trainer_puts_its_numbers_in_log_history_with_a_warning():
    """One behaviour for every measuring callback without a Trainer (MeasuringCallback's)."""
    from transformers import TrainerControl, TrainerState

    facts = small_facts(num_entities=8)
    tok = facts.build_tokenizer()
    callback = FactCapacityCallback(facts, tokenizer=tok)
    state, control = TrainerState(epoch=1.0, global_step=3, num_train_epochs=2), TrainerControl()
    with pytest.warns(UserWarning, match="FactCapacityCallback is not being called by a transformers Trainer"):
        callback.on_epoch_end(None, state, control, model=tiny_llama(len(tok)))
    assert not control.should_log  # no log is asked for: the entry is written now
    (entry,) = state.log_history
    assert entry["step"] == 3 and entry["fact_capacity/count"] == callback.results[0].count
    assert set(entry) == {"epoch", "step", *(f"fact_capacity/{name}" for name in callback.metric_names())}


@pytest.mark.slow
@pytest.mark.parametrize("modules, projections", [("down", 1), ("mlp", 3)])
def test_lora_capacity_example_small_mode_agrees_with_peft(tmp_path, modules, projections):
    from pathlib import Path

    from tests.testing_utils import load_example

    argv = ["--small", "--modules", modules, "--output-dir", str(tmp_path)]
    summary = load_example("fact_capacity_lora").main(argv)
    runs = summary["runs"]
    assert [r["rank"] for r in runs] == [1, 2] and summary["facts"] <= 150
    assert summary["capacity_before"] == summary["capacity_before_peft"]
    for run in runs:  # the cached last-block computation is exact: PEFT's own fact_capacity counts the same facts
        assert run["capacity"] == run["peft_capacity"] and run["disagreements"] == 0
        assert run["trainable_params"] == run["rank"] * (1536 + 576) * projections
    counts = [summary["capacity_before"]] + [r["capacity"] for r in runs]
    assert all(b >= a - 2 for a, b in zip(counts, counts[1:]))
    assert (tmp_path / "summary.json").is_file()
    assert summary["plots"] and all(Path(p).is_file() for p in summary["plots"])


# ---------------------------------------------------------------- hostile-trial regressions (2026-11-30)


def _prompt_tuned(vocab_size: int, virtual_tokens: int = 3):
    from peft import PromptTuningConfig, get_peft_model

    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens)
    return get_peft_model(tiny_llama(vocab_size), config)


def test_prompt_tuning_trains_on_the_answer_positions_and_pads_right():
    """Prompt tuning prepends virtual tokens (every logit column shifts) and drops `position_ids`: the loss must be
    the model's own labels loss, and left padding must not change a verdict."""
    from hf_memory.fact_scaling.training import _answer_columns_only, _answer_loss

    facts = small_facts()
    tok = facts.build_tokenizer()
    model = _prompt_tuned(len(tok))
    assert not _answer_columns_only(model)
    data = facts.to_dataset(tokenizer=tok, repeat=False)
    rows = [data[i] for i in range(6)]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])
    loss = _answer_loss(model, ids, mask, labels, _answer_columns_only(model))
    assert torch.allclose(loss, model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    # verdicts of a model that knows most facts, alone against padded in one batch (2 of 60 differed)
    from peft import PromptTuningConfig, get_peft_model

    facts = SyntheticFactSet(num_entities=60, attributes={"birthplace": 64}, name_syllables=(1, 3), seed=3)
    tok = facts.build_tokenizer()
    base = tiny_llama(len(tok))
    train_on_facts(base, tok, facts, epochs=25, lr=1e-2, batch_size=16, seed=0)
    torch.manual_seed(0)
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    alone = fact_capacity(model, tok, facts, batch_size=1)
    assert 0 < alone.count < alone.total
    assert fact_capacity(model, tok, facts, batch_size=256, padding_side="left").known == alone.known


def test_a_fit_predicts_by_parameter_name_not_by_key_order():
    fit = fit_linear_capacity([1e4, 2e4, 4e4, 8e4], [2e3, 4e3, 8e3, 16e3], n_bootstrap=20)
    shuffled = dataclasses.replace(fit, params=dict(sorted(fit.params.items())))  # e.g. a json sort_keys round trip
    assert list(shuffled.params) == ["intercept", "slope"]
    assert shuffled.predict(1e5) == pytest.approx(2e4)
    e = np.arange(0, 50, 5)
    epoch = fit_epoch_capacity(e, 1000 - 900 * np.exp(-0.1 * e), n_bootstrap=20)
    turned = dataclasses.replace(epoch, params=dict(sorted(epoch.params.items())))
    assert turned.predict(20) == pytest.approx(epoch.predict(20))


def test_an_epoch_curve_flat_after_epoch_zero_gives_beta_no_interval():
    """Saturated before the first measured epoch: no refit can move beta, and a zero-width interval at the fitted
    value excluded the true one."""
    rng = np.random.default_rng(1)  # a draw whose fit puts beta far out (others fit the noise at epoch 10)
    e = np.arange(0, 100, 10)
    y = 1000 - 900 * np.exp(-4.0 * e) + rng.normal(0, 5, len(e))
    with pytest.warns(UserWarning, match="beta"):
        fit = fit_epoch_capacity(e, y, n_bootstrap=50)
    assert all(math.isnan(v) for v in fit.ci["beta"])
    assert fit.ci["c_max"][0] < fit.ci["c_max"][1]
    identified = fit_epoch_capacity(e, 1000 - 900 * np.exp(-0.1 * e) + rng.normal(0, 5, len(e)), n_bootstrap=50)
    low, high = identified.ci["beta"]
    assert low < 0.1 < high


def test_a_flat_curve_is_a_perfect_fit():
    assert fit_epoch_capacity(range(10), [500] * 10, n_bootstrap=10).r2 == 1.0


def test_callback_checks_every_setting_at_construction_and_keeps_a_generator():
    facts = small_facts()
    tok = facts.build_tokenizer()
    for kwargs, match in (
        ({"batch_size": 0}, "batch_size"),
        ({"padding_side": "middle"}, "padding_side"),
        ({"direction": "both"}, "direction"),
        ({"split": "tests"}, "split"),
    ):
        with pytest.raises(ValueError, match=match):
            FactCapacityCallback(facts, tokenizer=tok, **kwargs)
    callback = FactCapacityCallback((row for row in facts.rows(repeat=False)), tokenizer=tok)
    model = tiny_llama(len(tok))
    assert fact_capacity(model, tok, callback.facts).total == fact_capacity(model, tok, callback.facts).total == 24


def test_train_on_facts_takes_a_generator_and_checks_everything_before_training():
    facts = small_facts()
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok))
    history = train_on_facts(model, tok, (r for r in facts.rows()), epochs=2, lr=1e-2, measure_every=1)
    assert [r.total for _, r in history.capacity] == [24, 24]
    assert all(p.grad is None for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = (
        ({"measure_facts": [{"prompt": "x"}], "measure_every": 1}, "measure_facts|facts\\[0\\]"),
        ({"on_epoch_end": 5}, "on_epoch_end"),
        ({"direction": "sideways"}, "direction"),
    )
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            train_on_facts(model, tok, facts.rows(), epochs=1, lr=1e-2, **kwargs)
    small = tiny_llama(len(tok) - 5)  # the tokenizer's last ids are outside this model's vocabulary
    with pytest.raises(ValueError, match="vocabulary"):
        train_on_facts(small, tok, facts, epochs=1, lr=1e-2)
    with pytest.raises(ValueError, match="non-empty prompt and target string"):
        train_on_facts(model, tok, [{"prompt": "The pet of Ka is", "target": None}], epochs=1, lr=1e-2)
    with pytest.raises(ValueError, match="non-empty prompt and target string"):
        fact_capacity(model, tok, [{"prompt": None, "target": " x"}])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_pad_id_outside_the_vocabulary_is_not_an_error():
    facts = small_facts()
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok))
    tok.add_special_tokens({"pad_token": "<newpad>"})  # id len(vocab): outside the model, never attended
    assert tok.pad_token_id >= model.config.vocab_size
    assert fact_capacity(model, tok, facts).total == 24
    train_on_facts(model, tok, facts, epochs=1, lr=1e-2, batch_size=5)


def test_training_inverse_facts_measures_the_inverse_direction():
    facts = small_facts(attributes={"code": 12}, inverse=True)
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok))
    seen = []
    original = fact_capacity

    def spy(*args, **kwargs):
        seen.append(kwargs.get("direction"))
        return original(*args, **kwargs)

    import hf_memory.fact_scaling.training as training

    training.fact_capacity, restore = spy, training.fact_capacity
    try:
        train_on_facts(model, tok, facts, epochs=1, lr=1e-2, direction="inverse", measure_every=1)
        train_on_facts(model, tok, facts, epochs=1, lr=1e-2, direction="both", measure_every=1)
    finally:
        training.fact_capacity = restore
    assert seen == ["inverse", "forward"]


def test_experiments_refuse_settings_they_cannot_honour_before_building_a_model():
    facts = small_facts(attributes={"code": 12}, inverse=True)
    tok = facts.build_tokenizer()
    built = []

    def make():
        built.append(1)
        return tiny_llama(len(tok))

    with pytest.raises(
        TypeError, match=r"direction set by the experiment\) got unexpected keyword argument \['direction'\]"
    ):
        compatibility_experiment(make, tok, facts, epochs=1, lr=1e-2, direction="forward")
    with pytest.raises(TypeError, match=r"unexpected keyword argument \['typo'\]"):
        compatibility_experiment(make, tok, facts, epochs=1, lr=1e-2, typo=1)
    with pytest.raises(TypeError, match="direction"):
        preference_experiment(tiny_llama(len(tok)), tok, facts, epochs=1, lr=1e-2, direction="inverse")
    assert not built
    with pytest.raises(ValueError, match="make_model"):
        compatibility_experiment(lambda: None, tok, facts, epochs=1, lr=1e-2)


def test_overwriting_in_the_inverse_direction_trains_and_measures_inverse_rows():
    facts = small_facts(attributes={"code": 12}, inverse=True)
    tok = facts.build_tokenizer()
    a, b = facts.select(range(6)), facts.select(range(6, 12))
    import hf_memory.fact_scaling.experiments as experiments

    trained, measured = [], []
    original_train, original_measure = experiments.train_on_facts, experiments.fact_capacity

    def train(model, tokenizer, data, **kwargs):
        rows = data.rows("train", kwargs["config"].direction) if isinstance(data, SyntheticFactSet) else data
        trained.append({r["direction"] for r in rows})
        return original_train(model, tokenizer, data, **kwargs)

    def measure(*args, **kwargs):
        measured.append(kwargs.get("direction"))
        return original_measure(*args, **kwargs)

    experiments.train_on_facts, experiments.fact_capacity = train, measure
    try:
        out = overwriting_experiment(lambda: tiny_llama(len(tok)), tok, a, b, epochs=1, lr=1e-2, direction="inverse")
    finally:
        experiments.train_on_facts, experiments.fact_capacity = original_train, original_measure
    assert trained == [{"inverse"}] * 3 and measured == ["inverse"] * 5
    assert out["mixed"]["a"]["total"] == 6


def test_default_entity_names_tokenize_without_unknown_tokens():
    facts = SyntheticFactSet(num_entities=1000)  # "pet" is a whole word: "Peto" once became <unk>
    tok = facts.build_tokenizer()
    assert not any(tok.unk_token_id in tok(name)["input_ids"] for name in facts.entities)
    with pytest.raises(ValueError, match="Fact of this set"):
        small_facts().prompt(dataclasses.replace(facts.facts[0], attribute="hobby"))


def test_non_embedding_parameters_leave_out_embedding_adapters_as_head_adapters():
    from peft import LoraConfig, get_peft_model

    counts = {}
    for targets in (["q_proj"], ["q_proj", "lm_head"], ["q_proj", "embed_tokens"]):
        model = get_peft_model(tiny_llama(100, hidden=16), LoraConfig(r=2, target_modules=targets))
        counts[tuple(targets)] = non_embedding_parameters(model)
    assert len(set(counts.values())) == 1
    assert counts[("q_proj",)] > non_embedding_parameters(tiny_llama(100, hidden=16))


# ---------------------------------------------------------------- the shared training loop changes no number


def _loop_before_the_shared_loop(model, tokenizer, rows, epochs, lr, batch_size, weight_decay, warmup_steps, schedule,
                                  seed):  # fmt: skip
    """`train_on_facts`' own loop as it was before it moved to `hf_memory._utils.training` (frozen reference)."""
    from hf_memory.fact_scaling.capacity import _encode_rows
    from hf_memory.fact_scaling.training import _answer_columns_only, _answer_loss

    encoded, pad = _encode_rows(model, tokenizer, rows)
    width = max(len(p) + len(t) for p, t in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (p, t) in enumerate(encoded):
        ids[i, : len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p) : len(p) + len(t)] = torch.tensor(t)
        mask[i, : len(p) + len(t)] = 1
    size = len(encoded) if batch_size is None else min(batch_size, len(encoded))
    total = epochs * math.ceil(len(encoded) / size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(total - warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(seed)
    keep_logits = _answer_columns_only(model)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(ids), generator=generator)
        running = 0.0
        for start in range(0, len(ids), size):
            index = order[start : start + size]
            loss = _answer_loss(model, ids[index], mask[index], labels[index], keep_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(index)
        losses.append(running / len(ids))
    return losses


@pytest.mark.parametrize(
    ("arch", "settings"),
    [
        ("gpt2", {"batch_size": 5, "weight_decay": 0.1, "warmup_steps": 3, "schedule": "cosine", "seed": 4}),
        ("llama", {"batch_size": None, "weight_decay": 0.0, "warmup_steps": 0, "schedule": "constant", "seed": 0}),
    ],
)
def test_train_on_facts_gives_the_losses_and_weights_of_the_loop_it_had_before(arch, settings):
    """Fixed seeds, a model with dropout (GPT-2's, drawn from the global RNG): the losses of every epoch and every
    final weight equal, bit for bit, those of the loop `train_on_facts` had before the shared loop."""
    facts = small_facts()
    tok = facts.build_tokenizer()
    reference = tiny_causal_lm(arch, vocab_size=len(tok), seed=2)
    model = tiny_causal_lm(arch, vocab_size=len(tok), seed=2)
    torch.manual_seed(11)
    expected = _loop_before_the_shared_loop(reference, tok, facts.rows("train", "forward", repeat=True), 3, 1e-2,
                                            **settings)  # fmt: skip
    torch.manual_seed(11)
    history = train_on_facts(model, tok, facts, epochs=3, lr=1e-2, **settings)
    assert history.losses == expected and history.steps == 3 * math.ceil(24 / (settings["batch_size"] or 24))
    for (name, trained), (_, ref) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(trained, ref), name


# ---------------------------------------------------------------- FactTrainingConfig: both call styles, one loop


def test_train_on_facts_takes_a_config_or_keywords_with_the_same_result():
    from hf_memory.fact_scaling import FactTrainingConfig

    facts = small_facts()
    tok = facts.build_tokenizer()
    config = FactTrainingConfig(epochs=np.int64(2), lr=np.float32(1e-2), batch_size=5, schedule="cosine", seed=3)
    assert type(config.epochs) is int and type(config.lr) is float
    runs = []
    for call in (
        lambda m: train_on_facts(m, tok, facts, epochs=2, lr=config.lr, batch_size=5, schedule="cosine", seed=3),
        lambda m: train_on_facts(m, tok, facts, config=config),
        lambda m: train_on_facts(m, tok, facts, 2, config.lr, 5, 0.0, 0, "cosine", seed=3),  # positional, as before
        lambda m: train_on_facts(m, tok, facts, config=dataclasses.replace(config, seed=0), seed=3),  # keyword wins
    ):
        model = tiny_llama(len(tok))
        runs.append((call(model).losses, [p.detach().clone() for p in model.parameters()]))
    for losses, weights in runs[1:]:
        assert losses == runs[0][0] and all(torch.equal(a, b) for a, b in zip(weights, runs[0][1]))
    other = tiny_llama(len(tok))
    assert train_on_facts(other, tok, facts, config=config, seed=4).losses != runs[0][0]  # the override is used


def test_train_on_facts_refuses_a_malformed_call_or_a_bad_config_before_training():
    from hf_memory.fact_scaling import FactTrainingConfig
    from hf_memory.memcontrol import MemControlMask

    facts = small_facts()
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match=r"`train_on_facts` needs `epochs` and `lr`, or a `config`"):
        train_on_facts(model, tok, facts)
    with pytest.raises(TypeError, match="needs `lr`"):
        train_on_facts(model, tok, facts, epochs=1)
    with pytest.raises(TypeError, match="`config` must be a FactTrainingConfig, got MemControlMask"):
        train_on_facts(model, tok, facts, config=MemControlMask(["a"], [1]))
    for kwargs, match in (
        ({"epochs": 0, "lr": 1e-2}, "`epochs` must be an integer >= 1"),
        ({"epochs": 1, "lr": -1.0}, "`lr`"),
        ({"epochs": 1, "lr": 1e-2, "schedule": "linear"}, "`schedule` must be one of"),
        ({"epochs": True, "lr": 1e-2}, "`epochs`"),
    ):
        with pytest.raises(ValueError, match=match):
            FactTrainingConfig(**kwargs)
        with pytest.raises(ValueError, match=match):
            train_on_facts(model, tok, facts, **kwargs)
    with pytest.raises(ValueError, match="`warmup_steps`"):
        FactTrainingConfig.from_dict({"epochs": 1, "lr": 1e-2, "warmup_steps": -1})
    frozen = tiny_llama(len(tok)).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        train_on_facts(frozen, tok, facts, epochs=1, lr=1e-2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_experiments_take_a_config_and_refuse_one_that_sets_what_they_set():
    from hf_memory.fact_scaling import FactTrainingConfig

    facts = small_facts(attributes={"code": 12}, inverse=True)
    tok = facts.build_tokenizer()
    built = []

    def make():
        built.append(1)
        return tiny_llama(len(tok))

    with pytest.raises(ValueError, match=r"The experiment sets `direction` itself; leave `config.direction`"):
        compatibility_experiment(make, tok, facts, config=FactTrainingConfig(epochs=1, lr=1e-2, direction="both"))
    with pytest.raises(TypeError, match="needs `epochs` and `lr`"):
        compatibility_experiment(make, tok, facts)
    assert not built
    config = FactTrainingConfig(epochs=1, lr=1e-2, batch_size=8)
    by_config = compatibility_experiment(make, tok, facts, config=config)
    by_keywords = compatibility_experiment(make, tok, facts, epochs=1, lr=1e-2, batch_size=8)
    assert by_config == by_keywords and len(built) == 4


def test_train_on_facts_holds_the_model_and_gives_every_module_its_mode_back():
    from hf_memory._utils import exclusive

    facts = small_facts()
    tok = facts.build_tokenizer()
    model = tiny_llama(len(tok)).eval()
    model.model.layers[1].train()  # a submodule in another mode than its parent
    modes = [m.training for m in model.modules()]
    seen = []

    def try_to_change(epoch, model):
        seen.append(model.training)
        with pytest.raises(RuntimeError, match="train_on_facts"):  # another in-place call is refused meanwhile
            with exclusive(model, "FastMem"):
                pass
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_on_facts(model, tok, facts, epochs=3, lr=1e-2, measure_every=1, on_epoch_end=try_to_change)
    assert seen == [True, True]  # trained (and measured, then back) in train mode
    assert [m.training for m in model.modules()] == modes and all(p.grad is None for p in model.parameters())
    with exclusive(model, "FastMem"):  # not left held
        pass
    with exclusive(model, "FastMem"):
        with pytest.raises(RuntimeError, match="FastMem"):
            train_on_facts(model, tok, facts, epochs=1, lr=1e-2)


def test_syllables_that_spell_one_surname_two_ways_are_refused_with_a_rule():
    # "Kara" is ka + ra and kar + a: two first syllables, so the rule would give one surname two values
    syllables = ["ka", "kar", "ra", "a", "to", "mi"]
    with pytest.raises(ValueError, match=r"spell the surname 'Kara' two ways \(ka \+ ra and kar \+ a\)"):
        SyntheticFactSet(num_entities=5, rule_attributes={"city": 3}, syllables=syllables, name_syllables=(2, 2))
    # a longer detour: ka + bo + bo == kabo + bo needs three syllables; names of two are safe
    detour = ["ka", "kabo", "bo", "zi"]
    with pytest.raises(ValueError, match=r"'Kabobo' two ways"):
        SyntheticFactSet(num_entities=3, rule_attributes={"city": 2}, syllables=detour, name_syllables=(2, 3))
    facts = SyntheticFactSet(
        num_entities=3, rule_attributes={"city": 2}, attributes={}, syllables=detour, name_syllables=(2, 2)
    )
    assert len(facts.entities) == 3
    # without a rule the spelling does not matter; nor with prefix-free syllables (the default)
    SyntheticFactSet(num_entities=5, attributes={"city": 3}, syllables=syllables, name_syllables=(2, 2))
    SyntheticFactSet(num_entities=5, rule_attributes={"city": 3})


def test_train_on_facts_runs_under_a_callers_inference_mode():
    """The shared training loop raised "element 0 of tensors does not require grad" under `torch.inference_mode()`."""
    facts = small_facts()
    tok = facts.build_tokenizer()
    expected = train_on_facts(tiny_llama(len(tok)), tok, facts, epochs=1, lr=1e-2, batch_size=5).losses
    model = tiny_llama(len(tok))  # made outside: weights made under inference_mode cannot be trained at all
    with torch.inference_mode():
        losses = train_on_facts(model, tok, facts, epochs=1, lr=1e-2, batch_size=5).losses
    assert losses == expected


@pytest.mark.slow
def test_capacity_seeds_example_small_mode_resumes_and_summarises(tmp_path):
    import json
    import os

    from tests.testing_utils import run_example

    first = run_example("fact_capacity_seeds", "--small", "--only", "main", "--output-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    main_files = sorted((tmp_path / "jobs").glob("main_*.json"))
    stamps = [path.stat().st_mtime_ns for path in main_files]
    run = run_example("fact_capacity_seeds", "--small", "--output-dir", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "6 jobs finished earlier, 14 to run" in run.stdout  # the main grid is not trained again
    assert [path.stat().st_mtime_ns for path in main_files] == stamps
    summary = json.loads((tmp_path / "summary.json").read_text())
    config = summary["settings"]
    main = [f"main_seed{s}_w{w}" for s in config["seeds"] for w in config["widths"]]
    sweep = [f"sweep_w{w}_x{m:g}" for w in config["sweep"]["widths"] for m in config["sweep"]["multipliers"]]
    assert sorted(summary["jobs_finished"]) == sorted(main + sweep)
    for name in main + sweep:
        job = json.loads((tmp_path / "jobs" / f"{name}.json").read_text())
        assert job["seconds"] > 0 and job["curve"][0][0] == 0 and job["curve"][-1][0] == job["job"]["epochs"]
        assert job["job"]["recipe"]["schedule"] == "constant"
    for seed in config["seeds"]:
        entry = summary["per_seed"][str(seed)]
        assert entry["complete"] and entry["widths_done"] == config["widths"]
        fit = entry["exponent"]  # every smoke model knows some facts, so the logarithm exists
        low, high = fit["ci"]
        assert low <= fit["exponent"] <= high and fit["covers_1"] == (low <= 1 <= high)
        assert fit["interval"].startswith("OLS t-interval, 1 dof")
        assert entry["linear"]["bits_per_param"] == pytest.approx(entry["linear"]["params"]["slope"] * 4)
    across = summary["across_seeds"]["exponent"]  # the smoke run's two seeds
    assert across["values"] == [summary["per_seed"][str(s)]["exponent"]["exponent"] for s in config["seeds"]]
    assert across["interval"] == "t-interval over 2 seeds, 1 dof, 95%"
    for job in summary["main"].values():
        for law in (job["epoch_law"], job["epoch_law_from_inflection"]):
            assert law is None or law["r2"] <= 1
    widths = summary["sweep"]["widths"]
    assert sorted(widths) == sorted(str(w) for w in config["sweep"]["widths"])
    for entry in widths.values():
        assert [r["multiplier"] for r in entry["runs"]] == config["sweep"]["multipliers"]
        # constant rate after the same warm-up: the sweep's run at the rule's rate is the main grid's first epochs
        rule = next(r for r in entry["runs"] if r["multiplier"] == 1.0)
        assert rule["capacity"] == entry["main_grid_at_sweep_epochs"]
        assert entry["best_multiplier"] in config["sweep"]["multipliers"] and 0 < entry["rule_share_of_best"] <= 1
    assert {os.path.basename(p) for p in summary["plots"]} == {"fact_capacity_seeds.png", "fact_capacity_lr_sweep.png"}
    assert all((tmp_path / os.path.basename(p)).is_file() for p in summary["plots"])
    # a run with other settings refuses to mix its jobs with these
    other = run_example("fact_capacity_seeds", "--small", "--epochs", "6", "--output-dir", str(tmp_path))
    assert other.returncode != 0 and "was made with other settings" in other.stderr


def test_capacity_seeds_refuses_an_edited_job_file_naming_it(tmp_path):
    import json

    from tests.testing_utils import load_example

    seeds = load_example("fact_capacity_seeds")
    queue = seeds.job_queue(seeds.settings(small=True), "all")
    path = tmp_path / f"{seeds.job_name(queue[0])}.json"
    for text, message in [
        ('{"job": {"kind": "ma', "not a job file this script wrote"),
        ("[1, 2]", "no capacity, curve, facts, job"),
        (json.dumps({"job": queue[0]}), "no capacity, curve, facts, non_embedding_params, seconds"),
    ]:
        path.write_text(text)
        with pytest.raises(SystemExit, match=message) as refused:
            seeds.load_finished(str(tmp_path), queue)
        assert str(path) in str(refused.value)
    good = {"job": queue[0], "facts": 1, "non_embedding_params": 1, "curve": [[0, 0]], "capacity": 0, "seconds": 1}
    path.write_text(json.dumps(good))
    assert list(seeds.load_finished(str(tmp_path), queue)) == [seeds.job_name(queue[0])]


def test_capacity_seeds_interval_over_seeds_matches_a_hand_computation():
    from tests.testing_utils import load_example

    seeds = load_example("fact_capacity_seeds")
    out = seeds.across_seeds([0.8, 0.9, 1.0])
    # mean 0.9, sd 0.1, t(0.975, 2 dof) = 4.302653: half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert out["mean"] == pytest.approx(0.9) and out["sd"] == pytest.approx(0.1)
    assert out["ci"] == pytest.approx([0.9 - 0.248414, 0.9 + 0.248414], abs=1e-6) and out["covers_1"]
    tight = seeds.across_seeds([0.96, 0.97, 0.975])
    assert tight["ci"][1] < 1 and not tight["covers_1"]
    assert seeds.across_seeds([0.9]) is None and seeds.across_seeds([]) is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--widths", "16,abc,32"], "comma-separated list of integers"),
        (["--widths", "16,20,32"], "multiples of 8"),
        (["--widths", "16,32"], "at least 3 widths"),
        (["--widths", "16,16,32"], "distinct integers"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--seeds=-1,2"], "distinct integers >= 0"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_capacity_seeds_example_refuses_bad_arguments_before_any_work(tmp_path, capsys, argv, message):
    from tests.testing_utils import load_example

    with pytest.raises(SystemExit):
        load_example("fact_capacity_seeds").main([*argv, "--output-dir", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
