"""A whole fleet on one machine: import -> train -> score, every stage timed, its memory and disk.

    python benchmarks/fleet.py                                   # 10,000 devices
    python benchmarks/fleet.py --devices 100000 --data-dir /tmp/fw-fleet --no-baselines
    python benchmarks/fleet.py --devices 2000 --format json

The data (issue 26's sizes): ``--devices`` devices x 4 sensors, a reading every 30 s for 3 hours
(2 to train on, 1 to score), generated as wide Parquet files of readings (an hour each, or a
few minutes each for big fleets; not timed: ``timestamp, device_id, s0..s3``; each device its
own levels and noise). Then, each as a command, as a user runs them:

1. ``fleetwatch import FILE --backfill`` per file: the real ingestion path for history (the
   readings validated, windowed into 60 s aggregates, written as Parquet);
2. ``fleetwatch train`` on the first two hours (held-out thresholds, the fleet's slow-sensor
   judgement, the registry, the model pack);
3. ``fleetwatch score --hour`` of the third (models checked, forked workers, DuckDB out).

Printed per stage: wall seconds, the per-device cost, the peak RSS of the command's own
process (``VmHWM``) and of its largest child process (a worker), and what the stage added to the
data directory (bytes and files). Beside train and score, unless ``--no-baselines``, the
plain scripts a competent user would write, on the same data in the same run:
``benchmarks/train.py``'s loop (pandas pivot, one ``make_pipeline(...).fit`` and
``joblib.dump`` per device, one process) and ``benchmarks/score.py``'s scheduled script
(pandas pivot, ``joblib.load`` + ``decision_function`` per device under ``joblib.Parallel``,
DuckDB out) with the models that loop wrote. A pandas pivot of a 100,000-device fleet
needs more memory than the product: the baselines are what ``--no-baselines`` leaves out
there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from launch import launcher  # benchmarks/launch.py

START = datetime(2026, 11, 23, tzinfo=UTC)
SENSORS = ("s0", "s1", "s2", "s3")
EVERY_S = 30
TRAIN_HOURS = 2
WORKERS = os.cpu_count() or 2

#: Runs the CLI as ``fleetwatch ...`` does; reports its peak RSS and its children's on stderr.
LAUNCHER = launcher()

#: ``fleetwatch import`` holds a file's rows as Python messages (~1.4 KB a wide row): files of
#: at most about this many rows keep it near 1.7 GB.
ROWS_PER_FILE = 1_200_000


def write_readings(folder: Path, devices: int) -> list[Path]:
    """Wide Parquet files of readings (an hour each, or a few minutes each for big fleets, see
    :data:`ROWS_PER_FILE`); returns them in time order."""
    rng = np.random.default_rng(26)
    levels = rng.uniform(10.0, 100.0, size=(devices, len(SENSORS)))
    noise = rng.uniform(0.5, 2.0, size=(devices, len(SENSORS)))
    ids = pa.array([f"dev-{d:06d}" for d in range(devices)]).dictionary_encode()
    files = []
    per_minute = 60 // EVERY_S
    minutes = max(1, min(60, ROWS_PER_FILE // (per_minute * devices)))
    while 60 % minutes:
        minutes -= 1
    for part in range((TRAIN_HOURS + 1) * 60 // minutes):
        path = folder / f"readings-{part:03d}.parquet"
        files.append(path)
        if path.exists():
            continue
        start_ms = int((START + timedelta(minutes=part * minutes)).timestamp() * 1000)
        with pq.ParquetWriter(path.with_suffix(".tmp"), _schema()) as writer:
            for tick in range(minutes * per_minute):
                stamp = np.full(devices, start_ms + tick * EVERY_S * 1000, dtype="int64")
                values = levels + noise * rng.standard_normal((devices, len(SENSORS)))
                columns = [pa.array(stamp, pa.timestamp("ms", tz="UTC")), ids]
                columns += [pa.array(values[:, index]) for index in range(len(SENSORS))]
                writer.write_table(pa.Table.from_arrays(columns, schema=_schema()))
        path.with_suffix(".tmp").rename(path)
    return files


def _schema() -> pa.Schema:
    return pa.schema(
        [
            ("timestamp", pa.timestamp("ms", tz="UTC")),
            ("device_id", pa.dictionary(pa.int32(), pa.string())),
            *[(sensor, pa.float64()) for sensor in SENSORS],
        ]
    )


def disk(folder: Path) -> tuple[int, int]:
    """Bytes and files under ``folder``."""
    size = files = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                size += (Path(root) / name).stat().st_size
                files += 1
            except FileNotFoundError:
                pass
    return size, files


def command(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """A fleetwatch command: its wall time, peak memory and JSON summary."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fleetwatch {args[0]} exited {done.returncode}:\n{done.stderr[-3000:]}")
    memory = json.loads(done.stderr.strip().splitlines()[-1])
    return {"seconds": seconds, **memory, "summary": done.stdout}


