"""`audit` / `hf-memory audit`: the report's three files, the self-contained page, the model card, bad inputs, and the
goldfish-vs-standard evidence on the embedded SmolLM2."""

from __future__ import annotations

import copy
import json
import math
import os
import re
from html.parser import HTMLParser

import pyarrow.parquet as pq
import pytest
import torch

from hf_memory.auditing import HTML_FILE, RESULTS_FILE, WINDOWS_FILE, AuditReport, audit
from hf_memory.cli import main
from hf_memory.data import stdlib_docstrings
from hf_memory.extraction import measure_extraction, sample_windows
from tests.testing_utils import tiny_causal_lm


PREFIX, SUFFIX = 16, 16
PLANTED = 3  # documents whose first window the model reproduces by construction
HOSTILE = "<script>alert('x')</script> & <b>bold</b> "


def _greedy(model, prefix: list[int], steps: int) -> list[int]:
    ids = torch.tensor([prefix])
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, len(prefix) :].tolist()


def _documents(model, tokenizer) -> list[list[int]]:
    """Docstrings as token ids; the first PLANTED have the model's own greedy continuation as their first suffix,
    so the audit must find exactly those windows extracted. The first document starts with HTML."""
    texts = stdlib_docstrings(max_docs=8)
    texts[0] = HOSTILE + texts[0]
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for i in range(PLANTED):
        docs[i] = docs[i][:PREFIX] + _greedy(model, docs[i][:PREFIX], SUFFIX) + docs[i][PREFIX + SUFFIX :]
    return docs


@pytest.fixture(scope="module")
def audited(tokenizer, tmp_path_factory):
    """A tiny model audited against another (same vocabulary), written to a report folder, once per module."""
    torch.set_num_threads(1)
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden=32)
    reference = tiny_causal_lm("llama", vocab_size=len(tokenizer), hidden=32, seed=1)
    docs = _documents(model, tokenizer)
    out = tmp_path_factory.mktemp("report")
    # a seed whose draw holds planted windows (the audit draws with `sample_windows`, as here)
    seed = next(
        s
        for s in range(100)
        if {(0, 0), (1, 0)} <= set(sample_windows(docs, PREFIX, SUFFIX, PREFIX + SUFFIX, 60, s).index)
    )
    report = audit(
        model,
        tokenizer,
        docs,
        reference_model=reference,
        prefix_len=PREFIX,
        suffix_len=SUFFIX,
        max_windows=60,
        seed=seed,
        output_dir=out,
        sources=[f"doc{i}.txt" for i in range(len(docs))],
        show_progress=False,
    )
    return report, out, model, docs


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [(tag, name, value) for name, value in attrs if name in ("src", "href") and value]

    def handle_data(self, data):
        self.text.append(data)


