"""Training one device: the held-out threshold, and the model saved by the worker itself."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fleetwatch.scoring.features import feature_names
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.train import FitJob, fit_and_save, fit_threshold

NAMES = feature_names(["a", "b"])
WHEN = datetime(2026, 11, 22, tzinfo=UTC)
PARAMETERS = {"kind": "device", "nu": 0.05, "gamma": "scale", "kernel": "rbf",
              "threshold_quantile": 0.01}  # fmt: skip


def windows(rows: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).normal(size=(rows, len(NAMES)))
    matrix[:, [NAMES.index("a__present"), NAMES.index("b__present")]] = 10.0
    return matrix


def job(matrix: np.ndarray, root: Path, device: str = "pump-1") -> FitJob:
    return FitJob(device, matrix, NAMES, PARAMETERS, str(root), WHEN, WHEN, True)


def test_the_threshold_is_a_quantile_of_held_out_scores_never_above_zero(tmp_path: Path) -> None:
    matrix = windows(200)
    model, threshold = fit_threshold(job(matrix, tmp_path))
    _, same = fit_threshold(job(matrix, tmp_path))  # seeded by the device: repeatable
    assert threshold == same <= 0.0
    # independently: which fifth was held out is the seeded permutation's first 40 rows
    seed = int.from_bytes(b"pump-1".ljust(8, b"\0"), "little")
    held = np.random.default_rng(seed).permutation(200)[:40]
    expected = min(0.0, float(np.quantile(model.sklearn_decision(matrix[held]), 0.01)))
    assert threshold == expected
    assert len(model.pipeline.named_steps["svm"].support_vectors_) < 200  # fitted on the rest


def test_a_small_training_set_is_not_split(tmp_path: Path) -> None:
    matrix = windows(40)
    model, threshold = fit_threshold(job(matrix, tmp_path))
    scores = model.sklearn_decision(matrix)
    assert threshold == min(0.0, float(np.quantile(scores, 0.01)))


def test_the_worker_saves_and_activates_the_model(tmp_path: Path) -> None:
    version = fit_and_save(job(windows(120), tmp_path, "pump-7"))
    registry = ModelRegistry(tmp_path)
    assert version == "v0001" == registry.active_version("pump-7")
    manifest = registry.describe("pump-7")
    assert manifest["threshold"] <= 0 and manifest["training"]["windows"] == 120
