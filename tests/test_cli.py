"""The command line refuses bad arguments before any work, in one line, and reports failures in one line."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re

import pytest

from hf_memory.cli import main
from hf_memory.data import stdlib_docstrings


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["measure", "--data", "missing.txt"], "argument --data: 'missing.txt' does not exist"),
        (
            ["measure", "--data", "README.md", "--prefix", "0"],
            "argument --prefix-len/--prefix: `prefix_len` must be an integer >= 1, got 0",
        ),
        (["measure", "--data", "README.md", "--stride", "x"], "argument --stride: invalid int value: 'x'"),
        (["measure", "--data", "README.md", "--method", "beam"], "argument --method: invalid choice: 'beam'"),
        (
            ["measure", "--data", "README.md", "--output-file", "README.md/x.jsonl"],
            "argument --output-file: '",  # a folder under a file cannot be created
        ),
        (["measure", "--data", "README.md", "--output-file", "docs"], "argument --output-file: 'docs' is a folder"),
        (["measure", "--data", "README.md", "--model", "no-such-model"], "is not a local folder"),
        (["measure", "--data", "README.md", "--gguf-file", "x.gguf"], "argument --gguf-file: give --model"),
        (
            ["measure", "--data", "README.md", "--method", "prefix", "--text-rouge"],
            "argument --text-rouge: needs whole predictions",
        ),
        (
            ["measure", "--data", "README.md", "--output-file", "x.jsonl", "--output-dir", "out"],
            "argument --output-file: not with --output-dir",
        ),
        (
            ["measure", "--data", "README.md", "--output-dir", "README.md"],
            "argument --output-dir: 'README.md' is a file",
        ),
        (["measure", "--data", "README.md", "--out-dir", "README.md"], "argument --output-dir: 'README.md' is a file"),
        (["audit", "--data", "README.md", "--output-dir", "o", "--max-windows", "0"], "argument --max-windows: `max"),
        (["audit", "--data", "README.md", "--output-dir", "o", "--ce-lr", "-1"], "argument --ce-lr: `ce_lr` must be"),
        (["audit", "--data", "README.md"], "the following arguments are required: --output-dir/--out/--output_dir"),
        (["demo", "--goldfish-k", "1"], "argument --goldfish-k: `goldfish_k` must be an integer in [2, 2147483647]"),
        (["demo", "--goldfish-h", "5000"], "argument --goldfish-h: `goldfish_h` must be an integer in [1, 1024]"),
        (["demo", "--epochs", "0"], "argument --epochs: `epochs` must be an integer >= 1, got 0"),
        (["demo", "--lr", "nan"], "argument --lr: `lr` must be a finite number > 0"),
        (["demo", "--output-dir", "README.md"], "argument --output-dir: 'README.md' is a file"),
        # issue 35: Hub ids, --revision, --dtype, --device, --max-windows, unknown options
        (["measure", "--data", "README.md", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["audit", "--data", "README.md", "--output-dir", "o", "--dtype", "half"], "argument --dtype: invalid choice"),
        (["measure", "--data", "README.md", "--device", "banana"], "argument --device: `device` must be a device"),
        (["measure", "--data", "README.md", "--device", "cuda:99"], "argument --device: `device` is 'cuda:99', but"),
        (["demo", "--device", "tpu"], "argument --device: `device` must be"),
        (["measure", "--data", "README.md", "--model", "README.md"], "argument --model: 'README.md' is a file"),
        (["measure", "--data", "README.md", "--model", "./no/such"], "neither a local folder nor a Hub model id"),
        (["measure", "--data", "README.md", "--model", "a/b/c"], "neither a local folder nor a Hub model id"),
        (["measure", "--data", "README.md", "--revision", "v1"], "argument --revision: give --model, a Hub model id"),
        (["measure", "--data", "README.md", "--model", "docs", "--revision", "v1"], "argument --revision: 'docs' is"),
        (
            ["audit", "--data", "README.md", "--output-dir", "o", "--reference-revision", "v1"],
            "argument --reference-revision: give --reference-model",
        ),
        (
            ["audit", "--data", "README.md", "--output-dir", "o", "--reference-model", "README.md"],
            "argument --reference-model: 'README.md' is a file",
        ),
        (["measure", "--data", "README.md", "--max-windows", "0"], "argument --max-windows: `max_windows` must be"),
        (["measure", "--data", "README.md", "--seed", "-1"], "argument --seed: `seed` must be an integer in [0,"),
        (
            ["measure", "--data", "README.md", "--max-windows", "4", "--output-dir", "o"],
            "argument --max-windows: not with --output-dir",
        ),
        (["audit", "--data", "README.md", "--output-dir", "o", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(argv, message, capsys, monkeypatch):
    import hf_memory.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(hf_memory.models, "load_model", no_model)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("hf-memory")  # the last line says what is wrong
    assert f"usage: hf-memory {argv[0]} " in err and "usage: hf-memory [" not in err  # its own usage (issue 35)


def test_a_failure_while_working_is_one_line_and_exit_1(capsys, monkeypatch, tmp_path):
    import hf_memory.models

    def broken(*args, **kwargs):
        raise OSError("the model folder is unreadable\nsecond line of detail")

    monkeypatch.setattr(hf_memory.models, "load_model", broken)
    assert main(["measure", "--data", "README.md"]) == 1
    err = capsys.readouterr().err
    assert err == "hf-memory: error: the model folder is unreadable\n"
    with pytest.raises(OSError, match="unreadable"):  # --debug shows the whole error
        main(["--debug", "measure", "--data", "README.md"])
    monkeypatch.setenv("HF_MEMORY_DEBUG", "1")
    with pytest.raises(OSError):
        main(["measure", "--data", "README.md"])


def test_ctrl_c_exits_130_without_a_traceback(capsys, monkeypatch):
    import hf_memory.models

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hf_memory.models, "load_model", interrupted)
    assert main(["measure", "--data", "README.md"]) == 130
    assert capsys.readouterr().err == "hf-memory: interrupted\n"


def test_text_rouge_without_the_extra_is_refused_before_any_work(capsys, monkeypatch):
    import sys

    import hf_memory.models

    monkeypatch.setattr(hf_memory.models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["measure", "--data", "README.md", "--text-rouge"])
    assert exit_info.value.code == 2
    assert (
        'argument --text-rouge: needs the analysis extra: pip install "hf-memory[analysis]"' in capsys.readouterr().err
    )


def test_measure_out_dir_writes_shards_and_resumes(tmp_path, capsys, monkeypatch):
    import hf_memory.models
    from hf_memory import ExtractionResult
    from hf_memory.data.tokenizers import word_level_tokenizer
    from tests.testing_utils import TINY_VOCAB, tiny_causal_lm

    words = [f"w{i}" for i in range(TINY_VOCAB - 4)]
    tokenizer, model = word_level_tokenizer(words), tiny_causal_lm("llama")
    monkeypatch.setattr(hf_memory.models, "load_model", lambda *a, **k: (model, tokenizer))
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(words[i % 50] for i in range(300)))
    argv = ["measure", "--data", str(doc), "--prefix", "8", "--suffix", "8", "--stride", "16", "--output-dir"]
    assert main(argv + [str(tmp_path / "out")]) == 0
    first = capsys.readouterr().out
    assert "18 windows of 8+8 tokens" in first and "Parquet" in first
    result = ExtractionResult.load(tmp_path / "out")
    assert result.num_windows == 18 and len(result.dataset()) == 18
    assert main(argv + [str(tmp_path / "out")]) == 0  # a rerun finds everything done
    assert capsys.readouterr().out.split("\n")[1:] == first.split("\n")[1:]


def test_token_sequences_stream_from_files_lazily(tmp_path, tokenizer):
    from hf_memory.data import iter_token_sequences, load_token_sequences

    (tmp_path / "a.txt").write_text("def f(x):\n    return x\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one line"}\n\n{"input_ids": [5, 6, 7]}\n')
    paths = [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]
    stream = iter_token_sequences([*paths, str(tmp_path / "missing.txt")], tokenizer)  # nothing is read yet
    first = next(stream)
    assert first == (tokenizer("def f(x):\n    return x\n", add_special_tokens=False)["input_ids"], paths[0])
    assert [source for _, source in itertools.islice(stream, 2)] == [f"{paths[1]}:1", f"{paths[1]}:3"]
    with pytest.raises(ValueError, match="missing.txt' is not a file"):
        next(stream)  # the bad path is reported when it is reached
    sequences, sources = load_token_sequences(paths, tokenizer)
    assert list(zip(sequences, sources)) == list(iter_token_sequences(paths, tokenizer))
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="gave no documents"):
        list(iter_token_sequences([str(tmp_path / "blank.jsonl")], tokenizer))


def test_paths_and_data_are_looked_at_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """Each of these used to pass the checks and fail after the model had loaded (or, for a demo `--out-dir` under a
    file, after both arms had trained)."""
    import hf_memory.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(hf_memory.models, "load_model", no_model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("hello")
    (tmp_path / "plain").mkdir()
    (tmp_path / "notmodel").mkdir()
    (tmp_path / "pretty.json").write_text('{\n "text": "x"}\n')
    (tmp_path / "nokey.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "latin1.txt").write_bytes("\xe9t\xe9 caf\xe9".encode("latin-1"))
    (tmp_path / "blank.txt").write_text(" " * 70_000)
    cases = [
        (["demo", "--output-dir", "afile.txt/sub"], "argument --output-dir: 'afile.txt/sub' cannot be created"),
        (["demo", "--docs", "100000"], "argument --docs: --docs + --held-out must be at most"),
        (["demo", "--seed", str(2**32)], "argument --seed: `seed` must be an integer in [0, 4294967295]"),
        (["demo", "--model", "notmodel"], "argument --model: 'notmodel' is not a model folder"),
        (["measure", "--model", "notmodel", "--data", "afile.txt"], "'notmodel' is not a model folder"),
        (["measure", "--data", "plain"], "argument --data: 'plain' is a folder but not one written by"),
        (["measure", "--data", "pretty.json"], "the first line of 'pretty.json' is not JSON"),
        (["measure", "--data", "nokey.jsonl"], "has neither `input_ids` nor `text` (set --text-field)"),
        (["measure", "--data", "latin1.txt"], "'latin1.txt' is not UTF-8 text"),
        (["measure", "--data", "blank.txt"], "argument --data: 'blank.txt' is empty"),
        (
            ["measure", "--data", "afile.txt", "--output-dir", "afile.txt/x"],
            "argument --output-dir: 'afile.txt/x' can",
        ),
        (
            ["audit", "--data", "afile.txt", "--output-dir", "afile.txt/sub"],
            "argument --output-dir: 'afile.txt/sub' can",
        ),
        (["audit", "--data", "plain", "--output-dir", "o"], "argument --data: 'plain' is a folder but not"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, argv
        assert message in err and "Traceback" not in err, (argv, err)
    (tmp_path / "late.txt").write_text(" " * 70_000 + "text after 64 KiB of spaces")
    from hf_memory.cli.main import build_parser, check_paths

    args = build_parser().parse_args(["measure", "--data", "late.txt"])
    assert check_paths(args) is None  # not empty: its text starts after the first 64 KiB


def test_data_readers_check_their_arguments_and_drop_a_byte_order_mark(tmp_path, tokenizer):
    from hf_memory.data import document_windows, iter_token_sequences, stdlib_docstrings

    (tmp_path / "bom.txt").write_bytes("\ufeffdef f(x):".encode())
    (tmp_path / "plain.txt").write_text("def f(x):")
    (tmp_path / "bom.jsonl").write_bytes('\ufeff{"text": "def f(x):"}\n'.encode())
    plain = next(iter_token_sequences(tmp_path / "plain.txt", tokenizer))[0]  # one path alone, as a PathLike
    assert next(iter_token_sequences([str(tmp_path / "bom.txt")], tokenizer))[0] == plain
    assert next(iter_token_sequences([str(tmp_path / "bom.jsonl")], tokenizer))[0] == plain
    for bad, match in ((None, "`paths` must be a path"), ([3], r"`paths\[0\]` must be a path")):
        with pytest.raises(ValueError, match=match):
            iter_token_sequences(bad, tokenizer)  # at the call, not at the first record
    with pytest.raises(ValueError, match="missing.jsonl' is not a file"):
        list(iter_token_sequences([str(tmp_path / "missing.jsonl")], tokenizer))
    assert len(stdlib_docstrings(max_docs=2)) == 2
    for kwargs, match in (({"max_docs": 0}, "max_docs"), ({"max_docs": 2.5}, "max_docs"), ({"min_chars": "4"}, "min")):
        with pytest.raises(ValueError, match=match):
            stdlib_docstrings(**kwargs)
    assert document_windows(tokenizer, ["def f(x):", "x"], 2) == [plain[:2]]
    for texts, length, match in (
        (["a b c"], -1, "length"),
        (["a b c"], True, "length"),
        ("hello world", 2, "texts"),
        ([None], 2, r"texts\[0\]"),
    ):
        with pytest.raises(ValueError, match=match):
            document_windows(tokenizer, texts, length)


@pytest.mark.parametrize(
    ("command", "config_class", "extra"),
    [
        ("measure", "ExtractionConfig", ["--data", "README.md"]),
        ("audit", "AuditConfig", ["--data", "x", "--output-dir", "o"]),
    ],
)
def test_help_lists_every_config_field_with_its_help_and_default(command, config_class, extra, capsys):
    """The options come from the config: a field added to it is an option, with its help text and default."""
    import dataclasses

    import hf_memory
    from hf_memory.cli.main import build_parser

    cls = getattr(hf_memory, config_class)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(cls):
        assert f"--{field.name.replace('_', '-')}" in text, field.name
        assert " ".join(field.metadata["help"].split()) in text, field.name
        assert f"(default: {field.default})" in text, field.name
    args = build_parser().parse_args([command, *extra])  # nothing given: the config's own defaults
    assert {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)} == cls().to_dict()


def test_old_option_names_still_work_with_a_warning(tmp_path, capsys, monkeypatch):
    from hf_memory.cli.main import build_parser

    args = build_parser().parse_args(["audit", "--data", "x", "--out", "report", "--prefix", "4"])
    assert (args.output_dir, args.prefix_len) == ("report", 4)
    args = build_parser().parse_args(["measure", "--data", "x", "--out", "rows.jsonl", "--out-dir", "shards"])
    assert (args.output_file, args.output_dir) == ("rows.jsonl", "shards")
    args = build_parser().parse_args(["audit", "--data", "x", "--output-dir", "o", "--max-windows", "None"])
    assert args.max_windows is None  # every window
    with pytest.raises(SystemExit):
        main(["demo", "--out-dir", "README.md"])
    err = capsys.readouterr().err
    assert "warning: --out-dir is now --output-dir" in err and "argument --output-dir: 'README.md' is a file" in err


@pytest.mark.parametrize("command", ["measure", "audit", "measure-to-file"])
def test_an_out_of_vocabulary_id_is_named_by_file_and_line(command, tmp_path, capsys, monkeypatch):
    """P3: the error named `sequences[1]` (a Python argument) instead of the line of the file."""
    import hf_memory.models
    from hf_memory.data.tokenizers import word_level_tokenizer
    from tests.testing_utils import TINY_VOCAB, tiny_causal_lm

    words = [f"w{i}" for i in range(TINY_VOCAB - 4)]
    tokenizer, model = word_level_tokenizer(words), tiny_causal_lm("llama")
    monkeypatch.setattr(hf_memory.models, "load_model", lambda *a, **k: (model, tokenizer))
    data = tmp_path / "ids.jsonl"
    data.write_text('{"input_ids": ' + str(list(range(40))) + '}\n{"input_ids": [1, 2, 5000]}\n')
    out = ["--output-dir", str(tmp_path / "o")]
    if command == "measure-to-file":
        command, out = "measure", ["--output-file", str(tmp_path / "rows.jsonl")]
    assert main([command, "--data", str(data), "--prefix-len", "4", "--suffix-len", "4", *out]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert (
        last
        == f"hf-memory: error: {data}:2 holds token id 5000, outside the model's vocabulary (0 to {TINY_VOCAB - 1})"
    )


def test_version_and_each_commands_description_and_example(capsys):
    import hf_memory

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"hf-memory {hf_memory.__version__}"
    for command in ("demo", "measure", "audit"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert f"example: hf-memory {command} " in text and f"usage: hf-memory {command}" in text


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


@pytest.mark.parametrize("ids", [[1.9, 2.7, 3.0], [True, False, True], [-1, 2, 3], "123"])
def test_jsonl_token_ids_are_checked_not_coerced(tmp_path, ids):
    import json

    from hf_memory import load_token_sequences

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"input_ids": ids}) + "\n")
    with pytest.raises(ValueError, match="input_ids of .*data.jsonl:1"):
        load_token_sequences([str(path)], tokenizer=None)


def test_word_level_tokenizer_keeps_its_special_ids():
    from hf_memory import word_level_tokenizer

    for words in (["<pad>", "red"], {"red", "green"}, "red", ["a b"], ["red", "red"]):
        with pytest.raises(ValueError, match="`words` must be"):
            word_level_tokenizer(words)
    with pytest.raises(ValueError, match="`max_length` must be an integer >= 3"):
        word_level_tokenizer(["red"], max_length=0)


@pytest.mark.parametrize("case", ["missing", "empty", "same as data", "not json", "no text field"])
def test_held_out_files_are_looked_at_before_the_model_loads(case, tmp_path, capsys, monkeypatch):
    import hf_memory.models

    monkeypatch.setattr(hf_memory.models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    data = tmp_path / "train.txt"
    data.write_text("some training text")
    held = tmp_path / "held.jsonl"
    if case == "missing":
        message = "argument --held-out: '.*held.jsonl' does not exist"
    elif case == "empty":
        held.write_text("\n \n")
        message = "argument --held-out: '.*held.jsonl' is empty"
    elif case == "same as data":
        held, message = data, "argument --held-out: '.*train.txt' is also given to --data"
    elif case == "not json":
        held.write_text("not json\n")
        message = "argument --held-out: the first line of '.*held.jsonl' is not JSON"
    else:
        held.write_text('{"body": "x"}\n')
        message = "argument --held-out: the first record of '.*held.jsonl' has neither `input_ids` nor `text`"
    argv = ["audit", "--data", str(data), "--held-out", str(held), "--output-dir", str(tmp_path / "report")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(message, err.strip().splitlines()[-1]), err


def test_membership_options_are_checked_as_usage_errors(tmp_path, capsys):
    for option, value, message in (
        ("--membership-k", "2", "argument --membership-k: `membership_k` must be"),
        ("--membership-bootstrap", "5", "argument --membership-bootstrap: `membership_bootstrap` must be"),
        ("--membership-attacks", "lost", "argument --membership-attacks: `membership_attacks`"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["audit", "--data", "README.md", "--output-dir", str(tmp_path / "o"), option, value])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- issue 35: a user's first hour


def _tiny_hub_cache(cache, repo_id: str = "org/tiny", commits: tuple = ("a" * 40,), seeds: tuple = (0,)):
    """A Hugging Face cache holding `repo_id` as `from_pretrained` leaves it: `models--org--tiny/snapshots/<commit>/`
    per commit (a tiny Llama and the docstring BPE, each commit its own weights), `refs/main` naming the last.
    Nothing is downloaded."""
    from transformers import PreTrainedTokenizerFast

    from tests.testing_utils import docstring_bpe, tiny_causal_lm

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=docstring_bpe(), pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for commit, seed in zip(commits, seeds):
        snapshot = repo / "snapshots" / commit
        tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden=32, seed=seed).save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commits[-1])
    return tokenizer


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache in a temporary folder with `org/tiny` at two commits (main: the second)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commits = ("1" * 40, "2" * 40)
    _tiny_hub_cache(cache, commits=commits, seeds=(0, 1))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache, commits


def test_load_model_reads_a_hub_id_from_the_cache_with_revision_dtype_and_device(hub_cache):
    import torch

    from hf_memory import load_model

    cache, (first, second) = hub_cache
    main_model, tokenizer = load_model("org/tiny", dtype="bfloat16", device="cpu")
    assert next(main_model.parameters()).dtype == torch.bfloat16 and main_model.device.type == "cpu"
    old, _ = load_model("org/tiny", revision=first)
    again, _ = load_model("org/tiny", revision=second)
    weights = [next(m.parameters()).float() for m in (main_model, old, again)]
    assert not torch.equal(weights[1], weights[2])  # two commits, two models
    assert torch.equal(weights[0], weights[2].bfloat16().float())  # main is the second commit
    assert tokenizer.pad_token == "<pad>"
    with pytest.raises(OSError):
        load_model("org/missing")  # offline and not in the cache
    with pytest.raises(OSError):
        load_model("org/tiny", revision="3" * 40)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": "int8"}, "`dtype` must be one of 'auto', 'float32', 'float16', 'bfloat16'"),
        ({"dtype": 16}, "`dtype` must be one of"),
        ({"device": "banana"}, "`device` must be a device such as"),
        ({"device": "cuda:99"}, "`device` is 'cuda:99', but torch sees"),
        ({"device": "xla"}, "`device` must be 'cpu', 'cuda', 'cuda:N' or 'mps'"),
        ({"revision": "v1"}, "`revision` needs a Hub model id"),
        ({"local_files_only": 1}, "`local_files_only` must be True or False"),
    ],
)
def test_load_model_refuses_bad_settings_before_loading(kwargs, match, monkeypatch):
    import transformers

    from hf_memory import load_model

    def loaded(*args, **kwargs):
        raise AssertionError("loaded before the settings were checked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", loaded)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loaded)
    with pytest.raises(ValueError, match=re.escape(match)):
        load_model(**kwargs)


def test_the_cli_takes_a_hub_model_id_from_the_cache(hub_cache, tmp_path, capsys):
    cache, (first, second) = hub_cache
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(stdlib_docstrings(max_docs=3)))
    argv = ["measure", "--model", "org/tiny", "--data", str(doc), "--prefix-len", "8", "--suffix-len", "8"]
    assert main([*argv, "--revision", first, "--dtype", "float32", "--device", "cpu"]) == 0
    assert "windows of 8+8 tokens" in capsys.readouterr().out
    report = tmp_path / "report"
    argv = ["audit", "--model", "org/tiny", "--reference-model", "org/tiny", "--reference-revision", first]
    argv += ["--data", str(doc), "--prefix-len", "8", "--suffix-len", "8", "--max-windows", "6"]
    assert main([*argv, "--output-dir", str(report)]) == 0
    results = json.loads((report / "results.json").read_text())
    assert results["model"]["name_or_path"] == "org/tiny"
    assert results["reference_model"]["name_or_path"] == f"org/tiny@{first}"
    assert results["model"]["weights_sha256"] != results["reference_model"]["weights_sha256"]
    for argv, message in (
        (["--model", "org/missing"], "argument --model: 'org/missing' is not a local folder, nor a Hub model in the"),
        (["--model", "org/tiny", "--revision", "3" * 40], f"nor a Hub model at revision '{'3' * 40}' in the"),
        (["--model", "org/tiny", "--gguf-file", "x.gguf"], "argument --model: 'org/tiny' is not a local folder"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["measure", "--data", str(doc), *argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and "HF_HUB_OFFLINE is set" in err, err
        assert "usage: hf-memory measure " in err


def test_a_model_that_fails_to_load_is_named_by_its_option(hub_cache, tmp_path, capsys, monkeypatch):
    """Online, a Hub id is not looked up before loading: `from_pretrained`'s refusal is one line naming the option."""
    from huggingface_hub import constants

    import hf_memory.models

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def not_found(model, *args, **kwargs):
        raise OSError(f"{model} is not a local folder and is not a valid model identifier\nmore detail")

    monkeypatch.setattr(hf_memory.models, "load_model", not_found)
    assert main(["measure", "--model", "org/gone", "--data", "README.md"]) == 1
    assert capsys.readouterr().err == (
        "hf-memory: error: argument --model: org/gone is not a local folder and is not a valid model identifier\n"
    )


