"""Alerts from a real `fleetwatch schedule` process to a local HTTP server: one per incident
(computed here from the stored scores with pandas), none again after a restart, a failing
webhook retried then logged without holding scoring up; and the scheduler's metrics scraped
against the runs it stored. No broker: the data folder is made as the aggregator leaves it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from fleetwatch.brokers.embedded import free_port
from fleetwatch.scoring.train import train
from tests.conftest import scrape_metrics as scrape
from tests.conftest import wait_for
from tests.unit.scoring.conftest import (
    DEVICES,
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
    write_windows,
)

pytestmark = pytest.mark.integration
HOURS = 3
TOKEN = "s3cret-token-in-url"


class Webhook:
    """A local HTTP server: what it received, answering ``status`` (or hanging on ``hold``)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.status = 200
        self.hold = threading.Event()
        self.hold.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(json.loads(body))
                outer.hold.wait(60)
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token={TOKEN}"

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Three closed hours of eight devices, each with a model trained on the first two."""
    root = tmp_path / "data"
    write_windows(root, synthetic_windows(hours=HOURS))
    settings = settings_for(root)
    train(settings, T0, T0 + timedelta(hours=2), DEVICES)
    set_watermark(settings, T0 + timedelta(hours=HOURS))
    return root


def start(data: Path, log: Path, *flags: str, **env: str) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetwatch", "schedule", "--every", "1s",
             "--data-dir", str(data), "--workers", "2", "--log-level", "DEBUG", *flags],
            env={**base, **env}, stdout=handle, stderr=handle,
        )  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


def runs(data: Path) -> list[tuple[Any, ...]]:
    path = data / "fleetwatch.duckdb"
    if not path.exists():
        return []
    try:
        with duckdb.connect(str(path), read_only=True) as db:
            return db.execute("SELECT window_start, status FROM runs").fetchall()
    except duckdb.Error:  # the scheduler is writing: not yet
        return []


def expected_incidents(data: Path, gap_s: float = 300) -> set[tuple[str, str]]:
    """(device, first window) of each run of anomalous windows at most ``gap_s`` apart. Read
    while the scheduler may be writing (a compaction after its runs): waits for its lock."""
    from fleetwatch.storage.duck import connect

    with connect(data / "fleetwatch.duckdb", read_only=True, lock_timeout=30) as db:
        frame = db.execute(
            "SELECT device_id, window_start, window_end FROM scores WHERE is_anomaly"
        ).df()
    found = set()
    for device, rows in frame.sort_values("window_start").groupby("device_id"):
        previous_end = None
        for start, end in zip(rows["window_start"], rows["window_end"], strict=True):
            if previous_end is None or (start - previous_end) > pd.Timedelta(seconds=gap_s):
                found.add((str(device), start.isoformat()))
            previous_end = end
    return found


def test_one_alert_per_incident_and_none_again_after_a_restart(
    data: Path, webhook: Webhook, tmp_path: Path
) -> None:
    log, jsonl, port = tmp_path / "schedule.log", tmp_path / "alerts.jsonl", free_port()
    flags = ("--webhook-url", webhook.url, "--jsonl", str(jsonl), "--metrics-port", str(port))
    scheduler = start(data, log, *flags)
    try:
        wait_for(lambda: len(runs(data)) == HOURS, 90, "three hours scored", log)
        incidents = expected_incidents(data)
        assert incidents  # the fixture's level shift and dropout
        wait_for(lambda: len(webhook.received) >= len(incidents), 30, "the alerts", log)
        metrics = scrape(port)
        # the scheduler's metrics against what it stored
        assert metrics["fleetwatch_scoring_runs_total{status=succeeded}"] == HOURS
        assert metrics["fleetwatch_scored_devices_total{outcome=scored}"] == HOURS * len(DEVICES)
        assert metrics["fleetwatch_scoring_run_duration_seconds_count{}"] == HOURS
        wait_for(
            lambda: (
                scrape(port).get("fleetwatch_alerts_sent_total{sink=webhook}") == len(incidents)
            ),
            10,
            "the alert counter",
        )
        assert metrics["fleetwatch_pending_hours{}"] == 0
    finally:
        stop(scheduler)
    sent = {(a["device_id"], a["window_start"]) for a in webhook.received}
    assert len(webhook.received) == len(sent) == len(incidents)
    assert {(d, pd.Timestamp(s).isoformat()) for d, s in sent} == incidents
    assert all(
        a["kind"] == "anomaly" and a["alert_id"].startswith("incident:") for a in webhook.received
    )
    from fleetwatch.alerts import read_alerts

    assert sorted(a["alert_id"] for a in read_alerts(jsonl)) == sorted(
        a["alert_id"] for a in webhook.received
    )
    # a restart: the same incidents are not sent again
    before = len(webhook.received)
    restarted = start(data, log, *flags, "--metrics-port", str(port := free_port()))
    try:
        wait_for(
            lambda: scrape_or_none(port, "fleetwatch_scheduler_last_tick_timestamp_seconds{}"),
            60,
            "a tick after the restart",
            log,
        )
        first_tick = scrape(port)["fleetwatch_scheduler_last_tick_timestamp_seconds{}"]
        wait_for(
            lambda: scrape(port)["fleetwatch_scheduler_last_tick_timestamp_seconds{}"] > first_tick,
            30,
            "another tick",
            log,
        )
    finally:
        stop(restarted)
    assert len(webhook.received) == before
    assert len(read_alerts(jsonl)) == before
    assert TOKEN not in log.read_text()  # the URL's token: never in any output, even at DEBUG


def scrape_or_none(port: int, name: str) -> float | None:
    try:
        return scrape(port).get(name)
    except OSError:
        return None


@pytest.mark.scenario  # ~12-16 s: CI runs it with -m scenario
def test_a_failing_webhook_is_retried_logged_and_never_holds_scoring(
    data: Path, webhook: Webhook, tmp_path: Path
) -> None:
    log = tmp_path / "schedule.log"
    webhook.status = 500
    webhook.hold.clear()  # and the first POST hangs until released
    scheduler = start(
        data,
        log,
        "--webhook-url",
        webhook.url,
        "--webhook-timeout",
        "30s",
        "--webhook-retries",
        "2",
    )
    try:
        wait_for(lambda: len(runs(data)) == HOURS, 90, "three hours scored", log)
        wait_for(lambda: webhook.received, 30, "a first attempt", log)
        assert all(status == "succeeded" for _, status in runs(data))  # while it hangs
        webhook.hold.set()
        wait_for(
            lambda: "not delivered to the webhook sink" in log.read_text(), 60, "the warning", log
        )
        attempts: dict[str, int] = {}
        for alert in webhook.received:
            attempts[alert["alert_id"]] = attempts.get(alert["alert_id"], 0) + 1
        assert max(attempts.values()) >= 3  # the first try and two retries
    finally:
        stop(scheduler)
    text = log.read_text()
    assert "HTTP 500" in text and TOKEN not in text and "Traceback" not in text
    with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
        pending = db.execute("SELECT count(*) FROM alerts WHERE webhook_at IS NULL").fetchone()
    assert pending is not None and pending[0] == len(expected_incidents(data))  # still to send
