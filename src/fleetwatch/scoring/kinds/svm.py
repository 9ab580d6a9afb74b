"""The one-class SVM pipeline both model kinds are made of, and its fast scoring.

A fitted ``WindowTransform -> MedianImputer -> Standardizer -> Weights -> OneClassSVM``
(scikit-learn's ``SimpleImputer(median)`` and ``StandardScaler`` in models saved before) is
exported as plain arrays (:class:`SvmParams`, kept in ``params.bin``; the support vectors
rounded to float32 when fitted, :func:`fit_pipeline`) and scored from them
with vectorised numpy (:class:`SvmScorer`), avoiding scikit-learn's per-call overhead across
thousands of small models.

**The score.** Far from every support vector, the RBF one-class SVM's decision value
``sum_i a_i exp(-gamma |x - sv_i|^2) - rho`` bottoms out at ``-rho``: every window far
enough away ties, so drifted windows can neither be ranked nor thresholded. Scoring reports
``log(sum_i a_i exp(-gamma |x - sv_i|^2) / rho)`` instead: a strictly increasing function of
the decision value (``rho * expm1(score)`` is scikit-learn's ``decision_function``, tested to
1e-9 wherever that is not within 1e-6 of its floor), 0 on the SVM's boundary, and beyond the support
about ``-gamma`` times the squared distance to the nearest support vector, so it keeps
ranking however far a window is. (Other kernels have no floor; their score is the decision
value itself.)

**The features** (see :func:`feature_role`): levels (mean, and for a slow sensor the change
from the previous window) count fully; the shape statistics (spread, min, max) count a third
each (weight ``1/sqrt(3)``), so that a sensor's level and its shape weigh alike; spreads are
compared on a log scale and reading counts as a share of the typical count
(:data:`SPREAD_FLOOR`, :data:`COVERAGE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # scikit-learn takes a second to import; scoring never needs it
    from sklearn.pipeline import Pipeline

from fleetwatch.scoring.kinds.window import COVERAGE, SPREAD_FLOOR, apply_window_transform

__all__ = ["COVERAGE", "SPREAD_FLOOR", "apply_window_transform"]

FloatMatrix = npt.NDArray[np.float64]

#: Weight of each shape statistic (spread, min, max) against a level's 1: together as heavy.
SHAPE_WEIGHT = 1.0 / np.sqrt(3.0)
_ROLES = {
    "mean": "level",
    "delta": "level",
    "min": "shape",
    "max": "shape",
    "std": "spread",
    "count": "coverage",
}


def feature_role(name: str) -> str:
    """``level``, ``shape``, ``spread`` or ``coverage``, from a feature's statistic.

    >>> [feature_role(n) for n in ("flow__mean", "flow__std", "flow__count", "flow__max")]
    ['level', 'spread', 'coverage', 'shape']
    """
    return _ROLES.get(name.rsplit("__", 1)[-1], "level")


def feature_weights(names: list[str]) -> np.ndarray:
    return np.array(
        [1.0 if feature_role(n) in ("level", "coverage") else SHAPE_WEIGHT for n in names]
    )


def extended_from_decision(decision: np.ndarray, rho: float) -> np.ndarray:
    """scikit-learn's RBF decision values on the score's scale, ``log1p(decision / rho)``;
    NaN within 1e-6 of its floor (scores below about -13.8), where its rounding (1e-16 of
    ``rho``) is no longer small on that scale."""
    ratio = np.asarray(decision, dtype=float) / rho
    kept = ratio > -1 + 1e-6
    return np.where(kept, np.log1p(np.where(kept, ratio, 0.0)), np.nan)


@dataclass(frozen=True)
class SvmParams:
    """A fitted imputer -> scaler -> one-class SVM, as arrays."""

    fill: np.ndarray  # imputer medians, per feature (after the window transform)
    mean: np.ndarray
    scale: np.ndarray  # the scaler's, divided by the feature's weight
    support_vectors: np.ndarray  # in scaled space, float32 (see fit_pipeline)
    dual_coef: np.ndarray
    intercept: float
    kernel: str
    gamma: float
    coef0: float
    degree: int
    log_columns: np.ndarray  # spreads: log(x + offset)
    log_offsets: np.ndarray
    coverage_columns: np.ndarray  # reading counts: x * scale
    coverage_scale: np.ndarray

    def decision(self, matrix: FloatMatrix) -> np.ndarray:
        """The scores of the pipeline (see the module docstring), from the parameters."""
        return self.scorer().decision(matrix)

    def scorer(self) -> SvmScorer:
        """The parameters in the form scoring uses (see :class:`SvmScorer`)."""
        sv = np.asarray(self.support_vectors, dtype=float)
        if sv.ndim != 2 or sv.shape[1] != len(self.mean) or self.dual_coef.shape != (len(sv),):
            raise ValueError(
                f"the model's support vectors are {sv.shape} with {self.dual_coef.shape} dual "
                f"coefficients for {len(self.mean)} features: it is malformed, retrain it"
            )
        columns = np.flatnonzero((sv != 0).any(axis=0))
        vectors = sv[:, columns]
        if self.kernel == "rbf":
            vectors = np.column_stack(
                [2.0 * self.gamma * vectors, -self.gamma * np.einsum("ij,ij->i", sv, sv)]
            )
            vectors = np.column_stack([vectors, np.ones(len(sv))])
        return SvmScorer(
            self.fill,
            self.mean,
            self.scale,
            columns,
            np.ascontiguousarray(vectors),
            self.dual_coef,
            self.intercept,
            self.kernel,
            self.gamma,
            self.coef0,
            self.degree,
            np.asarray(self.log_columns, dtype=np.int64),
            np.asarray(self.log_offsets, dtype=float),
            np.asarray(self.coverage_columns, dtype=np.int64),
            np.asarray(self.coverage_scale, dtype=float),
        )

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> SvmParams:
        transform, imputer, scaler, weights, svm = pipeline.named_steps.values()
        return cls(
            fill=np.asarray(imputer.statistics_, dtype=float),
            mean=np.asarray(scaler.mean_, dtype=float),
            scale=np.asarray(scaler.scale_, dtype=float) / np.asarray(weights.weights),
            support_vectors=np.asarray(svm.support_vectors_, dtype=np.float32),  # exact
            dual_coef=np.asarray(svm.dual_coef_, dtype=float).ravel(),
            intercept=float(np.asarray(svm.intercept_).ravel()[0]),
            kernel=str(svm.kernel),
            gamma=_numeric_gamma(svm),
            coef0=float(svm.coef0),
            degree=int(svm.degree),
            log_columns=np.asarray(transform.log_columns_),
            log_offsets=np.asarray(transform.log_offsets_, dtype=float),
            coverage_columns=np.asarray(transform.coverage_columns_),
            coverage_scale=np.asarray(transform.coverage_scale_, dtype=float),
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
            f"{prefix}logcols": self.log_columns,
            f"{prefix}logoff": self.log_offsets,
            f"{prefix}covcols": self.coverage_columns,
            f"{prefix}covscale": self.coverage_scale,
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
            log_columns=_indices(arrays[f"{prefix}logcols"]),
            log_offsets=arrays[f"{prefix}logoff"],
            coverage_columns=_indices(arrays[f"{prefix}covcols"]),
            coverage_scale=arrays[f"{prefix}covscale"],
        )


def _indices(array: np.ndarray) -> np.ndarray:
    """Column indices kept as float64 in ``params.bin``, as integers (checked)."""
    values = np.asarray(array, dtype=float).ravel()
    indices = values.astype(np.int64)
    if (indices != values).any() or (indices < 0).any():
        raise ValueError("the model's column indices are not whole numbers: retrain it")
    return indices


class SvmScorer(NamedTuple):  # a NamedTuple: 10,000 are made per run from the pack
    """A fitted imputer -> scaler -> one-class SVM, prepared for scoring many small models.

    The support vectors keep only the ``columns`` (features) where one of them is not 0: a
    feature constant in training (a sensor always present) is 0 in every scaled support
    vector, so it adds nothing to a dot product. For the RBF kernel, the vectors are
    ``[2 gamma sv | -gamma |sv|^2 | 1]``: with a window as ``[x | 1 | -gamma |x|^2]`` (``|x|``
    over all features), one matrix product gives the exponent ``-gamma |x - sv|^2``.
    """

    fill: np.ndarray  # imputer medians, per feature
    mean: np.ndarray
    scale: np.ndarray
    columns: np.ndarray  # the features the support vectors use
    vectors: np.ndarray  # support vectors over ``columns`` (RBF: extended, as above)
    dual_coef: np.ndarray
    intercept: float
    kernel: str
    gamma: float
    coef0: float
    degree: int
    log_columns: np.ndarray
    log_offsets: np.ndarray
    coverage_columns: np.ndarray
    coverage_scale: np.ndarray

    @property
    def feature_count(self) -> int | None:
        return len(self.mean)

    def decision(self, matrix: FloatMatrix) -> np.ndarray:
        """The scores of one device's windows (see the module docstring)."""
        windows = np.array(matrix, dtype=float)[None]
        return decide([self], windows, np.array([len(matrix)]))[0]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "fill": self.fill,
            "mean": self.mean,
            "scale": self.scale,
            "columns": self.columns,
            "vectors": self.vectors,
            "dual": self.dual_coef,
            "scalars": np.array([self.intercept, self.gamma, self.coef0, self.degree]),
            "kernel": np.array([self.kernel]),
            "logcols": self.log_columns,
            "logoff": self.log_offsets,
            "covcols": self.coverage_columns,
            "covscale": self.coverage_scale,
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> SvmScorer:
        intercept, gamma, coef0, degree = arrays["scalars"].tolist()
        return cls(
            arrays["fill"],
            arrays["mean"],
            arrays["scale"],
            _indices(arrays["columns"]),
            arrays["vectors"],
            arrays["dual"],
            intercept,
            str(arrays["kernel"][0]),
            gamma,
            coef0,
            int(degree),
            _indices(arrays["logcols"]),
            arrays["logoff"],
            _indices(arrays["covcols"]),
            arrays["covscale"],
        )

    def decide_extended(self, windows: FloatMatrix) -> np.ndarray:
        """Scores of windows transformed, imputed, scaled and extended: ``[x | 1 | -gamma
        |x|^2]`` (``x`` over ``columns``)."""
        if self.kernel == "rbf":
            kernel = windows @ self.vectors.T
            np.exp(kernel, out=kernel)
            sums = kernel @ self.dual_coef
            rho = max(-self.intercept, np.finfo(float).tiny)
            with np.errstate(divide="ignore"):
                result: np.ndarray = np.log(sums) - np.log(rho)
            # Where every kernel value underflowed (a window far beyond the support), the
            # same logarithm from the exponents: log-sum-exp, shifted by their maximum.
            far = sums < 1e-250
            if far.any():
                weights = np.log(np.maximum(self.dual_coef, np.finfo(float).tiny))
                shifted = windows[far] @ self.vectors.T + weights
                top = shifted.max(axis=1)
                result[far] = top + np.log(np.exp(shifted - top[:, None]).sum(axis=1)) - np.log(rho)
            return result
        else:
            products = windows[:, : len(self.columns)] @ self.vectors.T
            if self.kernel == "linear":
                kernel = products
            elif self.kernel == "poly":
                kernel = (self.gamma * products + self.coef0) ** self.degree
            elif self.kernel == "sigmoid":
                kernel = np.tanh(self.gamma * products + self.coef0)
            else:  # pragma: no cover - rejected at training
                raise ValueError(f"unsupported kernel {self.kernel}")
        decision: np.ndarray = kernel @ self.dual_coef + self.intercept
        return decision


