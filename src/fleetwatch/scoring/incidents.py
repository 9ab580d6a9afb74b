"""Incidents: a device's consecutive anomalous windows merged; what alerts and dashboards show.

Anomalous windows of one device at most ``--incident-gap`` apart (from one's end to the next
one's start) are one incident: its first window's start, its last window's end, how many
windows, its peak (lowest) normalised score, its top sensors (each sensor's share summed over
the windows, over the number of windows) and its status: ``open`` while it reaches what was
scored for the device (it may grow), else ``closed``: the end of the latest hour scored, or,
in an hour scored only provisionally so far (live ticks, ``score`` of an open hour), the end of
the latest window scored.

The table is a function of the stored anomalies: every scoring run rebuilds, in its own
transaction, the incidents of the devices it scored that come within the gap of its hour, from
the anomalies then stored. Scoring an hour again, or its hours in any order, gives the same
incidents (tested), and an incident's id (device and first window) stays the same as long as
its first window does.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
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

#: Gaps and islands in one statement: a window opens an incident when it starts more than the
#: gap after the device's previous anomalous window ends; the running sum of those openings
#: numbers the incidents. Parameters: the gap (seconds), the top sensors' least share, then
#: the range and device filters (see ``rebuild``). A provisional run's latest window scored is
#: looked for from the range's start on: provisional runs are the open hour's.
_MERGE = """
WITH a AS (
    SELECT device_id, window_start, window_end, score_normalized, top_sensors, model_version
    FROM scores WHERE is_anomaly AND window_start >= ? AND window_start < ? {devices}
), g AS (
    SELECT *, CASE WHEN window_start - lag(window_end) OVER (
        PARTITION BY device_id ORDER BY window_start) <= to_seconds(?) THEN 0 ELSE 1 END AS fresh
    FROM a
), n AS (
    SELECT *, sum(fresh) OVER (
        PARTITION BY device_id ORDER BY window_start ROWS UNBOUNDED PRECEDING) AS k
    FROM g
), i AS (
    SELECT device_id, k, min(window_start) AS first_start, max(window_end) AS last_end,
        count(*) AS windows, min(score_normalized) AS peak,
        arg_max(model_version, window_start) AS version
    FROM n GROUP BY 1, 2
), s AS (
    SELECT device_id, k, u.t.sensor AS sensor, sum(u.t.share) AS total
    FROM n, unnest(n.top_sensors) AS u(t) GROUP BY 1, 2, 3
), r AS (
    SELECT s.device_id, s.k,
        list({{'sensor': s.sensor, 'share': round(s.total / i.windows, 4)}}
             ORDER BY s.total DESC, s.sensor) FILTER (WHERE s.total / i.windows >= ?) AS top
    FROM s JOIN i USING (device_id, k) GROUP BY 1, 2
), live AS (
    SELECT run_id, device_id, max(window_end) AS until FROM scores
    WHERE run_id IN (SELECT run_id FROM runs WHERE status = 'provisional')
        AND window_start >= ? {devices}
    GROUP BY 1, 2
), latest AS (
    SELECT d.device_id, max(CASE WHEN r.status = 'provisional'
        THEN coalesce(l.until, r.window_start) ELSE r.window_end END) AS scored_until
    FROM device_runs d JOIN runs r USING (run_id)
    LEFT JOIN live l ON l.run_id = d.run_id AND l.device_id = d.device_id
    WHERE d.outcome = 'scored' {devices_d} GROUP BY 1
)
INSERT INTO incidents ({columns})
SELECT device_id || '@' || strftime(first_start, '%Y-%m-%dT%H:%M:%S') || 'Z', device_id,
    first_start, last_end, windows, peak, list_slice(coalesce(r.top, []), 1, {top}),
    CASE WHEN last_end + to_seconds(?) >= latest.scored_until THEN 'open' ELSE 'closed' END,
    version
FROM i LEFT JOIN r USING (device_id, k) LEFT JOIN latest USING (device_id)
"""


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
    seconds = gap.total_seconds()
    statement = _MERGE.format(
        devices=device_filter,
        devices_d=device_filter.replace("device_id", "d.device_id", 1),
        columns=", ".join(COLUMNS),
        top=TOP,
    )
    connection.execute(
        statement,
        [low, high, *parameters, seconds, MIN_SHARE, low, *parameters, *parameters, seconds],
    )


def began_in_alerted_incident(
    device_id: str,
    start: datetime,
    incidents: Iterable[tuple[str, datetime, datetime]],
    alerted: Collection[tuple[str, datetime]],
) -> bool:
    """Whether something of ``device_id`` that began at ``start`` fell inside one of its
    ``incidents`` (device, first window's start, last window's end) that had opened before it
    and was alerted (``alerted``: the (device, first window's start) of each alert sent, which
    is an incident's id): it continues that incident and gets no alert of its own.

    >>> t = datetime(2026, 1, 1, 10, 0)
    >>> incident = ("d", t, t + timedelta(minutes=5))
    >>> began_in_alerted_incident("d", t + timedelta(minutes=2), [incident], {("d", t)})
    True
    >>> began_in_alerted_incident("d", t + timedelta(minutes=2), [incident], set())
    False
    """
    return any(
        device == device_id and first < start < last and (device, first) in alerted
        for device, first, last in incidents
    )
