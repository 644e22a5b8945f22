"""FastMem: memorizing raises the prompt's likelihood, and the model comes back bit for bit on every exit path."""

from __future__ import annotations

import contextlib
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_memory import FastMem, FastMemConfig, context_as_assistant_turn, fastmem_generate, is_memorizing
from hf_memory.fastmem import FASTMEM_PRESETS
from tests.testing_utils import tiny_causal_lm


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {
        n: p.requires_grad for n, p in model.named_parameters()
    }


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
    assert inside < nll and stats.nll[-1] < stats.nll[0] and stats.kl[0] == 0.0
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
        with pytest.raises(RuntimeError, match="FastMem.memorize is already doing so"):
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
    out = fastmem_generate(
        model, prompt, FastMemConfig(steps=3, lr=1e-2), max_new_tokens=6, do_sample=False, pad_token_id=0
    )
    assert out.shape == (1, 18) and torch.equal(out[:, :12], prompt)
    assert_restored(model, before)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"steps": 0}, "`steps`"),
        ({"lr": 0}, "`lr`"),
        ({"lr": -1e-3}, "`lr`"),
        ({"kl_weight": -0.1}, "`kl_weight`"),
        ({"max_grad_norm": 0}, "`max_grad_norm`"),
    ],
)
def test_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FastMemConfig(**kwargs)


def test_bad_prompts_and_layers(model):
    fastmem = FastMem(model, FastMemConfig(steps=1))
    before = snapshot(model)
    for bad, match in [
        (torch.tensor([3]), "empty or a single token"),
        (torch.tensor([], dtype=torch.long), "empty"),
        (torch.zeros(2, 2, 8, dtype=torch.long), "shape"),
        (torch.rand(8), "integer token ids"),
    ]:
        with pytest.raises(ValueError, match=match):
            with fastmem.memorize(bad):
                pass
    with pytest.raises(ValueError, match="`loss_mask`"):
        with fastmem.memorize(torch.arange(8), loss_mask=torch.ones(7, dtype=torch.bool)):
            pass
    with pytest.raises(ValueError, match="`loss_mask` selects no token"):
        with fastmem.memorize(torch.arange(8), loss_mask=torch.tensor([True] + [False] * 7)):
            pass
    assert_restored(model, before)
    with pytest.raises(ValueError, match="layer=5 is out of range"):
        FastMem(model, FastMemConfig(layer=5))
    with pytest.raises(NotImplementedError, match="`contrastive` needs the last layer"):
        FastMem(model, FastMemConfig(layer=0, contrastive=0.5))
    from tests.test_last_ffn import CASES

    t5_class, t5_config, *_ = CASES["t5-decoder"]
    with pytest.raises(NotImplementedError, match="encoder-decoder"):
        FastMem(t5_class(t5_config))
    with pytest.raises(NotImplementedError, match="pass them to peft|supported"):
        FastMem(tiny_bert())


def tiny_bert():
    from transformers import BertConfig, BertLMHeadModel

    return BertLMHeadModel(
        BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            is_decoder=True,
        )
    )


def decoder_models():
    from tests.test_last_ffn import CASES

    return {name: case for name, case in CASES.items() if not name.startswith("t5")}


@pytest.mark.parametrize("layers", [None, 2, [0, 2]])
@pytest.mark.parametrize("arch", sorted(decoder_models()))
def test_fast_path_trains_the_same_weights_as_full_forwards(arch, layers):
    """The cached-trunk steps (FFN -> norm -> lm_head, or the layers from the earliest trained one -> norm ->
    lm_head) must equal re-running the whole model every step."""
    model_class, config, *_ = decoder_models()[arch]
    torch.manual_seed(0)
    model = model_class(config).eval()
    ids = torch.randint(3, 64, (2, 14), generator=torch.Generator().manual_seed(1))
    if arch == "mixtral":
        with pytest.raises(NotImplementedError, match="fused expert parameters"):
            FastMem(model, FastMemConfig(layers=layers))
        return
    fastmem = FastMem(model, FastMemConfig(steps=4, lr=1e-2, layers=layers))
    assert fastmem.ffn.fast_path == (arch not in ("opt", "gemma2", "gemma3_text"))
    assert fastmem.ffn.ffn_only == (fastmem.ffn.fast_path and layers is None)
    trained = []
    for fast in (fastmem.ffn.fast_path, False):
        fastmem.ffn.fast_path = fast
        with fastmem.memorize(ids) as memorized:
            trained.append(
                {name: {k: t.clone() for k, t in tensors.items()} for name, tensors in fastmem.ffn.rows.items()}
            )
            assert memorized.fast_path == fast and (memorized.cache is not None) == (layers is None)
    for name, tensors in trained[0].items():
        for key, value in tensors.items():
            torch.testing.assert_close(value, trained[1][name][key], rtol=1e-4, atol=1e-5)


