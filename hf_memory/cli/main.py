"""`hf-memory` command line: `demo` (goldfish vs standard fine-tuning), `measure` (extractable memorization) and
`audit` (a memorization report on a model's fine-tuning data)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import warnings


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
            "Fine-tune the embedded SmolLM2 with the standard loss and with goldfish, measure extraction, and audit "
            "both fine-tunes (a positive control for `hf-memory audit`: the standard one memorizes, goldfish much "
            "less).",
            "hf-memory demo --epochs 6 --output-dir demo_output",
        ),
        (
            "measure",
            [ModelArguments, DataArguments, ExtractionConfig, MeasureArguments],
            "Extractable memorization of documents under greedy decoding: the prefix of each window is given, the "
            "suffix must come back exactly.",
            "hf-memory measure --model ./my-finetune --data train.jsonl --max-windows 1000 --output-file rows.jsonl",
        ),
        (
            "audit",
            [ModelArguments, DataArguments, AuditConfig, AuditArguments],
            "Did a fine-tune memorize its data? Extraction, signals and a calibrated score, as an HTML report.",
            "hf-memory audit --model ./my-finetune --reference-model org/base-model --data train.jsonl "
            "--held-out held_out.jsonl --output-dir report/",
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

    model, tokenizer = _load("--model", args.model, args.gguf_file, args.revision, args)
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
        reference, reference_tokenizer = _load(
            "--reference-model", args.reference_model, args.reference_gguf_file, args.reference_revision, args
        )
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
        model_name=_model_name(args.model, args.gguf_file, args.revision),
        reference_name=None
        if reference is None
        else _model_name(args.reference_model, args.reference_gguf_file, args.reference_revision),
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


def _cached_file(model: str, filename: str, revision: str | None) -> str | None:
    """The path of `filename` of the Hub model `model` in the local Hugging Face cache, or None if it is not there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(model, filename, revision=revision)
    except ValueError:  # not a repo id after all
        return None
    return path if isinstance(path, str) else None


def _is_hub_id(model: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def _model_problem(
    option: str,
    model: str | None,
    gguf_option: str,
    gguf_file: str | None,
    revision_option: str = "--revision",
    revision: str | None = None,
) -> str | None:
    """What is wrong with a model (a local folder or a Hub model id, and a GGUF file) given on the command line, or
    None. A Hub id is looked up in the local cache when `HF_HUB_OFFLINE` is set (nothing can be downloaded then);
    online, `from_pretrained` finds it or says why not."""
    from huggingface_hub import constants

    if model is None:
        if gguf_file is not None:
            return f"argument {gguf_option}: give {option}, the folder that holds the file"
        if revision is not None:
            return f"argument {revision_option}: give {option}, a Hub model id (the embedded model has no revisions)"
        return None
    if os.path.isfile(model):
        return (
            f"argument {option}: {model!r} is a file; give the folder that holds the model (with {gguf_option} for a "
            "GGUF file in it) or a Hub model id"
        )
    if os.path.isdir(model):
        if revision is not None:
            return f"argument {revision_option}: {model!r} is a local folder; a revision needs a Hub model id"
        if gguf_file is not None:
            if not os.path.isfile(os.path.join(model, gguf_file)):
                return f"argument {gguf_option}: no file {gguf_file!r} in {model!r}"
        elif not os.path.isfile(os.path.join(model, "config.json")):
            return (
                f"argument {option}: {model!r} is not a model folder (no config.json; for a GGUF file add "
                f"{gguf_option})"
            )
        return None
    if not _is_hub_id(model):
        return f"argument {option}: {model!r} is neither a local folder nor a Hub model id (org/name)"
    if constants.HF_HUB_OFFLINE:
        at = "" if revision is None else f" at revision {revision!r}"
        if _cached_file(model, gguf_file or "config.json", revision) is None:
            return (
                f"argument {option}: {model!r} is not a local folder, nor a Hub model{at} in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: nothing is downloaded"
            )
    return None


def _vocabulary_size(model: str, revision: str | None = None) -> int | None:
    """`vocab_size` of a model's config.json (a local folder, or a Hub model in the local cache), or None when
    unknown (a GGUF file, no such key, a Hub model not downloaded yet)."""
    path = os.path.join(model, "config.json") if os.path.isdir(model) else _cached_file(model, "config.json", revision)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    size = config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))
    return size if isinstance(size, int) else None


