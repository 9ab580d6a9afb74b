"""Model kinds: what is fitted per device, and how it is scored fast.

Every kind fits scikit-learn estimators (kept as ``model.joblib``, the reference) and exports
their fitted parameters as plain arrays (``params.bin``, loaded without pickle). Scoring uses
the arrays with vectorised numpy, which matches ``decision_function`` to 1e-9 (tested) and
avoids scikit-learn's per-call overhead across thousands of small models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from fleetwatch.scoring.features import FloatMatrix

if TYPE_CHECKING:  # scikit-learn takes a second to import; scoring never needs it
    from sklearn.pipeline import Pipeline

ModelKindName = Literal["device", "per_sensor"]


@dataclass(frozen=True)
class SvmParams:
    """A fitted imputer -> scaler -> one-class SVM, as arrays."""

    fill: np.ndarray  # imputer medians, per feature
    mean: np.ndarray
    scale: np.ndarray
    support_vectors: np.ndarray  # in scaled space
    dual_coef: np.ndarray
    intercept: float
    kernel: str
    gamma: float
    coef0: float
    degree: int

    def decision(self, matrix: FloatMatrix) -> np.ndarray:
        """``decision_function`` of the pipeline, computed from the parameters."""
        windows = np.array(matrix, dtype=float)[None]
        return decide([self], windows, np.array([len(matrix)]))[0]

    def _from_scaled(self, scaled: FloatMatrix, norms: np.ndarray) -> np.ndarray:
        """The decision values of imputed, scaled windows (``norms``: their squared norms)."""
        sv = self.support_vectors
        if self.kernel == "rbf":  # exp(-gamma |x - sv|^2), |x - sv|^2 = |x|^2 + |sv|^2 - 2 x.sv
            kernel = scaled @ sv.T
            kernel *= 2.0 * self.gamma
            kernel -= (self.gamma * norms)[:, None]
            kernel -= self.gamma * np.einsum("ij,ij->i", sv, sv)
            np.exp(kernel, out=kernel)
        elif self.kernel == "linear":
            kernel = scaled @ sv.T
        elif self.kernel == "poly":
            kernel = (self.gamma * (scaled @ sv.T) + self.coef0) ** self.degree
        elif self.kernel == "sigmoid":
            kernel = np.tanh(self.gamma * (scaled @ sv.T) + self.coef0)
        else:  # pragma: no cover - rejected at training
            raise ValueError(f"unsupported kernel {self.kernel}")
        result: np.ndarray = kernel @ self.dual_coef + self.intercept
        return result

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> SvmParams:
        imputer, scaler, svm = pipeline.named_steps.values()
        return cls(
            fill=np.asarray(imputer.statistics_, dtype=float),
            mean=np.asarray(scaler.mean_, dtype=float),
            scale=np.asarray(scaler.scale_, dtype=float),
            support_vectors=np.asarray(svm.support_vectors_, dtype=float),
            dual_coef=np.asarray(svm.dual_coef_, dtype=float).ravel(),
            intercept=float(np.asarray(svm.intercept_).ravel()[0]),
            kernel=str(svm.kernel),
            gamma=float(svm._gamma),
            coef0=float(svm.coef0),
            degree=int(svm.degree),
        )

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {
            f"{prefix}fill": self.fill,
            f"{prefix}mean": self.mean,
            f"{prefix}scale": self.scale,
            f"{prefix}sv": self.support_vectors,
            f"{prefix}dual": self.dual_coef,
            f"{prefix}scalars": np.array([self.intercept, self.gamma, self.coef0, self.degree]),
            f"{prefix}kernel": np.array([self.kernel]),
        }

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str = "") -> SvmParams:
        intercept, gamma, coef0, degree = arrays[f"{prefix}scalars"].tolist()
        return cls(
            fill=arrays[f"{prefix}fill"],
            mean=arrays[f"{prefix}mean"],
            scale=arrays[f"{prefix}scale"],
            support_vectors=arrays[f"{prefix}sv"],
            dual_coef=arrays[f"{prefix}dual"],
            intercept=float(intercept),
            gamma=float(gamma),
            coef0=float(coef0),
            degree=int(degree),
            kernel=str(arrays[f"{prefix}kernel"][0]),
        )


def decide(models: list[SvmParams], windows: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """``decision`` of ``models[i]`` on ``windows[i, :counts[i]]`` (``windows``: devices x
    windows x features, NaN where missing; overwritten). Imputing, scaling and the windows'
    norms run once for all the devices (a few whole-array passes instead of several small
    calls per device); each kernel is the device's own."""
    missing = np.isnan(windows)
    if missing.any():
        np.copyto(windows, np.stack([m.fill for m in models])[:, None, :], where=missing)
    windows -= np.stack([m.mean for m in models])[:, None, :]
    windows /= np.stack([m.scale for m in models])[:, None, :]
    norms = np.einsum("dwf,dwf->dw", windows, windows)
    return [
        model._from_scaled(windows[i, :count], norms[i, :count])
        for i, (model, count) in enumerate(zip(models, counts.tolist(), strict=True))
    ]


