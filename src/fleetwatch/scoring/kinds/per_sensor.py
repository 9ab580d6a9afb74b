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
    decide,
    extended_from_decision,
    fit_pipeline,
    make_pipeline,
    rho_of,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


def sensor_columns(names: list[str]) -> dict[str, list[int]]:
    """Each sensor's feature columns, by the sensor's name (``<sensor>__<statistic>``)."""
    columns: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        columns.setdefault(name.rsplit("__", 1)[0], []).append(index)
    return dict(sorted(columns.items()))


class PerSensorModel(ModelKind):
    """One pipeline per sensor over that sensor's features.

    A window's device score is its lowest sensor score. A sensor that did not report in a
    window votes too: its statistics are imputed and its reading count, 0, is what stands out.
    """

    name = "per_sensor"

    def __init__(self, nu: float = 0.01, gamma: str | float = "scale", kernel: str = "rbf"):
        self.settings = (nu, gamma, kernel)
        self.pipelines: dict[str, tuple[list[int], Pipeline]] = {}

    def fit(self, matrix: FloatMatrix, names: list[str]) -> None:
        for sensor, columns in sensor_columns(names).items():
            pipeline = make_pipeline(*self.settings, [names[c] for c in columns])
            self.pipelines[sensor] = (columns, fit_pipeline(pipeline, matrix[:, columns]))

    def estimator(self) -> object:
        return self.pipelines

    def restore(self, estimator: Any) -> None:
        self.pipelines = estimator

    def arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {"sensors": np.array(sorted(self.pipelines))}
        for sensor, (columns, pipeline) in self.pipelines.items():
            arrays.update(SvmParams.from_pipeline(pipeline).to_arrays(f"{sensor}/"))
            arrays[f"{sensor}/columns"] = np.array(columns)
        return arrays

    def _each(self, matrix: FloatMatrix, score: Any) -> np.ndarray:
        scores = np.full(len(matrix), np.inf)
        for columns, pipeline in self.pipelines.values():
            scores = np.minimum(scores, score(pipeline, matrix[:, columns]))
        return scores

    def sklearn_decision(self, matrix: FloatMatrix) -> np.ndarray:
        return self._each(matrix, lambda pipeline, part: pipeline.decision_function(part))

    def reference_scores(self, matrix: FloatMatrix) -> np.ndarray:
        def score(pipeline: Pipeline, part: FloatMatrix) -> np.ndarray:
            decision = pipeline.decision_function(part)
            if pipeline.named_steps["svm"].kernel != "rbf":
                return np.asarray(decision, dtype=float)
            return extended_from_decision(decision, rho_of(pipeline))

        return self._each(matrix, score)

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
        """The lowest of the sensors' scores. The sensors of one feature count are scored in
        one :func:`decide` call, as a fleet's devices are (a device of 52 sensors: 1 or 2
        calls instead of 52)."""
        scores = np.full(len(matrix), np.inf)
        by_width: dict[int, list[tuple[np.ndarray, SvmScorer]]] = {}
        for columns, scorer in self.sensors:
            by_width.setdefault(len(columns), []).append((columns, scorer))
        counts = np.full(len(self.sensors), len(matrix))
        for members in by_width.values():
            windows = np.stack([np.asarray(matrix, dtype=float)[:, c] for c, _ in members])
            for part in decide([s for _, s in members], windows, counts[: len(members)]):
                np.minimum(scores, part, out=scores)
        return scores
