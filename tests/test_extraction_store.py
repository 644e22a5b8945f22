"""measure_extraction on streams and into a results folder: the same rows as in memory, resumed after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
from datasets import Dataset

from hf_memory import ExtractionResult, measure_extraction
from tests.testing_utils import TINY_VOCAB, run_two_processes, tiny_causal_lm


PREFIX, SUFFIX = 6, 8


def corpus(n=23, seed=0):
    """Sequences of varied lengths (some too short for a window), some repeating a planted pattern."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(5, 60, (1,), generator=gen))
        rows.append(torch.randint(0, TINY_VOCAB, (length,), generator=gen).tolist())
    return rows


def model():
    return tiny_causal_lm("llama", hidden=32).eval()


def run(model, sequences, **kwargs):
    kwargs = {
        "prefix_len": PREFIX,
        "suffix_len": SUFFIX,
        "stride": 5,
        "batch_size": 4,
        "show_progress": False,
    } | kwargs
    return measure_extraction(model, sequences, **kwargs)


def rows_of(result: ExtractionResult) -> list[dict]:
    """A result's per-window rows, from memory or from disk, in one shape."""
    if result.output_dir is None:
        per_sample = result.per_sample()
        return [
            {
                "sequence": seq,
                "start": start,
                "exact_match": per_sample["exact_match_per_sample"][i],
                "longest_common_prefix": result.longest_common_prefix[i],
                "memorization_score": per_sample["memorization_score_per_sample"][i],
                "rouge_l": per_sample["rouge_l_per_sample"][i],
                "prediction": result.predictions[i],
                "reference": result.references[i],
            }
            for i, (seq, start) in enumerate(result.windows)
        ]
    return [{k: v for k, v in row.items() if k not in ("rouge_l_text", "log_p")} for row in result.dataset()]


class Crash(Exception):
    pass


def crash_after(model, forwards: int):
    """A forward hook that raises `Crash` on the model's `forwards + 1`-th top-level call."""
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if len(calls) > forwards:
            raise Crash

    return model.register_forward_hook(hook)


# ---------------------------------------------------------------- streaming input


def test_every_input_form_gives_the_rows_of_a_list():
    m, rows = model(), corpus()
    reference = run(m, rows)
    assert reference.num_skipped > 0 and len(reference.predictions) > 20
    dataset = Dataset.from_dict({"input_ids": rows})
    forms = {
        "generator": (r for r in rows),
        "generator of row dicts": ({"input_ids": r} for r in rows),
        "dataset": dataset,
        "iterable dataset": dataset.to_iterable_dataset(),
        "tuple of tensors": tuple(torch.tensor(r) for r in rows),
    }
    for what, source in forms.items():
        result = run(m, source)
        assert result.predictions == reference.predictions, what
        assert result.windows == reference.windows and result.references == reference.references, what
        assert result.metrics == reference.metrics and result.num_skipped == reference.num_skipped, what


def test_a_streamed_input_is_read_as_it_goes():
    m, rows = model(), corpus()
    taken = []

    def source():
        for row in rows:
            taken.append(len(taken))
            yield row

    crash = crash_after(m, 0)  # the first forward: only the first batch's sequences may have been read
    with pytest.raises(Crash):
        run(m, source())
    crash.remove()
    assert 0 < len(taken) < len(rows)


@pytest.mark.parametrize(
    "source,message",
    [
        (iter([]), "`sequences` is empty"),
        (iter([[1, 2, 3]]), "No sequence in `sequences` has"),
        (iter([list(range(20)), [0.5] * 20]), r"`sequences\[1\]` must hold integer token ids"),
        (iter([[TINY_VOCAB + 5] * 20]), "outside the model's vocabulary"),
        (iter([list(range(20))] * 6 + [[TINY_VOCAB + 5] * 20]), r"`sequences\[6\]` holds token id 133, outside"),
    ],
)
def test_bad_streams_name_the_problem(source, message):
    with pytest.raises(ValueError, match=message):
        run(model(), source)


# ---------------------------------------------------------------- results on disk


