"""The pure searches behind NeMo's localization: group testing over sets of atoms, given a monotone check.

Nothing here runs a model: every function takes the check (`holds`, `passes`, `score`) as a callable, so the
searches are tested on plain sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar


if TYPE_CHECKING:
    import torch


Atom = TypeVar("Atom")  # one candidate of a search: a layer name, or a (layer name, channel id) pair


def initial_selection(
    acts: dict[str, torch.Tensor], z: dict[str, torch.Tensor], theta: float, k: int
) -> dict[str, list[int]]:
    """The paper's initial set per layer: channels with z-score above `theta`, plus the `k` largest activations.

    Args:
        acts: Layer name -> activations of the prompt (1-D tensor over channels).
        z: Layer name -> z-scores of those activations.
        theta: The z-score threshold.
        k: How many top activations per layer to add (at most the layer's channel count).

    Returns:
        Layer name -> sorted channel ids, for every layer of `acts` (possibly an empty list).
    """
    return {name: sorted(set(ids)) for name, ids in official_initial_selection(acts, z, theta, k).items()}


def official_initial_selection(
    acts: dict[str, torch.Tensor], z: dict[str, torch.Tensor], theta: float, k: int
) -> dict[str, list[int]]:
    """The same channels as `initial_selection`, listed as the official code lists them for its refinement.

    Per layer: the channels with z-score above `theta` (ascending), then the top-`k` channels (largest activation
    first), duplicates kept. The order and the duplicates matter to `official_refinement`, which removes one copy
    at a time, as the official code does; silencing a list silences its set of channels.

    Args:
        acts: Layer name -> activations of the prompt (1-D tensor over channels).
        z: Layer name -> z-scores of those activations.
        theta: The z-score threshold.
        k: How many top activations per layer to add (at most the layer's channel count).

    Returns:
        Layer name -> channel ids in that order, for every layer of `acts` (possibly an empty list).

    Examples:
        >>> import torch
        >>> official_initial_selection({"a": torch.tensor([5.0, 1.0, 9.0])}, {"a": torch.tensor([3.0, 4.0, 1.5])}, 2.0, 1)
        {'a': [0, 1, 2]}
        >>> official_initial_selection({"a": torch.tensor([5.0, 1.0, 9.0])}, {"a": torch.tensor([3.0, 4.0, 3.5])}, 2.0, 1)
        {'a': [0, 1, 2, 2]}
    """
    return {
        name: (z[name] > theta).nonzero().flatten().tolist()
        + acts[name].topk(min(k, len(acts[name]))).indices.tolist()
        for name in acts
    }


def official_refinement(
    score: Callable[[dict[str, list[int]]], float], selection: dict[str, list[int]], threshold: float
) -> dict[str, list[int]]:
    """The official refinement, list operations included: drop each layer, then each listed channel, whenever the
    score of what remains is strictly under `threshold`.

    Layers are tried last to first (empty ones skipped); then, for the layers left (last to first), each entry of
    the layer's list as it stood when the layer's turn came, in order: one copy of it is removed (`list.remove`, the
    first copy), so a duplicated channel stays silenced until its last copy goes, as in the official code. One
    ``score`` call per layer and per entry.

    Args:
        score: ``score(neurons)`` -> the score with the channels of those lists silenced.
        selection: Layer name -> channel ids, as `official_initial_selection` lists them.
        threshold: A removal is kept when the score is under this value.

    Returns:
        Layer name -> the remaining entries, for every layer of `selection` (possibly an empty list).

    Examples:
        >>> official_refinement(lambda kept: 0.0 if 4 in kept.get("a", []) else 1.0, {"a": [1, 4, 4], "b": [2]}, 0.5)
        {'a': [4], 'b': []}
    """
    current = {name: list(channels) for name, channels in selection.items()}
    for name in reversed(list(current)):
        if current[name] and score({**current, name: []}) < threshold:
            current[name] = []
    for name in reversed(list(current)):
        for channel in list(current[name]):
            trial = list(current[name])
            trial.remove(channel)
            if score({**current, name: trial}) < threshold:
                current[name].remove(channel)
    return current


def drop_unneeded(
    atoms: list[Atom], holds: Callable[[list[Atom]], bool], order: list[Atom] | None = None
) -> list[Atom]:
    """Remove atoms of ``atoms`` while ``holds`` stays true, trying them in ``order`` (default: as listed).

    Adaptive group testing: try removing a group at once; on success drop it and double the group size, on failure
    halve it; an atom that fails alone is kept. Every kept atom failed alone against a superset of the result, so,
    if ``holds`` is monotone (a superset of a passing set passes), removing any single kept atom breaks ``holds``
    (the guarantee of the one-at-a-time loop, which needs one check per atom). Given ``holds(atoms)``.

    Args:
        atoms: The candidates; ``holds(atoms)`` is assumed true and is not checked.
        holds: The check, called on the atoms that would remain (in the order of ``atoms``).
        order: The atoms in the order to try removing them; None tries them as listed in ``atoms``.

    Returns:
        The kept atoms, in the order of ``atoms``.

    Examples:
        >>> drop_unneeded([1, 2, 3, 4, 5], lambda kept: 2 in kept and 4 in kept)
        [2, 4]
    """
    current, queue, size = list(atoms), list(atoms if order is None else order), 1
    while queue:
        group = queue[:size]
        trial = [a for a in current if a not in group]
        if holds(trial):
            current, queue, size = trial, queue[size:], size * 2
        elif size > 1:
            size //= 2
        else:
            queue = queue[1:]
    return current


def as_neurons(pairs: Iterable[tuple[str, int]]) -> dict[str, list[int]]:
    """Group ``(layer name, channel id)`` pairs by layer.

    Args:
        pairs: The pairs, in any order.

    Returns:
        Layer name -> its channel ids, both in order of first appearance (not sorted, not deduplicated).

    Examples:
        >>> as_neurons([("a", 3), ("b", 1), ("a", 0)])
        {'a': [3, 0], 'b': [1]}
    """
    neurons: dict[str, list[int]] = {}
    for name, channel in pairs:
        neurons.setdefault(name, []).append(channel)
    return neurons


def shortest_sufficient_prefix(atoms: list[Atom], holds: Callable[[list[Atom]], bool]) -> list[Atom]:
    """The shortest prefix of ``atoms`` with ``holds`` (binary search, ~log2(n) checks), given ``holds(atoms)``.

    The search assumes ``holds`` is monotone in the prefix length (once true, true for every longer prefix); else
    it returns some passing prefix, not necessarily the shortest.

    Args:
        atoms: The candidates, most important first; ``holds(atoms)`` is assumed true and is not checked.
        holds: The check, called on prefixes of ``atoms``; never on the empty prefix.

    Returns:
        The prefix (a slice of ``atoms``, at least one atom long when ``atoms`` is not empty).

    Examples:
        >>> shortest_sufficient_prefix([5, 4, 3, 2, 1], lambda prefix: sum(prefix) >= 9)
        [5, 4]
    """
    low, high = 0, len(atoms)  # holds(atoms[:high]) is known; atoms[:low] is not known to hold
    while high - low > 1:
        middle = (low + high) // 2
        if holds(atoms[:middle]):
            high = middle
        else:
            low = middle
    return atoms[:high]


def refine_group(
    score: Callable[[dict[str, list[int]]], float],
    selection: dict[str, list[int]],
    threshold: float,
    z: dict[str, torch.Tensor],
) -> dict[str, list[int]]:
    """Drop layers, then channels, by adaptive group testing; least anomalous (lowest z-score) tried first.

    Layers are tried in increasing order of their largest z-score over the selected channels. Channels: first the
    shortest sufficient prefix of the most anomalous ones (binary search), so everything after it goes in ~log2(n)
    checks; then `drop_unneeded` inside the prefix.

    Args:
        score: ``score(neurons)`` -> the memorization score with those channels silenced.
        selection: Layer name -> channel ids whose silencing brings the score under ``threshold``.
        threshold: A set passes when its score is under this value.
        z: Layer name -> z-scores per channel (indexed by channel id), for every layer of ``selection``.

    Returns:
        Layer name -> the kept channel ids (sorted), layers in the order of ``selection``; layers with none kept
        are left out.
    """

    def holds_layers(names):
        return score({name: selection[name] for name in names}) < threshold

    layers = [name for name in selection if selection[name]]
    peak = {name: max(float(z[name][c]) for c in selection[name]) for name in layers}
    layers = drop_unneeded(layers, holds_layers, order=sorted(layers, key=peak.get))
    channels = sorted(((name, c) for name in layers for c in selection[name]), key=lambda p: -float(z[p[0]][p[1]]))

    def holds(pairs):
        return score(as_neurons(pairs)) < threshold

    prefix = shortest_sufficient_prefix(channels, holds)
    kept = as_neurons(drop_unneeded(prefix, holds, order=prefix[::-1]))
    return {name: sorted(kept[name]) for name in selection if name in kept}


def refine_greedy(
    score: Callable[[dict[str, list[int]]], float],
    selection: dict[str, list[int]],
    threshold: float,
    z: dict[str, torch.Tensor] | None = None,
) -> dict[str, list[int]]:
    """The official refinement: drop each layer, then each channel, whenever the score stays under the threshold.

    First each layer is tried (last to first), then each channel of the layers left (layers last to first, channels
    in their listed order): one ``score`` call per layer and per channel.

    Args:
        score: ``score(neurons)`` -> the memorization score with those channels silenced.
        selection: Layer name -> channel ids whose silencing brings the score under ``threshold``.
        threshold: A set passes when its score is under this value.
        z: Unused; accepted so that `refine_group` and `refine_greedy` are called the same way.

    Returns:
        Layer name -> the kept channel ids, layers in the order of ``selection``; layers with none kept are left out.
    """
    current = {name: list(c) for name, c in selection.items() if c}
    for name in reversed(list(current)):
        without = {n: c for n, c in current.items() if n != name}
        if score(without) < threshold:
            current = without
    for name in reversed(list(current)):
        for channel in list(current[name]):
            without = {**current, name: [c for c in current[name] if c != channel]}
            if score(without) < threshold:
                current = without
    return {name: c for name, c in current.items() if c}


def official_scan(
    check: Callable[[dict[str, list[int]]], float],
    acts: dict[str, torch.Tensor],
    z: dict[str, torch.Tensor],
    threshold: float,
    theta: float,
    theta_step: float,
    min_theta: float,
    max_k: int,
) -> tuple[dict[str, list[int]], float, int, float, float]:
    """The official initial selection loop, step by step, with its stopping rule.

    Step s tests `official_initial_selection` at z-threshold θ and top-k (θ = `theta`, k = 0 first). A step passes
    when its score is at most `threshold`. After a failing step θ falls by `theta_step` (while above `min_theta`)
    and k grows by 1; the loop then stops *without testing* once θ has reached `min_theta` or k `max_k` (the
    official code: ``theta == 1 or k >= 1280``, SD-1.x's widest layer), and the last score tested becomes the
    refinement threshold. With the defaults (θ from 5 by 0.25 to 1) that is 16 steps, the last at θ = 1.25, k = 15.

    Args:
        check: `check(neurons)` -> the score with those neurons silenced (called once per step).
        acts: Layer name -> the prompt's activations.
        z: Layer name -> their z-scores.
        threshold: A step passes when its score is at most this.
        theta: The starting z-score threshold.
        theta_step: How much θ falls per failing step.
        min_theta: The θ at which the loop stops untested.
        max_k: The k at which the loop stops untested.

    Returns:
        `(selection, score, k, theta, refinement_threshold)` of the last step tested; `refinement_threshold` is
        `threshold` when that step passed, else its score.
    """
    k = 0
    while True:
        selection, tested_theta, tested_k = official_initial_selection(acts, z, theta, k), theta, k
        score = check(selection)
        passed = score <= threshold
        if not passed:
            if theta > min_theta:
                theta -= theta_step
            k += 1
        if theta <= min_theta + 1e-9 or k >= max_k:  # float slack: θ comes from repeated subtraction
            return selection, score, tested_k, tested_theta, score
        if passed:
            return selection, score, tested_k, tested_theta, threshold


def first_passing_step(passes: Callable[[int], bool], max_step: int, exhaustive: bool = False) -> int:
    """The first step in 0..`max_step` where `passes(step)` holds, or `max_step` if none does.

    With `exhaustive` (the official scan) steps are tried one by one. Otherwise by exponential then binary search:
    the same step when `passes` is monotone (once true, true for every later step), in ~2·log2(step) calls.

    Args:
        passes: The check; it may be called more than once per step (cache it if it is costly).
        max_step: The last step to try.
        exhaustive: Scan 0, 1, 2, ... instead of searching.
    """
    if exhaustive:
        step = 0
        while not passes(step) and step < max_step:
            step += 1
        return step
    low, step = -1, 0
    while not passes(step) and step < max_step:
        low, step = step, min(max(1, 2 * step), max_step)
    while passes(step) and step - low > 1:
        middle = (low + step) // 2
        if passes(middle):
            step = middle
        else:
            low = middle
    return step
