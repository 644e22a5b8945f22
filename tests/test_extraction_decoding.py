"""verify_and_decode: the true suffix verified in chunks from the KV cache, diverged rows decoded greedily, equals
plain batched `generate` token for token, wherever a row diverges (inside a chunk, at its edges, at once, never)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from hf_memory.extraction.decoding import Regrouper, generate_suffixes, verify_and_decode
from tests.testing_utils import TINY_VOCAB, tiny_causal_lm


PREFIX = 6


def planted(model, breaks: list[int], suffix_len: int, seed: int = 0) -> torch.Tensor:
    """Random prefixes followed by the model's own greedy continuation, with the suffix token at `breaks[row]`
    changed (none where it is `suffix_len`): greedy decoding then reproduces exactly `breaks[row]` tokens of row
    `row`."""
    prefix = torch.randint(0, TINY_VOCAB, (len(breaks), PREFIX), generator=torch.Generator().manual_seed(seed))
    windows = torch.cat([prefix, torch.zeros(len(breaks), suffix_len, dtype=torch.long)], dim=1)
    with torch.no_grad():
        windows[:, PREFIX:] = generate_suffixes(model, windows, PREFIX)
    for row, at in enumerate(breaks):
        if at < suffix_len:
            windows[row, PREFIX + at] = (windows[row, PREFIX + at] + 1 + row) % TINY_VOCAB
    return windows


def check_against_generate(model, windows, expected_lcp, **kwargs):
    with torch.inference_mode():
        predictions, lcp = verify_and_decode(model, windows, PREFIX, **kwargs)
        short, short_lcp = verify_and_decode(model, windows, PREFIX, decode=False, **kwargs)
        reference = generate_suffixes(model, windows, PREFIX)
    assert lcp.tolist() == short_lcp.tolist() == expected_lcp
    assert predictions.tolist() == reference.tolist()
    for row, at in enumerate(expected_lcp):  # without decoding: the same prefix and the same first wrong token
        assert short[row, : at + 1].tolist() == reference[row, : at + 1].tolist()


@pytest.mark.parametrize("chunks", ["doubling", 1, 3, 5, 13])
def test_first_divergence_at_every_position(tiny_arch, chunks):
    """One batch per suffix position, where a row first diverges: every position is once the first divergence, so
    every chunk edge (doubling: the prefix forward checks position 0, then chunks check 1, 2-3, 4-7, 8-12) is too.
    Other rows diverge later in the same chunk, in a later one, at the last position, or never."""
    suffix_len = 13
    model = tiny_causal_lm(tiny_arch, hidden=32).eval()
    for first in range(suffix_len):
        breaks = [suffix_len, first, min(first + 1, suffix_len), first, min(first + 4, suffix_len), suffix_len - 1]
        check_against_generate(model, planted(model, breaks, suffix_len, seed=first), breaks, chunks=chunks)


def test_divergence_at_every_position_in_one_batch(tiny_arch):
    suffix_len = 13
    model = tiny_causal_lm(tiny_arch, hidden=32).eval()
    order = torch.randperm(2 * (suffix_len + 1), generator=torch.Generator().manual_seed(1))
    breaks = (order % (suffix_len + 1)).tolist()  # every position twice, mixed; suffix_len = never
    check_against_generate(model, planted(model, breaks, suffix_len), breaks)


@pytest.mark.parametrize(
    "case,breaks,suffix_len",
    [
        ("every row diverges at once", [0] * 5, 9),
        ("no row diverges", [9] * 5, 9),
        ("suffix of one token", [0, 1, 0, 1, 1], 1),
        ("one row, diverging at the last position", [8], 9),
        ("one row, never diverging", [9], 9),
        ("the last position only", [7, 7, 8, 8], 8),
    ],
)
def test_edge_cases_equal_generate(tiny_arch, case, breaks, suffix_len):
    model = tiny_causal_lm(tiny_arch, hidden=32).eval()
    windows = planted(model, breaks, suffix_len, seed=2)
    check_against_generate(model, windows, breaks)


class NoLogitsToKeepLlama(LlamaForCausalLM):
    """A model whose forward does not take `logits_to_keep` (older or custom architectures)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        assert "logits_to_keep" not in kwargs
        return super().forward(input_ids, attention_mask, position_ids, cache, use_cache=use_cache, **kwargs)