@pytest.mark.slow
def test_a_hub_id_loads_offline_in_a_fresh_process(tmp_path):
    """As a user runs it: a new interpreter whose HF_HUB_CACHE holds the model and HF_HUB_OFFLINE=1."""
    import os
    import subprocess
    import sys

    _tiny_hub_cache(tmp_path / "hub")
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(stdlib_docstrings(max_docs=2)))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    argv = [sys.executable, "-m", "hf_memory.cli", "measure", "--model", "org/tiny", "--data", str(doc)]
    done = subprocess.run([*argv, "--prefix-len", "8", "--suffix-len", "8"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "windows of 8+8 tokens" in done.stdout
    done = subprocess.run([*argv[:-3], "org/absent", "--data", str(doc)], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "argument --model: 'org/absent' is not a local folder" in done.stderr


def _tiny_loaded(monkeypatch, words: int = 300):
    import hf_memory.models
    from hf_memory.data.tokenizers import word_level_tokenizer
    from tests.testing_utils import TINY_VOCAB, tiny_causal_lm

    names = [f"w{i}" for i in range(TINY_VOCAB - 4)]
    tokenizer, model = word_level_tokenizer(names), tiny_causal_lm("llama")
    monkeypatch.setattr(hf_memory.models, "load_model", lambda *a, **k: (model, tokenizer))
    return " ".join(names[i % 50] for i in range(words))


def test_measure_cuts_every_window_of_a_document_by_default(tmp_path, capsys, monkeypatch):
    """Issue 35: a 300-token document gave 1 window (its first 16 tokens) with no warning; audit tiles it."""
    (tmp_path / "doc.txt").write_text(_tiny_loaded(monkeypatch))
    rows = tmp_path / "rows.jsonl"
    argv = ["measure", "--data", str(tmp_path / "doc.txt"), "--prefix-len", "8", "--suffix-len", "8"]
    assert main([*argv, "--output-file", str(rows)]) == 0
    out = capsys.readouterr().out
    assert "18 windows of 8+8 tokens, one every 16 tokens, from 1 documents" in out
    # no --model: the command says what the default model is and what it can show
    assert "SmolLM2-135M-Instruct, de-quantized from a 4-bit (Q4_1) GGUF file" in out and "hf-memory demo" in out
    starts = [json.loads(line)["start"] for line in rows.read_text().splitlines()]
    assert starts == list(range(0, 288, 16))  # as audit cuts them
    assert main([*argv, "--stride", "100"]) == 0  # an explicit stride still decides
    assert "3 windows of 8+8 tokens, one every 100 tokens" in capsys.readouterr().out


def test_measure_max_windows_draws_a_seeded_sample_and_names_what_it_leaves_unscored(tmp_path, capsys, monkeypatch):
    import hf_memory.models
    from hf_memory.extraction import sample_windows

    text = _tiny_loaded(monkeypatch)
    (tmp_path / "long.txt").write_text(text)
    (tmp_path / "short.txt").write_text(" ".join(text.split()[:20]))  # one window, drawn or not
    rows = tmp_path / "deep" / "er" / "rows.jsonl"  # missing folders are created
    names = [str(tmp_path / "long.txt"), str(tmp_path / "short.txt")]
    argv = ["measure", "--data", *names, "--prefix-len", "8"]
    argv += ["--suffix-len", "8", "--max-windows", "5", "--seed", "3", "--output-file", str(rows)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "5 windows of 8+8 tokens, one every 16 tokens, from 2 documents" in captured.out
    assert "5 of 19 windows drawn with seed 3" in captured.out
    warning = [line for line in captured.err.splitlines() if line.startswith("hf-memory: warning:")]
    assert len(warning) == 1 and "--max-windows=5 leaves most of" in warning[0]
    assert f"{tmp_path / 'long.txt'} (" in warning[0] and "of its 18 windows" in warning[0]
    written = [json.loads(line) for line in rows.read_text().splitlines()]
    tokenizer = hf_memory.models.load_model()[1]  # the stub's
    docs = [tokenizer((tmp_path / name).read_text(), add_special_tokens=False)["input_ids"] for name in names]
    sample = sample_windows(docs, 8, 8, 16, 5, 3)  # the draw the CLI makes: the same windows, in input order
    assert [(row["source"], row["start"]) for row in written] == [(names[d], start) for d, start in sample.index]
    assert [row["reference"] for row in written] == [w[8:].tolist() for w in sample.windows]


def test_the_measure_bar_has_a_total_and_moves_every_batch(tmp_path, capsys, monkeypatch):
    """Issue 35: streamed, the bar had no total (no time left) and moved once per 64-window batch."""
    import tqdm.auto

    bars = []

    class Recorder(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.updates = []
            bars.append(self)

        def update(self, n=1):
            self.updates.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    (tmp_path / "doc.txt").write_text(_tiny_loaded(monkeypatch))
    argv = ["measure", "--data", str(tmp_path / "doc.txt"), "--prefix-len", "8", "--suffix-len", "8"]
    assert main([*argv, "--batch-size", "4"]) == 0
    extraction = next(bar for bar in bars if bar.desc == "extraction")
    assert extraction.total == 18 and sum(extraction.updates) == 18
    assert max(extraction.updates) <= 4 and len(extraction.updates) >= 5  # every batch of 4


def test_output_folders_are_created_with_their_parents(tmp_path, capsys, monkeypatch):
    (tmp_path / "doc.txt").write_text(_tiny_loaded(monkeypatch, words=64))
    base = ["--data", str(tmp_path / "doc.txt"), "--prefix-len", "8", "--suffix-len", "8"]
    assert main(["measure", *base, "--output-file", str(tmp_path / "a" / "b" / "rows.jsonl")]) == 0
    assert (tmp_path / "a" / "b" / "rows.jsonl").is_file()
    assert main(["measure", *base, "--output-dir", str(tmp_path / "c" / "d" / "shards")]) == 0
    assert (tmp_path / "c" / "d" / "shards").is_dir()
    assert main(["audit", *base, "--output-dir", str(tmp_path / "e" / "f" / "report")]) == 0
    assert (tmp_path / "e" / "f" / "report" / "index.html").is_file()


def test_the_demo_audits_both_fine_tunes_with_the_held_out_documents_as_control(tokenizer, tmp_path, capsys):
    """`hf-memory demo` on a tiny model (a saved folder with the docstring BPE): both audit reports are written, with
    the control's numbers, and printed side by side. The effect itself (standard high, goldfish low) is asserted on
    SmolLM2 by tests/test_audit.py's slow test."""
    from tests.testing_utils import tiny_causal_lm

    folder = tmp_path / "tiny"
    tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden=32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "demo" / "nested"
    argv = ["demo", "--model", str(folder), "--docs", "6", "--held-out", "5", "--epochs", "1", "--batch-size", "6"]
    argv += ["--prefix-len", "8", "--suffix-len", "8", "--device", "cpu", "--output-dir", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "hf-memory audit of each fine-tune on its 6 training documents, the 5 held-out documents as the control"
        in printed
    )
    results = json.loads((out / "goldfish_demo.json").read_text())
    assert set(results["audits"]) == {"standard", "goldfish (k=4)"}
    for name, folder_name in (("standard", "audit_standard"), ("goldfish (k=4)", "audit_goldfish")):
        entry = results["audits"][name]
        assert entry["report"] == str(out / folder_name / "index.html") and os.path.isfile(entry["report"])
        report = json.loads((out / folder_name / "results.json").read_text())
        assert entry["exact_match"] == report["metrics"]["exact_match"] and report["data"]["num_windows"] == 6
        assert (
            entry["control_windows"] == 5
            and entry["control_exact_match"] == (report["control_contrast"]["control"]["exact_match"])
        )
        assert set(entry["membership_auc"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
        side_by_side = printed.split("hf-memory audit of each fine-tune")[1].splitlines()
        line = next(line for line in side_by_side if line.startswith(name))
        assert f"{100 * entry['exact_match']:.1f}%" in line and entry["report"] in line


def test_demo_quick_replaces_the_settings_left_at_their_defaults(monkeypatch, tmp_path):
    """`hf-memory demo --quick`: the positive control in minutes (its settings are those of tests/test_audit.py's
    SmolLM2 slow test, which asserts the contrast); an option given beside it wins, a non-bool is refused."""
    from hf_memory.cli import demo as demo_module
    from hf_memory.cli.arguments import QUICK_DEMO, DemoArguments

    assert dataclasses.asdict(DemoArguments(quick=True)) == {
        **dataclasses.asdict(DemoArguments()),
        **QUICK_DEMO,
        "quick": True,
    }
    assert DemoArguments(quick=True, docs=12).docs == 12 and DemoArguments(quick=True, docs=12).epochs == 8
    with pytest.raises(ValueError, match="`quick` must be True or False, got 'yes'"):
        DemoArguments(quick="yes")
    seen = {}
    monkeypatch.setattr(demo_module, "run_demo", lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs))
    assert main(["demo", "--quick", "--epochs", "3", "--output-dir", str(tmp_path)]) == 0
    assert {key: seen["kwargs"][key] for key in QUICK_DEMO} == {**QUICK_DEMO, "epochs": 3}
    assert "quick" not in seen["kwargs"] and seen["kwargs"]["output_dir"] == str(tmp_path)
