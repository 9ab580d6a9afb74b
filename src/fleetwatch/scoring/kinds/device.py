"""``device``: one imputer -> scaler -> one-class SVM over all of a device's features (default)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fleetwatch.scoring.kinds.base import ModelKind
from fleetwatch.scoring.kinds.svm import (
    FloatMatrix,
    SvmParams,
    SvmScorer,
    decide,
    extended_from_decision,
    fit_pipeline,
    make_pipeline,
    rho_of,
)


class DeviceModel(ModelKind):
    """One pipeline over all of a device's features.

    Its scorer keeps the support vectors in the form one matrix product scores (see
    :class:`~fleetwatch.scoring.kinds.svm.SvmScorer`); the pack keeps that form, and devices
    of one feature list are imputed, scaled and extended together (:func:`decide`).
    """

    name = "device"

    def __init__(self, nu: float = 0.01, gamma: str | float = "scale", kernel: str = "rbf"):
        self.settings = (nu, gamma, kernel)
        self.pipeline: Any = None

    def fit(self, matrix: FloatMatrix, names: list[str]) -> None:
        self.pipeline = fit_pipeline(make_pipeline(*self.settings, names), matrix)

    def estimator(self) -> object:
        return self.pipeline

    def restore(self, estimator: Any) -> None:
        self.pipeline = estimator

    def arrays(self) -> dict[str, np.ndarray]:
        return SvmParams.from_pipeline(self.pipeline).to_arrays()

    def sklearn_decision(self, matrix: FloatMatrix) -> np.ndarray:
        return np.asarray(self.pipeline.decision_function(matrix), dtype=float)

    def reference_scores(self, matrix: FloatMatrix) -> np.ndarray:
        decision = self.sklearn_decision(matrix)
        if self.pipeline.named_steps["svm"].kernel != "rbf":
            return decision
        return extended_from_decision(decision, rho_of(self.pipeline))

    @classmethod
    def scorer(cls, arrays: Any) -> SvmScorer:
        return SvmParams.from_arrays(arrays).scorer()

    @classmethod
    def packed(cls, arrays: Any) -> dict[str, np.ndarray]:
        return cls.scorer(arrays).to_arrays()

    @classmethod
    def from_packed(cls, arrays: Any) -> SvmScorer:
        return SvmScorer.from_arrays(arrays)

    @classmethod
    def decide_many(
        cls, scorers: list[Any], windows: np.ndarray, counts: np.ndarray
    ) -> list[np.ndarray]:
        return decide(scorers, windows, counts)
