"""FastMem (Zhu et al. 2024): memorize the prompt before answering, so an instruction model follows its context.

Before generating, only some layers' feed-forward blocks (by default the last layer's) are fine-tuned for a few steps
to raise the likelihood of the prompt, with a KL term that keeps the next-token distributions near the original
model's. `FastMem.memorize` is a context manager: inside it the model generates with the memorized weights; on every
exit (normal, exception, KeyboardInterrupt) the parameters, their `requires_grad` and `.grad`, and `model.training`
are restored bit for bit.

Why it is fast. Only the trained FFNs change, so everything below the earliest of them is computed once: the first
forward caches the inputs of the layers from there up. When only the last layer's FFN is trained, every step is
FFN → final norm → lm_head (the rest of that layer's output is cached too); otherwise every step re-runs the layers
from the earliest trained one, then final norm → lm_head. The loss's gradient with respect to the logits is written
in one pass (`MemorizationLoss`). The keys and values of every layer are unchanged by the last layer's FFN, so when
the memorized tokens are the prompt and only that FFN is trained, generation resumes from that first forward's KV
cache. Contrastive decoding runs one trunk and two FFN heads (memorized and original) per token. A batch of prompts
is memorized at once: each prompt gets its own copy of the FFN weights (a leading batch dimension), which AdamW
updates independently, and the FFN's linear modules apply each row's weights to its own row.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import Cache
from transformers.utils import logging

from .._utils import (
    FINAL_NORM,
    as_token_ids,
    cache_io,
    changing_model,
    check_vocabulary,
    exclusive,
    model_device,
    restored,
    supports_logits_to_keep,
)
from .config import FastMemConfig
from .ffn import MemorizedFFN, clip_per_row
from .inputs import positions_from_mask, prompt_batch, target_mask
from .loss import MemorizationLoss


if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedModel


logger = logging.get_logger(__name__)

MEMORIZE = "FastMem.memorize"


def is_memorizing(model: torch.nn.Module) -> bool:
    """Whether a `FastMem.memorize` block is active on `model` right now.

    Args:
        model: A transformers model.

    Returns:
        True inside a `memorize` block on this model (from any thread), else False.
    """
    return changing_model(model) == MEMORIZE


@dataclass
class MemorizedPrompt:
    """What `FastMem.memorize` yields: the per-step losses (means over prompts) and, when the memorized tokens can seed
    generation, the KV cache of all but the last token (`generate(input_ids=..., cache=...)` then skips the prefill).

    Each step's losses are measured before that step's update, so `loss[0]` is the original model's.

    Attributes:
        loss: Per step, NLL + λ·KL averaged over each prompt's memorized tokens, then over the prompts.
        nll: Per step, the negative log-likelihood of the memorized tokens, averaged the same way.
        kl: Per step, KL(p_original ‖ p_current) over the memorized positions, averaged the same way (0 at step 0).
        cache: The KV cache of `input_ids[:, :-1]` from the first forward, kept when the only memorized FFN is the
            last layer's (no key or value depends on it); None otherwise. Pass it to `generate` with the same
            `input_ids`, as `cache` or `past_key_values` (the keyword the transformers version uses); with
            `autocast_dtype` set it was computed under autocast, so decode under the same `torch.autocast`.
        fast_path: Whether the steps ran on cached inputs (FFN -> final norm -> lm_head, or the layers from the
            earliest trained one); False when each step ran a full forward.
    """

    loss: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    cache: object | None = None
    fast_path: bool = False


class FastMem:
    """Memorize prompts into one or more FFNs of `model`, temporarily.

    Building a `FastMem` checks the model, layers and settings; `memorize` does the work.

    Args:
        model: A decoder-only transformers causal LM whose FFN layout hf-memory knows (see `last_ffn_modules`).
        config: How to memorize; None uses the `FastMemConfig` defaults.

    Attributes:
        model: The model given.
        config: The settings in use.

    Raises:
        TypeError: If `config` is not a `FastMemConfig`.
        ValueError: If `config.layer` or `config.layers` is out of range for the model or names a layer twice, or
            `config.lora` targets none of a trained layer's FFN modules.
        NotImplementedError: If the model is encoder-decoder or of an unsupported architecture, its FFN has no
            linear modules (fused experts), or `contrastive` is set for anything but the last layer's FFN alone in
            an architecture with a known final norm.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
        >>> before = {k: v.clone() for k, v in model.state_dict().items()}
        >>> with FastMem(model, FastMemConfig(steps=3, lr=1e-2)).memorize(torch.arange(10)) as memorized:
        ...     memorized.nll[-1] < memorized.nll[0]
        True
        >>> all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        True
    """

    def __init__(self, model: PreTrainedModel, config: FastMemConfig | None = None):
        self.model = model
        self.config = config if config is not None else FastMemConfig()
        if not isinstance(self.config, FastMemConfig):
            raise TypeError(f"`config` must be a FastMemConfig, got {type(self.config).__name__}.")
        if getattr(model.config, "is_encoder_decoder", False):
            raise NotImplementedError(
                "FastMem memorizes the prompt of a decoder-only causal LM; this model is encoder-decoder."
            )
        self.ffn = MemorizedFFN(model, self.config)
        if self.config.contrastive and not self.ffn.ffn_only:
            raise NotImplementedError(
                f"`contrastive` needs the last layer's FFN alone (layer and layers None, or layer=-1) of an "
                f"architecture in {sorted(FINAL_NORM)}; got layer={self.config.layer}, layers={self.config.layers!r} "
                f"on {model.config.model_type!r}."
            )
        self._cache_name, self._cache_of = cache_io(model)
        self._position_ids = "position_ids" in inspect.signature(model.forward).parameters
        self._logits_to_keep = supports_logits_to_keep(model)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """`torch.autocast` in the config's `autocast_dtype` on the model's device type, or a null context."""
        if self.config.autocast_dtype is None:
            return contextlib.nullcontext()
        dtype = getattr(torch, self.config.autocast_dtype)
        return torch.autocast(device_type=model_device(self.model).type, dtype=dtype)

    @contextlib.contextmanager
    def memorize(
        self,
        input_ids: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]],
        loss_mask: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]] | None = None,
        attention_mask: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]] | None = None,
    ) -> Iterator[MemorizedPrompt]:
        """Fine-tune the FFN(s) on the prompt(s), yield a `MemorizedPrompt`, and restore the model on exit.

        Inside the block the model generates with the memorized weights (row r of a batch with prompt r's); with
        `autocast_dtype` set, the memorization ran under `torch.autocast`, and decoding inside the block should too,
        to match (`fastmem_generate` does so). On every exit path (normal, exception, KeyboardInterrupt) the FFNs'
        parameters and their `.grad`, every parameter's `requires_grad` and `model.training` are restored bit for
        bit. Two `memorize` blocks cannot be active on one model at once (a `RuntimeError`, also across threads).

        Args:
            input_ids: One prompt (1-D) or a left-padded batch (2-D) of token ids.
            loss_mask: Which tokens are memorized (same shape as `input_ids`); default: every real token after the
                first.
            attention_mask: For a padded batch, 1 on real tokens and 0 on padding.

        Yields:
            The `MemorizedPrompt` with the per-step losses and, when it can be reused, the prompt's KV cache.

        Raises:
            ValueError: If `input_ids` or a mask has a bad shape or type, a prompt has fewer than 2 real tokens, or
                `loss_mask` selects nothing to memorize in some prompt.
            RuntimeError: If a `memorize` block is already active on the model.
        """
        model, ffn, config = self.model, self.ffn, self.config
        # Memorizing trains: under a caller's `torch.inference_mode` (or `no_grad`) it runs in normal mode, on
        # normal tensors (an inference tensor can be neither trained through nor saved for backward).
        with torch.inference_mode(False):
            ids, attention = prompt_batch(input_ids, attention_mask, model_device(model))
            ids, attention = ids.clone(), attention.clone()
            check_vocabulary(ids[attention], model, "input_ids")
            mask = target_mask(loss_mask, ids, attention).clone()
        trained = [name for name, _ in model.named_parameters() if name.rpartition(".")[0] in ffn.linears]
        with contextlib.ExitStack() as stack:  # unwound in reverse: hooks, FFN patches, parameters, the lock
            stack.enter_context(exclusive(model, MEMORIZE))
            with torch.inference_mode(False):
                stack.enter_context(restored(model, names=trained, grads=True))
                stack.callback(ffn.reset)
                for p in model.parameters():
                    p.requires_grad_(False)
                model.eval()  # no dropout: the memorized distribution is the one generation will use
                ffn.patch()
                result = self._train(ids, attention, mask)
                ffn.rows = {name: {k: t.detach() for k, t in tensors.items()} for name, tensors in ffn.rows.items()}
                if ids.shape[0] == 1 and not config.contrastive:
                    with torch.no_grad():  # one prompt: write the weights in, so the model is a plain model inside
                        for name in ffn.linears:
                            for key, value in ffn.merged(name).items():
                                getattr(ffn.linears[name], key).copy_(value)
                    ffn.reset()
                elif config.contrastive:
                    for handle in self._contrastive_hooks(config.contrastive):
                        stack.callback(handle.remove)
            yield result

    def _forward_kwargs(self, ids, attention, use_cache):
        kwargs = {"input_ids": ids, "attention_mask": attention.long(), "use_cache": use_cache}
        if self._position_ids:
            kwargs["position_ids"] = positions_from_mask(attention)
        return kwargs

    def _train(self, ids, attention, mask) -> MemorizedPrompt:
        config, model, ffn = self.config, self.model, self.ffn
        inputs, in_mask, targets = ids[:, :-1], attention[:, :-1], ids[:, 1:][mask]
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(mask)[mask]
        counts = mask.sum(1)
        weights = (1.0 / counts.float())[rows]
        keep_cache = ffn.only_last_layer  # keys/values of every layer are unchanged by the last layer's FFN
        result = MemorizedPrompt(fast_path=ffn.fast_path)

        trunk = self._run_trunk(inputs, in_mask, keep_cache) if ffn.fast_path else None
        if trunk is not None:
            result.cache = trunk.pop("cache")

        tensors = ffn.init_rows(ids.shape[0], config.lora)
        ffn.mode = "rows"
        optimizer = torch.optim.AdamW(tensors, lr=config.lr, weight_decay=config.weight_decay)
        ref_probs = ref_neg_entropy = None
        for step in range(config.steps):
            with torch.enable_grad():
                with self._autocast():  # the forward only: the loss below is computed in float32
                    logits = self._cached_logits(trunk, mask, check=step == 0) if trunk is not None else None
                    if logits is None:
                        trunk = None
                        output = model(**self._forward_kwargs(inputs, in_mask, keep_cache and step == 0))
                        if step == 0 and keep_cache:
                            result.cache = self._cache_of(output)
                        logits = output.logits[mask]
                loss, nll, kl, ref_probs, ref_neg_entropy = MemorizationLoss.apply(
                    logits, targets, weights, float(config.kl_weight), ref_probs, ref_neg_entropy
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if config.max_grad_norm is not None:
                clip_per_row(tensors, config.max_grad_norm)
            optimizer.step()
            b = ids.shape[0]
            result.loss.append(loss.item() / b)
            result.nll.append((torch.zeros(b, device=nll.device).index_add_(0, rows, nll * weights).sum() / b).item())
            result.kl.append((torch.zeros(b, device=kl.device).index_add_(0, rows, kl * weights).sum() / b).item())
        result.fast_path = trunk is not None
        for t in tensors:
            t.grad = None
        return result

    def _cached_logits(self, trunk: dict, mask: torch.Tensor, check: bool) -> torch.Tensor | None:
        """The memorized positions' logits from the trunk's cached inputs: FFN -> norm -> lm_head, or the layers from
        the earliest trained one -> norm -> lm_head. With `check`, None (use full forwards) if the re-run layers do
        not give the trunk's last-layer output back."""
        ffn = self.ffn
        if ffn.ffn_only:
            out = ffn.container(*trunk["args"], **trunk["kwargs"])
            return ffn.lm_head(ffn.norm((trunk["rest"] + out)[mask]))
        hidden = trunk["hidden"]
        for layer, (args, kwargs) in zip(ffn.rerun, trunk["inputs"]):
            out = (
                layer(hidden, *args, **kwargs) if trunk["positional"] else layer(*args, hidden_states=hidden, **kwargs)
            )
            hidden = out[0] if isinstance(out, tuple) else out
        expected = trunk["layer"]
        if check and not torch.allclose(
            hidden.detach().float(), expected.float(), equal_nan=True, **self._tolerance()
        ):
            logger.warning_once("FastMem: re-running the layers does not reproduce the model; using full forwards.")
            return None
        return ffn.lm_head(ffn.norm(hidden[mask]))

    def _tolerance(self) -> dict[str, float]:
        return {"atol": 1e-3, "rtol": 1e-3} if self.config.autocast_dtype is None else {"atol": 3e-2, "rtol": 3e-2}

    def _run_trunk(self, inputs, in_mask, keep_cache) -> dict | None:
        """One no-grad forward with the original weights, capturing what the steps need: for `ffn_only`, the FFN's
        inputs and what the layer adds to its output; otherwise the inputs of every layer to re-run. Returns None
        (full forward every step) if the layer's output does not decompose that way or the head does not give the
        model's logits back."""
        ffn, captured, inputs_of = self.ffn, {}, {}

        def capture_container(_, args, kwargs, output):  # cloned: some layers add to it in place (Falcon)
            captured.update(
                args=args, kwargs=kwargs, out=output.clone() if isinstance(output, torch.Tensor) else output
            )

        def capture_layer(_, __, output):
            captured["layer"] = output[0] if isinstance(output, tuple) else output

        def capture_inputs(index):
            def hook(_, args, kwargs):
                inputs_of.setdefault(index, (args, kwargs))

            return hook

        last = ffn.layer if ffn.ffn_only else ffn.rerun[-1]
        handles = [last.register_forward_hook(capture_layer)]
        if ffn.ffn_only:
            handles.append(ffn.container.register_forward_hook(capture_container, with_kwargs=True))
        else:
            for index, layer in enumerate(ffn.rerun):
                handles.append(layer.register_forward_pre_hook(capture_inputs(index), with_kwargs=True))
        kwargs = self._forward_kwargs(inputs, in_mask, keep_cache)
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        try:
            with torch.no_grad(), self._autocast():
                output = self.model(**kwargs)
                check = ffn.lm_head(ffn.norm(captured["layer"][:, -1:])) if "layer" in captured else None
        finally:
            for handle in handles:
                handle.remove()
        # the head must give the model's own last logits back
        if check is None or not torch.allclose(check.float(), output.logits[:, -1:].float(), **self._tolerance()):
            logger.warning_once("FastMem: final norm + lm_head do not reproduce the logits; using full forwards.")
            return None
        trunk = {"layer": captured["layer"], "cache": self._cache_of(output) if keep_cache else None}
        if ffn.ffn_only:
            if not isinstance(captured.get("out"), torch.Tensor) or captured["out"].shape != captured["layer"].shape:
                logger.warning_once("FastMem: the FFN output does not match the layer output; using full forwards.")
                return None
            trunk.update(args=captured["args"], kwargs=captured["kwargs"], rest=captured["layer"] - captured["out"])
            return trunk
        if len(inputs_of) != len(ffn.rerun):
            logger.warning_once("FastMem: a layer to re-run was not called by the forward; using full forwards.")
            return None
        first_args, first_kwargs = inputs_of[0]
        trunk["positional"] = bool(first_args)
        trunk["hidden"] = first_args[0] if first_args else first_kwargs["hidden_states"]
        trunk["inputs"] = [_replayable(*inputs_of[index]) for index in range(len(ffn.rerun))]
        return trunk

    def _contrastive_hooks(self, alpha: float) -> list:
        """FastMem+CD on one trunk: the FFN output with the original weights is computed next to the memorized one,
        and the logits become (1+α)·memorized − α·original."""
        ffn, state = self.ffn, {}

        def on_container(_, args, kwargs, output):
            ffn.mode = "base"
            try:
                state["delta"] = ffn.container.forward(*args, **kwargs) - output  # .forward: not this hook again
            finally:
                ffn.mode = "rows"

        def on_layer(_, __, output):
            state["layer"] = output[0] if isinstance(output, tuple) else output

        def on_lm_head(_, args):
            # lm_head is affine, so (1+α)·lm_head(z_mem) − α·lm_head(z_orig) = lm_head((1+α)·z_mem − α·z_orig):
            # the original model's logits never need a vocabulary-sized pass of their own.
            hidden = args[0]
            n = hidden.shape[1]
            original = ffn.norm(state["layer"][:, -n:] + state["delta"][:, -n:])
            return ((1 + alpha) * hidden - alpha * original,)

        return [
            ffn.container.register_forward_hook(on_container, with_kwargs=True),
            ffn.layer.register_forward_hook(on_layer),
            ffn.lm_head.register_forward_pre_hook(on_lm_head),
        ]


def _rows_per_prompt(model, generate_kwargs: dict) -> int:
    """How many rows `generate` runs per prompt: beams times returned sequences, as its arguments and config say."""
    config = generate_kwargs.get("generation_config") or getattr(model, "generation_config", None)

    def setting(name):
        value = generate_kwargs.get(name)
        return value if value is not None else (getattr(config, name, None) or 1)

    return int(setting("num_beams")) * int(setting("num_return_sequences"))


def fastmem_generate(
    model: PreTrainedModel,
    input_ids: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]],
    config: FastMemConfig | None = None,
    memorize_ids: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]] | None = None,
    loss_mask: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]] | None = None,
    attention_mask: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]] | None = None,
    **generate_kwargs: Any,
) -> Any:
    """Memorize `memorize_ids` (default: the prompt itself), run `model.generate(input_ids, ...)`, restore the model,
    and return what `generate` returned.

    A batch of prompts (left-padded, with `attention_mask`) is memorized at once, one set of FFN weights per prompt.
    When the prompt itself is memorized into the last layer's FFN alone, generation reuses the memorization's KV
    cache. With `autocast_dtype` set, `generate` runs under the same `torch.autocast` as the memorization.

    The paper memorizes the context only (as an assistant turn), then answers a prompt that holds the context and the
    question: pass that turn as `memorize_ids` and `loss_mask` (see `context_as_assistant_turn`). Without them the
    whole prompt is memorized, which skips a second prefill.

    Args:
        model: A decoder-only transformers causal LM (see `FastMem`).
        input_ids: The prompt to generate from: one prompt (1-D) or a left-padded batch (2-D) of token ids.
        config: How to memorize; None uses the `FastMemConfig` defaults.
        memorize_ids: The tokens to memorize instead of the prompt, e.g. from `context_as_assistant_turn`: one
            sequence (its weights serve every prompt) or one per prompt; unpadded, as `attention_mask` is not applied
            to them.
        loss_mask: Which tokens of the memorized ids are memorized (their shape); default: every real token after
            the first.
        attention_mask: For a padded batch of prompts, 1 on real tokens and 0 on padding; used for memorizing the
            prompts and for generating.
        **generate_kwargs: Passed to `model.generate` (e.g. `max_new_tokens`, `do_sample`).

    Returns:
        What `model.generate` returns: the token ids, or a `GenerateOutput` when `return_dict_in_generate=True`.

    Raises:
        ValueError: If the ids or masks have a bad shape or type, `memorize_ids` has neither one row nor one row per
            prompt, or nothing is left to memorize in some prompt.
        RuntimeError: If a `FastMem.memorize` block is already active on the model.
    """
    fastmem = FastMem(model, config)
    prompt = as_token_ids(input_ids, "input_ids")
    prompt = (prompt[None] if prompt.dim() == 1 else prompt).to(model.device)
    same = memorize_ids is None
    if not same:  # (a memorized prompt is checked by `memorize`)
        check_vocabulary(prompt, model, "input_ids")  # padding ids are in the vocabulary too
        memorized_rows = as_token_ids(memorize_ids, "memorize_ids")
        memorized_rows = 1 if memorized_rows.dim() == 1 else memorized_rows.shape[0]
        if memorized_rows not in (1, prompt.shape[0]):
            raise ValueError(
                f"`memorize_ids` must hold one sequence for every prompt ({prompt.shape[0]}) or one for all, got "
                f"{memorized_rows}."
            )
    with fastmem.memorize(
        input_ids if same else memorize_ids, loss_mask=loss_mask, attention_mask=attention_mask if same else None
    ) as memorized:
        if attention_mask is not None:
            generate_kwargs["attention_mask"] = torch.as_tensor(attention_mask).reshape(prompt.shape).to(model.device)
        if same and memorized.cache is not None and _rows_per_prompt(model, generate_kwargs) == 1:
            # Beams and extra return sequences expand the batch inside generate; a cache of one row per prompt
            # would not match, so generation then prefills again (the memorized weights expand with the rows).
            generate_kwargs[fastmem._cache_name] = memorized.cache
        with torch.inference_mode(), fastmem._autocast():
            return model.generate(input_ids=prompt, **generate_kwargs)


def _replayable(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A layer's captured call without its hidden states (the steps pass their own) and without a KV cache (a re-run
    must not append to it): the arguments the steps call the layer with."""
    args = tuple(None if isinstance(a, Cache) else a for a in args[1:])
    kwargs = {k: None if isinstance(v, Cache) else v for k, v in kwargs.items() if k != "hidden_states"}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs
