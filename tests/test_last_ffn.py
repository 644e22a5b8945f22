"""last_ffn: the names of one layer's FFN, checked on a tiny model of every supported architecture, and the LoRA
config built from them applied with peft."""

from __future__ import annotations

import json
import types

import huggingface_hub
import peft
import pytest
import torch
import transformers as tf
from huggingface_hub.errors import EntryNotFoundError
from peft.tuners.lora import ParamWrapper

from hf_memory.fastmem import last_ffn_lora_config, last_ffn_modules


VOCAB = 64
DECODER = {
    "vocab_size": VOCAB,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
GPT_STYLE = {
    "vocab_size": VOCAB,
    "n_embd": 16,
    "n_layer": 3,
    "n_head": 4,
    "n_positions": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
T5 = {
    "vocab_size": VOCAB,
    "d_model": 16,
    "d_ff": 32,
    "d_kv": 8,
    "num_heads": 2,
    "num_layers": 2,
    "num_decoder_layers": 3,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}

# name -> (model class, config, stack, names for layer -1, names for layer 0)
CASES = {
    "llama": (
        tf.LlamaForCausalLM,
        tf.LlamaConfig(**DECODER),
        "decoder",
        ["model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj", "model.layers.2.mlp.down_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"],
    ),
    "mistral": (
        tf.MistralForCausalLM,
        tf.MistralConfig(**DECODER),
        "decoder",
        ["model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj", "model.layers.2.mlp.down_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"],
    ),
    "qwen2": (
        tf.Qwen2ForCausalLM,
        tf.Qwen2Config(**DECODER),
        "decoder",
        ["model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj", "model.layers.2.mlp.down_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"],
    ),
    "qwen3": (
        tf.Qwen3ForCausalLM,
        tf.Qwen3Config(**DECODER, head_dim=8),
        "decoder",
        ["model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj", "model.layers.2.mlp.down_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"],
    ),
    "gemma": (
        tf.GemmaForCausalLM,
        tf.GemmaConfig(**DECODER, head_dim=8),
        "decoder",
        ["model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj", "model.layers.2.mlp.down_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"],
    ),
    "gemma2": (
        tf.Gemma2ForCausalLM,
        tf.Gemma2Config(**DECODER, head_dim=8),
        "decoder",
        ["model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj", "model.layers.2.mlp.down_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"],
    ),
    "gemma3_text": (
        tf.Gemma3ForCausalLM,
        tf.Gemma3TextConfig(**DECODER, head_dim=8),
        "decoder",
        ["model.layers.2.mlp.gate_proj", "model.layers.2.mlp.up_proj", "model.layers.2.mlp.down_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"],
    ),
    "phi": (
        tf.PhiForCausalLM,
        tf.PhiConfig(**DECODER),
        "decoder",
        ["model.layers.2.mlp.fc1", "model.layers.2.mlp.fc2"],
        ["model.layers.0.mlp.fc1", "model.layers.0.mlp.fc2"],
    ),
    "phi3": (
        tf.Phi3ForCausalLM,
        tf.Phi3Config(**DECODER),
        "decoder",
        ["model.layers.2.mlp.gate_up_proj", "model.layers.2.mlp.down_proj"],
        ["model.layers.0.mlp.gate_up_proj", "model.layers.0.mlp.down_proj"],
    ),
    "gpt2": (
        tf.GPT2LMHeadModel,
        tf.GPT2Config(**GPT_STYLE),
        "decoder",
        ["transformer.h.2.mlp.c_fc", "transformer.h.2.mlp.c_proj"],
        ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"],
    ),
    "gpt_neox": (
        tf.GPTNeoXForCausalLM,
        tf.GPTNeoXConfig(**DECODER),
        "decoder",
        ["gpt_neox.layers.2.mlp.dense_h_to_4h", "gpt_neox.layers.2.mlp.dense_4h_to_h"],
        ["gpt_neox.layers.0.mlp.dense_h_to_4h", "gpt_neox.layers.0.mlp.dense_4h_to_h"],
    ),
    "falcon": (
        tf.FalconForCausalLM,
        tf.FalconConfig(**DECODER),
        "decoder",
        ["transformer.h.2.mlp.dense_h_to_4h", "transformer.h.2.mlp.dense_4h_to_h"],
        ["transformer.h.0.mlp.dense_h_to_4h", "transformer.h.0.mlp.dense_4h_to_h"],
    ),
    "bloom": (
        tf.BloomForCausalLM,
        tf.BloomConfig(vocab_size=VOCAB, hidden_size=16, n_layer=3, n_head=4),
        "decoder",
        ["transformer.h.2.mlp.dense_h_to_4h", "transformer.h.2.mlp.dense_4h_to_h"],
        ["transformer.h.0.mlp.dense_h_to_4h", "transformer.h.0.mlp.dense_4h_to_h"],
    ),
    "gptj": (
        tf.GPTJForCausalLM,
        tf.GPTJConfig(**GPT_STYLE, rotary_dim=4),
        "decoder",
        ["transformer.h.2.mlp.fc_in", "transformer.h.2.mlp.fc_out"],
        ["transformer.h.0.mlp.fc_in", "transformer.h.0.mlp.fc_out"],
    ),
    "opt": (
        tf.OPTForCausalLM,
        tf.OPTConfig(**DECODER, ffn_dim=32, word_embed_proj_dim=16),
        "decoder",
        ["model.decoder.layers.2.fc1", "model.decoder.layers.2.fc2"],
        ["model.decoder.layers.0.fc1", "model.decoder.layers.0.fc2"],
    ),
    "mixtral": (
        tf.MixtralForCausalLM,
        tf.MixtralConfig(**DECODER, num_local_experts=4, num_experts_per_tok=2),
        "decoder",
        ["model.layers.2.mlp.experts.gate_up_proj", "model.layers.2.mlp.experts.down_proj"],
        ["model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"],
    ),
    "t5-decoder": (
        tf.T5ForConditionalGeneration,
        tf.T5Config(**T5),
        "decoder",
        ["decoder.block.2.layer.2.DenseReluDense.wi", "decoder.block.2.layer.2.DenseReluDense.wo"],
        ["decoder.block.0.layer.2.DenseReluDense.wi", "decoder.block.0.layer.2.DenseReluDense.wo"],
    ),
    "t5-encoder": (
        tf.T5ForConditionalGeneration,
        tf.T5Config(**T5),
        "encoder",
        ["encoder.block.1.layer.1.DenseReluDense.wi", "encoder.block.1.layer.1.DenseReluDense.wo"],
        ["encoder.block.0.layer.1.DenseReluDense.wi", "encoder.block.0.layer.1.DenseReluDense.wo"],
    ),
    "t5-gated-decoder": (
        tf.T5ForConditionalGeneration,
        tf.T5Config(**T5, feed_forward_proj="gated-gelu"),
        "decoder",
        [
            "decoder.block.2.layer.2.DenseReluDense.wi_0",
            "decoder.block.2.layer.2.DenseReluDense.wi_1",
            "decoder.block.2.layer.2.DenseReluDense.wo",
        ],
        [
            "decoder.block.0.layer.2.DenseReluDense.wi_0",
            "decoder.block.0.layer.2.DenseReluDense.wi_1",
            "decoder.block.0.layer.2.DenseReluDense.wo",
        ],
    ),
    "t5-gated-encoder": (
        tf.T5ForConditionalGeneration,
        tf.T5Config(**T5, feed_forward_proj="gated-gelu"),
        "encoder",
        [
            "encoder.block.1.layer.1.DenseReluDense.wi_0",
            "encoder.block.1.layer.1.DenseReluDense.wi_1",
            "encoder.block.1.layer.1.DenseReluDense.wo",
        ],
        [
            "encoder.block.0.layer.1.DenseReluDense.wi_0",
            "encoder.block.0.layer.1.DenseReluDense.wi_1",
            "encoder.block.0.layer.1.DenseReluDense.wo",
        ],
    ),
}


def build(case: str):
    model_class, config = CASES[case][:2]
    torch.manual_seed(0)
    return model_class(config).eval()


def forward(model, ids):
    if model.config.is_encoder_decoder:
        return model(input_ids=ids, decoder_input_ids=ids[:, :3]).logits
    return model(input_ids=ids).logits


def adapted_names(peft_model) -> set[str]:
    """Modules that got `lora_A`, or `module.parameter` for the parameters that got a LoRA parametrization."""
    names = set()
    for name, module in peft_model.get_base_model().named_modules():
        if hasattr(module, "lora_A"):
            name = name.replace(".base_layer", "")
            names.add(f"{name}.{module.parameter_name}" if isinstance(module, ParamWrapper) else name)
    return names


@pytest.mark.parametrize("case", CASES)
def test_names_from_model_and_config(case):
    _, config, stack, last, first = CASES[case]
    model = build(case)
    assert last_ffn_modules(model, stack=stack) == last
    assert last_ffn_modules(model, layer=0, stack=stack) == first
    assert last_ffn_modules(config, stack=stack) == last
    assert last_ffn_modules(config, layer=0, stack=stack) == first
    num_layers = 2 if stack == "encoder" else 3
    for layer in range(num_layers):
        assert last_ffn_modules(config, layer - num_layers, stack) == last_ffn_modules(model, layer, stack)


@pytest.mark.parametrize("case", CASES)
def test_lora_adapts_exactly_the_ffn(case):
    _, _, stack, last, _ = CASES[case]
    model = build(case)
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = forward(model, ids)

    lora_config = last_ffn_lora_config(model, stack=stack, r=2)
    peft_model = peft.get_peft_model(model, lora_config)
    assert adapted_names(peft_model) == set(last)

    owners = set(lora_config.target_modules) | {
        name.rpartition(".")[0] for name in lora_config.target_parameters or ()
    }
    trainable = [name for name, p in peft_model.get_base_model().named_parameters() if p.requires_grad]
    assert trainable
    for name in trainable:
        assert name.replace(".base_layer", "").rpartition(".lora_")[0] in owners, name

    logits = forward(peft_model, ids)
    torch.testing.assert_close(logits, reference)
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in peft_model.parameters() if p.requires_grad)


def test_task_type_and_lora_kwargs():
    assert last_ffn_lora_config(CASES["llama"][1]).task_type == "CAUSAL_LM"
    assert last_ffn_lora_config(CASES["t5-decoder"][1]).task_type == "SEQ_2_SEQ_LM"
    config = last_ffn_lora_config(
        CASES["llama"][1], r=4, lora_alpha=16, lora_dropout=0.1, task_type="FEATURE_EXTRACTION"
    )
    assert (config.r, config.lora_alpha, config.lora_dropout, config.task_type) == (4, 16, 0.1, "FEATURE_EXTRACTION")
    assert last_ffn_lora_config(CASES["gpt2"][1]).fan_in_fan_out
    mixtral = last_ffn_lora_config(CASES["mixtral"][1])
    assert not mixtral.target_modules and mixtral.target_parameters == CASES["mixtral"][3]


def test_mixtral_router_is_not_adapted():
    peft_model = peft.get_peft_model(build("mixtral"), last_ffn_lora_config(CASES["mixtral"][1]))
    router = peft_model.get_base_model().get_submodule("model.layers.2.mlp.gate")
    assert type(router).__name__ == "MixtralTopKRouter"
    assert not hasattr(router, "lora_A") and not router.weight.requires_grad


@pytest.mark.parametrize("layer", [3, -4, 10])
def test_layer_out_of_range(layer):
    for source in (CASES["llama"][1], build("llama")):
        with pytest.raises(ValueError, match=rf"layer={layer}.*-3 to 2"):
            last_ffn_modules(source, layer)
        with pytest.raises(ValueError, match=rf"layer={layer}"):
            last_ffn_lora_config(source, layer)


def test_t5_encoder_and_decoder_have_their_own_depth():
    config = CASES["t5-decoder"][1]
    assert last_ffn_modules(config, 2, "decoder") == CASES["t5-decoder"][3]
    with pytest.raises(ValueError, match=r"layer=2.*2 encoder layers.*-2 to 1"):
        last_ffn_modules(config, 2, "encoder")
    with pytest.raises(ValueError, match="stack must be one of 'encoder', 'decoder', got 'cross'"):
        last_ffn_modules(config, stack="cross")


def test_stack_rejected_for_decoder_only():
    with pytest.raises(ValueError, match="'llama' is decoder-only"):
        last_ffn_modules(CASES["llama"][1], stack="encoder")
    with pytest.raises(ValueError, match="'gpt2' is decoder-only"):
        last_ffn_lora_config(build("gpt2"), stack="encoder")


def test_unknown_architecture():
    config = tf.BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32
    )
    for source in (config, tf.BertModel(config)):
        for function in (last_ffn_modules, last_ffn_lora_config):
            with pytest.raises(NotImplementedError) as error:
                function(source)
            message = str(error.value)
            assert "'bert'" in message and "llama" in message and "mixtral" in message and "t5" in message
            assert "peft.LoraConfig(target_modules=['model.layers.31.mlp.gate_proj'" in message


@pytest.mark.parametrize("key", ["target_modules", "target_parameters", "layers_to_transform", "layers_pattern"])
def test_lora_kwargs_cannot_choose_targets(key):
    with pytest.raises(TypeError, match=f"chooses {key} itself"):
        last_ffn_lora_config(CASES["llama"][1], **{key: ["mlp.down_proj"]})


def test_not_a_model_or_config():
    with pytest.raises(TypeError, match="expected a transformers model or config"):
        last_ffn_modules("meta-llama/Llama-3.2-1B")
    with pytest.raises(TypeError, match="got Linear"):
        last_ffn_modules(torch.nn.Linear(2, 2))


def test_base_model_without_head():
    torch.manual_seed(0)
    model = tf.LlamaModel(CASES["llama"][1])
    assert last_ffn_modules(model) == ["layers.2.mlp.gate_proj", "layers.2.mlp.up_proj", "layers.2.mlp.down_proj"]
    peft_model = peft.get_peft_model(model, last_ffn_lora_config(model, task_type=None))
    assert adapted_names(peft_model) == {"layers.2.mlp.gate_proj", "layers.2.mlp.up_proj", "layers.2.mlp.down_proj"}


def test_model_with_another_layout_is_rejected():
    model = build("llama")
    model.model.layers[2].mlp.down_proj = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"no nn.Linear / Conv1D modules \['model.layers.2.mlp.down_proj'\]"):
        last_ffn_modules(model)


