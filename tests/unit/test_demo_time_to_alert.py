"""The demo's time to alert per fault kind (``Live.time_to_alert``), on a database and alerts
built by hand: which faults alerted, which began inside an incident already alerted (they
continue it and get no alert of their own), which were missed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from fleetwatch.config import load_settings
from fleetwatch.demo import Live

T0 = datetime(2026, 12, 6, 5, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_a_fault_inside_an_alerted_incident_is_counted_apart_from_alerts_and_misses(
    tmp_path: Path,
) -> None:
    settings = load_settings(environ={}, overrides={"": {"data_dir": str(tmp_path)}})
    window = settings.aggregate.window / 60  # minutes
    faults = pd.DataFrame(
        {
            "device_id": ["d-1", "d-2", "d-3", "d-4"],
            "kind": ["spike", "spike", "spike", "spike"],
            "start": [at(10), at(30), at(30), at(50)],
            "end": [at(12), at(33), at(33), at(52)],
        }
    )
    labels = tmp_path / "labels.parquet"
    faults.to_parquet(labels)
    # d-1: its own incident and alert; d-2: an incident opened (and alerted) at minute 20,
    # still open when its fault began; d-3: an incident opened at minute 20 that closed before
    # the fault (not alerted since): missed; d-4: flagged, but nothing alerted: missed.
    incidents = [("d-1", at(10), at(13)), ("d-2", at(20), at(34)), ("d-3", at(20), at(25))]
    flagged = [("d-1", at(10)), ("d-2", at(20)), ("d-2", at(31)), ("d-3", at(20)), ("d-4", at(50))]
    settings.layout.database.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(settings.layout.database)) as db:
        db.execute("SET TimeZone = 'UTC'")
        db.execute("CREATE TABLE incidents (device_id VARCHAR, window_start TIMESTAMPTZ, "
                   "window_end TIMESTAMPTZ)")  # fmt: skip
        db.executemany("INSERT INTO incidents VALUES (?, ?, ?)", incidents)
        db.execute("CREATE TABLE scores (device_id VARCHAR, window_start TIMESTAMPTZ, "
                   "window_end TIMESTAMPTZ, is_anomaly BOOLEAN)")  # fmt: skip
        db.executemany(
            "INSERT INTO scores VALUES (?, ?, ?, true)",
            [(d, s, s + timedelta(minutes=window)) for d, s in flagged],
        )
    live = Live.__new__(Live)
    live.settings = settings
    live.alerts = [
        {
            "alert_id": f"incident:{device}",
            "kind": "anomaly",
            "device_id": device,
            "window_start": opened.isoformat(),
            "window_end": (opened + timedelta(minutes=window)).isoformat(),
        }
        for device, opened, _ in incidents[:3]
    ]
    started = 1_000_000.0
    live.arrived = {alert["alert_id"]: started + 3600 for alert in live.alerts}

    summary = live.time_to_alert(labels, T0, T0, started, speed=1.0)

    row = summary["spike"]
    assert (row["faults"], row["alerted"], row["continued"]) == (4, 1, 1)
    # d-1: its first flagged window closes one window (and the grace) after the fault's start
    closing = (window * 60 + settings.aggregate.grace) / 60
    assert abs(row["data_min"] - closing) < 1e-9
