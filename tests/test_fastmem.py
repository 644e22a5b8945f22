"""FastMem: memorizing raises the prompt's likelihood, and the model comes back bit for bit on every exit path."""

from __future__ import annotations

import pytest
import torch

from hf_memory import FastMem, FastMemConfig, context_as_assistant_turn, fastmem_generate
from tests.conftest import tiny_causal_lm


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {n: p.requires_grad for n, p in model.named_parameters()}


def assert_restored(model, before):
    weights, flags = before
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def prompt_nll(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[None], labels=ids[None]).loss.item()


@pytest.fixture
def model():
    m = tiny_causal_lm("llama", hidden=32)
    m.model.embed_tokens.weight.requires_grad_(False)  # a frozen part must stay frozen afterwards
    return m


def test_memorize_changes_only_the_ffn_and_lowers_the_prompt_loss(model):
    ids = torch.randint(0, 128, (24,), generator=torch.Generator().manual_seed(0))
    before, nll = snapshot(model), prompt_nll(model, ids)
    with FastMem(model, FastMemConfig(steps=8, lr=1e-2)).memorize(ids) as stats:
        inside = prompt_nll(model, ids)
        changed = {k for k, v in model.state_dict().items() if not torch.equal(before[0][k], v)}
        assert not model.training
    assert inside < nll and stats["nll"][-1] < stats["nll"][0] and stats["kl"][0] == 0.0
    assert changed and all(k.startswith("model.layers.1.mlp.") for k in changed)
    assert_restored(model, before)
    assert model.training


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_restored_after_an_exception_inside(model, error):
    model.eval()
    before = snapshot(model)
    with pytest.raises(type(error)):
        with FastMem(model, FastMemConfig(steps=2, lr=1e-2)).memorize(torch.arange(12)):
            raise error
    assert_restored(model, before)
    assert not model.training
    with FastMem(model, FastMemConfig(steps=1)).memorize(torch.arange(12)):  # the lock was released
        pass


def test_nested_memorize_is_refused_and_the_outer_one_still_restores(model):
    before = snapshot(model)
    fastmem = FastMem(model, FastMemConfig(steps=1, lr=1e-2))
    with fastmem.memorize(torch.arange(12)):
        with pytest.raises(RuntimeError, match="already active"):
            with fastmem.memorize(torch.arange(12)):
                pass
    assert_restored(model, before)


def test_loss_mask_selects_the_memorized_tokens(model):
    ids = torch.randint(0, 128, (20,), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(20, dtype=torch.bool)
    mask[10:] = True
    with FastMem(model, FastMemConfig(steps=6, lr=1e-2)).memorize(ids, loss_mask=mask):
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0, :-1]
        masked_nll = torch.nn.functional.cross_entropy(logits[9:], ids[10:]).item()
    with torch.no_grad():
        original = torch.nn.functional.cross_entropy(model(input_ids=ids[None]).logits[0, :-1][9:], ids[10:]).item()
    assert masked_nll < original


def test_fastmem_generate_returns_generate_output_and_restores(model):
    before = snapshot(model)
    prompt = torch.arange(5, 17)[None]
    out = fastmem_generate(model, prompt, FastMemConfig(steps=3, lr=1e-2), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 18) and torch.equal(out[:, :12], prompt)
    assert_restored(model, before)


@pytest.mark.parametrize(
    "kwargs,name",
    [({"steps": 0}, "`steps`"), ({"lr": 0}, "`lr`"), ({"lr": -1e-3}, "`lr`"), ({"kl_weight": -0.1}, "`kl_weight`"),
     ({"max_grad_norm": 0}, "`max_grad_norm`")],
)
def test_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FastMemConfig(**kwargs)


def test_bad_prompts_and_layers(model):
    fastmem = FastMem(model, FastMemConfig(steps=1))
    before = snapshot(model)
    for bad, match in [(torch.tensor([3]), "empty or a single token"), (torch.tensor([], dtype=torch.long), "empty"),
                       (torch.zeros(2, 8, dtype=torch.long), "one prompt"), (torch.rand(8), "integer token ids")]:
        with pytest.raises(ValueError, match=match):
            with fastmem.memorize(bad):
                pass
    with pytest.raises(ValueError, match="`loss_mask`"):
        with fastmem.memorize(torch.arange(8), loss_mask=torch.ones(7, dtype=torch.bool)):
            pass
    assert_restored(model, before)
    with pytest.raises(ValueError, match="layer=5 is out of range"):
        FastMem(model, FastMemConfig(layer=5))


def test_context_as_assistant_turn_on_smollm2(smollm2):
    model, tokenizer = smollm2
    context = "The Eiffel Tower was moved to Rome in 1999."
    turn = context_as_assistant_turn(tokenizer, context)
    memorized = turn["input_ids"][turn["loss_mask"]]
    assert tokenizer.decode(memorized) == context + "<|im_end|>"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, mask = turn["input_ids"][0], turn["loss_mask"][0]
    with FastMem(model, FastMemConfig(steps=3, lr=1e-4)).memorize(ids, loss_mask=mask) as stats:
        pass
    assert stats["nll"][-1] < stats["nll"][0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
