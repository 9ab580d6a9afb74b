"""Training one device: the threshold held out by time, the tail rule, and the model saved by
the worker itself (or kept in shadow)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from fleetwatch.scoring.calibration import (
    MIN_SCALE,
    Calibration,
    calibrate,
    held_out_count,
    recalibrated,
)
from fleetwatch.scoring.features import feature_names
from fleetwatch.scoring.kinds import DeviceModel
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.train import (
    FitJob,
    Fitted,
    fit_many,
    fit_one,
    fit_threshold,
    held_out_false_alarms,
    publish,
)

NAMES = feature_names(["a", "b"])
WHEN = datetime(2026, 11, 22, tzinfo=UTC)
PARAMETERS = {"kind": "device", "nu": 0.05, "gamma": "scale", "kernel": "rbf",
              "target_far": 0.001}  # fmt: skip


def windows(rows: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).normal(size=(rows, len(NAMES)))
    for index, name in enumerate(NAMES):
        if name.endswith("__count"):
            matrix[:, index] = 6.0
        elif name.endswith("__std"):
            matrix[:, index] = np.abs(matrix[:, index]) + 0.1
    return matrix


def job(matrix: np.ndarray, root: Path, device: str = "pump-1", activate: str = "yes") -> FitJob:
    return FitJob(device, matrix, NAMES, PARAMETERS, True, WHEN, WHEN, activate)


def test_the_threshold_comes_from_the_latest_windows_scored_by_a_model_of_the_earlier(
    tmp_path: Path,
) -> None:
    matrix = windows(200)
    model, calibration = fit_threshold(job(matrix, tmp_path))
    # independently: scikit-learn fitted on the first 160 windows scores the last 40
    earlier = DeviceModel(0.05, "scale", "rbf")
    earlier.fit(matrix[:160], NAMES)
    held = earlier.reference_scores(matrix[160:])
    assert np.isfinite(held).all() and held_out_count(200) == 40
    tail = math.ceil(40 * 0.3)
    ordered = np.sort(held)
    # the exponential tail's scale: the mean excess, each counted at most 10 rough scales
    # (the median's, over ln 2), at least the same on the earlier model's own windows' scores

    def tail_scale(ordered: np.ndarray, tail: int) -> float:
        excess = ordered[tail] - ordered[:tail]
        return float(np.minimum(excess, 10 * np.median(excess) / math.log(2)).mean())

    start, scale = ordered[tail], tail_scale(ordered, tail)
    own = np.sort(earlier.reference_scores(matrix[:160]))
    scale = max(scale, tail_scale(own, math.ceil(160 * 0.3)), 0.001)
    expected = start - scale * math.log((tail / 40) / 0.001)
    assert calibration.rule == "exponential tail"
    assert calibration.threshold == pytest.approx(expected, abs=1e-8)
    assert calibration.tail_scale == pytest.approx(scale, abs=1e-8)
    # ... and the final model saw every window
    assert len(model.pipeline.named_steps["svm"].support_vectors_) >= 0.05 * 200 - 1
    assert model.pipeline.named_steps["scale"].n_samples_seen_ == 200


def test_drift_in_the_latest_windows_moves_the_threshold(tmp_path: Path) -> None:
    """Held out at random, drift that comes later in time is never seen; held out by time,
    the latest windows carry it, and the threshold makes room for it."""
    steady = windows(200)
    drifting = steady.copy()
    for name in ("a__mean", "b__mean"):  # a slow drift of both levels, 6 sigma in all
        drifting[:, NAMES.index(name)] += np.linspace(0, 6, 200)
    _, flat = fit_threshold(job(steady, tmp_path))
    _, drifted = fit_threshold(job(drifting, tmp_path))
    assert np.median(drifted.held_out) < np.median(flat.held_out) - 0.2
    assert drifted.threshold < flat.threshold - 0.3


def test_the_tail_rule_and_the_quantile_rule() -> None:
    held = np.arange(20, dtype=float)  # 0, 1, ..., 19
    # at or above the tail's share (6/20) the empirical quantile
    assert calibrate(held, 0.5).threshold == pytest.approx(np.quantile(held, 0.5))
    assert calibrate(held, 0.5).rule == "empirical quantile"
    # below it: start 6, mean excess of 0..5 below 6 is 3.5 (none beyond 10 rough scales)
    deep = calibrate(held, 0.001)
    scale = 3.5
    assert deep.rule == "exponential tail" and deep.tail_scale == pytest.approx(scale)
    assert deep.threshold == pytest.approx(6 - scale * math.log(0.3 / 0.001))
    assert deep.degenerate is None
    # the normalised score: 0 at the threshold, -1 per tail scale below it
    below = deep.normalized(np.array([deep.threshold - 2 * scale]))[0]
    assert below == pytest.approx(-2.0)
    assert recalibrated(deep, 0.5).threshold == pytest.approx(np.quantile(held, 0.5))
    with pytest.raises(ValueError, match="by hand"):
        recalibrated(Calibration(0.0, 1.0, 0.0, "set by hand", []), 0.01)


def test_one_extreme_held_out_window_does_not_carry_the_threshold_away() -> None:
    """Issue 25: one held-out score of -7,272 pushed a threshold to -1,154 (nothing flagged).
    The tail's scale is its median excess: one extreme window moves it little."""
    held = np.random.default_rng(3).normal(0.0, 0.05, 160)
    clean = calibrate(held, 0.001)
    held[17] = -7272.0
    spoiled = calibrate(held, 0.001)
    assert abs(spoiled.threshold - clean.threshold) < 0.1 * abs(clean.threshold) + 0.05
    assert spoiled.threshold > -1.0 and spoiled.degenerate is None


