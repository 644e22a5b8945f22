"""`FastMemConfig`: how FastMem memorizes a prompt; `FASTMEM_PRESETS`: the official scripts' settings per task."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from peft import LoraConfig

from .._utils import HubConfigMixin, check_choice, check_integer, check_number


AUTOCAST_DTYPES = ("bfloat16", "float16")

# The official settings (IAAR-Shanghai/FastMem: scripts/run_qa.sh and the table in scripts/run_summary.sh). Every
# script passes `--bf16 True` (autocast; the weights and AdamW stay float32) and trains the last layer's FFN
# (`train_layer` 1); its AdamW is built without `weight_decay` (src/train_and_inference.py), so torch's default 0.01
# applies (the scripts' `--weight_decay 0.` only reaches the Trainer's own optimizer, which that one replaces); the
# Trainer clips gradients at its default 1.0; the learning rate is constant. "_cd" presets add contrastive decoding
# with the official α 0.5.
_OFFICIAL = {"weight_decay": 0.01, "max_grad_norm": 1.0, "autocast_dtype": "bfloat16"}
_CD = {"contrastive": 0.5}
FASTMEM_PRESETS: dict[str, dict[str, Any]] = {
    "qa": {**_OFFICIAL, "steps": 10, "lr": 1e-5, "kl_weight": 0.1},
    "qa_cd": {**_OFFICIAL, "steps": 10, "lr": 1e-5, "kl_weight": 0.1, **_CD},
    "xsum": {**_OFFICIAL, "steps": 10, "lr": 1e-5, "kl_weight": 1.0},
    "xsum_cd": {**_OFFICIAL, "steps": 10, "lr": 1e-5, "kl_weight": 0.3, **_CD},
    "cnndm": {**_OFFICIAL, "steps": 10, "lr": 3e-6, "kl_weight": 1.0},
    "cnndm_cd": {**_OFFICIAL, "steps": 10, "lr": 3e-6, "kl_weight": 0.01, **_CD},
    "wikihow": {**_OFFICIAL, "steps": 20, "lr": 1e-5, "kl_weight": 0.03},
    "wikihow_cd": {**_OFFICIAL, "steps": 20, "lr": 1e-5, "kl_weight": 0.03, **_CD},
}

# Every `generate` call runs `steps` forward/backward passes first; the official scripts use 10 or 20. Past 10,000 a
# single call costs more than a fine-tuning run, which is a typo (or a job for `Trainer`), not a setting.
MAX_STEPS = 10_000

_LAYERS_HINT = (
    "an integer n >= 1 for the last n layers (the official `--train_layer n`), or a non-empty list of distinct "
    "layer indices, negative from the end"
)


@dataclass
class FastMemConfig(HubConfigMixin):
    """How FastMem memorizes: optimizer steps, learning rate, weight decay, KL weight, which layers' FFNs, full-rank
    or LoRA update, gradient clipping, autocast, and the contrastive-decoding weight used while generating inside
    `memorize`.

    `FastMemConfig.from_preset("qa")` (or "xsum", "cnndm", "wikihow", and their "_cd" variants) gives the official
    code's settings for that task; see `FASTMEM_PRESETS`.

    Args:
        steps: AdamW steps on the memorized tokens (a fresh optimizer for every call); at most 10,000.
        lr: Constant learning rate of those steps.
        kl_weight: λ in NLL + λ·KL(p_original ‖ p_current) over the memorized positions.
        layer: One transformer layer whose FFN is updated (negative = from the end). Leave it None, with `layers`
            None too, for the last layer (the paper's default); set at most one of `layer` and `layers`.
        layers: Several layers' FFNs, updated together: an integer n for the last n layers (the official
            `--train_layer n`), or a list of layer indices (negative = from the end). None: see `layer`.
        lora: None for a full-rank update of the FFN (the paper), or a `peft.LoraConfig` (e.g. from
            `last_ffn_lora_config`) for a low-rank update with its `r`, `lora_alpha` and `use_rslora`.
        max_grad_norm: Gradient-norm clip per prompt and step, over all updated tensors together; None turns it off.
        weight_decay: AdamW's decoupled weight decay (each step multiplies the trained tensors by 1 − lr·decay).
            0 by default (our measured defaults were chosen with it); the official code runs with torch's default
            0.01, as the presets do.
        autocast_dtype: "bfloat16" or "float16" to run the memorization forwards (and `fastmem_generate`'s decoding)
            under `torch.autocast` in that dtype, the weights and the optimizer staying in their own dtype, as the
            official `--bf16 True` does; the loss is computed in float32. None: no autocast.
        contrastive: α of FastMem+CD: inside `memorize` the logits are (1+α)·memorized − α·original; 0 turns it off.

    Raises:
        ValueError: If a number is out of range or of the wrong type, `layer` and `layers` are both set, `layers`
            is neither a count nor a non-empty list of distinct integers, `autocast_dtype` is not one of the allowed
            names, `lora` is not a `peft.LoraConfig`, or it has `use_dora=True`.

    Examples:
        >>> FastMemConfig(steps=5).steps
        5
        >>> FastMemConfig(layers=2).layers  # the last two layers' FFNs
        2
        >>> preset = FastMemConfig.from_preset("qa")
        >>> preset.lr, preset.kl_weight, preset.weight_decay, preset.autocast_dtype
        (1e-05, 0.1, 0.01, 'bfloat16')
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
    layer: int | None = field(
        default=None,
        metadata={
            "help": "One layer whose FFN is updated (negative = from the end); None with `layers` None = the last."
        },
    )
    layers: int | list[int] | None = field(
        default=None,
        metadata={"help": "Several layers' FFNs: n = the last n layers (official --train_layer n), or a list."},
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
    weight_decay: float = field(
        default=0.0,
        metadata={"help": "AdamW's decoupled weight decay (0 here; the official code's AdamW uses torch's 0.01)."},
    )
    autocast_dtype: str | None = field(
        default=None,
        metadata={"help": "'bfloat16' or 'float16': memorize (and decode) under torch.autocast; None = off."},
    )
    contrastive: float = field(
        default=0.0,
        metadata={"help": "α of FastMem+CD: inside `memorize` the logits are (1+α)·memorized − α·original; 0 = off."},
    )

    def __post_init__(self):
        self.steps = check_integer(
            self.steps, "steps", minimum=1, maximum=MAX_STEPS, hint="AdamW steps before every generation"
        )
        self.lr = check_number(self.lr, "lr", minimum=0, exclusive_minimum=True)
        self.kl_weight = check_number(self.kl_weight, "kl_weight", minimum=0)
        self.layer = check_integer(
            self.layer, "layer", allow_none=True, hint="one layer index, negative from the end; None = the last"
        )
        self.layers = _check_layers(self.layers)
        if self.layer is not None and self.layers is not None:
            raise ValueError(
                f"Set `layer` (one layer) or `layers` (the last n layers, or a list of layers), not both: got "
                f"layer={self.layer}, layers={self.layers!r}."
            )
        self.max_grad_norm = check_number(
            self.max_grad_norm, "max_grad_norm", minimum=0, exclusive_minimum=True, allow_none=True
        )
        self.weight_decay = check_number(self.weight_decay, "weight_decay", minimum=0, hint="AdamW's, decoupled")
        if isinstance(self.autocast_dtype, torch.dtype):  # stored by its name (the file is JSON)
            dtype = str(self.autocast_dtype).removeprefix("torch.")
            self.autocast_dtype = dtype if dtype in AUTOCAST_DTYPES else self.autocast_dtype
        self.autocast_dtype = check_choice(self.autocast_dtype, "autocast_dtype", (*AUTOCAST_DTYPES, None))
        self.contrastive = check_number(self.contrastive, "contrastive", minimum=0, hint="α; 0 turns it off")
        if self.lora is not None:
            if not isinstance(self.lora, LoraConfig):
                raise ValueError(f"`lora` must be None or a peft.LoraConfig, got {type(self.lora).__name__}.")
            if isinstance(self.lora.r, bool) or not isinstance(self.lora.r, int) or self.lora.r < 1:
                raise ValueError(f"`lora.r` must be an integer >= 1 (the rank of the update), got {self.lora.r!r}.")
            if self.lora.use_dora:
                raise ValueError("`lora` has use_dora=True: FastMem supports plain LoRA only (use_dora=False).")

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> FastMemConfig:
        """The official code's settings for a task (see `FASTMEM_PRESETS`), with any field overridden.

        Args:
            preset: One of the keys of `FASTMEM_PRESETS`: "qa", "xsum", "cnndm", "wikihow", or one of them with
                "_cd" (the settings the official scripts list for FastMem + contrastive decoding, α 0.5).
            **overrides: Fields to set instead of the preset's, e.g. `layers=2` or `autocast_dtype=None`.

        Returns:
            The config.

        Raises:
            ValueError: If `preset` is not a preset (the message lists them), or an override is not a field or has a
                bad value.

        Examples:
            >>> FastMemConfig.from_preset("wikihow", autocast_dtype=None).steps
            20
        """
        check_choice(preset, "preset", tuple(FASTMEM_PRESETS))
        return cls.from_dict({**FASTMEM_PRESETS[preset], **overrides})

    def layer_indices(self, num_layers: int) -> list[int]:
        """The indices (from 0, ascending) of the layers whose FFN is updated, in a stack of `num_layers` layers.

        Args:
            num_layers: How many transformer layers the model has.

        Returns:
            The sorted, non-negative layer indices: the last layer when `layer` and `layers` are both None.

        Raises:
            ValueError: If `layer` or an index in `layers` is out of range, `layers` asks for more layers than there
                are, or two entries of `layers` name the same layer (e.g. -1 and 2 in a 3-layer model).

        Examples:
            >>> FastMemConfig(layers=2).layer_indices(4), FastMemConfig(layers=[-1, 0]).layer_indices(4)
            ([2, 3], [0, 3])
        """
        num_layers = check_integer(num_layers, "num_layers", minimum=1)
        valid = f"valid values are {-num_layers} to {num_layers - 1}"
        if self.layers is None:
            layer = -1 if self.layer is None else self.layer
            if not -num_layers <= layer < num_layers:
                raise ValueError(f"layer={layer} is out of range for the {num_layers} layers of this model: {valid}.")
            return [layer % num_layers]
        if isinstance(self.layers, int):
            if self.layers > num_layers:
                raise ValueError(
                    f"`layers`={self.layers} asks for the last {self.layers} layers, but this model has {num_layers}."
                )
            return list(range(num_layers - self.layers, num_layers))
        outside = [i for i in self.layers if not -num_layers <= i < num_layers]
        if outside:
            raise ValueError(
                f"`layers` {self.layers} holds {outside}, out of range for the {num_layers} layers of this model: "
                f"{valid}."
            )
        indices = [i % num_layers for i in self.layers]
        if len(set(indices)) != len(indices):
            raise ValueError(
                f"`layers` {self.layers} names a layer twice on this {num_layers}-layer model (as {sorted(indices)}): "
                "list each layer once."
            )
        return sorted(indices)


def _check_layers(value) -> int | list[int] | None:
    """`layers` as None, a plain int count, or a list of distinct plain ints; a `ValueError` naming it otherwise."""
    if value is None:
        return None
    shown = value
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        value = list(value)
    try:
        if isinstance(value, (list, tuple)):
            indices = [check_integer(item, "layers") for item in value]
            if indices and len(set(indices)) == len(indices):
                return indices
        elif not isinstance(value, (str, bytes, Mapping, set, frozenset)):
            return check_integer(value, "layers", minimum=1)
    except ValueError:
        pass
    raise ValueError(f"`layers` must be {_LAYERS_HINT}; got {shown!r}.")
