"""One base for every configuration: dict and JSON round trips, local folders and the Hub (peft's config mixin)."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from .files import atomic_write, is_local_path


T = TypeVar("T", bound="HubConfigMixin")


def _to_json(value):
    """`value` as plain JSON types: nested configs become dicts, sets sorted lists, tuples lists, enums values."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _to_json(value.to_dict())
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_to_json(item) for item in value)
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    return value


def _from_nested(config_class: type, data):
    """Build a nested config from its dict: one of ours through `from_dict`, a peft config through `from_peft_type`."""
    if data is None or not isinstance(data, Mapping):
        return data
    if issubclass(config_class, HubConfigMixin):
        return config_class.from_dict(data)
    if hasattr(config_class, "from_peft_type"):
        return config_class.from_peft_type(**data)
    return config_class(**data)


class HubConfigMixin:
    """`to_dict` / `from_dict` / `save_pretrained` / `from_pretrained` / `push_to_hub` for a dataclass config.

    Subclasses are dataclasses that set `config_name` (the JSON file name) and, for fields holding another config,
    `nested_configs` (field name -> config class). Files are plain JSON, never pickle. `from_dict` refuses unknown
    keys by name, then the dataclass's own `__post_init__` checks every value.

    Attributes:
        config_name: The file `save_pretrained` writes, e.g. "fastmem_config.json".
        nested_configs: Field name -> class of the config it holds (ours or a peft config such as `LoraConfig`).
    """

    config_name: ClassVar[str] = "config.json"
    nested_configs: ClassVar[dict[str, type]] = {}

    def to_dict(self) -> dict[str, Any]:
        """The config as a dict of plain JSON types (nested configs as dicts)."""
        return {field.name: _to_json(getattr(self, field.name)) for field in dataclasses.fields(self) if field.init}

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """Build the config from a dict written by `to_dict`.

        Args:
            data: Field name -> value; nested configs may be given as dicts.

        Raises:
            TypeError: If `data` is not a mapping.
            ValueError: If `data` has keys that are not fields of this config (all are named), or a bad value.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"`data` must be a dict of {cls.__name__} fields, got {type(data).__name__}.")
        names = [field.name for field in dataclasses.fields(cls) if field.init]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} field(s) {unknown}; the fields are {names}.")
        kwargs = dict(data)
        for name, config_class in cls.nested_configs.items():
            if name in kwargs:
                kwargs[name] = _from_nested(config_class, kwargs[name])
        return cls(**kwargs)

    def to_json_string(self) -> str:
        """The config as indented JSON, keys sorted."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write the config as JSON (`config_name`) into `save_directory`, created if needed; return the file path.

        The file is written to a temporary name and renamed into place, so an interrupted save never leaves a
        truncated config behind.

        Args:
            save_directory: A local folder.
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` {str(save_directory)!r} is a file; give a folder.")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        text = self.to_json_string()

        def write(temporary: str) -> None:
            with open(temporary, "w", encoding="utf-8") as f:
                f.write(text)

        atomic_write(path, write)
        return path

    @classmethod
    def from_pretrained(
        cls: type[T],
        pretrained_path: str | os.PathLike,
        revision: str | None = None,
        token: str | bool | None = None,
        **kwargs,
    ) -> T:
        """Read a config written by `save_pretrained`, from a local folder or a Hub model repo.

        Args:
            pretrained_path: A local folder holding `config_name`, or a Hub repo id.
            revision: The Hub revision (branch, tag or commit) when `pretrained_path` is a repo id.
            token: The Hub token when `pretrained_path` is a private repo id.
            **kwargs: Fields to override after loading.

        Raises:
            ValueError: If a local folder has no config file, or the file is not valid JSON for this config.
        """
        path = os.path.join(pretrained_path, cls.config_name)
        if not os.path.isfile(path):
            if os.path.isdir(pretrained_path):
                raise ValueError(f"No {cls.config_name} in {str(pretrained_path)!r}.")
            name = str(pretrained_path)
            if is_local_path(name):
                raise ValueError(f"{name!r} is not a folder (and not a Hub repo id of the form 'user/name').")
            from huggingface_hub import hf_hub_download

            try:
                path = hf_hub_download(name, cls.config_name, revision=revision, token=token)
            except Exception as err:  # offline, no such repo, no such file: say which file was looked for where
                raise ValueError(
                    f"{name!r} is not a local folder, and {cls.config_name} could not be fetched from the Hub repo of "
                    f"that name: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                ) from err
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a valid {cls.__name__} file: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(
                f"{path} is not a valid {cls.__name__} file: it holds a {type(data).__name__}, not a dict."
            )
        return cls.from_dict({**data, **kwargs})

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
    ):
        """Create the Hub model repo `repo_id` if needed and upload the config file to it.

        Args:
            repo_id: "user/name" of the model repo.
            private: Whether a newly created repo is private.
            token: The Hub token (default: the saved login).
            commit_message: The commit message (default: "Upload <ConfigClass>").
            revision: The branch to push to.

        Returns:
            The `huggingface_hub.CommitInfo` of the upload.
        """
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                revision=revision,
            )