def script(code: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"baseline failed:\n{done.stderr[-3000:]}")
    return {"seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--data-dir", type=Path, help="work here (kept): the readings are reused")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    work = args.data_dir or Path(tempfile.mkdtemp(prefix="fw-bench-fleet-"))
    readings = work / f"readings-{args.devices}"
    readings.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    print(f"writing {args.devices:,} devices' readings in {readings} ...", file=sys.stderr)
    files = write_readings(readings, args.devices)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    common = ["--data-dir", str(data)]
    stages: dict[str, dict[str, Any]] = {}

    def stage(name: str, result: dict[str, Any]) -> None:
        size, count = disk(data)
        before = sum(s.get("bytes_added", 0) for s in stages.values())
        files_before = sum(s.get("files_added", 0) for s in stages.values())
        result.update(bytes_added=size - before, files_added=count - files_before)
        result.pop("summary", None)
        stages[name] = result
        print(f"{name}: {result['seconds']:.1f} s", file=sys.stderr)

    backfill = ["--backfill", "--layout", "wide", "--format", "json", *common]
    imports = [command(["import", str(f), *backfill], env) for f in files]
    stage(
        "import",
        {
            "seconds": sum(r["seconds"] for r in imports),
            "self_mib": max(r["self_mib"] for r in imports),
            "child_mib": max(r["child_mib"] for r in imports),
        },
    )
    until = START + timedelta(hours=TRAIN_HOURS)
    train = command(
        ["train", "--since", START.isoformat(), "--until", until.isoformat(), "--workers",
         str(args.workers), "--no-progress", "--format", "json", *common],
        env,
    )  # fmt: skip
    trained = json.loads(train["summary"])
    if trained.get("trained") != args.devices:
        raise SystemExit(f"train trained {trained.get('trained')} of {args.devices}: {trained}")
    stage("train", train)
    score = command(
        ["score", "--hour", until.strftime("%Y-%m-%dT%H"), "--workers", str(args.workers),
         "--format", "json", *common],
        env,
    )  # fmt: skip
    scored = json.loads(score["summary"])[0]  # one run: the hour
    if scored.get("devices_scored") != args.devices:
        raise SystemExit(f"score scored {scored.get('devices_scored')} of {args.devices}: {scored}")
    stage("score", score)
    baselines: dict[str, dict[str, Any]] = {}
    if not args.no_baselines:
        sys.path.insert(0, str(Path(__file__).parent))
        from score import SCRIPT  # benchmarks/score.py's scheduled script
        from train import PLAIN as PLAIN_TRAIN  # benchmarks/train.py's loop

        baselines["train"] = script(
            PLAIN_TRAIN, [str(data), str(work / "plain-models"), until.isoformat()], env
        )
        baselines["score"] = script(  # with the models the plain loop wrote
            SCRIPT,
            [
                str(data),
                until.strftime("%Y-%m-%d %H:00"),
                str(args.workers),
                str(work / "plain-models"),
            ],
            env,
        )
        shutil.rmtree(work / "plain-models", ignore_errors=True)
    result = {
        "devices": args.devices,
        "sensors": len(SENSORS),
        "reading_every_s": EVERY_S,
        "workers": args.workers,
        "stages": stages,
        "baselines": baselines,
        "score_status": scored.get("status"),
        "bytes_total": disk(data)[0],
    }
    if args.format == "json":
        print(json.dumps(result))
        return 0
    per = 1000 / args.devices
    print(
        f"{args.devices:,} devices x {len(SENSORS)} sensors, a reading every {EVERY_S} s; "
        f"{TRAIN_HOURS} h trained on, 1 h scored; {args.workers} workers"
    )
    print(f"{'stage':8} {'seconds':>8} {'ms/device':>10} {'peak MiB':>9} {'child MiB':>10} "
          f"{'added MiB':>10} {'files':>8}  baseline")  # fmt: skip
    for name, figures in stages.items():
        base = baselines.get(name)
        beside = (
            f"{base['seconds']:.1f} s plain script ({base['seconds'] / figures['seconds']:.2f}x)"
            if base
            else "-"
        )
        print(
            f"{name:8} {figures['seconds']:8.1f} {figures['seconds'] * per:10.2f} "
            f"{figures['self_mib']:9.0f} {figures['child_mib']:10.0f} "
            f"{figures['bytes_added'] / 2**20:10.1f} {figures['files_added']:8d}  {beside}"
        )
    print(f"data directory: {result['bytes_total'] / 2**20:.1f} MiB; score: {scored.get('status')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
