"""Taking partitions over (a rebalance, a restart) on object storage, as the files pile up.

    python benchmarks/takeover.py                          # moto's S3 server, 4 x 250 files
    python benchmarks/takeover.py --partitions 8 --files 4000 --rounds 5
    python benchmarks/takeover.py --data-dir /tmp/fw-takeover   # a local folder instead

Setup (not timed): ``--files`` live aggregate files (real Parquet, one window each) of
``--partitions`` partitions over two hours, as the aggregator leaves them between two
compactions, each partition with a checkpoint that published them. Then, per round, the
assignment of every partition by :func:`~fleetwatch.aggregate.processor.restore` (checkpoint
taken over, leftovers and files written after the checkpoint removed), four ways, in
alternating order:

(a) ``at once``: :func:`~fleetwatch.aggregate.processor.restore_all`, what the coordinator
    does: the datasets listed once for the whole assignment, the partitions restored in
    threads, up to 16 at once;
(b) ``listed``: the same listings, the partitions one after another (the coordinator before
    this benchmark's (a));
(c) ``per partition``: ``restore`` without ``listed``: each partition lists each dataset
    twice (the coordinator before d5763a2);
(d) ``reading``: (c), then every file's ``window_end`` column read, as ``restore`` did
    before 29624a9 to find files written after the checkpoint.

Printed: the median seconds of each, per partition, and each one's ratio to (a). Needs
``moto[server]`` and ``s3fs`` (the dev extras) unless ``--data-dir`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa

from fleetwatch.aggregate.processor import RESTORE_THREADS, restore, restore_all
from fleetwatch.aggregate.windows import WindowSpec
from fleetwatch.storage.checkpoints import ANY, Checkpoint, CheckpointStore
from fleetwatch.storage.layout import DataLayout, hour_prefix, live_file_name
from fleetwatch.storage.parquet import (
    AGGREGATE_SCHEMA,
    PartitionedParquetSink,
    read_table,
    table_bytes,
)
from fleetwatch.storage.store import join

SPEC = WindowSpec(60_000, 30_000)
HOWS = ("at once", "listed", "per partition", "reading")
HOUR = datetime(2026, 11, 22, 10, tzinfo=UTC)


@contextlib.contextmanager
def moto_bucket() -> Iterator[str]:
    """moto's S3 server on a free port, a new bucket in it; its ``s3://`` URL."""
    import moto  # noqa: F401 - ImportError here, not a server that never starts
    import s3fs

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(  # moto's server takes any credentials
        {
            "AWS_ACCESS_KEY_ID": "AKIAFLEETWATCHBENCH1",
            "AWS_SECRET_ACCESS_KEY": "fleetwatch-bench-secret-0a1b2c3d4e",
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)  # noqa: S310
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("moto's server did not start") from None
                time.sleep(0.2)
        bucket = f"fw-bench-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
        yield f"s3://{bucket}/fleet"
    finally:
        server.terminate()
        server.wait(10)


def build(layout: DataLayout, checkpoints: CheckpointStore, partitions: int, files: int) -> int:
    """``files`` one-window files over two hours, as checkpoints published them; how many."""
    per = max(1, files // partitions)
    jobs = []
    for partition in range(partitions):
        for index in range(per):
            start = HOUR + timedelta(minutes=index * 120 // per)
            frame = pd.DataFrame(
                {
                    "device_id": [f"pump-{partition}"],
                    "sensor": ["s0"],
                    "window_start": [pd.Timestamp(start)],
                    "window_end": [pd.Timestamp(start + timedelta(minutes=1))],
                    "count": [6],
                    "mean": [1.0],
                    "std": [0.0],
                    "min": [1.0],
                    "max": [1.0],
                    "first_offset": [index * 10],
                    "last_offset": [index * 10 + 9],
                }
            )
            for column in ("window_start", "window_end"):
                frame[column] = frame[column].astype("datetime64[ms, UTC]")
            table = pa.Table.from_pandas(
                frame[AGGREGATE_SCHEMA.names], schema=AGGREGATE_SCHEMA, preserve_index=False
            )
            name = live_file_name(partition, index * 10, index * 10 + 9)
            key = join(hour_prefix("aggregates", start.replace(minute=0)), name)
            jobs.append((key, table_bytes(table, "snappy")))
        boundary = int((HOUR + timedelta(hours=2)).timestamp() * 1000)
        checkpoints.save(
            partition,
            Checkpoint(offset=per * 10, next_offset=per * 10, close_boundary_ms=boundary),
            ANY,
        )
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda job: layout.store.write(*job), jobs))
    return len(jobs)


def assign(
    partitions: int,
    checkpoints: CheckpointStore,
    aggregates: PartitionedParquetSink,
    late: PartitionedParquetSink,
    how: str,
) -> float:
    """Seconds to restore every partition ``how`` (one of :data:`HOWS`)."""
    started = time.perf_counter()
    if how in ("at once", "listed"):
        threads = RESTORE_THREADS if how == "at once" else 1
        restore_all(
            range(partitions), SPEC, checkpoints, aggregates, late, no_dead_letters, threads=threads
        )
        return time.perf_counter() - started
    for partition in range(partitions):
        restore(partition, SPEC, checkpoints, aggregates, late, no_dead_letters)
        if how == "reading":
            for item, _ in list(aggregates.layout.partition_files("aggregates", partition)):
                read_table(aggregates.store, item.key, columns=["window_end"])
    return time.perf_counter() - started


def no_dead_letters(*_: object) -> None:
    return None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--files", type=int, default=1000, help="live files in all (default 1000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", help="a local folder (default: a bucket on moto's server)")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        if args.data_dir:
            location = args.data_dir
        else:
            try:
                location = stack.enter_context(moto_bucket())
            except ImportError as exc:
                print(f"skipped: {exc.name} is not installed (pip install -e '.[dev]')")
                return 0
        layout = DataLayout.open(location)
        checkpoints = CheckpointStore(layout.store, "telemetry")
        written = build(layout, checkpoints, args.partitions, args.files)
        aggregates = PartitionedParquetSink(layout, "aggregates")
        late = PartitionedParquetSink(layout, "late")
        times: dict[str, list[float]] = {how: [] for how in HOWS}
        for round_index in range(args.rounds):
            order = HOWS if round_index % 2 == 0 else HOWS[::-1]
            for how in order:
                times[how].append(assign(args.partitions, checkpoints, aggregates, late, how))
        assert len(aggregates.listing()) == written, "a restore removed a published file"
        reads = read_checkpoints(checkpoints, args.partitions, args.rounds)

    medians = {how: statistics.median(values) for how, values in times.items()}
    result = {
        "store": "local" if args.data_dir else "s3 (moto)",
        "partitions": args.partitions,
        "files": written,
        "seconds": medians,
        "per_partition_seconds": {how: m / args.partitions for how, m in medians.items()},
        "ratio_to_at_once": {how: m / medians["at once"] for how, m in medians.items()},
        "checkpoint_reads_seconds": reads,
        "checkpoint_reads_ratio": reads["one after another"] / reads["at once"],
    }
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"take-over of {args.partitions} partitions, {written:,} files, {result['store']}, "
        f"medians of {args.rounds}:"
    )
    for how in HOWS:
        each = medians[how] / args.partitions
        ratio = result["ratio_to_at_once"][how]
        print(f"  {how:<14}: {medians[how]:7.2f} s ({each:.3f} s a partition), {ratio:5.1f}x")
    print(
        f"every partition's checkpoint read (the scheduler's progress), medians of {args.rounds}:"
    )
    for how, seconds in reads.items():
        print(f"  {how:<18}: {seconds:6.3f} s")
    print(f"  one after another / at once: {result['checkpoint_reads_ratio']:.1f}x")
    return 0


def read_checkpoints(
    checkpoints: CheckpointStore, partitions: int, rounds: int
) -> dict[str, float]:
    """Median seconds to read every partition's checkpoint: one after another (as the
    scheduler's progress and an idle partition's frontier did) and ``load_many``."""
    ways = {
        "one after another": lambda: {p: checkpoints.load(p) for p in range(partitions)},
        "at once": lambda: checkpoints.load_many(range(partitions)),
    }
    times: dict[str, list[float]] = {how: [] for how in ways}
    for round_index in range(rounds):
        for how in list(ways) if round_index % 2 == 0 else list(ways)[::-1]:
            started = time.perf_counter()
            found = ways[how]()
            times[how].append(time.perf_counter() - started)
            assert all(found[p] is not None for p in range(partitions)), how
    return {how: statistics.median(values) for how, values in times.items()}


if __name__ == "__main__":
    sys.exit(main())
