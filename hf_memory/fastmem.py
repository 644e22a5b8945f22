"""FastMem (Zhu et al. 2024): memorize the prompt before answering, so an instruction model follows its context.

Before generating, only one layer's feed-forward block (by default the last) is fine-tuned for a few steps to raise
the likelihood of the prompt, with a KL term that keeps the next-token distributions near the original model's.
`FastMem.memorize` is a context manager: inside it the model generates with the memorized weights; on every exit
(normal, exception, KeyboardInterrupt) the parameters, their `requires_grad` and `.grad`, and `model.training` are
restored bit for bit.

Why it is fast. Only the FFN of the last layer changes, so everything below it is computed once: the first forward
caches the FFN's input and the rest of the layer's output, and every step is FFN → final norm → lm_head, with the
loss's gradient with respect to the logits written in one pass (`_MemorizationLoss`). The keys and values of every
layer are unchanged by FastMem, so when the memorized tokens are the prompt, generation resumes from that first
forward's KV cache. Contrastive decoding runs one trunk and two FFN heads (memorized and original) per token. A batch
of prompts is memorized at once: each prompt gets its own copy of the FFN weights (a leading batch dimension), which
AdamW updates independently, and the FFN's linear modules apply each row's weights to its own row.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from peft import LoraConfig
from torch import nn
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging

from ._token_ids import as_token_ids
from .extraction import _cache_io, _supports_logits_to_keep
from .last_ffn import _find_layers, _LAYOUTS, last_ffn_modules

logger = logging.get_logger(__name__)

_ACTIVE_ATTRIBUTE = "_hf_memory_fastmem_active"
_LOCK = threading.Lock()

# Final norm applied to the last layer's output, for architectures whose layer output is "something that does not
# depend on the FFN weights + the FFN module's output" (true of all of these, checked in the tests). Others (OPT,
# whose FFN has no module of its own; Gemma 2/3, which normalise the FFN output) run the full forward every step.
_FINAL_NORM = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"), "model.norm"),
    "phi": "model.final_layernorm",
    "gpt_neox": "gpt_neox.final_layer_norm",
    **dict.fromkeys(("gpt2", "gptj", "falcon", "bloom"), "transformer.ln_f"),
}


@dataclass
class FastMemConfig:
    """How FastMem memorizes: optimizer steps, learning rate, KL weight, which layer's FFN, full-rank or LoRA update,
    gradient clipping, and the contrastive-decoding weight used while generating inside `memorize`.

    Example:
        >>> FastMemConfig(steps=5).steps
        5
    """

    steps: int = field(default=10, metadata={"help": "AdamW steps on the memorized tokens (a fresh optimizer each time)."})
    lr: float = field(default=1e-4, metadata={"help": "Constant learning rate of those steps."})
    kl_weight: float = field(
        default=0.1, metadata={"help": "λ in NLL + λ·KL(p_original ‖ p_current) over the memorized positions."}
    )
    layer: int = field(default=-1, metadata={"help": "Transformer layer whose FFN is updated (negative = from the end)."})
    lora: LoraConfig | None = field(
        default=None,
        metadata={"help": "None: full-rank update of the FFN (the paper). A peft.LoraConfig (e.g. from "
                  "last_ffn_lora_config): a low-rank update with its r, lora_alpha and use_rslora."},
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient-norm clip per prompt and step; None = off."})
    contrastive: float = field(
        default=0.0,
        metadata={"help": "α of FastMem+CD: inside `memorize` the logits are (1+α)·memorized − α·original; 0 = off."},
    )

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"`steps` must be an integer >= 1, got {self.steps!r}.")
        if not _is_number(self.lr) or not self.lr > 0:
            raise ValueError(f"`lr` must be a number > 0, got {self.lr!r}.")
        if not _is_number(self.kl_weight) or self.kl_weight < 0:
            raise ValueError(f"`kl_weight` must be a number >= 0, got {self.kl_weight!r}.")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise ValueError(f"`layer` must be an integer layer index, got {self.layer!r}.")
        if self.max_grad_norm is not None and (not _is_number(self.max_grad_norm) or not self.max_grad_norm > 0):
            raise ValueError(f"`max_grad_norm` must be a number > 0 or None, got {self.max_grad_norm!r}.")
        if not _is_number(self.contrastive) or self.contrastive < 0:
            raise ValueError(f"`contrastive` must be a number >= 0 (α; 0 turns it off), got {self.contrastive!r}.")
        if self.lora is not None:
            if not isinstance(self.lora, LoraConfig):
                raise ValueError(f"`lora` must be None or a peft.LoraConfig, got {type(self.lora).__name__}.")
            if self.lora.use_dora:
                raise ValueError("`lora` has use_dora=True: FastMem supports plain LoRA only (use_dora=False).")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class MemorizedPrompt:
    """What `FastMem.memorize` yields: the per-step losses (means over prompts) and, when the memorized tokens can seed
    generation, the KV cache of all but the last token (`generate(input_ids=..., cache=...)` then skips the prefill)."""

    loss: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    cache: object | None = None
    fast_path: bool = False


class _MemorizationLoss(torch.autograd.Function):
    """Σ_i w_i·(NLL_i + λ·KL(p_ref,i ‖ p_i)) over selected positions, with d/dlogits = w·((1+λ)·p − λ·p_ref − onehot)
    computed in the forward: a few passes over the (positions × vocabulary) logits instead of autograd's many.

    With `ref_probs=None` (the first step) p_ref is p itself: the KL and its gradient are zero, and the probabilities
    and their negative entropy are returned for the later steps.
    """

    @staticmethod
    def forward(ctx, logits, targets, weights, kl_weight, ref_probs, ref_neg_entropy):
        ctx.set_materialize_grads(False)  # no zero-filled (positions × vocabulary) grads for the side outputs
        ctx.input_dtype = logits.dtype
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        top = logits.amax(dim=-1, keepdim=True)
        grad = torch.sub(logits, top).exp_()
        total = grad.sum(dim=-1)
        lse = top[:, 0] + total.log()
        grad.div_(total[:, None])  # the probabilities p
        nll = lse - logits.gather(1, targets[:, None])[:, 0]
        if ref_probs is None:
            ref_probs = grad.clone()
            ref_neg_entropy = torch.einsum("nv,nv->n", ref_probs, logits) - lse
            kl = torch.zeros_like(nll)
        else:
            kl = ref_neg_entropy - torch.einsum("nv,nv->n", ref_probs, logits) + lse
        if kl_weight:
            grad.mul_(1 + kl_weight).sub_(ref_probs, alpha=kl_weight)
        grad[torch.arange(len(targets), device=grad.device), targets] -= 1
        grad.mul_(weights[:, None])
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(nll, kl, ref_probs, ref_neg_entropy)
        loss = (weights * (nll + kl_weight * kl)).sum()
        return loss, nll, kl, ref_probs, ref_neg_entropy

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (grad,) = ctx.saved_tensors
        grad = grad.mul_(grad_loss).to(ctx.input_dtype)  # the graph is used once: scale in place
        return grad, None, None, None, None, None


class _FFN:
    """The FFN being memorized into: its linear modules, their original tensors, the per-prompt trainable copies, and
    (for the fast path) the modules between it and the logits."""

    def __init__(self, model, config: FastMemConfig):
        names = last_ffn_modules(model, layer=config.layer)  # bad layer -> ValueError, unknown arch -> NotImplementedError
        modules = dict(model.named_modules())
        if not all(isinstance(modules.get(name), (nn.Linear, Conv1D)) for name in names):
            raise NotImplementedError(
                f"FastMem updates the FFN's linear modules, but this {model.config.model_type} model keeps its FFN in "
                f"fused expert parameters {names}; memorize into a dense layer's FFN instead."
            )
        self.linears = {name: modules[name] for name in names}
        self.lora = _lora_targets(config.lora, names)
        spec = _LAYOUTS[model.config.model_type]["decoder"]
        prefix, num_layers = _find_layers(model, spec.layers)
        self.layer_name = f"{prefix}.{config.layer % num_layers}"
        self.is_last_layer = config.layer % num_layers == num_layers - 1
        self.container_name = ".".join(_common_prefix([name.split(".") for name in names]))
        norm = _FINAL_NORM.get(model.config.model_type)
        self.fast_path = (
            self.is_last_layer and self.container_name != self.layer_name and norm in modules
            and model.get_output_embeddings() is not None
        )
        self.layer, self.container = modules[self.layer_name], modules[self.container_name]
        self.norm, self.lm_head = modules.get(norm), model.get_output_embeddings()
        self.mode = "base"  # "base": original weights; "rows": per-prompt weights in `self.rows`
        self.rows: dict[str, dict[str, torch.Tensor]] = {}
        self.lora_scale = 0.0
        self._saved_forwards = {}

    # --- per-prompt weights -------------------------------------------------------------------------------------
    def init_rows(self, batch: int, lora: LoraConfig | None) -> list[torch.Tensor]:
        self.rows = {}
        for name, module in self.linears.items():
            if name in self.lora:
                fan_in, fan_out = _fan_in_out(module)
                a = torch.empty(batch, lora.r, fan_in, device=module.weight.device, dtype=module.weight.dtype)
                for row in a:  # peft's default LoRA initialisation: A Kaiming-uniform, B zero
                    nn.init.kaiming_uniform_(row, a=math.sqrt(5))
                b = torch.zeros(batch, fan_out, lora.r, device=a.device, dtype=a.dtype)
                self.rows[name] = {"lora_A": a.requires_grad_(), "lora_B": b.requires_grad_()}
            elif lora is None:
                self.rows[name] = {
                    key: p.detach().expand(batch, *p.shape).clone().requires_grad_()
                    for key, p in module.named_parameters(recurse=False)
                }
        if lora is not None:
            self.lora_scale = lora.lora_alpha / (math.sqrt(lora.r) if lora.use_rslora else lora.r)
        return [t for tensors in self.rows.values() for t in tensors.values()]

    def merged(self, name: str, row: int = 0) -> dict[str, torch.Tensor]:
        """Row `row`'s weights in the module's own layout."""
        module, tensors = self.linears[name], self.rows.get(name, {})
        if "lora_A" not in tensors:
            return {key: t[row] for key, t in tensors.items()}
        delta = self.lora_scale * tensors["lora_B"][row] @ tensors["lora_A"][row]
        return {"weight": module.weight + (delta.T if isinstance(module, Conv1D) else delta)}

    # --- forward replacement of the FFN's linear modules --------------------------------------------------------
    def patch(self):
        for name, module in self.linears.items():
            self._saved_forwards[name] = module.__dict__.get("forward")
            module.forward = _PatchedForward(self, name, module)

    def unpatch(self):
        for name, module in self.linears.items():
            if name in self._saved_forwards:
                saved = self._saved_forwards.pop(name)
                if saved is None:
                    del module.forward
                else:
                    module.forward = saved


class _PatchedForward:
    """Replaces one FFN linear module's forward: row r of the batch goes through prompt r's weights."""

    def __init__(self, ffn: _FFN, name: str, module: nn.Module):
        self.ffn, self.name, self.module = ffn, name, module

    def __call__(self, x):
        ffn, module = self.ffn, self.module
        tensors = ffn.rows.get(self.name)
        if ffn.mode == "base" or not tensors:
            return type(module).forward(module, x)
        if x.dim() == 2:  # (batch·length, features), flattened batch-major (OPT): prompt r's rows are contiguous
            prompts = next(iter(tensors.values())).shape[0]
            return self(x.reshape(prompts, -1, x.shape[-1])).reshape(x.shape[0], -1)
        rows = x.shape[0]
        if rows == 1 and "weight" in tensors:  # one prompt: a plain matmul, not a batched one
            weight, bias = tensors["weight"][0], tensors["bias"][0] if "bias" in tensors else None
            return x @ weight + (0 if bias is None else bias) if isinstance(module, Conv1D) else F.linear(x, weight, bias)
        if "lora_A" in tensors:
            a, b = (_expand_rows(tensors[k], rows) for k in ("lora_A", "lora_B"))
            return type(module).forward(module, x) + ffn.lora_scale * ((x @ a.mT) @ b.mT)
        weight = _expand_rows(tensors["weight"], rows)
        out = x @ (weight if isinstance(module, Conv1D) else weight.mT)
        if "bias" in tensors:
            out = out + _expand_rows(tensors["bias"], rows)[:, None]
        return out


def _expand_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] in (1, rows):
        return t
    if rows % t.shape[0]:
        raise RuntimeError(f"FastMem memorized {t.shape[0]} prompts but the model got a batch of {rows} rows.")
    return t.repeat_interleave(rows // t.shape[0], dim=0)  # num_return_sequences / beams, as generate expands


def _fan_in_out(module) -> tuple[int, int]:
    return tuple(module.weight.shape) if isinstance(module, Conv1D) else tuple(module.weight.shape[::-1])


def _common_prefix(parts: list[list[str]]) -> list[str]:
    prefix = []
    for pieces in zip(*parts):
        if len(set(pieces)) != 1:
            break
        prefix.append(pieces[0])
    return prefix[:-1] if len(parts) == 1 else prefix


def _lora_targets(lora: LoraConfig | None, names: list[str]) -> set[str]:
    if lora is None:
        return set()
    targets = lora.target_modules
    if targets is None:
        return set(names)
    if isinstance(targets, str):
        raise ValueError("`lora.target_modules` is a regex; FastMem needs module names (e.g. from last_ffn_lora_config).")
    chosen = {name for name in names if any(name == t or name.endswith("." + t) for t in targets)}
    if not chosen:
        raise ValueError(f"`lora.target_modules` {sorted(targets)} names none of this layer's FFN modules {names}.")
    return chosen


def _prompt_batch(input_ids, attention_mask, device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = as_token_ids(input_ids, "input_ids")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2:
        raise ValueError(f"`input_ids` must have shape (length,) or (batch, length), got {tuple(ids.shape)}.")
    if attention_mask is None:
        mask = torch.ones_like(ids, dtype=torch.bool)
    else:
        mask = torch.as_tensor(attention_mask).bool()
        if mask.dim() == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"`attention_mask` must have the shape of `input_ids` {tuple(ids.shape)}, got {tuple(mask.shape)}.")
    if ids.shape[1] < 2 or (mask.sum(1) < 2).any():
        raise ValueError("`input_ids` is empty or a single token: FastMem needs at least 2 tokens per prompt to memorize.")
    return ids.to(device), mask.to(device)


def _loss_mask(loss_mask, ids, attention_mask) -> torch.Tensor:
    """Bool mask over targets ids[:, 1:]: which next-token predictions are memorized."""
    if loss_mask is None:
        mask = attention_mask.clone()
    else:
        mask = torch.as_tensor(loss_mask, device=ids.device)
        if mask.dim() == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"`loss_mask` must have the shape of `input_ids` {tuple(ids.shape)}, got {tuple(mask.shape)}.")
        mask = mask.bool() & attention_mask
    mask = mask[:, 1:] & attention_mask[:, :-1]  # token i is a target when it and the token before it are real
    if not mask.any(dim=1).all():
        raise ValueError("`loss_mask` selects no token after the first in some prompt: nothing to memorize there.")
    return mask


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions as `generate` computes them from a (left-padded) attention mask."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(~attention_mask, 0)


class FastMem:
    """Memorize prompts into one FFN of `model`, temporarily.

    Example:
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

    def __init__(self, model, config: FastMemConfig | None = None):
        self.model = model
        self.config = config if config is not None else FastMemConfig()
        if not isinstance(self.config, FastMemConfig):
            raise TypeError(f"`config` must be a FastMemConfig, got {type(self.config).__name__}.")
        if getattr(model.config, "is_encoder_decoder", False):
            raise NotImplementedError("FastMem memorizes the prompt of a decoder-only causal LM; this model is encoder-decoder.")
        self.ffn = _FFN(model, self.config)
        if self.config.contrastive and not self.ffn.fast_path:
            raise NotImplementedError(
                f"`contrastive` needs the last layer's FFN (layer=-1) of an architecture in {sorted(_FINAL_NORM)}; "
                f"got layer={self.config.layer} on {model.config.model_type!r}."
            )
        self._cache_name, self._cache_of = _cache_io(model)
        self._position_ids = "position_ids" in inspect.signature(model.forward).parameters
        self._logits_to_keep = _supports_logits_to_keep(model)

    @contextlib.contextmanager
    def memorize(self, input_ids, loss_mask=None, attention_mask=None):
        """Fine-tune the FFN on `input_ids` (one prompt, or a left-padded batch with `attention_mask`; targets: every
        real token after the first, or where `loss_mask` is True) and yield a `MemorizedPrompt`. Inside, the model
        generates with the memorized weights (row r of a batch with prompt r's); on exit it is restored."""
        model, ffn, config = self.model, self.ffn, self.config
        with _LOCK:
            if getattr(model, _ACTIVE_ATTRIBUTE, False):
                raise RuntimeError("FastMem.memorize is already active on this model: exit it before memorizing again.")
            setattr(model, _ACTIVE_ATTRIBUTE, True)
        params = {name: p for name, p in model.named_parameters()}
        trained = {name: p for name, p in params.items() if name.rpartition(".")[0] in ffn.linears}
        saved = {name: p.detach().clone() for name, p in trained.items()}
        grads = {name: p.grad for name, p in trained.items()}
        requires_grad = {name: p.requires_grad for name, p in params.items()}
        was_training = model.training
        cd_handles = []
        try:
            ids, attention = _prompt_batch(input_ids, attention_mask, next(model.parameters()).device)
            mask = _loss_mask(loss_mask, ids, attention)
            for p in params.values():
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
                ffn.unpatch()
                ffn.rows = {}
            elif config.contrastive:
                cd_handles = self._contrastive_hooks(config.contrastive)
            yield result
        finally:
            for handle in cd_handles:
                handle.remove()
            ffn.unpatch()
            ffn.rows, ffn.mode = {}, "base"
            with torch.no_grad():
                for name, p in trained.items():
                    p.copy_(saved[name])
                    p.grad = grads[name]
            for name, p in params.items():
                p.requires_grad_(requires_grad[name])
            model.train(was_training)
            setattr(model, _ACTIVE_ATTRIBUTE, False)

    def _forward_kwargs(self, ids, attention, use_cache):
        kwargs = {"input_ids": ids, "attention_mask": attention.long(), "use_cache": use_cache}
        if self._position_ids:
            kwargs["position_ids"] = _position_ids(attention)
        return kwargs

    def _train(self, ids, attention, mask) -> MemorizedPrompt:
        config, model, ffn = self.config, self.model, self.ffn
        inputs, in_mask, targets = ids[:, :-1], attention[:, :-1], ids[:, 1:][mask]
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(mask)[mask]
        counts = mask.sum(1)
        weights = (1.0 / counts.float())[rows]
        keep_cache = ffn.is_last_layer  # keys/values of every layer are unchanged by the last layer's FFN
        result = MemorizedPrompt(fast_path=ffn.fast_path)

        trunk = self._run_trunk(inputs, in_mask, keep_cache) if ffn.fast_path else None
        if trunk is not None:
            result.cache = trunk.pop("cache")
        else:
            result.fast_path = False

        tensors = ffn.init_rows(ids.shape[0], config.lora)
        ffn.mode = "rows"
        optimizer = torch.optim.AdamW(tensors, lr=config.lr, weight_decay=0.0)
        ref_probs = ref_neg_entropy = None
        for step in range(config.steps):
            with torch.enable_grad():
                if trunk is not None:
                    out = ffn.container(*trunk["args"], **trunk["kwargs"])
                    hidden = (trunk["rest"] + out)[mask]
                    logits = ffn.lm_head(ffn.norm(hidden))
                else:
                    output = model(**self._forward_kwargs(inputs, in_mask, keep_cache and step == 0))
                    if step == 0 and keep_cache:
                        result.cache = self._cache_of(output)
                    logits = output.logits[mask]
                loss, nll, kl, ref_probs, ref_neg_entropy = _MemorizationLoss.apply(
                    logits, targets, weights, float(config.kl_weight), ref_probs, ref_neg_entropy
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            if config.max_grad_norm is not None:
                _clip_per_row(tensors, config.max_grad_norm)
            optimizer.step()
            b = ids.shape[0]
            result.loss.append(loss.item() / b)
            result.nll.append((torch.zeros(b, device=nll.device).index_add_(0, rows, nll * weights).sum() / b).item())
            result.kl.append((torch.zeros(b, device=kl.device).index_add_(0, rows, kl * weights).sum() / b).item())
        for t in tensors:
            t.grad = None
        return result

    def _run_trunk(self, inputs, in_mask, keep_cache) -> dict | None:
        """One no-grad forward with the original weights, capturing the FFN's inputs and what the layer adds to its
        output. Returns None (full forward every step) if the layer's output does not decompose that way."""
        ffn, captured = self.ffn, {}

        def capture_container(_, args, kwargs, output):  # cloned: some layers add to it in place (Falcon)
            captured.update(args=args, kwargs=kwargs, out=output.clone() if isinstance(output, torch.Tensor) else output)

        def capture_layer(_, __, output):
            captured["layer"] = output[0] if isinstance(output, tuple) else output

        handles = [
            ffn.container.register_forward_hook(capture_container, with_kwargs=True),
            ffn.layer.register_forward_hook(capture_layer),
        ]
        kwargs = self._forward_kwargs(inputs, in_mask, keep_cache)
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        try:
            with torch.no_grad():
                output = self.model(**kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if not isinstance(captured.get("out"), torch.Tensor) or captured["out"].shape != captured["layer"].shape:
            logger.warning_once("FastMem: the FFN output does not match the layer output; using full forwards.")
            return None
        rest = captured["layer"] - captured["out"]
        with torch.no_grad():  # the decomposition must give the model's own last logits back
            check = ffn.lm_head(ffn.norm(captured["layer"][:, -1:]))
        if not torch.allclose(check.float(), output.logits[:, -1:].float(), atol=1e-3, rtol=1e-3):
            logger.warning_once("FastMem: final norm + lm_head do not reproduce the logits; using full forwards.")
            return None
        return {"args": captured["args"], "kwargs": captured["kwargs"], "rest": rest,
                "cache": self._cache_of(output) if keep_cache else None}

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


def _clip_per_row(tensors: list[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_ for each prompt's own weights (row r of every tensor)."""
    norms = torch.stack([t.grad.flatten(1).float().pow(2).sum(1) for t in tensors]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for t in tensors:
        t.grad.mul_(scale.view(-1, *([1] * (t.dim() - 1))).to(t.grad.dtype))


def fastmem_generate(
    model, input_ids, config: FastMemConfig | None = None, memorize_ids=None, loss_mask=None, attention_mask=None,
    **generate_kwargs,
):
    """Memorize `memorize_ids` (default: the prompt itself), run `model.generate(input_ids, ...)`, restore the model,
    and return what `generate` returned.

    A batch of prompts (left-padded, with `attention_mask`) is memorized at once, one set of FFN weights per prompt.
    When the prompt itself is memorized with the last layer's FFN, generation reuses the memorization's KV cache.
    """
    fastmem = FastMem(model, config)
    prompt = as_token_ids(input_ids, "input_ids")
    prompt = (prompt[None] if prompt.dim() == 1 else prompt).to(model.device)
    same = memorize_ids is None
    with fastmem.memorize(
        input_ids if same else memorize_ids, loss_mask=loss_mask, attention_mask=attention_mask if same else None
    ) as memorized:
        if attention_mask is not None:
            generate_kwargs["attention_mask"] = torch.as_tensor(attention_mask).reshape(prompt.shape).to(model.device)
        if same and memorized.cache is not None:
            generate_kwargs[fastmem._cache_name] = memorized.cache
        with torch.inference_mode():
            return model.generate(input_ids=prompt, **generate_kwargs)


def context_as_assistant_turn(tokenizer, context: str) -> dict:
    """The paper's memorization input: `context` as an assistant turn of the tokenizer's chat template.

    Returns `input_ids` (1, length) and a `loss_mask` selecting the context tokens and the end-of-turn token after
    them, for `FastMem.memorize(**context_as_assistant_turn(tokenizer, context))`.
    """
    if not context:
        raise ValueError("`context` is empty: there is nothing to memorize.")
    text = tokenizer.apply_chat_template([{"role": "assistant", "content": context}], tokenize=False)
    start = text.rindex(context)
    end = start + len(context)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = encoded["offset_mapping"]
    mask = [s < end and e > start for s, e in spans]
    after = [i for i, (s, _) in enumerate(spans) if s >= end]
    if after:  # the end-of-turn token closes the memorized turn
        mask[after[0]] = True
    return {"input_ids": torch.tensor([encoded["input_ids"]]), "loss_mask": torch.tensor([mask])}
