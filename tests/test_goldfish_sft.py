"""GoldfishSFTTrainer: TRL's packing (padding-free) and completion-only loss keep working under goldfish."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset

from hf_memory import GoldfishSFTConfig, GoldfishSFTTrainer, apply_goldfish
from hf_memory.data import stdlib_docstrings
from tests.testing_utils import tiny_causal_lm


class RecordingSFTTrainer(GoldfishSFTTrainer):
    def compute_loss(self, model, inputs, *args, **kwargs):
        self.batches = getattr(self, "batches", []) + [{k: v.clone() for k, v in inputs.items() if torch.is_tensor(v)}]
        return super().compute_loss(model, inputs, *args, **kwargs)


def sft_args(tmp_path, **overrides):
    settings = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "report_to": [],
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "max_length": 96,
        "goldfish_k": 3,
        "goldfish_h": 4,
        "dataset_num_proc": None,
    }
    settings.update(overrides)
    return GoldfishSFTConfig(**settings)


def test_packed_documents_get_their_own_masks(tmp_path, tokenizer):
    texts = [doc[:300] for doc in stdlib_docstrings(min_chars=200, max_docs=16)]
    trainer = RecordingSFTTrainer(
        model=tiny_causal_lm("llama", vocab_size=len(tokenizer)),
        args=sft_args(tmp_path, packing=True),
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
    )
    trainer.train()
    config = trainer.goldfish_config
    assert tokenizer.eos_token_id in config.exempt_token_ids
    documents = 0
    for batch in trainer.batches:
        assert "position_ids" in batch and batch["input_ids"].shape[0] == 1  # padding-free: one flat row
        ids, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
        starts = (positions == 0).nonzero().flatten().tolist() + [len(ids)]
        for a, b in zip(starts[:-1], starts[1:]):
            doc = ids[a:b]
            alone = doc.clone()
            alone[0] = -100  # TRL never trains on a document's first token
            assert torch.equal(labels[a:b], apply_goldfish(alone, doc, config))
            documents += b - a > config.h
    assert documents >= 4
    assert any(log.get("goldfish/dropped_fraction", 0) > 0 for log in trainer.state.log_history)


CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<eos>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<eos>{% endif %}{% endfor %}"
)


def prompt_completion_data(docs):
    return Dataset.from_dict({"prompt": [d[:80] for d in docs], "completion": [d[80:240] for d in docs]})


def conversation_data(docs):
    return Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": d[:80]}, {"role": "assistant", "content": d[80:240]}] for d in docs
            ]
        }
    )


@pytest.mark.parametrize(
    "make_data,option", [(prompt_completion_data, "completion_only_loss"), (conversation_data, "assistant_only_loss")]
)
def test_prompt_tokens_stay_masked(tmp_path, tokenizer, make_data, option):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    data = make_data(stdlib_docstrings(min_chars=240, max_docs=8))
    trainer = RecordingSFTTrainer(
        model=tiny_causal_lm("llama", vocab_size=len(tokenizer)),
        args=sft_args(tmp_path, **{option: True}),
        train_dataset=data,
        processing_class=tokenizer,
    )
    trainer.train()
    config = trainer.goldfish_config
    prepared = {tuple(row["input_ids"]): torch.tensor(row["labels"]) for row in trainer.train_dataset}
    rows = 0
    for batch in trainer.batches:
        for ids, labels, attention in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(attention.sum())
            trl_labels = prepared[tuple(ids[:n].tolist())]  # TRL's labels: prompt / user tokens are -100
            assert (trl_labels[:8] == -100).all() and (trl_labels != -100).any()
            assert torch.equal(labels[:n], apply_goldfish(trl_labels, ids[:n], config))
            assert (labels[:n] == -100).sum() > (trl_labels == -100).sum()
            rows += 1
    assert rows == 8


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_the_wrong_arguments_class_is_named():
    from hf_memory import GoldfishSFTTrainer, GoldfishTrainingArguments

    args = GoldfishTrainingArguments(output_dir="unused", report_to=[])
    with pytest.raises(TypeError, match="`args` of GoldfishSFTTrainer must be a GoldfishSFTConfig"):
        GoldfishSFTTrainer(model=tiny_causal_lm("llama"), args=args)
