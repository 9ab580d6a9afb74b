"""What scoring stores beyond the score: normalised scores, explanations, incidents, and the
versions in shadow; thresholds set by hand."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from fleetwatch.config import Settings
from fleetwatch.scoring.calibration import Calibration
from fleetwatch.scoring.registry import ModelIntegrityError, ModelRegistry
from fleetwatch.scoring.score import score_hour
from fleetwatch.scoring.train import train
from fleetwatch.storage.duck import query
from fleetwatch.storage.layout import DataLayout
from tests.unit.scoring.conftest import (
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
    write_windows,
)
from tests.unit.scoring.tamper import republish

HOUR = timedelta(hours=1)


def db(settings: Settings, sql: str, parameters: list[object] | None = None) -> list[tuple]:
    with duckdb.connect(str(settings.data_dir / "fleetwatch.duckdb"), read_only=True) as c:
        return c.execute(sql, parameters or []).fetchall()


@pytest.fixture
def shifted(tmp_path: Path) -> Settings:
    """Four hours; pump-03's pressure shifts in two bursts in the third hour (minutes 130-139
    and 142-151: one incident with a 2-minute gap) and in the fourth (minutes 200-209)."""
    frame = synthetic_windows(hours=4)
    minute = (frame["window_start"] - pd.Timestamp(T0)).dt.total_seconds() // 60
    frame = frame[~((frame["device_id"] == "pump-03") & (minute >= 150) & (minute < 200))]
    frame = frame.copy()
    minute = (frame["window_start"] - pd.Timestamp(T0)).dt.total_seconds() // 60
    burst = (
        (frame["device_id"] == "pump-03")
        & (frame["sensor"] == "pressure")
        & (minute.between(130, 139) | minute.between(142, 149) | minute.between(200, 209))
    )
    for column in ("mean", "min", "max"):
        frame.loc[burst, column] += 3.0
    data = tmp_path / "data"
    write_windows(data, frame)
    settings = settings_for(data, incident_gap="3m")
    trained = train(settings, T0, T0 + 2 * HOUR)
    assert len(trained.trained) == 8
    set_watermark(settings, T0 + 4 * HOUR)
    return settings


def test_anomalies_store_their_normalised_score_and_top_sensors(shifted: Settings) -> None:
    score_hour(shifted, T0 + 2 * HOUR, progress=False)
    registry = ModelRegistry.of(shifted.data_dir)
    calibration = registry.describe("pump-03")["calibration"]
    rows = db(
        shifted,
        "SELECT score, score_normalized, is_anomaly, top_sensors FROM scores "
        "WHERE device_id = 'pump-03' ORDER BY window_start",
    )
    for score, normalized, is_anomaly, top in rows:
        expected = (score - calibration["threshold"]) / calibration["tail_scale"]
        assert normalized == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert is_anomaly == (normalized < 0) and (top is not None) == is_anomaly
    flagged = [top for *_, is_anomaly, top in rows if is_anomaly]
    assert len(flagged) >= 15  # the two bursts
    for top in flagged:
        assert top[0]["sensor"] == "pressure" and top[0]["share"] > 0.5
        assert sum(item["share"] for item in top) <= 1.0 + 1e-9
    # queryable with `fleetwatch sql`
    layout = DataLayout.open(shifted.data_dir)
    (result,) = query(
        layout,
        "SELECT top_sensors[1].sensor AS sensor, count(*) AS windows FROM anomalies "
        "WHERE device_id = 'pump-03' GROUP BY 1",
    )
    assert result.records() == [{"sensor": "pressure", "windows": len(flagged)}]


def test_incidents_merge_bursts_within_the_gap_and_rebuild_alike_in_any_order(
    shifted: Settings,
) -> None:
    hours = [T0 + 2 * HOUR, T0 + 3 * HOUR]

    def incidents() -> list[tuple]:
        return db(
            shifted,
            "SELECT incident_id, device_id, window_start, window_end, windows, peak_score, "
            "top_sensors, status FROM incidents WHERE device_id = 'pump-03' ORDER BY 1",
        )

    for hour in hours:
        score_hour(shifted, hour, progress=False)
    forward = incidents()
    # independently, from the stored anomalies: windows at most 3 minutes apart are one
    anomalies = db(
        shifted,
        "SELECT window_start, window_end, score_normalized FROM anomalies "
        "WHERE device_id = 'pump-03' ORDER BY 1",
    )
    groups: list[list[tuple]] = []
    for row in anomalies:
        if groups and row[0] - groups[-1][-1][1] <= timedelta(minutes=3):
            groups[-1].append(row)
        else:
            groups.append([row])
    assert [(g[0][0], g[-1][1], len(g)) for g in groups] == [(i[2], i[3], i[4]) for i in forward]
    assert len(forward) == 2  # the two bursts of the third hour are one incident
    assert [g for g in groups if len(g) >= 15]  # ... of both bursts
    assert forward[0][5] == pytest.approx(min(r[2] for r in groups[0]))
    assert forward[0][6][0]["sensor"] == "pressure"
    assert [i[7] for i in forward] == ["closed", "open"]  # the last reaches the latest hour
    # scoring again, backwards, or one hour twice: the same incidents
    for hour in [*reversed(hours), hours[0]]:
        score_hour(shifted, hour, progress=False)
    assert incidents() == forward
    assert len(db(shifted, "SELECT DISTINCT incident_id FROM incidents")) == len(
        db(shifted, "SELECT incident_id FROM incidents")
    )


def fleetwatch(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch", *args, "--data-dir", str(settings.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_version_in_shadow_is_scored_compared_promoted_and_rolled_back(
    shifted: Settings,
) -> None:
    registry = ModelRegistry.of(shifted.data_dir)
    # a candidate trained on the third hour too: it learns the first bursts as normal
    candidate = train(shifted, T0, T0 + 3 * HOUR, ["pump-03"], activate="no")
    version = candidate.trained["pump-03"]
    done = fleetwatch(shifted, "models", "activate", "pump-03", version, "--shadow")
    assert done.returncode == 0, done.stderr
    assert registry.shadowed_devices() == {"pump-03"}
    result = score_hour(shifted, T0 + 3 * HOUR, progress=False)
    assert result.devices_scored == 8
    active = dict(
        db(shifted, "SELECT epoch_ms(window_start), is_anomaly FROM scores WHERE device_id = ?",
           ["pump-03"])
    )  # fmt: skip
    shadow = db(
        shifted,
        "SELECT epoch_ms(window_start), is_anomaly, model_version FROM shadow_scores",
    )
    assert {row[2] for row in shadow} == {version} and len(shadow) == len(active)
    assert not db(shifted, "SELECT * FROM anomalies WHERE model_version = ?", [version])
    compared = fleetwatch(shifted, "models", "compare", "pump-03", "--format", "json")
    assert compared.returncode == 0, compared.stderr
    record = json.loads(compared.stdout)
    assert record["anomalies_active"] == sum(active.values())
    assert record["anomalies_shadow"] == sum(flag for _, flag, _ in shadow)
    assert record["anomalies_both"] == sum(1 for start, flag, _ in shadow if flag and active[start])
    assert record["only_active"] + record["only_shadow"] == len(record["differing"])
    # promote, then roll back
    before = registry.active_version("pump-03")
    assert fleetwatch(shifted, "models", "promote", "pump-03").returncode == 0
    assert registry.active_version("pump-03") == version and registry.shadow("pump-03") is None
    assert fleetwatch(shifted, "models", "rollback", "pump-03").returncode == 0
    assert registry.active_version("pump-03") == before


def test_set_threshold_makes_a_new_version_and_a_rollback_undoes_it(shifted: Settings) -> None:
    registry = ModelRegistry.of(shifted.data_dir)
    first = registry.describe("pump-03")
    done = fleetwatch(shifted, "models", "set-threshold", "pump-03", "--target-far", "0.5")
    assert done.returncode == 0, done.stderr
    second = registry.describe("pump-03")
    held = np.array(first["calibration"]["held_out_scores"])
    assert second["version"] != first["version"] and second["derived_from"] == first["version"]
    # at a target above the tail's share, the held-out scores' own quantile
    assert second["threshold"] == pytest.approx(np.quantile(held, 0.5))
    assert second["calibration"]["target_far"] == 0.5
    score_hour(shifted, T0 + 2 * HOUR, progress=False)  # scored with the new threshold
    scores = db(shifted, "SELECT score, is_anomaly FROM scores WHERE device_id = 'pump-03'")
    assert all(flag == (score < second["threshold"]) for score, flag in scores)
    done = fleetwatch(shifted, "models", "set-threshold", "pump-03", "--value", "-3.5")
    assert done.returncode == 0 and registry.describe("pump-03")["threshold"] == -3.5
    assert registry.describe("pump-03")["calibration"]["rule"] == "set by hand"
    both = fleetwatch(shifted, "models", "set-threshold", "pump-03")
    assert both.returncode == 2 and "--value SCORE or --target-far" in both.stderr
    assert fleetwatch(shifted, "models", "rollback", "pump-03").returncode == 0
    assert registry.describe("pump-03")["version"] == second["version"]


def test_a_model_of_an_older_fleetwatch_is_refused_with_what_to_do(shifted: Settings) -> None:
    registry = ModelRegistry.of(shifted.data_dir)
    model = registry.active("pump-02")
    assert model is not None
    version = republish(shifted.data_dir, model, lambda manifest: manifest.pop("features_version"))
    shutil.rmtree(DataLayout.open(shifted.data_dir).model_pack, ignore_errors=True)
    score_hour(shifted, T0 + 2 * HOUR, progress=False)
    error = db(shifted, "SELECT error FROM device_runs WHERE device_id = 'pump-02'")[0][0]
    assert "older fleetwatch" in error and "fleetwatch train" in error
    with pytest.raises(ModelIntegrityError, match="older fleetwatch"):
        registry.with_threshold("pump-02", version, Calibration(0, 1, 0, "x", []))


def test_explaining_a_wide_device_costs_memory_linear_in_its_sensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 24, item 6: 400 sensors of 5 features, 60 anomalous windows: the resets go to the
    model in calls of at most explain.CELLS values (one piece would be 400 x 60 x 2,000), and
    the explanations are the ones a single call gives."""
    from fleetwatch.scoring import explain
    from fleetwatch.scoring.kinds import DeviceModel

    rng = np.random.default_rng(5)
    sensors = [f"s{i:03d}" for i in range(400)]
    names = [f"{s}__{stat}" for s in sensors for stat in ("mean", "std", "min", "max", "count")]
    train = rng.normal(0, 1, (200, len(names)))
    from fleetwatch.scoring.kinds import new_model

    model = new_model("device", 0.05, "scale", "rbf")
    model.fit(train, names)
    scorer = DeviceModel.scorer(model.arrays())
    test = rng.normal(0, 1, (60, len(names)))
    test[:, 5:10] += 8  # s001 drives every window
    scores = scorer.decision(test)
    flagged = np.arange(60)
    largest: list[int] = []
    real = DeviceModel.decide_many

    def recorded(scorers: Any, windows: np.ndarray, counts: Any) -> Any:
        largest.append(windows.size)
        return real(scorers, windows, counts)

    monkeypatch.setattr(DeviceModel, "decide_many", recorded)
    chunked = explain.explain_many(DeviceModel, [scorer], tuple(names), [test], [scores], [flagged])
    assert max(largest) <= explain.CELLS and len(largest) > 1
    monkeypatch.setattr(explain, "CELLS", 10**12)
    largest.clear()
    whole = explain.explain_many(DeviceModel, [scorer], tuple(names), [test], [scores], [flagged])
    assert len(largest) == 1 and chunked == whole
    assert all(row[0][0] == "s001" for row in chunked[0])


