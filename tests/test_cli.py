"""The command line refuses bad arguments before any work, in one line, and reports failures in one line."""

from __future__ import annotations

import itertools
import re

import pytest

from hf_memory.cli import main


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
        (["measure", "--data", "README.md", "--output-file", "no/such/folder/x.jsonl"], "argument --output-file: the"),
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
        (["audit", "--data", "README.md"], "the following arguments are required: --output_dir/--output-dir/--out"),
        (["demo", "--goldfish-k", "1"], "argument --goldfish-k: `goldfish_k` must be an integer in [2, 2147483647]"),
        (["demo", "--goldfish-h", "5000"], "argument --goldfish-h: `goldfish_h` must be an integer in [1, 1024]"),
        (["demo", "--epochs", "0"], "argument --epochs: `epochs` must be an integer >= 1, got 0"),
        (["demo", "--lr", "nan"], "argument --lr: `lr` must be a finite number > 0"),
        (["demo", "--output-dir", "README.md"], "argument --output-dir: 'README.md' is a file"),
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