def test_model_without_logits_to_keep():
    from hf_memory._utils import supports_logits_to_keep

    model = NoLogitsToKeepLlama(tiny_causal_lm("llama", hidden=32).config)
    model.load_state_dict(tiny_causal_lm("llama", hidden=32).state_dict())
    model.eval()
    assert not supports_logits_to_keep(model)
    breaks = [0, 3, 7, 10, 1, 10, 5]
    check_against_generate(model, planted(model, breaks, 10), breaks)


def forward_shapes(model, fn) -> list[tuple[int, int]]:
    """(rows, new tokens) of every forward pass `fn` makes."""
    shapes = []
    hook = model.get_input_embeddings().register_forward_hook(lambda module, args, out: shapes.append(args[0].shape))
    try:
        with torch.inference_mode():
            fn()
    finally:
        hook.remove()
    return [tuple(s) for s in shapes]


def test_cost_is_generate_when_nothing_matches_and_one_forward_when_everything_does():
    model = tiny_causal_lm("llama", hidden=32).eval()
    suffix_len, batch = 12, 6
    at_once = planted(model, [0] * batch, suffix_len)
    generate = forward_shapes(model, lambda: generate_suffixes(model, at_once, PREFIX))
    assert forward_shapes(model, lambda: verify_and_decode(model, at_once, PREFIX)) == generate  # same passes
    assert generate == [(batch, PREFIX)] + [(batch, 1)] * (suffix_len - 1)
    assert forward_shapes(model, lambda: verify_and_decode(model, at_once, PREFIX, decode=False)) == generate[:1]

    memorized = planted(model, [suffix_len] * batch, suffix_len)
    shapes = forward_shapes(model, lambda: verify_and_decode(model, memorized, PREFIX))
    # the prefix, then the suffix (less its last token, which nothing reads) in chunks of 1, 2, 4, then the rest
    assert shapes == [(batch, PREFIX), (batch, 1), (batch, 2), (batch, 4), (batch, 4)]

    # once a row diverges, it needs one pass per token: the rows still being verified ride along in those passes
    late = planted(model, [suffix_len, suffix_len, 5, suffix_len], suffix_len)
    shapes = forward_shapes(model, lambda: verify_and_decode(model, late, PREFIX))
    assert shapes == [(4, PREFIX), (4, 1), (4, 2), (4, 4)] + [(4, 1)] * 4 + [(1, 1)] * 2  # rows leave when complete
    mixed = planted(model, [0, suffix_len, 2, suffix_len, 0, 1], suffix_len)
    assert forward_shapes(model, lambda: verify_and_decode(model, mixed, PREFIX)) == generate
    # without decoding, rows leave the verification batch at their first wrong token
    shapes = forward_shapes(model, lambda: verify_and_decode(model, mixed, PREFIX, decode=False))
    assert shapes == [(6, PREFIX), (4, 1), (3, 2), (2, 4), (2, 4)]


@pytest.mark.parametrize("chunks", ["halving", "Doubling", "", None, 0, -2, 1.5, True, [4], "4"])
def test_bad_chunk_schedule(chunks):
    model = tiny_causal_lm("llama")
    windows = torch.randint(0, TINY_VOCAB, (2, 12))
    with pytest.raises(ValueError, match="`chunks` must be 'doubling' or a positive integer"):
        verify_and_decode(model, windows, PREFIX, chunks=chunks)


def test_chunks_accepts_numpy_integers():
    import numpy as np

    model = tiny_causal_lm("llama").eval()
    windows = planted(model, [0, 4, 9], 9)
    check_against_generate(model, windows, [0, 4, 9], chunks=np.int64(4))


