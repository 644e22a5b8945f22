"""Every config shares one base: dict and JSON round trips, save/load from folders and the Hub, strict keys."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hf_memory import FastMemConfig, GoldfishConfig, HubConfigMixin, NeMoConfig, NeMoScorerConfig, last_ffn_lora_config
from tests.conftest import tiny_causal_lm


def configs():
    lora = last_ffn_lora_config(tiny_causal_lm("llama"), r=4, lora_alpha=8)
    return [
        GoldfishConfig(k=3, h=5, strategy="hash-table", exempt_token_ids=(7, 2)),
        FastMemConfig(steps=3, lr=1e-3),
        FastMemConfig(steps=2, lora=lora, contrastive=0.5),
        NeMoConfig({"mid_block.attentions.0.transformer_blocks.0.attn2.to_v": [3, 1]}, scale=0.5),
        NeMoScorerConfig(seeds=4, guidance_scale=2.0, early_exit=False),
    ]


@pytest.mark.parametrize("config", configs(), ids=lambda c: type(c).__name__)
def test_round_trips_through_dict_json_and_folder(config, tmp_path):
    assert isinstance(config, HubConfigMixin)
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    assert type(config).from_dict(data) == config
    path = config.save_pretrained(tmp_path)
    assert os.path.basename(path) == config.config_name and os.listdir(tmp_path) == [config.config_name]
    assert type(config).from_pretrained(tmp_path) == config
    with open(path) as f:
        assert json.load(f) == data


def test_nested_lora_config_comes_back_as_a_lora_config(tmp_path):
    from peft import LoraConfig

    config = configs()[2]
    config.save_pretrained(tmp_path)
    loaded = FastMemConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.lora, LoraConfig)
    assert loaded.lora.r == 4 and set(loaded.lora.target_modules) == set(config.lora.target_modules)


@pytest.mark.parametrize("config", configs(), ids=lambda c: type(c).__name__)
def test_unknown_keys_are_refused_by_name(config):
    data = {**config.to_dict(), "typo_field": 1, "another": 2}
    with pytest.raises(ValueError, match=r"Unknown \w+ field\(s\) \['another', 'typo_field'\]"):
        type(config).from_dict(data)
    with pytest.raises(TypeError, match="must be a dict"):
        type(config).from_dict([("k", 3)])


def test_from_dict_still_validates_values():
    with pytest.raises(ValueError, match="`k` must be an integer >= 2"):
        GoldfishConfig.from_dict({"k": 1})
    with pytest.raises(ValueError, match="`seeds`"):
        NeMoScorerConfig.from_dict({"seeds": 1})


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="No fastmem_config.json"):
        FastMemConfig.from_pretrained(tmp_path)
    (tmp_path / "fastmem_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="fastmem_config.json is not a valid FastMemConfig file"):
        FastMemConfig.from_pretrained(tmp_path)
    (tmp_path / "fastmem_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a list"):
        FastMemConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a file"):
        GoldfishConfig().save_pretrained(tmp_path / "fastmem_config.json")


def test_from_pretrained_overrides_fields(tmp_path):
    GoldfishConfig(k=3).save_pretrained(tmp_path)
    assert GoldfishConfig.from_pretrained(tmp_path, k=8) == GoldfishConfig(k=8)


def test_an_interrupted_save_keeps_the_old_file(tmp_path, monkeypatch):
    GoldfishConfig(k=3).save_pretrained(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        GoldfishConfig(k=9).save_pretrained(tmp_path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["goldfish_config.json"]  # no temporary file left behind
    assert GoldfishConfig.from_pretrained(tmp_path) == GoldfishConfig(k=3)


def test_push_to_hub_uploads_the_json(monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
            with open(os.path.join(folder_path, "fastmem_config.json")) as f:
                calls.append(("upload", repo_id, sorted(os.listdir(folder_path)), json.load(f), commit_message))
            return "commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    config = FastMemConfig(steps=4)
    assert config.push_to_hub("me/fastmem", token="t") == "commit"
    assert calls == [
        ("token", "t"),
        ("create", "me/fastmem", None, True),
        ("upload", "me/fastmem", ["fastmem_config.json"], config.to_dict(), "Upload FastMemConfig"),
    ]


def test_numpy_scalars_are_plain_numbers_after_validation():
    config = FastMemConfig(steps=np.int64(3), lr=np.float32(1e-3), layer=np.int32(-1))
    assert type(config.steps) is int and type(config.lr) is float and type(config.layer) is int
    assert json.loads(json.dumps(config.to_dict()))["steps"] == 3
    goldfish = GoldfishConfig(k=np.int64(4), exempt_token_ids=np.array([5, 3]))
    assert goldfish.k == 4 and goldfish.exempt_token_ids == (3, 5)
    with pytest.raises(ValueError, match="`steps` must be an integer"):
        FastMemConfig(steps=np.bool_(True))
    with pytest.raises(ValueError, match="`lr` must be a finite number"):
        FastMemConfig(lr=float("nan"))


@pytest.mark.slow  # fresh interpreters, killed mid-write
def test_a_killed_save_never_leaves_a_broken_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    GoldfishConfig(k=2).save_pretrained(tmp_path)
    writer = (
        "import sys\nfrom hf_memory.goldfish import GoldfishConfig\n"
        "k = 2\nwhile True:\n    k = 2 + (k + 1) % 50\n    GoldfishConfig(k=k, exempt_token_ids=range(500)).save_pretrained(sys.argv[1])\n"
        "    print(k, flush=True)\n"
    )
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", writer, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()  # it is writing now
        time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        child.wait()
        loaded = GoldfishConfig.from_pretrained(tmp_path)  # always a whole file, old or new
        assert 2 <= loaded.k < 52 and loaded.exempt_token_ids == tuple(range(500))