def test_output_dir_holds_the_in_memory_rows(tmp_path, monkeypatch):
    m, rows = model(), corpus()
    memory = run(m, rows)
    disk = run(m, iter(rows), output_dir=tmp_path / "out", flush_every=2)
    assert (
        disk.output_dir == str(tmp_path / "out") and disk.predictions == [] and disk.num_windows == len(memory.windows)
    )
    assert rows_of(disk) == rows_of(memory)
    assert disk.num_skipped == memory.num_skipped
    assert disk.metrics.keys() == memory.metrics.keys()
    for name, value in memory.metrics.items():
        assert disk.metrics[name] == pytest.approx(value, rel=1e-12, abs=1e-12)
    from hf_memory._utils.store import ResultFolder

    reads, read = [], ResultFolder.read
    monkeypatch.setattr(
        ResultFolder, "read", lambda self, path, columns=None: reads.append(columns) or read(self, path, columns)
    )
    again = ExtractionResult.load(tmp_path / "out")
    assert again.metrics == disk.metrics
    assert len(reads) == len([p for p in os.listdir(tmp_path / "out") if p.endswith(".parquet")])  # one pass
    assert all("prediction" not in columns and "reference" not in columns for columns in reads)  # no token ids
    with pytest.raises(ValueError, match="use `result.dataset\\(\\)`"):
        disk.per_sample()

    from datasets import load_dataset

    loaded = load_dataset("parquet", data_dir=str(tmp_path / "out"), split="train")
    assert loaded.num_rows == len(memory.windows) and "prediction" in loaded.column_names
    shards = sorted(p for p in os.listdir(tmp_path / "out") if p.endswith(".parquet"))
    batches = -(-len(memory.windows) // 4)
    assert len(shards) == -(-batches // 2)  # a shard every 2 batches


def test_prefix_method_and_text_rouge_on_disk(tmp_path):
    from hf_memory.data.tokenizers import word_level_tokenizer

    m, rows = model(), corpus()
    fast = run(m, rows, method="prefix", output_dir=tmp_path / "prefix")
    assert list(fast.metrics) == ["exact_match", "longest_common_prefix"]
    assert fast.metrics == pytest.approx(run(m, rows, method="prefix").metrics)
    tokenizer = word_level_tokenizer([f"w{i}" for i in range(TINY_VOCAB - 4)])
    text = run(m, rows, tokenizer=tokenizer, output_dir=tmp_path / "text")
    memory = run(m, rows, tokenizer=tokenizer)
    assert text.metrics["rouge_l_text"] == pytest.approx(memory.metrics["rouge_l_text"])
    assert text.dataset()["rouge_l_text"] == pytest.approx(memory.rouge_l_text)


@pytest.mark.parametrize("crash_at", [0, 3, 7])
def test_rerun_after_an_exception_continues_and_matches_a_clean_run(tmp_path, crash_at):
    m, rows = model(), corpus()
    clean = rows_of(run(m, rows, output_dir=tmp_path / "clean"))
    folder = tmp_path / "crashed"
    hook = crash_after(m, crash_at)
    with pytest.raises(Crash):
        run(m, iter(rows), output_dir=folder, flush_every=1)
    hook.remove()
    partial = ExtractionResult.load  # an unfinished run reads, with a warning
    with pytest.warns(UserWarning, match="has not finished"):
        assert partial(folder).num_windows < len(clean)
    resumed = run(m, iter(rows), output_dir=folder, flush_every=1)
    assert rows_of(resumed) == clean
    keys = [(r["sequence"], r["start"]) for r in rows_of(resumed)]
    assert len(keys) == len(set(keys))


def test_rerun_of_a_finished_run_decodes_nothing(tmp_path):
    m, rows = model(), corpus()
    first = run(m, rows, output_dir=tmp_path)
    hook = crash_after(m, 0)  # any forward would raise
    second = run(m, rows, output_dir=tmp_path)
    hook.remove()
    assert second.metrics == first.metrics and rows_of(second) == rows_of(first)


@pytest.mark.slow
def test_rerun_after_sigkill_matches_a_clean_run(tmp_path):
    folder = tmp_path / "killed"
    script = f"""
import os, signal, sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from tests.test_extraction_store import corpus, model, run
m = model()
calls = []
def hook(module, args, output):
    calls.append(1)
    if len(calls) == 9:
        os.kill(os.getpid(), signal.SIGKILL)
m.register_forward_hook(hook)
run(m, corpus(), output_dir={str(folder)!r}, flush_every=1)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    written = [p for p in os.listdir(folder) if p.endswith(".parquet")]
    assert written, "the killed run wrote no shard"
    m, rows = model(), corpus()
    resumed = run(m, rows, output_dir=folder, flush_every=1)
    assert rows_of(resumed) == rows_of(run(m, rows))
    assert not [p for p in os.listdir(folder) if p.endswith(".tmp")]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"prefix_len": PREFIX + 1}, "prefix_len"),
        ({"method": "generate"}, "method"),
        ({"batch_size": 3}, "batch_size"),
    ],
)
def test_a_different_run_into_the_same_folder_is_refused(tmp_path, change, message):
    m, rows = model(), corpus()
    run(m, rows, output_dir=tmp_path)
    with pytest.raises(ValueError, match=f"holds results of a different run.*{message}"):
        run(m, rows, output_dir=tmp_path, **change)


def test_another_model_or_other_data_into_the_same_folder_is_refused(tmp_path):
    m, rows = model(), corpus()
    run(m, rows, output_dir=tmp_path)
    other = tiny_causal_lm("llama", hidden=16)
    with pytest.raises(ValueError, match="different run.*model"):
        run(other, rows, output_dir=tmp_path)
    with pytest.raises(ValueError, match="`sequences` differ from those of the run"):
        run(m, corpus(seed=1), output_dir=tmp_path)
    with pytest.raises(ValueError, match="`sequences` hold fewer rows than the run"):
        run(m, rows[:5], output_dir=tmp_path)


def test_a_damaged_shard_is_named_and_can_be_redone(tmp_path):
    m, rows = model(), corpus()
    clean = rows_of(run(m, rows))
    run(m, rows, output_dir=tmp_path, flush_every=1)
    shard = sorted(p for p in os.listdir(tmp_path) if p.endswith(".parquet"))[-1]
    (tmp_path / shard).write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=f"The shard .*{shard} cannot be read"):
        run(m, rows, output_dir=tmp_path, flush_every=1)
    with pytest.raises(ValueError, match=f"{shard} cannot be read"):
        ExtractionResult.load(tmp_path)
    (tmp_path / shard).unlink()
    assert rows_of(run(m, rows, output_dir=tmp_path, flush_every=1)) == clean


def test_bad_output_dirs_are_refused_before_any_work(tmp_path, monkeypatch):
    m = model()
    crash = crash_after(m, 0)
    file = tmp_path / "file.txt"
    file.write_text("x")
    bad = [
        (file, "is a file"),
        (file / "sub", "cannot be created"),
        (3, "must be a folder path"),
        ("", "empty string"),
    ]
    for folder, message in bad:
        with pytest.raises(ValueError, match=message):
            run(m, corpus(), output_dir=folder)
    with pytest.raises(ValueError, match="`flush_every` must be an integer >= 1"):
        run(m, corpus(), output_dir=tmp_path, flush_every=0)
    # a folder nobody can create, root included (os.access said yes to root here: the run failed after the model ran)
    with pytest.raises(ValueError, match=r"`output_dir` '/proc/hf-memory-test' cannot be written \("):
        run(m, corpus(), output_dir="/proc/hf-memory-test")
    with monkeypatch.context() as patch:  # a folder without write permission (simulated, for a root test run)
        patch.setattr(tempfile, "mkdtemp", lambda **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
        with pytest.raises(ValueError, match="cannot be written .Permission denied in"):
            run(m, corpus(), output_dir=tmp_path / "new")
    assert not os.path.exists(tmp_path / "new") and not [p for p in os.listdir(tmp_path) if "probe" in p]
    crash.remove()
    with pytest.raises(FileNotFoundError, match="holds no .manifest.json: it is not a results folder"):
        ExtractionResult.load(tmp_path)


def test_a_bad_item_mid_stream_keeps_the_rows_already_written(tmp_path):
    m, rows = model(), corpus()
    broken = rows[:10] + [[0.5] * 30] + rows[10:]
    with pytest.raises(ValueError, match=r"`sequences\[10\]` must hold integer token ids"):
        run(m, iter(broken), output_dir=tmp_path, flush_every=1)
    with pytest.warns(UserWarning, match="has not finished"):
        kept = ExtractionResult.load(tmp_path)
    assert kept.num_windows > 0
    with pytest.warns(UserWarning):
        assert kept.num_windows == len(rows_of(ExtractionResult.load(tmp_path)))


def test_dataset_reads_only_the_shards(tmp_path):
    """Other files in the folder (a backup copy, notes) were read as shards: duplicated rows, or a raw ArrowInvalid."""
    import shutil

    m, rows = model(), corpus()
    result = run(m, rows, output_dir=tmp_path, flush_every=2)
    expected = rows_of(result)
    shard = sorted(p for p in os.listdir(tmp_path) if p.endswith(".parquet"))[0]
    shutil.copy(tmp_path / shard, tmp_path / "backup.parquet")
    shutil.copy(tmp_path / shard, tmp_path / "rank00000-copy.parquet")
    (tmp_path / "notes.txt").write_text("what this run was")
    assert rows_of(ExtractionResult.load(tmp_path)) == expected
    assert rows_of(run(m, rows, output_dir=tmp_path, flush_every=2)) == expected  # nor does the rerun count them


def test_dataset_of_a_run_stopped_before_its_first_shard_is_empty(tmp_path):
    m, rows = model(), corpus()
    hook = crash_after(m, 0)
    with pytest.raises(Crash):
        run(m, rows, output_dir=tmp_path)
    hook.remove()
    with pytest.warns(UserWarning, match="has not finished"):
        rows_there = ExtractionResult.load(tmp_path).dataset()
    assert rows_there.num_rows == 0 and "prediction" in rows_there.column_names


def test_a_model_with_other_weights_is_refused(tmp_path):
    """Same class and config, other weights (another seed, a later checkpoint): the rows of two models were mixed."""
    m, rows = model(), corpus()
    hook = crash_after(m, 3)
    with pytest.raises(Crash):
        run(m, rows, output_dir=tmp_path, flush_every=1)
    hook.remove()
    other = tiny_causal_lm("llama", hidden=32, seed=1).eval()
    with pytest.raises(ValueError, match="different run .*model weights_sha256"):
        run(other, rows, output_dir=tmp_path, flush_every=1)
    weight = m.lm_head.weight[3, 5].item()
    with torch.no_grad():  # one weight changed
        m.lm_head.weight[3, 5] = weight + 1.0
    with pytest.raises(ValueError, match="model weights_sha256"):
        run(m, rows, output_dir=tmp_path, flush_every=1)
    with torch.no_grad():
        m.lm_head.weight[3, 5] = weight
    assert rows_of(run(m, rows, output_dir=tmp_path, flush_every=1)) == rows_of(run(m, rows))


def test_the_weight_fingerprint_is_exact_and_cheap_in_memory():
    from hf_memory._utils import weights_fingerprint

    m = model()
    first = weights_fingerprint(m)
    assert weights_fingerprint(tiny_causal_lm("llama", hidden=32).eval()) == first  # same weights, same print
    with torch.no_grad():
        m.model.embed_tokens.weight[[0, 1]] = m.model.embed_tokens.weight[[1, 0]].clone()  # two rows swapped
    assert weights_fingerprint(m) != first
    assert weights_fingerprint(m.to(torch.bfloat16)) != weights_fingerprint(m.float())


def test_a_folder_written_by_an_older_release_reads_but_takes_no_rows(tmp_path):
    """Folders of the first results format (no weight fingerprint, no input fingerprints): their rows still load,
    and every run into them is refused before any decoding, since whether they belong with new rows cannot be
    checked."""
    import json

    m, rows = model(), corpus()
    finished = run(m, rows, output_dir=tmp_path, batch_size=1)
    path = tmp_path / ".manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format"] = 1
    del manifest["model"]["weights_sha256"], manifest["hf_memory_version"]
    path.write_text(json.dumps(manifest))
    (tmp_path / ".summary.json").write_text(json.dumps({"num_skipped": finished.num_skipped, "num_sequences": 23}))
    hook = crash_after(m, 0)
    with pytest.raises(ValueError, match="written by an older hf-memory .*none is added to it"):
        run(m, rows, output_dir=tmp_path, batch_size=1)
    hook.remove()
    again = ExtractionResult.load(tmp_path)
    assert again.metrics == finished.metrics and rows_of(again) == rows_of(finished)


def test_other_suffixes_at_the_same_positions_are_refused(tmp_path):
    """Data of the same shape (the same documents under another tokenizer): rows of two inputs were mixed."""
    m, rows = model(), corpus()
    hook = crash_after(m, 20)
    with pytest.raises(Crash):
        run(m, rows, output_dir=tmp_path, flush_every=1)
    hook.remove()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".parquet")]
    other = [[(token + 1) % TINY_VOCAB for token in row] for row in rows]  # same lengths, other ids
    with pytest.raises(
        ValueError, match="`sequences` differ from those of the run.*up to its shard .* are not the same"
    ):
        run(m, other, output_dir=tmp_path, flush_every=1)
    assert rows_of(run(m, rows, output_dir=tmp_path, flush_every=1)) == rows_of(run(m, rows))


def test_a_damaged_shard_before_the_last_names_every_shard_to_delete(tmp_path):
    """Deleting only the damaged shard (the former advice) left a gap: refused as 'other data', and the next shard
    name would have been an existing one. Following the message gives the clean rows."""
    m, rows = model(), corpus()
    clean = rows_of(run(m, rows))
    run(m, rows, output_dir=tmp_path, flush_every=1)
    shards = sorted(p for p in os.listdir(tmp_path) if p.endswith(".parquet"))
    (tmp_path / shards[2]).write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=f"{shards[2]} cannot be read.*any later shard of the same process"):
        run(m, rows, output_dir=tmp_path, flush_every=1)
    (tmp_path / shards[2]).unlink()
    with pytest.raises(ValueError, match=f"{shards[2]} is missing, but later shards .*{shards[3]}.*Delete those too"):
        run(m, rows, output_dir=tmp_path, flush_every=1)
    for name in shards[3:]:
        (tmp_path / name).unlink()
    assert rows_of(run(m, rows, output_dir=tmp_path, flush_every=1)) == clean


def test_damaged_data_pages_are_named(tmp_path):
    """The footer intact, bytes of the data pages flipped: a raw OSError that named no file, from every reader."""
    m, rows = model(), corpus()
    run(m, rows, output_dir=tmp_path, flush_every=1)
    shard = sorted(p for p in os.listdir(tmp_path) if p.endswith(".parquet"))[1]
    data = bytearray((tmp_path / shard).read_bytes())
    for i in range(40, 400, 7):
        data[i] ^= 0xFF
    (tmp_path / shard).write_bytes(bytes(data))
    message = f"The shard .*{shard} cannot be read"
    with pytest.raises(ValueError, match=message):
        ExtractionResult.load(tmp_path)
    with pytest.raises(ValueError, match=message):
        ExtractionResult(**{**vars(ExtractionResult([], [], [], {})), "output_dir": str(tmp_path)}).dataset()
    with pytest.raises(ValueError, match=message):
        run(m, rows, output_dir=tmp_path, flush_every=1)


def test_a_refused_writer_lets_go_of_the_folder_lock(tmp_path):
    """The lock was held as long as the exception lived (IPython keeps it in sys.last_value): the documented fix
    (delete the shard, rerun) was refused as 'Another run is writing'."""
    m, rows = model(), corpus()
    clean = rows_of(run(m, rows))
    run(m, rows, output_dir=tmp_path, flush_every=1)
    last = sorted(p for p in os.listdir(tmp_path) if p.endswith(".parquet"))[-1]
    (tmp_path / last).write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot be read") as kept:
        run(m, rows, output_dir=tmp_path, flush_every=1)
    (tmp_path / last).unlink()
    assert rows_of(run(m, rows, output_dir=tmp_path, flush_every=1)) == clean
    assert kept.value is not None  # still alive here


def test_a_continued_run_is_unfinished_until_it_ends(tmp_path):
    """A finished folder's summary outlived a later call adding rows: stopped part-way, it still read as finished."""
    m, rows = model(), corpus(n=12)
    settings = {"output_dir": tmp_path, "flush_every": 1, "batch_size": 1}
    run(m, rows[:6], **settings)
    assert (tmp_path / ".summary.json").exists()
    hook = crash_after(m, 0)
    run(m, rows[:6], **settings)  # nothing to add: still finished, nothing decoded
    assert (tmp_path / ".summary.json").exists()
    hook.remove()
    hook = crash_after(m, 20)
    with pytest.raises(Crash):
        run(m, rows, **settings)  # the extended input: rows added, then a crash
    hook.remove()
    assert not (tmp_path / ".summary.json").exists()
    with pytest.warns(UserWarning, match="has not finished"):
        ExtractionResult.load(tmp_path)
    finished, clean = run(m, rows, **settings), run(m, rows, batch_size=1)
    assert rows_of(finished) == rows_of(clean) and finished.num_skipped == clean.num_skipped


def test_the_summary_records_rows_and_shards_as_finish_store_documents(tmp_path):
    import inspect
    import json
    import re

    from hf_memory._utils.store import finish_store

    result = run(model(), corpus(), output_dir=tmp_path, flush_every=2)
    documented = set(re.findall(r"`(\w+)`", inspect.getdoc(finish_store).split("Returns:", 1)[1]))
    summary = json.loads((tmp_path / ".summary.json").read_text())
    assert set(summary) == {"ranks", "num_rows", "num_shards", "num_skipped", "num_sequences"}
    assert documented == {"ranks", "rows", "shards", "input_sha256", "num_rows", "num_shards"}
    assert set(summary["ranks"]["0"]) == {"rows", "shards", "input_sha256"}
    shards = [p for p in os.listdir(tmp_path) if p.endswith(".parquet")]
    assert summary["num_rows"] == result.num_windows and summary["num_shards"] == len(shards)
    assert summary["ranks"]["0"]["rows"] == result.num_windows and summary["ranks"]["0"]["shards"] == len(shards)
    for damage in ([1, 2], {"0": {"rows": "many", "shards": 1}}, {"x": {"rows": 1, "shards": 1}}):
        (tmp_path / ".summary.json").write_text(json.dumps({**summary, "ranks": damage}))
        with pytest.raises(ValueError, match=r"\.summary\.json is damaged"):
            ExtractionResult.load(tmp_path)
    (tmp_path / ".manifest.json").write_text('{"settings": [1, 2]}')
    with pytest.raises(ValueError, match=r"\.manifest\.json is damaged"):
        ExtractionResult.load(tmp_path)


def test_a_finished_folder_missing_a_shard_is_refused_not_read_as_complete(tmp_path):
    """B2: with a shard deleted, a finished folder gave the means of the rows left, without a word."""
    m, rows = model(), corpus()
    clean = run(m, rows)
    run(m, rows, output_dir=tmp_path, flush_every=1)
    shards = sorted(p for p in os.listdir(tmp_path) if p.endswith(".parquet"))
    assert len(shards) > 3
    for victim in (shards[1], shards[-1]):
        saved = (tmp_path / victim).read_bytes()
        (tmp_path / victim).unlink()
        with pytest.raises(ValueError, match=f"is not complete: .*missing: {victim}"):
            ExtractionResult.load(tmp_path)
        (tmp_path / victim).write_bytes(saved)
    (tmp_path / shards[-1]).unlink()  # the last one: the rerun measures its windows again
    assert rows_of(run(m, rows, output_dir=tmp_path, flush_every=1)) == rows_of(clean)
    assert ExtractionResult.load(tmp_path).metrics == pytest.approx(clean.metrics, rel=1e-12)


@pytest.mark.parametrize("edit", ["finished", "interrupted"])
def test_edited_data_is_refused_on_resume(tmp_path, edit):
    """B1: an earlier document edited (and one appended) after its rows were written: the folder kept the old rows
    and mixed new ones in. Every edit of a scored window is now refused before any row is added."""
    m, rows = model(), corpus()
    settings = {"output_dir": tmp_path, "flush_every": 1}
    if edit == "finished":
        run(m, rows, **settings)
    else:
        hook = crash_after(m, 10)
        with pytest.raises(Crash):
            run(m, rows, **settings)
        hook.remove()
    before = sorted(p for p in os.listdir(tmp_path) if p.endswith(".parquet"))
    edited = [list(row) for row in rows]
    long_one = next(i for i, row in enumerate(edited) if len(row) >= PREFIX + SUFFIX)
    edited[long_one][PREFIX + 1] = (edited[long_one][PREFIX + 1] + 1) % TINY_VOCAB  # one suffix token
    hook = crash_after(m, 0)  # nothing may be decoded
    for other in (edited + [rows[0]], [rows[-1]] + rows, rows[:long_one] + rows[long_one + 1 :] + [rows[0]] * 9):
        with pytest.raises(ValueError, match="`sequences` differ from those of the run"):
            run(m, other, **settings)
    hook.remove()
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".parquet")) == before
    assert rows_of(run(m, rows, **settings)) == rows_of(run(m, rows))


