"""The one-class SVM pipeline both model kinds are made of, and its fast scoring.

A fitted ``SimpleImputer(median) -> StandardScaler -> OneClassSVM`` is exported as plain arrays
(:class:`SvmParams`, kept in ``params.bin``) and scored from them with vectorised numpy
(:class:`SvmScorer`), which matches scikit-learn's ``decision_function`` to 1e-9 (tested) and
avoids its per-call overhead across thousands of small models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # scikit-learn takes a second to import; scoring never needs it
    from sklearn.pipeline import Pipeline

FloatMatrix = npt.NDArray[np.float64]


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
        )

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
            gamma=_numeric_gamma(svm),
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

    @property
    def feature_count(self) -> int | None:
        return len(self.mean)

    def decision(self, matrix: FloatMatrix) -> np.ndarray:
        """``decision_function`` of the pipeline on one device's windows."""
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
        }

    @classmethod
    def from_arrays(cls, arrays: Any) -> SvmScorer:
        intercept, gamma, coef0, degree = arrays["scalars"].tolist()
        return cls(
            arrays["fill"],
            arrays["mean"],
            arrays["scale"],
            arrays["columns"],
            arrays["vectors"],
            arrays["dual"],
            intercept,
            str(arrays["kernel"][0]),
            gamma,
            coef0,
            int(degree),
        )

    def decide_extended(self, windows: FloatMatrix) -> np.ndarray:
        """Decision values of windows imputed, scaled and extended: ``[x | 1 | -gamma |x|^2]``
        (``x`` over ``columns``)."""
        if self.kernel == "rbf":
            kernel = windows @ self.vectors.T
            np.exp(kernel, out=kernel)
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
        result: np.ndarray = kernel @ self.dual_coef + self.intercept
        return result


def decide(models: list[SvmScorer], windows: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """``decision`` of ``models[i]`` on ``windows[i, :counts[i]]`` (``windows``: devices x
    windows x features, NaN where missing; overwritten). Imputing, scaling, the windows'
    norms and their extension run once for all the devices (a few whole-array passes instead
    of several small calls per device); each kernel is the device's own."""
    missing = np.isnan(windows)
    if missing.any():
        np.copyto(windows, np.stack([m.fill for m in models])[:, None, :], where=missing)
    windows -= np.stack([m.mean for m in models])[:, None, :]
    windows /= np.stack([m.scale for m in models])[:, None, :]
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


def fit_pipeline(pipeline: Pipeline, matrix: FloatMatrix) -> Pipeline:
    """Fit imputer, scaler and SVM in turn, giving the SVM its ``gamma`` as the number
    ``"scale"`` or ``"auto"`` stands for (computed as scikit-learn does, on the scaled
    windows), so that the number can be read back from its public parameters."""
    imputer, scaler, svm = pipeline.named_steps.values()
    scaled = scaler.fit_transform(imputer.fit_transform(matrix))
    gamma = svm.get_params()["gamma"]
    if gamma == "scale":
        variance = float(scaled.var())
        svm.set_params(gamma=1.0 / (scaled.shape[1] * variance) if variance != 0 else 1.0)
    elif gamma == "auto":
        svm.set_params(gamma=1.0 / scaled.shape[1])
    svm.fit(scaled)
    return pipeline


def _numeric_gamma(svm: Any) -> float:
    gamma = svm.get_params()["gamma"]
    if isinstance(gamma, str):
        raise ValueError(f"gamma {gamma!r} was not resolved: fit with fit_pipeline()")
    return float(gamma)


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