def regrouped(model, windows, batch_size, max_lag=4, prefix_len=PREFIX, regroup="auto"):
    """Run `Regrouper` over `windows` in batches; check the batches come back in order and each is complete."""
    regrouper = Regrouper(model, prefix_len, batch_size, max_lag=max_lag, regroup=regroup)
    done, lags = [], []
    with torch.inference_mode():
        for i, batch in enumerate(windows.split(batch_size)):
            done += regrouper.submit(i, batch)
            lags.append(len(regrouper._pending))
            assert regrouper._parked_rows < batch_size  # parked rows decode once a batch of them has gathered
        done += regrouper.finish()
    assert [key for key, _, _ in done] == list(range(len(windows.split(batch_size))))
    assert not regrouper._pending and not regrouper._parked
    return torch.cat([p for _, p, _ in done]), torch.cat([n for _, _, n in done]), lags


@pytest.mark.parametrize("batch_size,max_lag", [(1, 1), (3, 1), (4, 4), (7, 2), (64, 4), (5, 100)])
def test_regrouped_decoding_equals_generate(tiny_arch, batch_size, max_lag):
    """Diverged rows of several batches decoded together (padded caches of different lengths, segments split
    between decoding batches) give `generate`'s tokens, with divergence at every position and at chunk edges;
    whether every batch parks ("always"), where the estimate says it pays ("auto") or none does ("never")."""
    suffix_len = 13
    model = tiny_causal_lm(tiny_arch, hidden=32).eval()
    breaks = torch.randint(0, suffix_len + 1, (50,), generator=torch.Generator().manual_seed(batch_size)).tolist()
    windows = planted(model, breaks, suffix_len, seed=batch_size)
    with torch.inference_mode():
        reference = generate_suffixes(model, windows, PREFIX).tolist()
    for regroup in ("always", "auto", "never"):
        predictions, lcp, lags = regrouped(model, windows, batch_size, max_lag, regroup=regroup)
        assert predictions.tolist() == reference, regroup
        assert lcp.tolist() == breaks
        assert max(lags) <= max_lag


