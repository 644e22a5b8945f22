"""FastMemCallback and fastmem_generate in combined workflows (third hostile trial, issue 30: B3, P4, P5)."""

from __future__ import annotations

import copy
import gc
import io

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainingArguments

from hf_memory import FastMem, FastMemCallback, FastMemConfig, MemorizationCallback, fastmem_generate
from tests.testing_utils import tiny_causal_lm


GEN = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
CONFIG = FastMemConfig(steps=4, lr=0.1)
PROMPT = torch.arange(5, 15)[None]


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(model, before):
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def calls_of(model):
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


# ---------------------------------------------------------------- B3: the wrapper follows the model it sits on


def test_a_deep_copy_generates_with_the_copy():
    model = tiny_causal_lm("llama").eval()
    callback = FastMemCallback(CONFIG)
    callback.attach(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.mul_(-1)  # the copy now answers differently
    calls, before = calls_of(model), weights(model)
    answer = twin.generate(PROMPT, **GEN)
    assert not calls  # was: the copy's generate memorized into and decoded with the original
    assert same_weights(model, before)
    callback.detach(twin)
    expected = fastmem_generate(twin, PROMPT, CONFIG, **GEN)
    assert torch.equal(answer, expected)
    assert "generate" not in twin.__dict__ and "generate" in model.__dict__  # each model detached on its own
    callback.detach(model)


def test_torch_save_of_an_attached_model_loads_with_the_plain_generate():
    model = tiny_causal_lm("llama").eval()
    callback = FastMemCallback(CONFIG)
    callback.attach(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # was: "Can't pickle local object 'FastMemCallback.attach.<locals>.generate'"
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False).eval()
    plain = type(model).generate(model, PROMPT, **GEN)
    assert torch.equal(loaded.generate(PROMPT, **GEN), plain)  # no callback in the loaded model: plain generate
    assert not torch.equal(model.generate(PROMPT, **GEN), plain)  # the original still memorizes
    callback.attach(loaded)  # a stale wrapper is replaced, not refused
    assert torch.equal(loaded.generate(PROMPT, **GEN), model.generate(PROMPT, **GEN))
    callback.detach(loaded)
    assert "generate" not in loaded.__dict__


def test_a_users_own_generate_survives_copy_and_detach():
    model = tiny_causal_lm("llama").eval()
    model.generate = lambda *args, **kwargs: "mine"
    callback = FastMemCallback(CONFIG)
    callback.attach(model)
    twin = copy.deepcopy(model)
    callback.detach(twin)
    assert twin.generate() == "mine"
    callback.detach(model)
    assert model.generate() == "mine"


# ---------------------------------------------------------------- P4: under torch.inference_mode


def test_fastmem_generate_under_inference_mode():
    model = tiny_causal_lm("llama").eval()
    expected, before = fastmem_generate(model, PROMPT, CONFIG, **GEN), weights(model)
    with torch.inference_mode():
        answer = fastmem_generate(model, PROMPT, CONFIG, **GEN)  # was: "element 0 of tensors does not require grad"
        batch = fastmem_generate(model, PROMPT.repeat(2, 1), CONFIG, **GEN)
    assert torch.equal(answer, expected) and torch.equal(batch[1], expected[0])
    assert same_weights(model, before)
    assert all(not p.is_inference() for p in model.parameters())


def test_a_wrapped_generate_under_inference_mode_and_no_grad():
    model = tiny_causal_lm("llama").eval()
    callback = FastMemCallback(CONFIG)
    callback.attach(model)
    expected, before = model.generate(PROMPT, **GEN), weights(model)
    with torch.inference_mode():
        assert torch.equal(model.generate(PROMPT, **GEN), expected)
    with torch.no_grad():
        assert torch.equal(model.generate(PROMPT, **GEN), expected)
    assert same_weights(model, before)
    callback.detach(model)


def test_memorize_under_inference_mode_trains_and_restores():
    model = tiny_causal_lm("llama")
    before = weights(model)
    with torch.inference_mode(), FastMem(model, CONFIG).memorize(PROMPT) as memorized:
        assert memorized.nll[-1] < memorized.nll[0]
    assert same_weights(model, before)


def _train(model, callbacks, tmp_path):
    sequences = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": sequences.tolist(), "labels": sequences.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="no", learning_rate=1e-2, seed=0,
    )  # fmt: skip
    measure = MemorizationCallback(sequences.tolist(), 8, 8, every=1, method="generate")
    Trainer(model=model, args=args, train_dataset=data, callbacks=[measure, *callbacks]).train()
    return measure.history


def test_a_measuring_callback_beside_fastmem_measures_the_model_as_trained(tmp_path):
    model = tiny_causal_lm("llama")
    model.config.pad_token_id = 0
    reference = _train(copy.deepcopy(model), [], tmp_path)
    history = _train(model, [FastMemCallback(FastMemConfig(steps=8, lr=0.3))], tmp_path)  # was: a crash
    assert history == reference


# ---------------------------------------------------------------- P5: the wrapper does not outlive the Trainer


def test_the_wrapper_goes_with_the_trainer(tmp_path):
    model = tiny_causal_lm("llama").eval()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, callbacks=[FastMemCallback(CONFIG)])
    assert "generate" in model.__dict__
    twin = copy.deepcopy(model)
    del trainer
    gc.collect()
    assert "generate" not in model.__dict__ and "generate" not in twin.__dict__  # was: FastMem forever
    plain = type(model).generate(model, PROMPT, **GEN)
    assert torch.equal(model.generate(PROMPT, **GEN), plain)


def test_the_wrapper_stays_for_evaluation_after_training(tmp_path):
    model = tiny_causal_lm("llama").eval()
    callback = FastMemCallback(CONFIG)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, callbacks=[callback])
    callback.on_train_end(args, trainer.state, trainer.control, model=model)
    model.eval()
    assert torch.equal(model.generate(PROMPT, **GEN), fastmem_generate(model, PROMPT, CONFIG, **GEN))
    callback.detach(model)


# ---------------------------------------------------------------- P5: LoRA on the FFN names merge_and_unload


def test_the_base_model_of_a_peft_model_with_lora_on_the_ffn_points_to_merge_and_unload():
    peft_model = get_peft_model(tiny_causal_lm("llama"), LoraConfig(r=2, target_modules=["down_proj", "q_proj"]))
    with pytest.raises(ValueError, match=r"LoRA.*merge_and_unload\(\)"):  # was: "pass target_modules to peft"
        FastMem(peft_model.get_base_model(), CONFIG)
    with pytest.raises(ValueError, match=r"merge_and_unload\(\)"):
        FastMemCallback(CONFIG).attach(peft_model.get_base_model())
    # LoRA elsewhere (attention only) leaves the FFN plain: FastMem works on the base model
    other = get_peft_model(tiny_causal_lm("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    with FastMem(other.get_base_model(), CONFIG).memorize(PROMPT) as memorized:
        assert memorized.nll[-1] < memorized.nll[0]


# ---------------------------------------------------------------- P2's class in FastMem: a value that stalls later


def test_a_step_count_that_would_never_finish_is_refused_when_built():
    with pytest.raises(ValueError, match=r"`steps` must be an integer in \[1, 10000\]"):
        FastMemConfig(steps=10**30)  # was: accepted, then 10**30 AdamW steps before the first token
    assert FastMemConfig(steps=10_000).steps == 10_000
