"""MeasuringCallback, the base of the measuring callbacks: schedules, the model it measures, modes and random states
given back, best-model selection through a real Trainer, and the one behaviour without a Trainer."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerState

from hf_memory._utils import MeasuringCallback, check_every, unwrap_model
from hf_memory.extraction import MemorizationCallback, measure_extraction
from hf_memory.fact_scaling import FactCapacityCallback, SyntheticFactSet
from tests.testing_utils import TINY_VOCAB, tiny_causal_lm, training_args


def token_rows(n=16, length=24, seed=0):
    return torch.randint(3, TINY_VOCAB, (n, length), generator=torch.Generator().manual_seed(seed)).tolist()


def train_data(rows):
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


class Recorder(MeasuringCallback):
    """Measures what the base promises about the call: the model it gets, its mode, gradients; draws random numbers
    from every global generator (which must not reach training)."""

    log_prefix = "probe/"

    def __init__(self, every="eval", fail_at=None):
        super().__init__(every)
        self.seen, self.fail_at = [], fail_at

    def measure(self, model, state):
        self.seen.append((model, model.training, torch.is_grad_enabled()))
        torch.rand(3), random.random(), np.random.rand()
        if state.global_step == self.fail_at:
            raise RuntimeError("measurement failed")
        return {"value": float(state.global_step), "double": 2.0 * state.global_step}

    def metric_names(self):
        return ["value", "double"]


def run(tmp_path, callbacks, model=None, **overrides):
    rows = token_rows()
    trainer = Trainer(
        model=model if model is not None else tiny_causal_lm(),
        args=training_args(tmp_path, **overrides),
        train_dataset=train_data(rows),
        eval_dataset=train_data(token_rows(4, seed=5)),
        callbacks=callbacks,
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize(
    ("every", "overrides", "steps"),
    [
        (3, {"max_steps": 7}, [3, 6, 7]),  # every N steps, and the last one
        ("epoch", {"max_steps": -1, "num_train_epochs": 2}, [4, 8]),  # 16 rows, batch 4
        ("eval", {"eval_strategy": "steps", "eval_steps": 3, "max_steps": 7}, [3, 6, 7]),  # the Trainer's last eval
    ],
)
def test_schedules(tmp_path, every, overrides, steps):
    callback = Recorder(every)
    trainer = run(tmp_path, [callback], **overrides)
    assert [h["step"] for h in callback.history] == steps
    logged = [e for e in trainer.state.log_history if "probe/value" in e]
    assert [e["step"] for e in logged] == steps and all(
        set(e) == {"probe/value", "probe/double", "epoch", "step"} for e in logged
    )
    assert callback.seconds > 0


def test_fact_capacity_every_n_epochs_keeps_its_meaning_and_measures_the_last_epoch(tmp_path):
    facts = SyntheticFactSet(num_entities=8, attributes={"pet": 4}, seed=0)
    tok = facts.build_tokenizer()
    data = facts.to_dataset(tokenizer=tok, repeat=False).select_columns(["input_ids", "attention_mask", "labels"])
    from transformers import DataCollatorForSeq2Seq

    callback = FactCapacityCallback(facts, tokenizer=tok, every=2)
    trainer = Trainer(
        model=tiny_causal_lm(vocab_size=len(tok)),
        args=training_args(tmp_path, max_steps=-1, num_train_epochs=3, per_device_train_batch_size=8),
        train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tok, padding=True),
        callbacks=[callback],
    )
    trainer.train()
    assert [round(h["epoch"]) for h in callback.history] == [2, 3]


def test_the_measured_model_is_unwrapped_in_eval_mode_without_gradient_and_gets_its_modes_back(tmp_path):
    model = tiny_causal_lm()
    callback = Recorder(every=2)
    run(tmp_path, [callback], model=model)
    assert [(m is model, training, grad) for m, training, grad in callback.seen] == [(True, False, False)] * 2
    assert model.training
    model.model.layers[0].eval()  # a submodule in another mode than its parent keeps it
    with pytest.warns(UserWarning, match="not being called by a transformers Trainer"):
        callback.on_step_end(None, TrainerState(global_step=6), None, model=torch.nn.DataParallel(model))
    assert callback.seen[-1] == (model, False, False)  # out of the wrapper
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training


def test_unwrap_model_takes_off_parallel_and_compile_wrappers_but_not_peft():
    peft = pytest.importorskip("peft")
    model = tiny_causal_lm()
    assert unwrap_model(torch.nn.DataParallel(model)) is model
    assert unwrap_model(torch.compile(model)) is model  # nothing is compiled until it is called
    lora = peft.get_peft_model(tiny_causal_lm(), peft.LoraConfig(target_modules=["q_proj"], r=2))
    assert unwrap_model(lora) is lora


def test_training_is_bit_identical_and_the_random_states_are_given_back_even_when_a_measurement_fails(tmp_path):
    def weights(folder, callbacks):
        model = tiny_causal_lm("gpt2")  # dropout: training draws from the global RNG at every step
        run(folder, callbacks, model=model, max_steps=4)
        return model.state_dict()

    without = weights(tmp_path / "a", [])
    with_callback = weights(tmp_path / "b", [Recorder(every=1)])
    assert all(torch.equal(without[k], with_callback[k]) for k in without)

    model = tiny_causal_lm("gpt2")
    model.train()
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    state = TrainerState(global_step=1, epoch=0.1)
    with pytest.raises(RuntimeError, match="measurement failed"):
        Recorder(every=1, fail_at=1).on_step_end(None, state, None, model=model)
    assert torch.equal(states[0], torch.get_rng_state()) and states[1] == random.getstate()
    assert (states[2] == np.random.get_state()[1]).all()
    assert all(module.training for module in model.modules())


def test_metric_for_best_model_selects_the_checkpoint_by_the_callbacks_number(tmp_path):
    """It was a KeyError inside Trainer: the callback's numbers were never in the evaluation metrics."""
    rows = token_rows()
    callback = MemorizationCallback(rows, 8, 8, every="eval", method="prefix")
    trainer = Trainer(
        model=tiny_causal_lm(),
        args=training_args(
            tmp_path,
            max_steps=6,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="steps",
            save_steps=2,
            load_best_model_at_end=True,
            metric_for_best_model="memorization/longest_common_prefix",
            learning_rate=3e-2,
        ),
        train_dataset=train_data(rows),
        eval_dataset=train_data(token_rows(4, seed=5)),
        callbacks=[callback],
    )
    trainer.train()
    values = {h["step"]: h["longest_common_prefix"] for h in callback.history}
    assert sorted(values) == [2, 4, 6]
    best_step = max(values, key=lambda step: (values[step], -step))  # greater is better; the first best wins
    assert trainer.state.best_metric == values[best_step]
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert all("eval_memorization/longest_common_prefix" not in e for e in evals)  # logged once, in its own entry
    # the best checkpoint was loaded; an evaluation after training measures it afresh (not the step-6 numbers)
    metrics = trainer.evaluate()
    expected = measure_extraction(trainer.model, rows, 8, 8, method="prefix", show_progress=False).metrics
    assert metrics["eval_memorization/longest_common_prefix"] == expected["longest_common_prefix"]
    assert callback.history[-1]["step"] == 6 and len(callback.history) == 4


