"""measure_extraction: the teacher-forced shortcut and its KV-cache resume equal plain greedy generation."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_memory import ExtractionResult, measure_extraction
from hf_memory.extraction import extraction_windows, sample_windows
from tests.testing_utils import TINY_VOCAB, run_two_processes, tiny_causal_lm


PREFIX, SUFFIX = 8, 12


def planted_windows(model, n=24, seed=0):
    """Windows whose suffix is the model's own greedy continuation, with one token broken at a chosen position:
    greedy decoding then reproduces exactly that many tokens, so every divergence point gets exercised."""
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, TINY_VOCAB, (n, PREFIX), generator=gen)
    with torch.inference_mode():
        greedy = model.generate(
            prefix,
            attention_mask=torch.ones_like(prefix),
            max_new_tokens=SUFFIX,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    windows = greedy.clone()
    breaks = torch.arange(n) % (SUFFIX + 1)  # SUFFIX = not broken
    for row, at in enumerate(breaks.tolist()):
        if at < SUFFIX:
            windows[row, PREFIX + at] = (windows[row, PREFIX + at] + 1 + row) % TINY_VOCAB
    return windows, breaks


def test_auto_equals_generate_on_every_tiny_architecture(tiny_arch):
    model = tiny_causal_lm(tiny_arch, hidden=32).eval()
    windows, breaks = planted_windows(model)
    auto = measure_extraction(model, windows, PREFIX, SUFFIX, batch_size=7, show_progress=False)
    reference = measure_extraction(
        model, windows, PREFIX, SUFFIX, batch_size=24, method="generate", show_progress=False
    )
    assert auto.longest_common_prefix == breaks.tolist()  # the planted divergence points
    assert auto.predictions == reference.predictions
    assert auto.longest_common_prefix == reference.longest_common_prefix
    assert auto.metrics == reference.metrics
    assert auto.metrics["exact_match"] == pytest.approx((breaks == SUFFIX).float().mean().item())


def test_prefix_method_gives_exact_match_and_prefix_only():
    model = tiny_causal_lm("llama", hidden=32).eval()
    windows, breaks = planted_windows(model, seed=1)
    auto = measure_extraction(model, windows, PREFIX, SUFFIX, show_progress=False)
    fast = measure_extraction(model, windows, PREFIX, SUFFIX, method="prefix", show_progress=False)
    assert sorted(fast.metrics) == ["exact_match", "longest_common_prefix"]
    assert fast.longest_common_prefix == auto.longest_common_prefix == breaks.tolist()
    for short, full, n in zip(fast.predictions, auto.predictions, breaks.tolist()):
        assert short == full[: n + 1]  # greedy is known up to and including its first wrong token
    assert fast.metrics["exact_match"] == auto.metrics["exact_match"]
    assert fast.metrics["longest_common_prefix"] == auto.metrics["longest_common_prefix"]


def test_metrics_come_from_the_metric():
    from hf_memory.metrics.extractable_memorization.extractable_memorization import extraction_scores

    model = tiny_causal_lm("gpt2", hidden=32).eval()
    windows, _ = planted_windows(model, seed=2)
    result = measure_extraction(model, windows, PREFIX, SUFFIX, show_progress=False)
    assert isinstance(result, ExtractionResult)
    assert result.metrics == extraction_scores(result.predictions, result.references)
    assert result.references == windows[:, PREFIX:].tolist()
    per_sample = result.per_sample()
    assert per_sample["longest_common_prefix_per_sample"] == result.longest_common_prefix


def test_windows_stride_skips_and_datasets():
    sequences = [list(range(50)), list(range(10)), list(range(100, 116))]
    windows, index, skipped = extraction_windows(sequences, 8, 8, stride=10)
    assert index == [(0, 0), (0, 10), (0, 20), (0, 30), (2, 0)] and skipped == 1
    assert windows[1].tolist() == list(range(10, 26))
    _, index, _ = extraction_windows(sequences, 8, 8)
    assert index == [(0, 0), (2, 0)]

    model = tiny_causal_lm("llama")
    from_list = measure_extraction(model, sequences, 8, 8, stride=10, show_progress=False)
    from_dataset = measure_extraction(
        model, Dataset.from_dict({"input_ids": sequences}), 8, 8, stride=10, show_progress=False
    )
    assert from_list.windows == index[:1] + [(0, 10), (0, 20), (0, 30), (2, 0)] and from_list.num_skipped == 1
    assert from_list.predictions == from_dataset.predictions


def test_model_mode_is_restored():
    model = tiny_causal_lm("llama")
    model.train()
    measure_extraction(model, [list(range(40))], 8, 8, show_progress=False)
    assert model.training


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prefix_len": 0}, "`prefix_len`"),
        ({"suffix_len": -1}, "`suffix_len`"),
        ({"stride": 0}, "`stride`"),
        ({"batch_size": 0}, "`batch_size`"),
        ({"method": "beam"}, "`method`"),
        ({"sequences": []}, "`sequences` is empty"),
        ({"sequences": [[0.5, 1.5] * 20]}, "integer token ids"),
        ({"sequences": [[1, 2, 3]]}, "No sequence"),
        ({"sequences": Dataset.from_dict({"text": ["a"]})}, "`input_ids`"),
        ({"show_progress": "no"}, "`show_progress` must be True, False or a tqdm progress bar"),
        ({"show_progress": None}, "`show_progress` must be True, False or a tqdm progress bar"),
        ({"sequences": [[1] * 20, [1, TINY_VOCAB + 3] * 10]}, r"`sequences\[1\]` holds token id 131"),
    ],
)
def test_bad_input(kwargs, message):
    args = {"sequences": [list(range(40))], "prefix_len": 8, "suffix_len": 8, "show_progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        measure_extraction(tiny_causal_lm("llama"), **args)


def no_forward(model):
    """A hook failing the test if the model runs a forward (an argument must be refused before any work)."""
    return model.register_forward_hook(lambda *args: pytest.fail("a forward ran before the refusal"))


@pytest.mark.parametrize("method", ["auto", "prefix", "generate"])
def test_peft_prompt_learning_models_are_refused_before_any_work(method):
    """PEFT rewrites every forward's context (virtual tokens, or a replaced KV cache): cached decoding gave wrong
    tokens (exact match 0.0 on windows that are the model's own greedy continuation). A LoRA model is measured."""
    peft = pytest.importorskip("peft")
    windows = torch.randint(0, TINY_VOCAB, (4, PREFIX + SUFFIX), generator=torch.Generator().manual_seed(0))
    for config in (
        peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
        peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
    ):
        model = peft.get_peft_model(tiny_causal_lm("llama", hidden=32), config).eval()
        hook = no_forward(model)
        with pytest.raises(ValueError, match="PEFT prompt-learning model.*merge_and_unload"):
            measure_extraction(model, windows, PREFIX, SUFFIX, method=method, show_progress=False)
        hook.remove()
    lora = peft.get_peft_model(
        tiny_causal_lm("llama", hidden=32), peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"])
    ).eval()
    assert measure_extraction(lora, windows, PREFIX, SUFFIX, method=method, show_progress=False).num_windows == 4


@pytest.mark.parametrize("method", ["auto", "prefix", "generate"])
def test_windows_longer_than_learned_positions_are_refused_before_any_work(method):
    """GPT-2 with 16 positions: a 20-token window failed with an IndexError deep in torch once work had started (on
    a GPU, a device-side assert). A window that fits, and a rotary model of the same nominal length, are measured."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=TINY_VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=16)).eval()
    windows = torch.randint(0, TINY_VOCAB, (3, 20), generator=torch.Generator().manual_seed(0))
    hook = no_forward(gpt2)
    message = r"prefix_len \+ suffix_len = 20 tokens is more than .* \(`config.n_positions` = 16\)"
    with pytest.raises(ValueError, match=message):
        measure_extraction(gpt2, windows, 8, 12, method=method, show_progress=False)
    hook.remove()
    assert measure_extraction(gpt2, windows, 8, 8, method=method, show_progress=False).num_windows == 3
    rotary = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        )
    ).eval()
    assert measure_extraction(rotary, windows, 8, 12, method=method, show_progress=False).num_windows == 3


@pytest.mark.slow
def test_two_processes_give_the_one_process_numbers(tmp_path):
    ranks = run_two_processes("distributed_extraction.py", tmp_path / "ranks.json")

    from tests.distributed_extraction import score

    single = score()
    assert [r["num_processes"] for r in ranks] == [2, 2]
    for r in ranks:  # both ranks end with the gathered, ordered result
        assert r["predictions"] == single.predictions
        assert r["longest_common_prefix"] == single.longest_common_prefix
        assert r["metrics"] == single.metrics


def test_cli_method_choices_are_the_harness_methods():
    """The CLI writes the choices out (importing the harness would slow `hf-memory --help`): keep them in step."""
    from hf_memory.cli import build_parser
    from hf_memory.extraction import EXTRACTION_METHODS

    measure = build_parser()._subparsers._group_actions[0].choices["measure"]
    method = next(action for action in measure._actions if action.dest == "method")
    assert tuple(method.choices) == EXTRACTION_METHODS


# ---------------------------------------------------------------- text-level ROUGE-L (the goldfish paper's number)


def goldfish_paper_rouge_l(predictions: list[str], references: list[str]) -> float:
    """Hans et al.'s evaluation loop: `evaluate`'s rouge called once per sample, its "rougeL" averaged.

    `evaluate.load("rouge")` lives on the Hub; its `_compute` builds `rouge_scorer.RougeScorer(rouge_types,
    use_stemmer=False)`, scores each (reference, prediction) pair and returns the bootstrap aggregate's mid
    F-measure, which for one pair is that pair's F-measure. The same steps, with rouge_score directly.
    """
    from rouge_score import rouge_scorer, scoring

    total = 0.0
    for pred, ref in zip(predictions, references):
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
        aggregator = scoring.BootstrapAggregator()
        aggregator.add_scores(scorer.score(ref, pred))
        total += aggregator.aggregate()["rougeL"].mid.fmeasure
    return total / len(predictions)


def test_text_rouge_l_is_the_goldfish_papers_rouge():
    from hf_memory.extraction import text_rouge_l

    predictions = ["The Cat sat on the mat.", "a b c d", "", "Zürich is big", "x-y_z 12 3"]
    references = ["the cat sat on a mat", "d c b a", "nothing here", "zurich is big", "x y z 123"]
    scores = text_rouge_l(predictions, references)
    assert scores[2] == 0.0 and abs(scores[0] - 10 / 12) < 1e-12  # 5 of 6 words in order, both 6 long
    for i in range(len(predictions)):
        assert scores[i] == goldfish_paper_rouge_l(predictions[i : i + 1], references[i : i + 1])
    assert abs(sum(scores) / len(scores) - goldfish_paper_rouge_l(predictions, references)) < 1e-12


@pytest.mark.parametrize(
    "predictions,references,message",
    [
        ("abc", ["abc"], "`predictions` must be a list of strings"),
        (["a", 3], ["a", "b"], r"`predictions\[1\]` must be a string"),
        (["a"], [b"a"], r"`references\[0\]` must be a string"),
        (["a"], ["a", "b"], "same length"),
    ],
)
def test_text_rouge_l_refuses_bad_input(predictions, references, message):
    from hf_memory.extraction import text_rouge_l

    with pytest.raises(ValueError, match=message):
        text_rouge_l(predictions, references)


def test_measure_extraction_reports_text_rouge_with_a_tokenizer():
    from hf_memory.data.tokenizers import word_level_tokenizer
    from hf_memory.extraction import text_rouge_l

    tokenizer = word_level_tokenizer([f"Word{i}" for i in range(TINY_VOCAB - 4)])
    model = tiny_causal_lm("llama")
    windows, _ = planted_windows(model)
    plain = measure_extraction(model, windows, PREFIX, SUFFIX, show_progress=False)
    result = measure_extraction(model, windows, PREFIX, SUFFIX, show_progress=False, tokenizer=tokenizer)
    assert plain.rouge_l_text is None and "rouge_l_text" not in plain.metrics
    assert result.predictions == plain.predictions
    assert {k: v for k, v in result.metrics.items() if k != "rouge_l_text"} == plain.metrics
    decode = lambda rows: tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)  # noqa: E731
    expected = text_rouge_l(decode(result.predictions), decode(result.references))
    assert result.rouge_l_text == expected
    assert result.metrics["rouge_l_text"] == pytest.approx(
        goldfish_paper_rouge_l(decode(result.predictions), decode(result.references))
    )
    per_sample = result.per_sample()
    assert per_sample["rouge_l_text_per_sample"] == expected
    assert 0.0 < result.metrics["rouge_l_text"] < 1.0
    # special tokens (ids 0-3 occur in the random windows) are skipped before scoring, as in the paper's evaluation
    assert any(t < 4 for row in result.references for t in row)
    assert not any("<" in text for text in decode(result.references))


def test_text_rouge_needs_whole_predictions_and_a_tokenizer():
    model = tiny_causal_lm("llama")
    args = {"sequences": [list(range(40))], "prefix_len": 8, "suffix_len": 8, "show_progress": False}
    with pytest.raises(ValueError, match="method='prefix'"):
        measure_extraction(
            model, method="prefix", tokenizer=object.__new__(type("T", (), {"batch_decode": len})), **args
        )
    with pytest.raises(ValueError, match="`tokenizer` must be a transformers tokenizer"):
        measure_extraction(model, tokenizer="gpt2", **args)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tokenizer_smaller_than_the_data_is_refused(streamed):
    """P5: a tokenizer of 40 tokens on data of a 128-token vocabulary gave rouge_l_text = 0.0 without a word."""
    from hf_memory.data.tokenizers import word_level_tokenizer

    small = word_level_tokenizer([f"w{i}" for i in range(36)])
    rows = [list(range(100, 120)), list(range(20))]
    data = iter(rows) if streamed else rows
    with pytest.raises(ValueError, match="`tokenizer` has 40 tokens, but `sequences` hold token id 11[59]: it is not"):
        measure_extraction(tiny_causal_lm("llama"), data, 8, 8, tokenizer=small, show_progress=False)
    fits = measure_extraction(tiny_causal_lm("llama"), [rows[1]], 8, 8, tokenizer=small, show_progress=False)
    assert "rouge_l_text" in fits.metrics


def test_text_rouge_names_the_extra_when_rouge_score_is_missing(monkeypatch):
    import sys

    from hf_memory.data.tokenizers import word_level_tokenizer

    monkeypatch.setitem(sys.modules, "rouge_score", None)
    tokenizer = word_level_tokenizer([f"w{i}" for i in range(TINY_VOCAB - 4)])
    with pytest.raises(ImportError, match=r"hf-memory\[analysis\]"):
        measure_extraction(tiny_causal_lm("llama"), [list(range(40))], 8, 8, show_progress=False, tokenizer=tokenizer)


def test_sample_windows_streams_once_and_keeps_every_window_equally_likely():
    sequences = [list(range(i, i + 30)) for i in range(0, 300, 30)] + [[1, 2]]
    whole = sample_windows(sequences, 4, 4, stride=8)
    windows, index, skipped = extraction_windows(sequences, 4, 4, stride=8)
    assert whole.index == index and torch.equal(whole.windows, torch.stack(windows))
    assert (whole.num_sequences, whole.num_skipped, whole.num_candidates) == (11, 1, 30)

    drawn = sample_windows(sequences, 4, 4, stride=8, max_windows=5, seed=3)
    assert drawn.index == sorted(drawn.index) and len(drawn.index) == 5 and drawn.num_candidates == 30
    streamed = sample_windows((s for s in sequences), 4, 4, stride=8, max_windows=5, seed=3)
    assert streamed.index == drawn.index and torch.equal(streamed.windows, drawn.windows)
    assert sample_windows(sequences, 4, 4, stride=8, max_windows=5, seed=4).index != drawn.index

    # reservoir sampling: each of the 30 windows is kept with probability 5/30 whatever its place in the stream
    kept = Counter(w for seed in range(3000) for w in sample_windows(sequences, 4, 4, 8, 5, seed).index)
    rates = np.array([kept[w] / 3000 for w in index])
    assert np.abs(rates - 5 / 30).max() < 0.03, rates


@pytest.mark.parametrize(
    "args,message",
    [
        ((0, 2, None), "`prefix_len` must be an integer >= 1"),
        ((-1, 2, None), "`prefix_len` must be an integer >= 1"),
        ((True, 2, None), "`prefix_len` must be an integer >= 1"),
        ((2.0, 2, None), "`prefix_len` must be an integer >= 1"),
        ((2, 0, None), "`suffix_len` must be an integer >= 1"),
        ((2, 2, -1), "`stride` must be an integer >= 0 or None"),
        ((2, 2, 1.5), "`stride` must be an integer >= 0 or None"),
    ],
)
def test_extraction_windows_validates_its_arguments(args, message):
    """They were taken as they came: windows of the wrong length, or none at all (stride -1), silently."""
    with pytest.raises(ValueError, match=message):
        extraction_windows([list(range(10))], *args)
    windows, _, _ = extraction_windows([list(range(10))], 2, 2, stride=0)  # documented: one window per sequence
    assert [w.tolist() for w in windows] == [[0, 1, 2, 3]]


def test_sample_windows_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`corpus` is empty"):
        sample_windows(iter([]), 4, 4, name="corpus")
    with pytest.raises(
        ValueError, match=r"No sequence of `corpus` has prefix_len \+ suffix_len = 8 tokens \(the longest"
    ):
        sample_windows([[1, 2, 3]], 4, 4, name="corpus")
    with pytest.raises(ValueError, match="`max_windows` must be an integer >= 1"):
        sample_windows([[1] * 10], 4, 4, max_windows=0)
    with pytest.raises(ValueError, match=r"`corpus\[1\]`"):
        sample_windows([[1] * 10, ["a"]], 4, 4, name="corpus")


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_extraction_drops_padding_marked_by_the_attention_mask():
    model = tiny_causal_lm("llama")
    docs = [list(range(10, 20)), list(range(30, 40)), list(range(50, 56))]
    padded = [d + [0] * (24 - len(d)) for d in docs]
    masks = [[1] * len(d) + [0] * (24 - len(d)) for d in docs]
    data = Dataset.from_dict({"input_ids": padded, "attention_mask": masks})
    result = measure_extraction(model, data, prefix_len=4, suffix_len=4, stride=2, show_progress=False)
    assert result.num_skipped == 1  # the 6-token document is too short once its padding is gone
    assert all(0 not in ref for ref in result.references)  # was: windows scored on the padding
    assert len(result.references) == 2 * 2  # windows at 0 and 2 of each 10-token document


def test_ids_outside_the_vocabulary_are_named_before_any_work():
    from hf_memory import FastMemConfig, ce_diagnostic, fastmem_generate
    from tests.testing_utils import model_state as state
    from tests.testing_utils import same_state as same

    model = tiny_causal_lm("llama")
    before = state(model)
    with pytest.raises(ValueError, match="token id 500, outside the model's vocabulary of 128"):
        measure_extraction(model, [list(range(10)) + [500] + list(range(10))], 8, 8, show_progress=False)
    with pytest.raises(ValueError, match="token id 128, outside"):
        ce_diagnostic(model, [[1, 2, 128]], show_progress=False)
    with pytest.raises(ValueError, match="token id 999, outside"):
        fastmem_generate(model, torch.tensor([1, 2, 999]), FastMemConfig(steps=1), max_new_tokens=1)
    assert same(model, before)


def test_an_empty_sequence_among_good_ones_is_skipped_as_too_short():
    result = measure_extraction(tiny_causal_lm("llama"), [[], list(range(4, 20))], 4, 4, show_progress=False)
    assert result.num_skipped == 1 and len(result.references) == 1


def test_generate_measures_the_model_as_trained_under_a_fastmem_wrapper():
    """With a FastMemCallback's `generate` on the model, method='generate' memorized each prefix first (0.042 against
    0.0 with 'auto'): every method now reads the model as trained."""
    from hf_memory import FastMemCallback, FastMemConfig

    model = tiny_causal_lm("llama")
    windows, _ = planted_windows(model)
    plain = measure_extraction(model, windows, PREFIX, SUFFIX, method="generate", show_progress=False)
    callback = FastMemCallback(FastMemConfig(steps=3, lr=1e-1))
    callback.attach(model)
    try:
        wrapped = measure_extraction(model, windows, PREFIX, SUFFIX, method="generate", show_progress=False)
    finally:
        callback.detach(model)
    assert wrapped.predictions == plain.predictions


def test_a_decoding_guard_is_applied_at_every_greedy_step(tmp_path):
    from tests.testing_utils import BanToken

    """Issue 36: a guarded deployment is measured as an unguarded one (`logits_processor=`)."""
    from collections import Counter

    from transformers import LogitsProcessor

    model = tiny_causal_lm("llama")
    windows, _ = planted_windows(model)
    plain = measure_extraction(model, windows, PREFIX, SUFFIX, method="generate", show_progress=False)
    common = Counter(t for row in plain.predictions for t in row).most_common(1)[0][0]

    class Nothing(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores

    same = measure_extraction(model, windows, PREFIX, SUFFIX, logits_processor=Nothing(), show_progress=False)
    assert same.predictions == plain.predictions  # method "auto" decodes with generate under a guard
    guarded = measure_extraction(
        model, windows, PREFIX, SUFFIX, logits_processor=[BanToken(common)], output_dir=tmp_path, show_progress=False
    )
    rows = guarded.dataset()["prediction"]
    assert not any(common in row for row in rows) and len(rows) == len(plain.predictions)
    manifest = json.loads((tmp_path / ".manifest.json").read_text())
    assert manifest["settings"]["logits_processor"] == ["BanToken"]
    for bad in ("memfree", [], [object()], Nothing):
        with pytest.raises(ValueError, match="`logits_processor` must be a transformers LogitsProcessor"):
            measure_extraction(model, windows, PREFIX, SUFFIX, logits_processor=bad, show_progress=False)


def test_probabilistic_extraction_shares_the_harness_windows_in_memory_and_on_disk(tmp_path):
    """Issue 32: `log p` per window under the deployed sampling, and the (n, p)-extractable share, from the harness."""
    import math

    from hf_memory.extraction import ExtractionConfig, extractable_fraction, extraction_log_probs

    model = tiny_causal_lm("llama")
    windows, _ = planted_windows(model)
    settings = {"temperature": 0.7, "top_k": 20, "queries": 50, "min_probability": 0.3}
    result = measure_extraction(model, windows, PREFIX, SUFFIX, batch_size=5, show_progress=False, **settings)
    stacked = torch.stack([torch.as_tensor(w) for w in windows])
    expected = extraction_log_probs(model, stacked, PREFIX, temperature=0.7, top_k=20).tolist()
    assert result.log_p == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert result.metrics["probabilistic_extraction"] == extractable_fraction(expected, 50, 0.3)
    greedy = measure_extraction(model, windows, PREFIX, SUFFIX, show_progress=False)
    assert greedy.log_p is None and "probabilistic_extraction" not in greedy.metrics
    assert result.predictions == greedy.predictions  # the greedy rows are unchanged
    on_disk = measure_extraction(
        model, windows, PREFIX, SUFFIX, batch_size=5, output_dir=tmp_path, show_progress=False, **settings
    )
    assert on_disk.metrics["probabilistic_extraction"] == result.metrics["probabilistic_extraction"]
    assert on_disk.dataset()["log_p"] == pytest.approx(result.log_p, rel=1e-9, abs=1e-9)
    config = ExtractionConfig(prefix_len=PREFIX, suffix_len=SUFFIX, **settings)
    assert config.sampling.temperature == 0.7 and math.isclose(config.top_p, 1.0)
    for bad, message in (
        ({"top_k": 5}, "`top_k` and `top_p` take effect with a `temperature`"),
        ({"temperature": 0}, "use greedy"),
        ({"temperature": 1.0, "top_p": 0}, "`top_p`"),
        ({"temperature": 1.0, "queries": 0}, "`queries` must be an integer >= 1"),
        ({"temperature": 1.0, "min_probability": 1.0}, "`min_probability`"),
    ):
        with pytest.raises(ValueError, match=message):
            measure_extraction(model, windows, PREFIX, SUFFIX, show_progress=False, **bad)


@pytest.mark.slow  # three runs of the script in subprocesses, a tiny model: ~1 min on 2 cores
def test_the_throughput_benchmark_runs_in_its_small_mode_and_resumes(tmp_path):
    import os
    import re
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(*options):
        return subprocess.run(
            [sys.executable, os.path.join(root, "benchmarks", "extraction_throughput.py"), "--small", *options],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": root},
        )

    out = tmp_path / "grid.json"
    done = run("--grid", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert re.search(r"auto >= 1.0x generate in every cell: (met|NOT met)", done.stdout)
    grid = json.loads(out.read_text())
    assert len(grid["rounds"]) == 2 and set(grid["summary"]["cells"]) == {"1/8", "4/8", "1/12", "4/12"}
    for cell in grid["summary"]["cells"].values():
        assert cell["cpu_ratio_median"] > 0 and cell["all_agree"]  # auto's predictions are generate's
    assert all(c["exact_match"] == 1.0 for c in grid["summary"]["floor"].values())  # memorized by construction
    assert grid["summary"]["cells"]["4/8"]["always_cpu_ratio_median"] > 0  # the control: every batch parking
    pooled = grid["summary"]["pooled"]  # every cell's ratio of every round, pooled
    assert pooled["pairs"] == 8 and pooled["interval95"][0] <= pooled["geometric_mean"] <= pooled["interval95"][1]
    assert "pooled over cells and rounds: auto" in done.stdout
    again = run("--grid", "--out", str(out))  # every round written: nothing more to time
    assert again.returncode == 0 and "resuming" in again.stdout and "2 of 2 rounds done" in again.stdout
    assert json.loads(out.read_text())["rounds"] == grid["rounds"]
    out.write_text("{not json")  # a damaged or foreign file is named, not overwritten
    refused = run("--grid", "--out", str(out))
    assert refused.returncode != 0 and "is not a complete grid file" in refused.stderr
    assert out.read_text() == "{not json"

    passes = tmp_path / "passes.json"
    done = run("--grid", "--passes", "--out", str(passes))
    assert done.returncode == 0, done.stderr
    cells = json.loads(passes.read_text())["cells"]
    assert set(cells) == {"1/8", "4/8", "1/12", "4/12", "floor/8", "floor/12"}
    for key in ("1/8", "4/8", "1/12", "4/12"):  # at 0%, where a window diverges at once: generate's passes, no more
        assert 0 < cells[key]["auto"]["calls"] <= cells[key]["generate"]["calls"], key
        assert cells[key]["auto"]["positions"] <= cells[key]["generate"]["positions"], key
    assert cells["4/8"]["always"]["calls"] >= cells["4/8"]["generate"]["calls"]  # the control, counted too
    assert cells["floor/8"]["floor"]["calls"] == 1  # one batch of 4, one forward

    levels = tmp_path / "levels.json"
    done = run("--out", str(levels))
    assert done.returncode == 0, done.stderr
    rates = json.loads(levels.read_text())["windows_per_second"]
    assert {"0%/auto", "50%/generate", "100%/floor"} <= set(rates) and all(v > 0 for v in rates.values())