def test_memorization_loss_gradient_matches_autograd():
    from hf_memory.fastmem.loss import MemorizationLoss as _MemorizationLoss

    g = torch.Generator().manual_seed(0)
    logits0, logits = (
        torch.randn(5, 11, generator=g, dtype=torch.float64),
        torch.randn(5, 11, generator=g, dtype=torch.float64),
    )
    targets, weights = (
        torch.randint(0, 11, (5,), generator=g),
        torch.tensor([0.5, 0.5, 1 / 3, 1 / 3, 1 / 3], dtype=torch.float64),
    )
    _, _, kl0, ref, neg_entropy = _MemorizationLoss.apply(logits0, targets, weights, 0.3, None, None)
    assert torch.equal(kl0, torch.zeros(5, dtype=torch.float64))
    x = logits.clone().requires_grad_()
    loss, nll, kl, *_ = _MemorizationLoss.apply(x.double(), targets, weights, 0.3, ref, neg_entropy)
    loss.backward()
    y = logits.clone().requires_grad_()
    log_p, log_ref = torch.log_softmax(y, -1), torch.log_softmax(logits0, -1)
    naive_kl = (log_ref.exp() * (log_ref - log_p)).sum(-1)
    naive = (weights * (-log_p.gather(1, targets[:, None])[:, 0] + 0.3 * naive_kl)).sum()
    naive.backward()
    torch.testing.assert_close(loss, naive)
    torch.testing.assert_close(kl, naive_kl.detach())
    torch.testing.assert_close(x.grad, y.grad)


GREEDY = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}


def reference_answers(model, prompts, config):
    """Memorize each prompt alone, then generate from scratch: what the KV-cache reuse and batching must equal."""
    answers = []
    for prompt in prompts:
        with FastMem(model, config).memorize(prompt):
            answers.append(model.generate(input_ids=prompt[None], **GREEDY)[0, len(prompt) :])
    return answers


@pytest.mark.parametrize("layers", [None, 2])
def test_kv_cache_reuse_and_batches_give_the_same_tokens(tiny_arch, layers):
    """With the last FFN alone, generation resumes from the memorization's cache; with both layers (`layers=2`) it
    prefills again. Either way, and in a left-padded batch, the tokens are those of memorizing each prompt alone."""
    model = tiny_causal_lm(tiny_arch, hidden=32).eval()
    before = snapshot(model)
    config = FastMemConfig(steps=4, lr=3e-2, layers=layers)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 128, (12,), generator=g), torch.randint(3, 128, (9,), generator=g)]
    expected = reference_answers(model, prompts, config)
    for prompt, answer in zip(prompts, expected):  # one prompt, generation resumed from the memorization's cache
        assert torch.equal(fastmem_generate(model, prompt, config, **GREEDY)[0, len(prompt) :], answer)
    batch, attention = torch.zeros(2, 12, dtype=torch.long), torch.zeros(2, 12, dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding
        batch[row, 12 - len(prompt) :], attention[row, 12 - len(prompt) :] = prompt, 1
    out = fastmem_generate(model, batch, config, attention_mask=attention, **GREEDY)
    assert all(torch.equal(out[row, 12:], expected[row]) for row in range(2))
    assert_restored(model, before)
    assert all("forward" not in module.__dict__ for module in model.modules())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_contrastive_decoding_equals_two_models(arch):
    model = tiny_causal_lm(arch, hidden=32).eval()
    prompt, alpha = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(3)), 0.5
    config = FastMemConfig(steps=4, lr=3e-2)
    memorized = tiny_causal_lm(arch, hidden=32).eval()
    with FastMem(model, config).memorize(prompt):
        memorized.load_state_dict(model.state_dict())
    sequence = prompt
    with torch.no_grad():
        for _ in range(8):
            logits = (1 + alpha) * memorized(sequence).logits[:, -1] - alpha * model(sequence).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], 1)
    cd = FastMemConfig(steps=4, lr=3e-2, contrastive=alpha)
    assert torch.equal(fastmem_generate(model, prompt, cd, **GREEDY), sequence)
    with torch.no_grad():
        expected = (1 + alpha) * memorized(prompt).logits[:, -1] - alpha * model(prompt).logits[:, -1]
        with FastMem(model, cd).memorize(prompt):  # the hooks act on plain forwards too
            combined = model(prompt).logits[:, -1]
    torch.testing.assert_close(combined, expected, rtol=1e-4, atol=1e-4)
    assert not model.lm_head._forward_pre_hooks and not model._forward_hooks


