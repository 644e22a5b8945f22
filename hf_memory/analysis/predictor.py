"""`MemorizationPredictor`: a classifier from memorization signals to extraction labels.

Needs the `analysis` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .._utils import check_integer, check_number, require_extra
from .signals import PREDICTOR_FEATURES, MemorizationSignals


if TYPE_CHECKING:
    from ..extraction import ExtractionResult

require_extra("analysis", "MemorizationPredictor")

DEFAULT_PREDICTOR_FEATURES = PREDICTOR_FEATURES[:7]  # the n-gram ones need `ngram_counts`


def extraction_labels(result: ExtractionResult, min_score: float | None = None) -> list[int]:
    """Per-window labels from `measure_extraction`: exact match, or memorization score >= `min_score` when given.

    Args:
        result: The `ExtractionResult` of the windows to label.
        min_score: Label a window memorized when its positional memorization score reaches this value; None uses
            exact match. Needs a result measured with a method that decodes the whole suffix (not "prefix").

    Returns:
        One label per window, in input order: 1 = memorized, 0 = not.
    """
    per_sample = result.per_sample()
    if min_score is None:
        return [int(x) for x in per_sample["exact_match_per_sample"]]
    return [int(x >= min_score) for x in per_sample["memorization_score_per_sample"]]


@dataclass
class PredictorReport:
    """Held-out accuracy and ROC AUC of a fitted `MemorizationPredictor`.

    Attributes:
        accuracy: Accuracy on the held-out windows, at probability threshold 0.5.
        auc: ROC AUC on the held-out windows.
        n_train: Windows the classifier was fitted on.
        n_test: Held-out windows.
        features: Names of the features, in column order; all the hidden state's columns come last, under the
            one name `"hidden[layer]"`.
    """

    accuracy: float
    auc: float
    n_train: int
    n_test: int
    features: list[str] = field(default_factory=list)


class MemorizationPredictor:
    """Logistic regression (standardized features) from `MemorizationSignals` to memorized / not memorized labels.

    Features: any of `PREDICTOR_FEATURES` (entropy and n-gram ones average `boundary_window` positions before and
    from the boundary; n-gram counts enter as log(1 + count)), plus the pooled hidden state of `hidden_layer`.

    Args:
        features: Names from `PREDICTOR_FEATURES`; the default leaves out the n-gram ones, which need signals
            computed with `ngram_counts`. May be empty when `hidden_layer` is set.
        hidden_layer: Also use the pooled hidden state of this layer (0 = embeddings, negative counts from the
            last); None uses no hidden state.
        boundary_window: Positions averaged on each side of the boundary for the entropy and n-gram features.
        C: Inverse regularization strength of the logistic regression (scikit-learn's `C`).
        max_iter: Iteration limit of the logistic regression solver.

    Attributes:
        pipeline: The fitted scikit-learn pipeline (scaler, then logistic regression); None before `fit`.
        report: The `PredictorReport` of the last `fit`; None before.

    Raises:
        ValueError: If `features` names an unknown feature or is empty without `hidden_layer`, `boundary_window` or
            `max_iter` is not an integer >= 1, `hidden_layer` not an integer, or `C` not a number > 0.
    """

    def __init__(
        self,
        features: Sequence[str] = DEFAULT_PREDICTOR_FEATURES,
        hidden_layer: int | None = None,
        boundary_window: int = 8,
        C: float = 1.0,
        max_iter: int = 2000,
    ):
        unknown = [f for f in features if f not in PREDICTOR_FEATURES]
        if unknown or (not features and hidden_layer is None):
            raise ValueError(
                f"`features` must be a subset of {PREDICTOR_FEATURES} (non-empty without `hidden_layer`), got {features!r}."
            )
        boundary_window = check_integer(boundary_window, "boundary_window", minimum=1)
        hidden_layer = check_integer(hidden_layer, "hidden_layer", allow_none=True, hint="0 = embeddings, -1 = last")
        self.features, self.hidden_layer, self.boundary_window = list(features), hidden_layer, boundary_window
        self.C = check_number(C, "C", minimum=0, exclusive_minimum=True, hint="inverse regularization strength")
        self.max_iter = check_integer(max_iter, "max_iter", minimum=1)
        self.pipeline = None
        self.report: PredictorReport | None = None

    def feature_matrix(self, signals: MemorizationSignals) -> np.ndarray:
        """One row per window, one column per feature (then the hidden state's dimensions).

        Args:
            signals: The windows' signals, from `memorization_signals`.

        Returns:
            The unscaled feature matrix, shape (windows, features + hidden size).

        Raises:
            ValueError: If a feature needs signals that `signals` lacks (n-gram counts, hidden states), or
                `hidden_layer` is out of range.
        """
        w = self.boundary_window
        columns = []
        for name in self.features:
            if name in ("confidence", "true_prob", "logit_mean", "logit_var"):
                columns.append(getattr(signals, name))
                continue
            kind, side = name.split("_")
            source = "entropy" if kind == "entropy" else kind
            offsets, values = signals.boundary(source, w)
            values = values if source == "entropy" else np.log1p(values)
            before, after = np.nanmean(values[:, offsets < 0], 1), np.nanmean(values[:, offsets >= 0], 1)
            columns.append({"prefix": before, "suffix": after, "jump": after - before}[side])
        matrix = np.stack(columns, 1) if columns else np.zeros((len(signals), 0))
        if self.hidden_layer is not None:
            if signals.hidden is None:
                raise ValueError("`hidden_layer` is set but the signals have no hidden states (hidden_states=False).")
            if not -len(signals.hidden) <= self.hidden_layer < len(signals.hidden):
                raise ValueError(
                    f"`hidden_layer` must be in [-{len(signals.hidden)}, {len(signals.hidden)}), got {self.hidden_layer}."
                )
            matrix = np.concatenate([matrix, signals.hidden[self.hidden_layer]], 1)
        return matrix

    def fit(
        self,
        signals: MemorizationSignals,
        labels: Sequence[int] | np.ndarray | ExtractionResult,
        test_size: float = 0.3,
        seed: int = 0,
    ) -> PredictorReport:
        """Fit on a stratified split and report accuracy and AUC on the held-out part.

        Args:
            signals: The windows' signals, from `memorization_signals`.
            labels: One 0/1 (or boolean) label per window, or an `ExtractionResult` of the same windows (labelled by
                exact match).
            test_size: Fraction of the windows held out, in (0, 1).
            seed: Random state of the split.

        Returns:
            The `PredictorReport`, also kept in `report`.

        Raises:
            ValueError: If the labels do not match the windows, are not 0/1, hold fewer than 2 windows of a class,
                or `test_size` is outside (0, 1) or leaves a part without both classes.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, roc_auc_score
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if hasattr(labels, "per_sample"):
            labels = extraction_labels(labels)
        raw = np.asarray(labels)
        if raw.ndim != 1 or len(raw) != len(signals):
            raise ValueError(f"`labels` must hold one label per window ({len(signals)}), got shape {raw.shape}.")
        if raw.dtype.kind not in "biuf" or not np.isin(raw, (0, 1)).all():  # never truncate 0.95 to 0
            raise ValueError(f"`labels` must be 0/1 (or booleans), got values like {raw[~np.isin(raw, (0, 1))][:3]}.")
        y = raw.astype(int)
        counts = np.bincount(y, minlength=2)
        if counts.min() < 2:
            raise ValueError(
                f"`labels` need at least 2 memorized and 2 non-memorized windows to fit and evaluate, got {counts[1]} and {counts[0]}."
            )
        if not 0 < test_size < 1:
            raise ValueError(f"`test_size` must be in (0, 1), got {test_size!r}.")
        X = self.feature_matrix(signals)
        try:
            X_train, X_test, y_train, y_test = train_test_split(
                X, y, test_size=test_size, random_state=seed, stratify=y
            )
        except ValueError as err:
            raise ValueError(
                f"Cannot split {len(y)} windows with `test_size`={test_size} keeping both classes: {err}"
            ) from None
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))
        self.pipeline.fit(X_train, y_train)
        scores = self.pipeline.predict_proba(X_test)[:, 1]
        names = self.features + ([f"hidden[{self.hidden_layer}]"] if self.hidden_layer is not None else [])
        self.report = PredictorReport(
            float(accuracy_score(y_test, scores >= 0.5)),
            float(roc_auc_score(y_test, scores)),
            len(y_train),
            len(y_test),
            names,
        )
        return self.report

    def predict_proba(self, signals: MemorizationSignals) -> np.ndarray:
        """Probability that each window is memorized.

        Args:
            signals: The windows' signals, computed with the settings used for `fit`.

        Returns:
            One probability per window, shape (windows,).

        Raises:
            ValueError: If the predictor is not fitted yet.
        """
        if self.pipeline is None:
            raise ValueError("This MemorizationPredictor is not fitted yet: call `fit` first.")
        return self.pipeline.predict_proba(self.feature_matrix(signals))[:, 1]
