"""The model-anatomy module (`hf_memory._utils.anatomy`): the attention-window facts across every transformers
causal-LM family, GPT-2's `Conv1D` test, the denoiser call shared by NeMo and MemControl, and that no other module
keeps its own copy of these facts."""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch
from torch import nn

from hf_memory._utils import (
    anatomy,
    attention_window,
    check_denoiser,
    denoiser_problem,
    is_adaptable,
    is_gpt2_conv1d,
    predict_noise,
)


PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hf_memory")


def _default_causal_lm_configs():
    """(model_type, default config) of every causal-LM family transformers ships (those that build with defaults)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        configs = []
        for model_type in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    configs.append((model_type, CONFIG_MAPPING[model_type]()))
            except Exception:  # noqa: BLE001, S112  (a few families need arguments to build: nothing to read there)
                continue
        return configs
    finally:
        logging.set_verbosity(verbosity)


@pytest.fixture(scope="module")
def causal_lm_configs():
    return _default_causal_lm_configs()


def test_every_window_like_config_attribute_of_every_causal_lm_family_is_classified(causal_lm_configs):
    """Each integer attribute named like a window or chunk, in every causal-LM family's config, is either an
    attention span `attention_window` reads or listed as none: a new family's new name shows up here (until then
    it counts as a window, the safe side)."""
    assert len(causal_lm_configs) > 150
    unclassified = set()
    for model_type, config in causal_lm_configs:
        for config in anatomy._configs(config):
            for name, value in vars(config).items():
                if anatomy._WINDOW_LIKE.search(name) and anatomy._is_size(value):
                    if name not in anatomy.WINDOW_ATTRIBUTES and name not in anatomy.NOT_WINDOWS:
                        unclassified.add((model_type, name))
    assert unclassified == set()


# model_type -> attention_window of its default config
EXPECTED = {
    "gpt_neo": 256,  # local layers (window_size, attention_types)
    "mistral": 4096,
    "gemma2": 4096,
    "gemma3_text": 4096,
    "cohere2": 4096,
    "olmo3": 4096,
    "exaone4": 4096,
    "gpt_oss": 128,
    "llama4_text": 8192,  # chunked attention
    "modernbert-decoder": 64,
    "blt": 512,
    "recurrent_gemma": 0,  # recurrent layers (its local layers attend over 2048)
    "reformer": 64,
    "llama": None,
    "gpt2": None,
    "gpt_neox": None,
    "qwen2": None,  # use_sliding_window=False: sliding_window None
    "qwen2_moe": None,  # sliding_window=0
    "mixtral": None,
    "phi3": None,
    "qwen3_next": 0,  # linear-attention layers
    "big_bird": 0,  # block-sparse attention
}


def test_attention_window_of_the_families_with_local_or_chunked_attention(causal_lm_configs):
    windows = {model_type: attention_window(config) for model_type, config in causal_lm_configs}
    assert {t: windows[t] for t in EXPECTED if t in windows} == {t: v for t, v in EXPECTED.items() if t in windows}
    assert len(set(EXPECTED) & set(windows)) >= len(EXPECTED) - 2
    local = sorted(t for t, w in windows.items() if w)
    assert len(local) >= 30, local  # every family with sliding / local / chunked layers has a window


def test_attention_window_reads_gpt_neo_layers_multimodal_text_configs_and_models():
    from transformers import Gemma3Config, Gemma3TextConfig, GPTNeoConfig, GPTNeoForCausalLM

    local = GPTNeoConfig(window_size=16, attention_types=[[["global", "local"], 1]], num_layers=2)
    assert attention_window(local) == 16
    assert attention_window(GPTNeoConfig(window_size=16, attention_types=[[["global"], 2]], num_layers=2)) is None
    tiny = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=8, hidden_size=8, num_heads=2, window_size=5, **_alternating()))
    assert attention_window(tiny) == 5  # from the model's config
    composite = Gemma3Config(text_config=Gemma3TextConfig(sliding_window=32).to_dict())
    assert attention_window(composite) == 32  # the decoder's text config of a multimodal model
    assert attention_window(nn.Linear(2, 2)) is None  # no config: nothing known to shrink the attention


def _alternating():
    return {"attention_types": [[["global", "local"], 1]], "num_layers": 2}


def test_no_other_module_keeps_its_own_copy_of_the_anatomy_facts():
    """The window attributes, the `Conv1D` test and the UNet-style denoiser call live in `_utils/anatomy.py` only
    (NeMo once called every denoiser `unet(x, t, encoder_hidden_states=c)`, and extraction read `sliding_window`
    alone while GPT-Neo keeps its window in `window_size`)."""
    pattern = re.compile(
        r"getattr\([^)]*\"(sliding_window|attention_chunk_size|window_size)\"|\"Conv1D\"|"
        r"\w+\([^()]*,\s*[\w.]*timestep\w*,\s*encoder_hidden_states="
    )
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for file in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, file)
            if os.path.relpath(path, PACKAGE) == os.path.join("_utils", "anatomy.py"):
                continue
            text = open(path, encoding="utf-8").read()
            found += [f"{os.path.relpath(path, PACKAGE)}: {m.group(0)}" for m in pattern.finditer(text)]
    assert found == []


def test_gpt2_conv1d_is_recognised_plain_and_parametrized():
    from torch.nn.utils import parametrize
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(4, 3)
    assert is_gpt2_conv1d(conv) and is_adaptable(conv)
    parametrize.register_parametrization(conv, "weight", nn.Identity())
    assert type(conv).__name__ == "ParametrizedConv1D" and is_gpt2_conv1d(conv)
    assert not is_gpt2_conv1d(nn.Linear(3, 4)) and is_adaptable(nn.Linear(3, 4))
    assert not is_adaptable(nn.LayerNorm(3)) and not is_gpt2_conv1d(nn.Conv1d(3, 4, 1))


class _UNetStyle(nn.Module):
    """forward(sample, timestep, encoder_hidden_states): records what it was given."""

    def __init__(self, out_channels=3):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.out_channels, self.seen = out_channels, None

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True):
        self.seen = (timestep, encoder_hidden_states)
        out = sample.repeat(1, self.out_channels // sample.shape[1], 1, 1) * self.scale + timestep.view(-1, 1, 1, 1)
        return type("Output", (), {"sample": out})()


class _DiTStyle(_UNetStyle):
    """forward(hidden_states, encoder_hidden_states, timestep): the timestep by keyword, as PixArt's."""

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None):
        return super().forward(hidden_states, timestep, encoder_hidden_states)