def test_regrouping_shares_decoding_passes_between_batches():
    """Half-memorized batches: verified alone, their diverged halves decoded together in full batches, so the
    one-token decoding passes are half of what decoding in each batch makes; a batch waits at most `max_lag`.
    With `regroup="auto"` the first batch is decoded where it is (no evidence yet that parking pays), the next ones
    park."""
    model = tiny_causal_lm("llama", hidden=32).eval()
    suffix_len, batch = 24, 8
    breaks = [0, suffix_len] * (2 * batch)  # 4 batches, half of each diverging at once
    windows = planted(model, breaks, suffix_len)
    in_batch = forward_shapes(model, lambda: [verify_and_decode(model, b, PREFIX) for b in windows.split(batch)])
    always = forward_shapes(model, lambda: regrouped(model, windows, batch, regroup="always"))
    auto = forward_shapes(model, lambda: regrouped(model, windows, batch))
    assert in_batch.count((batch, 1)) == 4 * (suffix_len - 1)  # memorized rows ride along
    assert always.count((batch, 1)) == 2 * (suffix_len - 1)  # two full batches of diverged rows
    # the first batch in place; the diverged halves of the other three: one full batch, then a half one (and the
    # first verification chunk of each parked batch's memorized half: 3 more passes of 4 rows and one token)
    assert auto.count((batch, 1)) == 2 * (suffix_len - 1) and auto.count((batch // 2, 1)) == suffix_len - 1 + 3
    expected = torch.cat([verify_and_decode(model, b, PREFIX)[0] for b in windows.split(batch)]).tolist()
    for regroup in ("always", "auto"):
        assert regrouped(model, windows, batch, regroup=regroup)[0].tolist() == expected
    few = planted(model, ([0] + [suffix_len] * (batch - 1)) * 6, suffix_len)  # one diverged row per batch
    predictions, _, lags = regrouped(model, few, batch, max_lag=2)
    assert max(lags) <= 2
    with torch.inference_mode():
        assert predictions.tolist() == generate_suffixes(model, few, PREFIX).tolist()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_text_the_model_has_not_memorized_costs_generates_passes(batch_size):
    """Issue 37: on windows that no row reproduces to the end (most diverge at their first suffix token, the
    others a few tokens later), `auto` parked the diverged rows and verified the others in passes of their own,
    then decoded everything anyway: more passes than `generate` (0.88x its speed at batch 48 on SmolLM2). Now a
    batch with a row wrong at its first token makes exactly `generate`'s passes, and none makes more."""
    model = tiny_causal_lm("llama", hidden=32).eval()
    suffix_len = 16
    generator = torch.Generator().manual_seed(batch_size)
    breaks = torch.randint(0, 4, (6 * batch_size + (batch_size + 1) // 2,), generator=generator)  # a short last batch
    breaks[::batch_size] = 0  # a row of every batch diverges at once
    breaks = breaks.tolist()
    windows = planted(model, breaks, suffix_len, seed=batch_size)

    def per_batch_generate():
        return [generate_suffixes(model, b, PREFIX) for b in windows.split(batch_size)]

    generate = forward_shapes(model, per_batch_generate)
    assert forward_shapes(model, lambda: regrouped(model, windows, batch_size)) == generate
    predictions, lcp, _ = regrouped(model, windows, batch_size)
    assert predictions.tolist() == torch.cat(per_batch_generate()).tolist() and lcp.tolist() == breaks
    # without a row wrong at its first token, verification may make wider passes, but never more of them
    later = [1 + b % 3 for b in breaks]
    windows = planted(model, later, suffix_len, seed=batch_size)
    shapes = forward_shapes(model, lambda: regrouped(model, windows, batch_size))
    assert len(shapes) <= len(generate)
    predictions, lcp, _ = regrouped(model, windows, batch_size)
    with torch.inference_mode():
        assert predictions.tolist() == generate_suffixes(model, windows, PREFIX).tolist() and lcp.tolist() == later


def test_auto_regrouping_follows_the_evidence_of_earlier_batches():
    """Unmemorized batches, then half-memorized ones: no batch parks until earlier batches show that rows which
    reproduce their first tokens go on to the end, then they park (rows diverging at 0, 3 and 9: parked caches of
    three lengths, padded to one when decoded together); every result equals `generate`'s."""

    class Recording(Regrouper):
        def _worth_parking(self, *args):
            self.decisions.append(super()._worth_parking(*args))
            return self.decisions[-1]

    model = tiny_causal_lm("llama", hidden=32).eval()
    suffix_len, batch = 24, 6
    unmemorized = [0, 1, 0, 2, 0, 1]
    memorized_half = [0, suffix_len, 3, suffix_len, 9, suffix_len]
    breaks = unmemorized * 3 + memorized_half * 6
    windows = planted(model, breaks, suffix_len, seed=5)
    regrouper = Recording(model, PREFIX, batch)
    regrouper.decisions, done = [], []
    with torch.inference_mode():
        for i, b in enumerate(windows.split(batch)):
            done += regrouper.submit(i, b)
        done += regrouper.finish()
        reference = generate_suffixes(model, windows, PREFIX)
    assert len(regrouper.decisions) == 9  # one per batch: each has a row wrong at its first token
    assert not any(regrouper.decisions[:4]) and all(regrouper.decisions[-2:])
    assert torch.cat([p for _, p, _ in done]).tolist() == reference.tolist()
    assert torch.cat([n for _, _, n in done]).tolist() == breaks


def test_regrouping_falls_back_for_sliding_window_caches():
    """A cache with sliding-window layers cannot be padded and merged: such a model decodes batch by batch."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
    )
    model = MistralForCausalLM(config).eval()
    breaks = [0, 13, 5, 13, 2, 0, 13, 9]
    windows = planted(model, breaks, 13)
    predictions, lcp, _ = regrouped(model, windows, 4)
    with torch.inference_mode():
        assert predictions.tolist() == generate_suffixes(model, windows, PREFIX).tolist()
    assert lcp.tolist() == breaks


@pytest.mark.parametrize("max_lag", [0, -1, 1.5, True, "2"])
def test_bad_max_lag(max_lag):
    with pytest.raises(ValueError, match="max_lag"):
        Regrouper(tiny_causal_lm("llama"), PREFIX, 4, max_lag=max_lag)


def sliding_window_model(arch: str = "mistral", window: int = 4):
    """A tiny model whose cache keeps a sliding window of `window` tokens in every layer."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": window,
        "initializer_range": 0.2,  # a peaked model: planted windows follow it for many tokens
    }
    if arch == "mistral":
        return MistralForCausalLM(MistralConfig(**common)).eval()
    config = Qwen2Config(**common, use_sliding_window=True, max_window_layers=0, layer_types=["sliding_attention"] * 2)
    return Qwen2ForCausalLM(config).eval()


@pytest.mark.parametrize("arch", ["mistral", "qwen2"])
def test_sliding_window_models_equal_generate_wherever_a_row_diverges(arch):
    """Windows (6 + 13 tokens) longer than the sliding window (4), diverging inside a verification chunk: the true
    tokens fed past the divergence must not push real context out of the window (they did: wrong continuations)."""
    from hf_memory import measure_extraction

    suffix_len = 13
    model = sliding_window_model(arch)
    breaks = list(range(suffix_len + 1))  # every first divergence, and none
    windows = planted(model, breaks, suffix_len, seed=3)
    with torch.inference_mode():
        reference = generate_suffixes(model, windows, PREFIX)
        for row in range(len(breaks)):  # batch 1: the row's own divergence sets the chunks
            predictions, lcp = verify_and_decode(model, windows[row : row + 1], PREFIX)
            assert predictions.tolist() == reference[row : row + 1].tolist(), f"diverging at {breaks[row]}"
            assert lcp.tolist() == [breaks[row]]
    for batch_size in (1, 5):
        predictions, lcp, _ = regrouped(model, windows, batch_size)
        assert predictions.tolist() == reference.tolist() and lcp.tolist() == breaks
        auto = measure_extraction(model, windows, PREFIX, suffix_len, batch_size=batch_size, show_progress=False)
        assert auto.predictions == reference.tolist()


def test_sliding_window_models_verify_one_token_at_a_time_and_full_attention_ones_in_chunks():
    """Chunks of 1 (no masked token in the cache) on a sliding-window cache, doubling chunks under full attention."""
    suffix_len = 12
    memorized = [suffix_len] * 3
    sliding = sliding_window_model(window=4)
    windows = planted(sliding, memorized, suffix_len)
    shapes = forward_shapes(sliding, lambda: verify_and_decode(sliding, windows, PREFIX))
    assert shapes == [(3, PREFIX)] + [(3, 1)] * (suffix_len - 1)
    # without decoding no row reads a masked token: the doubling chunks stay
    shapes = forward_shapes(sliding, lambda: verify_and_decode(sliding, windows, PREFIX, decode=False))
    assert shapes == [(3, PREFIX), (3, 1), (3, 2), (3, 4), (3, 4)]
    # full attention (a Llama, SmolLM2's architecture) keeps the doubling chunks
    llama = tiny_causal_lm("llama", hidden=32).eval()
    windows = planted(llama, memorized, suffix_len)
    shapes = forward_shapes(llama, lambda: verify_and_decode(llama, windows, PREFIX))
    assert shapes == [(3, PREFIX), (3, 1), (3, 2), (3, 4), (3, 4)]


def gpt_neo_local_attention(window: int):
    """A tiny GPT-Neo whose layers alternate global and local attention (GPT-Neo's own `attention_types`), the local
    ones over `window` tokens: its cache is a plain `DynamicCache`, the window lives in each layer's banded mask."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    config = GPTNeoConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
        window_size=window, max_position_embeddings=64, initializer_range=0.2, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPTNeoForCausalLM(config).eval()


def doge_dynamic_mask(window: int):
    """A tiny Doge: a plain cache, and attention that keeps only the `keep_window_size` best keys once the cache
    holds more."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "doge", vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, keep_window_size=window, initializer_range=0.2,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("build", [gpt_neo_local_attention, doge_dynamic_mask])
def test_local_attention_with_a_plain_cache_equals_generate_once_the_window_is_reached(build):
    """Issue 30 B4: masked tokens in the cache shifted GPT-Neo's local window (counted on cache slots, read from
    `window_size`, which the fast path did not know), and `method="auto"` differed from `generate` once
    prefix_len + 2 * suffix_len reached the window (11 of 14 rows here). Its sibling: Doge's `keep_window_size`
    (14 of 14)."""
    from hf_memory import measure_extraction

    suffix_len = 13
    model = build(8)
    breaks = list(range(suffix_len + 1))  # every first divergence, and none
    windows = planted(model, breaks, suffix_len, seed=3)
    with torch.inference_mode():
        reference = generate_suffixes(model, windows, PREFIX)
        for row in range(len(breaks)):
            predictions, lcp = verify_and_decode(model, windows[row : row + 1], PREFIX)
            assert predictions.tolist() == reference[row : row + 1].tolist(), f"diverging at {breaks[row]}"
            assert lcp.tolist() == [breaks[row]]
    for batch_size in (1, 5):
        predictions, lcp, _ = regrouped(model, windows, batch_size)
        assert predictions.tolist() == reference.tolist() and lcp.tolist() == breaks
        auto = measure_extraction(model, windows, PREFIX, suffix_len, batch_size=batch_size, show_progress=False)
        assert auto.predictions == reference.tolist()
        assert auto.longest_common_prefix == breaks


def test_local_attention_keeps_the_fast_path_while_the_window_cannot_be_reached():
    """GPT-Neo's local window (64) above prefix_len + 2 * suffix_len (30): doubling chunks, and still `generate`'s
    result; at 30 (reached) and 8: one token per chunk."""
    suffix_len = 12
    for window, fast in ((64, True), (31, True), (30, False), (8, False)):
        model = gpt_neo_local_attention(window)
        windows = planted(model, [suffix_len, 3, 7], suffix_len)
        shapes = forward_shapes(model, lambda: verify_and_decode(model, windows, PREFIX))  # noqa: B023
        assert (shapes[:3] == [(3, PREFIX), (3, 1), (3, 2)]) == fast, window
        with torch.inference_mode():
            reference = generate_suffixes(model, windows, PREFIX)
            assert verify_and_decode(model, windows, PREFIX)[0].tolist() == reference.tolist()


def test_generate_ignores_the_models_generation_config():
    """`generate` is plain greedy decoding, whatever the checkpoint's generation_config.json asks for: penalties,
    suppressed / forced / stop tokens, sampling, a short max_length (a fresh `GenerationConfig` passed as
    `generation_config=` would not do: generate fills its unset settings from the model's)."""
    suffix_len = 12
    model = tiny_causal_lm("llama", hidden=32).eval()
    windows = torch.randint(0, TINY_VOCAB, (6, PREFIX + suffix_len), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = generate_suffixes(model, windows, PREFIX)
        plain_lcp = verify_and_decode(model, windows, PREFIX)[0]
    assert reference.tolist() == plain_lcp.tolist()
    settings = [
        {"repetition_penalty": 1.5},
        {"no_repeat_ngram_size": 1},
        {"suppress_tokens": reference[:, 0].tolist()},
        {"begin_suppress_tokens": reference[:, 0].tolist()},
        {"forced_eos_token_id": 3},
        {"bad_words_ids": [[t] for t in reference[:, 1].tolist()]},
        {"sequence_bias": {(5,): 100.0}},
        {"do_sample": True, "temperature": 0.01, "top_k": 1, "num_return_sequences": 3},
        {"eos_token_id": reference[0, 2].item(), "max_length": PREFIX + 3},
    ]
    for setting in settings:
        for key, value in setting.items():
            setattr(model.generation_config, key, value)
        with torch.inference_mode():
            assert generate_suffixes(model, windows, PREFIX).tolist() == reference.tolist(), setting
        model.generation_config = type(model.generation_config).from_model_config(model.config)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m, w: verify_and_decode(m, w, -2), "`prefix_len` must be an integer >= 1"),
        (lambda m, w: verify_and_decode(m, w, 0), "`prefix_len` must be an integer >= 1"),
        (lambda m, w: verify_and_decode(m, w, 4.0), "`prefix_len` must be an integer >= 1"),
        (lambda m, w: verify_and_decode(m, w, 12), "`prefix_len` must be smaller than the windows' length 12"),
        (lambda m, w: verify_and_decode(m, w[0], PREFIX), "`windows` must be a 2-D tensor"),
        (lambda m, w: verify_and_decode(m, w.float(), PREFIX), "`windows` must be a 2-D tensor of integer"),
        (lambda m, w: verify_and_decode(m, w.tolist(), PREFIX), "`windows` must be a 2-D tensor of token ids"),
        (lambda m, w: verify_and_decode(m, w[:0], PREFIX), "`windows` holds no window"),
        (lambda m, w: verify_and_decode(m, w + TINY_VOCAB, PREFIX), "outside the model's vocabulary"),
        (lambda m, w: verify_and_decode(m, w - TINY_VOCAB, PREFIX), "token ids >= 0"),
        (lambda m, w: verify_and_decode(m, w, PREFIX, decode="no"), "`decode` must be True or False"),
        (lambda m, w: generate_suffixes(m, w, 12), "`prefix_len` must be smaller"),
        (lambda m, w: generate_suffixes(m, w.float(), PREFIX), "`windows` must be a 2-D tensor of integer"),
        (lambda m, w: Regrouper(m, PREFIX, 0), "`batch_size` must be an integer >= 1"),
        (lambda m, w: Regrouper(m, 0, 4), "`prefix_len` must be an integer >= 1"),
        (lambda m, w: Regrouper(m, PREFIX, 4, regroup="sometimes"), "`regroup` must be one of 'auto'"),
        (lambda m, w: Regrouper(m, PREFIX, 4, regroup=True), "`regroup` must be one of 'auto'"),
        (lambda m, w: Regrouper(m, PREFIX, 4, regroup=["auto"]), "`regroup` must be one of 'auto'"),
        (lambda m, w: Regrouper(m, PREFIX, 4).submit(0, w[:, :PREFIX]), "`prefix_len` must be smaller"),
        (lambda m, w: Regrouper(m, PREFIX, 4).submit(0, w[0]), "`windows` must be a 2-D tensor"),
    ],
)
def test_bad_arguments_to_the_decoding_functions(call, message):
    model = tiny_causal_lm("llama")
    crash = model.register_forward_hook(lambda *args: pytest.fail("a forward ran before the arguments were checked"))
    windows = torch.randint(0, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=message):
        call(model, windows)
    crash.remove()


def test_regrouper_refuses_batches_of_another_length():
    model = tiny_causal_lm("llama").eval()
    regrouper = Regrouper(model, PREFIX, 4)
    with torch.inference_mode():
        regrouper.submit(0, torch.randint(0, TINY_VOCAB, (2, 12)))
        with pytest.raises(ValueError, match="windows of 14 tokens, but earlier batches held 12"):
            regrouper.submit(1, torch.randint(0, TINY_VOCAB, (2, 14)))
