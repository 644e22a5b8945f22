"""`hf-memory` command line: `demo` (goldfish vs standard fine-tuning), `measure` (extractable memorization) and
`audit` (a memorization report on a model's fine-tuning data)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys


DEBUG_ENVIRONMENT = "HF_MEMORY_DEBUG"  # set to 1 for a full traceback on errors (as --debug)


def build_parser() -> argparse.ArgumentParser:
    """The `hf-memory` argument parser, with its `demo`, `measure` and `audit` subcommands.

    Each subcommand's options are the fields of its dataclasses (`HfArgumentParser`): the capability's config
    (`ExtractionConfig`, `AuditConfig`), so `--help` shows each option with the config's help text and default, and
    the command line's own arguments (`hf_memory.cli.arguments`).

    Returns:
        The parser; `parse_args` gives a namespace whose `command` names the subcommand.
    """
    from .._utils import __version__
    from ..auditing import AuditConfig
    from ..extraction import ExtractionConfig
    from .arguments import AuditArguments, ConfigParser, DataArguments, DemoArguments, MeasureArguments, ModelArguments

    parser = ConfigParser(
        prog="hf-memory",
        description="Measure, prevent and use memorization.",
        epilog="Run `hf-memory COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"hf-memory {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"Show the full traceback of an error (or set {DEBUG_ENVIRONMENT}=1)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")  # each a ConfigParser too
    for name, types, summary, example in (
        (
            "demo",
            [ModelArguments, DemoArguments],
            "Fine-tune the embedded SmolLM2 with the standard loss and with goldfish; measure extraction.",
            "hf-memory demo --epochs 6 --output-dir demo_output",
        ),
        (
            "measure",
            [ModelArguments, DataArguments, ExtractionConfig, MeasureArguments],
            "Extractable memorization of documents under greedy decoding: the prefix of each window is given, the "
            "suffix must come back exactly.",
            "hf-memory measure --model ./my-finetune --data train.jsonl --stride 64 --output-dir extraction/",
        ),
        (
            "audit",
            [ModelArguments, DataArguments, AuditConfig, AuditArguments],
            "Did a fine-tune memorize its data? Extraction, signals and a calibrated score, as an HTML report.",
            "hf-memory audit --model ./my-finetune --reference-model ./base --data train.jsonl --output-dir report/",
        ),
    ):
        commands.add_parser(
            name, dataclass_types=types, help=summary, description=summary, epilog=f"example: {example}"
        )
    return parser


def _in_vocabulary(documents, model):
    """Pass `(ids, source)` pairs on, refusing a document with a token id outside the model's vocabulary by its
    source (`file.jsonl:2`), which is what a person can open: the harness would only know its index."""
    size = model.get_input_embeddings().weight.shape[0]
    for ids, source in documents:
        bad = next((i for i in ids if not 0 <= i < size), None)
        if bad is not None:
            raise ValueError(f"{source} holds token id {bad}, outside the model's vocabulary (0 to {size - 1})")
        yield ids, source


def run_audit(args: argparse.Namespace, config) -> dict:
    """`hf-memory audit`: load the model(s) and the documents, audit, write the report, print the headline.

    Args:
        args: The parsed `audit` arguments (the fields of `ModelArguments`, `DataArguments` and `AuditArguments`).
        config: The audit's settings (`AuditConfig`), built from the same arguments.

    Returns:
        The audited model's headline metrics, as in `AuditReport.metrics`.
    """
    from ..auditing import audit
    from ..data import iter_token_sequences
    from ..models import load_model

    model, tokenizer = load_model(args.model, args.gguf_file)
    # the files stream through the audit once; tee hands it the ids and the labels in step (it buffers one pair)
    documents = _in_vocabulary(iter_token_sequences(args.data, tokenizer, args.text_field), model)
    pairs, labels = itertools.tee(documents)
    sequences, sources = (ids for ids, _ in pairs), (source for _, source in labels)
    non_members = non_member_sources = None
    if args.held_out:
        held_out = _in_vocabulary(iter_token_sequences(args.held_out, tokenizer, args.text_field), model)
        held_pairs, held_labels = itertools.tee(held_out)
        non_members, non_member_sources = (ids for ids, _ in held_pairs), (source for _, source in held_labels)
    reference = reference_tokenizer = None
    if args.reference_model is not None:
        reference, reference_tokenizer = load_model(args.reference_model, args.reference_gguf_file)

    def name(folder, gguf_file):
        if folder is None:
            return "SmolLM2-135M-Instruct (embedded)"
        return os.path.join(folder, gguf_file) if gguf_file else folder

    report = audit(
        model,
        tokenizer,
        sequences,
        reference_model=reference,
        config=config,
        output_dir=args.output_dir,
        reference_tokenizer=reference_tokenizer,
        sources=sources,
        non_members=non_members,
        non_member_sources=non_member_sources,
        model_name=name(args.model, args.gguf_file),
        reference_name=None if reference is None else name(args.reference_model, args.reference_gguf_file),
    )
    metrics, reference_metrics = report.metrics, report.reference_metrics
    print(
        f"\n{report.data['num_windows']} windows of {config.prefix_len}+{config.suffix_len} tokens from "
        f"{report.data['num_documents']} documents"
    )
    if report.membership is not None:
        print(f"membership inference against {report.membership.num_non_members} held-out windows:")
        print(f"{'attack':<34}{'AUC':>10}{'interval':>18}")
        for attack, entry in report.membership.attacks.items():
            low, high = entry["auc_interval"]
            print(f"{attack:<34}{entry['auc']:>10.4f}{f'[{low:.3f}, {high:.3f}]':>18}")
    for line in report.membership_verdict():
        print(line)
    print(f"{'metric':<34}{'model':>10}" + (f"{'reference':>12}" if reference_metrics else ""))
    for key in ("exact_match", "half_suffix_rate", "longest_common_prefix", "memorization_score", "rouge_l"):
        line = f"{key:<34}{metrics[key]:>10.4f}"
        if reference_metrics and key in reference_metrics:
            line += f"{reference_metrics[key]:>12.4f}"
        print(line)
    for key in ("calibrated_loss_median", "probabilistic_extraction"):
        if key in metrics:
            print(f"{key:<34}{metrics[key]:>10.4f}")
    print(f"report: {os.path.join(args.output_dir, 'index.html')}")
    if args.push_to_hub:
        url = report.push_to_hub(args.push_to_hub)
        print(f"model card updated: {url}")
    return metrics


def _model_folder_problem(option: str, folder: str | None, gguf_option: str, gguf_file: str | None) -> str | None:
    """What is wrong with a model folder (and GGUF file) given on the command line, or None."""
    if folder is None:
        if gguf_file is not None:
            return f"argument {gguf_option}: give {option}, the folder that holds the file"
        return None
    if not os.path.isdir(folder):
        return f"argument {option}: {folder!r} is not a local folder (nothing is downloaded)"
    if gguf_file is not None:
        if not os.path.isfile(os.path.join(folder, gguf_file)):
            return f"argument {gguf_option}: no file {gguf_file!r} in {folder!r}"
    elif not os.path.isfile(os.path.join(folder, "config.json")):
        return (
            f"argument {option}: {folder!r} is not a model folder (no config.json; for a GGUF file add {gguf_option})"
        )
    return None


def _vocabulary_size(folder: str) -> int | None:
    """`vocab_size` of a model folder's config.json, or None when unknown (a GGUF file, no such key)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    size = config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))
    return size if isinstance(size, int) else None