def test_documents_appended_to_a_finished_run_are_scored_after_its_rows(tmp_path):
    """The old rows are the right rows of the unchanged documents: appended ones are measured, also when the run's
    last batch was short (the rows on disk end inside a batch of the longer input)."""
    m, rows = model(), corpus()
    first = run(m, rows, output_dir=tmp_path)
    assert first.num_windows % 4 != 0  # its last batch was short
    more = rows + corpus(n=5, seed=1)
    assert rows_of(run(m, more, output_dir=tmp_path)) == rows_of(run(m, more))


# ---------------------------------------------------------------- several processes


@pytest.mark.slow
def test_two_processes_write_the_rows_of_one(tmp_path):
    ranks = run_two_processes("distributed_extraction.py", tmp_path / "ranks.json", str(tmp_path / "shared"))
    assert [r["num_processes"] for r in ranks] == [2, 2]
    m, rows = model(), corpus()
    one = run(m, rows)
    two = ExtractionResult.load(tmp_path / "shared")
    assert rows_of(two) == rows_of(one)
    names = sorted(p for p in os.listdir(tmp_path / "shared") if p.endswith(".parquet"))
    assert {n[:9] for n in names} == {"rank00000", "rank00001"}
    for rank in ranks:  # every process gets the whole result back
        assert rank["metrics"] == pytest.approx(two.metrics)
        assert rank["memory_predictions"] == one.predictions


