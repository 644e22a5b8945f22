"""The post-hoc check: Carlini et al.'s extraction attack on a diffusion model, with tile-wise L2 distances."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .._utils import check_integer, check_number


def tile_distance(first: torch.Tensor, second: torch.Tensor, tile_grid: int = 4) -> torch.Tensor:
    """Pairwise "largest tile L2" distances: each image is cut into `tile_grid` × `tile_grid` tiles, and two images'
    distance is the largest root-mean-square difference over corresponding tiles (Carlini et al. 2023): two images
    are near-copies only if every tile is close.

    Args:
        first: (N, C, H, W) images (e.g. in [0, 1]).
        second: (M, C, H, W) images of the same shape.
        tile_grid: Tiles per side; H and W must be divisible by it.

    Returns:
        (N, M) distances, in the images' units (RMS per value); exactly 0 between identical images.

    Examples:
        >>> a = torch.zeros(1, 1, 4, 4); b = a.clone(); b[0, 0, 0, 0] = 1.0
        >>> tile_distance(a, b, tile_grid=2)  # one tile of 4 values differs by 1 in one value: sqrt(1/4)
        tensor([[0.5000]])
    """
    tile_grid = check_integer(tile_grid, "tile_grid", minimum=1)
    for name, images in (("first", first), ("second", second)):
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"`{name}` must be a (N, C, H, W) tensor of images.")
    if first.shape[1:] != second.shape[1:]:
        raise ValueError(f"Image shapes differ: {tuple(first.shape[1:])} and {tuple(second.shape[1:])}.")
    _, c, h, w = first.shape
    if h % tile_grid or w % tile_grid:
        raise ValueError(f"`tile_grid`={tile_grid} does not divide the image size {h}x{w}.")

    def tiles(images):  # (N, tiles, values per tile)
        n = len(images)
        x = images.float().reshape(n, c, tile_grid, h // tile_grid, tile_grid, w // tile_grid)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(n, tile_grid * tile_grid, -1)

    a, b = tiles(first), tiles(second)
    # (N, M, tiles): squared distances tile by tile, as a batched cdist over the tile axis. Not through cdist's matrix
    # product form (its default above 25 rows), which cancels badly: identical images would be ~1e-4 apart.
    distances = torch.cdist(a.transpose(0, 1), b.transpose(0, 1), compute_mode="donot_use_mm_for_euclid_dist")
    squared = distances.pow(2).permute(1, 2, 0)
    return (squared / a.shape[-1]).sqrt().amax(dim=-1)


_RANGE_TOLERANCE = 1e-3  # generations a sampler computed in floating point may overshoot [0, 1] by rounding


def _check_unit_range(images: torch.Tensor, what: str) -> None:
    """Refuse images that are not finite values in [0, 1] (e.g. 0..255 pixels, or [-1, 1] model outputs)."""
    values = images.detach().float()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{what} hold NaN or infinite values.")
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{what} range over [{low:.4g}, {high:.4g}]; the attack compares images in [0, 1] (divide 0..255 pixels "
            "by 255, map [-1, 1] outputs with (x + 1) / 2)."
        )


@dataclass
class ExtractionAttackResult:
    """What the tile-L2 extraction attack found, per prompt.

    Attributes:
        prompts: The attacked prompts.
        cluster_sizes: Per prompt, the size of the largest group of near-identical generations (a generation and
            those within `threshold` of it).
        memorized: Per prompt, whether that group has at least `min_cluster` generations.
        nearest_training: Per prompt, the index of the training image closest to the group's center (None without
            training images).
        training_distances: Per prompt, the tile distance from the group's center to that training image.
        extracted: Per prompt, memorized and the center within `threshold` of a training image (without training
            images: memorized).
        threshold: The distance under which two images count as the same.
    """

    prompts: list[str]
    cluster_sizes: list[int]
    memorized: list[bool]
    nearest_training: list[int | None] = field(default_factory=list)
    training_distances: list[float | None] = field(default_factory=list)
    extracted: list[bool] = field(default_factory=list)
    threshold: float = 0.0

    @property
    def num_memorized(self) -> int:
        """How many prompts produced a cluster of near-identical generations."""
        return sum(self.memorized)

    @property
    def num_extracted(self) -> int:
        """How many prompts produced a cluster that copies a training image."""
        return sum(self.extracted)

    @property
    def extracted_training_images(self) -> list[int]:
        """The distinct training images extracted, sorted."""
        return sorted({i for i, hit in zip(self.nearest_training, self.extracted) if hit and i is not None})


def _sampler_from_pipeline(pipe, generation_kwargs: dict) -> Callable:
    def sample(prompt: str, n: int, seed: int) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        kwargs = {"output_type": "pt", **generation_kwargs}
        images = pipe([prompt] * n, generator=generators, **kwargs).images
        images = torch.as_tensor(images)
        if kwargs["output_type"] == "latent":  # pixel-space toy pipelines: the "latents" are images in [-1, 1]
            images = (images + 1) / 2
        return images.float().clamp(0, 1)

    return sample


def diffusion_extraction_attack(
    pipe_or_sampler,
    prompts: Sequence[str],
    training_images: torch.Tensor | None,
    n_generations: int = 16,
    tile_grid: int = 4,
    threshold: float = 0.1,
    min_cluster: int = 3,
    seed: int = 0,
    generation_kwargs: dict | None = None,
) -> ExtractionAttackResult:
    """Carlini et al. (2023)'s extraction attack with MemControl's settings: generate `n_generations` images per
    prompt, call two generations the same when their largest tile L2 distance is under `threshold`, flag a prompt as
    memorized when a generation has `min_cluster` − 1 such near-copies among the others, and count it as extracted
    when that cluster's center is within `threshold` of a training image.

    Args:
        pipe_or_sampler: A diffusers text-to-image pipeline (called with `output_type="pt"`, or the
            `generation_kwargs` you give), or a function `(prompt, n, seed) -> (n, C, H, W)` images in [0, 1].
        prompts: The prompts to attack (the captions of the duplicated training images): a list, or any iterable
            of strings (read once).
        training_images: (M, C, H, W) training images in [0, 1] at the generations' size, or None to count
            clusters only.
        n_generations: Generations per prompt (the paper: 500; MemControl: 50).
        tile_grid: Tiles per side (4: 16 tiles).
        threshold: RMS distance (in [0, 1] pixel units) under which two images are the same.
        min_cluster: Near-identical generations needed to call a prompt memorized (MemControl: 3).
        seed: Generation i of every prompt uses seed `seed + i`.
        generation_kwargs: Extra keyword arguments of the pipeline call (steps, guidance, size, output_type).

    Returns:
        An `ExtractionAttackResult`.

    Raises:
        ValueError: If `prompts` is empty or not strings, a count or `threshold` is out of range, `min_cluster`
            exceeds `n_generations`, `training_images` is not a 4-D tensor of at least one image in [0, 1],
            `pipe_or_sampler` is not callable, or (after a prompt's generation) the sampler did not return
            `n_generations` finite images in [0, 1] (a rounding tolerance of 1e-3 is allowed).
    """
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__iter__"):
        raise ValueError(f"`prompts` must be a non-empty list of strings, got {type(prompts).__name__}.")
    prompts = [str(p) if isinstance(p, str) else p for p in prompts]  # a generator is read once; numpy str_ -> str
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("`prompts` must be a non-empty list of strings.")
    n_generations = check_integer(n_generations, "n_generations", minimum=2)
    tile_grid = check_integer(tile_grid, "tile_grid", minimum=1)
    threshold = check_number(threshold, "threshold", minimum=0, exclusive_minimum=True)
    min_cluster = check_integer(min_cluster, "min_cluster", minimum=2)
    seed = check_integer(seed, "seed")
    if min_cluster > n_generations:
        raise ValueError(f"`min_cluster`={min_cluster} exceeds `n_generations`={n_generations}: no cluster can form.")
    if training_images is not None:
        if not isinstance(training_images, torch.Tensor) or training_images.ndim != 4 or not len(training_images):
            raise ValueError("`training_images` must be a (M, C, H, W) tensor of M >= 1 images in [0, 1], or None.")
        _check_unit_range(training_images, "`training_images`")
    if not callable(pipe_or_sampler):
        raise ValueError("`pipe_or_sampler` must be a diffusers pipeline or a function (prompt, n, seed) -> images.")
    if hasattr(pipe_or_sampler, "components") or hasattr(pipe_or_sampler, "unet"):
        sample = _sampler_from_pipeline(pipe_or_sampler, dict(generation_kwargs or {}))
    else:
        sample = pipe_or_sampler
    result = ExtractionAttackResult(list(prompts), [], [], threshold=threshold)
    for prompt in prompts:
        images = torch.as_tensor(sample(prompt, n_generations, seed)).float()
        if images.ndim != 4 or len(images) != n_generations:
            raise ValueError(
                f"The sampler returned shape {tuple(images.shape)} for prompt {prompt!r}; expected "
                f"({n_generations}, C, H, W): `n_generations` images."
            )
        _check_unit_range(images, f"The generations for prompt {prompt!r}")
        close = tile_distance(images, images, tile_grid) < threshold
        close.fill_diagonal_(True)  # a generation is in its own group
        sizes = close.sum(dim=1)
        center = int(sizes.argmax())
        size = int(sizes[center])
        result.cluster_sizes.append(size)
        result.memorized.append(size >= min_cluster)
        if training_images is None:
            result.nearest_training.append(None)
            result.training_distances.append(None)
            result.extracted.append(size >= min_cluster)
            continue
        distances = tile_distance(images[center : center + 1], training_images, tile_grid)[0]
        nearest = int(distances.argmin())
        result.nearest_training.append(nearest)
        result.training_distances.append(float(distances[nearest]))
        result.extracted.append(size >= min_cluster and float(distances[nearest]) < threshold)
    return result