def _data_problem(path: str, text_field: str, option: str = "--data") -> str | None:
    """What is wrong with a `--data` path, from a look at its start (None if nothing seen): a folder that is no saved
    dataset, an empty or non-UTF-8 file, a JSON Lines file whose first record is not an object with `input_ids` or
    the text field."""
    from .._utils import is_saved_dataset

    if not os.path.exists(path):
        return f"argument {option}: {path!r} does not exist"
    if os.path.isdir(path):
        if not is_saved_dataset(path):
            return f"argument {option}: {path!r} is a folder but not one written by Dataset.save_to_disk"
        return None
    with open(path, "rb") as f:
        start = f.read(1 << 16)
        if not any(chunk.strip() for chunk in itertools.chain([start], iter(lambda: f.read(1 << 16), b""))):
            return f"argument {option}: {path!r} is empty"
    try:  # the first 64 KiB, less a multi-byte character cut at the end
        text = start.decode("utf-8-sig", errors="strict") if len(start) < 1 << 16 else start[:-4].decode("utf-8-sig")
    except UnicodeDecodeError:
        return f"argument {option}: {path!r} is not UTF-8 text (a binary file?)"
    if path.endswith((".jsonl", ".json")):
        first = next((line for line in text.splitlines() if line.strip()), None)
        if first is not None and (len(start) < 1 << 16 or len(first) < len(text)):  # a whole first line
            try:
                record = json.loads(first)
            except ValueError:
                return f"argument {option}: the first line of {path!r} is not JSON (a .jsonl file holds one object per line)"
            if not isinstance(record, dict) or ("input_ids" not in record and text_field not in record):
                return (
                    f"argument {option}: the first record of {path!r} has neither `input_ids` nor `{text_field}` "
                    "(set --text-field)"
                )
    return None


def _writable_problem(option: str, folder: str) -> str | None:
    """What keeps `folder` from being created and written, as an argparse error, or None."""
    from .._utils import writable_problem

    problem = writable_problem(folder)
    return None if problem is None else f"argument {option}: {problem}"


