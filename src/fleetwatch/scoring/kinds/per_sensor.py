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

    @classmethod
    def sensor_resets(
        cls, scorer: Any, rows: FloatMatrix, groups: list[np.ndarray]
    ) -> np.ndarray | None:
        """A sensor's reset changes only its own model's score, to that model's score of its
        imputed medians: the reset score is the lower of that and the other sensors' lowest
        (no device scored again per sensor). None when the groups are not the models'
        sensors."""
        own = {tuple(columns.tolist()): i for i, (columns, _) in enumerate(scorer.sensors)}
        order = [own.get(tuple(group.tolist())) for group in groups]
        if len(own) != len(groups) or None in order or not len(rows):
            return None
        each = scorer.each(rows)  # sensors x rows
        if np.isnan(each).any():  # the lowest of several is then not one sensor's: scored
            return None
        typical = scorer.each(np.full((1, rows.shape[1]), np.nan))[:, 0]
        lowest = each.argmin(axis=0)
        first = each.min(axis=0)
        second = np.partition(each, 1, axis=0)[1] if len(each) > 1 else np.full(len(rows), np.inf)
        resets = np.empty((len(groups), len(rows)))
        for g, s in enumerate(order):
            others = np.where(lowest == s, second, first)
            resets[g] = np.minimum(others, typical[s])
        return resets


@dataclass(frozen=True)
class PerSensorScorer:
    sensors: list[tuple[np.ndarray, SvmScorer]]  # (feature columns, that sensor's scorer)

    @property
    def feature_count(self) -> int | None:
        return None  # it reads the columns it knows, wherever they are

    def decision(self, matrix: FloatMatrix) -> np.ndarray:
        """The lowest of the sensors' scores."""
        if not self.sensors:
            return np.full(len(matrix), np.inf)
        lowest: np.ndarray = self.each(matrix).min(axis=0)
        return lowest

    def each(self, matrix: FloatMatrix) -> np.ndarray:
        """Each sensor's scores (sensors x windows, in :attr:`sensors`' order). The sensors of
        one feature count are scored in one :func:`decide` call, as a fleet's devices are (a
        device of 52 sensors: 1 or 2 calls instead of 52)."""
        scores = np.empty((len(self.sensors), len(matrix)))
        by_width: dict[int, list[int]] = {}
        for index, (columns, _) in enumerate(self.sensors):
            by_width.setdefault(len(columns), []).append(index)
        counts = np.full(len(self.sensors), len(matrix))
        matrix = np.asarray(matrix, dtype=float)
        for members in by_width.values():
            windows = np.stack([matrix[:, self.sensors[i][0]] for i in members])
            parts = decide([self.sensors[i][1] for i in members], windows, counts[: len(members)])
            for i, part in zip(members, parts, strict=True):
                scores[i] = part
        return scores
