"""`MemorizationPredictor`: a classifier from memorization signals to extraction labels (needs the `analysis` extra)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._utils import check_integer, require_extra
from .signals import PREDICTOR_FEATURES, MemorizationSignals


require_extra("analysis", "MemorizationPredictor")

DEFAULT_PREDICTOR_FEATURES = PREDICTOR_FEATURES[:7]  # the n-gram ones need `ngram_counts`


def extraction_labels(result, min_score: float | None = None) -> list[int]:
    """Per-window labels from `measure_extraction`: exact match, or memorization score >= `min_score` when given."""
    per_sample = result.per_sample()
    if min_score is None:
        return [int(x) for x in per_sample["exact_match_per_sample"]]
    return [int(x >= min_score) for x in per_sample["memorization_score_per_sample"]]


@dataclass
class PredictorReport:
    """Held-out accuracy and ROC AUC of a fitted `MemorizationPredictor`."""

    accuracy: float
    auc: float
    n_train: int
    n_test: int
    features: list[str] = field(default_factory=list)


class MemorizationPredictor:
    """Logistic regression (standardized features) from `MemorizationSignals` to memorized / not memorized labels.

    Features: any of `PREDICTOR_FEATURES` (entropy and n-gram ones average `boundary_window` positions before and
    from the boundary; n-gram counts enter as log(1 + count)), plus the pooled hidden state of `hidden_layer`.
    """

    def __init__(
        self,
        features=DEFAULT_PREDICTOR_FEATURES,
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
        self.features, self.hidden_layer, self.boundary_window = list(features), hidden_layer, boundary_window
        self.C, self.max_iter = C, max_iter
        self.pipeline = None
        self.report: PredictorReport | None = None

    def feature_matrix(self, signals: MemorizationSignals) -> np.ndarray:
        """One row per window, one column per feature (then the hidden state's dimensions)."""
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

    def fit(self, signals: MemorizationSignals, labels, test_size: float = 0.3, seed: int = 0) -> PredictorReport:
        """Fit on a stratified split and report accuracy and AUC on the held-out part. `labels`: one 0/1 per window,
        or an `ExtractionResult` of the same windows (exact match)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, roc_auc_score
        from sklearn.model_selection import train_test_split
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if hasattr(labels, "per_sample"):
            labels = extraction_labels(labels)
        y = np.asarray(labels).astype(int)
        if y.ndim != 1 or len(y) != len(signals):
            raise ValueError(f"`labels` must hold one label per window ({len(signals)}), got shape {y.shape}.")
        if not set(np.unique(y)) <= {0, 1}:
            raise ValueError("`labels` must be 0/1 (or booleans).")
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
        """Probability that each window is memorized."""
        if self.pipeline is None:
            raise ValueError("This MemorizationPredictor is not fitted yet: call `fit` first.")
        return self.pipeline.predict_proba(self.feature_matrix(signals))[:, 1]
