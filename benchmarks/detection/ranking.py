"""Ranking alone, from what ``fleetwatch evaluate --suite ... --keep DIR`` leaves behind.

    fleetwatch evaluate --suite benchmarks/detection/suite.toml --keep /tmp/kept
    python benchmarks/detection/ranking.py /tmp/kept                  # every set kept there
    python benchmarks/detection/ranking.py /tmp/kept --far tep=0.043 --far msl=0.335

For each set (a folder of ``DIR``): every test point is joined to its window's
``score_normalized`` (``DIR/<set>/fleetwatch.duckdb``; the judged points are
``DIR/<set>/evaluation/points.parquet``), and the point F1 is computed at thresholds chosen on
the labels, which a product cannot do, so that only the ranking differs:

- the default's own threshold (score below 0: reproduces ``evaluate``'s F1, a check);
- the oracle threshold (the best F1 over thresholds, and the FAR it needs);
- each ``--far SET=RATE``: the threshold that flags that share of the normal points (e.g. the
  best baseline's own FAR, from ``baselines.py``: the comparison of ranking alone);
- the score smoothed over each device's last windows (mean of 2, 3, 5; median of 3; the higher
  of 2, i.e. two low windows in a row), each at the FAR the default reached on the set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

#: Score variants over a device's windows in time order (lower is more anomalous).
SMOOTHERS = {
    "mean of 2": lambda s: s.rolling(2, min_periods=1).mean(),
    "mean of 3": lambda s: s.rolling(3, min_periods=1).mean(),
    "mean of 5": lambda s: s.rolling(5, min_periods=1).mean(),
    "median of 3": lambda s: s.rolling(3, min_periods=1).median(),
    "higher of 2": lambda s: s.rolling(2, min_periods=1).max(),
}


def f1(truth: np.ndarray, flagged: np.ndarray) -> float:
    tp = int((truth & flagged).sum())
    wrong = int((truth ^ flagged).sum())
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def far(truth: np.ndarray, flagged: np.ndarray) -> float:
    return float((flagged & ~truth).sum() / max(int((~truth).sum()), 1))


def at_far(truth: np.ndarray, scores: np.ndarray, rate: float) -> float:
    """The threshold below which ``rate`` of the normal points' scores fall."""
    return float(np.quantile(scores[~truth], rate))


def oracle(truth: np.ndarray, scores: np.ndarray, steps: int = 800) -> tuple[float, float]:
    """The best F1 over thresholds (quantiles of the scores, and just above the highest), and
    the threshold."""
    candidates = np.unique(np.r_[np.quantile(scores, np.linspace(0, 1, steps)), np.inf])
    return max((f1(truth, scores < t), float(t)) for t in candidates)


def windows_of(folder: Path) -> pd.DataFrame:
    """Every scored window of the kept data folder, the last run's score of each."""
    import duckdb

    with duckdb.connect(str(folder / "fleetwatch.duckdb"), read_only=True) as db:
        db.execute("SET TimeZone = 'UTC'")
        frame = db.execute(
            "SELECT device_id, window_start, score_normalized AS score, run_id FROM scores"
        ).df()
    frame = frame.sort_values("run_id").drop_duplicates(["device_id", "window_start"], keep="last")
    frame["window_start"] = frame["window_start"].dt.tz_convert("UTC").astype("datetime64[ms, UTC]")
    return frame.sort_values(["device_id", "window_start"]).reset_index(drop=True)


def judged(points: pd.DataFrame, windows: pd.DataFrame, column: str = "score") -> pd.DataFrame:
    """The test points that were scored, each with its window's ``column``."""
    points = points[points["test"] & points["scored"]].copy()
    points["ts"] = points["ts"].astype("datetime64[ms, UTC]")
    return pd.merge_asof(
        points.sort_values("ts"),
        windows[["device_id", "window_start", column]].sort_values("window_start"),
        left_on="ts",
        right_on="window_start",
        by="device_id",
        direction="backward",
    )


def report(folder: Path, rates: list[float]) -> list[str]:
    windows = windows_of(folder)
    points = pd.read_parquet(folder / "evaluation" / "points.parquet")
    by_device = windows.groupby("device_id")["score"]
    for name, smooth in SMOOTHERS.items():
        windows[name] = by_device.transform(smooth)
    joined = judged(points, windows, "score")
    for name in SMOOTHERS:
        joined[name] = judged(points, windows, name)[name].to_numpy()
    truth = joined["anomalous"].to_numpy(bool)
    scores = joined["score"].to_numpy()
    flagged = joined["flagged"].to_numpy(bool)
    default_far = far(truth, flagged)
    best, threshold = oracle(truth, scores)
    lines = [
        f"{folder.name}: {len(joined):,} test points; the default F1 {f1(truth, flagged):.3f} "
        f"(score < 0: {f1(truth, scores < 0):.3f}) at FAR {default_far:.1%}; oracle F1 "
        f"{best:.3f} at FAR {far(truth, scores < threshold):.1%}"
    ]
    for rate in rates:
        lines.append(
            f"  at FAR {rate:.1%}: F1 {f1(truth, scores < at_far(truth, scores, rate)):.3f}"
        )
    for name in SMOOTHERS:
        smoothed = joined[name].to_numpy()
        chosen = smoothed < at_far(truth, smoothed, default_far)
        lines.append(f"  {name:<12} at the default's FAR: F1 {f1(truth, chosen):.3f}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kept", type=Path, help="the folder given to evaluate --keep")
    parser.add_argument(
        "--far", action="append", default=[], metavar="SET=RATE", help="also F1 at this FAR"
    )
    args = parser.parse_args()
    rates: dict[str, list[float]] = {}
    for item in args.far:
        name, _, rate = item.partition("=")
        rates.setdefault(name, []).append(float(rate))
    sets = sorted(p.parent.parent for p in args.kept.glob("*/evaluation/points.parquet"))
    if not sets:
        print(f"no kept evaluation under {args.kept} (fleetwatch evaluate --keep)", file=sys.stderr)
        return 2
    for folder in sets:
        print("\n".join(report(folder, rates.get(folder.name, []))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
