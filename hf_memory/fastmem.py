"""FastMem (Zhu et al. 2024): memorize the prompt before answering, so an instruction model follows its context.

Before generating, only one layer's feed-forward block (by default the last) is fine-tuned for a few steps to raise
the likelihood of the prompt, with a KL term that keeps the next-token distributions near the original model's.
`FastMem.memorize` is a context manager: inside it the model generates with the memorized weights; on every exit
(normal, exception, KeyboardInterrupt) the parameters, their `requires_grad` and `model.training` are restored
bit for bit.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ._token_ids import as_token_ids
from .last_ffn import last_ffn_modules

_ACTIVE_ATTRIBUTE = "_hf_memory_fastmem_active"
_LOCK = threading.Lock()


@dataclass
class FastMemConfig:
    """How FastMem memorizes: optimizer steps, learning rate, KL weight, which layer's FFN, gradient clipping.

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
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient-norm clip per step; None = off."})

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"`steps` must be an integer >= 1, got {self.steps!r}.")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            raise ValueError(f"`lr` must be a number > 0, got {self.lr!r}.")
        if not isinstance(self.kl_weight, (int, float)) or isinstance(self.kl_weight, bool) or self.kl_weight < 0:
            raise ValueError(f"`kl_weight` must be a number >= 0, got {self.kl_weight!r}.")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise ValueError(f"`layer` must be an integer layer index, got {self.layer!r}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"`max_grad_norm` must be > 0 or None, got {self.max_grad_norm!r}.")


def _prompt_tensor(input_ids, device) -> torch.Tensor:
    ids = as_token_ids(input_ids, "input_ids")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"`input_ids` must be one prompt, shape (length,) or (1, length), got {tuple(ids.shape)}.")
    if ids.shape[1] < 2:
        raise ValueError("`input_ids` is empty or a single token: FastMem needs at least 2 tokens to memorize.")
    return ids.to(device)


class FastMem:
    """Memorize prompts into one FFN of `model`, temporarily.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> _ = torch.manual_seed(0)
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
        >>> before = {k: v.clone() for k, v in model.state_dict().items()}
        >>> with FastMem(model, FastMemConfig(steps=3, lr=1e-2)).memorize(torch.arange(10)) as stats:
        ...     stats["loss"][-1] < stats["loss"][0]
        True
        >>> all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        True
    """

    def __init__(self, model, config: FastMemConfig | None = None):
        self.model = model
        self.config = config if config is not None else FastMemConfig()
        if not isinstance(self.config, FastMemConfig):
            raise TypeError(f"`config` must be a FastMemConfig, got {type(self.config).__name__}.")
        names = set(last_ffn_modules(model, layer=self.config.layer))  # modules, or fused expert parameters
        self.parameters = {
            name: param for name, param in model.named_parameters() if name in names or name.rpartition(".")[0] in names
        }

    @contextlib.contextmanager
    def memorize(self, input_ids, loss_mask=None):
        """Fine-tune the FFN on `input_ids` (targets: every token after the first, or where `loss_mask` is True),
        yield `{"loss": [...], "nll": [...], "kl": [...]}` per step, and restore the model on exit."""
        model = self.model
        with _LOCK:
            if getattr(model, _ACTIVE_ATTRIBUTE, False):
                raise RuntimeError("FastMem.memorize is already active on this model: exit it before memorizing again.")
            setattr(model, _ACTIVE_ATTRIBUTE, True)
        saved = {name: p.detach().clone() for name, p in self.parameters.items()}
        grads = {name: p.grad for name, p in self.parameters.items()}
        requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        was_training = model.training
        try:
            ids = _prompt_tensor(input_ids, next(model.parameters()).device)
            targets = ids[:, 1:]
            mask = torch.ones_like(targets, dtype=torch.bool) if loss_mask is None else _loss_mask(loss_mask, ids)
            stats = self._train(ids, targets, mask)
            model.eval()
            yield stats
        finally:
            with torch.no_grad():
                for name, p in self.parameters.items():
                    p.copy_(saved[name])
                    p.grad = grads[name]
            for name, p in model.named_parameters():
                p.requires_grad_(requires_grad[name])
            model.train(was_training)
            setattr(model, _ACTIVE_ATTRIBUTE, False)

    def _train(self, ids, targets, mask) -> dict:
        config, model = self.config, self.model
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(self.parameters.values())
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        model.eval()  # no dropout: the memorized distribution is the one generation will use
        reference, stats = None, {"loss": [], "nll": [], "kl": []}
        for _ in range(config.steps):
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1][mask].float()
            log_probs = F.log_softmax(logits, dim=-1)
            nll = F.nll_loss(log_probs, targets[mask])
            if reference is None:
                reference = log_probs.detach()
            kl = F.kl_div(log_probs, reference, log_target=True, reduction="batchmean")
            loss = nll + config.kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            for name, value in (("loss", loss), ("nll", nll), ("kl", kl)):
                stats[name].append(value.item())
        for p in params:
            p.grad = None
        return stats


def _loss_mask(loss_mask, ids) -> torch.Tensor:
    mask = torch.as_tensor(loss_mask, device=ids.device)
    if mask.dim() == 1:
        mask = mask[None]
    if mask.shape != ids.shape:
        raise ValueError(f"`loss_mask` must have the shape of `input_ids` {tuple(ids.shape)}, got {tuple(mask.shape)}.")
    mask = mask.bool()[:, 1:]  # mask[i] marks token i as a target; token 0 is never predicted
    if not mask.any():
        raise ValueError("`loss_mask` selects no token after the first: nothing to memorize.")
    return mask


def fastmem_generate(model, input_ids, config: FastMemConfig | None = None, memorize_ids=None, loss_mask=None, **generate_kwargs):
    """Memorize `memorize_ids` (default: the prompt itself), run `model.generate(input_ids, **generate_kwargs)`,
    restore the model, and return what `generate` returned."""
    memorize_ids = input_ids if memorize_ids is None else memorize_ids
    with FastMem(model, config).memorize(memorize_ids, loss_mask=loss_mask):
        with torch.inference_mode():
            return model.generate(input_ids=input_ids, **generate_kwargs)


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
