"""NeMo's activation statistics: per-channel mean and std of the value projections over non-memorized prompts."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._utils import atomic_write, check_integer, check_number, is_local_path, pipeline_denoiser
from .hooks import value_projection_names
from .scoring import MemorizationScorer, NeMoScorerConfig, encode_prompts, latent_size, scorer_config


if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

PAPER_BLOCKS = ("down_blocks", "mid_block")  # the paper hooks the down and mid blocks' value projections
STATISTICS_NAME = "nemo_activation_statistics.safetensors"


@dataclass
class ActivationStatistics:
    """Per-channel mean and std of value-projection activations over non-memorized prompts, and the score threshold.

    The activation of a channel is ``mean_over_tokens(|to_v(text embedding)|)`` (see `value_activations`).

    Attributes:
        mean: Layer name -> per-channel mean activation (1-D tensor).
        std: Layer name -> per-channel standard deviation (1-D tensor, same length as the mean).
        threshold: The memorization-score threshold, `score_mean + score_std`; None if the scores were not computed.
        score_mean: Mean memorization score of the prompts (with the official score: mean pairwise MS-SSIM over
            every pair of seeds of every prompt, as the official code calibrates); None if not computed.
        score_std: Standard deviation of those scores (or pairwise values); None if not computed.
        num_prompts: How many prompts the statistics were computed over.
        scores: The memorization score of every prompt, in input order (empty if not computed).

    Raises:
        ValueError: If `mean` and `std` name different layers, or a layer's tensors are not 1-D of one length.

    Examples:
        >>> import tempfile, os
        >>> stats = ActivationStatistics({"a.to_v": torch.zeros(4)}, {"a.to_v": torch.ones(4)}, threshold=0.5)
        >>> folder = tempfile.mkdtemp()
        >>> _ = stats.save_pretrained(folder)
        >>> ActivationStatistics.from_pretrained(folder).threshold
        0.5
    """

    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    threshold: float | None = None
    score_mean: float | None = None
    score_std: float | None = None
    num_prompts: int = 0
    scores: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if not isinstance(self.mean, dict) or not isinstance(self.std, dict):
            raise ValueError("`mean` and `std` must be dicts of layer name -> 1-D tensor.")
        if set(self.mean) != set(self.std):
            raise ValueError("`mean` and `std` must name the same layers.")
        for name in self.mean:
            if not isinstance(name, str) or "," in name or not name:
                raise ValueError(f"Layer names must be non-empty strings without ',', got {name!r}.")
            # Own float copies: numpy arrays and views of one tensor (which safetensors refuses to save) both work.
            self.mean[name] = torch.as_tensor(self.mean[name]).detach().float().clone()
            self.std[name] = torch.as_tensor(self.std[name]).detach().float().clone()
            if self.mean[name].shape != self.std[name].shape or self.mean[name].ndim != 1:
                raise ValueError(f"`mean[{name!r}]` and `std[{name!r}]` must be 1-D tensors of the same length.")
        # Plain Python numbers (a numpy or 0-d tensor threshold would not survive the file's text metadata).
        for attribute in ("threshold", "score_mean", "score_std"):
            value = getattr(self, attribute)
            setattr(self, attribute, None if value is None else check_number(value, attribute))
        self.num_prompts = check_integer(self.num_prompts, "num_prompts", minimum=0)
        self.scores = [check_number(score, "scores") for score in self.scores]

    @property
    def layers(self) -> list[str]:
        """The layer names the statistics cover, in the order of `mean`."""
        return list(self.mean)

    def z_scores(self, activations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``|a - mean| / std`` per channel, for the activations of one prompt.

        Args:
            activations: Layer name -> the prompt's activations (1-D, one per channel), for at least every layer of
                `layers`; other layers are ignored.

        Returns:
            Layer name -> float32 z-scores on the CPU, for every layer of `layers` (std clamped to at least 1e-12).
        """
        return {
            name: (activations[name].float().cpu() - self.mean[name]).abs() / self.std[name].clamp_min(1e-12)
            for name in self.layers
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write the statistics as `nemo_activation_statistics.safetensors` into `save_directory`; return its path.

        Tensors plus string metadata, never pickle; written to a temporary name and renamed into place.

        Args:
            save_directory: A local folder, created if needed.

        Returns:
            The path of the written file.
        """
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, STATISTICS_NAME)
        self._write(path)
        return path

    @classmethod
    def from_pretrained(
        cls, pretrained_path: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
    ) -> ActivationStatistics:
        """Read statistics written by `save_pretrained` (or the older `save`).

        Args:
            pretrained_path: A folder holding `nemo_activation_statistics.safetensors`, the path of such a file, or
                a Hub repo id.
            revision: The Hub revision when `pretrained_path` is a repo id.
            token: The Hub token when `pretrained_path` is a private repo id.

        Raises:
            ValueError: If a folder holds no statistics file, or the file does not hold NeMo activation statistics.
        """
        path = str(pretrained_path)
        if os.path.isdir(path):
            path = os.path.join(path, STATISTICS_NAME)
            if not os.path.isfile(path):
                raise ValueError(f"No {STATISTICS_NAME} in {str(pretrained_path)!r}.")
        elif not os.path.isfile(path):
            if is_local_path(path):
                raise ValueError(f"{path!r} is neither a file nor a folder (nor a Hub repo id 'user/name').")
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(path, STATISTICS_NAME, revision=revision, token=token)
        return cls._read(path)

    def save(self, path: str) -> None:
        """Deprecated: write to one `.safetensors` file; use `save_pretrained(folder)`.

        Args:
            path: The file to write.
        """
        warnings.warn(
            "ActivationStatistics.save is deprecated: use save_pretrained(folder).", FutureWarning, stacklevel=2
        )
        self._write(path)

    @classmethod
    def load(cls, path: str) -> ActivationStatistics:
        """Deprecated: read one `.safetensors` file; use `from_pretrained(folder_or_file)`.

        Args:
            path: The file to read.
        """
        warnings.warn("ActivationStatistics.load is deprecated: use from_pretrained.", FutureWarning, stacklevel=2)
        return cls._read(path)

    def _write(self, path: str) -> None:
        from safetensors.torch import save_file

        tensors = {f"mean/{name}": t.float().contiguous().cpu() for name, t in self.mean.items()}
        tensors.update({f"std/{name}": t.float().contiguous().cpu() for name, t in self.std.items()})
        metadata = {
            "format": "pt",
            "kind": "hf_memory.nemo.ActivationStatistics",
            "threshold": repr(self.threshold),
            "score_mean": repr(self.score_mean),
            "score_std": repr(self.score_std),
            "num_prompts": str(self.num_prompts),
            "scores": ",".join(repr(s) for s in self.scores),
            "layers": ",".join(self.layers),
        }
        atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))

    @classmethod
    def _read(cls, path: str) -> ActivationStatistics:
        from safetensors import safe_open

        def number(text):
            return None if text in (None, "None") else float(text)

        try:
            handle = safe_open(path, framework="pt")
        except Exception as err:  # safetensors raises its own error types for a garbage or truncated file
            raise ValueError(f"{path} is not a safetensors file of NeMo activation statistics ({err}).") from None
        with handle as f:
            metadata = f.metadata() or {}
            if metadata.get("kind") != "hf_memory.nemo.ActivationStatistics":
                raise ValueError(f"{path!r} does not hold NeMo activation statistics.")
            layers = metadata["layers"].split(",") if metadata.get("layers") else []
            mean = {name: f.get_tensor(f"mean/{name}") for name in layers}
            std = {name: f.get_tensor(f"std/{name}") for name in layers}
        scores = [float(s) for s in metadata.get("scores", "").split(",") if s]
        return cls(
            mean,
            std,
            threshold=number(metadata.get("threshold")),
            score_mean=number(metadata.get("score_mean")),
            score_std=number(metadata.get("score_std")),
            num_prompts=int(metadata.get("num_prompts", 0)),
            scores=scores,
        )


def check_layers(unet: torch.nn.Module, layers: Sequence[str] | None) -> list[str]:
    """The value projections to measure: `layers` after checking them, or the default ones.

    Args:
        unet: The denoiser.
        layers: Module names of linear layers in `unet`; None = the value projections of the paper's blocks
            (`PAPER_BLOCKS`), or every ``attn2.to_v`` if the model has none there.

    Returns:
        The layer names, as a list.

    Raises:
        ValueError: If the model has no value projections, or a name is not a linear layer of `unet`.
    """
    if layers is None:
        layers = value_projection_names(unet, blocks=PAPER_BLOCKS) or value_projection_names(unet)
    if not layers:
        raise ValueError("The model has no cross-attention value projections (`attn2.to_v`).")
    modules = dict(unet.named_modules())
    for name in layers:
        if not isinstance(modules.get(name), torch.nn.Linear):
            raise ValueError(f"Unknown layer {name!r}; value projections are {value_projection_names(unet)}.")
    return list(layers)


@torch.no_grad()
def value_activations(
    unet: torch.nn.Module, layers: Sequence[str], embeddings: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``mean_over_tokens(|to_v(embedding)|)`` per layer, shape (prompts, channels); any NeMo hook is bypassed.

    Each projection runs on the text embedding directly (after the attention's cross-attention norm, if it has
    one), with no UNet pass.

    Args:
        unet: The denoiser holding the layers.
        layers: Names of value projections (``...attn2.to_v``) in `unet`.
        embeddings: Text embeddings, shape (prompts, tokens, hidden), as `encode_prompts` returns them.

    Returns:
        Layer name -> float32 activations on the CPU, shape (prompts, channels).

    Raises:
        NotImplementedError: If the UNet projects the text embedding first (`encoder_hid_dim_type` set).
    """
    modules = dict(unet.named_modules())
    if getattr(unet.config, "encoder_hid_dim_type", None) is not None:
        raise NotImplementedError("UNets that project the text embedding (`encoder_hid_proj`) are not supported.")
    out = {}
    for name in layers:
        to_v = modules[name]
        attention = modules[name.rsplit(".", 1)[0]]
        hidden = embeddings
        if getattr(attention, "norm_cross", None):
            hidden = attention.norm_encoder_hidden_states(hidden)
        out[name] = F.linear(hidden, to_v.weight, to_v.bias).abs().mean(dim=1).float().cpu()
    return out


@torch.no_grad()
def compute_activation_statistics(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    layers: Sequence[str] | None = None,
    batch_size: int = 32,
    calibrate_threshold: bool = True,
    scorer: NeMoScorerConfig | None = None,
    show_progress: bool = True,
    **scorer_kwargs,
) -> ActivationStatistics:
    """Per-channel mean/std of ``mean_over_tokens(|to_v(text embedding)|)`` over non-memorized ``prompts``.

    ``layers`` defaults to the value projections of the down and mid blocks (the paper's choice), or all
    ``attn2.to_v`` if the model has no such blocks. With ``calibrate_threshold`` (default) the memorization score
    of every prompt is computed too (``seeds`` UNet evaluations each) and ``threshold = mean + std`` of the scores.
    With the official score (``scorer=NeMoScorerConfig.official(guidance_scale=7)`` reproduces the official
    calibration) the mean and std are taken over every pairwise MS-SSIM of every prompt, as the official code does;
    `scores` still holds each prompt's largest one.

    Args:
        pipe: A text-to-image pipeline (`StableDiffusionPipeline` or alike).
        prompts: At least 2 prompts the model did not memorize.
        layers: Value projections to measure; None = the paper's choice above.
        batch_size: Prompts encoded (and measured) per batch.
        calibrate_threshold: Also score every prompt and set the memorization-score threshold.
        scorer: Seeds, timestep, guidance and SSIM settings of the scores (default `NeMoScorerConfig()`).
        show_progress: Show a progress bar over the batches.
        **scorer_kwargs: Deprecated: the scorer fields passed loose (`seeds=...`); a `FutureWarning` says so.

    Returns:
        The `ActivationStatistics`; `threshold`, `score_mean`, `score_std` and `scores` stay unset without
        ``calibrate_threshold``.

    Raises:
        ValueError: If there are fewer than 2 prompts or one is not a string, `batch_size` < 1, a layer is
            unknown, or the official score gets latents under `official_min_size`.
        TypeError: If `scorer` is not a `NeMoScorerConfig`, or `scorer_kwargs` holds a name that is not a scorer
            field.
    """
    if isinstance(prompts, str):
        raise ValueError("`prompts` must be a list of prompts, got one string (it would be split into characters).")
    prompts = list(prompts)
    if len(prompts) < 2 or not all(isinstance(p, str) for p in prompts):
        raise ValueError("`prompts` must be at least 2 strings (a std needs two samples).")
    batch_size = check_integer(batch_size, "batch_size", minimum=1)
    scorer = scorer_config(scorer, scorer_kwargs, "compute_activation_statistics")
    unet = pipeline_denoiser(pipe)
    layers = check_layers(unet, layers)
    if calibrate_threshold:
        latent_size(unet, scorer)  # the official score refuses latents too small for MS-SSIM, before any work
    per_layer = {name: [] for name in layers}
    scores, pairwise, official = [], [], scorer.score == "official"
    chunks = range(0, len(prompts), batch_size)
    for start in tqdm(chunks, desc="NeMo statistics", disable=not show_progress):
        batch = prompts[start : start + batch_size]
        cond, uncond = encode_prompts(pipe, batch, calibrate_threshold and scorer.guidance_scale != 0)
        for name, acts in value_activations(unet, layers, cond).items():
            per_layer[name].append(acts)
        if calibrate_threshold:
            for i, prompt in enumerate(batch):
                pair = (cond[i : i + 1], None if uncond is None else uncond[i : i + 1])
                score = MemorizationScorer(pipe, prompt, scorer, embeddings=pair)
                if official:
                    pairwise.append(score.pairwise_similarities())
                scores.append(score())
    acts = {name: torch.cat(chunks) for name, chunks in per_layer.items()}
    stats = ActivationStatistics(
        {name: a.mean(0) for name, a in acts.items()},
        {name: a.std(0) for name, a in acts.items()},
        num_prompts=len(prompts),
    )
    if scores:
        # The official threshold is mean + 1 std of every pairwise MS-SSIM (its README: load the pairwise scores
        # and take their mean and std); ours, of each prompt's score (its largest pairwise SSIM).
        values = torch.cat(pairwise).double() if official else torch.tensor(scores, dtype=torch.float64)
        stats.score_mean, stats.score_std = float(values.mean()), float(values.std())
        stats.threshold = stats.score_mean + stats.score_std
        stats.scores = scores
    return stats
