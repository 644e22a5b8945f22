"""Integration on the embedded SmolLM2-135M-Instruct: loading offline, goldfish training steps, the demo."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from datasets import Dataset

from hf_memory import GoldfishTrainingArguments, apply_goldfish, default_model_path, measure_extraction
from hf_memory.cli import main
from hf_memory.data import document_windows, stdlib_docstrings
from tests.test_goldfish_trainer import RecordingGoldfishTrainer


pytestmark = pytest.mark.slow  # the embedded SmolLM2: `make test-fast` skips it


def test_embedded_model_is_the_real_smollm2(smollm2):
    model, tokenizer = smollm2
    assert default_model_path()[1].endswith(".gguf")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.config.vocab_size == len(tokenizer) == 49_152
    assert not getattr(model, "is_quantized", False)  # plain float weights: full fine-tuning allowed
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_tensors="pt"
    )
    prompt = prompt["input_ids"] if not torch.is_tensor(prompt) else prompt
    reply = tokenizer.decode(model.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.shape[1] :])
    assert "4" in reply


def test_shortcut_equals_generate_on_128_windows(smollm2):
    """The teacher-forced shortcut + KV-cache resume against plain greedy `generate`, on the real model.
    Float ties may flip an argmax between the two computation orders: count how often, and keep it rare. (256
    windows until CI time was trimmed; `benchmarks/extraction_throughput.py --grid` compares every window of its
    cells too.)"""
    model, tokenizer = smollm2
    texts = stdlib_docstrings(min_chars=200)
    windows = document_windows(tokenizer, texts, 32)[:128]
    assert len(windows) == 128
    auto = measure_extraction(model, windows, 16, 16, batch_size=64, show_progress=False)
    reference = measure_extraction(model, windows, 16, 16, batch_size=64, method="generate", show_progress=False)
    lcp_differs = sum(a != b for a, b in zip(auto.longest_common_prefix, reference.longest_common_prefix))
    prediction_differs = sum(a != b for a, b in zip(auto.predictions, reference.predictions))
    print(
        f"\nSmolLM2, 128 windows of 16+16 tokens: longest common prefix differs in {lcp_differs}, "
        f"predictions differ in {prediction_differs}"
    )
    assert lcp_differs <= 2 and prediction_differs <= 5
    assert len(set(auto.longest_common_prefix)) > 3  # divergence at many different points
    assert abs(auto.metrics["memorization_score"] - reference.metrics["memorization_score"]) < 0.01


def test_goldfish_trainer_steps_on_smollm2(smollm2, tmp_path):
    base, tokenizer = smollm2
    model = copy.deepcopy(base)
    windows = document_windows(tokenizer, stdlib_docstrings(), 64)[:4]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)
    chat = chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat
    windows[0] = (list(chat) + windows[0])[:64]  # a row with special tokens, which must never be dropped
    args = GoldfishTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        goldfish_k=3,
        goldfish_h=5,
    )
    trainer = RecordingGoldfishTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": windows, "labels": windows}),
        processing_class=tokenizer,
    )
    before = model.model.layers[-1].mlp.down_proj.weight.detach().clone()
    trainer.train()
    assert set(tokenizer.all_special_ids) <= set(trainer.goldfish_config.exempt_token_ids)
    for ids, labels in trainer.seen.values():
        assert torch.equal(labels, apply_goldfish(ids, ids, trainer.goldfish_config))
        special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
        assert (labels[special] != -100).all()
    assert not torch.equal(before, model.model.layers[-1].mlp.down_proj.weight)


def test_demo_command_runs_end_to_end(capsys, tmp_path):
    argv = [
        "demo",
        "--docs",
        "2",
        "--held-out",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--prefix-len",
        "16",
        "--suffix-len",
        "8",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "standard" in out and "goldfish (k=4)" in out and "held-out loss" in out
    results = json.loads((tmp_path / "goldfish_demo.json").read_text())
    assert set(results["results"]) == {"before fine-tuning", "standard", "goldfish (k=4)"}
    assert [h["epoch"] for h in results["histories"]["standard"]] == [1, 2]
    assert (tmp_path / "goldfish_demo.png").stat().st_size > 10_000
    # issue 35: it says what the default model is, and audits both fine-tunes (no control with 2 documents)
    assert "SmolLM2-135M-Instruct, de-quantized from a 4-bit (Q4_1) GGUF file" in out
    assert "no control (membership inference needs 5 documents in each set)" in out
    assert set(results["audits"]) == {"standard", "goldfish (k=4)"}
    for folder in ("audit_standard", "audit_goldfish"):
        audited = json.loads((tmp_path / folder / "results.json").read_text())
        assert audited["data"]["num_windows"] == 2 and audited["control_contrast"] is None


def test_measure_command_on_a_text_file(tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(stdlib_docstrings()[0])
    out = tmp_path / "results.jsonl"
    assert (
        main(
            ["measure", "--data", str(doc), "--prefix-len", "16", "--suffix-len", "16", "--stride", "16"]
            + ["--output-file", str(out), "--text-rouge"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 2 and rows[1]["start"] == 16 and rows[0]["source"] == str(doc)
    assert {"exact_match", "memorization_score", "rouge_l", "rouge_l_text", "prediction_text"} <= set(rows[0])
    assert "exact_match" in printed and "memorization_score" in printed and "rouge_l_text" in printed


def test_examples_train_smollm2(smollm2, tmp_path):
    from tests.testing_utils import load_example

    base, tokenizer = smollm2
    for name in ("goldfish_trainer", "goldfish_sft"):
        module = load_example(name)
        trainer = module.main(
            max_steps=1, output_dir=str(tmp_path / name), model=copy.deepcopy(base), tokenizer=tokenizer
        )
        fractions = [
            log["goldfish/dropped_fraction"] for log in trainer.state.log_history if "goldfish/dropped_fraction" in log
        ]
        assert fractions and 0.1 < fractions[0] < 0.4
