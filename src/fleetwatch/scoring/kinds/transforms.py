"""The two steps the model pipeline adds to scikit-learn's: window features made comparable
(:class:`WindowTransform`) and their weights (:class:`Weights`).

Only training and the reference path (``model.joblib``) import this module, and with it
scikit-learn; scoring applies the same arithmetic from the exported parameters
(:mod:`fleetwatch.scoring.kinds.svm`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from fleetwatch.scoring.kinds.window import COVERAGE, SPREAD_FLOOR, apply_window_transform


class WindowTransform(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Spreads to a log scale and reading counts to a share of the typical count, by role
    (``"spread"``, ``"coverage"``; any other role passes through). Missing values stay NaN."""

    def __init__(self, roles: tuple[str, ...] = ()) -> None:
        self.roles = roles

    def fit(self, matrix: Any, y: Any = None) -> WindowTransform:
        matrix = np.asarray(matrix, dtype=float)
        roles = np.array(self.roles)
        self.log_columns_ = np.flatnonzero(roles == "spread")
        self.coverage_columns_ = np.flatnonzero(roles == "coverage")
        self.log_offsets_ = SPREAD_FLOOR * _typical(matrix[:, self.log_columns_])
        typical = _typical(matrix[:, self.coverage_columns_])
        self.coverage_scale_ = np.where(
            typical > 0, COVERAGE / np.where(typical > 0, typical, 1), 0
        )
        return self

    def transform(self, matrix: Any) -> np.ndarray:
        result = np.array(matrix, dtype=float)
        apply_window_transform(
            result,
            self.log_columns_,
            self.log_offsets_,
            self.coverage_columns_,
            self.coverage_scale_,
        )
        return result


class Weights(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Multiplies each (scaled) feature by its weight."""

    def __init__(self, weights: tuple[float, ...] = ()) -> None:
        self.weights = weights

    def fit(self, matrix: Any, y: Any = None) -> Weights:
        return self

    def transform(self, matrix: Any) -> np.ndarray:
        weighted: np.ndarray = np.asarray(matrix, dtype=float) * np.asarray(self.weights)
        return weighted


def _typical(matrix: np.ndarray) -> np.ndarray:
    """Each column's median over its positive values (1 where it has none)."""
    result = np.ones(matrix.shape[1])
    for index in range(matrix.shape[1]):
        column = matrix[:, index]
        positive = column[np.isfinite(column) & (column > 0)]
        if len(positive):
            result[index] = float(np.median(positive))
    return result
