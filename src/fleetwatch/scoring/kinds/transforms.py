"""The steps of the model pipeline besides scikit-learn's SVM: window features made
comparable (:class:`WindowTransform`), missing values filled with the training medians
(:class:`MedianImputer`), standardised (:class:`Standardizer`) and weighted
(:class:`Weights`).

The imputer and the scaler compute what scikit-learn's ``SimpleImputer(strategy="median",
keep_empty_features=True)`` and ``StandardScaler`` do (tested to 1e-12 against them), with one
numpy pass each: scikit-learn's median imputer, through masked arrays, was a fifth of a
device's fitting time (benchmarks/train.py). Models saved before keep scikit-learn's steps;
both expose ``statistics_``, ``mean_`` and ``scale_`` alike.

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


class MedianImputer(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Missing values become their column's training median (0 for a column never seen)."""

    def fit(self, matrix: Any, y: Any = None) -> MedianImputer:
        matrix = np.asarray(matrix, dtype=float)
        seen = ~np.isnan(matrix).all(axis=0)
        statistics = np.zeros(matrix.shape[1])
        if seen.any():
            part = matrix[:, seen]
            full = ~np.isnan(part).any(axis=0)  # most columns: the plain median is enough
            medians = np.empty(part.shape[1])
            if full.any():
                medians[full] = column_medians(part[:, full])
            if (~full).any():
                medians[~full] = np.nanmedian(part[:, ~full], axis=0)
            statistics[seen] = medians
        self.statistics_ = statistics
        return self

    def transform(self, matrix: Any) -> np.ndarray:
        result = np.array(matrix, dtype=float)
        missing = np.isnan(result)
        if missing.any():
            np.copyto(result, np.broadcast_to(self.statistics_, result.shape), where=missing)
        return result


class Standardizer(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """``(x - mean) / std`` per column; a column without spread keeps a scale of 1."""

    def fit(self, matrix: Any, y: Any = None) -> Standardizer:
        matrix = np.asarray(matrix, dtype=float)
        self.mean_ = matrix.mean(axis=0)
        variance = matrix.var(axis=0)
        # as scikit-learn: a variance within the two-pass algorithm's rounding of 0 (Chan,
        # Golub and LeVeque) is a column without spread
        count, eps = len(matrix), np.finfo(float).eps
        constant = variance <= count * eps * variance + (count * self.mean_ * eps) ** 2
        self.scale_ = np.where(constant, 1.0, np.sqrt(variance))
        self.n_samples_seen_ = count
        return self

    def transform(self, matrix: Any) -> np.ndarray:
        scaled: np.ndarray = (np.asarray(matrix, dtype=float) - self.mean_) / self.scale_
        return scaled


class Weights(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Multiplies each (scaled) feature by its weight."""

    def __init__(self, weights: tuple[float, ...] = ()) -> None:
        self.weights = weights

    def fit(self, matrix: Any, y: Any = None) -> Weights:
        return self

    def transform(self, matrix: Any) -> np.ndarray:
        weighted: np.ndarray = np.asarray(matrix, dtype=float) * np.asarray(self.weights)
        return weighted


def column_medians(matrix: np.ndarray) -> np.ndarray:
    """``np.median(matrix, axis=0)`` (the same numbers: the middle value, or the mean of
    the middle two) for a matrix without NaN, at twice its speed: one partition of the
    columns made rows, where numpy's partitions along the strided axis.

    >>> column_medians(np.array([[3.0, 1.0], [1.0, 4.0], [2.0, 2.0], [9.0, 0.0]])).tolist()
    [2.5, 1.5]
    """
    rows = np.ascontiguousarray(matrix.T)
    count = rows.shape[1]
    if count == 0:
        return np.full(len(rows), np.nan)
    middle = count // 2
    parted = np.partition(rows, middle, axis=1)
    if count % 2:
        return parted[:, middle]
    below: np.ndarray = parted[:, :middle].max(axis=1)
    return (below + parted[:, middle]) / 2


def _typical(matrix: np.ndarray) -> np.ndarray:
    """Each column's median over its positive values (1 where it has none).

    >>> _typical(np.array([[1.0, 0.0, np.nan], [3.0, 2.0, -1.0], [8.0, 4.0, 0.0]])).tolist()
    [3.0, 3.0, 1.0]
    """
    result = np.ones(matrix.shape[1])
    positive = np.isfinite(matrix) & (matrix > 0)
    whole = positive.all(axis=0)  # most columns: their medians in one partition
    if len(matrix) and whole.any():
        result[whole] = column_medians(matrix[:, whole])
    for index in np.flatnonzero(~whole):
        column = matrix[positive[:, index], index]
        if len(column):
            result[index] = float(np.median(column))
    return result