def test_lora_updates_only_low_rank_and_restores(model):
    from peft import LoraConfig

    from hf_memory import last_ffn_lora_config

    ids = torch.randint(0, 128, (24,), generator=torch.Generator().manual_seed(4))
    before, nll = snapshot(model), prompt_nll(model, ids)
    lora = last_ffn_lora_config(model, r=2, lora_alpha=4)
    with FastMem(model, FastMemConfig(steps=8, lr=3e-2, lora=lora)).memorize(ids) as memorized:
        inside = prompt_nll(model, ids)
        down = model.model.layers[1].mlp.down_proj.weight - before[0]["model.layers.1.mlp.down_proj.weight"]
    assert memorized.kl[0] == 0.0 and inside < nll
    assert 0 < torch.linalg.matrix_rank(down.detach()) <= 2  # a rank-2 update, merged into the weight
    assert_restored(model, before)
    only_up = LoraConfig(r=2, target_modules=["mlp.up_proj"])
    with FastMem(model, FastMemConfig(steps=3, lr=3e-2, lora=only_up)).memorize(ids):
        changed = {k for k, v in model.state_dict().items() if not torch.equal(before[0][k], v)}
    assert changed == {"model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(ValueError, match="names none of the trained layers' FFN modules"):
        FastMem(model, FastMemConfig(lora=LoraConfig(r=2, target_modules=["q_proj"])))
    for bad, match in [("lora", "`lora` must be None or a peft.LoraConfig"), (LoraConfig(use_dora=True), "use_dora")]:
        with pytest.raises(ValueError, match=match):
            FastMemConfig(lora=bad)


def test_one_prompt_leaves_a_plain_model_inside(model):
    """One prompt without CD: the weights are written in and no forward is replaced, so every decoding strategy
    (beam search, sampling, DoLa-style early exit on `output_hidden_states`) sees the memorized model."""
    ids = torch.arange(4, 20)
    with FastMem(model, FastMemConfig(steps=3, lr=1e-2)).memorize(ids):
        assert all("forward" not in m.__dict__ for m in model.modules())
        with torch.no_grad():
            out = model(ids[None], output_hidden_states=True)
        final = model.lm_head(out.hidden_states[-1])
        beams = model.generate(input_ids=ids[None], num_beams=2, max_new_tokens=3, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(final, out.logits)
    assert beams.shape == (1, 19)


def test_fastmem_callback_in_seq2seq_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from hf_memory import FastMemCallback

    model = tiny_causal_lm("llama", hidden=32)
    model.config.pad_token_id = 0
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 128, (n,), generator=g) for n in (10, 7, 10, 8)]

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r["input_ids"]) :], mask[i, width - len(r["input_ids"]) :] = (
                torch.tensor(r["input_ids"]),
                1,
            )
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    data = Dataset.from_dict({"input_ids": [p.tolist() for p in prompts]})
    config = FastMemConfig(steps=8, lr=0.1)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=2,
        per_device_train_batch_size=2,
        max_steps=2,
        predict_with_generate=True,
        generation_max_length=None,
        report_to=[],
        use_cpu=True,
        learning_rate=1e-2,
        save_strategy="no",
        remove_unused_columns=False,
    )
    gen = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    callback = FastMemCallback(config)
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=collate, callbacks=[callback])
    before = snapshot(model)
    predictions = trainer.predict(data, **gen).predictions
    assert_restored(model, before)
    model.eval()
    callback.detach(model)
    assert "generate" not in model.__dict__
    plain = [model.generate(input_ids=p[None], **gen)[0, len(p) :] for p in prompts]
    answers = [fastmem_generate(model, p, config, **gen)[0, len(p) :] for p in prompts]
    for row, answer in enumerate(answers):  # both batches are 10 tokens wide (left-padded)
        assert predictions[row, 10:14].tolist() == answer.tolist()
    assert any(not torch.equal(a, b) for a, b in zip(answers, plain))  # memorizing changed some answers
    # training is untouched: the same steps with and without the callback give the same weights
    weights = []
    for callbacks in ([callback], []):
        torch.manual_seed(0)
        m = tiny_causal_lm("llama", hidden=32)
        m.config.pad_token_id = 0
        Seq2SeqTrainer(model=m, args=args, data_collator=collate, train_dataset=data, callbacks=callbacks).train()
        weights.append(m.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


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
    assert stats.nll[-1] < stats.nll[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_smollm2_fast_path_cache_reuse_and_contrastive(smollm2):
    model, tokenizer = smollm2
    model.eval()
    messages = [{"role": "user", "content": "The river Oder flows north into the Baltic Sea. Where does it flow?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = FastMemConfig(steps=3)
    with FastMem(model, config).memorize(prompt) as memorized:
        assert memorized.fast_path and memorized.nll[-1] < memorized.nll[0]
        from_scratch = model.generate(input_ids=prompt, **GREEDY)
    assert torch.equal(fastmem_generate(model, prompt, config, **GREEDY), from_scratch)
    contrastive = fastmem_generate(model, prompt, FastMemConfig(steps=3, contrastive=0.5), **GREEDY)
    assert contrastive.shape == from_scratch.shape
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_counterfactual_qa_example_runs(smollm2):
    from tests.testing_utils import load_example

    example = load_example("fastmem_counterfactual_qa")
    contains, load_items, main = example.contains, example.load_items, example.main

    assert len(load_items()) >= 40 and len(load_items("dev")) + len(load_items("test")) == len(load_items())
    assert contains("New York", "It is in new york.") and not contains("Au", "Australia")
    model, tokenizer = smollm2
    results = main(model=model, tokenizer=tokenizer, **example.SMALL)  # what --small runs
    assert set(results) == {"zero-shot", "FastMem", "FastMem+CD (α=0.5)"}
    assert all(0 <= r["context"] <= 1 and len(r["answers"]) == 2 for r in results.values())


@pytest.mark.slow
def test_fastmem_controls_example(smollm2):
    from tests.testing_utils import load_example, model_state

    example = load_example("fastmem_controls")
    items = example.make_items(0)
    # one item per fact, the context states another answer of the same table, new draws per seed
    assert len(items) == sum(len(t["facts"]) for t in example.TABLES.values()) >= 60
    assert all(i["context_answer"] != i["memory_answer"] and i["context_answer"] in i["context"] for i in items)
    assert [i["context"] for i in example.make_items(1)] != [i["context"] for i in items]
    unrelated = example.unrelated_texts(items, 0)
    assert all(i["context_answer"] not in u and len(u) <= max(len(i["context"]), 40) for i, u in zip(items, unrelated))
    model, tokenizer = smollm2
    before = model_state(model)
    run = example.run_seed(model, tokenizer, 0, limit=3, batch_size=3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # every method restores the FFN
    assert set(run["methods"]) == set(example.methods()) and len(run["unrelated"]) == 3
    assert all(len(m["context"]) == 3 and len(m["answers"]) == 3 for m in run["methods"].values())
    numbers = example.summary_numbers({"seeds": {"0": run}})
    assert numbers["pooled"]["items"] == 3 and numbers["pooled"]["zero-shot"]["vs zero-shot"] is None
    # the exact McNemar test: 6 items gained and none lost give p = 2 / 2**6
    assert example.mcnemar([False] * 6 + [True], [True] * 7) == {
        "wrong_to_right": 6,
        "right_to_wrong": 0,
        "p": 0.03125,
    }
    assert "| FastMem lr 1e-4 |" in example.summarize({"seeds": {"0": run}})


# --- the official settings: weight decay, several layers, autocast, presets ---------------------------------------


def reference_memorize(model, ids, loss_mask, names, config):
    """The official loop, written plainly: a full forward every step, CrossEntropy + λ·KL(batchmean) against the
    step-0 log-probabilities in float32, torch AdamW, one clip over all trained weights (the Trainer's)."""
    params = [p for n, p in model.named_parameters() if n in names]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    targets, selected = ids[1:][loss_mask[1:]], loss_mask[1:]
    reference = None
    for _ in range(config.steps):
        dtype = config.autocast_dtype
        with torch.autocast("cpu", dtype=getattr(torch, dtype)) if dtype else contextlib.nullcontext():
            logits = model(input_ids=ids[None, :-1]).logits[0]
        log_probs = F.log_softmax(logits.float()[selected], dim=-1)
        if reference is None:
            reference = log_probs.detach()
        kl = F.kl_div(log_probs, reference, log_target=True, reduction="batchmean")
        loss = F.nll_loss(log_probs, targets) + config.kl_weight * kl
        optimizer.zero_grad()
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in names}


def memorized_and_reference(config, fast=True, layers=3, seed=0):
    """Our memorized weights (read inside the block), the reference loop's, the original weights, and the names."""
    model = tiny_causal_lm("llama", hidden=32, layers=layers).eval()
    original = copy.deepcopy(model.state_dict())
    twin = copy.deepcopy(model)
    ids = torch.randint(3, 128, (20,), generator=torch.Generator().manual_seed(seed))
    loss_mask = torch.arange(20) >= 6  # memorize part of the prompt
    fastmem = FastMem(model, config)
    fastmem.ffn.fast_path = fast and fastmem.ffn.fast_path
    names = [n for n, _ in model.named_parameters() if n.rpartition(".")[0] in fastmem.ffn.linears]
    before = snapshot(model)
    with fastmem.memorize(ids, loss_mask=loss_mask) as memorized:
        inside = {k: v.clone() for k, v in model.state_dict().items()}
    assert_restored(model, before)
    assert memorized.fast_path == (fast and fastmem.ffn.fast_path)
    return inside, reference_memorize(twin, ids, loss_mask, names, config), original, names


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("layers,trained", [(2, {1, 2}), ([0, 2], {0, 2}), ([-1, 0], {0, 2}), (None, {2})])
def test_multi_layer_update_equals_a_full_forward_reference_loop(layers, trained, fast):
    # max_grad_norm 0.05 is below every step's gradient norm here (0.18 to 0.42): the joint clip acts at each step
    config = FastMemConfig(steps=5, lr=1e-2, kl_weight=0.5, weight_decay=0.1, max_grad_norm=0.05, layers=layers)
    inside, expected, original, names = memorized_and_reference(config, fast=fast)
    assert {int(name.split(".")[2]) for name in names} == trained
    for name in names:  # every trained weight moved (by up to 5e-2), and as the reference loop moved it
        assert not torch.equal(inside[name], original[name])
        # 1 % of lr: AdamW's first step is lr·g/(|g| + ε), so the rare element whose gradient is about ε (1 of 2048
        # here) moves by a fraction of lr that float32 rounding of g shifts by up to 2e-5; all others agree to 1e-6
        torch.testing.assert_close(inside[name], expected[name], rtol=0, atol=1e-4)
    untouched = [k for k in original if k not in names]
    assert {int(k.split(".")[2]) for k in untouched if ".mlp." in k} == {0, 1, 2} - trained
    assert all(torch.equal(inside[k], original[k]) for k in untouched)  # bit-identical, other layers' FFNs too


@pytest.mark.parametrize("layers", [None, 2])
def test_bf16_autocast_matches_an_autocast_reference(layers):
    config = FastMemConfig(steps=4, lr=1e-2, kl_weight=0.3, layers=layers, autocast_dtype="bfloat16")
    inside, expected, original, names = memorized_and_reference(config)
    fp32, *_ = memorized_and_reference(FastMemConfig(steps=4, lr=1e-2, kl_weight=0.3, layers=layers))
    for name in names:
        assert inside[name].dtype == torch.float32  # autocast: the weights and AdamW stay float32
        torch.testing.assert_close(inside[name], expected[name], rtol=0, atol=1e-5)
    assert any(not torch.equal(inside[name], fp32[name]) for name in names)  # bf16 really was used


def test_weight_decay_matches_a_hand_computed_adamw_step():
    """One AdamW step: p ← p·(1 − lr·λ) − lr·m̂/(√v̂ + ε), with m̂ = g and v̂ = g² after bias correction (decoupled:
    the decay never enters the gradient or the moments)."""
    lr, decay, eps = 1e-2, 5.0, 1e-8
    model = tiny_causal_lm("llama", hidden=32).eval()
    twin = copy.deepcopy(model)
    ids = torch.randint(3, 128, (16,), generator=torch.Generator().manual_seed(3))
    config = FastMemConfig(steps=1, lr=lr, weight_decay=decay, max_grad_norm=None)
    with FastMem(model, config).memorize(ids):
        inside = {n: p.detach().clone() for n, p in model.named_parameters() if ".1.mlp." in n}
    names = list(inside)
    for p in twin.parameters():
        p.requires_grad_(False)
    params = [twin.get_parameter(n).requires_grad_() for n in names]
    F.cross_entropy(twin(input_ids=ids[None, :-1]).logits[0], ids[1:]).backward()
    for name, p in zip(names, params):
        g = p.grad
        by_hand = p.detach() * (1 - lr * decay) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(inside[name], by_hand, rtol=0, atol=1e-5)  # measured: 1.4e-7
        assert (inside[name] - (p.detach() - lr * g / (g.abs() + eps))).abs().max() > 1e-3  # the decay mattered


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layers": "2"}, "`layers` must be an integer n >= 1 for the last n layers"),
        ({"layers": 1.5}, "`layers`"),
        ({"layers": True}, "`layers`"),
        ({"layers": 0}, "`layers`"),
        ({"layers": -2}, "`layers`"),
        ({"layers": []}, "`layers`.*got \\[\\]"),
        ({"layers": [1, 1]}, "`layers`.*distinct"),
        ({"layers": [0, "1"]}, "`layers`"),
        ({"layers": [0, 1.0]}, "`layers`"),
        ({"layers": {0, 1}}, "`layers`"),
        ({"layers": np.float64(2)}, "`layers`"),
        ({"layers": np.zeros((1, 1), dtype=int)}, "`layers`"),
        ({"layer": 0, "layers": 2}, "Set `layer` \\(one layer\\) or `layers`.*not both"),
        ({"layer": -1, "layers": [-1]}, "not both"),
        ({"layer": "0"}, "`layer` must be an integer"),
        ({"weight_decay": -0.01}, "`weight_decay` must be a finite number >= 0"),
        ({"weight_decay": float("nan")}, "`weight_decay`"),
        ({"weight_decay": True}, "`weight_decay`"),
        ({"autocast_dtype": "bf16"}, "`autocast_dtype` must be one of 'bfloat16', 'float16', None"),
        ({"autocast_dtype": "float32"}, "`autocast_dtype`"),
        ({"autocast_dtype": torch.float32}, "`autocast_dtype`"),
        ({"autocast_dtype": ["bfloat16"]}, "`autocast_dtype`"),
        ({"autocast_dtype": 16}, "`autocast_dtype`"),
    ],
)
def test_config_rejects_hostile_values_of_the_new_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastMemConfig(**kwargs)


def test_config_takes_numpy_and_torch_values_and_stores_plain_ones():
    config = FastMemConfig(layers=np.int64(2), weight_decay=np.float32(0.5), autocast_dtype=torch.bfloat16, layer=None)
    assert (config.layers, config.weight_decay, config.autocast_dtype) == (2, 0.5, "bfloat16")
    assert type(config.layers) is int and type(config.weight_decay) is float
    listed = FastMemConfig(layers=np.array([0, -1]))
    assert listed.layers == [0, -1] and all(type(i) is int for i in listed.layers)
    assert FastMemConfig(layers=(np.int32(1), 2)).layers == [1, 2]
    assert FastMemConfig(layers=torch.tensor([2])).layers == [2]
    assert FastMemConfig(layer=np.int8(-2)).layer == -2


def test_new_fields_save_load_and_old_configs_still_load(tmp_path):
    config = FastMemConfig(layers=[0, -1], weight_decay=0.01, autocast_dtype="float16", steps=3)
    config.save_pretrained(tmp_path / "new")
    assert FastMemConfig.from_pretrained(tmp_path / "new") == config
    saved = json.loads((tmp_path / "new" / FastMemConfig.config_name).read_text())
    assert saved["layers"] == [0, -1] and saved["weight_decay"] == 0.01 and saved["autocast_dtype"] == "float16"
    # a file written before these fields existed: `layer` -1, no `layers`, `weight_decay` or `autocast_dtype`
    old = {"steps": 10, "lr": 1e-4, "kl_weight": 0.1, "layer": -1, "lora": None, "max_grad_norm": 1.0}
    old["contrastive"] = 0.0
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / FastMemConfig.config_name).write_text(json.dumps(old))
    loaded = FastMemConfig.from_pretrained(tmp_path / "old")
    assert (loaded.layer, loaded.layers, loaded.weight_decay, loaded.autocast_dtype) == (-1, None, 0.0, None)
    assert loaded.layer_indices(4) == FastMemConfig().layer_indices(4) == [3]
    with pytest.raises(ValueError, match="not both"):  # an override that contradicts the file
        FastMemConfig.from_pretrained(tmp_path / "old", layers=2)
    assert FastMemConfig.from_pretrained(tmp_path / "old", layer=None, layers=2).layers == 2


# Read off the official scripts: scripts/run_qa.sh (lr 1e-5, kl_coeff 0.1, 10 epochs = steps with one example) and
# the table in scripts/run_summary.sh ("Ours" and "Ours+CD"); AdamW without weight_decay (torch's 0.01), --bf16 True.
OFFICIAL = {
    "qa": (10, 1e-5, 0.1, 0.0),
    "qa_cd": (10, 1e-5, 0.1, 0.5),
    "xsum": (10, 1e-5, 1.0, 0.0),
    "xsum_cd": (10, 1e-5, 0.3, 0.5),
    "cnndm": (10, 3e-6, 1.0, 0.0),
    "cnndm_cd": (10, 3e-6, 0.01, 0.5),
    "wikihow": (20, 1e-5, 0.03, 0.0),
    "wikihow_cd": (20, 1e-5, 0.03, 0.5),
}


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_presets_hold_the_official_settings(preset, tmp_path):
    config = FastMemConfig.from_preset(preset)
    assert (config.steps, config.lr, config.kl_weight, config.contrastive) == OFFICIAL[preset]
    assert (config.weight_decay, config.max_grad_norm, config.autocast_dtype) == (0.01, 1.0, "bfloat16")
    assert (config.layer, config.layers, config.lora) == (None, None, None)  # the last layer's FFN, full rank
    config.save_pretrained(tmp_path)
    assert FastMemConfig.from_pretrained(tmp_path) == config


def test_presets_take_overrides_and_refuse_unknown_names():
    assert set(FASTMEM_PRESETS) == set(OFFICIAL)
    config = FastMemConfig.from_preset("cnndm", layers=2, autocast_dtype=None)
    assert (config.lr, config.layers, config.autocast_dtype) == (3e-6, 2, None)
    with pytest.raises(ValueError, match="`preset` must be one of 'qa', 'qa_cd', 'xsum'.*'wikihow_cd', got 'cnn'"):
        FastMemConfig.from_preset("cnn")
    for bad in (None, ["qa"], 1):
        with pytest.raises(ValueError, match="`preset` must be one of"):
            FastMemConfig.from_preset(bad)
    with pytest.raises(ValueError, match="Unknown FastMemConfig field"):
        FastMemConfig.from_preset("qa", learning_rate=1e-5)
    with pytest.raises(ValueError, match="`kl_weight`"):
        FastMemConfig.from_preset("qa", kl_weight=-1)
    assert FASTMEM_PRESETS["qa"]["lr"] == 1e-5  # from_preset never writes into the table


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layers": [5]}, "`layers` \\[5\\] holds \\[5\\], out of range for the 2 layers.*-2 to 1"),
        ({"layers": [0, -3]}, "`layers`.*out of range"),
        ({"layers": 3}, "`layers`=3 asks for the last 3 layers, but this model has 2"),
        ({"layers": [-1, 1]}, "`layers` \\[-1, 1\\] names a layer twice"),
        ({"layer": -3}, "layer=-3 is out of range for the 2 layers.*-2 to 1"),
    ],
)
def test_layers_that_do_not_fit_the_model_are_refused_before_any_work(model, kwargs, match):
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        FastMem(model, FastMemConfig(**kwargs))
    assert_restored(model, before)
    assert not is_memorizing(model) and all("forward" not in m.__dict__ for m in model.modules())


