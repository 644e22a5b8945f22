"""`NeMoConfig`: which value-projection channels NeMo silences, and by how much."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .._utils import HubConfigMixin, check_integer, check_number


# A channel id indexes one output of a projection: torch indexes in int64, and no layer is anywhere near 2**31
# channels wide, so a larger id is a mistake; it is refused when the config is built, not deep in torch later.
MAX_CHANNEL = 2**31 - 1


@dataclass
class NeMoConfig(HubConfigMixin):
    """Which value-projection channels to silence, per module name, and by how much.

    Channel lists are stored sorted and without duplicates; modules with no channels are dropped.

    Args:
        neurons: Module name (e.g. "...attn2.to_v") -> output channel ids to silence.
        scale: Multiplier for the listed channels, in [0, 1] (0 switches them off).

    Raises:
        ValueError: If `scale` is outside [0, 1], or `neurons` is not a dict of non-empty module names to lists of
            integer channel ids from 0 to 2**31 - 1.

    Examples:
        >>> config = NeMoConfig({"mid_block.attentions.0.transformer_blocks.0.attn2.to_v": [7, 3, 7]})
        >>> config.neurons
        {'mid_block.attentions.0.transformer_blocks.0.attn2.to_v': [3, 7]}
        >>> NeMoConfig.from_dict(config.to_dict()) == config, config.num_neurons
        (True, 2)
    """

    config_name: ClassVar[str] = "nemo_config.json"

    neurons: dict[str, list[int]] = field(
        default_factory=dict, metadata={"help": "Module name (e.g. '...attn2.to_v') -> output channel ids."}
    )
    scale: float = field(default=0.0, metadata={"help": "Multiplier for the listed channels, in [0, 1] (0 = off)."})

    def __post_init__(self):
        self.scale = check_number(self.scale, "scale", minimum=0, maximum=1, hint="0 switches the channels off")
        if not isinstance(self.neurons, dict):
            raise ValueError(
                f"`neurons` must be a dict of module name -> list of channel ids, got {type(self.neurons).__name__}."
            )
        neurons = {}
        for name, channels in self.neurons.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"`neurons` keys must be non-empty module names, got {name!r}.")
            if isinstance(channels, (str, bytes)) or not hasattr(channels, "__iter__"):
                raise ValueError(f"`neurons[{name!r}]` must be a list of channel ids, got {channels!r}.")
            channels = [
                check_integer(c, f"neurons[{name!r}]", minimum=0, maximum=MAX_CHANNEL, hint="channel ids")
                for c in channels
            ]
            if channels:
                neurons[name] = sorted(set(channels))
        self.neurons = neurons

    @property
    def num_neurons(self) -> int:
        """How many channels the config silences, over all modules."""
        return sum(len(channels) for channels in self.neurons.values())