def test_metric_for_best_model_measures_at_every_evaluation_whatever_the_schedule(tmp_path):
    callback = Recorder(every=100)
    trainer = run(
        tmp_path,
        [callback],
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="eval_probe/double",
    )
    assert [h["step"] for h in callback.history] == [2, 4]
    assert trainer.state.best_metric == 8.0


def test_a_best_metric_the_callback_never_reports_is_refused_before_the_first_step(tmp_path):
    callback = MemorizationCallback(token_rows(), 8, 8, method="prefix")
    with pytest.raises(
        ValueError,
        match=r"'memorization/rouge_l', but MemorizationCallback reports "
        r"'memorization/exact_match', 'memorization/longest_common_prefix' only",
    ):
        run(tmp_path, [callback], eval_strategy="steps", eval_steps=2, metric_for_best_model="memorization/rouge_l")
    # a metric of someone else is not the callback's business
    run(tmp_path, [Recorder(every=2)], eval_strategy="steps", eval_steps=2, metric_for_best_model="loss")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "`eval_strategy='no'`"),
        ({"eval_strategy": "steps", "eval_steps": 2, "eval_delay": 10}, "`eval_delay=10`"),
    ],
)
def test_an_eval_schedule_that_never_measures_is_refused_before_the_first_step(tmp_path, overrides, message):
    callback = Recorder(every="eval")
    with pytest.raises(ValueError, match=r"Recorder\(every='eval'\) measures after each evaluation") as error:
        run(tmp_path, [callback], **overrides)
    assert message in str(error.value) and callback.history == []


def test_fact_capacity_without_any_tokenizer_is_refused_when_training_starts(tmp_path):
    facts = SyntheticFactSet(num_entities=4, attributes={"pet": 4}, seed=0)
    tok = facts.build_tokenizer()
    trainer = Trainer(
        model=tiny_causal_lm(vocab_size=len(tok)),
        args=training_args(tmp_path),
        train_dataset=train_data(token_rows()),
        callbacks=[FactCapacityCallback(facts)],
    )
    with pytest.raises(ValueError, match="needs a tokenizer"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("callback_class", ["recorder", "memorization", "fact_capacity"])
def test_without_a_trainer_every_callback_writes_an_entry_of_its_own_and_warns_once(callback_class):
    facts = SyntheticFactSet(num_entities=4, attributes={"pet": 4}, seed=0)
    tok = facts.build_tokenizer()
    callback = {
        "recorder": lambda: Recorder(every=1),
        "memorization": lambda: MemorizationCallback(token_rows(4), 8, 8, every=1),
        "fact_capacity": lambda: FactCapacityCallback(facts, tokenizer=tok, every=1),
    }[callback_class]()
    model = tiny_causal_lm(vocab_size=max(TINY_VOCAB, len(tok)))
    state = TrainerState(max_steps=10, num_train_epochs=10)
    with pytest.warns(UserWarning, match="is not being called by a transformers Trainer") as caught:
        for step in (1, 2):
            state.global_step, state.epoch = step, float(step)
            callback.on_step_end(None, state, None, model=model)
            callback.on_epoch_end(None, state, None, model=model)
    assert len(caught) == 1
    assert [e["step"] for e in state.log_history] == [1, 2] == [h["step"] for h in callback.history]
    names = {f"{callback.log_prefix}{n}" for n in callback.metric_names()}
    assert all(set(e) == {*names, "epoch", "step"} for e in state.log_history)


def test_a_subclass_must_measure_and_schedules_are_checked():
    with pytest.raises(NotImplementedError, match="must implement `measure"):
        MeasuringCallback(every=1).on_step_end(None, TrainerState(global_step=1), None, model=tiny_causal_lm())
    assert check_every(np.int64(3)) == 3 and type(check_every(np.int64(3))) is int
    for bad in ("steps", 0, -1, True, 1.5, None):
        with pytest.raises(ValueError, match="`every` must be 'eval'"):
            check_every(bad)
    with pytest.raises(ValueError, match="every that many epochs"):
        FactCapacityCallback(SyntheticFactSet(num_entities=4, attributes={"pet": 4}), every="epochs")