def check_audit_paths(args: argparse.Namespace) -> str | None:
    """What is wrong with the `audit` arguments, checked before any model is loaded (None if nothing).

    Args:
        args: The parsed `audit` arguments.
    """
    from .._utils import EXTRAS, is_available

    for option, folder, gguf_option, gguf_file in (
        ("--model", args.model, "--gguf-file", args.gguf_file),
        ("--reference-model", args.reference_model, "--reference-gguf-file", args.reference_gguf_file),
    ):
        problem = _model_folder_problem(option, folder, gguf_option, gguf_file)
        if problem:
            return problem
    if args.reference_model is not None and args.gguf_file is None and args.reference_gguf_file is None:
        model_folder = args.model
        if model_folder is not None:
            size, reference_size = _vocabulary_size(model_folder), _vocabulary_size(args.reference_model)
            if size is not None and reference_size is not None and size != reference_size:
                return (
                    f"argument --reference-model: its vocabulary has {reference_size} tokens, the model's {size}: "
                    "the reference must share the model's tokenizer"
                )
    for path in args.data:
        problem = _data_problem(path, args.text_field)
        if problem:
            return problem
    data_paths = {os.path.realpath(path) for path in args.data}
    for path in args.held_out or []:
        problem = _data_problem(path, args.text_field, "--held-out")
        if problem:
            return problem
        if os.path.realpath(path) in data_paths:
            return f"argument --held-out: {path!r} is also given to --data: a document cannot be both a member and a non-member"
    problem = _writable_problem("--output-dir", args.output_dir)
    if problem:
        return problem
    if args.push_to_hub is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(args.push_to_hub)
        except HFValidationError:
            return f"argument --push-to-hub: {args.push_to_hub!r} is not a Hub repo id (user/name)"
        from huggingface_hub import constants, get_token

        if constants.HF_HUB_OFFLINE:
            return "argument --push-to-hub: HF_HUB_OFFLINE is set, so nothing can be uploaded"
        if get_token() is None:
            return "argument --push-to-hub: no Hub token (run `hf auth login` or set HF_TOKEN)"
    if not all(is_available(module) for module in EXTRAS["plots"]):
        return 'argument --output-dir: the HTML report needs matplotlib: pip install "hf-memory[plots]"'
    if args.held_out and not all(is_available(module) for module in EXTRAS["analysis"]):
        return (
            "argument --held-out: membership inference needs the analysis extra (scikit-learn): "
            'pip install "hf-memory[analysis]"'
        )
    if args.reference_model is not None and not all(is_available(module) for module in EXTRAS["analysis"]):
        return (
            "argument --reference-model: the calibrated CE diagnostic needs the analysis extra: "
            'pip install "hf-memory[analysis]"'
        )
    return None


def run_measure(args: argparse.Namespace, config) -> dict:
    """`hf-memory measure`: load the model and the documents, measure extraction, print the metrics.

    With `--output-file`, one JSON line per window is written: its source, start, scores, and the predicted and true
    suffix as token ids and text.

    Args:
        args: The parsed `measure` arguments (the fields of `ModelArguments`, `DataArguments` and
            `MeasureArguments`).
        config: The extraction settings (`ExtractionConfig`), built from the same arguments.

    Returns:
        The aggregate metrics, as in `ExtractionResult.metrics`.

    Raises:
        ValueError: If the data gives no documents or no document is long enough for one window.
    """
    from ..data import iter_token_sequences, load_token_sequences
    from ..extraction import measure_extraction
    from ..models import load_model

    model, tokenizer = load_model(args.model, args.gguf_file)
    if args.output_file:  # the JSON lines name each window's source: the documents are read into memory
        sequences, sources = load_token_sequences(args.data, tokenizer, args.text_field)
        list(_in_vocabulary(zip(sequences, sources), model))
        num_documents = len(sequences)
    else:  # streamed: only the batch being scored is held (with --output-dir, the rows go to disk)
        counted = [0]

        def stream():
            for ids, _ in _in_vocabulary(iter_token_sequences(args.data, tokenizer, args.text_field), model):
                counted[0] += 1
                yield ids

        sequences, num_documents = stream(), None
    result = measure_extraction(
        model,
        sequences,
        config=config,
        tokenizer=tokenizer if args.text_rouge else None,
        output_dir=args.output_dir,
    )
    print(
        f"\n{result.num_windows} windows of {config.prefix_len}+{config.suffix_len} tokens from "
        f"{num_documents if num_documents is not None else counted[0]} documents "
        f"({result.num_skipped} too short, skipped)"
    )
    print(f"{'metric':<24}{'value':>10}")
    for name, value in result.metrics.items():
        print(f"{name:<24}{value:>10.4f}")
    if args.output_file:
        per_sample = result.per_sample() if config.method != "prefix" else {}
        with open(args.output_file, "w", encoding="utf-8") as f:
            for i, ((seq, start), pred, ref) in enumerate(zip(result.windows, result.predictions, result.references)):
                row = {
                    "source": sources[seq],
                    "start": start,
                    "longest_common_prefix": result.longest_common_prefix[i],
                }
                row.update(
                    {k.removesuffix("_per_sample"): v[i] for k, v in per_sample.items() if k.endswith("_per_sample")}
                )
                row.update(
                    {
                        "prediction": pred,
                        "reference": ref,
                        "prediction_text": tokenizer.decode(pred),
                        "reference_text": tokenizer.decode(ref),
                    }
                )
                f.write(json.dumps(row) + "\n")
        print(f"per-window results: {args.output_file}")
    if args.output_dir:
        print(f"per-window results: {args.output_dir} (Parquet; datasets.load_dataset('parquet', data_dir=...))")
    return result.metrics