def decide(models: list[SvmScorer], windows: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """``decision`` of ``models[i]`` on ``windows[i, :counts[i]]`` (``windows``: devices x
    windows x features, NaN where missing; overwritten). Transforming, imputing, scaling, the
    windows' norms and their extension run once for all the devices (a few whole-array passes
    instead of several small calls per device); each kernel is the device's own."""
    standardize(models, windows)
    norms = np.einsum("dwf,dwf->dw", windows, windows)
    gammas = np.array([m.gamma for m in models])
    # Models of one fleet use the same columns: one extended copy of their windows
    alike: dict[bytes, list[int]] = {}
    for index, model in enumerate(models):
        alike.setdefault(model.columns.tobytes(), []).append(index)
    results: list[np.ndarray] = [np.empty(0)] * len(models)
    for members in alike.values():
        columns = models[members[0]].columns
        chosen = windows if len(alike) == 1 else windows[members]
        extended = np.empty((*chosen.shape[:2], len(columns) + 2))
        extended[..., : len(columns)] = chosen[..., columns]
        extended[..., len(columns)] = 1.0
        np.multiply(norms[members], -gammas[members, None], out=extended[..., -1])
        for position, index in enumerate(members):
            count = int(counts[index])
            results[index] = models[index].decide_extended(extended[position, :count])
    return results


def standardize(models: Sequence[Standardized], windows: np.ndarray) -> None:
    """Each device's windows transformed, imputed, scaled and weighted, in place (``windows``:
    devices x windows x features, NaN where missing)."""
    _transform(models, windows)
    missing = np.isnan(windows)
    if missing.any():
        np.copyto(windows, np.stack([m.fill for m in models])[:, None, :], where=missing)
    windows -= np.stack([m.mean for m in models])[:, None, :]
    windows /= np.stack([m.scale for m in models])[:, None, :]


class Standardized(Protocol):
    """What :func:`standardize` reads of a scorer: the fitted window transform, imputer and
    scaler (the scale divided by the feature's weight)."""

    @property
    def fill(self) -> np.ndarray: ...
    @property
    def mean(self) -> np.ndarray: ...
    @property
    def scale(self) -> np.ndarray: ...
    @property
    def log_columns(self) -> np.ndarray: ...
    @property
    def log_offsets(self) -> np.ndarray: ...
    @property
    def coverage_columns(self) -> np.ndarray: ...
    @property
    def coverage_scale(self) -> np.ndarray: ...


def _transform(models: Sequence[Standardized], windows: np.ndarray) -> None:
    """Each device's window transform, in place (devices of one feature list share their
    columns: then one pass for all of them)."""
    first = models[0]
    alike = all(
        np.array_equal(m.log_columns, first.log_columns)
        and np.array_equal(m.coverage_columns, first.coverage_columns)
        for m in models
    )
    if alike:
        apply_window_transform(
            windows,
            first.log_columns,
            np.stack([m.log_offsets for m in models])[:, None, :],
            first.coverage_columns,
            np.stack([m.coverage_scale for m in models])[:, None, :],
        )
        return
    for index, model in enumerate(models):
        apply_window_transform(
            windows[index],
            model.log_columns,
            model.log_offsets,
            model.coverage_columns,
            model.coverage_scale,
        )


def fit_pipeline(pipeline: Pipeline, matrix: FloatMatrix) -> Pipeline:
    """Fit the steps in turn, giving the SVM its ``gamma`` as the number ``"scale"`` or
    ``"auto"`` stands for (computed as scikit-learn does, on the weighted scaled windows), so
    that the number can be read back from its public parameters."""
    transform, imputer, scaler, weights, svm = pipeline.named_steps.values()
    transformed = imputer.fit_transform(transform.fit_transform(matrix))
    scaled = weights.fit_transform(scaler.fit_transform(transformed))
    gamma = svm.get_params()["gamma"]
    if gamma == "scale":
        variance = float(scaled.var())
        svm.set_params(gamma=1.0 / (scaled.shape[1] * variance) if variance != 0 else 1.0)
    elif gamma == "auto":
        svm.set_params(gamma=1.0 / scaled.shape[1])
    svm.fit(scaled)
    # The model is the fitted SVM with its support vectors rounded to float32 (stored so:
    # half the bytes; a rounding of ~6e-8 of each coordinate moves a score by ~1e-6,
    # far below any sensor's noise); scikit-learn's own decision is then the stored model's.
    svm.support_vectors_ = np.asarray(svm.support_vectors_, dtype=np.float32).astype(np.float64)
    return pipeline


def _numeric_gamma(svm: Any) -> float:
    gamma = svm.get_params()["gamma"]
    if isinstance(gamma, str):
        raise ValueError(f"gamma {gamma!r} was not resolved: fit with fit_pipeline()")
    return float(gamma)


def make_pipeline(nu: float, gamma: str | float, kernel: str, names: list[str]) -> Pipeline:
    from sklearn.pipeline import Pipeline
    from sklearn.svm import OneClassSVM

    steps = make_standardizer(names).steps
    return Pipeline([*steps, ("svm", OneClassSVM(nu=nu, gamma=gamma, kernel=kernel))])


def make_standardizer(names: list[str]) -> Pipeline:
    """The steps before a model: window transform, imputer, scaler, feature weights."""
    from sklearn.pipeline import Pipeline

    from fleetwatch.scoring.kinds.transforms import (
        MedianImputer,
        Standardizer,
        Weights,
        WindowTransform,
    )

    return Pipeline(
        [
            ("transform", WindowTransform(tuple(feature_role(n) for n in names))),
            ("impute", MedianImputer()),
            ("scale", Standardizer()),
            ("weights", Weights(tuple(feature_weights(names).tolist()))),
        ]
    )


def rho_of(pipeline: Pipeline) -> float:
    """The SVM's offset ``rho`` (its decision value is ``sum a_i K(x, sv_i) - rho``)."""
    return -float(np.asarray(pipeline.named_steps["svm"].intercept_).ravel()[0])
