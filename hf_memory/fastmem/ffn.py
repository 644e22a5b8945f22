"""The FFN FastMem memorizes into: per-prompt copies of its weights (a leading batch dimension) and a forward that
applies row r's weights to row r of the batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from peft import LoraConfig
from torch import nn
from transformers.pytorch_utils import Conv1D

from .._utils import FFN_LAYOUTS, FINAL_NORM, find_layers
from .config import FastMemConfig
from .last_ffn import last_ffn_modules


class MemorizedFFN:
    """The FFN being memorized into: its linear modules, their original tensors, the per-prompt trainable copies, and
    (for the fast path) the modules between it and the logits."""

    def __init__(self, model, config: FastMemConfig):
        names = last_ffn_modules(
            model, layer=config.layer
        )  # bad layer -> ValueError, unknown arch -> NotImplementedError
        modules = dict(model.named_modules())
        if not all(isinstance(modules.get(name), (nn.Linear, Conv1D)) for name in names):
            raise NotImplementedError(
                f"FastMem updates the FFN's linear modules, but this {model.config.model_type} model keeps its FFN in "
                f"fused expert parameters {names}; memorize into a dense layer's FFN instead."
            )
        self.linears = {name: modules[name] for name in names}
        self.lora = _lora_targets(config.lora, names)
        spec = FFN_LAYOUTS[model.config.model_type]["decoder"]
        prefix, num_layers = find_layers(model, spec.layers)
        self.layer_name = f"{prefix}.{config.layer % num_layers}"
        self.is_last_layer = config.layer % num_layers == num_layers - 1
        self.container_name = ".".join(_common_prefix([name.split(".") for name in names]))
        norm = FINAL_NORM.get(model.config.model_type)
        self.fast_path = (
            self.is_last_layer
            and self.container_name != self.layer_name
            and norm in modules
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
            module.forward = PatchedForward(self, name, module)

    def reset(self):
        """Back to the module's own forward and the original weights: no patch, no per-prompt rows."""
        self.unpatch()
        self.rows, self.mode = {}, "base"

    def unpatch(self):
        for name, module in self.linears.items():
            if name in self._saved_forwards:
                saved = self._saved_forwards.pop(name)
                if saved is None:
                    del module.forward
                else:
                    module.forward = saved


class PatchedForward:
    """Replaces one FFN linear module's forward: row r of the batch goes through prompt r's weights."""

    def __init__(self, ffn: MemorizedFFN, name: str, module: nn.Module):
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
            return (
                x @ weight + (0 if bias is None else bias) if isinstance(module, Conv1D) else F.linear(x, weight, bias)
            )
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
        raise ValueError(
            "`lora.target_modules` is a regex; FastMem needs module names (e.g. from last_ffn_lora_config)."
        )
    chosen = {name for name in names if any(name == t or name.endswith("." + t) for t in targets)}
    if not chosen:
        raise ValueError(f"`lora.target_modules` {sorted(targets)} names none of this layer's FFN modules {names}.")
    return chosen


def clip_per_row(tensors: list[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_ for each prompt's own weights (row r of every tensor)."""
    norms = torch.stack([t.grad.flatten(1).float().pow(2).sum(1) for t in tensors]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for t in tensors:
        t.grad.mul_(scale.view(-1, *([1] * (t.dim() - 1))).to(t.grad.dtype))