def test_two_runs_cannot_write_one_folder_at_once(tmp_path):
    """A second run into a folder another run is writing is refused (the lock dies with its process)."""
    from hf_memory._utils.store import ShardWriter
    from hf_memory.extraction.store import shard_schema

    m, rows = model(), corpus()
    run(m, rows[:3], output_dir=tmp_path)  # creates the folder and its manifest
    holder = ShardWriter(str(tmp_path), shard_schema())  # as if a run were in progress
    with pytest.raises(ValueError, match="Another run is writing to"):
        run(m, rows[:3], output_dir=tmp_path)
    holder.close()
    assert run(m, rows[:3], output_dir=tmp_path).num_windows == len(run(m, rows[:3]).predictions)


def test_exact_sum_over_pieces_equals_fsum_over_all():
    """The means read from shards one at a time are exactly rounded sums, whatever the split into shards."""
    import math
    import random

    from hf_memory.extraction.harness import _ExactSum

    rng = random.Random(0)
    values = [rng.choice([1e16, -1e16, 1.0, 1e-16, 0.1, 3.0, -0.3]) * rng.random() for _ in range(3000)]
    values += [1e100, 1.0, -1e100, 1e-300]
    for pieces in (1, 7, 500):
        total = _ExactSum()
        bounds = sorted(rng.sample(range(1, len(values)), pieces - 1)) if pieces > 1 else []
        for lo, hi in zip([0, *bounds], [*bounds, len(values)]):
            total.add(values[lo:hi])
        assert total.value() == math.fsum(values)
    assert sum(values) != math.fsum(values)  # a plain running sum would differ
    assert _ExactSum().value() == 0.0


def test_the_old_reader_name_still_reads_with_a_future_warning(tmp_path):
    run(model(), corpus(), output_dir=tmp_path)
    with pytest.warns(FutureWarning, match="ExtractionResult.load"):
        old = ExtractionResult.from_output_dir(tmp_path)
    assert old.metrics == ExtractionResult.load(tmp_path).metrics and old.num_windows > 0


def test_the_same_checkpoint_from_another_folder_resumes(tmp_path):
    """The manifest compared the config's `_name_or_path` and `transformers_version`: a moved checkpoint was another
    run. The weights and what the config computes identify the model; where it was loaded from is only recorded."""
    m, rows = model(), corpus()
    run(m, rows, output_dir=tmp_path, flush_every=1)
    m.config._name_or_path, m.config.transformers_version = "/elsewhere/checkpoint", "0.0.1"
    again = run(m, rows, output_dir=tmp_path, flush_every=1)
    assert again.num_windows > 0
    m.config.rms_norm_eps *= 2  # what the model computes: another run
    with pytest.raises(ValueError, match="different run .*config_sha256"):
        run(m, rows, output_dir=tmp_path, flush_every=1)