def test_save_and_reload_round_trip(tmp_path):
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    peft_model = peft.get_peft_model(build("llama"), last_ffn_lora_config(CASES["llama"][1], r=2))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
        adapted = peft_model(ids).logits
    assert not torch.allclose(adapted, build("llama")(ids).logits)
    peft_model.save_pretrained(tmp_path)

    reloaded = peft.PeftModel.from_pretrained(build("llama"), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, adapted, rtol=0, atol=0)
    assert reloaded.peft_config["default"].target_modules == set(CASES["llama"][3])
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(saved["target_modules"]) == sorted(CASES["llama"][3])


def test_push_to_hub_uploads_the_target_modules(monkeypatch):
    uploads = {}

    def create_repo(self, repo_id, **kwargs):
        return types.SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        uploads[repo_id] = {op.path_in_repo: open(op.path_or_fileobj).read() for op in operations}

    def no_model_card_yet(cls, *args, **kwargs):
        raise EntryNotFoundError("README.md")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    monkeypatch.setattr(huggingface_hub.ModelCard, "load", classmethod(no_model_card_yet))

    last_ffn_lora_config(CASES["gpt2"][1], r=4).push_to_hub("someone/gpt2-last-ffn")

    uploaded = json.loads(uploads["someone/gpt2-last-ffn"]["adapter_config.json"])
    assert sorted(uploaded["target_modules"]) == ["transformer.h.2.mlp.c_fc", "transformer.h.2.mlp.c_proj"]
    assert (uploaded["r"], uploaded["fan_in_fan_out"], uploaded["target_parameters"]) == (4, True, None)


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_a_peft_model_is_named_not_misread():
    from peft import get_peft_model

    from hf_memory import last_ffn_lora_config, last_ffn_modules
    from tests.testing_utils import tiny_causal_lm

    model = tiny_causal_lm("llama")
    peft_model = get_peft_model(model, last_ffn_lora_config(model, r=2))
    with pytest.raises(TypeError, match="got a peft PeftModel: pass model.get_base_model"):
        last_ffn_modules(peft_model)