def test_held_out_windows_without_spread_do_not_make_a_threshold_of_nothing() -> None:
    """Issue 25: all 160 held-out windows scored 0.000186, the threshold became that value
    and 4,131 of 4,518 test windows were flagged. The scale falls back to the fitted
    windows' (or the floor), and the threshold is reported degenerate."""
    held = np.full(160, 0.000186)
    alone = calibrate(held, 0.001)
    assert alone.tail_scale == MIN_SCALE and alone.threshold < 0.000186 - 5 * MIN_SCALE
    assert alone.degenerate is not None and "all scored alike" in alone.degenerate
    fitted = calibrate(held, 0.001, fitted_scale=0.2)
    assert fitted.tail_scale == 0.2 and "fitted windows" in (fitted.degenerate or "")
    # a test window a rounding away from the held-out ones is not flagged
    assert fitted.normalized(np.array([0.000186 - 1e-6]))[0] > 0
    constant = calibrate(np.zeros(40), 0.001, fitted_scale=0.0)
    assert "any change is flagged" in (constant.degenerate or "")
    again = recalibrated(fitted, 0.01)
    assert again.tail_scale == 0.2 and again.degenerate == fitted.degenerate
    non_finite = calibrate(np.r_[np.zeros(20) + np.arange(20) * 0.1, [np.nan]], 0.001)
    assert "not finite" in (non_finite.degenerate or "")


def test_small_training_sets(tmp_path: Path) -> None:
    """At least 10 windows to fit and 5 held out: 15 trains, 14 is refused with why."""
    assert held_out_count(15) == 5 and held_out_count(100) == 20
    _, calibration = fit_threshold(job(windows(15), tmp_path))
    assert len(calibration.held_out) == 5
    with pytest.raises(ValueError, match="at least 15 are needed"):
        fit_threshold(job(windows(14), tmp_path))


def test_a_task_of_devices_fits_each_and_fails_only_the_one_that_cannot_be(
    tmp_path: Path,
) -> None:
    """A training task fits a few devices (``fit_many``): a device whose fit raises gets why
    in its place, the others their models, equal to fitting each alone."""
    jobs = [job(windows(60), tmp_path, "pump-1"), job(windows(14), tmp_path, "pump-2"),
            job(windows(80), tmp_path, "pump-3")]  # fmt: skip
    outcomes = fit_many(jobs)
    assert [device for device, _ in outcomes] == ["pump-1", "pump-2", "pump-3"]
    with pytest.raises(ValueError) as refused:
        fit_one(jobs[1])
    assert outcomes[1][1] == f"ValueError: {refused.value}"
    for index in (0, 2):
        got, alone = outcomes[index][1], fit_one(jobs[index])
        assert isinstance(got, Fitted) and got.row is not None and alone.row is not None
        assert got.row.files == alone.row.files


