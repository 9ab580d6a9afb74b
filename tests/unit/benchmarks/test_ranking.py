"""benchmarks/detection/ranking.py: F1 at thresholds chosen on the labels, checked against
scikit-learn and against a brute force, and its join of points to their windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from tests.unit.benchmarks.conftest import load_script

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ranking() -> ModuleType:
    return load_script("detection/ranking.py")


def test_f1_far_and_the_oracle_agree_with_scikit_learn_and_brute_force(
    ranking: ModuleType,
) -> None:
    rng = np.random.default_rng(7)
    truth = rng.random(2_000) < 0.2
    scores = rng.normal(size=2_000) - 1.5 * truth  # anomalies score lower, overlapping
    for threshold in (-2.0, -1.0, 0.0, 1.0):
        flagged = scores < threshold
        assert ranking.f1(truth, flagged) == pytest.approx(f1_score(truth, flagged))
        assert ranking.far(truth, flagged) == pytest.approx(flagged[~truth].mean())
    rate = 0.05
    flagged = scores < ranking.at_far(truth, scores, rate)
    assert abs(flagged[~truth].mean() - rate) <= 1 / (~truth).sum()
    best, threshold = ranking.oracle(truth, scores, steps=4_000)
    brute = max(f1_score(truth, scores < t) for t in np.r_[np.sort(scores), np.inf])
    assert best == pytest.approx(f1_score(truth, scores < threshold))
    assert best >= brute - 0.005  # quantile candidates: within a hair of every threshold


def test_a_kept_folder_is_read_back_point_by_window_and_smoothed_per_device(
    ranking: ModuleType, tmp_path: Path
) -> None:
    folder = tmp_path / "set"
    (folder / "evaluation").mkdir(parents=True)
    minute = timedelta(minutes=1)
    windows = [  # device, window start (minutes), score; d-1's window 1 scored twice
        ("d-1", 0, 1.0, "r1"), ("d-1", 1, -5.0, "r1"), ("d-1", 1, -3.0, "r2"),
        ("d-1", 2, 2.0, "r2"), ("d-2", 0, -1.0, "r1"), ("d-2", 1, 3.0, "r1"),
    ]  # fmt: skip
    with duckdb.connect(str(folder / "fleetwatch.duckdb")) as db:
        db.execute("CREATE TABLE scores (run_id VARCHAR, device_id VARCHAR, "
                   "window_start TIMESTAMPTZ, score_normalized DOUBLE)")  # fmt: skip
        db.executemany(
            "INSERT INTO scores VALUES (?, ?, ?, ?)",
            [(run, d, T0 + m * minute, s) for d, m, s, run in windows],
        )
    points = pd.DataFrame(
        {
            "device_id": ["d-1", "d-1", "d-1", "d-2", "d-2", "d-2"],
            "ts": [T0 + 30 * timedelta(seconds=1) + i * minute for i in (0, 1, 2, 0, 1, 1)],
            "anomalous": [False, True, False, True, False, False],
            "flagged": [False, True, False, True, False, False],
            "scored": [True] * 6,
            "test": [True, True, True, True, True, False],
        }
    )
    points["ts"] = pd.to_datetime(points["ts"], utc=True)
    points.to_parquet(folder / "evaluation" / "points.parquet")

    kept = ranking.windows_of(folder)
    assert kept["score"].tolist() == [1.0, -3.0, 2.0, -1.0, 3.0]  # the last run's score
    by_device = kept.groupby("device_id")["score"]
    kept["mean of 2"] = by_device.transform(ranking.SMOOTHERS["mean of 2"])
    assert kept["mean of 2"].tolist() == [1.0, -1.0, -0.5, -1.0, 1.0]  # never across devices
    joined = ranking.judged(pd.read_parquet(folder / "evaluation" / "points.parquet"), kept)
    got = sorted(zip(joined["device_id"], joined["score"], strict=True))
    assert got == [("d-1", -3.0), ("d-1", 1.0), ("d-1", 2.0), ("d-2", -1.0), ("d-2", 3.0)]
    lines = ranking.report(folder, [0.5])
    assert lines[0].startswith("set: 5 test points; the default F1 1.000 (score < 0: 1.000)")
