"""Training many devices: ``fleetwatch train`` against a plain loop of scikit-learn fits.

    python benchmarks/train.py                          # 1,000 devices x a day x 10 sensors
    python benchmarks/train.py --devices 300 --rounds 1 --format json

Setup (not timed): a day of one-minute aggregates (1,440 windows x 10 sensors a device) as
Parquet. Then, per round:

(a) the plain loop a user would write: one process, each device's features cut from the
    aggregates with pandas (read once, pivoted), ``make_pipeline(...).fit`` and
    ``joblib.dump`` of each model (no held-out threshold, no registry, no checks);
(b) ``fleetwatch train --since ... --until ...`` as a command with ``--workers`` processes:
    the cube read from Parquet, a held-out threshold per device, models saved through the
    registry (sha256 and manifest per device; a run object and a journal record per group of
    devices, activated) and packed.

Printed: medians, the ratio a/b, and the per-device cost of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.parquet import AGGREGATE_SCHEMA, write_table

START = datetime(2026, 11, 21, tzinfo=UTC)
SENSORS = [f"s{i:02d}" for i in range(10)]

#: (a): fit every device in one process, the way a notebook turned script does.
PLAIN = """
import sys, time
from pathlib import Path
import joblib, numpy as np, pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

data, out = Path(sys.argv[1]), Path(sys.argv[2])
until = [("window_start", "<", pd.Timestamp(sys.argv[3]))] if len(sys.argv) > 3 else None
frame = pd.read_parquet(data / "aggregates", filters=until)  # benchmarks/fleet.py: its 2 hours
wide = frame.pivot_table(index=["device_id", "window_start"], columns="sensor",
                         values=["mean", "std", "min", "max"], aggfunc="first")
out.mkdir(parents=True, exist_ok=True)
for device, rows in wide.groupby(level=0):
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                          OneClassSVM(nu=0.01, gamma="scale"))
    model.fit(rows.to_numpy())
    joblib.dump(model, out / f"{device}.joblib")
