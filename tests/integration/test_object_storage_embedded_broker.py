"""The Faust worker writing to a bucket (a local S3 server): killed with -9 mid-stream and
restarted, its windows, late readings and checkpoints in the bucket equal those of a clean
worker writing to a local folder."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from fleetwatch.config import Settings
from tests.conftest import S3Server, consume_all, wait_for
from tests.integration.aggregate_helpers import (
    read_parquet_dir,
    start_worker,
    stop_worker,
    wait_drained,
    worker_env,
)

KEYS = ["device_id", "sensor", "window_start"]


def read_bucket(s3: S3Server, url: str) -> pd.DataFrame:
    fs: object = s3.filesystem()
    keys = sorted(fs.glob(f"{url.removeprefix('s3://')}/date=*/hour=*/[!.]*.parquet"))  # type: ignore[attr-defined]
    frames = [pd.read_parquet(fs.open(key, "rb")) for key in keys]  # type: ignore[attr-defined]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@pytest.mark.integration
@pytest.mark.scenario  # two workers and a simulator: CI runs it with `pytest -m scenario`
def test_a_worker_killed_while_writing_to_a_bucket_loses_and_repeats_nothing(
    settings: Settings, s3_server: S3Server, tmp_path: Path
) -> None:
    command = (
        "simulate --devices 12 --sensors 3 --interval 1s --speed 0 --duration 12m --seed 5 "
        "--start 2026-11-22T00:00Z --late-fraction 0.01 --malformed-fraction 0.005 "
        "--no-progress --format json"
    )
    simulated = subprocess.run(
        [sys.executable, "-m", "fleetwatch", *command.split()],
        env={
            **worker_env(settings, tmp_path / "unused", "unused"),
            "FLEETWATCH_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert simulated.returncode == 0, simulated.stderr
    records = consume_all(settings.kafka.bootstrap_servers, settings.kafka.telemetry_topic)
    assert len(records) == json.loads(simulated.stdout)["messages_sent"]
    ends = Counter(r.partition for r in records)
    ends_by_partition = {p: ends.get(p, 0) for p in range(settings.kafka.partitions)}

    url = f"{s3_server.bucket()}/fleet"
    bucket_env = {
        **worker_env(settings, Path("unused"), "g-bucket"),
        **s3_server.env,
        "FLEETWATCH_DATA_DIR": url,
        "FLEETWATCH_LOCAL_DIR": str(tmp_path / "machine"),
        "FLEETWATCH_AGGREGATE_CHECKPOINT_INTERVAL": "0.5s",
    }
    log = tmp_path / "bucket.log"
    worker = start_worker(bucket_env, log)
    wait_for(lambda: "partition 0 assigned" in log.read_text(), 60, "join", log)
    fs: object = s3_server.filesystem()
    prefix = f"{url.removeprefix('s3://')}/aggregates"
    wait_for(lambda: fs.find(prefix), 60, "a first window in the bucket", log)  # type: ignore[attr-defined]
    worker.kill()
    worker.wait()
    assert worker.returncode == -9

    worker = start_worker(bucket_env, log)
    clean = start_worker(
        worker_env(settings, tmp_path / "clean", "g-clean"), tmp_path / "clean.log"
    )
    try:
        wait_drained(url, settings.kafka.telemetry_topic, ends_by_partition, process=worker)
        wait_drained(
            tmp_path / "clean", settings.kafka.telemetry_topic, ends_by_partition, process=clean
        )
    finally:
        stop_worker(worker)
        stop_worker(clean)
    assert "resuming at offset" in log.read_text()

    bucket = read_bucket(s3_server, f"{url}/aggregates")
    local = read_parquet_dir(tmp_path / "clean" / "aggregates")
    assert len(local) == 12 * 3 * 12 and not bucket.duplicated(KEYS).any()
    pd.testing.assert_frame_equal(
        bucket.sort_values(KEYS).reset_index(drop=True),
        local.sort_values(KEYS).reset_index(drop=True),
        rtol=1e-9,
    )
    late_bucket = read_bucket(s3_server, f"{url}/late")
    late_local = read_parquet_dir(tmp_path / "clean" / "late")
    assert len(late_bucket) == len(late_local) > 0
    assert not (tmp_path / "machine" / "aggregates").exists()