def test_several_layers_generate_without_the_cache_and_restore(model):
    """Two layers' FFNs change the last layer's keys and values: generation prefills again, and equals generating
    from scratch inside `memorize`. Contrastive decoding needs the last layer alone."""
    prompt = torch.randint(3, 128, (12,), generator=torch.Generator().manual_seed(6))
    before = snapshot(model)
    config = FastMemConfig(steps=4, lr=3e-2, layers=2, weight_decay=0.01)
    with FastMem(model, config).memorize(prompt) as memorized:
        assert memorized.cache is None and memorized.fast_path
        expected = model.generate(input_ids=prompt[None], **GREEDY)
    assert torch.equal(fastmem_generate(model, prompt, config, **GREEDY), expected)
    assert_restored(model, before)
    for bad in ({"layers": 2}, {"layers": [-1, 0]}, {"layer": 0}):
        with pytest.raises(NotImplementedError, match="`contrastive` needs the last layer's FFN alone"):
            FastMem(model, FastMemConfig(contrastive=0.5, **bad))
    FastMem(model, FastMemConfig(contrastive=0.5, layers=[-1]))  # the last layer alone, written as a list


@pytest.mark.parametrize("contrastive", [0.0, 0.5])
def test_autocast_generation_reuses_the_cache_and_matches_autocast_decoding(model, contrastive):
    prompt = torch.randint(3, 128, (12,), generator=torch.Generator().manual_seed(7))
    before = snapshot(model)
    config = FastMemConfig(steps=4, lr=3e-2, autocast_dtype="bfloat16", contrastive=contrastive)
    with FastMem(model, config).memorize(prompt) as memorized:
        assert memorized.cache is not None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = model.generate(input_ids=prompt[None], **GREEDY)
    assert torch.equal(fastmem_generate(model, prompt, config, **GREEDY), expected)
    assert_restored(model, before)


