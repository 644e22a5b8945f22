"""The main job on the embedded model: fine-tune with the standard loss and with goldfish, count verbatim copies.

Both arms start from the same weights and see the same batches; only the loss differs. A document counts as
reproduced when greedy decoding from its first `prefix_len` tokens returns its next `suffix_len` tokens exactly.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, default_data_collator
from transformers.utils import logging as hf_logging

from .corpus import stdlib_docstrings
from .goldfish_config import GoldfishTrainingArguments
from .goldfish_trainer import GoldfishTrainer
from .models import load_model

logger = logging.getLogger(__name__)


def document_windows(tokenizer, texts, length: int) -> list[list[int]]:
    """The first `length` tokens of each text that has that many (no special tokens added)."""
    windows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            windows.append(ids[:length])
    return windows


@torch.inference_mode()
def greedy_continuation(model, prefix: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding of exactly `new_tokens` tokens, with the KV cache and no stop on end-of-sequence ids
    (a training document may contain them; `generate`'s `min_new_tokens` would forbid them instead)."""
    out = model(input_ids=prefix, use_cache=True)
    tokens = [out.logits[:, -1].argmax(-1)]
    for _ in range(new_tokens - 1):
        out = model(input_ids=tokens[-1][:, None], past_key_values=out.past_key_values, use_cache=True)
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1)


def greedy_reproduction(model, windows, prefix_len: int, batch_size: int = 16) -> list[int]:
    """For each window: how many of its suffix tokens greedy decoding from its prefix reproduces in a row."""
    model.eval()
    matched = []
    for start in range(0, len(windows), batch_size):
        batch = torch.tensor(windows[start : start + batch_size], device=model.device)
        prefix, suffix = batch[:, :prefix_len], batch[:, prefix_len:]
        same = (greedy_continuation(model, prefix, suffix.shape[1]) == suffix).long()
        matched.extend(same.cumprod(dim=1).sum(dim=1).tolist())
    return matched


def _train(model, windows, args_class, trainer_class, output_dir, epochs, lr, batch_size, seed, **extra):
    dataset = Dataset.from_dict({"input_ids": windows, "labels": windows})
    args = args_class(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        per_device_train_batch_size=batch_size,
        logging_steps=max(1, epochs * len(windows) // batch_size // 5),
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        **extra,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    trainer.train()
    return trainer


def run_demo(
    model: str | None = None,
    gguf_file: str | None = None,
    docs: int = 8,
    epochs: int = 12,
    lr: float = 2e-4,
    batch_size: int = 8,
    prefix_len: int = 32,
    suffix_len: int = 32,
    goldfish_k: int = 4,
    goldfish_h: int = 13,
    seed: int = 0,
    device: str | None = None,
) -> dict:
    """Fine-tune two copies of one model (standard loss, goldfish) and report verbatim reproduction for each."""
    hf_logging.set_verbosity_warning()
    started = time.time()
    base, tokenizer = load_model(model, gguf_file)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    base.to(device)
    texts = stdlib_docstrings()
    windows = document_windows(tokenizer, texts, prefix_len + suffix_len)[:docs]
    if len(windows) < docs:
        raise ValueError(f"`docs` must be at most {len(windows)} (documents of {prefix_len + suffix_len} tokens), got {docs}.")

    results = {"before": greedy_reproduction(base, windows, prefix_len)}
    arms = {
        "standard": (TrainingArguments, Trainer, {}),
        "goldfish": (GoldfishTrainingArguments, GoldfishTrainer, {"goldfish_k": goldfish_k, "goldfish_h": goldfish_h}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (args_class, trainer_class, extra) in arms.items():
            print(f"\n[{name}] fine-tuning on {len(windows)} documents for {epochs} epochs")
            arm_model = copy.deepcopy(base)
            torch.manual_seed(seed)
            _train(arm_model, windows, args_class, trainer_class, f"{tmp}/{name}", epochs, lr, batch_size, seed, **extra)
            results[name] = greedy_reproduction(arm_model, windows, prefix_len)
            del arm_model

    print(f"\nVerbatim reproduction of {len(windows)} documents: greedy {suffix_len} tokens from a {prefix_len}-token prefix")
    print(f"{'model':<22}{'reproduced':>12}{'mean matched prefix':>22}")
    for name, label in (("before", "before fine-tuning"), ("standard", "standard loss"), ("goldfish", f"goldfish (k={goldfish_k})")):
        matched = results[name]
        exact = sum(m == suffix_len for m in matched)
        print(f"{label:<22}{f'{exact}/{len(matched)}':>12}{sum(matched) / len(matched):>18.1f} tok")
    print(f"\n(total {time.time() - started:.0f} s on {device})")
    return results
