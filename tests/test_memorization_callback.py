"""MemorizationCallback: the numbers it logs, its schedules, that it leaves training untouched, DDP, bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainerState

from hf_memory import GoldfishTrainer, GoldfishTrainingArguments
from hf_memory.data import stdlib_docstrings
from hf_memory.extraction import MEMORIZATION_LOG_PREFIX, MemorizationCallback, measure_extraction
from tests.testing_utils import TINY_VOCAB, run_two_processes, tiny_causal_lm, training_args


KEYS = [f"memorization/{name}" for name in ("exact_match", "memorization_score", "longest_common_prefix", "rouge_l")]


def token_rows(n=16, length=40, seed=0):
    return torch.randint(3, TINY_VOCAB, (n, length), generator=torch.Generator().manual_seed(seed)).tolist()


def train_data(rows):
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def memorization_logs(trainer):
    return [entry for entry in trainer.state.log_history if any(k.startswith(MEMORIZATION_LOG_PREFIX) for k in entry)]


class Probe(TrainerCallback):
    """Placed after the MemorizationCallback: at each step it measured, measure the same windows independently."""

    def __init__(self, callback):
        self.callback, self.measured, self.modes, self.grads = callback, {}, [], []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.modes.append(model.training)
        self.grads.append(all(p.grad is None for p in model.parameters()))
        if self.callback.history and self.callback.history[-1]["step"] == state.global_step:
            c = self.callback
            result = measure_extraction(model, c.windows, c.prefix_len, c.suffix_len, show_progress=False)
            self.measured[state.global_step] = result.metrics


class Recorder(TrainerCallback):
    """Placed before the MemorizationCallback, where the `report_to` integrations are: what `on_log` hands them."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_logged_numbers_equal_measure_extraction_at_the_same_step(tmp_path, tokenizer):
    texts = stdlib_docstrings(min_chars=400, max_docs=12)
    rows = [tokenizer(text)["input_ids"][:48] for text in texts]
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    callback = MemorizationCallback(rows, prefix_len=16, suffix_len=16, max_windows=8, every=2, batch_size=3)
    probe, recorder = Probe(callback), Recorder()
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path, max_steps=6),
        train_dataset=train_data(rows),
        callbacks=[recorder, callback, probe],
    )
    trainer.train()

    logged = memorization_logs(trainer)
    assert [entry["step"] for entry in logged] == [2, 4, 6] == [h["step"] for h in callback.history]
    assert sorted(probe.measured) == [2, 4, 6]
    for entry, history in zip(logged, callback.history):
        expected = probe.measured[entry["step"]]
        assert {k: entry[k] for k in KEYS} == {f"memorization/{k}": v for k, v in expected.items()}
        assert {k: history[k] for k in expected} == expected
        assert entry["epoch"] == history["epoch"] == pytest.approx(entry["step"] / 3)  # 12 rows, batch 4
    assert probe.modes == [True] * 6 and probe.grads == [True] * 6  # train mode given back, no gradient left
    assert model.training
    assert [log for log in recorder.logs if KEYS[0] in log] == [
        {k: v for k, v in e.items() if k != "step"} for e in logged
    ]
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2, 3, 4, 5, 6]  # loss logs all kept
    assert len(callback.windows) == 8 and callback.windows.shape[1] == 32 and callback.seconds > 0


def test_the_final_measurement_equals_measure_extraction_after_training(tmp_path):
    rows = token_rows()
    callback = MemorizationCallback(rows, 8, 8, every=4, method="prefix")
    trainer = Trainer(model=tiny_causal_lm(), args=training_args(tmp_path), train_dataset=train_data(rows))
    trainer.add_callback(callback)
    trainer.train()
    (entry,) = memorization_logs(trainer)
    expected = measure_extraction(trainer.model, rows, 8, 8, method="prefix", show_progress=False).metrics
    assert set(expected) == {"exact_match", "longest_common_prefix"}  # method="prefix" reports these two only
    assert {k: v for k, v in entry.items() if k.startswith("memorization/")} == {
        f"memorization/{k}": v for k, v in expected.items()
    }


