"""Every config shares one base: dict and JSON round trips, save/load from folders and the Hub, strict keys."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import hf_memory
from hf_memory import FastMemConfig, GoldfishConfig, HubConfigMixin, NeMoConfig, NeMoScorerConfig, last_ffn_lora_config
from tests.testing_utils import tiny_causal_lm


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
        assert json.load(f) == {**data, "hf_memory_version": hf_memory.__version__}


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
    with pytest.raises(ValueError, match=r"`k` must be an integer in \[2, "):
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
        (
            "upload",
            "me/fastmem",
            ["fastmem_config.json"],
            {**config.to_dict(), "hf_memory_version": hf_memory.__version__},
            "Upload FastMemConfig",
        ),
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


# ---------------------------------------------------------------- every config, found by walking the subclasses


# Configs whose defaults do not build one (a required field): an instance to round-trip. A new config class must
# either build from its defaults or get an entry here, or `test_every_config_class_round_trips` fails.
def _examples() -> dict:
    from hf_memory.fact_scaling import FactTrainingConfig
    from hf_memory.memcontrol import MemControlMask

    return {
        MemControlMask: MemControlMask(["down_blocks.0", "mid_block"], [1, 0], lr=1e-4),
        FactTrainingConfig: FactTrainingConfig(epochs=3, lr=1e-3, batch_size=4, schedule="cosine"),
    }


def _config_classes() -> list[type]:
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(hf_memory.__path__, "hf_memory."):
        if ".metrics." in module.name or module.name.endswith(".app") or ".cli." in module.name:
            continue
        importlib.import_module(module.name)
    found, todo = [], [HubConfigMixin]
    while todo:
        for subclass in todo.pop().__subclasses__():
            if subclass.__module__.startswith("hf_memory.") and subclass not in found:
                found.append(subclass)
            todo.append(subclass)
    return sorted(found, key=lambda c: c.__qualname__)


def test_every_config_class_round_trips(tmp_path):
    import dataclasses

    classes = _config_classes()
    assert len(classes) >= 5  # the walk found the package's configs, not nothing
    examples = _examples()
    for cls in classes:
        assert dataclasses.is_dataclass(cls), cls
        config = examples[cls] if cls in examples else cls()
        assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config, cls
        folder = tmp_path / cls.__name__
        config.save_pretrained(folder)
        with open(folder / cls.config_name) as f:
            assert json.load(f)["hf_memory_version"] == hf_memory.__version__
        assert cls.from_pretrained(folder) == config, cls


def _saved(config, tmp_path, **extra):
    config.save_pretrained(tmp_path)
    path = tmp_path / config.config_name
    data = json.loads(path.read_text())
    data.update(extra)
    path.write_text(json.dumps(data))
    return path


def test_a_file_of_a_newer_release_loads_with_a_warning_naming_the_dropped_keys(tmp_path):
    _saved(GoldfishConfig(k=3), tmp_path, hf_memory_version="99.0.0", new_option=1, other=True)
    with pytest.warns(UserWarning, match=r"hf-memory 99\.0\.0.*\['new_option', 'other'\].*dropped"):
        loaded = GoldfishConfig.from_pretrained(tmp_path)
    assert loaded == GoldfishConfig(k=3)


@pytest.mark.parametrize("version", [hf_memory.__version__, "0.1.0", None, "not a version", 3])
def test_a_file_of_this_or_an_older_release_refuses_unknown_keys(tmp_path, version):
    extra = {"typo_k": 4} if version is None else {"typo_k": 4, "hf_memory_version": version}
    _saved(GoldfishConfig(k=3), tmp_path, **extra)
    if version is None:
        data = json.loads((tmp_path / "goldfish_config.json").read_text())
        data.pop("hf_memory_version")
        (tmp_path / "goldfish_config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"Unknown GoldfishConfig field\(s\) \['typo_k'\]"):
        GoldfishConfig.from_pretrained(tmp_path)


def test_a_damaged_config_file_is_named_not_a_python_error(tmp_path):
    path = tmp_path / "goldfish_config.json"
    path.write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(ValueError, match="goldfish_config.json is not a valid GoldfishConfig file: it is not UTF-8"):
        GoldfishConfig.from_pretrained(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"k": 5}).encode())  # a byte-order mark, as Notepad writes
    assert GoldfishConfig.from_pretrained(tmp_path) == GoldfishConfig(k=5)
    path.unlink()
    path.mkdir()
    with pytest.raises(ValueError, match="goldfish_config.json is a folder"):
        GoldfishConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a folder named goldfish_config.json"):
        GoldfishConfig(k=5).save_pretrained(tmp_path)


def test_from_arguments_builds_or_overlays_a_config():
    arguments = {"k": 3, "h": 13}
    assert GoldfishConfig.from_arguments(None, arguments, "`f`") == GoldfishConfig(k=3)
    base = GoldfishConfig(k=8, h=5)
    assert GoldfishConfig.from_arguments(base, {"k": 4, "h": 13}, "`f`") is base  # defaults leave the config alone
    assert GoldfishConfig.from_arguments(base, {"k": 3, "h": 13}, "`f`") == GoldfishConfig(k=3, h=5)
    assert GoldfishConfig.from_arguments(base, {"k": np.int64(4)}, "`f`") == GoldfishConfig(k=4, h=5)
    with pytest.raises(TypeError, match=r"`f` got unexpected keyword argument \['kk'\]; it takes"):
        GoldfishConfig.from_arguments(None, {"kk": 3}, "`f`")
    with pytest.raises(TypeError, match="`config` must be a GoldfishConfig, got FastMemConfig"):
        GoldfishConfig.from_arguments(FastMemConfig(), {}, "`f`")
    with pytest.raises(ValueError, match=r"`k` must be an integer in \[2, "):
        GoldfishConfig.from_arguments(base, {"k": 1}, "`f`")


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_config_values_are_checked_at_construction():
    import torch
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


def test_a_missing_local_folder_is_not_reported_as_a_hub_error(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        FastMemConfig.from_pretrained(str(tmp_path / "nothing" / "here"))


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = GoldfishConfig().save_pretrained(tmp_path)
    finally:
        os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o644  # was: 0o600, unreadable by other users
