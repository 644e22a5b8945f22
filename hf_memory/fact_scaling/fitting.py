"""The two fact-capacity laws of Lu et al. (2024), fitted with scipy's `curve_fit` and bootstrap intervals.

* Linear in non-embedding parameters: C(P) = slope * P + intercept.
* Negative exponential in epochs: C(E) = c_max - alpha * exp(-beta * E).

Intervals come from a residual bootstrap: the fitted curve plus resampled residuals (scaled by sqrt(n / (n - p))
so that their spread matches the noise), refitted `n_bootstrap` times; the interval is the central `confidence`
share of the refitted values. It works with the handful of points a scaling sweep gives, where resampling the
points themselves would often leave fewer distinct x than parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._utils import check_integer, check_number, require_extra


FIT_LAWS = ("linear", "epoch")


@dataclass
class CapacityFit:
    """A fitted fact-capacity law.

    Attributes:
        law: "linear" (capacity against non-embedding parameters) or "epoch" (capacity against epochs).
        params: The fitted constants: `slope`, `intercept` (linear) or `c_max`, `alpha`, `beta` (epoch).
        ci: The same keys -> `(low, high)`, the bootstrap interval at `confidence`.
        r2: The coefficient of determination of the fit on its points.
        confidence: The interval's coverage, e.g. 0.95.
        x: The points' x values (parameters or epochs).
        y: The points' capacities.
    """

    law: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    r2: float
    confidence: float = 0.95
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    def predict(self, x) -> np.ndarray:
        """The law's capacity at `x` (parameters or epochs).

        Args:
            x: A number or an array of numbers.
        """
        return _LAWS[self.law](np.asarray(x, dtype=float), *(self.params[name] for name in _NAMES[self.law]))


def _linear(x, slope, intercept):
    return slope * x + intercept


def _epoch(x, c_max, alpha, beta):
    return c_max - alpha * np.exp(-beta * x)


_LAWS: dict[str, Callable] = {"linear": _linear, "epoch": _epoch}
_NAMES = {"linear": ("slope", "intercept"), "epoch": ("c_max", "alpha", "beta")}


def _points(x, y, x_name: str, y_name: str, positive_x: bool) -> tuple[np.ndarray, np.ndarray]:
    def as_array(values, name):
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise ValueError(f"`{name}` must be a sequence of numbers, got {type(values).__name__}.")
        if np.ndim(np.asarray(values, dtype=object)) != 1:
            raise ValueError(f"`{name}` must be a flat sequence of numbers, got shape {np.shape(values)}.")
        items = list(values)
        return np.array([check_number(v, f"{name}[{i}]") for i, v in enumerate(items)], dtype=float)

    xs, ys = as_array(x, x_name), as_array(y, y_name)
    if len(xs) != len(ys):
        raise ValueError(f"`{x_name}` has {len(xs)} values but `{y_name}` has {len(ys)}: give one per point.")
    if len(xs) < 3:
        raise ValueError(f"A fit needs at least 3 points, got {len(xs)}.")
    if positive_x and (xs <= 0).any():
        raise ValueError(f"`{x_name}` must all be > 0 (model sizes), got {xs[xs <= 0][0]:g}.")
    if not positive_x and (xs < 0).any():
        raise ValueError(f"`{x_name}` must all be >= 0, got {xs[xs < 0][0]:g}.")
    if (ys < 0).any():
        raise ValueError(f"`{y_name}` must all be >= 0 (counts of facts), got {ys[ys < 0][0]:g}.")
    return xs, ys


def _r2(y: np.ndarray, fitted: np.ndarray) -> float:
    residual = float(np.sum((y - fitted) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    if total == 0:  # a flat curve: a perfect fit, up to the fit's rounding, or none
        return 1.0 if residual <= 1e-12 * max(1.0, float(np.sum(y**2))) else float("nan")
    return 1.0 - residual / total


def _fit_once(law: str, x: np.ndarray, y: np.ndarray, p0=None) -> np.ndarray | None:
    from scipy.optimize import curve_fit

    if law == "linear":
        start = np.polyfit(x, y, 1) if p0 is None else p0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(_linear, x, y, p0=start)
        except (RuntimeError, ValueError):
            return None
        return params
    if p0 is None:  # variable projection: for each beta on a grid, c_max and alpha are a linear least squares
        scale = max(float(x.max()), 1e-12)
        best, best_sse = None, math.inf
        for beta in np.logspace(-3, 2, 120) / scale:
            basis = np.stack([np.ones_like(x), -np.exp(-beta * x)], axis=1)
            coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
            sse = float(np.sum((basis @ coef - y) ** 2))
            if sse < best_sse:
                best, best_sse = np.array([coef[0], coef[1], beta]), sse
        p0 = best
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(
                _epoch, x, y, p0=p0, bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, np.inf]), maxfev=20000
            )
    except (RuntimeError, ValueError):
        return np.asarray(p0, dtype=float)
    return params


def _beta_identified(x: np.ndarray, y: np.ndarray, params) -> bool:
    """Whether the points tell the epoch law's beta: changing it by half moves the curve at some measured epoch by
    more than rounding. When the curve has saturated by the first epoch measured after 0, no refit can move beta,
    and a bootstrap interval would have no width while saying nothing."""
    c_max, alpha, beta = params
    change = np.abs(_epoch(x, c_max, alpha, beta * 1.5) - _epoch(x, c_max, alpha, beta / 1.5))
    return bool(change.max() > 1e-8 * max(1.0, float(np.abs(y).max())))


def _fit(law: str, x, y, x_name: str, n_bootstrap, confidence, seed) -> CapacityFit:
    require_extra("analysis", "Fitting fact-capacity laws")
    x, y = _points(x, y, x_name, "capacities", positive_x=law == "linear")
    n_bootstrap = check_integer(n_bootstrap, "n_bootstrap", minimum=10)
    confidence = check_number(
        confidence, "confidence", minimum=0.0, maximum=1.0, exclusive_minimum=True, exclusive_maximum=True
    )
    seed = check_integer(seed, "seed", minimum=0)
    names = _NAMES[law]
    if len(np.unique(x)) < len(names):
        raise ValueError(
            f"The {law} law has {len(names)} constants but `{x_name}` holds only {len(np.unique(x))} distinct "
            f"values: give at least {len(names)}."
        )
    params = _fit_once(law, x, y)
    if params is None:
        raise ValueError(f"The {law} law could not be fitted to these points.")
    fitted = _LAWS[law](x, *params)
    residuals = (y - fitted) * math.sqrt(len(x) / max(len(x) - len(names), 1))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_bootstrap):
        sample = fitted + rng.choice(residuals, size=len(x), replace=True)
        refit = _fit_once(law, x, sample, p0=params)
        if refit is not None and np.all(np.isfinite(refit)):
            draws.append(refit)
    draws = np.array(draws).reshape(-1, len(names))
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    ci = {n: (float(lo), float(hi)) for n, lo, hi in zip(names, low, high)}
    if law == "epoch" and not _beta_identified(x, y, params):
        ci["beta"] = (math.nan, math.nan)
        warnings.warn(
            f"Changing beta moves the epoch law's curve at no measured epoch (fitted beta = {params[2]:g}, alpha = "
            f"{params[1]:g}): the curve saturated before the first epoch measured after 0, or is flat, so the points do "
            "not tell beta and its interval is (nan, nan). Measure earlier epochs to pin it down.",
            stacklevel=3,
        )
    return CapacityFit(
        law=law,
        params={n: float(v) for n, v in zip(names, params)},
        ci=ci,
        r2=_r2(y, fitted),
        confidence=confidence,
        x=x.tolist(),
        y=y.tolist(),
    )


def fit_linear_capacity(
    params: Sequence[float],
    capacities: Sequence[float],
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CapacityFit:
    """Fit capacity = slope * non-embedding parameters + intercept (Lu et al.'s linear law).

    Args:
        params: Non-embedding parameter counts of the models (> 0), one per point.
        capacities: Facts each model knows at saturation, one per point.
        n_bootstrap: Bootstrap refits for the intervals.
        confidence: Coverage of the intervals, in (0, 1).
        seed: Seed of the bootstrap.

    Returns:
        A `CapacityFit` with `params` `slope` and `intercept`, their `ci`, and `r2`.

    Raises:
        ValueError: With fewer than 3 points, lengths that differ, a size <= 0, a negative or non-finite number.
        ImportError: If scipy (the `analysis` extra) is missing.

    Examples:
        >>> fit = fit_linear_capacity([1e4, 2e4, 4e4, 8e4], [2e3, 4e3, 8e3, 16e3])
        >>> round(fit.params["slope"], 6), round(fit.r2, 6)
        (0.2, 1.0)
    """
    return _fit("linear", params, capacities, "params", n_bootstrap, confidence, seed)


def fit_epoch_capacity(
    epochs: Sequence[float],
    capacities: Sequence[float],
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CapacityFit:
    """Fit capacity = c_max - alpha * exp(-beta * epochs) (Lu et al.'s law in training epochs).

    The starting point comes from a grid over beta with `c_max` and `alpha` solved exactly for each, so the fit
    needs no initial guess; `beta` is kept >= 0. With exactly 3 points the curve passes through them and the
    bootstrap interval has no width. When the points do not tell beta (the curve saturated before the first epoch
    measured after 0, or is flat), its interval is `(nan, nan)`, with a warning.

    Args:
        epochs: Epochs trained (>= 0), one per point.
        capacities: Facts known after that many epochs.
        n_bootstrap: Bootstrap refits for the intervals.
        confidence: Coverage of the intervals, in (0, 1).
        seed: Seed of the bootstrap.

    Returns:
        A `CapacityFit` with `params` `c_max`, `alpha` and `beta`, their `ci`, and `r2`.

    Raises:
        ValueError: With fewer than 3 points (or 3 distinct epochs), lengths that differ, a negative or non-finite
            number.
        ImportError: If scipy (the `analysis` extra) is missing.

    Examples:
        >>> import numpy as np
        >>> e = np.arange(0, 50, 5)
        >>> fit = fit_epoch_capacity(e, 1000 - 900 * np.exp(-0.1 * e), n_bootstrap=20)
        >>> round(fit.params["c_max"]), round(fit.params["beta"], 3)
        (1000, 0.1)
    """
    return _fit("epoch", epochs, capacities, "epochs", n_bootstrap, confidence, seed)


@dataclass
class RequiredScale:
    """How big a model and how long training must be to memorize a number of facts (the laws inverted).

    Attributes:
        n_facts: The number of facts asked for.
        non_embedding_params: Non-embedding parameters whose saturation capacity is `n_facts / fraction`.
        epochs: Epochs to reach `fraction` of saturation capacity (None without an epoch fit).
        fraction: The share of saturation capacity reached after `epochs`.
    """

    n_facts: float
    non_embedding_params: float
    epochs: float | None
    fraction: float


def required_scale(
    n_facts: float, linear_fit: CapacityFit, epoch_fit: CapacityFit | None = None, fraction: float = 0.95
) -> RequiredScale:
    """Invert the fitted laws: the model size and training epochs that memorize `n_facts` facts.

    Without an epoch fit: the size whose saturation capacity is `n_facts`. With one, training stops at
    `fraction` of saturation, so the model must saturate at `n_facts / fraction`, and the epochs are those the
    epoch law needs to reach that fraction: E = ln((alpha / c_max) / (1 - fraction)) / beta. This assumes the epoch
    law's shape (alpha / c_max and beta) carries over from the size it was measured on, as Lu et al. do.

    Args:
        n_facts: How many facts to memorize (> 0).
        linear_fit: A `fit_linear_capacity` result (slope > 0).
        epoch_fit: A `fit_epoch_capacity` result, or None.
        fraction: Share of saturation capacity reached in training, in (0, 1); used with `epoch_fit` only.

    Returns:
        A `RequiredScale`; sizes below zero (fewer facts than the intercept) are given as 0.

    Raises:
        ValueError: On a non-positive `n_facts`, a fit of the wrong law, a non-increasing linear law or an epoch
            law with `c_max` <= 0.

    Examples:
        >>> fit = fit_linear_capacity([1e4, 2e4, 4e4], [2e3, 4e3, 8e3])
        >>> round(required_scale(1e9, fit).non_embedding_params)
        5000000000
    """
    n_facts = check_number(n_facts, "n_facts", minimum=0.0, exclusive_minimum=True)
    fraction = check_number(
        fraction,
        "fraction",
        minimum=0.0,
        maximum=1.0,
        exclusive_minimum=True,
        exclusive_maximum=True,
        hint="saturation itself takes infinitely many epochs",
    )
    if not isinstance(linear_fit, CapacityFit) or linear_fit.law != "linear":
        raise ValueError("`linear_fit` must be the result of fit_linear_capacity.")
    slope, intercept = linear_fit.params["slope"], linear_fit.params["intercept"]
    if slope <= 0:
        raise ValueError(
            f"The linear law has slope {slope:g} <= 0: capacity does not grow with size, no size will do."
        )
    if epoch_fit is None:
        return RequiredScale(n_facts, max((n_facts - intercept) / slope, 0.0), None, 1.0)
    if not isinstance(epoch_fit, CapacityFit) or epoch_fit.law != "epoch":
        raise ValueError("`epoch_fit` must be the result of fit_epoch_capacity, or None.")
    c_max, alpha, beta = (epoch_fit.params[k] for k in ("c_max", "alpha", "beta"))
    if c_max <= 0 or beta <= 0:
        raise ValueError(f"The epoch law has c_max={c_max:g}, beta={beta:g}: both must be > 0 to be inverted.")
    ratio = alpha / c_max
    epochs = max(math.log(ratio / (1.0 - fraction)) / beta, 0.0) if ratio > 0 else 0.0
    params = max((n_facts / fraction - intercept) / slope, 0.0)
    return RequiredScale(n_facts, params, epochs, fraction)
