"""verify_and_decode: the true suffix verified in chunks from the KV cache, diverged rows decoded greedily, equals
plain batched `generate` token for token, wherever a row diverges (inside a chunk, at its edges, at once, never)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from hf_memory.extraction.decoding import Regrouper, generate_suffixes, verify_and_decode
from tests.conftest import TINY_VOCAB, tiny_causal_lm


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


def regrouped(model, windows, batch_size, max_lag=4, prefix_len=PREFIX):
    """Run `Regrouper` over `windows` in batches; check the batches come back in order and each is complete."""
    regrouper = Regrouper(model, prefix_len, batch_size, max_lag=max_lag)
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
    between decoding batches) give `generate`'s tokens, with divergence at every position and at chunk edges."""
    suffix_len = 13
    model = tiny_causal_lm(tiny_arch, hidden=32).eval()
    breaks = torch.randint(0, suffix_len + 1, (50,), generator=torch.Generator().manual_seed(batch_size)).tolist()
    windows = planted(model, breaks, suffix_len, seed=batch_size)
    predictions, lcp, lags = regrouped(model, windows, batch_size, max_lag)
    with torch.inference_mode():
        assert predictions.tolist() == generate_suffixes(model, windows, PREFIX).tolist()
    assert lcp.tolist() == breaks
    assert max(lags) <= max_lag


def test_regrouping_shares_decoding_passes_between_batches():
    """Half-memorized batches: verified alone, their diverged halves decoded together in full batches, so the
    one-token decoding passes are half of what decoding in each batch makes; a batch waits at most `max_lag`."""
    model = tiny_causal_lm("llama", hidden=32).eval()
    suffix_len, batch = 12, 8
    breaks = [0, suffix_len] * (2 * batch)  # 4 batches, half of each diverging at once
    windows = planted(model, breaks, suffix_len)
    in_batch = forward_shapes(model, lambda: [verify_and_decode(model, b, PREFIX) for b in windows.split(batch)])
    shapes = forward_shapes(model, lambda: regrouped(model, windows, batch))
    assert in_batch.count((batch, 1)) == 4 * (suffix_len - 1)  # memorized rows ride along
    assert shapes.count((batch, 1)) == 2 * (suffix_len - 1)  # two full batches of diverged rows
    assert (
        regrouped(model, windows, batch)[0].tolist()
        == torch.cat([verify_and_decode(model, b, PREFIX)[0] for b in windows.split(batch)]).tolist()
    )
    few = planted(model, ([0] + [suffix_len] * (batch - 1)) * 6, suffix_len)  # one diverged row per batch
    predictions, _, lags = regrouped(model, few, batch, max_lag=2)
    assert max(lags) <= 2
    with torch.inference_mode():
        assert predictions.tolist() == generate_suffixes(model, few, PREFIX).tolist()


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
