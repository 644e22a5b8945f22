"""One base for every configuration: dict and JSON round trips, local folders and the Hub (peft's config mixin)."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from .checks import check_keywords
from .files import atomic_write, is_local_path
from .version import __version__, is_newer_version


T = TypeVar("T", bound="HubConfigMixin")

VERSION_KEY = "hf_memory_version"  # in every saved config: the hf-memory release that wrote it


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


def _same(value, default) -> bool:
    """Whether a keyword argument still holds its default (`==`, with arrays and the like compared safely)."""
    if value is default:
        return True
    try:
        return bool(value == default) and type(value) is type(default)
    except (TypeError, ValueError, RuntimeError):  # arrays, tensors: ambiguous truth values
        return False


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
    `nested_configs` (field name -> config class). Files are plain JSON, never pickle, and record the hf-memory
    version that wrote them (`hf_memory_version`). `from_dict` refuses unknown keys by name (a typo must not pass
    silently), except in a file written by a *newer* hf-memory, whose new keys are dropped with a warning naming
    them (peft's behaviour); then the dataclass's own `__post_init__` checks every value.

    A harness that takes a config takes it as `config=` or as keyword arguments named like its fields
    (`from_arguments`), so both call styles work and the values are checked once, where the config is built.

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
        """Build the config from a dict written by `to_dict` (or read from a saved file).

        Args:
            data: Field name -> value; nested configs may be given as dicts. A `hf_memory_version` entry says which
                release wrote it: keys unknown here are refused unless that release is newer than this one, in
                which case they are dropped with a warning.

        Raises:
            TypeError: If `data` is not a mapping.
            ValueError: If `data` has keys that are not fields of this config (all are named) and was not written by
                a newer hf-memory, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"`data` must be a dict of {cls.__name__} fields, got {type(data).__name__}.")
        kwargs = dict(data)
        written_by = kwargs.pop(VERSION_KEY, None)
        names = [field.name for field in dataclasses.fields(cls) if field.init]
        unknown = sorted(set(kwargs) - set(names), key=str)
        if unknown:
            if not is_newer_version(written_by):
                raise ValueError(f"Unknown {cls.__name__} field(s) {unknown}; the fields are {names}.")
            warnings.warn(
                f"This {cls.__name__} was written by hf-memory {written_by}, newer than this one ({__version__}): "
                f"its field(s) {unknown} are unknown here and were dropped. Upgrade hf-memory to use them.",
                UserWarning,
                stacklevel=2,
            )
            kwargs = {key: value for key, value in kwargs.items() if key in names}
        for name, config_class in cls.nested_configs.items():
            if name in kwargs:
                kwargs[name] = _from_nested(config_class, kwargs[name])
        return cls(**kwargs)

    @classmethod
    def from_arguments(cls: type[T], config: T | None, arguments: Mapping[str, Any], where: str) -> T:
        """The config a harness runs with: `config` as given, with the keyword arguments that differ from this
        class's defaults laid over it (as `generate(generation_config=..., **kwargs)` does), or, without `config`,
        one built from the keyword arguments. Values are checked once, here.

        Args:
            config: An instance of this class, or None.
            arguments: The harness's setting arguments by name (fields of this class; e.g. from `locals()`).
            where: The harness's name, for the error messages.

        Raises:
            TypeError: If `config` is not an instance of this class, or `arguments` names a field it does not have.
            ValueError: If a value is bad (from `__post_init__`).
        """
        fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
        check_keywords(arguments, fields, where)
        if config is None:
            return cls(**arguments)
        if not isinstance(config, cls):
            raise TypeError(f"{where}: `config` must be a {cls.__name__}, got {type(config).__name__}.")
        changed = {}
        for name, value in arguments.items():
            default = fields[name].default
            if default is dataclasses.MISSING:
                default = (
                    fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
                )
            if not _same(value, default):
                changed[name] = value
        return dataclasses.replace(config, **changed) if changed else config

    def to_json_string(self) -> str:
        """The config as indented JSON, keys sorted, with the `hf_memory_version` that wrote it."""
        return json.dumps({**self.to_dict(), VERSION_KEY: __version__}, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write the config as JSON (`config_name`) into `save_directory`, created if needed; return the file path.

        The file is written to a temporary name and renamed into place, so an interrupted save never leaves a
        truncated config behind.

        Args:
            save_directory: A local folder.
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"`save_directory` {str(save_directory)!r} is a file; give a folder.")
        path = os.path.join(save_directory, self.config_name)
        if os.path.isdir(path):
            raise ValueError(
                f"`save_directory` holds a folder named {self.config_name}, where the config file goes: {path}."
            )
        os.makedirs(save_directory, exist_ok=True)
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
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder, not a {cls.__name__} file.")
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
            with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark, as some editors write, is fine
                data = json.load(f)
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path} is not a valid {cls.__name__} file: it is not UTF-8 text ({err.reason})."
            ) from None
        except json.JSONDecodeError as err:
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
        return push_saved_to_hub(self, repo_id, private, token, commit_message, revision)


def push_saved_to_hub(
    saved,
    repo_id: str,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
):
    """Create the Hub model repo `repo_id` if needed and upload what `saved.save_pretrained(folder)` writes: the one
    upload path of every object the package saves (configs, an n-gram index).

    Args:
        saved: An object with `save_pretrained(folder)`.
        repo_id: "user/name" of the model repo.
        private: Whether a newly created repo is private.
        token: The Hub token (default: the saved login).
        commit_message: The commit message (default: "Upload <class name>").
        revision: The branch to push to.

    Returns:
        The `huggingface_hub.CommitInfo` of the upload.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        saved.save_pretrained(folder)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or f"Upload {type(saved).__name__}",
            revision=revision,
        )