def _load(option: str, model: str | None, gguf_file: str | None, revision: str | None, args):
    """`load_model` with the command's `--dtype` and `--device`; a model that cannot be loaded is an error naming
    `option`. The embedded default model is introduced first: what it is, and what an audit of it can show."""
    from ..models import DEFAULT_MODEL_DESCRIPTION, check_device, load_model

    if model is None and option == "--model":
        print(
            f"{DEFAULT_MODEL_DESCRIPTION} For a positive control, run `hf-memory demo --quick` (about 2 minutes on 2 "
            "CPU cores): it fine-tunes this model with and without goldfish and audits both."
        )
    try:
        return load_model(model, gguf_file, args.dtype, revision=revision, device=check_device(args.device))
    except OSError as err:
        if model is None:  # the embedded model's own message says what to install
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"argument {option}: {message}") from err


def _model_name(model: str | None, gguf_file: str | None, revision: str | None = None) -> str:
    """How a model is named in the report: its folder (and GGUF file) or Hub id (and revision)."""
    from ..models import DEFAULT_MODEL_NAME

    if model is None:
        return DEFAULT_MODEL_NAME
    name = os.path.join(model, gguf_file) if gguf_file else model
    return name if revision is None else f"{name}@{revision}"


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

    for option, model, gguf_option, gguf_file, revision_option, revision in (
        ("--model", args.model, "--gguf-file", args.gguf_file, "--revision", args.revision),
        (
            "--reference-model",
            args.reference_model,
            "--reference-gguf-file",
            args.reference_gguf_file,
            "--reference-revision",
            args.reference_revision,
        ),
    ):
        problem = _model_problem(option, model, gguf_option, gguf_file, revision_option, revision)
        if problem:
            return problem
    if args.reference_model is not None and args.gguf_file is None and args.reference_gguf_file is None:
        if args.model is not None:
            size = _vocabulary_size(args.model, args.revision)
            reference_size = _vocabulary_size(args.reference_model, args.reference_revision)
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

    Every document is cut into windows as `audit` cuts them: one every `prefix_len + suffix_len` tokens unless
    `--stride` says otherwise. The files are read twice, as streams: once to count the windows (so the progress bar
    has a total and an estimate of the time left, and a bad token id is found before the model runs) and once to
    score them. With `--max-windows`, that many windows are drawn uniformly (`sample_windows`, seeded with
    `--seed`) in the first pass, and a warning names the documents the cap leaves mostly unscored. With
    `--output-file`, one JSON line per window is written: its source, start, scores, and the predicted and true
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
    from tqdm.auto import tqdm

    from ..data import iter_token_sequences
    from ..extraction import measure_extraction, sample_windows

    if config.stride is None:  # every window of each document, as `audit` cuts them
        config = dataclasses.replace(config, stride=config.window_len)
    model, tokenizer = _load("--model", args.model, args.gguf_file, args.revision, args)
    sources: list[str] = []  # one label per document, in order: only what the rows or the warning will name
    keep_labels = args.output_file is not None or args.max_windows is not None

    def documents(label: bool = False):
        """The documents' token ids, streamed from the files and checked against the vocabulary."""
        for ids, source in _in_vocabulary(iter_token_sequences(args.data, tokenizer, args.text_field), model):
            if label:
                sources.append(source)
            yield ids

    length, stride = config.window_len, config.stride
    sample = None
    with tqdm(desc="reading data", unit="document", disable=False) as bar:

        def read():
            for ids in documents(label=keep_labels):
                bar.update(1)
                yield ids

        if args.max_windows is not None:
            sample = sample_windows(read(), config.prefix_len, config.suffix_len, stride, args.max_windows, args.seed)
            num_documents, num_skipped = sample.num_sequences, sample.num_skipped
            num_candidates = sample.num_candidates
        else:
            num_documents = num_skipped = num_candidates = longest = 0
            for ids in read():
                num_documents += 1
                longest = max(longest, len(ids))
                count = len(range(0, len(ids) - length + 1, stride)) if len(ids) >= length else 0
                num_skipped += count == 0
                num_candidates += count
            if num_candidates == 0:
                raise ValueError(
                    f"no document of --data has prefix_len + suffix_len = {length} tokens (the longest has "
                    f"{longest}): lower --prefix-len / --suffix-len or give longer documents"
                )
    if sample is not None:
        message = sample.coverage_warning(lambda document: sources[document], "--max-windows")
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2)
    total = len(sample.index) if sample is not None else num_candidates
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # each process then shows its own share
    bar = None if distributed else tqdm(total=total, desc="extraction", unit="window")
    try:
        result = measure_extraction(
            model,
            sample.windows if sample is not None else documents(),
            config=config,
            tokenizer=tokenizer if args.text_rouge else None,
            output_dir=args.output_dir,
            show_progress=True if bar is None else bar,
        )
    finally:
        if bar is not None:
            bar.close()
    print(
        f"\n{result.num_windows} windows of {config.prefix_len}+{config.suffix_len} tokens, one every {stride} "
        f"tokens, from {num_documents} documents ({num_skipped} too short, skipped"
        + (f"; {total} of {num_candidates} windows drawn with seed {args.seed})" if sample is not None else ")")
    )
    print(f"{'metric':<24}{'value':>10}")
    for name, value in result.metrics.items():
        print(f"{name:<24}{value:>10.4f}")
    if args.output_file:
        per_sample = result.per_sample() if config.method != "prefix" else {}
        os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
        with open(args.output_file, "w", encoding="utf-8") as f:
            for i, ((seq, start), pred, ref) in enumerate(zip(result.windows, result.predictions, result.references)):
                if sample is not None:  # the drawn windows were scored one by one: where each was cut
                    seq, start = sample.index[seq]
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
    problem = _model_problem("--model", args.model, "--gguf-file", args.gguf_file, "--revision", args.revision)
    if problem:
        return problem
    if args.command == "measure":
        for path in args.data:
            problem = _data_problem(path, args.text_field)
            if problem:
                return problem
        if args.output_file is not None:
            if os.path.isdir(args.output_file):
                return f"argument --output-file: {args.output_file!r} is a folder; give a file name"
            folder = os.path.dirname(os.path.abspath(args.output_file))  # created if missing
            if problem := _writable_problem("--output-file", folder):
                return problem
        if args.output_file is not None and args.output_dir is not None:
            return "argument --output-file: not with --output-dir (the rows are in the folder's Parquet shards)"
        if args.max_windows is not None and args.output_dir is not None:
            return (
                "argument --max-windows: not with --output-dir (its rows name each window by document and start as "
                "the documents stream past; a drawn sample is held in memory: use --output-file)"
            )
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