def test_a_per_sensor_models_resets_are_the_scores_of_its_reset_windows() -> None:
    """A per-sensor device's explanations come from its kind's ``sensor_resets`` (a reset
    changes only its own sensor's score) instead of scoring a reset window per sensor: they
    equal the scores of the windows with each sensor's features made missing, as the generic
    path takes them (slow and level sensors: two feature counts)."""
    from fleetwatch.scoring import explain
    from fleetwatch.scoring.kinds import ModelKind, PerSensorModel, new_model

    rng = np.random.default_rng(11)
    names = [f"s{i}__{stat}" for i in range(6) for stat in ("mean", "std", "min", "max", "count")]
    names += ["t__delta", "t__std", "t__count"]
    model = new_model("per_sensor", 0.05, "scale", "rbf")
    model.fit(rng.normal(0, 1, (120, len(names))), names)
    scorer = PerSensorModel.scorer(model.arrays())
    test = rng.normal(0, 1, (40, len(names)))
    test[:20, 10:15] += 6  # s2 drives the first windows
    test[20:, 30:] -= 6  # t the last ones
    scores = scorer.decision(test)
    flagged = np.flatnonzero(scores < np.quantile(scores, 0.6))
    _, groups = explain.sensor_groups(tuple(names))
    resets = PerSensorModel.sensor_resets(scorer, test[flagged], groups)
    assert resets is not None
    for g, columns in enumerate(groups):
        reset = test[flagged].copy()
        reset[:, columns] = np.nan
        np.testing.assert_allclose(resets[g], scorer.decision(reset), rtol=1e-12, atol=1e-12)
    # the explanations are the generic path's (ModelKind's, which scores each reset)
    fast = explain.explain_many(PerSensorModel, [scorer], tuple(names), [test], [scores], [flagged])
    slow = explain.explain_many(ModelKind, [scorer], tuple(names), [test], [scores], [flagged])  # type: ignore[type-abstract]
    assert fast == slow
    assert {row[0][0] for row in fast[0]} >= {"s2", "t"}
