"""The detection metrics against scikit-learn's and against their definitions, by hand."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score

from fleetwatch.evaluation.metrics import episodes_of_runs, evaluate


def test_point_metrics_equal_scikit_learns() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(5000) < 0.3
    predicted = np.where(truth, rng.random(5000) < 0.7, rng.random(5000) < 0.1)
    devices = np.repeat(["a", "b"], 2500)
    report = evaluate(truth, predicted, episodes_of_runs(devices, truth))
    counts = report.counts
    assert counts.precision == precision_score(truth, predicted)
    assert counts.recall == recall_score(truth, predicted)
    assert abs(counts.f1 - f1_score(truth, predicted)) < 1e-12
    # SKAB's definitions: F1 = TP / (TP + (FN + FP) / 2), FAR and MAR in percent
    assert abs(counts.f1 - counts.tp / (counts.tp + (counts.fn + counts.fp) / 2)) < 1e-12
    normal = ~truth
    assert counts.far == 100 * (predicted & normal).sum() / normal.sum()
    assert counts.mar == 100 * (~predicted & truth).sum() / truth.sum()


def test_episodes_point_adjustment_and_event_recall_by_hand() -> None:
    #          device a: normal, episode 0 (3), normal, episode 1 (2) | device b: episode 2 (2)
    devices = np.array(["a"] * 8 + ["b"] * 2)
    truth = np.array([0, 1, 1, 1, 0, 0, 1, 1, 1, 1], dtype=bool)
    predicted = np.array([1, 0, 1, 0, 0, 0, 0, 0, 1, 0], dtype=bool)
    episodes = episodes_of_runs(devices, truth)
    # a's second run and b's run touch across the device boundary: two episodes, not one
    assert episodes.tolist() == [-1, 0, 0, 0, -1, -1, 1, 1, 2, 2]
    report = evaluate(truth, predicted, episodes, ["valve", "leak", "valve"])
    assert (report.episodes, report.episodes_found, report.event_recall) == (3, 2, 2 / 3)
    # point-adjusted: episodes 0 and 2 wholly detected (5 points), episode 1 missed (2)
    adjusted = report.adjusted
    assert (adjusted.tp, adjusted.fn, adjusted.fp) == (5, 2, 1)
    assert report.by_kind == {"valve": (2, 2, 1.0), "leak": (0, 1, 0.0)}
    record = report.as_record()
    assert record["by_kind"]["leak"] == {"found": 0, "episodes": 1, "recall": 0.0}
    assert record["points"] == 10 and record["anomalous_points"] == 7