_PACKAGE_FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning raised on behalf of hf-memory as `hf-memory: warning: ...` (one line, no source line);
    anyone else's as Python prints it."""
    if os.path.abspath(filename).startswith(_PACKAGE_FOLDER + os.sep):
        print(f"hf-memory: warning: {message}", file=sys.stderr if file is None else file)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


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
    from .arguments import (
        DemoArguments,
        MeasureArguments,
        ModelArguments,
        build_from_arguments,
        warn_renamed_options,
    )

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    command = parser._subparsers._group_actions[0].choices[args.command]  # the subcommand's parser, for its usage
    if unknown:  # in the subcommand's words: its usage line, not the top-level one
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    warn_renamed_options(args.command, argv)
    build_from_arguments(command, ModelArguments, args)  # --dtype, --device
    if args.command == "measure":
        from ..extraction import ExtractionConfig

        config = build_from_arguments(command, ExtractionConfig, args)
        build_from_arguments(command, MeasureArguments, args)
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
        with warnings.catch_warnings():  # the package's own warnings as one line each, as its errors are
            warnings.showwarning = _show_warning
            if args.command == "demo":
                from .demo import run_demo

                run_demo(
                    args.model,
                    args.gguf_file,
                    **config.run_settings(),
                    revision=args.revision,
                    dtype=args.dtype,
                    device=args.device,
                )
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