@pytest.mark.parametrize(
    "config",
    [
        FastMemConfig(steps=2, lr=1e-2, layers=2, weight_decay=0.1),
        FastMemConfig(steps=2, lr=1e-2, layers=[0], autocast_dtype="bfloat16"),
        FastMemConfig(steps=2, lr=1e-2, layer=0, autocast_dtype="float16", contrastive=0.0),
    ],
)
def test_every_new_setting_restores_the_model_on_an_exception(model, config):
    model.eval()
    before = snapshot(model)
    batch = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(8))
    for prompts in (batch[0], batch):  # one prompt (weights written in) and a batch (per-prompt rows)
        with pytest.raises(KeyboardInterrupt):
            with FastMem(model, config).memorize(prompts):
                raise KeyboardInterrupt
        assert_restored(model, before)
        assert all("forward" not in m.__dict__ for m in model.modules())


def test_lora_over_several_layers(model):
    from peft import LoraConfig

    from hf_memory import last_ffn_lora_config

    ids = torch.randint(0, 128, (24,), generator=torch.Generator().manual_seed(9))
    before = snapshot(model)
    with pytest.raises(ValueError, match="names none of the FFN modules of trained layer\\(s\\) \\[0\\]"):
        FastMem(model, FastMemConfig(layers=2, lora=last_ffn_lora_config(model, r=2)))
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["mlp.down_proj"])
    with FastMem(model, FastMemConfig(steps=4, lr=3e-2, layers=2, lora=lora)).memorize(ids):
        changed = {k for k, v in model.state_dict().items() if not torch.equal(before[0][k], v)}
        deltas = [model.get_parameter(k).detach() - before[0][k] for k in sorted(changed)]
    assert changed == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    assert all(0 < torch.linalg.matrix_rank(d) <= 2 for d in deltas)
    assert_restored(model, before)