def final_weights(tmp_path, callbacks):
    rows = token_rows(n=12, seed=1)
    model = tiny_causal_lm("gpt2")  # dropout 0.1: training draws from the global RNG at every step
    args = training_args(tmp_path, max_steps=-1, num_train_epochs=3, logging_steps=2, seed=7)
    Trainer(model=model, args=args, train_dataset=train_data(rows), callbacks=callbacks).train()
    return model.state_dict()


class DrawsFromTheGlobalRNG(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        torch.rand(1)


def test_training_is_bit_identical_with_and_without_the_callback(tmp_path):
    rows = token_rows(n=12, seed=1)
    without = final_weights(tmp_path / "a", [])
    with_callback = final_weights(tmp_path / "b", [MemorizationCallback(rows, 8, 8, max_windows=5, every=1)])
    assert all(torch.equal(without[name], with_callback[name]) for name in without)
    # the comparison can fail: a callback that draws one number from the global RNG changes the weights
    careless = final_weights(tmp_path / "c", [DrawsFromTheGlobalRNG()])
    assert not all(torch.equal(without[name], careless[name]) for name in without)


def test_every_n_counts_optimizer_steps_under_gradient_accumulation(tmp_path):
    rows = token_rows()
    callback = MemorizationCallback(rows, 8, 8, every=np.int64(3))  # numpy integers are accepted
    args = training_args(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=6)
    trainer = Trainer(model=tiny_causal_lm(), args=args, train_dataset=train_data(rows), callbacks=[callback])
    trainer.train()
    assert [entry["step"] for entry in memorization_logs(trainer)] == [3, 6]
    assert all(set(KEYS) <= set(entry) for entry in memorization_logs(trainer))


def test_every_eval_measures_after_each_evaluation_once_per_step(tmp_path):
    rows = token_rows()
    callback = MemorizationCallback(rows, 8, 8)  # every="eval" by default
    args = training_args(tmp_path, eval_strategy="steps", eval_steps=2)
    evals = {"a": train_data(token_rows(4, seed=2)), "b": train_data(token_rows(4, seed=3))}  # two evals per step
    trainer = Trainer(
        model=tiny_causal_lm(), args=args, train_dataset=train_data(rows), eval_dataset=evals, callbacks=[callback]
    )
    trainer.train()
    assert [entry["step"] for entry in memorization_logs(trainer)] == [2, 4]
    steps = [(e["step"], "eval_a_loss" in e or "eval_b_loss" in e) for e in trainer.state.log_history]
    assert steps.index((2, True)) < trainer.state.log_history.index(memorization_logs(trainer)[0])


def test_every_eval_without_evaluation_is_refused_before_the_first_step(tmp_path):
    model = tiny_causal_lm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        model=model,
        args=training_args(tmp_path),
        train_dataset=train_data(token_rows()),
        callbacks=[MemorizationCallback(token_rows(), 8, 8, every="eval")],
    )
    with pytest.raises(ValueError, match=r"every='eval'.*eval_strategy='no'.*every=N"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_token_ids_outside_the_vocabulary_are_refused_before_the_first_step(tmp_path):
    rows = [[5] * 15 + [TINY_VOCAB + 3]]
    trainer = Trainer(
        model=tiny_causal_lm(),
        args=training_args(tmp_path),
        train_dataset=train_data(token_rows()),
        callbacks=[MemorizationCallback(rows, 8, 8, every=1)],
    )
    with pytest.raises(ValueError, match=r"`windows_or_dataset` holds token id 131, outside the model's vocabulary"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_model_measure_extraction_refuses_is_refused_before_the_first_step(tmp_path):
    """A PEFT prompt-tuning model (every method decoded it wrongly, silently), and windows longer than GPT-2's
    learned positions (an IndexError at the first measurement, after training steps): refused when training starts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    peft = pytest.importorskip("peft")
    prompt_tuned = peft.get_peft_model(
        tiny_causal_lm(), peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    torch.manual_seed(0)
    short_positions = GPT2LMHeadModel(
        GPT2Config(vocab_size=TINY_VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=12)
    )
    for model, message in [
        (prompt_tuned, "PEFT prompt-learning model"),
        (short_positions, r"prefix_len \+ suffix_len = 16 tokens is more than"),
    ]:
        trainer = Trainer(
            model=model,
            args=training_args(tmp_path),
            train_dataset=train_data([row[:12] for row in token_rows()]),
            callbacks=[MemorizationCallback(token_rows(), 8, 8, every=1)],
        )
        with pytest.raises(ValueError, match=message):
            trainer.train()
        assert trainer.state.global_step == 0


def test_works_with_goldfish_trainer(tmp_path):
    rows = token_rows()
    callback = MemorizationCallback(rows, 8, 8, every=2)
    args = training_args(tmp_path, args_class=GoldfishTrainingArguments, goldfish_k=3, goldfish_h=3)
    trainer = GoldfishTrainer(model=tiny_causal_lm(), args=args, train_dataset=train_data(rows), callbacks=[callback])
    trainer.train()
    assert [entry["step"] for entry in memorization_logs(trainer)] == [2, 4]
    assert all("goldfish/dropped_fraction" not in entry for entry in memorization_logs(trainer))
    losses = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in losses] == [1, 2, 3, 4] and all("goldfish/dropped_fraction" in e for e in losses)


def test_works_with_trl_sft_trainer_and_leaves_its_metrics_in_the_loss_logs(tmp_path, tokenizer):
    from trl import SFTConfig, SFTTrainer

    texts = [doc[:300] for doc in stdlib_docstrings(min_chars=300, max_docs=8)]
    args = SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=4,
        max_length=64,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=tiny_causal_lm("llama", vocab_size=len(tokenizer)),
        args=args,
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
    )
    callback = MemorizationCallback(trainer.train_dataset, 16, 16, every=2)  # TRL's tokenized data
    trainer.add_callback(callback)
    trainer.train()
    logged = memorization_logs(trainer)
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all(set(entry) == {*KEYS, "epoch", "step"} for entry in logged)  # none of SFTTrainer's metrics
    losses = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in losses] == [1, 2, 3, 4] and all("mean_token_accuracy" in e for e in losses)


def test_the_sample_is_drawn_once_seeded_in_input_order_without_the_global_rng():
    rows = token_rows(n=40, length=20)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first = MemorizationCallback(rows, 4, 4, max_windows=6, stride=4, seed=3)
    assert torch.equal(states[0], torch.get_rng_state()) and states[1] == random.getstate()
    assert (states[2] == np.random.get_state()[1]).all()
    again = MemorizationCallback(rows, 4, 4, max_windows=6, stride=4, seed=3)
    other = MemorizationCallback(rows, 4, 4, max_windows=6, stride=4, seed=4)
    assert torch.equal(first.windows, again.windows) and first.window_index == again.window_index
    assert first.window_index != other.window_index
    assert first.window_index == sorted(first.window_index) and len(first.window_index) == 6
    for (seq, start), window in zip(first.window_index, first.windows):
        assert window.tolist() == rows[seq][start : start + 8]
    everything = MemorizationCallback(rows, 4, 4, max_windows=None, stride=4)
    assert len(everything.windows) == 40 * 4  # starts 0, 4, 8, 12 in each 20-token row


def test_a_dataset_with_padding_and_short_rows():
    data = Dataset.from_dict(
        {
            "input_ids": [[7] * 10 + [0] * 6, [8] * 16, [9] * 3],
            "attention_mask": [[1] * 10 + [0] * 6, [1] * 16, [1] * 3],
        }
    )
    callback = MemorizationCallback(data, 5, 5)
    assert callback.window_index == [(0, 0), (1, 0)] and callback.num_skipped == 1
    assert callback.windows[0].tolist() == [7] * 10


def test_outside_a_trainer_the_numbers_go_to_log_history_with_a_warning():
    callback = MemorizationCallback(token_rows(4), 8, 8, every=1)
    state = TrainerState()
    state.global_step, state.epoch = 1, 0.5
    with pytest.warns(UserWarning, match="not being called by a transformers Trainer"):
        callback.on_step_end(None, state, None, model=tiny_causal_lm())
    assert set(state.log_history[0]) == {*KEYS, "epoch", "step"} and state.log_history[0]["step"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": "epochs"}, "`every` must be 'eval' (after each evaluation), 'epoch' (at the end of each epoch)"),
        ({"every": 0}, "or an integer >= 1 (every that many optimizer steps), got 0"),
        ({"every": True}, "`every` must be 'eval'"),
        ({"every": 2.0}, "`every` must be 'eval'"),
        ({"prefix_len": 0}, "`prefix_len` must be an integer >= 1, got 0"),
        ({"suffix_len": "8"}, "`suffix_len` must be an integer >= 1, got '8'"),
        ({"max_windows": 0}, "`max_windows` must be an integer >= 1 or None, got 0"),
        ({"method": "beam"}, "`method` must be one of 'auto', 'prefix', 'generate', got 'beam'"),
        ({"stride": 0}, "`stride` must be an integer >= 1 or None"),
        ({"batch_size": -1}, "`batch_size` must be an integer >= 1"),
        ({"seed": -1}, "`seed` must be an integer >= 0"),
        ({"windows_or_dataset": []}, "`windows_or_dataset` is empty"),
        ({"windows_or_dataset": "some text"}, "`windows_or_dataset` must be token id sequences"),
        ({"windows_or_dataset": None}, "`windows_or_dataset` must be token id sequences"),
        ({"windows_or_dataset": [[1.5] * 20]}, r"`windows_or_dataset\[0\]` must hold integer token ids"),
        (
            {"windows_or_dataset": [[1, 2, 3]]},
            "No sequence of `windows_or_dataset` has prefix_len \\+ suffix_len = 16",
        ),
        ({"windows_or_dataset": Dataset.from_dict({"text": ["a"]})}, "without an `input_ids` column"),
    ],
)
def test_bad_input_is_refused_at_construction(kwargs, message):
    arguments = {"windows_or_dataset": token_rows(2), "prefix_len": 8, "suffix_len": 8, **kwargs}
    with pytest.raises(ValueError, match=message if "\\" in message else None) as error:
        MemorizationCallback(**arguments)
    if "\\" not in message:
        assert message in str(error.value)


def test_numpy_integers_are_accepted():
    callback = MemorizationCallback(
        np.array(token_rows(3)), np.int32(8), np.int64(8), max_windows=np.int16(2), every=np.uint8(5), seed=np.int64(1)
    )
    assert (callback.prefix_len, callback.suffix_len, callback.max_windows, callback.every) == (8, 8, 2, 5)
    assert type(callback.every) is int and len(callback.windows) == 2


@pytest.mark.slow  # two processes
def test_two_processes_log_the_numbers_of_one(tmp_path):
    out = tmp_path / "ranks.json"
    ranks = run_two_processes("distributed_memorization_callback.py", out)

    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["windows"] == ranks[1]["windows"]  # the same sample, whatever each rank's global RNG did
    assert ranks[0]["logged"] == ranks[1]["logged"] and ranks[0]["history"] == ranks[1]["history"]
    assert [entry["step"] for entry in ranks[0]["logged"]] == [2, 4]  # optimizer steps, accumulation 2
    assert ranks[0]["loss_steps"] == [1, 2, 3, 4]
    assert ranks[0]["training"] and ranks[1]["training"]
    # the step-4 numbers are those of one process measuring the final weights
    model = tiny_causal_lm("llama")
    model.load_state_dict(torch.load(str(out) + ".weights.pt"))
    expected = measure_extraction(model, ranks[0]["windows"], 8, 8, show_progress=False).metrics
    final = ranks[0]["logged"][-1]
    assert {k: final[k] for k in KEYS} == {f"memorization/{k}": v for k, v in expected.items()}
