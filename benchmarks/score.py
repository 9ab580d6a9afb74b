"""Scoring an hour for many devices: a plain per-model scikit-learn loop vs ``fleetwatch score``.

    python benchmarks/score.py                      # 10,000 devices x 60 windows x 10 sensors
    python benchmarks/score.py --devices 2000 --rounds 5 --format json

Setup (not timed): one model per device (imputer -> scaler -> OneClassSVM, nu=0.01) trained on
a day (1,440) of one-minute windows, saved through the registry and packed (as ``fleetwatch
train`` does); the hour's aggregates written as Parquet. Then, per round:

(a) the baseline: one process, for every device ``joblib.load`` its model and call
    ``decision_function`` on its 60 windows (features already in memory: not timed);
(b) ``fleetwatch score --hour`` end to end, as the command (interpreter start included, with
    fleetwatch's bytecode compiled as an installed package has it):
    Parquet in, model checks (stat + CRC-32 of the pack), parallel scoring in forked workers,
    DuckDB out.

Printed: medians, the ratio a/b, the largest difference to scikit-learn's scores, and the peak
RSS of (b)'s process and of its largest worker.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa

import fleetwatch
from fleetwatch.scoring.features import PRESENT, feature_names
from fleetwatch.scoring.kinds import DeviceModel
from fleetwatch.scoring.pack import ModelPack, pack_folder
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.storage.parquet import AGGREGATE_SCHEMA, write_table

HOUR = datetime(2026, 11, 22, 10, tzinfo=UTC)
SENSORS = [f"s{i:02d}" for i in range(10)]
NAMES = feature_names(SENSORS)


def device_features(device: int, rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = 10.0 + device % 97
    means = base + rng.normal(0, 1, (rows, len(SENSORS)))
    stds = np.abs(rng.normal(1, 0.1, (rows, len(SENSORS))))
    columns = []
    for s in range(len(SENSORS)):
        columns += [
            means[:, s],
            stds[:, s],
            means[:, s] - 2 * stds[:, s],
            means[:, s] + 2 * stds[:, s],
            np.full(rows, PRESENT),
        ]
    return np.column_stack(columns)


def train_one(args: tuple[int, str]) -> str:
    device, root = args
    model = DeviceModel(nu=0.01)
    model.fit(device_features(device, 1440, device), NAMES)
    ModelRegistry(Path(root)).save(
        f"dev-{device:05d}", model, NAMES, HOUR - timedelta(days=1), HOUR, 1440, {"nu": 0.01}
    )
    return f"dev-{device:05d}"


def write_hour(data: Path, devices: int) -> dict[str, np.ndarray]:
    matrices = {}
    parts = []
    starts = pd.date_range(HOUR, periods=60, freq="1min", tz="UTC")
    for device in range(devices):
        matrix = device_features(device, 60, 10_000 + device)
        matrices[f"dev-{device:05d}"] = matrix
        for s, sensor in enumerate(SENSORS):
            block = matrix[:, s * 5 : s * 5 + 4]
            parts.append(
                pd.DataFrame(
                    {
                        "device_id": f"dev-{device:05d}",
                        "sensor": sensor,
                        "window_start": starts,
                        "window_end": starts + pd.Timedelta(minutes=1),
                        "count": 60,
                        "mean": block[:, 0],
                        "std": block[:, 1],
                        "min": block[:, 2],
                        "max": block[:, 3],
                    }
                )
            )
    frame = pd.concat(parts, ignore_index=True)
    for column in ("window_start", "window_end"):
        frame[column] = frame[column].astype("datetime64[ms, UTC]")
    folder = data / "aggregates" / f"date={HOUR:%Y-%m-%d}" / f"hour={HOUR:%H}"
    chunk = len(frame) // 4 + 1
    for i in range(4):  # as four partitions' files
        table = pa.Table.from_pandas(
            frame.iloc[i * chunk : (i + 1) * chunk], schema=AGGREGATE_SCHEMA, preserve_index=False
        )
        write_table(table, folder / f"p{i:04d}-{i:012d}-{i:012d}.parquet")
    return matrices


def baseline(root: Path, matrices: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    started = time.perf_counter()
    out = {}
    for device, matrix in matrices.items():
        model = joblib.load(root / device / "v0001" / "model.joblib")
        out[device] = model.decision_function(matrix)
    return time.perf_counter() - started, out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep the models here and reuse them on the next run (training 10k takes minutes)",
    )
    args = parser.parse_args()

    data = args.data_dir or Path(tempfile.mkdtemp(prefix="fw-bench-score-"))
    root = data / "models"
    marker = data / f".trained-{args.devices}"
    if not marker.exists():
        started = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            jobs = [(d, str(root)) for d in range(args.devices)]
            list(pool.map(train_one, jobs, chunksize=50))
        marker.touch()
        print(
            f"trained {args.devices:,} models in {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
        )
    started = time.perf_counter()
    packed = ModelPack.open(pack_folder(data), ModelRegistry(root)).refresh()  # as train does
    if packed:
        print(f"packed {packed:,} models in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    matrices = write_hour(data, args.devices)
    command = [
        "score",
        "--hour",
        HOUR.isoformat(),
        "--data-dir",
        str(data),
        "--workers",
        str(args.workers),
        "--format",
        "json",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    # Python caches compiled modules on first import, unless PYTHONDONTWRITEBYTECODE is set
    # (as on our CI machines): then a source checkout compiles fleetwatch at every start
    # (0.08 s). An installed wheel has its bytecode from pip. Compile it, as a user has it.
    bytecode = compileall.compile_dir(Path(fleetwatch.__file__).parent, quiet=1)

    plain, cli, rss = [], [], []
    reference: dict[str, np.ndarray] = {}
    for round_index in range(args.rounds):
        seconds, reference = baseline(root, matrices)
        plain.append(seconds)
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *command],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        cli.append(time.perf_counter() - t0)
        run = json.loads(done.stdout)
        assert run[0]["devices_scored"] == args.devices, run
        rss.append(json.loads(done.stderr.strip().splitlines()[-1]))
        print(
            f"round {round_index + 1}: plain loop {plain[-1]:.2f}s, CLI {cli[-1]:.2f}s",
            file=sys.stderr,
        )

    # the scores written equal scikit-learn's own
    import duckdb

    with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
        written = db.execute(
            "SELECT device_id, score FROM scores ORDER BY device_id, window_start"
        ).fetchdf()
    got = written.groupby("device_id")["score"].apply(np.array)
    worst = max(float(np.max(np.abs(got[d] - reference[d]))) for d in reference)
    result = {
        "devices": args.devices,
        "windows_per_device": 60,
        "features": len(NAMES),
        "rounds": args.rounds,
        "workers": args.workers,
        "plain_loop_s": statistics.median(plain),
        "cli_s": statistics.median(cli),
        "ratio_plain_to_cli": statistics.median(plain) / statistics.median(cli),
        "max_abs_difference_to_sklearn": worst,
        "fleetwatch_bytecode_compiled": bool(bytecode),
        "peak_rss_mib_score_process": max(r["self"] for r in rss),
        "peak_rss_mib_largest_worker": max(r["children"] for r in rss),
    }
    if args.format == "json":
        print(json.dumps(result))
    else:
        print(
            f"plain loop : {result['plain_loop_s']:.2f} s (joblib.load + decision_function, "
            f"{args.devices:,} devices, median of {args.rounds})"
        )
        print(
            f"fleetwatch : {result['cli_s']:.2f} s `fleetwatch score --hour`, Parquet in, DuckDB "
            f"out, interpreter start included; {result['ratio_plain_to_cli']:.1f}x faster"
        )
        print(f"agreement  : max |score - sklearn| = {worst:.2e}")
        print(
            f"peak RSS   : {result['peak_rss_mib_score_process']:,.0f} MiB (fleetwatch score), "
            f"{result['peak_rss_mib_largest_worker']:,.0f} MiB largest worker process (pages "
            "shared with fleetwatch score included)"
        )
    return 0


#: Runs the CLI as ``fleetwatch ...`` does and reports its peak RSS (and its workers') on stderr.
LAUNCHER = """
import atexit, json, resource, sys
from fleetwatch.cli import run

@atexit.register  # run() calls the exit handlers once the command is done
def report():
    # VmHWM, not ru_maxrss: after fork + exec, ru_maxrss still counts the benchmark process
    status = open("/proc/self/status").read().splitlines()
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"self": peak / 1024, "children": workers / 1024}), file=sys.stderr)

run(sys.argv[1:])
"""


if __name__ == "__main__":
    raise SystemExit(main())