def check_paths(args: argparse.Namespace) -> str | None:
    """What is wrong with the paths on the command line, checked before any work starts (None if nothing).

    Args:
        args: The parsed arguments.
    """
    if args.command == "audit":
        return check_audit_paths(args)
    problem = _model_folder_problem("--model", args.model, "--gguf-file", args.gguf_file)
    if problem:
        return problem
    if args.command == "measure":
        for path in args.data:
            problem = _data_problem(path, args.text_field)
            if problem:
                return problem
        if args.output_file is not None:
            folder = os.path.dirname(os.path.abspath(args.output_file))
            if os.path.isdir(args.output_file):
                return f"argument --output-file: {args.output_file!r} is a folder; give a file name"
            if not os.path.isdir(folder):
                return f"argument --output-file: the folder {folder!r} does not exist"
        if args.output_file is not None and args.output_dir is not None:
            return "argument --output-file: not with --output-dir (the rows are in the folder's Parquet shards)"
        if args.output_dir is not None and (problem := _writable_problem("--output-dir", args.output_dir)):
            return problem
        if args.text_rouge and args.method == "prefix":
            return "argument --text-rouge: needs whole predictions, which --method prefix does not produce"
        if args.text_rouge:
            from .._utils import EXTRAS, is_available

            if not all(is_available(module) for module in EXTRAS["analysis"]):
                return 'argument --text-rouge: needs the analysis extra: pip install "hf-memory[analysis]"'
    if args.command == "demo":
        problem = _writable_problem("--output-dir", args.output_dir)
        if problem:
            return problem
        from ..data import stdlib_docstrings

        length = (
            args.prefix_len + args.suffix_len
        )  # a token spans at least one byte: an upper bound, before the tokenizer
        most = sum(len(doc.encode("utf-8")) >= length for doc in stdlib_docstrings())
        if args.docs + args.held_out > most:
            return (
                f"argument --docs: --docs + --held-out must be at most {most} here (standard-library docstrings of "
                f"at least {length} bytes; fewer have {length} tokens), got {args.docs} + {args.held_out}"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the `hf-memory` command line.

    Bad arguments (values out of range, missing files) are refused before any work, as argparse does: a usage line
    and one error line, exit status 2. An error while working prints one line, `hf-memory: error: ...`, exit
    status 1 (the traceback only with `--debug` or `HF_MEMORY_DEBUG=1`); Ctrl-C exits with 130.

    Args:
        argv: The arguments after the program name; None reads `sys.argv`.

    Returns:
        The exit status: 0 on success, 1 on an error while working, 130 when interrupted.
    """
    from .arguments import DemoArguments, build_from_arguments, warn_renamed_options

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    warn_renamed_options(args.command, argv)
    command = parser._subparsers._group_actions[0].choices[args.command]  # the subcommand's parser, for its usage
    if args.command == "measure":
        from ..extraction import ExtractionConfig

        config = build_from_arguments(command, ExtractionConfig, args)
    elif args.command == "audit":
        from ..auditing import AuditConfig

        config = build_from_arguments(command, AuditConfig, args)
    else:
        config = build_from_arguments(command, DemoArguments, args)
    problem = check_paths(args)
    if problem is not None:
        command.error(problem)
    debug = args.debug or os.environ.get(DEBUG_ENVIRONMENT, "") not in ("", "0")
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.model, args.gguf_file, *dataclasses.astuple(config))
        elif args.command == "measure":
            run_measure(args, config)
        elif args.command == "audit":
            run_audit(args, config)
    except KeyboardInterrupt:
        if debug:
            raise
        print("hf-memory: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; the traceback on request
        if debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"hf-memory: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
