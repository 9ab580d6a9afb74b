"""The aggregation while the broker stops answering: the embedded broker's process is stopped
(SIGSTOP) mid-stream for longer than the worker's session and its client timeout, then resumed.
The worker rides it out: the windows equal a clean worker's over the same topic, each once, and
hold every valid reading that is not in the late sink (parsed independently of the worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from fleetwatch.brokers.embedded import EmbeddedBroker
from fleetwatch.brokers.topics import ensure_topics
from tests.conftest import consume_all, make_settings, wait_for
from tests.faults.conftest import Backend, assert_same_windows_as_a_clean_run, rng_for
from tests.integration.aggregate_helpers import start_worker, stop_worker, wait_drained, worker_env

pytestmark = [pytest.mark.faults, pytest.mark.integration]
KEYS = ["device_id", "sensor", "window_start"]


@pytest.mark.timeout(400)
def test_a_broker_that_stops_answering_mid_stream_loses_and_doubles_no_window(
    tmp_path: Path,
) -> None:
    rng = rng_for("broker-pause", "local")
    with EmbeddedBroker(port=0) as broker:
        settings = make_settings(broker.bootstrap_servers, "broker-pause")
        ensure_topics(settings.kafka)
        topic = settings.kafka.telemetry_topic
        simulator = subprocess.Popen(
            [sys.executable, "-m", "fleetwatch", "simulate", "--devices", "24", "--sensors", "3",
             "--interval", "1s", "--speed", "60", "--duration", "40m", "--seed",
             str(rng.randrange(1000)), "--start", "2026-11-22T00:00Z", "--no-progress",
             "--format", "json"],
            # its producer waits the pause out (delivery timeout 3 x 30 s)
            env=worker_env(settings, tmp_path / "unused", "unused", FLEETWATCH_TIMEOUT="30s"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        data = tmp_path / "data"
        log = tmp_path / "worker.log"
        # idle after 10 s of silence: the outage (15-20 s) is longer, and must not count
        quiet = {"FLEETWATCH_AGGREGATE_IDLE_TIMEOUT": "10s"}
        worker = start_worker(worker_env(settings, data, "g-broker-pause", **quiet), log)
        try:
            wait_for(lambda: "assigned" in log.read_text(), 90, "the worker assigned", log)
            time.sleep(rng.uniform(2.0, 6.0))
            assert broker.pid is not None
            os.kill(broker.pid, signal.SIGSTOP)  # past the session (5 s) and the timeout (5 s)
            try:
                time.sleep(rng.uniform(15.0, 20.0))
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            out, err = simulator.communicate(timeout=240)
            assert simulator.returncode == 0, err
            records = consume_all(broker.bootstrap_servers, topic)
            assert len(records) == json.loads(out)["messages_sent"]
            counts = Counter(r.partition for r in records)
            ends = {p: counts.get(p, 0) for p in range(settings.kafka.partitions)}
            wait_drained(data, topic, ends, timeout=180, process=worker)
        finally:
            code = stop_worker(worker, 60)
        output = log.read_text()
        assert code == 0 and "Traceback" not in output, output[-3000:]
        clean_dir = tmp_path / "clean"
        clean_env = worker_env(settings, clean_dir, "g-clean", **quiet)
        clean = start_worker(clean_env, tmp_path / "clean.log")
        try:
            wait_drained(clean_dir, topic, ends, process=clean, timeout=180)
        finally:
            stop_worker(clean)

    paused = Backend("local", str(data), data, {})
    clean = Backend("local", str(clean_dir), clean_dir, {})
    assert_same_windows_as_a_clean_run(paused, clean, records)
