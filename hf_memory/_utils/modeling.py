"""Model plumbing shared by the capabilities: forward-signature probes and context managers that restore a model."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch


def config_digest(model) -> str:
    """SHA-256 of what a model's configuration says it computes: a transformers config or a diffusers model's config
    dict without the keys that say where it came from (`_name_or_path`, `_commit_hash`, library versions: every key
    starting with "_", and `transformers_version`), so one checkpoint loaded from another folder, machine or library
    release has one digest; the class name for a model without a config.

    Args:
        model: A `torch.nn.Module`, with or without a `config`.
    """
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        data = json.loads(config.to_json_string(use_diff=False))
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        data = {"class": type(model).__qualname__}
    data = {k: v for k, v in data.items() if not str(k).startswith("_") and k != "transformers_version"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def model_identity(model, name: str | None = None) -> dict:
    """What identifies a model in a results manifest or report: its name or path (recorded, never compared: a
    checkpoint may move) and the digest of its configuration (`config_digest`).

    Args:
        model: A transformers model (anything with a `config` that has `to_json_string`, else its class name).
        name: The name to record (e.g. the folder it was loaded from); None uses the config's `_name_or_path`.

    Returns:
        `{"name_or_path": ..., "config_sha256": ...}`.
    """
    config = getattr(model, "config", None)
    if name is None:
        name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None) or type(model).__name__
    return {"name_or_path": str(name), "config_sha256": config_digest(model)}


_FINGERPRINT_CHUNK = 1 << 22  # elements summed at a time: bounds the int64 copy to 32 MiB


def weights_fingerprint(model) -> str:
    """A SHA-256 over every parameter's name, shape and dtype, an exact integer sum of its bit patterns and an evenly
    spaced sample of 4,096 of its values: another checkpoint, a fine-tune or a merged adapter changes it. Integer
    sums do not depend on the order of summation, so the fingerprint is the same on every device; it reads every
    weight once (about 0.3 s for 150M parameters on one CPU thread). Weights it cannot read as plain tensors (on the
    meta device, or tensor subclasses) count by their name, shape and dtype only.

    Args:
        model: A `torch.nn.Module`.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    with torch.no_grad():
        for name, param in model.named_parameters():
            digest.update(f"{name}:{tuple(param.shape)}:{param.dtype};".encode())
            if param.device.type == "meta" or param.element_size() not in ints:
                continue  # offloaded or exotic weights: their shape and dtype only
            try:
                bits = param.detach().reshape(-1).view(ints[param.element_size()])
                total = sum(
                    int(bits[i : i + _FINGERPRINT_CHUNK].sum(dtype=torch.int64))
                    for i in range(0, bits.numel(), _FINGERPRINT_CHUNK)
                )
                sample = bits[:: max(1, bits.numel() // 4096)][:4096].cpu().numpy().tobytes()
            except (RuntimeError, TypeError, NotImplementedError):  # a tensor subclass without these views
                continue
            digest.update(f"{total};".encode() + sample)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A sha256 of a tokenizer's vocabulary (token -> id), or None when it has none to read.

    Args:
        tokenizer: A transformers tokenizer.
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if not callable(get_vocab):
        return None
    return hashlib.sha256(json.dumps(sorted(get_vocab().items())).encode("utf-8")).hexdigest()


def cache_io(model) -> tuple[str, Callable]:
    """The KV-cache keyword of `model.forward` and a getter for the cache in its output.

    transformers renamed `past_key_values` to `cache` (forward keyword and output field): both are supported.

    Args:
        model: A transformers model.

    Returns:
        `(name, get)`: the keyword to pass the cache with, and `get(output)` returning the output's cache.
    """
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return name, lambda out: getattr(out, name)


def supports_logits_to_keep(model) -> bool:
    """Whether `model.forward` takes `logits_to_keep` (compute the logits of the last positions, or of given
    columns, only); under a PEFT wrapper, which passes it on, whether the base model's does.

    Args:
        model: A transformers model, possibly a `peft.PeftModel`.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature
        return False


def is_prompt_learning(model) -> bool:
    """Whether `model` is a PEFT prompt-learning model (prompt, prefix or p-tuning): its virtual tokens shift every
    position of the output, and PEFT drops the `position_ids` it is given.

    Args:
        model: A `torch.nn.Module`, possibly a `peft.PeftModel`.
    """
    return bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))


def model_device(model) -> torch.device:
    """The device of the model's first parameter.

    Args:
        model: A `torch.nn.Module` with at least one parameter.
    """
    return next(model.parameters()).device


def _training_flags(model) -> list[tuple[torch.nn.Module, bool]]:
    """Every module's own `training` flag (a submodule may differ from its parent)."""
    return [(module, module.training) for module in model.modules()]


def _set_training_flags(model, modes: list[tuple[torch.nn.Module, bool]]) -> None:
    for module, training in modes:
        module.training = training


# Who holds which weights. The guards are keyed on the storage of the weights, not on the Python object: a PEFT
# wrapper, a pipeline or any module sharing a model's tensors is the same model to them. Readers (`eval_mode`) may
# overlap each other; a call changing weights in place (`exclusive`) overlaps no other writer of those weights, and
# no reader of another thread (one thread may nest them).
_EVAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> [entries, flags saved by the first]
_WRITERS: dict = {}  # weight storage -> (the call changing it, its thread)
_READERS: dict = {}  # weight storage -> the threads reading it, one entry per call
_BUSY_LOCK = threading.Lock()


def _storages(model) -> set:
    """Where the model's weights live: the address of each parameter's storage (meta tensors have none); for an
    object that is not a module (a diffusers pipeline whose parts a call swaps), the object itself."""
    if not isinstance(model, torch.nn.Module):
        return {("object", id(model))}
    return {p.untyped_storage().data_ptr() for p in model.parameters() if p.device.type != "meta" and p.numel() > 0}


def _writer_of(keys: set) -> tuple[str, int] | None:
    return next((_WRITERS[key] for key in keys if key in _WRITERS), None)


@contextlib.contextmanager
def eval_mode(model, what: str = "this call") -> Iterator[None]:
    """Put `model` in eval mode inside the block; give every module back its own `training` flag on every exit path.

    Calls may overlap on one model (nested, or from several threads): the first to enter saves the flags and the
    last to leave restores them, so an overlap cannot leave the model in eval mode. A call of another thread that
    changes the model's weights in place (`exclusive`), on this model or on any module sharing its weights (a PEFT
    wrapper and its base model), cannot overlap the block: whichever comes second raises.

    Args:
        model: A `torch.nn.Module`.
        what: The caller's name, shown if it is refused.

    Raises:
        RuntimeError: If another thread is changing the model's weights in place.
    """
    me = threading.get_ident()
    keys = _storages(model)
    with _BUSY_LOCK:
        holder = _writer_of(keys)
        if holder is not None and holder[1] != me:
            raise RuntimeError(
                f"{what} reads the model, but {holder[0]} is changing its weights in place in another thread: wait "
                "for it to finish, or use a copy of the model."
            )
        entry = _EVAL.get(model)
        if entry is None:
            entry = _EVAL[model] = [0, _training_flags(model)]
            model.eval()
        entry[0] += 1
        for key in keys:
            _READERS.setdefault(key, []).append(me)
    try:
        yield
    finally:
        with _BUSY_LOCK:
            for key in keys:
                threads = _READERS[key]
                threads.remove(me)
                if not threads:
                    del _READERS[key]
            entry[0] -= 1
            if entry[0] == 0:
                del _EVAL[model]
                _set_training_flags(model, entry[1])


@contextlib.contextmanager
def restored(
    model, names: Iterable[str] | None = None, grads: bool = False
) -> Iterator[tuple[dict[str, torch.nn.Parameter], dict[str, torch.Tensor]]]:
    """Save parameters and give them back bit-exactly on every exit path (exceptions and KeyboardInterrupt included).

    Yields `(parameters, saved)`: the saved parameters by name and a clone of each one's value. On exit every
    saved value is copied back, `requires_grad` of *all* parameters and every module's `training` flag are
    restored, and with `grads=True` the saved parameters' `.grad` too.

    Args:
        model: A `torch.nn.Module`.
        names: Names (as in `model.named_parameters()`) of the parameters to save; None saves all of them.
        grads: Also save and restore `.grad` of the saved parameters.
    """
    params = dict(model.named_parameters())  # shared (tied) tensors appear once
    chosen = params if names is None else {name: params[name] for name in names}
    with torch.no_grad():
        saved = {name: p.detach().clone() for name, p in chosen.items()}
    requires_grad = {name: p.requires_grad for name, p in params.items()}
    saved_grads = {name: p.grad for name, p in chosen.items()} if grads else None
    modes = _training_flags(model)
    try:
        yield chosen, saved
    finally:
        with torch.no_grad():
            for name, p in chosen.items():
                p.copy_(saved[name])
        for name, p in params.items():
            p.requires_grad_(requires_grad[name])
        if saved_grads is not None:
            for name, p in chosen.items():
                p.grad = saved_grads[name]
        _set_training_flags(model, modes)


def changing_model(model) -> str | None:
    """The name of the library call changing `model`'s weights in place right now (through this model or any module
    sharing its weights), or None.

    Args:
        model: A `torch.nn.Module`.
    """
    holder = _writer_of(_storages(model))
    return None if holder is None else holder[0]


@contextlib.contextmanager
def exclusive(model, what: str) -> Iterator[None]:
    """Hold `model`'s weights for a call that changes them in place; refuse if another such call holds them.

    Every hf-memory function that changes a model in place (FastMem, the latent scan, the CE diagnostic) takes this
    guard, so two of them can never overlap on one model's weights, from one thread or several: the second raises a
    `RuntimeError` before any work starts, and the first restores the model undisturbed. Nor can it overlap a
    reading call of another thread (`eval_mode`: extraction, signals, fact capacity), which would see the weights
    move. The weights are what is held: a PEFT model and its base model, or any two modules sharing tensors, are one
    model here.

    Args:
        model: A `torch.nn.Module`.
        what: The caller's name, shown to whoever is refused.

    Raises:
        RuntimeError: If another call holds the model's weights.
    """
    me = threading.get_ident()
    keys = _storages(model)
    with _BUSY_LOCK:
        holder = _writer_of(keys)
        if holder is not None:
            raise RuntimeError(
                f"{what} changes the model's weights in place, but {holder[0]} is already doing so on this model (in "
                "this thread or another): wait for it to finish, or use a copy of the model."
            )
        if any(thread != me for key in keys for thread in _READERS.get(key, ())):
            raise RuntimeError(
                f"{what} changes the model's weights in place, but another thread is reading the model right now: "
                "wait for it to finish, or use a copy of the model."
            )
        for key in keys:
            _WRITERS[key] = (what, me)
    try:
        yield
    finally:
        with _BUSY_LOCK:
            for key in keys:
                _WRITERS.pop(key, None)