@pytest.mark.parametrize("style", [_UNetStyle, _DiTStyle])
@pytest.mark.parametrize("timestep", [torch.tensor(7), 7, torch.tensor([7, 7])])
def test_predict_noise_calls_unets_and_dits_each_their_way(style, timestep):
    model = style(out_channels=6)  # a learned variance: the ε half comes back
    x, text = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8)
    out = predict_noise(model, x, timestep, text)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, x + 7)
    assert model.seen[0].tolist() == [7, 7] and model.seen[1] is not None  # one timestep per row, the text given


def test_check_denoiser_names_the_model_the_caller_and_what_is_missing():
    class ClassConditional(nn.Module):
        def forward(self, hidden_states, timestep=None, class_labels=None):
            return hidden_states

    assert denoiser_problem(_DiTStyle()) is None and denoiser_problem(_UNetStyle()) is None
    with pytest.raises(ValueError, match=r"`unet` \(ClassConditional\) cannot be called by my loop.*encoder_hidden"):
        check_denoiser(ClassConditional(), "unet", "my loop")
    with pytest.raises(ValueError, match=r"not a torch.nn.Module.*Do this\.$"):
        check_denoiser("a string", "unet", "my loop", "Do this.")


def test_attention_window_takes_numpy_integers_and_ignores_bools_zeros_and_strings():
    from types import SimpleNamespace

    import numpy as np
    from peft import LoraConfig, get_peft_model

    # transformers 5 configs refuse such values themselves; a config-like object (or remote code) may hold them
    assert attention_window(SimpleNamespace(sliding_window=np.int64(12))) == 12
    assert type(attention_window(SimpleNamespace(sliding_window=np.int64(12)))) is int
    for value in (True, 0, -3, "8", 8.0, None):
        assert attention_window(SimpleNamespace(sliding_window=value)) is None, value
        assert attention_window(SimpleNamespace(my_window=value)) is None, value
    assert attention_window(SimpleNamespace(my_window=5, chunk_size_feed_forward=1)) == 5  # an unknown name counts
    from tests.testing_utils import tiny_causal_lm

    model = tiny_causal_lm("llama")
    model.config.attention_chunk_size = 6
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert attention_window(wrapped) == 6  # through a peft wrapper
