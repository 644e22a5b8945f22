"""One regression test per silent-wrong-result bug of the hostile trial (issue 11, "BAD" items 1-12)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import GenerationConfig

from hf_memory import (
    FastMem,
    FastMemCallback,
    FastMemConfig,
    GoldfishConfig,
    MemorizationPredictor,
    apply_goldfish,
    ce_diagnostic,
    compute_activation_statistics,
    context_as_assistant_turn,
    extraction_scores,
    fastmem_generate,
    latent_memorization_scan,
    load_token_sequences,
    measure_extraction,
    memorization_signals,
)
from tests.testing_utils import tiny_causal_lm


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(model, before):
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# 1
def test_a_one_row_call_inside_a_two_prompt_memorization_is_refused():
    model = tiny_causal_lm("llama")
    prompts = torch.randint(4, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with FastMem(model, FastMemConfig(steps=2, lr=1e-2)).memorize(prompts):
        model(prompts)  # one row per memorized prompt: fine
        with pytest.raises(RuntimeError, match="memorized 2 prompts but the model got a batch of 1"):
            model(prompts[1:2])  # was: silently prompt 0's weights


# 2
def test_the_callback_keeps_positional_generate_arguments():
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


# 3
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


# 4
def test_two_in_place_calls_on_one_model_never_overlap():
    model = tiny_causal_lm("llama")
    before = state(model)
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold():
        with FastMem(model, FastMemConfig(steps=1, lr=1e-2)).memorize(torch.arange(4, 20)):
            inside.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(30)
    for call in (
        lambda: ce_diagnostic(model, [list(range(4, 20))], show_progress=False),
        lambda: latent_memorization_scan(model, [list(range(4, 20))], 4, 4, n_perturbations=1, show_progress=False),
        lambda: FastMem(model, FastMemConfig(steps=1)).memorize(torch.arange(4, 20)).__enter__(),
    ):
        try:
            call()
        except RuntimeError as err:
            errors.append(str(err))
    release.set()
    thread.join(30)
    assert len(errors) == 3 and all("FastMem.memorize is already doing so" in e for e in errors)
    assert same(model, before)  # was: the last FFN kept its memorized values


# 5
def test_a_single_string_is_not_a_list_of_prompts():
    with pytest.raises(ValueError, match="got one string"):
        compute_activation_statistics(None, "a red circle")  # was: 12 one-character prompts


# 6
def test_float_labels_are_refused_not_truncated():
    model = tiny_causal_lm("llama")
    signals = memorization_signals(model, [list(range(4, 20))] * 8, 8, 8, show_progress=False)
    with pytest.raises(ValueError, match="must be 0/1"):
        MemorizationPredictor().fit(signals, [1.0, 0.95, 0.9, 0.0, 1.0, 0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="must be 0/1"):
        MemorizationPredictor().fit(signals, ["1", "0"] * 4)


# 7
def test_contexts_pair_one_to_one_with_questions():
    model = tiny_causal_lm("llama")
    questions = torch.randint(4, 100, (4, 6), generator=torch.Generator().manual_seed(1))
    contexts = torch.randint(4, 100, (2, 8), generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match=r"one sequence for every prompt \(4\) or one for all, got 2"):
        fastmem_generate(model, questions, FastMemConfig(steps=1), memorize_ids=contexts, max_new_tokens=2)


# 8
@pytest.mark.parametrize("ids", [[1.9, 2.7, 3.0], [True, False, True], [-1, 2, 3], "123"])
def test_jsonl_token_ids_are_checked_not_coerced(tmp_path, ids):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"input_ids": ids}) + "\n")
    with pytest.raises(ValueError, match="input_ids of .*data.jsonl:1"):
        load_token_sequences([str(path)], tokenizer=None)


# 9
def test_a_short_context_is_found_where_the_template_puts_it(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    turn = context_as_assistant_turn(tokenizer, "end")
    text = tokenizer.apply_chat_template([{"role": "assistant", "content": "end"}], tokenize=False)
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    first = spans[int(turn["loss_mask"][0].nonzero()[0])]
    assert first[0] <= text.index("\nend") + 1 < first[1]  # was: "end" found inside "<|im_end|>"


# 10
def test_apply_goldfish_refuses_mismatched_shapes():
    ids = torch.arange(40)
    with pytest.raises(ValueError, match=r"`labels` \(4, 40\) and `input_ids` \(40,\) must have the same shape"):
        apply_goldfish(ids.repeat(4, 1), ids, GoldfishConfig(k=2, strategy="static"))


# 11
def test_detach_gives_back_the_users_own_generate():
    model = tiny_causal_lm("llama").eval()

    def my_generate(*args, **kwargs):
        return "mine"

    model.generate = my_generate
    callback = FastMemCallback(FastMemConfig(steps=1))
    callback.attach(model)
    assert model.generate is not my_generate
    callback.detach(model)
    assert model.generate is my_generate  # was: reset to the class method


# 12
def test_unsigned_ids_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match=r"token ids from 0 to 2\*\*63 - 1"):
        extraction_scores([np.array([2**64 - 1], dtype=np.uint64)], [[-1]])
    with pytest.raises(ValueError, match=r"token ids from 0 to 2\*\*63 - 1"):
        extraction_scores([[1, 2]], [[-1, 2]])


def test_ids_outside_the_vocabulary_are_named_before_any_work():
    model = tiny_causal_lm("llama")
    before = state(model)
    with pytest.raises(ValueError, match="token id 500, outside the model's vocabulary of 128"):
        measure_extraction(model, [list(range(10)) + [500] + list(range(10))], 8, 8, show_progress=False)
    with pytest.raises(ValueError, match="token id 128, outside"):
        ce_diagnostic(model, [[1, 2, 128]], show_progress=False)
    with pytest.raises(ValueError, match="token id 999, outside"):
        fastmem_generate(model, torch.tensor([1, 2, 999]), FastMemConfig(steps=1), max_new_tokens=1)
    assert same(model, before)


# ---------------------------------------------------------------- POOR classes: clear errors, up front


def test_config_values_are_checked_at_construction():
    from peft import LoraConfig

    from hf_memory import last_ffn_modules

    with pytest.raises(ValueError, match="`hash_table_device` must be a torch device name"):
        GoldfishConfig(hash_table_device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            GoldfishConfig(hash_table_device="cuda")
    with pytest.raises(ValueError, match=r"`lora.r` must be an integer >= 1"):
        FastMemConfig(lora=LoraConfig(r=0))
    for layer in (True, 1.5, "1"):
        with pytest.raises(ValueError, match="`layer` must be an integer"):
            last_ffn_modules(tiny_causal_lm("llama"), layer=layer)


def test_the_wrong_arguments_class_is_named():
    from hf_memory import GoldfishSFTTrainer, GoldfishTrainingArguments

    args = GoldfishTrainingArguments(output_dir="unused", report_to=[])
    with pytest.raises(TypeError, match="`args` of GoldfishSFTTrainer must be a GoldfishSFTConfig"):
        GoldfishSFTTrainer(model=tiny_causal_lm("llama"), args=args)


def test_a_peft_model_is_named_not_misread():
    from peft import get_peft_model

    from hf_memory import last_ffn_lora_config, last_ffn_modules

    model = tiny_causal_lm("llama")
    peft_model = get_peft_model(model, last_ffn_lora_config(model, r=2))
    with pytest.raises(TypeError, match="got a peft PeftModel: pass model.get_base_model"):
        last_ffn_modules(peft_model)


def test_beams_and_several_return_sequences_work_with_fastmem():
    model = tiny_causal_lm("llama")
    prompts = torch.randint(4, 100, (2, 8), generator=torch.Generator().manual_seed(3))
    config = FastMemConfig(steps=2, lr=1e-2)
    kwargs = {"max_new_tokens": 3, "num_beams": 2, "num_return_sequences": 2, "pad_token_id": 0, "do_sample": False}
    batch = fastmem_generate(model, prompts, config, **kwargs)
    alone = torch.cat([fastmem_generate(model, p, config, **kwargs) for p in prompts])
    assert batch.shape == (4, 11) and torch.equal(batch, alone)  # each prompt's rows use that prompt's weights


def test_an_empty_sequence_among_good_ones_is_skipped_as_too_short():
    result = measure_extraction(tiny_causal_lm("llama"), [[], list(range(4, 20))], 4, 4, show_progress=False)
    assert result.num_skipped == 1 and len(result.references) == 1


def test_nemo_refuses_an_empty_config_and_foreign_statistics(tmp_path):
    from hf_memory import ActivationStatistics, NeMoConfig, apply_nemo, localize_memorization_neurons
    from tests.test_nemo import tiny_pipeline

    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="silences no channel"):
        apply_nemo(pipe, NeMoConfig({}))
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
    foreign = ActivationStatistics({layer: torch.zeros(3)}, {layer: torch.ones(3)}, threshold=-1.0)
    with pytest.raises(ValueError, match="computed on another model"):
        localize_memorization_neurons(pipe, "a red circle", foreign)
    garbage = tmp_path / "nemo_activation_statistics.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    with pytest.raises(ValueError, match="is not a safetensors file of NeMo activation statistics"):
        ActivationStatistics.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is neither a file nor a folder"):
        ActivationStatistics.from_pretrained(str(tmp_path / "missing" / "folder"))


def test_a_missing_local_folder_is_not_reported_as_a_hub_error(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        FastMemConfig.from_pretrained(str(tmp_path / "nothing" / "here"))


def test_the_callback_with_beams_in_seq2seq_predict(tmp_path):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

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


# ---------------------------------------------------------------- second hostile trial (the new pieces)


def test_every_modules_training_flag_comes_back():
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


def test_kernel_size_sets_the_ssim_window_and_small_latents_work():
    from hf_memory.nemo.scoring import _pair_ssim

    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 4, 16, 16, generator=g)
    pairs = torch.tensor([[0, 1], [0, 2]])
    scores = {k: _pair_ssim(images, pairs, k).tolist() for k in (3, 7, 11)}
    assert scores[3] != scores[7] != scores[11]  # was: 11 whatever the setting
    assert _pair_ssim(images, pairs, 8).tolist() == _pair_ssim(images, pairs, 7).tolist()  # made odd
    assert _pair_ssim(images[..., :4, :4], pairs, 11).shape == (2,)  # was: a padding error under 6 x 6


def test_the_unhooked_score_refuses_a_user_hook():
    from hf_memory import NeMoConfig, NeMoScorerConfig, apply_nemo, nemo_memorization_score, remove_nemo
    from tests.test_nemo import LAYER, tiny_pipeline

    pipe = tiny_pipeline()
    apply_nemo(pipe, NeMoConfig({LAYER: [0, 1]}))
    with pytest.raises(ValueError, match="NeMo is already applied to this model"):
        nemo_memorization_score(pipe, "a red circle", scorer=NeMoScorerConfig(seeds=2, num_inference_steps=2))
    remove_nemo(pipe)


def test_statistics_with_numpy_numbers_round_trip(tmp_path):
    from hf_memory import ActivationStatistics

    base = torch.arange(8.0).reshape(2, 4)
    stats = ActivationStatistics(
        {"a.to_v": base[0]}, {"a.to_v": base[1]}, threshold=np.float64(0.5), scores=[np.float32(0.25)], num_prompts=np.int64(3)
    )  # fmt: skip
    stats.save_pretrained(tmp_path)  # views of one tensor: copied, so safetensors accepts them
    loaded = ActivationStatistics.from_pretrained(tmp_path)  # was: 'np.float64(0.5)' could not be read back
    assert loaded.threshold == 0.5 and loaded.scores == [0.25] and loaded.num_prompts == 3
    with pytest.raises(ValueError, match="without ','"):
        ActivationStatistics({"a,b": torch.zeros(2)}, {"a,b": torch.ones(2)})


def test_word_level_tokenizer_keeps_its_special_ids():
    from hf_memory import word_level_tokenizer

    for words in (["<pad>", "red"], {"red", "green"}, "red", ["a b"], ["red", "red"]):
        with pytest.raises(ValueError, match="`words` must be"):
            word_level_tokenizer(words)
    with pytest.raises(ValueError, match="`max_length` must be an integer >= 3"):
        word_level_tokenizer(["red"], max_length=0)


def test_the_two_searches_check_their_settings():
    from hf_memory.nemo import refine_selection, search_initial_selection

    acts, z = {"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([0.5, 3.0])}
    with pytest.raises(ValueError, match="`search` must be one of 'group', 'greedy'"):
        search_initial_selection(lambda n: 0.0, acts, z, 0.5, search="GREEDY")
    for kwargs, name in (({"theta_step": -1}, "theta_step"), ({"min_theta": 6}, "theta"), ({"max_k": -3}, "max_k")):
        with pytest.raises(ValueError, match=f"`{name}`"):
            search_initial_selection(lambda n: 0.0, acts, z, 0.5, **kwargs)
    with pytest.raises(ValueError, match="`refinement` must be one of"):
        refine_selection(lambda n: 0.0, {"a": [1]}, 0.5, z, refinement="bogus")


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = GoldfishConfig().save_pretrained(tmp_path)
    finally:
        os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o644  # was: 0o600, unreadable by other users