def test_a_rerun_that_does_not_reproduce_the_model_falls_back_to_full_forwards(model, monkeypatch):
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(10))
    fastmem = FastMem(model, FastMemConfig(steps=3, lr=1e-2, layers=2))
    fastmem.ffn.fast_path = False
    with fastmem.memorize(ids):
        expected = {name: {k: t.clone() for k, t in tensors.items()} for name, tensors in fastmem.ffn.rows.items()}
    fastmem.ffn.fast_path = True
    run_trunk = fastmem._run_trunk

    def corrupted(*args, **kwargs):  # as if a layer read something the captured call does not hold
        trunk = run_trunk(*args, **kwargs)
        trunk["layer"] = trunk["layer"] + 1.0
        return trunk

    monkeypatch.setattr(fastmem, "_run_trunk", corrupted)
    with fastmem.memorize(ids) as memorized:
        assert not memorized.fast_path
        for name, tensors in fastmem.ffn.rows.items():
            for key, value in tensors.items():
                torch.testing.assert_close(value, expected[name][key], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_a_one_row_call_inside_a_two_prompt_memorization_is_refused():
    model = tiny_causal_lm("llama")
    prompts = torch.randint(4, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with FastMem(model, FastMemConfig(steps=2, lr=1e-2)).memorize(prompts):
        model(prompts)  # one row per memorized prompt: fine
        with pytest.raises(RuntimeError, match="memorized 2 prompts but the model got a batch of 1"):
            model(prompts[1:2])  # was: silently prompt 0's weights


def test_the_callback_keeps_positional_generate_arguments():
    from transformers import GenerationConfig

    from hf_memory import FastMemCallback

    model = tiny_causal_lm("llama").eval()
    callback = FastMemCallback(FastMemConfig(steps=1))
    callback.attach(model)
    ids = torch.arange(4, 12)[None]
    out = model.generate(ids, GenerationConfig(max_new_tokens=2, do_sample=False, pad_token_id=0))
    assert out.shape == (1, 10)  # was: the config was dropped and generation ran to max_length
    assert model.generate(inputs=ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 11)
    with pytest.raises(ValueError, match="pass the prompt to `generate` once"):
        model.generate(ids, input_ids=ids)
    callback.detach(model)


def test_contexts_pair_one_to_one_with_questions():
    model = tiny_causal_lm("llama")
    questions = torch.randint(4, 100, (4, 6), generator=torch.Generator().manual_seed(1))
    contexts = torch.randint(4, 100, (2, 8), generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match=r"one sequence for every prompt \(4\) or one for all, got 2"):
        fastmem_generate(model, questions, FastMemConfig(steps=1), memorize_ids=contexts, max_new_tokens=2)


def test_a_short_context_is_found_where_the_template_puts_it(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    turn = context_as_assistant_turn(tokenizer, "end")
    text = tokenizer.apply_chat_template([{"role": "assistant", "content": "end"}], tokenize=False)
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    first = spans[int(turn["loss_mask"][0].nonzero()[0])]
    assert first[0] <= text.index("\nend") + 1 < first[1]  # was: "end" found inside "<|im_end|>"


def test_detach_gives_back_the_users_own_generate():
    from hf_memory import FastMemCallback

    model = tiny_causal_lm("llama").eval()

    def my_generate(*args, **kwargs):
        return "mine"

    model.generate = my_generate
    callback = FastMemCallback(FastMemConfig(steps=1))
    callback.attach(model)
    assert model.generate is not my_generate
    callback.detach(model)
    assert model.generate is my_generate  # was: reset to the class method


def test_beams_and_several_return_sequences_work_with_fastmem():
    model = tiny_causal_lm("llama")
    prompts = torch.randint(4, 100, (2, 8), generator=torch.Generator().manual_seed(3))
    config = FastMemConfig(steps=2, lr=1e-2)
    kwargs = {"max_new_tokens": 3, "num_beams": 2, "num_return_sequences": 2, "pad_token_id": 0, "do_sample": False}
    batch = fastmem_generate(model, prompts, config, **kwargs)
    alone = torch.cat([fastmem_generate(model, p, config, **kwargs) for p in prompts])
    assert batch.shape == (4, 11) and torch.equal(batch, alone)  # each prompt's rows use that prompt's weights


def test_the_callback_with_beams_in_seq2seq_predict(tmp_path):
    from datasets import Dataset
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from hf_memory import FastMemCallback

    model = tiny_causal_lm("llama", hidden=32)
    model.config.pad_token_id = 0
    prompts = torch.randint(3, 128, (4, 8), generator=torch.Generator().manual_seed(6))
    data = Dataset.from_dict({"input_ids": prompts.tolist()})

    def collate(rows):
        ids = torch.tensor([r["input_ids"] for r in rows])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, predict_with_generate=True, report_to=[], use_cpu=True,
        generation_num_beams=2, generation_max_length=None, remove_unused_columns=False,
    )  # fmt: skip
    config = FastMemConfig(steps=4, lr=0.1)
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=collate, callbacks=[FastMemCallback(config)])
    gen = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    predictions = trainer.predict(data, **gen).predictions  # was: a crash in cache_utils
    answers = [fastmem_generate(model, p, config, num_beams=2, **gen)[0, 8:] for p in prompts]
    assert [row[8:11].tolist() for row in predictions] == [a.tolist() for a in answers]


def test_every_modules_training_flag_comes_back():
    from hf_memory import ce_diagnostic

    model = tiny_causal_lm("llama").train()
    model.model.layers[0].eval()
    model.model.layers[1].mlp.eval()
    flags = [m.training for m in model.modules()]
    with FastMem(model, FastMemConfig(steps=1)).memorize(torch.arange(2, 12)):
        pass
    ce_diagnostic(model, [list(range(2, 12))], show_progress=False)
    assert [m.training for m in model.modules()] == flags  # was: the root's flag pushed onto every submodule


def test_a_copy_taken_inside_a_memorize_block_is_free():
    import copy

    from hf_memory import is_memorizing

    model = tiny_causal_lm("llama")
    with FastMem(model, FastMemConfig(steps=1)).memorize(torch.arange(2, 12)):
        clone = copy.deepcopy(model)
        assert is_memorizing(model) and not is_memorizing(clone)
    with FastMem(clone, FastMemConfig(steps=1)).memorize(torch.arange(2, 12)):  # was: refused forever
        pass
