"""``covariance``: Hotelling's T² over a device's window features, with a shrunk covariance.

The same window features, transform, imputer, scaler and weights as ``device``; instead of a
one-class SVM, the windows' mean and a Ledoit-Wolf covariance (shrunk towards a multiple of
the identity: well conditioned with fewer windows than features, and with features that never
moved in training). A window's score is ``-d²/2``, ``d²`` its squared Mahalanobis distance
from the mean: lower is more anomalous, with no floor. It sees what moves together: on a
plant whose faults break the correlations between many sensors (TEP) it ranks far better than
the SVM, and on a single sensor's statistics far worse (docs/detection.md), which is what
``--model-kind auto`` follows: ``covariance`` for a device of two sensors or more, ``device``
for one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from fleetwatch.scoring.kinds.base import ModelKind
from fleetwatch.scoring.kinds.svm import FloatMatrix, _indices, make_standardizer, standardize

if TYPE_CHECKING:
    from sklearn.covariance import LedoitWolf
    from sklearn.pipeline import Pipeline


class CovarianceModel(ModelKind):
    """A device's windows' mean and shrunk covariance over its standardized features."""

    name = "covariance"

    def __init__(self, nu: float = 0.01, gamma: str | float = "scale", kernel: str = "rbf"):
        # the SVM's hyper-parameters do not apply: accepted, as every kind takes them
        self.standardizer: Pipeline | None = None
        self.covariance: LedoitWolf | None = None

    def fit(self, matrix: FloatMatrix, names: list[str]) -> None:
        from sklearn.covariance import LedoitWolf

        standardizer = make_standardizer(names)
        standardized = matrix
        for _, step in standardizer.steps:  # step by step: the last keeps no fitted state
            standardized = step.fit_transform(standardized)
        self.covariance = LedoitWolf().fit(standardized)
        self.standardizer = standardizer

    def _fitted(self) -> tuple[Pipeline, LedoitWolf]:
        if self.standardizer is None or self.covariance is None:
            raise ValueError("the model is not fitted")
        return self.standardizer, self.covariance

    def estimator(self) -> object:
        standardizer, covariance = self._fitted()
        return {"standardizer": standardizer, "covariance": covariance}

    def restore(self, estimator: Any) -> None:
        self.standardizer = estimator["standardizer"]
        self.covariance = estimator["covariance"]

    def arrays(self) -> dict[str, np.ndarray]:
        standardizer, covariance = self._fitted()
        transform, imputer, scaler, weights = standardizer.named_steps.values()
        return {
            "fill": np.asarray(imputer.statistics_, dtype=float),
            "mean": np.asarray(scaler.mean_, dtype=float),
            "scale": np.asarray(scaler.scale_, dtype=float) / np.asarray(weights.weights),
            "logcols": np.asarray(transform.log_columns_),
            "logoff": np.asarray(transform.log_offsets_, dtype=float),
            "covcols": np.asarray(transform.coverage_columns_),
            "covscale": np.asarray(transform.coverage_scale_, dtype=float),
            "location": np.asarray(covariance.location_, dtype=float),
            "precision": np.asarray(covariance.precision_, dtype=float),
        }

    def sklearn_decision(self, matrix: FloatMatrix) -> np.ndarray:
        standardizer, covariance = self._fitted()
        standardized = matrix
        for _, step in standardizer.steps:
            standardized = step.transform(standardized)
        distances = covariance.mahalanobis(standardized)
        return np.asarray(-0.5 * distances, dtype=float)

    def reference_scores(self, matrix: FloatMatrix) -> np.ndarray:
        return self.sklearn_decision(matrix)

    @classmethod
    def scorer(cls, arrays: Any) -> CovarianceScorer:
        scorer = CovarianceScorer(
            np.asarray(arrays["fill"], dtype=float),
            np.asarray(arrays["mean"], dtype=float),
            np.asarray(arrays["scale"], dtype=float),
            _indices(arrays["logcols"]),
            np.asarray(arrays["logoff"], dtype=float),
            _indices(arrays["covcols"]),
            np.asarray(arrays["covscale"], dtype=float),
            np.asarray(arrays["location"], dtype=float),
            np.asarray(arrays["precision"], dtype=float),
        )
        features = len(scorer.mean)
        vectors = (scorer.fill, scorer.scale, scorer.location)
        if (
            any(v.shape != (features,) for v in vectors)
            or scorer.precision.shape != (features, features)
            or not all(np.isfinite(v).all() for v in (*vectors, scorer.mean, scorer.precision))
        ):
            raise ValueError(
                f"the model's precision matrix is {scorer.precision.shape} for {features} "
                "features (or holds non-finite values): it is malformed, retrain it"
            )
        return scorer

    @classmethod
    def decide_many(
        cls, scorers: list[Any], windows: np.ndarray, counts: np.ndarray
    ) -> list[np.ndarray]:
        standardize(scorers, windows)
        windows -= np.stack([s.location for s in scorers])[:, None, :]
        # One matrix product per model: explanations pass the same device once per sensor
        # (52 times on TEP), and stacking its precision matrix that often, then a batched
        # product, made scoring TEP 3x slower than the SVM's
        alike: dict[int, list[int]] = {}
        for index, scorer in enumerate(scorers):
            alike.setdefault(id(scorer), []).append(index)
        squared = np.empty(windows.shape[:2])
        features = windows.shape[2]
        for members in alike.values():
            part = windows[members].reshape(-1, features)
            products = part @ scorers[members[0]].precision
            squared[members] = np.einsum("wf,wf->w", products, part).reshape(len(members), -1)
        return [-0.5 * squared[i, : counts[i]] for i in range(len(scorers))]


class CovarianceScorer(NamedTuple):
    """A fitted standardizer and the windows' mean and precision (inverse covariance)."""

    fill: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    log_columns: np.ndarray
    log_offsets: np.ndarray
    coverage_columns: np.ndarray
    coverage_scale: np.ndarray
    location: np.ndarray
    precision: np.ndarray

    @property
    def feature_count(self) -> int | None:
        return len(self.mean)

    def decision(self, matrix: FloatMatrix) -> np.ndarray:
        windows = np.array(matrix, dtype=float)[None]
        return CovarianceModel.decide_many([self], windows, np.array([len(matrix)]))[0]
