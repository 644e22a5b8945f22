"""The FFNs FastMem memorizes into: per-prompt copies of their weights (a leading batch dimension) and a forward that
applies row r's weights to row r of the batch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from peft import LoraConfig
from torch import nn
from transformers.pytorch_utils import Conv1D

from .._utils import FFN_LAYOUTS, FINAL_NORM, find_layers
from .config import FastMemConfig
from .last_ffn import last_ffn_modules


if TYPE_CHECKING:
    from transformers import PreTrainedModel


class MemorizedFFN:
    """The FFNs being memorized into: their linear modules, the per-prompt trainable copies, and (for the fast path)
    the modules between them and the logits.

    Args:
        model: The decoder-only transformers model whose FFNs are memorized into.
        config: The FastMem settings; `layer` / `layers` pick the FFNs and `lora` the modules that get a low-rank
            update.

    Attributes:
        linears: Full module name -> the trained FFNs' `nn.Linear` / `Conv1D` modules (every trained layer's).
        lora: Names of the modules that get a LoRA update (empty for a full-rank update).
        layer_indices: The trained layers' indices, from 0, ascending.
        only_last_layer: Whether the one trained layer is the model's last (then no key or value depends on it).
        layer_name: Full name of the last trained transformer layer.
        container_name: Full name of the module that holds that layer's FFN modules (e.g. `model.layers.31.mlp`).
        layer: The last trained transformer layer module.
        container: The module that holds its FFN's linear modules.
        ffn_only: Whether the training steps may run FFN -> final norm -> lm_head only, on cached inputs (the last
            layer's FFN alone, in a layer whose output is "FFN output + something that does not depend on it").
        rerun: Otherwise, the transformer layers the steps re-run on cached inputs (from the earliest trained layer
            to the last layer) before final norm -> lm_head; empty when they cannot.
        fast_path: Whether the steps run on cached inputs at all (`ffn_only` or `rerun`); False: full forwards.
        norm: The final norm before the output embeddings, or None when unknown for the architecture.
        lm_head: The output embeddings (`model.get_output_embeddings()`).
        mode: "base" (the modules' own weights) or "rows" (the per-prompt weights in `rows`).
        rows: Module name -> parameter name ("weight", "bias", or "lora_A", "lora_B") -> tensor with a leading
            prompt dimension.
        lora_scale: `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA) of the LoRA update.

    Raises:
        ValueError: If `config.layer` or `config.layers` is out of range or names a layer twice, or
            `config.lora.target_modules` is a regex or names none of some trained layer's FFN modules.
        NotImplementedError: If the architecture is not supported, or its FFN has no linear modules (fused experts).
    """

    def __init__(self, model: PreTrainedModel, config: FastMemConfig):
        last_ffn_modules(model)  # an unsupported architecture -> NotImplementedError, before anything else
        spec = FFN_LAYOUTS[model.config.model_type]["decoder"]
        prefix, num_layers = find_layers(model, spec.layers)
        self.layer_indices = config.layer_indices(num_layers)  # out of range, twice -> ValueError
        per_layer = {i: last_ffn_modules(model, layer=i) for i in self.layer_indices}
        names = [name for i in self.layer_indices for name in per_layer[i]]
        modules = dict(model.named_modules())
        if not all(isinstance(modules.get(name), (nn.Linear, Conv1D)) for name in names):
            raise NotImplementedError(
                f"FastMem updates the FFN's linear modules, but this {model.config.model_type} model keeps its FFN in "
                f"fused expert parameters {names}; memorize into a dense layer's FFN instead."
            )
        self.linears = {name: modules[name] for name in names}
        self.lora = _lora_targets(config.lora, names)
        untargeted = [i for i in self.layer_indices if self.lora and not self.lora.intersection(per_layer[i])]
        if untargeted:
            raise ValueError(
                f"`lora.target_modules` names none of the FFN modules of trained layer(s) {untargeted}: target "
                "every trained layer (short names such as 'mlp.down_proj' match them all), or train fewer layers."
            )
        last = self.layer_indices[-1]
        self.only_last_layer = self.layer_indices == [num_layers - 1]
        self.layer_name = f"{prefix}.{last}"
        self.container_name = ".".join(_common_prefix([name.split(".") for name in per_layer[last]]))
        self.layer, self.container = modules[self.layer_name], modules[self.container_name]
        norm = FINAL_NORM.get(model.config.model_type)
        self.norm, self.lm_head = modules.get(norm), model.get_output_embeddings()
        head = norm in modules and self.lm_head is not None
        self.ffn_only = head and self.only_last_layer and self.container_name != self.layer_name
        first = self.layer_indices[0]
        self.rerun = [] if self.ffn_only or not head else [modules[f"{prefix}.{i}"] for i in range(first, num_layers)]
        self.fast_path = self.ffn_only or bool(self.rerun)
        self.mode = "base"  # "base": original weights; "rows": per-prompt weights in `self.rows`
        self.rows: dict[str, dict[str, torch.Tensor]] = {}
        self.lora_scale = 0.0
        self._saved_forwards = {}

    # --- per-prompt weights -------------------------------------------------------------------------------------
    def init_rows(self, batch: int, lora: LoraConfig | None) -> list[torch.Tensor]:
        """Create fresh per-prompt trainable tensors in `rows`, one row per prompt.

        Full rank: a copy of each module's weight and bias per prompt. LoRA: for each module in `lora` (the
        attribute), A Kaiming-uniform and B zero as peft initialises them; the other modules keep their weights.

        Args:
            batch: Number of prompts (the size of the leading dimension).
            lora: The LoRA settings (`r`, `lora_alpha`, `use_rslora`), or None for a full-rank update; pass the
                config's `lora`, the one the target modules were chosen from.

        Returns:
            The trainable tensors, for the optimizer.
        """
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
        """Row `row`'s weights in the module's own layout.

        Args:
            name: Full name of one of the FFN's linear modules (a key of `linears`).
            row: Index of the prompt in the memorized batch.

        Returns:
            Parameter name -> tensor to copy into the module: weight and bias for a full-rank update, the weight plus
            the scaled LoRA product for LoRA, and an empty dict for a module that has no per-prompt weights.
        """
        module, tensors = self.linears[name], self.rows.get(name, {})
        if "lora_A" not in tensors:
            return {key: t[row] for key, t in tensors.items()}
        delta = self.lora_scale * tensors["lora_B"][row] @ tensors["lora_A"][row]
        return {"weight": module.weight + (delta.T if isinstance(module, Conv1D) else delta)}

    # --- forward replacement of the FFN's linear modules --------------------------------------------------------
    def patch(self) -> None:
        """Replace the forward of each FFN linear module by a `PatchedForward` (the old one is saved for `unpatch`)."""
        for name, module in self.linears.items():
            self._saved_forwards[name] = module.__dict__.get("forward")
            module.forward = PatchedForward(self, name, module)

    def reset(self) -> None:
        """Back to the module's own forward and the original weights: no patch, no per-prompt rows."""
        self.unpatch()
        self.rows, self.mode = {}, "base"

    def unpatch(self) -> None:
        """Give each patched FFN linear module back the forward it had before `patch`."""
        for name, module in self.linears.items():
            if name in self._saved_forwards:
                saved = self._saved_forwards.pop(name)
                if saved is None:
                    del module.forward
                else:
                    module.forward = saved


class PatchedForward:
    """Replaces one FFN linear module's forward: row r of the batch goes through prompt r's weights.

    Args:
        ffn: The `MemorizedFFN` that holds the per-prompt weights and the current mode.
        name: Full name of the module (a key of `ffn.linears`).
        module: The `nn.Linear` or `Conv1D` module whose forward this replaces.
    """

    def __init__(self, ffn: MemorizedFFN, name: str, module: nn.Module):
        self.ffn, self.name, self.module = ffn, name, module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the module to `x`, with prompt r's weights on batch row r while `ffn.mode` is "rows".

        A batch with k times as many rows as prompts (`num_return_sequences`, beams) uses each prompt's weights for
        k consecutive rows. In "base" mode, or when the module has no per-prompt weights, the module's own forward
        runs.

        Args:
            x: The module's input, (batch, length, in_features), or (batch·length, in_features) flattened batch-major.

        Returns:
            The module's output, with `out_features` as the last dimension.

        Raises:
            RuntimeError: If the batch is not a multiple of the number of memorized prompts.
        """
        ffn, module = self.ffn, self.module
        tensors = ffn.rows.get(self.name)
        if ffn.mode == "base" or not tensors:
            return type(module).forward(module, x)
        if x.dim() == 2:  # (batch·length, features), flattened batch-major (OPT): prompt r's rows are contiguous
            prompts = next(iter(tensors.values())).shape[0]
            return self(x.reshape(prompts, -1, x.shape[-1])).reshape(x.shape[0], -1)
        rows = x.shape[0]
        # One memorized prompt and one row: a plain matmul. Several prompts: the batch must hold one row per prompt
        # (or a multiple, as beams expand them); `_expand_rows` refuses anything else, one row included.
        if rows == 1 and "weight" in tensors and tensors["weight"].shape[0] == 1:
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
        raise ValueError(
            f"`lora.target_modules` {sorted(targets)} names none of the trained layers' FFN modules {names}."
        )
    return chosen


def clip_per_row(tensors: list[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_ for each prompt's own weights (row r of every tensor).

    The gradients are scaled in place so that the norm of row r over all tensors is at most `max_norm`.

    Args:
        tensors: Tensors with a leading prompt dimension and a `.grad` set.
        max_norm: The largest allowed gradient norm per prompt.
    """
    norms = torch.stack([t.grad.flatten(1).float().pow(2).sum(1) for t in tensors]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for t in tensors:
        t.grad.mul_(scale.view(-1, *([1] * (t.dim() - 1))).to(t.grad.dtype))
