"""`hf-memory` command line."""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="hf-memory", description="Measure, prevent and use memorization.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="Fine-tune the embedded SmolLM2 with the standard loss and with goldfish; count verbatim copies."
    )
    demo.add_argument("--model", default=None, help="Local model folder (default: the embedded SmolLM2-135M-Instruct).")
    demo.add_argument("--gguf-file", default=None, help="GGUF file name inside --model, if the model is a GGUF file.")
    demo.add_argument("--docs", type=int, default=8, help="Number of documents to fine-tune on.")
    demo.add_argument("--epochs", type=int, default=12, help="Fine-tuning epochs per arm.")
    demo.add_argument("--lr", type=float, default=2e-4, help="Learning rate (constant).")
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--prefix", type=int, default=32, help="Prefix tokens given to the model.")
    demo.add_argument("--suffix", type=int, default=32, help="Suffix tokens it must reproduce.")
    demo.add_argument("--goldfish-k", type=int, default=4)
    demo.add_argument("--goldfish-h", type=int, default=13)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run_demo

        run_demo(
            model=args.model,
            gguf_file=args.gguf_file,
            docs=args.docs,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            prefix_len=args.prefix,
            suffix_len=args.suffix,
            goldfish_k=args.goldfish_k,
            goldfish_h=args.goldfish_h,
            seed=args.seed,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