def make_pipeline(nu: float, gamma: str | float, kernel: str) -> Pipeline:
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("svm", OneClassSVM(nu=nu, gamma=gamma, kernel=kernel)),
        ]
    )


class ModelKind(Protocol):
    """A per-device model. ``fit`` may take seconds; the others are cheap and never block."""

    kind: ModelKindName

    def fit(self, matrix: FloatMatrix, names: list[str]) -> None:
        """Fit on training windows (rows) over feature ``names``."""

    def estimator(self) -> object:
        """The fitted scikit-learn object(s), for ``model.joblib``."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters for ``params.bin``."""

    def sklearn_decision(self, matrix: FloatMatrix) -> np.ndarray:
        """scikit-learn's own decision values: the reference the fast path must match."""


class DeviceModel:
    """One pipeline over all of a device's features (the default)."""

    kind: ModelKindName = "device"

    def __init__(self, nu: float = 0.01, gamma: str | float = "scale", kernel: str = "rbf"):
        self.pipeline = make_pipeline(nu, gamma, kernel)

    def fit(self, matrix: FloatMatrix, names: list[str]) -> None:
        self.pipeline.fit(matrix)

    def estimator(self) -> object:
        return self.pipeline

    def arrays(self) -> dict[str, np.ndarray]:
        return SvmParams.from_pipeline(self.pipeline).to_arrays()

    def sklearn_decision(self, matrix: FloatMatrix) -> np.ndarray:
        return np.asarray(self.pipeline.decision_function(matrix), dtype=float)


class PerSensorModel:
    """One univariate-sensor pipeline per sensor (its mean/std/min/max), as in Azure's reference.

    A window's device score is its lowest sensor score; a sensor that did not report in a window
    does not vote.
    """

    kind: ModelKindName = "per_sensor"

    def __init__(self, nu: float = 0.01, gamma: str | float = "scale", kernel: str = "rbf"):
        self.settings = (nu, gamma, kernel)
        self.pipelines: dict[str, tuple[list[int], Pipeline]] = {}

    def fit(self, matrix: FloatMatrix, names: list[str]) -> None:
        sensors = sorted({n.rsplit("__", 1)[0] for n in names})
        for sensor in sensors:
            columns = [names.index(f"{sensor}__{stat}") for stat in ("mean", "std", "min", "max")]
            rows = ~np.isnan(matrix[:, columns[0]])
            pipeline = make_pipeline(*self.settings)
            pipeline.fit(matrix[rows][:, columns])
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


def decision_from_arrays(kind: ModelKindName, arrays: Any, matrix: FloatMatrix) -> np.ndarray:
    """Fast scores of ``matrix`` from a model's ``params.bin`` arrays."""
    if kind == "device":
        return SvmParams.from_arrays(arrays).decision(matrix)
    scores = np.full(len(matrix), np.inf)
    for sensor in arrays["sensors"].tolist():
        columns = [int(c) for c in arrays[f"{sensor}/columns"].tolist()]
        rows = ~np.isnan(matrix[:, columns[0]])
        if rows.any():
            values = SvmParams.from_arrays(arrays, f"{sensor}/").decision(matrix[rows][:, columns])
            scores[rows] = np.minimum(scores[rows], values)
    return scores


def new_model(kind: ModelKindName, nu: float, gamma: str | float, kernel: str) -> ModelKind:
    if kind == "device":
        return DeviceModel(nu, gamma, kernel)
    return PerSensorModel(nu, gamma, kernel)
