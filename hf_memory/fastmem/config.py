"""`FastMemConfig`: how FastMem memorizes a prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from peft import LoraConfig

from .._utils import HubConfigMixin, check_integer, check_number


@dataclass
class FastMemConfig(HubConfigMixin):
    """How FastMem memorizes: optimizer steps, learning rate, KL weight, which layer's FFN, full-rank or LoRA update,
    gradient clipping, and the contrastive-decoding weight used while generating inside `memorize`.

    Args:
        steps: AdamW steps on the memorized tokens (a fresh optimizer for every call).
        lr: Constant learning rate of those steps.
        kl_weight: λ in NLL + λ·KL(p_original ‖ p_current) over the memorized positions.
        layer: Transformer layer whose FFN is updated (negative = from the end; -1 is the paper's last layer).
        lora: None for a full-rank update of the FFN (the paper), or a `peft.LoraConfig` (e.g. from
            `last_ffn_lora_config`) for a low-rank update with its `r`, `lora_alpha` and `use_rslora`.
        max_grad_norm: Gradient-norm clip per prompt and step; None turns it off.
        contrastive: α of FastMem+CD: inside `memorize` the logits are (1+α)·memorized − α·original; 0 turns it off.

    Raises:
        ValueError: If a number is out of range or of the wrong type, if `lora` is not a `peft.LoraConfig`, or if it
            has `use_dora=True`.

    Example:
        >>> FastMemConfig(steps=5).steps
        5
    """

    config_name: ClassVar[str] = "fastmem_config.json"
    nested_configs: ClassVar[dict[str, type]] = {"lora": LoraConfig}

    steps: int = field(
        default=10, metadata={"help": "AdamW steps on the memorized tokens (a fresh optimizer each time)."}
    )
    lr: float = field(default=1e-4, metadata={"help": "Constant learning rate of those steps."})
    kl_weight: float = field(
        default=0.1, metadata={"help": "λ in NLL + λ·KL(p_original ‖ p_current) over the memorized positions."}
    )
    layer: int = field(
        default=-1, metadata={"help": "Transformer layer whose FFN is updated (negative = from the end)."}
    )
    lora: LoraConfig | None = field(
        default=None,
        metadata={
            "help": "None: full-rank update of the FFN (the paper). A peft.LoraConfig (e.g. from "
            "last_ffn_lora_config): a low-rank update with its r, lora_alpha and use_rslora."
        },
    )
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "Gradient-norm clip per prompt and step; None = off."}
    )
    contrastive: float = field(
        default=0.0,
        metadata={"help": "α of FastMem+CD: inside `memorize` the logits are (1+α)·memorized − α·original; 0 = off."},
    )

    def __post_init__(self):
        self.steps = check_integer(self.steps, "steps", minimum=1)
        self.lr = check_number(self.lr, "lr", minimum=0, exclusive_minimum=True)
        self.kl_weight = check_number(self.kl_weight, "kl_weight", minimum=0)
        self.layer = check_integer(self.layer, "layer", hint="a layer index, negative from the end")
        self.max_grad_norm = check_number(
            self.max_grad_norm, "max_grad_norm", minimum=0, exclusive_minimum=True, allow_none=True
        )
        self.contrastive = check_number(self.contrastive, "contrastive", minimum=0, hint="α; 0 turns it off")
        if self.lora is not None:
            if not isinstance(self.lora, LoraConfig):
                raise ValueError(f"`lora` must be None or a peft.LoraConfig, got {type(self.lora).__name__}.")
            if isinstance(self.lora.r, bool) or not isinstance(self.lora.r, int) or self.lora.r < 1:
                raise ValueError(f"`lora.r` must be an integer >= 1 (the rank of the update), got {self.lora.r!r}.")
            if self.lora.use_dora:
                raise ValueError("`lora` has use_dora=True: FastMem supports plain LoRA only (use_dora=False).")
