"""`fleetwatch aggregate --metrics-port`: scraped while it runs, its counters against what was
sent (messages, readings, dead letters by the reason the dead-letter topic's headers give)
and what it wrote (windows in the Parquet). Real worker process, embedded broker."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fleetwatch.brokers.embedded import free_port
from fleetwatch.config import Settings
from tests.conftest import consume_all, wait_for
from tests.conftest import scrape_metrics as scrape
from tests.integration.aggregate_helpers import (
    read_parquet_dir,
    start_worker,
    stop_worker,
    wait_drained,
    worker_env,
)
from tests.integration.test_aggregate_trust_embedded_broker import T0, readings, send

pytestmark = pytest.mark.integration


@pytest.mark.scenario  # ~12-16 s: CI runs it with -m scenario
def test_the_metrics_count_what_was_sent_and_written(settings: Settings, tmp_path: Path) -> None:
    data, log, port = tmp_path / "data", tmp_path / "worker.log", free_port()
    good = [*readings("dev-1", T0, 90), *readings("dev-2", T0, 90)]  # 2 readings each
    bad = [
        b"not json",
        b'{"ts": 1795334400000, "readings": {"a": 1}}',  # no device
        b'{"device_id": "../etc", "ts": 1795334400000, "readings": {"a": 1}}',
        b'{"device_id": "dev-1", "ts": 1795334400000, "readings": {"a": "NaN"}}',
        b'{"device_id": "dev-1", "ts": "yesterday", "readings": {"a": 1}}',
    ]
    send(settings, 0, [*good[:90], *bad, *good[90:]])
    worker = start_worker(
        worker_env(settings, data, "g-metrics", FLEETWATCH_AGGREGATE_METRICS_PORT=str(port)), log
    )
    try:
        wait_drained(
            data, settings.kafka.telemetry_topic, {0: len(good) + len(bad)}, process=worker
        )
        windows = len(read_parquet_dir(data / "aggregates"))
        wait_for(
            lambda: scrape(port)["fleetwatch_windows_written_total{}"] == windows,
            20,
            "the windows",
            log,
        )
        metrics = scrape(port)
    finally:
        assert stop_worker(worker) == 0, log.read_text()[-3000:]
    dead = consume_all(settings.kafka.bootstrap_servers, settings.kafka.dead_letter_topic)
    by_reason = Counter(dict(d.headers)["fleetwatch.reason"].decode() for d in dead)
    assert sum(by_reason.values()) == len(bad)
    for reason, count in by_reason.items():
        assert metrics[f"fleetwatch_dead_letters_total{{reason={reason}}}"] == count
    assert sum(
        v for k, v in metrics.items() if k.startswith("fleetwatch_dead_letters_total")
    ) == len(bad)
    assert metrics["fleetwatch_messages_consumed_total{}"] == len(good) + len(bad)
    # dev-2's readings come after dev-1's quarter hour on the same partition: most are late
    aggregated = read_parquet_dir(data / "aggregates")["count"].sum()
    late = len(read_parquet_dir(data / "late"))
    assert late > 0 and aggregated + late == 2 * len(good)
    assert metrics["fleetwatch_readings_consumed_total{}"] == aggregated
    assert metrics["fleetwatch_late_readings_total{}"] == late
    assert metrics["fleetwatch_windows_written_total{}"] == windows > 0
    assert metrics["fleetwatch_consumer_lag_messages{partition=0}"] == 0
    assert 0 <= metrics["fleetwatch_checkpoint_age_seconds{partition=0}"] < 60
    assert json.dumps(metrics)  # every value a number
