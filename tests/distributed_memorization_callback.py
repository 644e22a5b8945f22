"""Run under 2 processes (see test_memorization_callback.py): train with a MemorizationCallback under DDP (gloo) and
gradient accumulation, dump what each rank logged; rank 0 also saves the final weights and the measured windows."""

from __future__ import annotations

import os
import sys
import tempfile


def main(out_path: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hf_memory.extraction import MEMORIZATION_LOG_PREFIX, MemorizationCallback
    from tests.testing_utils import tiny_causal_lm

    ids = torch.randint(0, 128, (16, 24), generator=torch.Generator().manual_seed(0))
    model = tiny_causal_lm("llama")
    callback = MemorizationCallback(ids, 8, 8, max_windows=12, every=2, batch_size=3)  # 4 batches, 2 per rank
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=4,
            learning_rate=1e-2,
            logging_steps=1,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}),
            callbacks=[callback],
        )
        rank = trainer.args.process_index
        torch.manual_seed(1234 + 7 * rank)  # the global RNG differs per rank: the sample must not care
        trainer.train()
    mine = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "windows": callback.windows.tolist(),
        "history": callback.history,
        "logged": [
            entry for entry in trainer.state.log_history if any(k.startswith(MEMORIZATION_LOG_PREFIX) for k in entry)
        ],
        "loss_steps": [entry["step"] for entry in trainer.state.log_history if "loss" in entry],
        "training": model.training,
    }
    if rank == 0:
        torch.save(model.state_dict(), out_path + ".weights.pt")
    from tests.testing_utils import gather_to_json, leave_process_group

    gather_to_json(mine, out_path)
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