"""


def write_day(data: Path, devices: int) -> None:
    starts = pd.date_range(START, periods=1440, freq="1min", tz="UTC")
    rng = np.random.default_rng(1)
    for hour in range(24):
        parts = []
        hour_starts = starts[hour * 60 : (hour + 1) * 60]
        for device in range(devices):
            for sensor in SENSORS:
                mean = 10 + device % 97 + rng.normal(0, 1, 60)
                std = np.abs(rng.normal(1, 0.1, 60))
                parts.append(
                    pd.DataFrame(
                        {
                            "device_id": f"dev-{device:05d}",
                            "sensor": sensor,
                            "window_start": hour_starts,
                            "window_end": hour_starts + pd.Timedelta(minutes=1),
                            "count": 60,
                            "mean": mean,
                            "std": std,
                            "min": mean - 2 * std,
                            "max": mean + 2 * std,
                        }
                    )
                )
        frame = pd.concat(parts, ignore_index=True)
        for column in ("window_start", "window_end"):
            frame[column] = frame[column].astype("datetime64[ms, UTC]")
        moment = START + timedelta(hours=hour)
        key = f"aggregates/date={moment:%Y-%m-%d}/hour={moment:%H}/p0000-{0:012d}-{0:012d}.parquet"
        table = pa.Table.from_pandas(frame, schema=AGGREGATE_SCHEMA, preserve_index=False)
        write_table(DataLayout.open(data).store, key, table)


def model_store(data: Path, devices: int) -> dict[str, float]:
    """The registry's files after a training run, and its bytes a device (as listed, and as
    allocated on disk: small files take a whole block each)."""
    files = [p for p in (data / "models").rglob("*") if p.is_file()]
    listed = sum(p.stat().st_size for p in files)
    allocated = sum(p.stat().st_blocks * 512 for p in files)
    return {"files": len(files), "bytes_a_device": listed / devices,
            "disk_bytes_a_device": allocated / devices}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument("--data-dir", type=Path, help="keep the aggregates here for reuse")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="SRC",
        help="also run another fleetwatch's train (its src folder, e.g. a worktree of an "
        "earlier commit), alternating with this one: an A/B in the same run",
    )
    args = parser.parse_args()
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="fw-bench-train-"))
    marker = data / f".written-{args.devices}"
    if not marker.exists():
        write_day(data, args.devices)
        marker.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    command = [
        sys.executable, "-m", "fleetwatch", "train", "--data-dir", str(data),
        "--since", START.isoformat(), "--until", (START + timedelta(days=1)).isoformat(),
        "--workers", str(args.workers), "--no-progress", "--format", "json",
    ]  # fmt: skip
    plain, cli, other = [], [], []
    for round_index in range(args.rounds):
        if args.against is not None:
            shutil.rmtree(data / "models", ignore_errors=True)
            shutil.rmtree(data / "state", ignore_errors=True)
            started = time.perf_counter()
            subprocess.run(
                command, check=True, capture_output=True,
                env={**env, "PYTHONPATH": str(args.against)},
            )  # fmt: skip
            other.append(time.perf_counter() - started)
            other_store = model_store(data, args.devices)
            print(f"round {round_index + 1}: {args.against}: {other[-1]:.1f}s", file=sys.stderr)
        shutil.rmtree(data / "plain-models", ignore_errors=True)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", PLAIN, str(data), str(data / "plain-models")],
            check=True,
            env=env,
        )
        plain.append(time.perf_counter() - started)
        shutil.rmtree(data / "models", ignore_errors=True)
        shutil.rmtree(data / "state", ignore_errors=True)
        started = time.perf_counter()
        done = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
        cli.append(time.perf_counter() - started)
        summary = json.loads(done.stdout)
        assert summary["trained"] == args.devices, summary
        store = model_store(data, args.devices)
        print(
            f"round {round_index + 1}: plain loop {plain[-1]:.1f}s, fleetwatch {cli[-1]:.1f}s",
            file=sys.stderr,
        )
    result = {
        "devices": args.devices,
        "windows_per_device": 1440,
        "workers": args.workers,
        "plain_loop_s": statistics.median(plain),
        "fleetwatch_s": statistics.median(cli),
        "ratio_plain_to_fleetwatch": statistics.median(plain) / statistics.median(cli),
        "model_store": store,
    }
    if other:
        result["against_model_store"] = other_store
        result["against"] = str(args.against)
        result["against_s"] = statistics.median(other)
        result["ratio_plain_to_against"] = statistics.median(plain) / statistics.median(other)
    if args.format == "json":
        print(json.dumps(result))
        return 0
    per = 1000 / args.devices
    print(
        f"plain loop : {result['plain_loop_s']:.1f} s ({result['plain_loop_s'] * per:.0f} ms "
        f"a device; one process, fit + joblib.dump; median of {args.rounds})"
    )
    print(
        f"fleetwatch : {result['fleetwatch_s']:.1f} s ({result['fleetwatch_s'] * per:.0f} ms a "
        f"device; {args.workers} workers, held-out threshold, registry, pack); "
        f"{result['ratio_plain_to_fleetwatch']:.2f}x the plain loop"
    )
    print(
        f"models     : {store['files']} files, {store['bytes_a_device'] / 1024:.1f} KiB a device "
        f"({store['disk_bytes_a_device'] / 1024:.1f} KiB allocated on disk)"
    )
    if other:
        print(
            f"against    : {result['against_s']:.1f} s ({args.against}); "
            f"{result['ratio_plain_to_against']:.2f}x the plain loop; models "
            f"{other_store['files']} files, {other_store['bytes_a_device'] / 1024:.1f} KiB a "
            f"device ({other_store['disk_bytes_a_device'] / 1024:.1f} KiB on disk)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
