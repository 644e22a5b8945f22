"""`MemControlMask`: which groups may learn, with which PEFT method and learning rate; applied to a model, or turned
into the peft config that adapts exactly those groups (SV-Diff has no peft config: `apply` adds it itself)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .._utils import HubConfigMixin, check_choice, check_integer, check_number, exclusive, is_gpt2_conv1d
from .groups import GRANULARITIES, adaptable_modules, maskable_groups
from .svdiff import SVDIFF_MARKER, add_svdiff


METHODS = ("lora", "full", "scale_bias", "svdiff")
_ADAPTER_MARKERS = {"lora": "lora_", "scale_bias": "ia3_", "svdiff": SVDIFF_MARKER}


def _is_adapter(name: str) -> bool:
    """Whether a parameter name belongs to an adapter (LoRA, IA3 or SV-Diff), not to the base model."""
    return any(marker in name for marker in _ADAPTER_MARKERS.values())


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def _as_bit(value, index: int) -> int:
    """One mask bit as a plain 0/1: Python, numpy and 0-d torch booleans and integers are accepted."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return int(value)
    raise ValueError(f"`bits[{index}]` must be 0 or 1 (0 freezes the group, 1 lets it train), got {value!r}.")


@dataclass
class MemControlMask(HubConfigMixin):
    """A MemControl mask: one bit per maskable group of a model (see `maskable_groups`), the PEFT method that trains
    the groups whose bit is 1, and its learning rate. Every trainable parameter of a group whose bit is 0 is frozen,
    and nothing outside the selected groups trains.

    Methods: "lora" (a `peft.LoraConfig` whose `target_modules` are exactly the linear and convolution layers of the
    selected groups), "full" (every parameter of the selected groups, no adapter), "scale_bias" (DiffFit-style:
    learned per-channel scales on the outputs of the selected groups' linear layers, through peft's `IA3Config`,
    plus the biases and the normalization parameters inside those groups), "svdiff" (SV-Diff, Han et al. 2023: one
    learned shift per singular value of every linear and convolution layer of the selected groups, the weight
    W = U diag(σ) Vᵀ becoming U diag(ReLU(σ + δ)) Vᵀ, see `memcontrol.svdiff.SpectralShift`; peft has no SV-Diff, so
    `to_peft_config` gives None and `apply` adds the shifts itself).

    Args:
        groups: The names of all maskable groups, in order (the keys of `maskable_groups(model, granularity)`).
        bits: One 0/1 per group (booleans, numpy or torch scalars accepted); at least one must be 1.
        method: "lora", "full", "scale_bias" or "svdiff".
        granularity: The `maskable_groups` granularity the group names come from: "block" or "module".
        lr: The learning rate of the fine-tuning run (the official search treats it as a searched hyper-parameter).
        lora_r: LoRA rank (method "lora").
        lora_alpha: LoRA scaling numerator (method "lora").
        lora_dropout: LoRA dropout (method "lora").

    Raises:
        ValueError: If `groups` is empty or repeats a name, `bits` has another length or a value other than 0/1, all
            bits are 0 (an empty mask trains nothing), `method` or `granularity` is unknown, or a number is out of
            range.

    Examples:
        >>> mask = MemControlMask(groups=["layers.0.attn", "layers.0.mlp"], bits=[0, 1])
        >>> mask.selected_groups, mask.method
        (['layers.0.mlp'], 'lora')
    """

    config_name: ClassVar[str] = "memcontrol_mask.json"

    groups: list[str] = field(default_factory=list, metadata={"help": "all maskable group names, in order"})
    bits: list[int] = field(default_factory=list, metadata={"help": "one 0/1 per group; 1 = the group trains"})
    method: str = field(default="lora", metadata={"help": "lora, full, scale_bias or svdiff"})
    granularity: str = field(default="block", metadata={"help": "block or module (see maskable_groups)"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate of the fine-tuning run"})
    lora_r: int = field(default=4, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=8.0, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})

    def __post_init__(self):
        if isinstance(self.groups, (str, bytes)) or not hasattr(self.groups, "__iter__"):
            raise ValueError(f"`groups` must be a list of group names, got {self.groups!r}.")
        self.groups = list(self.groups)
        if not self.groups or not all(isinstance(g, str) and g for g in self.groups):
            raise ValueError(f"`groups` must be a non-empty list of group names (strings), got {self.groups!r}.")
        if len(set(self.groups)) != len(self.groups):
            repeated = sorted({g for g in self.groups if self.groups.count(g) > 1})
            raise ValueError(f"`groups` names {repeated} more than once.")
        if isinstance(self.bits, (str, bytes)) or not hasattr(self.bits, "__iter__"):
            raise ValueError(f"`bits` must be a list of 0/1, one per group, got {self.bits!r}.")
        self.bits = [_as_bit(bit, i) for i, bit in enumerate(list(self.bits))]
        if len(self.bits) != len(self.groups):
            raise ValueError(f"`bits` has {len(self.bits)} values for {len(self.groups)} groups: give one per group.")
        if not any(self.bits):
            raise ValueError("`bits` are all 0: an empty mask trains nothing; set at least one group to 1.")
        check_choice(self.method, "method", METHODS)
        check_choice(self.granularity, "granularity", GRANULARITIES)
        self.lr = check_number(self.lr, "lr", minimum=0, exclusive_minimum=True, hint="learning rate")
        self.lora_r = check_integer(self.lora_r, "lora_r", minimum=1, hint="LoRA rank")
        self.lora_alpha = check_number(self.lora_alpha, "lora_alpha", minimum=0, exclusive_minimum=True)
        self.lora_dropout = check_number(self.lora_dropout, "lora_dropout", minimum=0, maximum=1)

    @classmethod
    def for_model(cls, model: nn.Module, selected=None, **kwargs) -> MemControlMask:
        """A mask over the groups of `model`, with `selected` (group names, or a 0/1 list; None = all) set to 1.

        Args:
            model: The model whose `maskable_groups` define the groups.
            selected: Names of the groups that train (a list, even for one name), a 0/1 list with one bit per group,
                or None for every group.
            **kwargs: Other fields (`method`, `granularity`, `lr`, ...); not `groups` or `bits`.

        Raises:
            ValueError: If a selected name is not a group of the model (the message lists them), `selected` is a
                string, `groups` or `bits` is passed, or a field is bad.

        Examples:
            >>> from transformers import LlamaConfig, LlamaForCausalLM
            >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
            ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
            >>> MemControlMask.for_model(model, ["model.layers.0.mlp"]).bits
            [0, 1]
        """
        given = sorted({"groups", "bits"} & set(kwargs))
        if given:
            raise ValueError(
                f"`for_model` reads `groups` and `bits` from `model` and `selected`; do not pass {given}."
            )
        if isinstance(selected, (str, bytes)):
            raise ValueError(
                f"`selected` must be a list of group names or of 0/1 bits, got the string {selected!r}: write "
                f"[{selected!r}] for one group."
            )
        names = list(maskable_groups(model, kwargs.get("granularity", "block")))
        if selected is not None:
            if not hasattr(selected, "__iter__"):
                raise ValueError(f"`selected` must be a list of group names or of 0/1 bits, got {selected!r}.")
            selected = list(selected)  # a generator would be used up by the first look
        if selected is None:
            bits = [1] * len(names)
        elif selected and all(isinstance(s, str) for s in selected):
            unknown = [s for s in selected if s not in names]
            if unknown:
                raise ValueError(
                    f"`selected` names {unknown}, which are not groups of the model; its groups: {names}."
                )
            bits = [int(name in selected) for name in names]
        else:
            bits = list(selected)
        return cls(groups=names, bits=bits, **kwargs)

    @property
    def selected_groups(self) -> list[str]:
        """The names of the groups whose bit is 1, in order."""
        return [group for group, bit in zip(self.groups, self.bits) if bit]

    @property
    def key(self) -> str:
        """The bits as a string, e.g. "0110": a short name for the mask."""
        return "".join(map(str, self.bits))

    def module_paths(self, model: nn.Module) -> list[str]:
        """The module paths of the selected groups in `model`.

        Args:
            model: A model with the mask's groups (the one searched on, or a fresh one of the same architecture).

        Raises:
            ValueError: If a selected group is not a group of `model`.
        """
        available = maskable_groups(model, self.granularity)
        missing = [g for g in self.selected_groups if g not in available]
        if missing:
            raise ValueError(
                f"The mask selects groups {missing} that `model` ({type(model).__name__}) does not have; its "
                f"{self.granularity} groups are {list(available)}."
            )
        return [path for group in self.selected_groups for path in available[group]]

    def to_peft_config(self, model: nn.Module):
        """The peft config that adapts exactly the selected groups of `model`: a `LoraConfig` (method "lora") or an
        `IA3Config` (method "scale_bias"; the biases and norms it also trains are set by `apply`); None for "full"
        (no adapter) and for "svdiff" (peft has no SV-Diff: `apply` registers the spectral shifts itself).

        Args:
            model: A model with the mask's groups.
        """
        if self.method in ("full", "svdiff"):
            return None
        targets = adaptable_modules(model, self.module_paths(model))
        fan_in_fan_out = any(is_gpt2_conv1d(model.get_submodule(t)) for t in targets)
        if self.method == "lora":
            from peft import LoraConfig

            return LoraConfig(
                r=self.lora_r,
                lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout,
                target_modules=targets,
                fan_in_fan_out=fan_in_fan_out,
            )
        from peft import IA3Config

        return IA3Config(target_modules=targets, feedforward_modules=[], fan_in_fan_out=fan_in_fan_out)

    def trainable_names(self, model: nn.Module) -> list[str]:
        """The parameter names `apply` makes trainable in `model` (once adapted, for "lora", "scale_bias" and
        "svdiff").

        Args:
            model: The model, after `apply`.
        """
        return self._trainable_names(model, self.module_paths(model))

    def _trainable_names(self, model: nn.Module, paths: list[str]) -> list[str]:
        within = lambda name: any(name.startswith(path + ".") for path in paths)  # noqa: E731
        if self.method == "full":
            return [name for name, _ in model.named_parameters() if within(name)]
        marker = _ADAPTER_MARKERS[self.method]
        names = [name for name, _ in model.named_parameters() if within(name) and marker in name]
        if self.method == "scale_bias":
            norms = {
                f"{module_name}.{param_name}"
                for module_name, module in model.named_modules()
                if within(module_name + ".") and _is_norm(module)
                for param_name, _ in module.named_parameters(recurse=False)
            }
            names += [
                name
                for name, _ in model.named_parameters()
                if within(name) and marker not in name and (name.endswith(".bias") or name in norms)
            ]
        return names

    def apply(self, model: nn.Module) -> nn.Module:
        """Make exactly the mask's parameters of `model` trainable, in place, and return it.

        For "lora" and "scale_bias" the adapter is injected with `peft.inject_adapter_in_model` (module names stay
        those of the base model). For "svdiff" every linear and convolution layer of the selected groups gets a
        `SpectralShift` parametrization of its `weight` (`torch.nn.utils.parametrize`): its original weight moves to
        `<layer>.parametrizations.weight.original` (frozen), the shifts are
        `<layer>.parametrizations.weight.0.svdiff_delta`, and U, σ, Vᵀ are buffers; with the shifts at 0 the model
        computes exactly what it did before. Then every parameter is frozen except those of the selected groups that
        the method trains. The model must not carry an adapter already. The new modules take the `training` flag of
        the module they sit in (an eval model stays in eval mode, adapter dropout included). If injecting fails, the
        layers already replaced are put back. Two calls cannot change one model at once.

        Args:
            model: The model (a fresh one of the architecture the mask was made for, for transfer).

        Returns:
            The same model object, adapted.

        Raises:
            ValueError: If a selected group is not a group of `model`, `model` already holds LoRA / IA3 / SV-Diff
                parameters, a selected `nn.Conv1d` layer meets "scale_bias" (peft's IA3 cannot adapt it), or (for
                "svdiff") a layer's weight cannot be decomposed (see `add_svdiff`).
            RuntimeError: If another call is changing `model` in place right now.
        """
        if not isinstance(model, nn.Module):
            raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        with exclusive(model, "MemControlMask.apply"):
            if any(_is_adapter(name) for name, _ in model.named_parameters()):
                raise ValueError(
                    "`model` already holds LoRA, IA3 or SV-Diff parameters: apply a mask to an unadapted model."
                )
            paths = self.module_paths(model)  # before the adapter changes the module tree; also checks the groups
            targets = adaptable_modules(model, paths)
            if self.method == "scale_bias":
                # peft's IA3 adapts nn.Linear, nn.Conv2d / 3d and GPT-2's Conv1D; refuse the rest before injecting
                unsupported = [t for t in targets if isinstance(model.get_submodule(t), nn.Conv1d)]
                if unsupported:
                    raise ValueError(
                        f"method='scale_bias' (peft IA3) cannot adapt the nn.Conv1d layers {unsupported}: use "
                        "method 'lora', 'full' or 'svdiff' for this model, or leave those groups out."
                    )
            config = self.to_peft_config(model)
            existing = list(model.modules())  # the adapter's new modules are those not in this list
            replaced = _replaceable(model, targets)
            requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
            try:
                if self.method == "svdiff":
                    model = add_svdiff(model, targets)
                elif config is not None:
                    from peft import inject_adapter_in_model

                    model = inject_adapter_in_model(config, model)
            except BaseException:  # put back every layer the adapter had already replaced or parametrized
                for parent, child, original in replaced:
                    setattr(parent, child, original)
                    if self.method == "svdiff" and parametrize.is_parametrized(
                        original, "weight"
                    ):  # ours: see add_svdiff
                        parametrize.remove_parametrizations(original, "weight", leave_parametrized=False)
                for name, parameter in model.named_parameters():
                    parameter.requires_grad_(requires_grad.get(name, parameter.requires_grad))
                raise
            _match_parent_modes(model, {id(module) for module in existing})
            trainable = set(self._trainable_names(model, paths))
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(name in trainable)
        return model


def _replaceable(model: nn.Module, targets: list[str]) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) of each target layer: what peft replaces with its adapter layer."""
    found = []
    for target in targets:
        parent_name, _, child = target.rpartition(".")
        found.append((model.get_submodule(parent_name), child, model.get_submodule(target)))
    return found


def _match_parent_modes(module: nn.Module, existing: set[int]) -> None:
    """Give every module not in `existing` (an adapter's new layers, dropouts, parametrizations) its parent's
    `training` flag: injected modules start in train mode, which on an eval model would turn on adapter dropout."""
    for child in module.children():
        if id(child) not in existing:
            child.training = module.training
        _match_parent_modes(child, existing)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, parameters of the base model): adapter weights (LoRA, IA3, SV-Diff shifts) count as
    trainable, not in the total.

    Args:
        model: A model, adapted or not.

    Examples:
        >>> count_parameters(torch.nn.Linear(3, 2))
        (8, 8)
    """
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in model.named_parameters() if not _is_adapter(n))
    return trainable, total
