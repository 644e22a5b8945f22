"""Integration on the embedded SmolLM2-135M-Instruct: loading offline, goldfish training steps, the demo."""

from __future__ import annotations

import copy

import torch
from datasets import Dataset

from hf_memory import GoldfishTrainingArguments, apply_goldfish, default_model_path
from hf_memory.cli import main
from hf_memory.corpus import stdlib_docstrings
from hf_memory.demo import document_windows, greedy_continuation
from tests.test_goldfish_trainer import RecordingGoldfishTrainer


def test_embedded_model_is_the_real_smollm2(smollm2):
    model, tokenizer = smollm2
    assert default_model_path()[1].endswith(".gguf")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.config.vocab_size == len(tokenizer) == 49_152
    assert not getattr(model, "is_quantized", False)  # plain float weights: full fine-tuning allowed
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_tensors="pt")
    prompt = prompt["input_ids"] if not torch.is_tensor(prompt) else prompt
    reply = tokenizer.decode(model.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1]:])
    assert "4" in reply


def test_greedy_continuation_equals_generate(smollm2):
    model, tokenizer = smollm2
    windows = torch.tensor(document_windows(tokenizer, stdlib_docstrings(), 48)[:6])
    mine = greedy_continuation(model, windows[:, :32], 16)
    theirs = model.generate(
        windows[:, :32], attention_mask=torch.ones_like(windows[:, :32]), max_new_tokens=16, do_sample=False,
        eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
    )[:, 32:]
    assert torch.equal(mine, theirs)


def test_goldfish_trainer_steps_on_smollm2(smollm2, tmp_path):
    base, tokenizer = smollm2
    model = copy.deepcopy(base)
    windows = document_windows(tokenizer, stdlib_docstrings(), 64)[:4]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    chat = chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat
    windows[0] = (list(chat) + windows[0])[:64]  # a row with special tokens, which must never be dropped
    args = GoldfishTrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-4, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, goldfish_k=3, goldfish_h=5,
    )
    trainer = RecordingGoldfishTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": windows, "labels": windows}), processing_class=tokenizer)
    before = model.model.layers[-1].mlp.down_proj.weight.detach().clone()
    trainer.train()
    assert set(tokenizer.all_special_ids) <= set(trainer.goldfish_config.exempt_token_ids)
    for ids, labels in trainer.seen.values():
        assert torch.equal(labels, apply_goldfish(ids, ids, trainer.goldfish_config))
        special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
        assert (labels[special] != -100).all()
    assert not torch.equal(before, model.model.layers[-1].mlp.down_proj.weight)


def test_demo_command_runs_end_to_end(capsys):
    assert main(["demo", "--docs", "2", "--epochs", "1", "--batch-size", "2", "--prefix", "16", "--suffix", "8"]) == 0
    out = capsys.readouterr().out
    assert "standard loss" in out and "goldfish (k=4)" in out and "/2" in out


def test_examples_train_smollm2(smollm2, tmp_path):
    import importlib.util
    import os

    base, tokenizer = smollm2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("goldfish_trainer", "goldfish_sft"):
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, "examples", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        trainer = module.main(max_steps=1, output_dir=str(tmp_path / name), model=copy.deepcopy(base), tokenizer=tokenizer)
        fractions = [log["goldfish/dropped_fraction"] for log in trainer.state.log_history if "goldfish/dropped_fraction" in log]
        assert fractions and 0.1 < fractions[0] < 0.4
