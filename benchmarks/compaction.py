"""Reading a closed hour as the aggregator leaves it (many small files) and once compacted.

    python benchmarks/compaction.py                        # 1,000 devices, 12 partitions x 360
    python benchmarks/compaction.py --devices 10000 --checkpoints 60 --rounds 5

Setup (not timed): one hour of one-minute windows of 10 sensors per device, written as the
aggregator writes it: each of ``--partitions`` partitions a file per checkpoint (every 10 s:
360 an hour), so 4,320 files for 12 partitions. Then, per round, for the hour as written (the
baseline: what every reader meets without compaction) and after ``compact_hour``:

(a) scoring's read of the hour (``read_cube``: every window into the shared grid);
(b) ``fleetwatch sql``'s view over the hour (``count(*)`` and a per-device average through the
    sandbox: listing and opening the files included).

Printed: medians of each, the ratio (as written / compacted), the file counts and the time the
compaction itself took. Compaction is worth its complexity only if the ratios are well above 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleetwatch.scoring.features import read_cube
from fleetwatch.storage.compaction import compact_hour, finish
from fleetwatch.storage.duck import sandbox
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.parquet import PartitionedParquetSink, publish_staged

HOUR = datetime(2026, 11, 20, 10, tzinfo=UTC)
SENSORS = [f"s{i}" for i in range(10)]


def build(data: Path, devices: int, partitions: int, checkpoints: int, seed: int = 0) -> int:
    """One hour of windows in ``partitions x checkpoints`` files; how many rows."""
    rng = np.random.default_rng(seed)
    sink = PartitionedParquetSink(DataLayout.open(data), "aggregates")
    names = np.array([f"pump-{d:05d}" for d in range(devices)])
    starts = pd.date_range(pd.Timestamp(HOUR), periods=60, freq="1min")
    rows = 0
    for partition in range(partitions):
        mine = names[partition::partitions]
        grid = pd.MultiIndex.from_product([mine, SENSORS, starts], names=["d", "s", "w"])
        frame = pd.DataFrame(
            {
                "device_id": grid.get_level_values("d"),
                "sensor": grid.get_level_values("s"),
                "window_start": grid.get_level_values("w").astype("datetime64[ms, UTC]"),
            }
        )
        frame["window_end"] = frame["window_start"] + pd.Timedelta(minutes=1)
        frame["count"] = 6
        frame["mean"] = rng.normal(50, 5, len(frame))
        frame["std"] = np.abs(rng.normal(1, 0.1, len(frame)))
        frame["min"] = frame["mean"] - 2
        frame["max"] = frame["mean"] + 2
        # a checkpoint every 3600 / checkpoints seconds writes the windows it closed
        slot = (frame["window_start"] - pd.Timestamp(HOUR)).dt.total_seconds() // (
            3600 / checkpoints
        )
        order = np.argsort(slot.to_numpy(), kind="stable")
        for number, chunk in enumerate(np.array_split(order, checkpoints)):
            part = frame.iloc[chunk].assign(first_offset=number * 1000, last_offset=number * 1000)
            sink.write(part, partition, "window_start")
        publish_staged(sink)
        rows += len(frame)
    return rows


def timed(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def readers(data: Path) -> dict[str, Any]:
    layout = DataLayout.open(data)

    def cube() -> None:
        keys = [item.key for item in layout.files_between(HOUR, HOUR.replace(hour=11))]
        read_cube(layout.store, keys, HOUR, HOUR.replace(hour=11), 60_000)

    def sql() -> None:
        with sandbox(layout) as connection:
            connection.execute(
                "SELECT count(*), (SELECT avg(m) FROM (SELECT avg(mean) AS m FROM aggregates "
                "GROUP BY device_id)) FROM aggregates"
            ).fetchall()

    return {"read_cube": cube, "sql": sql}


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--devices", type=int, default=1000)
    options.add_argument("--partitions", type=int, default=12)
    options.add_argument("--checkpoints", type=int, default=360, help="files per partition")
    options.add_argument("--rounds", type=int, default=5)
    options.add_argument("--data-dir", type=Path)
    options.add_argument("--format", choices=["text", "json"], default="text")
    args = options.parse_args()
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="fw-compaction-"))
    shutil.rmtree(data, ignore_errors=True)
    rows = build(data, args.devices, args.partitions, args.checkpoints)
    layout = DataLayout.open(data)
    files_before = len(layout.hour_data("aggregates", HOUR))
    figures: dict[str, dict[str, list[float]]] = {}
    for name, function in readers(data).items():
        function()  # warm: page cache, imports
        figures[name] = {"written": [timed(function) for _ in range(args.rounds)]}
    started = time.perf_counter()
    compaction = compact_hour(layout, layout.inventory([HOUR])[0])
    assert compaction is not None and compaction.rows == rows
    finish(layout, compaction)
    compacting = time.perf_counter() - started
    files_after = len(layout.hour_data("aggregates", HOUR))
    for name, function in readers(data).items():
        function()
        figures[name]["compacted"] = [timed(function) for _ in range(args.rounds)]
    report = {
        "devices": args.devices,
        "rows": rows,
        "files": {"written": files_before, "compacted": files_after},
        "compaction_s": round(compacting, 3),
        "medians_s": {
            name: {kind: round(statistics.median(values), 4) for kind, values in runs.items()}
            for name, runs in figures.items()
        },
    }
    for timings in report["medians_s"].values():  # type: ignore[attr-defined]
        timings["ratio"] = round(timings["written"] / timings["compacted"], 1)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{args.devices:,} devices, {rows:,} window rows; files {files_before:,} -> "
            f"{files_after}; compaction took {compacting:.2f} s"
        )
        for name, timings in report["medians_s"].items():  # type: ignore[attr-defined]
            print(
                f"  {name:10s} as written {timings['written']:.3f} s   compacted "
                f"{timings['compacted']:.3f} s   ratio {timings['ratio']}x"
            )
    if args.data_dir is None:
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
