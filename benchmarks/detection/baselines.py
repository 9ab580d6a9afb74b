"""The baselines ``fleetwatch evaluate --suite`` is judged against, on the same sets and splits.

    python benchmarks/detection/baselines.py                       # every set of the suite
    python benchmarks/detection/baselines.py --suite FILE --sets tep,msl --format json

What a competent user would run on each device's raw readings (no windows), trained on the
same training part as ``evaluate`` (its first N readings, its range, its first duration or
share of readings) and judged on the same test readings with the same metrics
(:mod:`fleetwatch.evaluation.metrics`):

- **robust z**: per sensor, the modified z-score ``0.6745 (x - median) / MAD`` of the training
  readings; a reading is anomalous when any sensor's exceeds 3.5 (Iglewicz and Hoaglin).
- **Hotelling T²**: mean and covariance of the training readings; anomalous above the upper
  control limit at alpha = 0.01 (the F distribution's), as SKAB's T² notebook does.
- **Isolation Forest**: scikit-learn's, 100 trees, contamination 0.01, on standardised readings.
- **per-sensor OCSVM** (the Azure reference's model, one per sensor): ``OneClassSVM(nu=0.01,
  gamma="scale")`` on each standardised sensor; anomalous when any sensor's model says so.

Missing readings are filled with the training median. Prints a table per set (point F1,
FAR, MAR, point-adjusted F1, event recall per method) and the best baseline per set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from fleetwatch.cli.main import parser as cli_parser
from fleetwatch.cli.parser import overrides, parse
from fleetwatch.config import load_settings
from fleetwatch.evaluation.datasets import load
from fleetwatch.evaluation.metrics import evaluate
from fleetwatch.evaluation.run import DEFAULT_FIRST
from fleetwatch.evaluation.suite import read_suite
from fleetwatch.scoring.ranges import FirstPart, read_ranges

SUITE = Path(__file__).with_name("suite.toml")


def robust_z(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    median = np.median(train, axis=0)
    mad = np.median(np.abs(train - median), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = 0.6745 * np.abs(test - median) / mad
    z = np.where(np.isnan(z), 0.0, z)  # 0/0: a constant sensor at its constant
    return (z > 3.5).any(axis=1)


def hotelling(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from scipy import stats

    n, p = train.shape
    mean = train.mean(axis=0)
    inverse = np.linalg.pinv(np.cov(train, rowvar=False).reshape(p, p))
    centred = test - mean
    t2 = np.einsum("ij,jk,ik->i", centred, inverse, centred)
    if n <= p:
        limit = float(
            np.quantile(np.einsum("ij,jk,ik->i", train - mean, inverse, train - mean), 0.99)
        )
    else:
        limit = p * (n + 1) * (n - 1) / (n * (n - p)) * float(stats.f.ppf(0.99, p, n - p))
    return t2 > limit


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def isolation_forest(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from sklearn.ensemble import IsolationForest

    train, test = _standardised(train, test)
    model = IsolationForest(n_estimators=100, contamination=0.01, random_state=0).fit(train)
    return model.predict(test) == -1


def per_sensor_svm(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from sklearn.svm import OneClassSVM

    train, test = _standardised(train, test)
    flagged = np.zeros(len(test), dtype=bool)
    for column in range(train.shape[1]):
        model = OneClassSVM(nu=0.01, gamma="scale").fit(train[:, column : column + 1])
        flagged |= model.predict(test[:, column : column + 1]) == -1
    return flagged


METHODS = {
    "robust z": robust_z,
    "Hotelling T2": hotelling,
    "Isolation Forest": isolation_forest,
    "per-sensor OCSVM": per_sensor_svm,
}


def run_set(source: str, arguments: list[str]) -> dict[str, dict[str, float]]:
    settings = load_settings(
        overrides=overrides(parse(cli_parser(), ["evaluate", source, *arguments]))
    )
    dataset = load(source, settings)
    devices, times = dataset.devices, dataset.times
    sensors = sorted({s for m in dataset.messages for s in m[2]})
    values = np.full((len(dataset.messages), len(sensors)), np.nan)
    column = {s: i for i, s in enumerate(sensors)}
    for row, (_, _, readings) in enumerate(dataset.messages):
        for sensor, value in readings.items():
            values[row, column[sensor]] = value
    options = settings.evaluate
    ranges = read_ranges(options.train_ranges) if options.train_ranges else None
    first = (
        FirstPart.parse(options.train_first)
        if options.train_first
        else (dataset.default_first or DEFAULT_FIRST)
    )
    predicted = {name: np.zeros(len(devices), dtype=bool) for name in METHODS}
    test = np.zeros(len(devices), dtype=bool)
    for device in sorted(set(devices.tolist())):
        mine = np.flatnonzero(devices == device)
        if ranges is not None:
            if device not in ranges:
                continue
            since, until = (round(t.timestamp() * 1000) for t in ranges[device])
            training = mine[(times[mine] >= since) & (times[mine] < until)]
            testing = mine[times[mine] >= until]
        elif first.unit == "readings":
            training, testing = mine[: int(first.amount)], mine[int(first.amount) :]
        elif first.unit == "duration":
            end = times[mine[0]] + round(first.amount * 1000)
            training, testing = mine[times[mine] < end], mine[times[mine] >= end]
        else:
            cut = int(np.ceil(first.amount * len(mine)))
            training, testing = mine[:cut], mine[cut:]
        used = ~np.isnan(values[training]).all(axis=0)  # this device's sensors
        train, rest = values[np.ix_(training, used)], values[np.ix_(testing, used)]
        fill = np.nanmedian(train, axis=0)
        train = np.where(np.isnan(train), fill, train)
        rest = np.where(np.isnan(rest), fill, rest)
        test[testing] = True
        for name, method in METHODS.items():
            predicted[name][testing] = method(train, rest)
    results = {}
    for name in METHODS:
        report = evaluate(
            dataset.truth[test], predicted[name][test], dataset.episodes[test]
        ).as_record()
        results[name] = {
            k: report[k]
            for k in (
                "precision",
                "recall",
                "f1",
                "far_percent",
                "mar_percent",
                "point_adjusted_f1",
                "event_recall",
            )
        }
    return results


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--suite", type=Path, default=SUITE)
    options.add_argument("--sets", default="", help="comma-separated set names (default: all)")
    options.add_argument("--format", choices=["text", "json"], default="text")
    args = options.parse_args(argv)
    wanted = {s for s in args.sets.split(",") if s}
    everything = {}
    for chosen in read_suite(args.suite):
        if wanted and chosen.name not in wanted:
            continue
        missing = chosen.missing()
        if missing:
            print(f"{chosen.name}: skipped: {missing}", file=sys.stderr)
            continue
        started = time.monotonic()
        results = run_set(chosen.source, chosen.arguments)
        everything[chosen.name] = results
        if args.format == "text":
            print(f"\n{chosen.name} ({time.monotonic() - started:.0f} s)")
            print(
                f"  {'method':<18} {'F1':>6} {'FAR %':>7} {'MAR %':>7} {'PA-F1':>6} {'events':>7}"
            )
            for name, r in results.items():
                figures = (r["f1"], r["far_percent"], r["mar_percent"])
                print(
                    f"  {name:<18} {figures[0]:6.3f} {figures[1]:7.1f} {figures[2]:7.1f} "
                    f"{r['point_adjusted_f1']:6.3f} {r['event_recall']:7.3f}"
                )
            best = max(results, key=lambda n: results[n]["f1"])
            print(f"  best baseline by F1: {best} {results[best]['f1']:.3f}")
    if args.format == "json":
        print(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
