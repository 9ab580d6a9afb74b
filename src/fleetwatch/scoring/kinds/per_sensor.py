"""``per_sensor``: one pipeline per sensor, as in Azure's batch-scoring reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetwatch.scoring.kinds.base import ModelKind
from fleetwatch.scoring.kinds.svm import (
    FloatMatrix,
    SvmParams,
    SvmScorer,
    fit_pipeline,
    make_pipeline,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

STATISTICS = ("mean", "std", "min", "max")


class PerSensorModel(ModelKind):
    """One univariate-sensor pipeline per sensor (its mean/std/min/max).

    A window's device score is its lowest sensor score; a sensor that did not report in a window
    does not vote.
    """

    name = "per_sensor"

    def __init__(self, nu: float = 0.01, gamma: str | float = "scale", kernel: str = "rbf"):
        self.settings = (nu, gamma, kernel)
        self.pipelines: dict[str, tuple[list[int], Pipeline]] = {}

    def fit(self, matrix: FloatMatrix, names: list[str]) -> None:
        sensors = sorted({n.rsplit("__", 1)[0] for n in names})
        for sensor in sensors:
            columns = [names.index(f"{sensor}__{stat}") for stat in STATISTICS]
            rows = ~np.isnan(matrix[:, columns[0]])
            pipeline = fit_pipeline(make_pipeline(*self.settings), matrix[rows][:, columns])
            self.pipelines[sensor] = (columns, pipeline)

    def estimator(self) -> object:
        return self.pipelines

    def arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {"sensors": np.array(sorted(self.pipelines))}
        for sensor, (columns, pipeline) in self.pipelines.items():
            arrays.update(SvmParams.from_pipeline(pipeline).to_arrays(f"{sensor}/"))
            arrays[f"{sensor}/columns"] = np.array(columns)
        return arrays

    def sklearn_decision(self, matrix: FloatMatrix) -> np.ndarray:
        scores = np.full(len(matrix), np.inf)
        for columns, pipeline in self.pipelines.values():
            rows = ~np.isnan(matrix[:, columns[0]])
            if rows.any():
                values = pipeline.decision_function(matrix[rows][:, columns])
                scores[rows] = np.minimum(scores[rows], values)
        return scores

    @classmethod
    def scorer(cls, arrays: Any) -> PerSensorScorer:
        sensors = []
        for sensor in arrays["sensors"].tolist():
            columns = np.array([int(c) for c in arrays[f"{sensor}/columns"].tolist()])
            sensors.append((columns, SvmParams.from_arrays(arrays, f"{sensor}/").scorer()))
        return PerSensorScorer(sensors)


@dataclass(frozen=True)
class PerSensorScorer:
    sensors: list[tuple[np.ndarray, SvmScorer]]  # (feature columns, that sensor's scorer)

    @property
    def feature_count(self) -> int | None:
        return None  # it reads the columns it knows, wherever they are

    def decision(self, matrix: FloatMatrix) -> np.ndarray:
        scores = np.full(len(matrix), np.inf)
        for columns, scorer in self.sensors:
            rows = ~np.isnan(matrix[:, columns[0]])
            if rows.any():
                values = scorer.decision(matrix[rows][:, columns])
                scores[rows] = np.minimum(scores[rows], values)
        return scores
