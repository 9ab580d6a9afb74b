"""Windows exactly once, dead letters at least once, whatever happens to the aggregator: kill -9
at seeded points (between staging a file and its checkpoint, between the checkpoint naming it
and its publication, after publishing, at a random moment), and a worker paused past its
session while another takes its partitions; on a local folder and on S3."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetwatch.config import Settings
from tests.conftest import consume_all, wait_for
from tests.faults.conftest import Backend, assert_same_windows_as_a_clean_run, rng_for
from tests.integration.aggregate_helpers import (
    start_worker,
    stop_worker,
    wait_drained,
    worker_env,
)
from tests.integration.test_aggregate_embedded_broker import produce
from tests.unit.aggregate.test_processor import make_records, reference

pytestmark = [pytest.mark.faults, pytest.mark.integration]
KEYS = ["device_id", "sensor", "window_start"]
POINTS = ["checkpoint.staged", "checkpoint.intent", "checkpoint.published", "moment"]


def env_for(settings: Settings, backend: Backend, group: str, **extra: str) -> dict[str, str]:
    return {
        **worker_env(settings, Path(backend.data_dir), group),
        **backend.env,
        "FLEETWATCH_AGGREGATE_CHECKPOINT_INTERVAL": "0.5s",
        **extra,
    }


def exact(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """``got``'s windows are ``expected``'s (pandas over the records), each exactly once."""
    got = got.copy()
    got["window_start"] = got["window_start"].dt.as_unit("ms").astype("int64")
    assert not got.duplicated(KEYS).any(), got[got.duplicated(KEYS, keep=False)].head()
    merged = expected.merge(got, on=KEYS, how="outer", suffixes=("_want", "_got"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"].head()
    assert (merged["count_want"] == merged["count_got"]).all()
    for column in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(merged[f"{column}_got"], merged[f"{column}_want"], rtol=1e-9)


def test_a_worker_killed_at_random_points_writes_every_window_once(
    settings: Settings, backend: Backend, tmp_path: Path
) -> None:
    rng = rng_for("aggregate-kill", backend.name)
    partition_records = {
        p: make_records(rng.randrange(10_000), 1500, f"p{p}d")
        for p in range(settings.kafka.partitions)
    }
    produce(settings, partition_records)
    log = tmp_path / "worker.log"
    killed = 0
    for point in rng.sample(POINTS, 3):
        armed = {} if point == "moment" else {"FLEETWATCH_FAULTS": f"{point}:{rng.randint(1, 5)}"}
        worker = start_worker(env_for(settings, backend, "g-faults", **armed), log)
        if point == "moment":
            wait_for(lambda w=worker: w.poll() is not None or "assigned" in log.read_text(),
                     60, "join")  # fmt: skip
            time.sleep(rng.uniform(0.5, 3.0))
            worker.kill()
        try:
            code = worker.wait(90)
        except subprocess.TimeoutExpired:  # the point was not reached (all read): stop it
            code = stop_worker(worker)
        killed += code == -signal.SIGKILL
    assert killed >= 2, log.read_text()[-3000:]
    worker = start_worker(env_for(settings, backend, "g-faults"), log)
    try:
        wait_drained(
            backend.data_dir, settings.kafka.telemetry_topic,
            {p: len(r) for p, r in partition_records.items()}, process=worker,
        )  # fmt: skip
    finally:
        assert stop_worker(worker) == 0
    frames, lates = [], []
    for records in partition_records.values():
        expected, late, _ = reference(records)
        frames.append(expected)
        lates.append(late)
    exact(backend.frame("aggregates"), pd.concat(frames, ignore_index=True))
    late = backend.frame("late")
    assert len(late) == sum(len(frame) for frame in lates)
    assert not late.duplicated(["partition", "offset", "sensor"]).any()
    # what the killed workers left (staged files, temporaries of writes cut short) went at
    # the take-over, and the last worker's clean stop published what it staged
    assert backend.hidden("aggregates") == backend.hidden("late") == []


@pytest.mark.timeout(400)
def test_a_paused_worker_writes_no_duplicate_windows(
    settings: Settings, backend: Backend, tmp_path: Path
) -> None:
    """Two workers share the partitions while a simulator streams; one is stopped (SIGSTOP)
    well past its session and resumed: the windows equal a clean worker's, each once, and the
    readings in them plus the late ones are every valid reading produced (pandas)."""
    rng = rng_for("aggregate-pause", backend.name)
    simulator = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "simulate", "--devices", "24", "--sensors", "3",
         "--interval", "1s", "--speed", "120", "--duration", "80m", "--seed",
         str(rng.randrange(1000)), "--start", "2026-11-22T00:00Z", "--no-progress",
         "--format", "json"],
        env={**worker_env(settings, tmp_path / "unused", "unused")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    env = env_for(settings, backend, "g-pause", FLEETWATCH_AGGREGATE_IDLE_TIMEOUT="10s")
    first = start_worker(env, tmp_path / "first.log")
    second = start_worker(env, tmp_path / "second.log")
    try:
        wait_for(
            lambda: "assigned" in (tmp_path / "first.log").read_text()
            and "assigned" in (tmp_path / "second.log").read_text(),
            90, "both workers assigned",
        )  # fmt: skip
        time.sleep(rng.uniform(2.0, 8.0))
        first.send_signal(signal.SIGSTOP)  # paused mid-stream, batches in hand
        time.sleep(5 + 5 + rng.uniform(8.0, 15.0))  # the session (5 s) and well past it
        first.send_signal(signal.SIGCONT)
        out, err = simulator.communicate(timeout=240)
        assert simulator.returncode == 0, err
        records = consume_all(settings.kafka.bootstrap_servers, settings.kafka.telemetry_topic)
        assert len(records) == json.loads(out)["messages_sent"]
        counts = Counter(r.partition for r in records)
        ends = {p: counts.get(p, 0) for p in range(settings.kafka.partitions)}
        wait_drained(backend.data_dir, settings.kafka.telemetry_topic, ends, timeout=180)
    finally:
        first.send_signal(signal.SIGCONT)
        stopped = (stop_worker(first, 60), stop_worker(second, 60))
    assert stopped == (0, 0)  # the paused worker let its partitions go and stopped cleanly
    for name in ("first.log", "second.log"):
        assert "Traceback" not in (tmp_path / name).read_text(), name
    clean_dir = tmp_path / "clean"
    clean = start_worker(worker_env(settings, clean_dir, "g-clean"), tmp_path / "clean.log")
    try:
        wait_drained(clean_dir, settings.kafka.telemetry_topic, ends, process=clean, timeout=180)
    finally:
        stop_worker(clean)
    local = Backend("local", str(clean_dir), clean_dir, {})
    assert_same_windows_as_a_clean_run(backend, local, records)
