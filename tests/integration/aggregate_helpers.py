"""Running real `fleetwatch aggregate` subprocesses and waiting for them, for the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from fleetwatch.config import Settings
from fleetwatch.storage.checkpoints import CheckpointStore
from fleetwatch.storage.layout import DataLayout


def worker_env(settings: Settings, data_dir: Path, group: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env.update(
        {
            "FLEETWATCH_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "FLEETWATCH_TELEMETRY_TOPIC": settings.kafka.telemetry_topic,
            "FLEETWATCH_DEAD_LETTER_TOPIC": settings.kafka.dead_letter_topic,
            "FLEETWATCH_DATA_DIR": str(data_dir),
            "FLEETWATCH_AGGREGATE_GROUP_ID": group,
            "FLEETWATCH_AGGREGATE_REBALANCE_TIMEOUT": "5s",
            "FLEETWATCH_AGGREGATE_IDLE_TIMEOUT": "2s",
            "FLEETWATCH_AGGREGATE_LOG_INTERVAL": "1s",
            "FLEETWATCH_TIMEOUT": "5s",
        }
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "aggregate"], env=env, stdout=handle, stderr=handle
    )


def stop_worker(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout)


def wait_drained(
    data_dir: Path | str,
    topic: str,
    ends: dict[int, int],
    timeout: float = 90,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Until every partition's checkpoint has read to its end with no window left open."""
    store = CheckpointStore(DataLayout.open(data_dir).store, topic)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"worker exited with {process.returncode}")
        done = True
        for partition, end in ends.items():
            checkpoint = store.load(partition)
            if end == 0:
                continue
            if checkpoint is None or checkpoint.next_offset != end or checkpoint.offset != end:
                done = False
        if done:
            return
        time.sleep(0.3)
    raise AssertionError(f"not drained within {timeout}s: {[store.load(p) for p in ends]}")


def status_files(data_dir: Path, topic: str) -> list[dict[str, object]]:
    root = data_dir / "state" / "aggregate" / topic
    return [json.loads(p.read_text()) for p in root.glob("status-*.json")]


def read_parquet_dir(root: Path) -> pd.DataFrame:
    files = sorted(root.glob("date=*/hour=*/*.parquet"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