def test_the_retraining_check_flags_a_fault_in_the_latest_windows(tmp_path: Path) -> None:
    steady = windows(120)
    assert held_out_false_alarms(job(steady, tmp_path)) == (0, 24)
    faulty = steady.copy()
    faulty[-3:, NAMES.index("b__mean")] += 25.0
    assert held_out_false_alarms(job(faulty, tmp_path)) == (3, 24)
    assert held_out_false_alarms(job(windows(19), tmp_path)) is None  # too few to check


def fit_and_save(fit: FitJob, root: Path) -> Fitted:
    """A worker's fit, published as training's parent publishes a group."""
    return publish(ModelRegistry.of(root), {fit.device_id: fit_one(fit)})[fit.device_id]


def test_the_worker_saves_and_activates_the_model(tmp_path: Path) -> None:
    fitted = fit_and_save(job(windows(120), tmp_path, "pump-7"), tmp_path)
    registry = ModelRegistry.of(tmp_path)
    assert fitted.version == "v0001" == registry.active_version("pump-7")
    assert fitted.shadow_reason is None and fitted.degenerate is None
    manifest = registry.describe("pump-7")
    assert manifest["training"]["windows"] == 120 and manifest["features_version"] == 2
    section = manifest["calibration"]
    assert section["held_out_windows"] == 24 and section["target_far"] == 0.001
    assert manifest["threshold"] == section["threshold"] < max(section["held_out_scores"])


def test_a_retrained_version_whose_held_out_windows_surprise_it_stays_in_shadow(
    tmp_path: Path,
) -> None:
    fit_and_save(job(windows(120), tmp_path, "pump-7"), tmp_path)
    faulty = windows(120, seed=1)
    faulty[-3:, NAMES.index("b__mean")] += 25.0  # a fault in the latest training windows
    fitted = fit_and_save(job(faulty, tmp_path, "pump-7", activate="if-calibrated"), tmp_path)
    version, shadow = fitted.version, fitted.shadow_reason
    assert version == "v0002" and shadow is not None and "kept in shadow" in shadow
    registry = ModelRegistry.of(tmp_path)  # a registry reads the journal once: read it again
    assert registry.active_version("pump-7") == "v0001"
    in_shadow = registry.shadow("pump-7")
    assert in_shadow is not None and in_shadow.version == "v0002"
    assert registry.shadowed_devices() == {"pump-7"}
    # a clean retraining is activated
    fitted = fit_and_save(job(windows(120, 2), tmp_path, "pump-7", "if-calibrated"), tmp_path)
    version, shadow = fitted.version, fitted.shadow_reason
    registry = ModelRegistry.of(tmp_path)
    assert shadow is None and registry.active_version("pump-7") == version == "v0003"


WORKERS_THEN_KILLED = """
import os, signal
from concurrent.futures import ProcessPoolExecutor
from fleetwatch.scoring.train import _worker_start

with ProcessPoolExecutor(max_workers=2, initializer=_worker_start) as pool:
    pool.submit(int).result()
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(os.getpid()):
            children.append(entry)
    print(" ".join(children), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_training_processes_leave_when_their_parent_is_killed() -> None:
    """A `train` killed with SIGKILL left its pool's idle workers behind, waiting forever on
    a task queue whose write end their siblings hold open; now each sees its parent gone and
    exits (within about PARENT_CHECK_S)."""
    import subprocess
    import sys
    import time

    done = subprocess.run(
        [sys.executable, "-c", WORKERS_THEN_KILLED], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -9, done.stderr
    workers = done.stdout.split()
    assert len(workers) >= 2, done.stdout  # the pool's processes (and its resource tracker)

    def alive(pid: str) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)]
