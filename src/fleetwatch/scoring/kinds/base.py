"""What a model kind is: the one interface training, the registry, the pack and scoring use.

A kind is one class (see ``device.py``, ``per_sensor.py``); nothing else branches on a kind's
name. ``tests/unit/scoring/test_kinds.py`` runs one behaviour suite over every registered
kind (as river's ``checks/`` do): its fast scores equal scikit-learn's, it round-trips through
the registry and the pack, a tampered file of it is never loaded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

import numpy as np

from fleetwatch.scoring.kinds.svm import FloatMatrix


class Scorer(Protocol):
    """A device's fitted model, ready to score windows; cheap, never blocks."""

    @property
    def feature_count(self) -> int | None:
        """How many features (columns) a window must have (None: it does not say)."""

    def decision(self, matrix: FloatMatrix) -> np.ndarray:
        """Scores of the windows (rows) of ``matrix``; lower is more anomalous, and windows
        however far from normal keep ranking (no floor)."""


class ModelKind(ABC):
    """A per-device model kind. An instance is a model being fitted; the class methods turn
    the fitted parameters into a :class:`Scorer`.

    ``fit`` may take seconds; everything else is cheap and never blocks. ``fit`` raises what
    scikit-learn raises on data it cannot fit (the device then fails alone); the class
    methods raise ``ValueError`` on parameters that do not make a model (a malformed file).
    """

    #: The name recorded in manifests (``"kind"``) and packs.
    name: ClassVar[str]

    @abstractmethod
    def __init__(self, nu: float = 0.01, gamma: str | float = "scale", kernel: str = "rbf"):
        """A model to fit, with the one-class SVM's hyper-parameters."""

    @abstractmethod
    def fit(self, matrix: FloatMatrix, names: list[str]) -> None:
        """Fit on training windows (rows) over feature ``names``."""

    @abstractmethod
    def estimator(self) -> object:
        """The fitted scikit-learn object(s), kept as ``model.joblib`` (the reference)."""

    @abstractmethod
    def restore(self, estimator: Any) -> None:
        """Become the model whose :meth:`estimator` ``estimator`` is (``model.joblib``)."""

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters, kept as ``params.bin`` (loaded without pickle)."""

    @abstractmethod
    def sklearn_decision(self, matrix: FloatMatrix) -> np.ndarray:
        """scikit-learn's own decision values."""

    @abstractmethod
    def reference_scores(self, matrix: FloatMatrix) -> np.ndarray:
        """scikit-learn's decision values on the scores' scale (NaN where that scale's
        extension goes beyond them): what the fast path must equal."""

    @classmethod
    @abstractmethod
    def scorer(cls, arrays: Any) -> Scorer:
        """A scorer from ``params.bin``'s arrays."""

    @classmethod
    def packed(cls, arrays: Any) -> dict[str, np.ndarray]:
        """What the model pack keeps of ``params.bin``'s arrays (by default, all of them)."""
        return dict(arrays)

    @classmethod
    def from_packed(cls, arrays: Any) -> Scorer:
        """A scorer from what :meth:`packed` returned."""
        return cls.scorer(arrays)

    @classmethod
    def decide_many(
        cls, scorers: list[Any], windows: np.ndarray, counts: np.ndarray
    ) -> list[np.ndarray]:
        """``scorers[i].decision(windows[i, :counts[i]])`` for devices of one feature list
        (``windows``: devices x windows x features, NaN where missing; may be overwritten).
        A kind can do it faster than one by one; this is the one by one."""
        return [s.decision(windows[i, : counts[i]]) for i, s in enumerate(scorers)]

    @classmethod
    def sensor_resets(
        cls, scorer: Any, rows: FloatMatrix, groups: list[np.ndarray]
    ) -> np.ndarray | None:
        """The scores of ``rows`` with each group of columns in turn made missing (groups x
        rows), where the kind knows them without scoring each reset (the explanations'
        resets, :mod:`fleetwatch.scoring.explain`); None: it does not, and they are scored."""
        return None