def test_the_report_folder_holds_the_three_files_with_every_window(audited):
    report, out, model, docs = audited
    assert sorted(os.listdir(out)) == sorted([HTML_FILE, RESULTS_FILE, WINDOWS_FILE])
    table = pq.read_table(out / WINDOWS_FILE)
    assert table.num_rows == report.data["num_windows"] == len(report.rows) == 60
    assert report.data["num_candidate_windows"] > 60  # sampled down to max_windows
    assert {"source", "start", "exact_match", "longest_common_prefix", "calibrated_loss", "prefix_text"} <= set(
        table.column_names
    )

    def no_nan(text):
        raise ValueError(f"results.json holds {text}")

    results = json.loads((out / RESULTS_FILE).read_text(), parse_constant=no_nan)
    assert results["settings"]["prefix_len"] == PREFIX and results["settings"]["suffix_len"] == SUFFIX
    assert results["model"]["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert results["data"]["num_windows"] == 60 and results["reference_model"] is not None
    assert results["metrics"] == pytest.approx(report.metrics)
    assert sum(results["lcp_histogram"]["model"]) == 60

    # the numbers are the harness's on the same windows
    rows = table.to_pylist()
    windows = [r["prefix_ids"] + r["suffix_ids"] for r in rows]
    direct = measure_extraction(model, windows, PREFIX, SUFFIX, show_progress=False)
    for name in ("exact_match", "memorization_score", "longest_common_prefix", "rouge_l"):
        assert results["metrics"][name] == pytest.approx(direct.metrics[name])
    assert [r["longest_common_prefix"] for r in rows] == direct.longest_common_prefix
    assert all(math.isclose(r["calibrated_loss"], r["loss_after"] - r["reference_loss"]) for r in rows)


def test_the_planted_windows_are_the_extracted_ones(audited):
    report, _, _, docs = audited
    planted = {(doc, 0) for doc in range(PLANTED)}
    extracted = {(r["document"], r["start"]) for r in report.rows if r["exact_match"]}
    sampled = {(r["document"], r["start"]) for r in report.rows}
    assert extracted == planted & sampled and extracted
    top = [report.rows[w] for w in report.figures()["top_windows"]]
    assert {(r["document"], r["start"]) for r in top[: len(extracted)]} == extracted
    assert all(r["reproduced_text"] and not r["missed_text"] for r in top[: len(extracted)])
    assert report.reference_metrics["exact_match"] < report.metrics["exact_match"]


def test_the_page_is_self_contained_and_escapes_the_documents(audited):
    _, out, _, _ = audited
    page = (out / HTML_FILE).read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    images = [value for tag, name, value in parser.links if tag == "img"]
    assert len(images) >= 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert [link for link in parser.links if link[2].startswith(("http:", "https:", "//"))] == []
    assert "url(" not in page and "@import" not in page
    assert "&lt;script&gt;" in page and "<b>bold</b>" not in page
    text = " ".join(parser.text)
    for heading in ("Headline", "How far into the suffix", "position in the document", "n-gram frequency"):
        assert heading in text
    assert "Calibrated CE diagnostic" in text and "Most extracted windows" in text
    assert page.count('class="window"') == len(audited[0].figures()["top_windows"])


def test_without_a_reference_the_page_says_so_and_the_columns_are_empty(tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    docs = [ids[:32] for ids in _documents(model, tokenizer)]  # one window per document
    report = audit(model, tokenizer, docs, prefix_len=PREFIX, suffix_len=SUFFIX, show_progress=False)
    assert report.reference_metrics is None and report.calibrated is None
    table = report.table()
    assert table.column("calibrated_loss").null_count == table.num_rows == len(docs)
    page = report.to_html()
    assert "No reference model was given" in page and "Every window starts at token 0" in page
    assert [r.metric_type for r in report.eval_results()] == [
        "exact_match",
        "memorization_score",
        "longest_common_prefix",
        "rouge_l",
    ]


def test_texts_and_datasets_are_accepted_as_data(tokenizer):
    from datasets import Dataset

    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    texts = stdlib_docstrings(max_docs=3)
    kwargs = {"prefix_len": 8, "suffix_len": 8, "max_windows": 10, "show_progress": False}
    from_texts = audit(model, tokenizer, texts, **kwargs)
    from_dataset = audit(model, tokenizer, Dataset.from_dict({"text": texts}), **kwargs)
    assert from_texts.rows[0]["prefix_ids"] == from_dataset.rows[0]["prefix_ids"]
    assert from_texts.metrics == from_dataset.metrics


def _card_results(card):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    parsed = ModelCard(str(card))  # what the Hub would read back
    name, results = model_index_to_eval_results(parsed.data.to_dict()["model-index"])
    return parsed, name, results


def test_the_model_card_gets_eval_results_and_a_memorization_section(audited):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    report = audited[0]
    other = EvalResult(
        task_type="text-generation", dataset_type="wikitext", dataset_name="WikiText", metric_type="perplexity",
        metric_value=12.5,
    )  # fmt: skip
    card = ModelCard.from_template(
        ModelCardData(model_name="tiny", eval_results=[other]), template_str="---\n{{ card_data }}\n---\n# tiny\n"
    )
    card = report.to_model_card(card)
    parsed, name, results = _card_results(card)
    assert name == "tiny"
    by_type = {r.metric_type: r for r in results}
    assert by_type["perplexity"].metric_value == 12.5  # kept
    assert by_type["exact_match"].metric_value == pytest.approx(report.metrics["exact_match"], abs=1e-6)
    assert by_type["calibrated_ce"].metric_value == pytest.approx(report.metrics["calibrated_loss_median"], abs=1e-6)
    assert by_type["exact_match"].metric_config == f"prefix={PREFIX},suffix={SUFFIX},windows=60"
    assert "memorization-audit" in parsed.data.tags
    assert parsed.text.count("## Memorization") == 1 and parsed.text.startswith("# tiny")
    assert f"{100 * report.metrics['exact_match']:.1f}%" in parsed.text

    again = report.to_model_card(parsed)  # a second audit replaces the first, nothing doubles
    _, _, results_again = _card_results(again)
    assert len(results_again) == len(results) and again.text.count("## Memorization") == 1


def test_push_to_hub_writes_the_card_through_a_stubbed_hub(audited, tmp_path, monkeypatch):
    import huggingface_hub.repocard as repocard
    from huggingface_hub import ModelCard

    existing = tmp_path / "README.md"
    existing.write_text("---\nlicense: mit\n---\n# my fine-tune\n\nTrained on my notes.\n", encoding="utf-8")
    calls = {}

    def download(repo_id, filename, **kwargs):
        calls["download"] = (repo_id, filename)
        return str(existing)

    def upload_file(path_or_fileobj, path_in_repo, repo_id, **kwargs):
        with open(path_or_fileobj, encoding="utf-8") as f:
            calls["upload"] = (path_in_repo, repo_id, f.read(), kwargs["commit_message"])
        return "https://stub/commit/1"

    monkeypatch.setattr(repocard, "hf_hub_download", download)
    monkeypatch.setattr(repocard, "upload_file", upload_file)
    monkeypatch.setattr(ModelCard, "validate", lambda self, repo_type=None: calls.setdefault("validated", True))
    assert audited[0].push_to_hub("me/my-fine-tune", token="t") == "https://stub/commit/1"
    path, repo_id, text, message = calls["upload"]
    assert (path, repo_id) == ("README.md", "me/my-fine-tune") and calls["validated"]
    card, _, results = _card_results(ModelCard(text))
    assert card.data.license == "mit" and "Trained on my notes." in card.text and "## Memorization" in card.text
    assert {r.metric_type for r in results} >= {"exact_match", "memorization_score", "calibrated_ce"}
    assert "memorization audit" in message.lower()


def _save_tiny(folder, tokenizer, seed=0, vocab_size=None):
    model = tiny_causal_lm("llama", vocab_size=vocab_size or len(tokenizer), seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def test_cli_audits_a_saved_model_end_to_end(tokenizer, tmp_path, capsys):
    _save_tiny(tmp_path / "model", tokenizer)
    _save_tiny(tmp_path / "base", tokenizer, seed=1)
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in stdlib_docstrings(max_docs=4)))
    argv = ["audit", "--model", str(tmp_path / "model"), "--reference-model", str(tmp_path / "base")]
    argv += ["--data", str(data), "--prefix-len", "8", "--suffix-len", "8", "--max-windows", "20", "--output-dir"]
    assert main(argv + [str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "20 windows of 8+8 tokens from 4 documents" in out and "calibrated_loss_median" in out
    results = json.loads((tmp_path / "report" / RESULTS_FILE).read_text())
    assert results["model"]["name_or_path"] == str(tmp_path / "model")
    assert results["reference_model"]["name_or_path"] == str(tmp_path / "base")
    assert pq.read_table(tmp_path / "report" / WINDOWS_FILE).num_rows == 20
    sources = {r["source"] for r in pq.read_table(tmp_path / "report" / WINDOWS_FILE).to_pylist()}
    assert all(s.startswith(f"{data}:") for s in sources)


@pytest.mark.parametrize(
    "case", ["empty data", "not a model", "out is a file", "other vocabulary", "bad repo id", "push offline"]
)
def test_cli_refuses_bad_input_in_one_line_before_any_work(case, tokenizer, tmp_path, capsys, monkeypatch):
    import hf_memory.models

    monkeypatch.setattr(hf_memory.models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    _save_tiny(tmp_path / "model", tokenizer)
    data = tmp_path / "notes.txt"
    data.write_text(stdlib_docstrings(max_docs=1)[0])
    args = {"--model": str(tmp_path / "model"), "--data": str(data), "--output-dir": str(tmp_path / "report")}
    if case == "empty data":
        (tmp_path / "empty.txt").write_text(" \n")
        args["--data"], message = str(tmp_path / "empty.txt"), "argument --data: '.*empty.txt' is empty"
    elif case == "not a model":
        (tmp_path / "notes").mkdir()
        args["--model"], message = str(tmp_path / "notes"), "argument --model: '.*notes' is not a model folder"
    elif case == "out is a file":
        args["--output-dir"], message = str(data), "argument --output-dir: '.*notes.txt' is a file"
    elif case == "other vocabulary":
        _save_tiny(tmp_path / "other", tokenizer, vocab_size=64)
        args["--reference-model"], message = str(tmp_path / "other"), "argument --reference-model: its vocabulary"
    elif case == "bad repo id":
        args["--push-to-hub"], message = "not a/repo id", "argument --push-to-hub: 'not a/repo id' is not a Hub repo"
    else:
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        args["--push-to-hub"], message = "me/model", "argument --push-to-hub: HF_HUB_OFFLINE is set"
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", *(x for pair in args.items() for x in pair)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err.strip().splitlines()[-1]), err


def test_bad_arguments_of_the_function_are_refused_before_any_work(tokenizer, tmp_path, monkeypatch):
    import hf_memory.extraction

    monkeypatch.setattr(
        hf_memory.extraction, "measure_extraction", lambda *a, **k: (_ for _ in ()).throw(AssertionError)
    )
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    texts = stdlib_docstrings(max_docs=2)
    (tmp_path / "file").write_text("x")
    cases = [
        ({"data": []}, "`data` is empty"),
        ({"data": ["a text", "  "]}, r"`data\[1\]` is an empty text"),
        ({"data": "one string"}, "not one string"),
        ({"output_dir": tmp_path / "file"}, "is a file"),
        ({"out": tmp_path / "file"}, "is a file"),  # the old keyword, with a FutureWarning
        ({"reference_model": tiny_causal_lm("llama", vocab_size=64)}, "another vocabulary"),
        ({"prefix_len": 0}, "`prefix_len` must be an integer >= 1"),
        ({"max_windows": 0}, "`max_windows` must be an integer >= 1"),
        ({"prefix_len": 4000}, "No sequence of `data` has"),
        ({"data": [[1, 2, 3] * 30, [len(tokenizer) + 5] * 64]}, "outside the model's vocabulary"),
    ]
    for change, message in cases:
        kwargs = {"data": texts, **change}
        with pytest.raises(ValueError, match=message):
            audit(model, tokenizer, show_progress=False, **kwargs)
    with pytest.raises(ValueError, match="another vocabulary"):  # same size, other tokens
        other = copy.deepcopy(tokenizer)
        other.add_tokens(["<not-in-the-model>"])
        audit(model, tokenizer, texts, reference_model=model, reference_tokenizer=other, show_progress=False)
    assert not (tmp_path / "report").exists()


def test_an_existing_report_folder_is_rewritten_and_reads_back(audited, tmp_path):
    report = audited[0]
    (tmp_path / "old.txt").write_text("kept")
    report.save(tmp_path)
    report.save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(["old.txt", HTML_FILE, RESULTS_FILE, WINDOWS_FILE])
    loaded = AuditReport.load(tmp_path)  # read back: the same rows and numbers
    assert loaded.metrics == pytest.approx(report.metrics) and loaded.model == report.model
    assert [r["suffix_ids"] for r in loaded.rows] == [r["suffix_ids"] for r in report.rows]
    with pytest.raises(ValueError, match="not the results of an hf-memory audit"):
        (tmp_path / RESULTS_FILE).write_text("{}")
        AuditReport.load(tmp_path)


def test_smollm2_report_shows_the_standard_arm_memorized_and_the_goldfish_arm_not(smollm2, tmp_path):
    """The demo's two arms, shortened: 8 documents of 32 tokens, 8 epochs, then an audit of each against the base."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_memory import GoldfishTrainer, GoldfishTrainingArguments, document_windows

    base, tokenizer = smollm2
    train = document_windows(tokenizer, stdlib_docstrings(), 32)[:8]
    data = Dataset.from_dict({"input_ids": train, "labels": train})
    common = {
        "num_train_epochs": 8,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "per_device_train_batch_size": 4,
        "logging_strategy": "no",
        "save_strategy": "no",
        "report_to": [],
        "seed": 0,
        "data_seed": 0,
        "use_cpu": True,
    }
    reports = {}
    for name, args, trainer_class in (
        ("standard", TrainingArguments(output_dir=str(tmp_path / "s"), **common), Trainer),
        (
            "goldfish",
            GoldfishTrainingArguments(output_dir=str(tmp_path / "g"), goldfish_k=4, goldfish_h=13, **common),
            GoldfishTrainer,
        ),
    ):
        model = copy.deepcopy(base)
        trainer_class(model=model, args=args, train_dataset=data, data_collator=default_data_collator).train()
        reports[name] = audit(
            model,
            tokenizer,
            train,
            prefix_len=16,
            suffix_len=16,
            reference_model=base,
            output_dir=tmp_path / name,
            show_progress=False,
        )
        del model
    standard, goldfish = reports["standard"], reports["goldfish"]
    for name, report in reports.items():  # shown with `pytest -s`: the numbers docs/audit.md reports
        print(name, json.dumps({"model": report.metrics, "reference": report.reference_metrics}))
    assert standard.reference_metrics["exact_match"] == goldfish.reference_metrics["exact_match"] == 0.0
    assert standard.metrics["exact_match"] >= 0.5  # memorized
    assert goldfish.metrics["exact_match"] <= 0.2  # not
    assert standard.metrics["longest_common_prefix"] > 2 * goldfish.metrics["longest_common_prefix"]
    # the membership score moves too: the standard arm knows its data better than the goldfish arm does
    assert standard.metrics["calibrated_loss_median"] < goldfish.metrics["calibrated_loss_median"] < 0
    page = (tmp_path / "standard" / HTML_FILE).read_text(encoding="utf-8")
    assert "Most extracted windows" in page and page.count("<mark>") >= 2


# --- streaming input and resuming an interrupted audit -------------------------------------------------------------

RESUME = {"prefix_len": 4, "suffix_len": 4, "max_windows": 40, "batch_size": 4, "flush_every": 1}


def resume_case():
    """A tiny model, a reference and a word-level corpus of 12 documents: 40 windows in 10 chunks of 4."""
    import random

    from hf_memory.data import word_level_tokenizer

    tok = word_level_tokenizer([f"w{i}" for i in range(40)])
    model = tiny_causal_lm("llama", vocab_size=len(tok), hidden=16, seed=0)
    reference = tiny_causal_lm("llama", vocab_size=len(tok), hidden=16, seed=1)
    rng = random.Random(0)
    texts = [" ".join(f"w{rng.randrange(40)}" for _ in range(rng.randrange(20, 60))) for _ in range(12)]
    return model, reference, tok, texts


def run_resume_case(out, **change):
    model, reference, tok, texts = resume_case()
    kwargs = {**RESUME, "reference_model": reference, "output_dir": out, "show_progress": False, **change}
    return audit(model, tok, texts, **kwargs)


@pytest.fixture(scope="module")
def clean_resume_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests that compare with it run (conftest): float sums depend on the thread count
    try:
        return run_resume_case(tmp_path_factory.mktemp("clean")).table()
    finally:
        torch.set_num_threads(threads)


def test_a_generator_a_streamed_dataset_and_a_list_give_the_same_report(tokenizer):
    from datasets import Dataset, IterableDataset

    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    texts = stdlib_docstrings(max_docs=6)
    kwargs = {"prefix_len": 8, "suffix_len": 8, "max_windows": 12, "show_progress": False}
    expected = audit(model, tokenizer, texts, sources=[f"t{i}" for i in range(6)], **kwargs).table()
    streamed = IterableDataset.from_generator(lambda: ({"text": t} for t in texts))
    ids = Dataset.from_dict({"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]})
    for data in (iter(texts), streamed, ids, (t for t in texts)):
        report = audit(model, tokenizer, data, sources=(f"t{i}" for i in range(6)), **kwargs)
        assert report.table().equals(expected), type(data)
        assert report.data["num_documents"] == 6 and report.data["sources"] == [f"t{i}" for i in range(6)]


def test_data_is_read_once_and_sources_must_match_it(tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(tokenizer))
    texts = stdlib_docstrings(max_docs=3)

    class Once:
        passes = 0

        def __iter__(self):
            Once.passes += 1
            return iter(texts)

    audit(model, tokenizer, Once(), prefix_len=8, suffix_len=8, max_windows=4, show_progress=False)
    assert Once.passes == 1
    for labels, message in ((["a", "b"], "`sources` has 2 labels for more"), (list("abcd"), "more labels than the 3")):
        with pytest.raises(ValueError, match=message):
            audit(model, tokenizer, texts, sources=iter(labels), prefix_len=8, suffix_len=8, show_progress=False)
    with pytest.raises(ValueError, match=r"`data\[1\]` is a text: `data` mixes"):
        audit(model, tokenizer, [[1, 2, 3], "text"], prefix_len=1, suffix_len=1, show_progress=False)


def test_chunking_does_not_change_the_numbers(clean_resume_run, tmp_path):
    one_chunk = run_resume_case(tmp_path, flush_every=100).table()
    assert one_chunk.equals(clean_resume_run)
    assert os.listdir(tmp_path) and ".partial" not in os.listdir(tmp_path)  # removed once the report is written


def test_an_interrupted_audit_resumes_and_equals_a_clean_one(clean_resume_run, tmp_path, monkeypatch):
    import hf_memory.analysis

    real, calls, interrupt_at = hf_memory.analysis.ce_diagnostic, [], [4]

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) in interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_memory.analysis, "ce_diagnostic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_resume_case(tmp_path)
    partial = tmp_path / ".partial"
    assert len(list(partial.glob("rank00000-*.parquet"))) == 3 and not (tmp_path / RESULTS_FILE).exists()

    with pytest.raises(
        ValueError, match=r"\.partial' holds results of a different run \(settings max_windows: 40 there"
    ):
        run_resume_case(tmp_path, max_windows=39)
    with pytest.raises(ValueError, match="different run .*data_sha256"):
        model, reference, tok, texts = resume_case()
        audit(model, tok, texts[1:], **RESUME, reference_model=reference, output_dir=tmp_path, show_progress=False)

    calls.clear()
    interrupt_at.clear()
    resumed = run_resume_case(tmp_path)
    assert len(calls) == 7  # the 3 chunks on disk are not scored again
    assert resumed.table().equals(clean_resume_run)
    assert AuditReport.load(tmp_path).table().equals(clean_resume_run)
    assert not partial.exists()


def test_a_second_audit_into_a_folder_being_written_is_refused(tmp_path):
    from hf_memory._utils import folder_lock

    (tmp_path / ".partial").mkdir()
    lock = folder_lock(str(tmp_path / ".partial" / ".rank00000.lock"))
    try:
        with pytest.raises(ValueError, match="Another run is writing"):
            run_resume_case(tmp_path)
    finally:
        lock.close()


@pytest.mark.slow
def test_an_audit_killed_mid_way_resumes_and_equals_a_clean_one(clean_resume_run, tmp_path):
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = f"""
import os, signal, sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)  # as the clean run: float sums depend on the thread count
import hf_memory.analysis
from tests.test_audit import run_resume_case
real, calls = hf_memory.analysis.ce_diagnostic, []
def killed(*args, **kwargs):
    calls.append(1)
    if len(calls) == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
hf_memory.analysis.ce_diagnostic = killed
run_resume_case({str(tmp_path)!r})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert len(list((tmp_path / ".partial").glob("rank00000-*.parquet"))) == 5
    resumed = run_resume_case(tmp_path)
    assert resumed.table().equals(clean_resume_run)
    assert sorted(os.listdir(tmp_path)) == sorted([HTML_FILE, RESULTS_FILE, WINDOWS_FILE])


def test_a_resumed_audit_refuses_other_weights_another_tokenizer_and_other_data(tmp_path, monkeypatch):
    """Each was accepted while the manifest held only names and config hashes: the report mixed two models' rows."""
    import hf_memory.analysis
    from hf_memory.data import word_level_tokenizer

    real, calls = hf_memory.analysis.ce_diagnostic, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_memory.analysis, "ce_diagnostic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_resume_case(tmp_path)
    monkeypatch.setattr(hf_memory.analysis, "ce_diagnostic", real)
    model, reference, tok, texts = resume_case()
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-3  # a fine-tune keeps its name and config
    with pytest.raises(ValueError, match=r"different run \(model weights_sha256"):
        audit(model, tok, texts, **RESUME, reference_model=reference, output_dir=tmp_path, show_progress=False)
    model, reference, tok, texts = resume_case()
    with torch.no_grad():
        reference.lm_head.weight[0, 0] += 1e-3
    with pytest.raises(ValueError, match="different run .*reference_model weights_sha256"):
        audit(model, tok, texts, **RESUME, reference_model=reference, output_dir=tmp_path, show_progress=False)
    model, reference, tok, texts = resume_case()
    other = word_level_tokenizer([f"v{i}" for i in range(40)])  # same size, other tokens
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    with pytest.raises(ValueError, match="different run .*tokenizer_sha256"):
        audit(model, other, ids, **RESUME, reference_model=reference, output_dir=tmp_path, show_progress=False)
    short = texts + ["w1 w2"] * 5  # too short for a window: the same windows, other n-gram counts
    with pytest.raises(ValueError, match="different run .*data_sha256"):
        audit(model, tok, short, **RESUME, reference_model=reference, output_dir=tmp_path, show_progress=False)
    assert len(run_resume_case(tmp_path).rows) == 40  # the same call still finishes it


def test_non_finite_losses_are_left_out_of_the_summary_and_the_page_says_how_many(tmp_path):
    model, reference, tok, texts = resume_case()
    with torch.no_grad():
        model.model.embed_tokens.weight[tok.convert_tokens_to_ids("w3")] = float("nan")
    report = audit(model, tok, texts, **{**RESUME, "flush_every": 10}, reference_model=reference, output_dir=tmp_path,
                   show_progress=False)  # fmt: skip
    losses = [r["calibrated_loss"] for r in report.rows]
    bad = sum(not math.isfinite(v) for v in losses)
    assert 0 < bad < len(losses)
    calibrated = report.calibrated
    assert calibrated["calibrated_non_finite"] == bad
    finite = sorted(v for v in losses if math.isfinite(v))
    assert calibrated["calibrated_loss_median"] == pytest.approx(float(torch.tensor(finite).median()), abs=1e-3)
    assert "windows whose loss is not finite" in (tmp_path / HTML_FILE).read_text()
    assert all(math.isfinite(r.metric_value) for r in report.eval_results("data", "custom"))


def test_a_re_audit_replaces_every_earlier_result_and_an_unreachable_hub_stops_the_push(audited, monkeypatch):
    import huggingface_hub.repocard as repocard
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import LocalEntryNotFoundError

    report = audited[0]
    card = report.to_model_card(None)
    fewer = copy.deepcopy(report)
    fewer.data["num_windows"] = 9  # another window count: other metric_config
    fewer.reference_model = None
    fewer.rows = [{**r, "calibrated_loss": None} for r in fewer.rows]
    _, _, results = _card_results(fewer.to_model_card(card))
    assert sorted(r.metric_type for r in results) == sorted({r.metric_type for r in results})  # nothing twice
    assert "calibrated_ce" not in {r.metric_type for r in results}  # no stale number from the audit before

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("no connection and not in the cache")

    uploads = []
    monkeypatch.setattr(repocard, "hf_hub_download", unreachable)
    monkeypatch.setattr(repocard, "upload_file", lambda *args, **kwargs: uploads.append(1))
    monkeypatch.setattr(ModelCard, "validate", lambda self, repo_type=None: None)
    with pytest.raises(LocalEntryNotFoundError):
        report.push_to_hub("me/my-fine-tune", token="t")
    assert not uploads


def test_top_k_zero_and_bad_items_are_named(tmp_path):
    model, _, tok, texts = resume_case()
    report = audit(model, tok, texts, prefix_len=4, suffix_len=4, max_windows=4, top_k=0, output_dir=tmp_path,
                   show_progress=False)  # fmt: skip
    page = (tmp_path / HTML_FILE).read_text()
    assert "Not shown (top_k=0)" in page and "not even its first token" not in page
    assert report.data["num_windows"] == 4
    for data, match in (
        ([None, texts[0]], r"`data\[0\]` is None"),
        ([texts[0], None], r"`data\[1\]` is None"),
    ):
        with pytest.raises(ValueError, match=match):
            audit(model, tok, data, prefix_len=4, suffix_len=4, show_progress=False)
    with pytest.raises(ValueError, match=r"`sources\[1\]` is None"):
        audit(model, tok, texts[:2], sources=["a", None], prefix_len=4, suffix_len=4, show_progress=False)
    with pytest.raises(ValueError, match="`model` must be a causal language model"):
        audit(None, tok, texts, prefix_len=4, suffix_len=4, show_progress=False)
    rows = ({"text": t} for t in texts[:3])  # rows of a streamed text dataset
    assert (
        audit(model, tok, rows, prefix_len=4, suffix_len=4, max_windows=3, show_progress=False).data["num_documents"]
        == 3
    )


def test_save_takes_output_dir_and_the_old_keyword_with_a_future_warning(tmp_path):
    report = run_resume_case(tmp_path / "first")
    report.save(output_dir=tmp_path / "new")
    with pytest.warns(FutureWarning, match=r"save\(output_dir=...\)"):
        report.save(out=tmp_path / "old")
    assert (tmp_path / "new" / "results.json").read_text() == (tmp_path / "old" / "results.json").read_text()
    with pytest.raises(TypeError, match="output_dir"):
        report.save()


# --- membership inference against held-out non-members --------------------------------------------------------------

MIA = {"prefix_len": 4, "suffix_len": 4, "max_windows": 40, "batch_size": 4, "flush_every": 2}


def membership_case(train_steps: int = 0):
    """A word-level corpus of 24 random documents split at random into 12 members and 12 non-members, and a tiny model
    trained `train_steps` full passes on the members only (so the attacks must tell them apart)."""
    import random

    from hf_memory.data import word_level_tokenizer

    tok = word_level_tokenizer([f"w{i}" for i in range(40)])
    model = tiny_causal_lm("llama", vocab_size=len(tok), hidden=32, seed=0)
    rng = random.Random(0)
    texts = [" ".join(f"w{rng.randrange(40)}" for _ in range(rng.randrange(30, 60))) for _ in range(24)]
    rng.shuffle(texts)
    members, non_members = texts[:12], texts[12:]
    if train_steps:
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ids = [torch.tensor([tok(t, add_special_tokens=False)["input_ids"]]) for t in members]
        for _ in range(train_steps):
            for row in ids:
                optimizer.zero_grad()
                model(input_ids=row, labels=row).loss.backward()
                optimizer.step()
        model.eval()
    return model, tok, members, non_members


@pytest.fixture(scope="module")
def membership_audit(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok, members, non_members = membership_case(train_steps=15)
        out = tmp_path_factory.mktemp("membership")
        report = audit(model, tok, members, non_members=non_members, **MIA, output_dir=out, show_progress=False,
                       membership_bootstrap=200)  # fmt: skip
        return report, out, model, tok
    finally:
        torch.set_num_threads(threads)


def test_membership_is_measured_first_and_every_score_is_in_the_files(membership_audit):
    from hf_memory.auditing import MEMBERSHIP_FILE
    from hf_memory.membership import membership_report, membership_scores

    report, out, model, tok = membership_audit
    assert sorted(os.listdir(out)) == sorted([HTML_FILE, RESULTS_FILE, WINDOWS_FILE, MEMBERSHIP_FILE])
    table = pq.read_table(out / MEMBERSHIP_FILE)
    rows = table.to_pylist()
    members = [r for r in rows if r["is_member"]]
    assert len(members) == report.data["num_windows"] == 40
    assert len(rows) - len(members) == report.data["num_non_member_windows"] == report.membership.num_non_members
    assert {r["set"] for r in rows} == {"member", "non-member"} and [r["sample"] for r in rows] == list(
        range(len(rows))
    )
    assert report.membership_attacks == ["loss", "zlib", "min_k", "min_k_plus_plus"]
    # the members are the audited windows, scored as `membership_scores` scores them, one window at a time
    windows = [r["prefix_ids"] + r["suffix_ids"] for r in report.rows]
    assert [tok(r["text"], add_special_tokens=False)["input_ids"] for r in members] == windows
    direct = membership_scores(model, windows[:5], tok, batch_size=1, show_progress=False)
    for attack in report.membership_attacks:
        assert [r[attack] for r in members[:5]] == pytest.approx(direct.scores[attack].tolist(), rel=1e-5)
    # results.json holds the evaluation of exactly these scores
    results = json.loads((out / RESULTS_FILE).read_text())
    again = membership_report(
        {a: table.column(a).to_pylist() for a in report.membership_attacks},
        table.column("is_member").to_pylist(),
        texts=table.column("text").to_pylist(),
        n_bootstrap=200,
    )
    for attack, entry in again.attacks.items():
        assert results["membership"]["attacks"][attack]["auc"] == pytest.approx(entry["auc"])
        assert results["membership"]["attacks"][attack]["auc_interval"] == pytest.approx(entry["auc_interval"])
    blind = table.column("blind_baseline").to_pylist()
    assert None not in blind and results["membership"]["blind_baseline"]["auc"] == pytest.approx(
        again.blind_baseline["auc"]
    )
    assert results["membership_verdict"] == report.membership_verdict()
    # reads back
    loaded = AuditReport.load(out)
    assert loaded.membership.to_dict(curves=False) == report.membership.to_dict(curves=False)
    assert loaded.membership_table().equals(report.membership_table())


def test_the_page_opens_with_the_membership_verdict_table_roc_and_blind_baseline(membership_audit):
    report, out, _, _ = membership_audit
    page = (out / HTML_FILE).read_text()
    collector = _Collector()
    collector.feed(page)
    text = " ".join(collector.text)
    mia = text.index("Membership inference: can the model tell")
    assert mia < text.index("Extraction") < text.index("Headline")
    best = max(report.membership.attacks.values(), key=lambda e: e["auc"])
    assert best["above_chance"], report.membership.to_markdown()  # trained 15 passes on the members only
    assert "Membership leaks" in text and "does not say which documents" in text
    assert "not measurable: needs at least 1000 non-members" in text  # TPR at 0.1% FPR with 40 non-members
    assert "blind baseline (texts alone, no model)" in text and "The blind baseline is at chance" in text
    assert any(tag == "img" and "membership inference ROC" in page for tag in collector.tags)
    assert all(value.startswith("data:") for _, _, value in collector.links)


def test_the_card_gets_membership_results(membership_audit):
    report = membership_audit[0]
    card, _, results = _card_results(report.to_model_card())
    aucs = {r.metric_name: r.metric_value for r in results if r.metric_type == "roc_auc"}
    assert aucs["Membership inference ROC AUC (loss)"] == round(report.membership.attacks["loss"]["auc"], 6)
    assert "Membership inference ROC AUC (blind baseline, texts alone)" in aucs
    assert all("non_members=40" in r.metric_config for r in results if r.metric_type == "roc_auc")
    assert "### Membership inference" in card.text and "Membership leaks" in card.text


def test_without_non_members_the_page_says_what_cannot_be_concluded(audited):
    report, out, _, _ = audited
    page = (out / HTML_FILE).read_text()
    assert "Membership inference was not measured" in page and "do not rule out a" in page
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["membership"] is None and "not measured" in results["membership_verdict"][0]
    assert report.membership_table() is None and report.membership_attacks == []
    assert "Membership inference was not measured" in report.card_section()


def test_an_untrained_model_leaks_nothing_and_a_biased_split_fires_the_blind_baseline():
    model, tok, members, non_members = membership_case()
    report = audit(model, tok, members, non_members=non_members, **MIA, show_progress=False, membership_bootstrap=200)
    assert not any(e["above_chance"] for e in report.membership.attacks.values()), report.membership.to_markdown()
    assert report.membership_verdict()[0].startswith("No membership leak detected")
    assert "a reference model (the checkpoint before fine-tuning)" in report.membership_verdict()[0]
    assert "Membership inference (above) detects no leak" in report.extraction_verdict()[2]
    assert re.search(r'<div class="verdict neutral">No membership leak detected', report.to_html())
    other = [t.replace("w1", "w39 w39 w38") for t in non_members]  # another "source": its own frequent words
    report = audit(model, tok, members, non_members=other, **MIA, show_progress=False, membership_bootstrap=200)
    assert report.membership.blind_baseline["distinguishable"], report.membership.to_markdown()
    assert report.membership_verdict()[0].startswith("Not conclusive")
    assert "Membership inference (above) is not conclusive" in report.extraction_verdict()[2]
    assert re.search(r'<div class="verdict caution">Not conclusive', report.to_html())


def test_a_reference_model_adds_the_reference_attack_and_non_members_stream(tmp_path):
    from datasets import IterableDataset

    model, tok, members, non_members = membership_case()
    reference = tiny_causal_lm("llama", vocab_size=len(tok), hidden=32, seed=1)
    kwargs = {**MIA, "reference_model": reference, "show_progress": False, "membership_bootstrap": 100}
    listed = audit(model, tok, members, non_members=non_members, **kwargs)
    assert listed.membership_attacks[-1] == "reference"
    streamed = IterableDataset.from_generator(lambda: ({"text": t} for t in non_members))
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in non_members]
    for data in ((t for t in non_members), streamed, ids):
        report = audit(model, tok, members, non_members=data, **kwargs)
        assert report.membership_table().equals(listed.membership_table()), type(data)
    chosen = audit(model, tok, members, non_members=non_members, **{**kwargs, "membership_attacks": ["loss"]})
    assert chosen.membership_attacks == ["loss"]


def test_bad_non_members_are_refused_before_any_work(tmp_path, monkeypatch):
    import hf_memory.auditing.membership
    import hf_memory.extraction

    def never(*args, **kwargs):
        raise AssertionError("scored before the input was checked")

    monkeypatch.setattr(hf_memory.extraction, "measure_extraction", never)
    monkeypatch.setattr(hf_memory.auditing.membership, "membership_scores", never)
    model, tok, members, non_members = membership_case()
    cases = [
        ({"non_members": non_members[:5] + [members[3]]}, r"`non_members\[5\]` is an exact copy of a document of"),
        ({"non_members": non_members + [members[2] + " w1"]}, r"window\(s\) of `non_members` are also windows of"),
        ({"non_members": ["w1 w2 w3 w4 w5 w6 w7 w8 w9"] * 2}, "needs at least 5 windows of `non_members`, got 2"),
        ({"non_members": non_members, "max_windows": 4}, "needs at least 5 windows of `data`, got 4"),
        ({"non_members": []}, "`non_members` is empty"),
        ({"non_members": "w1 w2"}, "`non_members` must be a list of documents"),
        ({"non_members": ["w1 w2", ""]}, r"`non_members\[1\]` is an empty text"),
        ({"non_members": [[1, 2, 3] * 10, [len(tok) + 3] * 20]}, r"`non_members\[1\]`.*outside the model's vocab"),
        ({"non_members": ["w1 w2"] * 6}, "No sequence of `non_members` has"),
        ({"non_members": non_members, "membership_attacks": ["reference"]}, "needs a `reference_model`"),
        ({"non_members": non_members, "membership_attacks": ["nope"]}, "`membership_attacks`"),
        ({"non_members": non_members, "membership_attacks": "loss"}, "`membership_attacks` must be a list"),
        ({"non_members": non_members, "membership_k": 0}, "`membership_k` must be"),
        ({"non_members": non_members, "membership_k": float("nan")}, "`membership_k` must be"),
        ({"non_members": non_members, "membership_bootstrap": 10}, "`membership_bootstrap` must be an integer >= 100"),
        ({"non_member_sources": ["a"]}, "`non_member_sources` was given without `non_members`"),
        ({"non_members": non_members, "non_member_sources": ["a"]}, "`non_member_sources` has 1 labels for more"),
        ({"non_members": non_members, "non_member_sources": "abc"}, "`non_member_sources` must be a list"),
    ]
    for change, message in cases:
        kwargs = {**MIA, "output_dir": tmp_path / "report", "show_progress": False, **change}
        with pytest.raises(ValueError, match=message):
            audit(model, tok, members, **kwargs)
    assert not (tmp_path / "report" / ".partial").exists()
    import numpy as np

    from hf_memory.auditing import AuditConfig

    assert AuditConfig(membership_k=np.float32(0.5), membership_bootstrap=np.int64(200)).membership_bootstrap == 200


def test_an_interrupted_membership_audit_resumes_and_equals_a_clean_one(tmp_path, monkeypatch):
    import hf_memory.auditing.membership

    model, tok, members, non_members = membership_case()
    kwargs = {**MIA, "flush_every": 1, "show_progress": False, "membership_bootstrap": 100}
    clean = audit(model, tok, members, non_members=non_members, **kwargs, output_dir=tmp_path / "clean")
    real, calls, interrupt_at = hf_memory.auditing.membership.membership_scores, [], [5]

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) in interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(hf_memory.auditing.membership, "membership_scores", interrupted)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        audit(model, tok, members, non_members=non_members, **kwargs, output_dir=out)
    partial = out / ".partial" / "membership"
    assert len(list(partial.glob("rank00000-*.parquet"))) == 4 and not (out / RESULTS_FILE).exists()
    edited = non_members[:-1] + [non_members[-1].replace("w", "w1", 1)]
    with pytest.raises(ValueError, match="different run .*non_members_sha256"):
        audit(model, tok, members, non_members=edited, **kwargs, output_dir=out)
    with pytest.raises(ValueError, match="different run .*membership_k"):
        audit(model, tok, members, non_members=non_members, **kwargs, membership_k=0.5, output_dir=out)
    calls.clear()
    interrupt_at.clear()
    resumed = audit(model, tok, members, non_members=non_members, **kwargs, output_dir=out)
    total = math.ceil((40 + resumed.membership.num_non_members) / MIA["batch_size"])
    assert len(calls) == total - 4  # the 4 chunks on disk are not scored again
    assert resumed.membership_table().equals(clean.membership_table())
    assert resumed.membership.to_dict() == clean.membership.to_dict()
    assert resumed.table().equals(clean.table()) and not (out / ".partial").exists()


def test_a_report_folder_reused_without_non_members_drops_the_old_membership_file(membership_audit, tmp_path):
    from hf_memory.auditing import MEMBERSHIP_FILE

    report = membership_audit[0]
    report.save(tmp_path)
    assert (tmp_path / MEMBERSHIP_FILE).exists()
    AuditReport(rows=report.rows, settings=report.settings, model=report.model, data=report.data).save(tmp_path)
    assert not (tmp_path / MEMBERSHIP_FILE).exists()
    (tmp_path / MEMBERSHIP_FILE).mkdir()
    model, tok, members, non_members = membership_case()
    with pytest.raises(ValueError, match="holds a folder named membership.parquet"):
        audit(model, tok, members, non_members=non_members, **MIA, output_dir=tmp_path, show_progress=False)


def test_cli_audits_with_held_out_files_end_to_end(tmp_path, capsys, monkeypatch):
    import hf_memory.models
    from hf_memory.auditing import MEMBERSHIP_FILE

    model, tok, members, non_members = membership_case(train_steps=15)
    monkeypatch.setattr(hf_memory.models, "load_model", lambda *a, **k: (model, tok))
    data, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in members))
    held.write_text("".join(json.dumps({"text": t}) + "\n" for t in non_members[:6]))
    (tmp_path / "more.txt").write_text("\n".join(non_members[6:]))  # one document: a text file is one
    argv = ["audit", "--data", str(data), "--held-out", str(held), str(tmp_path / "more.txt")]
    argv += ["--prefix-len", "4", "--suffix-len", "4", "--max-windows", "40", "--membership-bootstrap", "100"]
    assert main(argv + ["--output-dir", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "membership inference against" in out and "Membership leaks" in out
    results = json.loads((tmp_path / "report" / RESULTS_FILE).read_text())
    assert results["data"]["num_non_member_documents"] == 7
    assert results["settings"]["membership_bootstrap"] == 100
    assert (
        pq.read_table(tmp_path / "report" / MEMBERSHIP_FILE).num_rows == 40 + results["data"]["num_non_member_windows"]
    )


def test_windows_with_non_finite_membership_scores_are_left_out_and_counted():
    model, tok, members, non_members = membership_case()
    with torch.no_grad():
        model.model.embed_tokens.weight[tok.convert_tokens_to_ids("w3")] = float("nan")
    report = audit(model, tok, members, non_members=non_members, **MIA, show_progress=False, membership_bootstrap=100)
    table = report.membership_table()
    nan = [math.isnan(v) for v in table.column("loss").to_pylist()]
    assert 0 < sum(nan) == report.data["num_membership_left_out"]
    assert report.membership.num_members + report.membership.num_non_members == len(nan) - sum(nan)
    assert [b is None for b in table.column("blind_baseline").to_pylist()] == nan
    assert f"{sum(nan)} window(s) were left out" in " ".join(report.membership_verdict())
    with torch.no_grad():
        model.model.embed_tokens.weight[:] = float("nan")
    with pytest.raises(ValueError, match="Only 0 members have finite membership scores"):
        audit(model, tok, members, non_members=non_members, **MIA, show_progress=False, membership_bootstrap=100)


@pytest.mark.slow
def test_a_membership_audit_killed_mid_way_resumes_and_equals_a_clean_one(tmp_path):
    import signal
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = "audit(model, tok, members, non_members=non_members, **{**MIA, 'flush_every': 1}, output_dir=out, " \
          "show_progress=False, membership_bootstrap=100)"  # fmt: skip
    script = f"""
import os, signal, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
import hf_memory.auditing.membership as section
from hf_memory.auditing import audit
from tests.test_audit import MIA, membership_case
real, calls = section.membership_scores, []
def killed(*args, **kwargs):
    calls.append(1)
    if len(calls) == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
section.membership_scores = killed
model, tok, members, non_members = membership_case()
out = {str(tmp_path / "resumed")!r}
{run}
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert len(list((tmp_path / "resumed" / ".partial" / "membership").glob("rank00000-*.parquet"))) == 5
    torch.set_num_threads(1)
    model, tok, members, non_members = membership_case()
    kwargs = {**MIA, "flush_every": 1, "show_progress": False, "membership_bootstrap": 100}
    resumed = audit(model, tok, members, non_members=non_members, **kwargs, output_dir=tmp_path / "resumed")
    clean = audit(model, tok, members, non_members=non_members, **kwargs, output_dir=tmp_path / "clean")
    assert resumed.membership_table().equals(clean.membership_table())
    assert resumed.membership.to_dict() == clean.membership.to_dict()


def test_an_audit_measures_the_model_through_its_decoding_guard(tmp_path):
    """Issue 36: `audit(logits_processor=...)` measures a guarded deployment; the reference is measured without it."""
    from collections import Counter

    from tests.testing_utils import BanToken

    model, reference, tok, texts = resume_case()
    plain = audit(model, tok, texts, **RESUME, reference_model=reference, show_progress=False)
    common = Counter(t for row in plain.rows for t in row["prediction_ids"]).most_common(1)[0][0]

    guarded = audit(model, tok, texts, **RESUME, reference_model=reference, logits_processor=BanToken(common),
                    output_dir=tmp_path, show_progress=False)  # fmt: skip
    assert not any(common in row["prediction_ids"] for row in guarded.rows)
    assert [r["reference_exact_match"] for r in guarded.rows] == [r["reference_exact_match"] for r in plain.rows]
    assert guarded.settings["logits_processor"] == ["BanToken"]
    with pytest.raises(ValueError, match="`logits_processor` must be a transformers LogitsProcessor"):
        audit(model, tok, texts, **RESUME, logits_processor="memfree", show_progress=False)


def test_an_audit_measures_extraction_under_the_deployments_sampling(tmp_path):
    """Issue 32: `sampling_temperature` adds log p per window, `probabilistic_extraction` and a sentence on the page."""
    import pyarrow.parquet as pq

    from hf_memory.extraction import extractable_fraction, measure_extraction

    model, reference, tok, texts = resume_case()
    sampling = {"sampling_temperature": 0.7, "sampling_top_k": 10, "sampling_queries": 20}
    report = audit(model, tok, texts, **RESUME, **sampling, output_dir=tmp_path, show_progress=False)
    windows = torch.tensor([r["prefix_ids"] + r["suffix_ids"] for r in report.rows])
    direct = measure_extraction(model, windows, 4, 4, temperature=0.7, top_k=10, show_progress=False)
    assert [r["log_p"] for r in report.rows] == pytest.approx(direct.log_p, rel=1e-9, abs=1e-9)
    expected = extractable_fraction(direct.log_p, 20, 0.5)
    assert report.metrics["probabilistic_extraction"] == expected
    assert f"{100 * expected:.1f}% of windows are extracted with probability at least 0.5" in report.to_html()
    assert "Sampled at temperature 0.7, top_k 10, with 20 queries" in report.to_html()
    assert pq.read_table(tmp_path / "windows.parquet").column("log_p").to_pylist() == [r["log_p"] for r in report.rows]
    greedy = audit(model, tok, texts, **RESUME, show_progress=False)
    assert "probabilistic_extraction" not in greedy.metrics and greedy.rows[0]["log_p"] is None
    for bad, message in (
        ({"sampling_top_k": 3}, "`sampling_top_k` and `sampling_top_p` take effect with a `sampling_temperature`"),
        ({"sampling_temperature": -1.0}, "`sampling_temperature` must be > 0"),
        ({"sampling_temperature": 1.0, "sampling_queries": 0}, "`sampling_queries` must be an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            audit(model, tok, texts, **RESUME, **bad, show_progress=False)


# --- the verdict in plain words, and its colour (issue 35 item 6) ----------------------------------------------------


def _synthetic_report(extracted: int, windows: int = 20, reference: list[bool] | None = None, partial: int = 0,
                      **settings) -> AuditReport:  # fmt: skip
    """An `AuditReport` of `windows` made-up rows (suffix 4) whose first `extracted` are extracted exactly and the next
    `partial` reproduce 2 of 4 suffix tokens; every column the page reads is filled."""
    from hf_memory.auditing.summary import SIGNAL_COLUMNS

    rows = []
    for i in range(windows):
        lcp = 4 if i < extracted else 2 if i < extracted + partial else i % 2
        row = {
            "window": i, "document": i, "source": f"doc{i}.txt", "start": 0, "exact_match": lcp == 4,
            "longest_common_prefix": lcp, "memorization_score": lcp / 4, "rouge_l": lcp / 4,
            "log_p": 0.0 if i < extracted else -50.0,
            "reference_exact_match": None if reference is None else reference[i],
            "reference_longest_common_prefix": None if reference is None else 4 * reference[i],
            "loss": 1.0, "loss_after": 0.5, "reference_loss": None if reference is None else 1.5,
            "calibrated_loss": None if reference is None else -1.0,
            "prefix_ids": [1, 2, 3, 4], "suffix_ids": [5, 6, 7, 8], "prediction_ids": [5, 6, 7, 8][:lcp] + [9] * (4 - lcp),
            "prefix_text": "a b c d", "suffix_text": "e f g h", "prediction_text": "e f g h",
            "reproduced_text": "e f g h"[: 2 * lcp], "missed_text": "", "diverged_text": "",
        }  # fmt: skip
        row.update({name: float(i % 3) for name in SIGNAL_COLUMNS})
        rows.append(row)
    base = {"prefix_len": 4, "suffix_len": 4, "stride": 8, "max_windows": 512, "seed": 0, "top_k": 10, "ce_lr": 1e-5}
    sampling = {"sampling_temperature": None, "sampling_top_k": None, "sampling_top_p": 1.0}
    data = {"num_documents": windows, "num_tokens": 8 * windows, "num_short_documents": 0,
            "num_candidate_windows": windows, "num_windows": windows}  # fmt: skip
    model = {
        "name_or_path": "m",
        "model_type": "llama",
        "num_parameters": 1,
        "dtype": "float32",
        "config_sha256": "0" * 64,
    }
    return AuditReport(rows=rows, settings={**base, **sampling, **settings}, model=model,
                       reference_model=None if reference is None else dict(model, name_or_path="r"), data=data)  # fmt: skip


def _extraction_banner(page: str) -> str:
    """The class attribute of the extraction section's verdict box."""
    return re.search(r'<h2>Extraction</h2>\s*<div class="([^"]+)"', page).group(1)


@pytest.mark.parametrize(
    ("extracted", "windows", "level", "tone"),
    [(0, 20, "none", "neutral"), (1, 20, "some", "caution"), (1, 11, "some", "caution"), (2, 20, "many", "alarm"),
     (16, 20, "many", "alarm")],
)  # fmt: skip
def test_the_extraction_verdict_and_its_colour_follow_the_finding(extracted, windows, level, tone):
    """0 extracted: neutral, and the page says what that rules out and what not; under 10%: amber; 10% or more: red.
    Before, every share got the same red banner and one sentence that read like a claim at 0%."""
    from hf_memory.auditing.html import TONES, _inline_code

    report = _synthetic_report(extracted, windows, partial=1)
    assert report.extraction_level == level
    found, meaning, membership = report.extraction_verdict()
    if extracted:
        share = f"{100 * extracted / windows:.1f}%"
        assert found.startswith(
            f"{extracted} of {windows} windows ({share}) {'is' if extracted == 1 else 'are'} extracted"
        )
        assert "lower bound" in meaning and "when the model samples" in meaning and "shorter than 4 tokens" in meaning
        assert "1 more window has at least half of its suffix reproduced" in meaning
    else:
        assert found.startswith("No window is extracted: for none of the 20 windows")
        assert "the most it gets right before a mistake: 2 tokens" in found  # the partial window
        assert meaning.startswith("This rules out that these windows come back word for word")
        for gap in ("extraction when the model samples", "prefixes shorter than 4 tokens", "partial copies (1 window"):
            assert gap in meaning
        assert "are extracted: the model writes their" not in found  # the old sentence, which read like a claim
    assert "membership inference's question: not measured here" in membership
    page = report.to_html()
    assert _extraction_banner(page) == f"verdict {tone}"
    assert f".verdict.{tone} {{ border-left-color: {TONES[tone][0]}" in page
    for line in report.extraction_verdict():  # escaped, `names` as <code>
        assert f"<p>{_inline_code(line)}</p>" in page
    assert "<code>--sampling-temperature</code>" in page and "`" not in re.sub(r"<img[^>]*>", "", page)
    assert _inline_code("`<b>` & `x`") == "<code>&lt;b&gt;</code> &amp; <code>x</code>"
    assert report.extraction_verdict()[0] in report.card_section()
    results = report.to_dict()
    assert results["extraction_level"] == level and results["extraction_verdict"] == report.extraction_verdict()


def test_the_extraction_verdict_names_the_reference_and_sampling():
    reference = [False] * 20
    reference[0] = reference[5] = True
    report = _synthetic_report(3, reference=reference)
    assert report.extraction_verdict()[0].endswith(
        "; the reference model extracts 2 (10.0%), 1 of these among them (a window the reference writes too is "
        "formulaic or widely known text, not this training's doing)."
    )
    assert (
        _synthetic_report(0, reference=[False] * 20)
        .extraction_verdict()[0]
        .endswith("; nor does the reference model.")
    )
    assert "the reference model extracts none." in _synthetic_report(1, reference=[False] * 20).extraction_verdict()[0]
    assert (
        _synthetic_report(0, windows=1)
        .extraction_verdict()[0]
        .startswith(
            "No window is extracted: greedy decoding does not write the one window's 4 tokens that follow its first 4 ("
        )
    )

    # greedy finds nothing, sampling does: the level follows the larger share, and the text says so
    sampled = {"sampling_temperature": 0.7, "sampling_queries": 10, "sampling_min_probability": 0.5}
    report = _synthetic_report(0, **sampled)
    report.rows[0]["log_p"] = 0.0  # sampling writes window 0's suffix every time; greedy does not (made up)
    assert report.metrics["exact_match"] == 0 and report.metrics["probabilistic_extraction"] == 0.05
    assert report.extraction_level == "some"
    found, meaning, _ = report.extraction_verdict()
    assert "Sampled at temperature 0.7, with 10 queries per prefix, 5.0% of windows are extracted" in found
    assert meaning.startswith("Greedy decoding writes none of them out, but sampling does")
    assert _extraction_banner(report.to_html()) == "verdict caution"
    report.rows[0]["log_p"] = -50.0  # sampling finds nothing either: "samples as measured", no "not measured"
    found, meaning, _ = report.extraction_verdict()
    assert report.extraction_level == "none" and "or samples as measured" in meaning and "not measured" not in meaning


def test_the_extraction_verdict_says_what_the_membership_section_found(membership_audit):
    from hf_memory.auditing.html import TONES

    report, out, _, _ = membership_audit
    assert "Membership inference (above) finds a leak: `" in report.extraction_verdict()[2]
    page = (out / HTML_FILE).read_text()
    assert re.search(r'<div class="verdict alarm">Membership leaks', page)  # the leak's box is red
    assert f"border-left-color: {TONES['alarm'][0]}" in page


@pytest.mark.slow
def test_the_docs_pages_script_runs_small_and_a_rerun_only_renders_the_pages_again(tmp_path):
    """`examples/audit_report_pages.py --small` (what made `docs/audit_report*.png`, on a tiny Llama): three report
    folders and `summary.json` with each audit's verdict; a rerun loads the reports, loads no model, writes the pages."""
    from tests.testing_utils import run_example

    command = ["--small", "--output-dir", str(tmp_path)]
    first = run_example("audit_report_pages", *command, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"setup", "base", "standard", "goldfish"}
    for arm in ("base", "standard", "goldfish"):
        report = AuditReport.load(tmp_path / arm)
        assert summary[arm]["extraction_verdict"] == report.extraction_verdict()
        assert summary[arm]["extraction_level"] == report.extraction_level
        assert report.membership is not None and (report.reference_model is None) == (arm == "base")
    assert summary["base"]["extraction_level"] == "none"  # an untrained tiny model writes no 8-token suffix
    (tmp_path / "base" / HTML_FILE).write_text("stale")
    again = run_example("audit_report_pages", *command, timeout=600)
    assert again.returncode == 0 and "model loaded" not in again.stdout, again.stderr[-3000:]
    assert summary["base"]["extraction_verdict"][0] in (tmp_path / "base" / HTML_FILE).read_text()


# ---------------------------------------------------------------- issue 35: the control text, progress, coverage


def test_the_held_out_text_is_the_control_and_the_report_contrasts_it_with_the_suspect(membership_audit):
    """`--held-out` / `non_members` is the control: every held-out window's extraction is measured too, and the
    report (results.json, the verdict lines on the page, the card and the CLI) sets the two sets side by side."""
    from hf_memory.auditing import MEMBERSHIP_FILE

    report, out, model, tok = membership_audit
    rows = pq.read_table(out / MEMBERSHIP_FILE).to_pylist()
    members = [r for r in rows if r["is_member"]]
    controls = [r for r in rows if not r["is_member"]]
    assert [(r["exact_match"], r["longest_common_prefix"]) for r in members] == [
        (w["exact_match"], w["longest_common_prefix"]) for w in report.rows
    ]
    windows = [tok(r["text"], add_special_tokens=False)["input_ids"] for r in controls]
    direct = measure_extraction(model, windows, 4, 4, show_progress=False)
    assert [r["longest_common_prefix"] for r in controls] == direct.longest_common_prefix
    assert [r["exact_match"] for r in controls] == [n == 4 for n in direct.longest_common_prefix]
    contrast = report.control_contrast
    assert contrast["suspect"]["windows"] == len(members) and contrast["control"]["windows"] == len(controls)
    assert contrast["control"]["exact_match"] == pytest.approx(sum(r["exact_match"] for r in controls) / len(controls))
    assert contrast["suspect"]["loss"] == pytest.approx(-sum(r["loss"] for r in members) / len(members))
    assert contrast["suspect"]["loss"] < contrast["control"]["loss"]  # trained on the members only
    results = json.loads((out / RESULTS_FILE).read_text())
    for key in ("suspect", "control"):
        assert results["control_contrast"][key] == pytest.approx(contrast[key])
        assert AuditReport.load(out).control_contrast[key] == pytest.approx(contrast[key])
    line = report.membership_verdict()[-1]
    assert line.startswith("Suspect against control: the model writes out ")
    assert f"of the {len(controls)} held-out (control) windows" in line and "nats per token" in line
    assert "Suspect against control" in (out / HTML_FILE).read_text()  # the page shows the verdict lines


def test_without_a_control_there_is_no_contrast(audited):
    report = audited[0]
    assert report.control_contrast is None
    assert not any(line.startswith("Suspect against control") for line in report.membership_verdict())


class _RecordingBar:
    """A stand-in for tqdm that records its description, total and every update."""

    made: list = []

    def __init__(self, *args, total=None, desc=None, **kwargs):
        self.desc, self.total, self.updates = desc, total, []
        _RecordingBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def set_postfix_str(self, *args, **kwargs):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_each_stage_of_the_audit_has_a_bar_that_moves_every_batch(monkeypatch):
    """Issue 35: one bar sat at 0/64 for minutes and then jumped (it moved once per chunk of 128 windows)."""
    import hf_memory.auditing.run

    _RecordingBar.made = []
    monkeypatch.setattr(hf_memory.auditing.run, "tqdm", _RecordingBar)
    model, tok, members, non_members = membership_case()
    reference = tiny_causal_lm("llama", vocab_size=len(tok), hidden=32, seed=1)
    settings = {**MIA, "flush_every": 8, "membership_bootstrap": 100}  # chunks of 32 windows, batches of 4
    report = audit(model, tok, members, reference_model=reference, non_members=non_members, **settings)
    bars = {bar.desc: bar for bar in _RecordingBar.made}
    members_count, controls = report.data["num_windows"], report.data["num_non_member_windows"]
    totals = {
        "membership": members_count + controls,
        "control extraction": controls,
        "extraction": members_count,
        "reference extraction": members_count,
        "signals": members_count,
        "CE diagnostic": members_count,
    }
    for stage, total in totals.items():
        assert bars[stage].total == total and sum(bars[stage].updates) == total, stage
        assert max(bars[stage].updates) <= 4, (stage, bars[stage].updates)  # a batch at a time, not a chunk
    assert sum(bars["reading data"].updates) == len(members)
    assert sum(bars["reading held-out data"].updates) == len(non_members)


@pytest.mark.parametrize("stage", ["measure_extraction", "memorization_signals", "ce_diagnostic", "membership_scores"])
def test_a_measuring_function_advances_the_bar_it_is_given_or_refuses_a_non_bar(stage):
    from hf_memory.analysis import ce_diagnostic, memorization_signals
    from hf_memory.membership import membership_scores

    model = tiny_causal_lm("llama")
    windows = [list(range(i, i + 16)) for i in range(10)]
    call = {
        "measure_extraction": lambda progress: measure_extraction(
            model, windows, 8, 8, batch_size=4, show_progress=progress
        ),
        "memorization_signals": lambda progress: memorization_signals(
            model, windows, 8, 8, hidden_states=False, batch_size=4, show_progress=progress
        ),
        "ce_diagnostic": lambda progress: ce_diagnostic(model, windows, show_progress=progress),
        "membership_scores": lambda progress: membership_scores(
            model, windows, batch_size=4, read_ahead=4, show_progress=progress
        ),
    }[stage]
    bar = _RecordingBar()
    call(bar)
    assert sum(bar.updates) == 10 and max(bar.updates) <= 4
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="`show_progress` must be True, False or a tqdm progress bar"):
            call(bad)
    call(False)  # still a plain switch


def test_a_cap_that_leaves_most_of_a_document_unscored_says_so(tmp_path):
    model, tok, members, non_members = membership_case()
    long_document = " ".join(members)  # about 50 windows of 8 tokens
    with pytest.warns(
        UserWarning, match=r"`data`: max_windows=6 leaves most of 1 document unscored: long.txt \("
    ) as w:
        audit(model, tok, [long_document], max_windows=6, prefix_len=4, suffix_len=4, sources=["long.txt"],
              show_progress=False)  # fmt: skip
    assert len([x for x in w if "leaves most of" in str(x.message)]) == 1  # one line
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every window scored: no warning
        audit(model, tok, members[:3], max_windows=None, prefix_len=4, suffix_len=4, show_progress=False)
