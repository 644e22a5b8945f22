"""Run under 2 processes (see test_goldfish_distributed.py): train with GoldfishTrainer, dump what each rank saw."""

from __future__ import annotations

import os
import sys
import tempfile


def main(out_path: str, strategy: str) -> None:
    import torch
    from datasets import Dataset

    from hf_memory import GoldfishTrainingArguments, goldfish_mask

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.test_goldfish_trainer import RecordingGoldfishTrainer
    from tests.testing_utils import tiny_causal_lm

    ids = torch.randint(0, 50_000, (16, 48), generator=torch.Generator().manual_seed(0))
    model = tiny_causal_lm("llama", vocab_size=50_000)
    with tempfile.TemporaryDirectory() as tmp:
        args = GoldfishTrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=2,
            max_steps=4,
            logging_steps=4,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            goldfish_strategy=strategy,
            goldfish_k=4,
            goldfish_h=6,
            goldfish_exempt_special_tokens=False,
        )
        trainer = RecordingGoldfishTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}),
        )
        rank = trainer.args.process_index
        torch.manual_seed(1234 + 7 * rank)  # the global RNG differs per rank: masks must not care
        trainer.train()
        mine = {
            "rank": rank,
            "world_size": trainer.args.world_size,
            "mask": goldfish_mask(ids, trainer.goldfish_config).tolist(),
            "seen": [(ids.tolist(), labels.tolist()) for ids, labels in trainer.seen.values()],
            "logged": [
                log["goldfish/dropped_fraction"]
                for log in trainer.state.log_history
                if "goldfish/dropped_fraction" in log
            ],
        }
    from tests.testing_utils import gather_to_json, leave_process_group

    gather_to_json(mine, out_path)
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
