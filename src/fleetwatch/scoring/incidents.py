"""Incidents: a device's consecutive anomalous windows, merged, the unit alerts and dashboards use.

Anomalous windows of one device at most ``--incident-gap`` apart (from one's end to the next
one's start) are one incident: its first window's start, its last window's end, how many
windows, its peak (lowest) normalised score, its top sensors (each sensor's share summed over
the windows, over the number of windows) and its status: ``open`` while it reaches the end
of the latest hour scored for the device (it may grow), else ``closed``.

The table is a function of the stored anomalies: every scoring run rebuilds, in its own
transaction, the incidents of the devices it scored that come within the gap of its hour, from
the anomalies then stored. Scoring an hour again, or its hours in any order, gives the same
incidents (tested), and an incident's id (device and first window) stays the same as long as
its first window does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fleetwatch.scoring.explain import MIN_SHARE, TOP

COLUMNS = (
    "incident_id",
    "device_id",
    "window_start",
    "window_end",
    "windows",
    "peak_score",
    "top_sensors",
    "status",
    "model_version",
)


@dataclass
class Incident:
    device_id: str
    window_start: datetime
    window_end: datetime
    windows: int
    peak_score: float
    shares: dict[str, float]
    model_version: str | None

    @property
    def incident_id(self) -> str:
        return f"{self.device_id}@{self.window_start:%Y-%m-%dT%H:%M:%S}Z"

    def top_sensors(self) -> list[dict[str, Any]]:
        ranked = sorted(self.shares.items(), key=lambda item: (-item[1], item[0]))
        return [
            {"sensor": sensor, "share": round(total / self.windows, 4)}
            for sensor, total in ranked[:TOP]
            if total / self.windows >= MIN_SHARE
        ]


def merge(anomalies: list[tuple[Any, ...]], gap: timedelta) -> list[Incident]:
    """Incidents of anomalous windows ``(device_id, window_start, window_end,
    score_normalized, top_sensors, model_version)``, in any order."""
    by_device: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in anomalies:
        by_device[row[0]].append(row)
    incidents = []
    for device_id, rows in sorted(by_device.items()):
        current: Incident | None = None
        for _, start, end, normalized, top, version in sorted(rows, key=lambda r: r[1]):
            if current is None or start - current.window_end > gap:
                current = Incident(device_id, start, end, 0, float("inf"), {}, version)
                incidents.append(current)
            current.window_end = max(current.window_end, end)
            current.windows += 1
            if normalized is not None:
                current.peak_score = min(current.peak_score, float(normalized))
            current.model_version = version
            for item in top or ():
                current.shares[item["sensor"]] = current.shares.get(item["sensor"], 0.0) + float(
                    item["share"]
                )
    return incidents


def rebuild(
    connection: Any,
    devices: list[str] | None,
    since: datetime,
    until: datetime,
    gap: timedelta,
) -> None:
    """Rebuild, inside the caller's transaction, the incidents of ``devices`` (None: every
    device) that come within ``gap`` of ``[since, until)``."""
    device_filter, parameters = "", []
    if devices is not None:
        device_filter = " AND device_id IN (SELECT unnest(?::VARCHAR[]))"
        parameters = [devices]
    low, high = since - gap, until + gap
    found = connection.execute(
        "SELECT min(window_start), max(window_end) FROM incidents "  # noqa: S608 - fixed text
        f"WHERE window_end >= ? AND window_start <= ?{device_filter}",
        [low, high, *parameters],
    ).fetchone()
    if found and found[0] is not None:
        low, high = min(low, found[0]), max(high, found[1])
    connection.execute(
        "DELETE FROM incidents "  # noqa: S608 - fixed text
        f"WHERE window_end >= ? AND window_start <= ?{device_filter}",
        [low, high, *parameters],
    )
    rows = connection.execute(
        "SELECT device_id, window_start, window_end, score_normalized, top_sensors, "  # noqa: S608
        f"model_version FROM scores WHERE is_anomaly AND window_start >= ? "
        f"AND window_start < ?{device_filter}",
        [low, high, *parameters],
    ).fetchall()
    incidents = merge(rows, gap)
    if not incidents:
        return
    latest = dict(
        connection.execute(
            "SELECT d.device_id, max(r.window_end) FROM device_runs d JOIN runs r USING (run_id) "
            "WHERE d.outcome = 'scored' AND d.device_id IN (SELECT unnest(?::VARCHAR[])) "
            "GROUP BY 1",
            [sorted({i.device_id for i in incidents})],
        ).fetchall()
    )
    connection.executemany(
        f"INSERT INTO incidents ({', '.join(COLUMNS)}) "  # noqa: S608 - fixed column names
        f"VALUES ({', '.join('?' * len(COLUMNS))})",
        [
            [
                i.incident_id,
                i.device_id,
                i.window_start,
                i.window_end,
                i.windows,
                None if i.peak_score == float("inf") else i.peak_score,
                i.top_sensors(),
                "open"
                if latest.get(i.device_id) is not None and i.window_end + gap >= latest[i.device_id]
                else "closed",
                i.model_version,
            ]
            for i in incidents
        ],
    )
