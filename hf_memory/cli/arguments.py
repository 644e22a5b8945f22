"""The `hf-memory` options, as dataclasses (transformers' `HfArgumentParser` pattern, as in trl's `TrlParser`).

A subcommand's options are the fields of its dataclasses: the capability's own config (`ExtractionConfig`,
`AuditConfig`), whose checks run once when it is built, and the few options only the command line has (which model
folder, which files, where the output goes). Help texts and defaults are written once, on the fields.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from .._utils import check_integer, check_number


MAX_SEED = 2**32 - 1  # numpy's seeds, which transformers' set_seed reaches

# Option names of earlier releases, per subcommand: they keep working (with a warning) for one release.
RENAMED_OPTIONS = {
    "measure": {"--out": "--output-file", "--out-dir": "--output-dir"},
    "audit": {"--out": "--output-dir"},
    "demo": {"--out-dir": "--output-dir"},
}


def _none_or(kind):
    """An argparse type that reads `none` (any case) as None and anything else as `kind`."""

    def parse(text: str):
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


class ConfigParser(HfArgumentParser):
    """`HfArgumentParser` whose optional numbers (`int | None` with a default other than None) also take `none`, and
    whose usage lines and errors name an option by its dashed spelling (`--output-dir`, not `--output_dir`)."""

    def _add_dataclass_arguments(self, dtype) -> None:
        super()._add_dataclass_arguments(dtype)
        hints = typing.get_type_hints(dtype)
        names = {f.name for f in dataclasses.fields(dtype) if f.default is not None}
        for action in self._actions:
            hint = hints.get(action.dest)
            if action.dest in names and type(None) in typing.get_args(hint) and action.type in (int, float):
                action.type = _none_or(action.type)
            # argparse shows the first spelling; HfArgumentParser lists the field's own (`--a_b`) first
            action.option_strings.sort(key=lambda spelling: "_" in spelling)


@dataclass
class ModelArguments:
    """Which model a command loads, and how.

    Args:
        model: A local model folder or a Hub model id ("org/name", read from the Hugging Face cache and downloaded
            into it when missing, unless `HF_HUB_OFFLINE=1`); None loads the embedded SmolLM2-135M-Instruct.
        gguf_file: The GGUF file inside `model`, if the model is stored as one.
        revision: With a Hub model id, the branch, tag or commit.
        dtype: The weights' dtype ("auto": the checkpoint's own); None: float32.
        device: Where the model runs; None: CUDA when available, else the CPU.

    Raises:
        ValueError: If `dtype` or `device` is refused (a device this machine does not have).
    """

    model: str | None = field(
        default=None,
        metadata={
            "help": "A local model folder or a Hub model id (org/name, from the Hugging Face cache; downloaded when "
            "missing unless HF_HUB_OFFLINE=1). Default: the embedded SmolLM2-135M-Instruct (de-quantized from a "
            "4-bit GGUF file; it audits real texts at about 0%%: see `hf-memory demo --quick` for a positive control).",
            "metavar": "FOLDER_OR_ID",
        },
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file name inside --model, if the model is a GGUF file."}
    )
    revision: str | None = field(
        default=None,
        metadata={"help": "With a Hub model id: the branch, tag or commit to load (default: the main branch)."},
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "The weights' dtype; auto: the checkpoint's own (default: float32).",
            "choices": ["auto", "float32", "float16", "bfloat16"],
        },
    )
    device: str | None = field(
        default=None,
        metadata={"help": "Where the model runs: cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)."},
    )

    def __post_init__(self):
        from ..models import check_device, check_dtype

        self.dtype = check_dtype(self.dtype)
        check_device(self.device)


@dataclass
class DataArguments:
    """Which documents a command reads.

    Args:
        data: Text files, JSON Lines files, or folders written by `Dataset.save_to_disk`.
        text_field: The text column / JSON key, when a record has no `input_ids`.
    """

    data: list[str] = field(metadata={"help": "Text files, .jsonl files, or save_to_disk folders."})
    text_field: str = field(
        default="text", metadata={"help": "Text column / JSON key when a record has no input_ids."}
    )


@dataclass
class MeasureArguments:
    """Which windows `hf-memory measure` scores, where it writes its rows, and the optional text-level ROUGE.

    Args:
        max_windows: Most windows scored, drawn uniformly with `seed` (as `audit` draws them); None: every window.
        seed: Seed of the `max_windows` draw.
        output_file: A JSON Lines file: one line per window (source, start, scores, predicted and true suffix).
        output_dir: A folder of Parquet shards written as the run goes; rerunning the same command continues there.
        text_rouge: Also report ROUGE-L of the decoded texts.

    Raises:
        ValueError: If `max_windows` is not an integer >= 1 or None, or `seed` is out of range.
    """

    max_windows: int | None = field(
        default=None,
        metadata={
            "help": "Most windows scored, drawn uniformly with --seed as audit draws them (default: every window of "
            "every document). A warning names the documents it leaves mostly unscored."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the --max-windows draw."})

    output_file: str | None = field(
        default=None, metadata={"help": "Write one JSON line per window to this file.", "aliases": ["--out"]}
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Write the per-window rows to Parquet shards in this folder as the run goes; rerunning the same "
            "command after an interruption continues where it stopped.",
            "aliases": ["--out-dir"],
        },
    )
    text_rouge: bool = field(
        default=False,
        metadata={
            "help": "Also report ROUGE-L of the decoded texts (rouge_l_text, the goldfish paper's number; needs the "
            "[analysis] extra; not with --method prefix)."
        },
    )

    def __post_init__(self):
        self.max_windows = check_integer(self.max_windows, "max_windows", minimum=1, allow_none=True)
        self.seed = check_integer(self.seed, "seed", minimum=0, maximum=MAX_SEED)


@dataclass
class AuditArguments:
    """The reference model of `hf-memory audit`, where its report goes, and the Hub repo whose card it updates.

    Args:
        output_dir: The report folder (results.json, windows.parquet, index.html).
        reference_model: A local model folder or Hub model id that did not train on the data, with the model's
            tokenizer.
        reference_gguf_file: The GGUF file inside `reference_model`, if it is one.
        reference_revision: With a Hub model id as `reference_model`, its branch, tag or commit.
        push_to_hub: A Hub model repo id whose card gets the numbers.
        held_out: Files of documents the model did not train on (the formats of `--data`): the control, the
            non-members of the membership-inference section.
    """

    output_dir: str = field(
        metadata={
            "help": "Report folder: results.json, windows.parquet and index.html are written there.",
            "aliases": ["--out"],
        }
    )
    reference_model: str | None = field(
        default=None,
        metadata={
            "help": "A local model folder or Hub model id that did not train on the data, same tokenizer (e.g. the "
            "checkpoint before fine-tuning): adds its extraction and the calibrated CE diagnostic.",
            "metavar": "FOLDER_OR_ID",
        },
    )
    reference_gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file name inside --reference-model, if it is one."}
    )
    reference_revision: str | None = field(
        default=None,
        metadata={
            "help": "With a Hub model id as --reference-model: its branch, tag or commit (e.g. the commit before "
            "fine-tuning, when both are one repo)."
        },
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={
            "help": "Also write the numbers and a Memorization section into this Hub model repo's card.",
            "metavar": "REPO_ID",
        },
    )
    held_out: list[str] | None = field(
        default=None,
        metadata={
            "help": "The control: held-out documents the model did not train on, ideally a random split of the same "
            "source as --data (same formats). Adds membership inference (attack AUCs against these non-members) "
            "and the suspect-against-control contrast (extraction and loss on each) first in the report.",
            "metavar": "FILE",
        },
    )


QUICK_DEMO = {"docs": 8, "held_out": 8, "epochs": 8, "batch_size": 4, "prefix_len": 16, "suffix_len": 16}
"""`hf-memory demo --quick`: a run that still shows the contrast (the settings of tests/test_audit.py's SmolLM2 test,
which asserts it: 8/8 against 0/8 extracted, as `examples/results/demo_quick/` does)."""


@dataclass
class DemoArguments:
    """The settings of `hf-memory demo` (goldfish against standard fine-tuning on the embedded model).

    Args:
        docs: Training documents.
        held_out: Held-out documents for the loss.
        epochs: Fine-tuning epochs per arm.
        lr: Learning rate (constant).
        batch_size: Training and evaluation batch size.
        prefix_len: Tokens of each document given to the model when measuring extraction.
        suffix_len: Tokens the model must then reproduce.
        goldfish_k: Goldfish drops about 1 in `goldfish_k` labels.
        goldfish_h: Width of the hashed window that decides each drop.
        seed: Seed of training and data order.
        output_dir: Where the plot and the JSON results go.
        quick: The positive control in a few minutes: the settings of `QUICK_DEMO` replace those left at their
            defaults (8 training and 8 held-out documents of 16 + 16 tokens, 8 epochs at batch 4).

    Raises:
        ValueError: If a count is out of range or `lr` is not a finite number > 0.
    """

    docs: int = field(default=24, metadata={"help": "Number of training documents."})
    held_out: int = field(default=16, metadata={"help": "Number of held-out documents for the loss."})
    epochs: int = field(default=12, metadata={"help": "Fine-tuning epochs per arm."})
    lr: float = field(default=2e-4, metadata={"help": "Learning rate (constant)."})
    batch_size: int = field(default=8, metadata={"help": "Training and evaluation batch size."})
    prefix_len: int = field(
        default=32, metadata={"help": "Prefix tokens given to the model.", "aliases": ["--prefix"]}
    )
    suffix_len: int = field(default=32, metadata={"help": "Suffix tokens it must reproduce.", "aliases": ["--suffix"]})
    goldfish_k: int = field(default=4, metadata={"help": "Goldfish drops about 1 in K labels."})
    goldfish_h: int = field(default=13, metadata={"help": "Width of the hashed window deciding each drop."})
    seed: int = field(default=0, metadata={"help": "Seed of training and data order (both arms)."})
    output_dir: str = field(
        default="demo_output", metadata={"help": "Where the plot and the JSON results go.", "aliases": ["--out-dir"]}
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "The positive control in a few minutes: 8 training and 8 held-out documents of 16 + 16 tokens, 8 "
            "epochs at batch 4 (each replaces a setting left at its default)."
        },
    )

    def run_settings(self) -> dict:
        """The settings `run_demo` takes, by name, in its order (`quick` is already applied to them).

        Returns:
            Every field but `quick`, as a dict.
        """
        settings = dataclasses.asdict(self)
        del settings["quick"]
        return settings

    def __post_init__(self):
        if self.quick is not False and self.quick is not True:
            raise ValueError(f"`quick` must be True or False, got {self.quick!r}.")
        if self.quick:
            for name, value in QUICK_DEMO.items():
                if getattr(self, name) == getattr(DemoArguments, name):
                    setattr(self, name, value)
        for name in ("docs", "held_out", "epochs", "batch_size", "prefix_len", "suffix_len", "goldfish_h"):
            setattr(self, name, check_integer(getattr(self, name), name, minimum=1))
        from ..goldfish import GoldfishConfig

        for name, key in (("goldfish_k", "k"), ("goldfish_h", "h")):  # the goldfish config's own bounds
            try:
                GoldfishConfig(**{key: getattr(self, name)})
            except ValueError as err:
                raise ValueError(str(err).replace(f"`{key}`", f"`{name}`", 1)) from None
        self.seed = check_integer(self.seed, "seed", minimum=0, maximum=MAX_SEED)
        self.lr = check_number(self.lr, "lr", minimum=0, exclusive_minimum=True)


def option(parser, name: str) -> str:
    """The option strings of the argument stored in `name`, as argparse names it in its errors (`--a/--b`)."""
    for action in parser._actions:
        if action.dest == name and action.option_strings:
            dashed = [s for s in action.option_strings if "_" not in s]  # the --a_b spelling is HfArgumentParser's
            return "/".join(dashed or action.option_strings)
    return f"--{name.replace('_', '-')}"


def build_from_arguments(parser, cls, args):
    """Build the dataclass `cls` from the parsed options; a value its checks refuse is a usage error naming the
    option (exit status 2, before any work).

    Args:
        parser: The subcommand's parser (its usage line is printed).
        cls: A dataclass whose fields are options of `parser`.
        args: The parsed namespace.
    """
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    try:
        return cls(**{name: getattr(args, name) for name in names})
    except ValueError as err:
        message = str(err)
        culprit = min(
            (name for name in names if f"`{name}`" in message), key=lambda n: message.index(f"`{n}`"), default=None
        )
        parser.error(f"argument {option(parser, culprit)}: {message}" if culprit else message)


def warn_renamed_options(command: str, argv: list[str]) -> None:
    """Print a warning for each option of an earlier release's name used in `argv`.

    Args:
        command: The subcommand.
        argv: The command line's arguments.
    """
    for old, new in RENAMED_OPTIONS.get(command, {}).items():
        if any(arg == old or arg.startswith(old + "=") for arg in argv):
            print(f"hf-memory: warning: {old} is now {new}; {old} goes in a later release", file=sys.stderr)
