"""What the dashboard shows, read from the data folder: DuckDB opened read-only, Parquet read.

Nothing here writes. Device ids reach a query only as bound parameters, after the same
validation as everywhere (:func:`fleetwatch.telemetry.is_valid_name`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from fleetwatch.config import Settings
from fleetwatch.errors import InvalidInputError
from fleetwatch.storage.duck import connect, has_table
from fleetwatch.storage.layout import HOUR, DataLayout, floor_hour
from fleetwatch.storage.parquet import read_table
from fleetwatch.telemetry import is_valid_name

#: Heatmap cell values for what is not a share of anomalous windows (drawn in their own colours).
FAILED, SILENT, NO_MODEL = -0.84, -0.5, -0.17
_FILTER = re.compile(r"[A-Za-z0-9_.-]{0,64}")


def device_filter(text: str) -> str:
    """A device-id filter (a substring), checked like the ids themselves."""
    if not _FILTER.fullmatch(text):
        raise InvalidInputError("the device filter takes 0-64 of [A-Za-z0-9_.-]")
    return text


def check_device(device_id: str) -> str:
    if not is_valid_name(device_id):
        raise InvalidInputError(f"device id {device_id[:80]!r} is not 1-64 of [A-Za-z0-9_.-]")
    return device_id


@dataclass
class Fleet:
    since: datetime
    until: datetime
    hours: list[datetime]
    devices: list[str]  # rows, worst first (or by name)
    cells: np.ndarray  # devices x hours: share of anomalous windows, or a status value, or NaN
    text: np.ndarray  # devices x hours: what each cell shows on hover
    worst: list[dict[str, Any]]  # the worst devices, for the table
    runs: list[dict[str, Any]]  # the last runs' counts
    totals: dict[str, int] = field(default_factory=dict)


def _scored_span(connection: Any) -> tuple[datetime, datetime] | None:
    found = connection.execute("SELECT min(window_start), max(window_end) FROM runs").fetchone()
    return None if found is None or found[1] is None else (found[0], found[1])


def fleet(
    settings: Settings,
    since: datetime | None,
    until: datetime | None,
    contains: str = "",
    sort: str = "worst",
) -> Fleet | None:
    """Devices x hours over [since, until) (default: the scored hours, at most the last 48);
    None when nothing was scored yet."""
    layout = settings.layout
    if not layout.database.exists():
        return None
    with connect(layout.database, read_only=True) as db:
        if not has_table(db, "runs") or (span := _scored_span(db)) is None:
            return None
        until = floor_hour(until) if until else span[1]
        since = floor_hour(since) if since else max(until - 48 * HOUR, min(span[0], until - HOUR))
        if until <= since:
            raise InvalidInputError("the range is empty: `until` must come after `since`")
        pattern = f"%{contains}%"
        # hours as integers (epoch_ms // 1 h): no time-zone arithmetic on millions of rows
        shares = db.execute(
            "SELECT device_id, epoch_ms(window_start) // 3600000 AS hour, "
            "count(*) FILTER (WHERE is_anomaly) AS anomalous, count(*) AS windows, "
            "min(score_normalized) AS worst FROM scores "
            "WHERE window_start >= ? AND window_start < ? AND device_id LIKE ? GROUP BY 1, 2",
            [since, until, pattern],
        ).fetchnumpy()
        # the last outcome of each (device, hour) that was not scored: failed, silent, no model
        statuses = db.execute(
            "SELECT device_id, epoch_ms(hour) // 3600000, outcome FROM ("
            " SELECT d.device_id, r.window_start AS hour,"
            " arg_max(d.outcome, r.started_at) AS outcome"
            " FROM device_runs d JOIN runs r USING (run_id)"
            " WHERE r.window_start >= ? AND r.window_start < ? AND d.device_id LIKE ?"
            " AND r.status <> 'aborted' GROUP BY 1, 2)"
            " WHERE outcome IN ('failed', 'silent', 'no_model')",
            [since, until, pattern],
        ).fetchall()
        runs = db.execute(
            "SELECT window_start, status, devices_scored, devices_failed, devices_silent, "
            "devices_without_model, started_at FROM runs ORDER BY started_at DESC LIMIT 5"
        ).fetchall()
    first_hour = int(since.timestamp()) // 3600
    hours = [since + i * HOUR for i in range(int((until - since) / HOUR))]
    scored_ids = np.asarray(shares["device_id"], dtype=object)
    anomalous = np.asarray(shares["anomalous"], dtype=np.int64)
    windows = np.asarray(shares["windows"], dtype=np.int64)
    worst_scores = np.asarray(
        np.ma.filled(np.ma.asarray(shares["worst"], dtype=np.float64), np.nan), dtype=np.float64
    )
    columns = np.asarray(shares["hour"], dtype=np.int64) - first_hour
    status_ids = [row[0] for row in statuses]
    names = sorted(set(scored_ids.tolist()) | set(status_ids))
    index = {name: i for i, name in enumerate(names)}
    rows = np.fromiter((index[d] for d in scored_ids), dtype=np.int64, count=len(scored_ids))
    total_anomalous = np.bincount(rows, weights=anomalous, minlength=len(names))
    total_windows = np.bincount(rows, weights=windows, minlength=len(names))
    lowest = np.full(len(names), np.inf)
    np.fmin.at(lowest, rows, np.where(np.isnan(worst_scores), np.inf, worst_scores))
    worst_first = sorted(range(len(names)), key=lambda i: (-total_anomalous[i], lowest[i], i))
    order = list(range(len(names))) if sort == "name" else worst_first
    position = np.empty(len(names), dtype=np.int64)
    position[order] = np.arange(len(names))
    cells = np.full((len(names), len(hours)), np.nan)
    text = np.full((len(names), len(hours)), "", dtype=object)
    cells[position[rows], columns] = anomalous / np.maximum(windows, 1)
    text[position[rows], columns] = [
        f"{a} of {w} anomalous" for a, w in zip(anomalous, windows, strict=True)
    ]
    values = {"failed": FAILED, "silent": SILENT, "no_model": NO_MODEL}
    for device_id, hour, outcome in statuses:
        row, col = position[index[device_id]], int(hour) - first_hour
        if 0 <= col < len(hours) and not text[row, col]:  # scored data wins over an outcome
            cells[row, col] = values[outcome]
            text[row, col] = outcome.replace("_", " ")
    worst = [
        {
            "device_id": names[i],
            "anomalous": int(total_anomalous[i]),
            "windows": int(total_windows[i]),
            "worst": None if lowest[i] == np.inf else round(float(lowest[i]), 2),
        }
        for i in worst_first[:20]
    ]
    last = [
        {
            "hour": row[0],
            "status": row[1],
            "scored": row[2],
            "failed": row[3],
            "silent": row[4],
            "no_model": row[5],
        }
        for row in runs
    ]
    devices = [names[i] for i in order]
    return Fleet(since, until, hours, devices, cells, text, worst, last)


@dataclass
class Device:
    device_id: str
    since: datetime
    until: datetime
    series: dict[str, dict[str, list[Any]]]  # sensor -> start, mean, min, max
    anomalies: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    model: dict[str, Any] | None
    selected: dict[str, Any] | None


def device(
    settings: Settings,
    device_id: str,
    since: datetime | None,
    until: datetime | None,
    anomaly: datetime | None,
) -> Device:
    """One device's sensors, anomalies, incidents and model over [since, until) (default: the
    six hours up to its newest window, or around ``anomaly``)."""
    import pyarrow.compute as pc

    check_device(device_id)
    layout = settings.layout
    anomalies: list[dict[str, Any]] = []
    incidents: list[dict[str, Any]] = []
    newest: datetime | None = None
    if layout.database.exists():
        with connect(layout.database, read_only=True) as db:
            if has_table(db, "scores"):
                found = db.execute(
                    "SELECT max(window_end) FROM scores WHERE device_id = ?", [device_id]
                ).fetchone()
                newest = None if found is None else found[0]
    if anomaly is not None:
        since = since or anomaly - 2 * HOUR
        until = until or anomaly + HOUR
    if until is None:
        until = newest or _newest_aggregate(layout)
    if until is None:
        raise InvalidInputError(f"no data for {device_id} in {settings.data_dir}")
    since = since or until - 6 * HOUR
    if until <= since:
        raise InvalidInputError("the range is empty: `until` must come after `since`")
    series: dict[str, dict[str, list[Any]]] = {}
    files = [item.key for item in layout.files_between(since, until)]
    if files:
        table = read_table(
            layout.store,
            files,
            columns=["sensor", "window_start", "mean", "min", "max"],
            filters=[
                ("device_id", "=", device_id),
                ("window_start", ">=", since),
                ("window_start", "<", until),
            ],
        )
        table = table.sort_by([("sensor", "ascending"), ("window_start", "ascending")])
        sensors = pc.cast(table.column("sensor"), "string").to_pylist()
        starts = table.column("window_start").to_pylist()
        stats = {name: table.column(name).to_pylist() for name in ("mean", "min", "max")}
        for index, sensor in enumerate(sensors):
            entry = series.setdefault(sensor, {"start": [], "mean": [], "min": [], "max": []})
            entry["start"].append(starts[index])
            for name in ("mean", "min", "max"):
                entry[name].append(stats[name][index])
    selected = None
    if layout.database.exists():
        with connect(layout.database, read_only=True) as db:
            if has_table(db, "scores"):
                rows = db.execute(
                    "SELECT window_start, score, score_normalized, top_sensors, model_version "
                    "FROM anomalies WHERE device_id = ? AND window_start >= ? "
                    "AND window_start < ? ORDER BY window_start",
                    [device_id, since, until],
                ).fetchall()
                anomalies = [
                    {
                        "window_start": r[0],
                        "score": r[1],
                        "normalized": r[2],
                        "top_sensors": r[3] or [],
                        "version": r[4],
                    }
                    for r in rows
                ]
            if has_table(db, "incidents"):
                rows = db.execute(
                    "SELECT incident_id, window_start, window_end, windows, peak_score, "
                    "top_sensors, status FROM incidents WHERE device_id = ? "
                    "ORDER BY window_start DESC LIMIT 50",
                    [device_id],
                ).fetchall()
                incidents = [
                    dict(
                        zip(
                            ("id", "start", "end", "windows", "peak", "top_sensors", "status"),
                            r,
                            strict=True,
                        )
                    )
                    for r in rows
                ]
    if anomaly is not None:
        selected = next((a for a in anomalies if a["window_start"] == anomaly), None)
    return Device(
        device_id, since, until, series, anomalies, incidents, _model(settings, device_id), selected
    )


def _newest_aggregate(layout: DataLayout) -> datetime | None:
    hours = list(layout.hour_objects("aggregates"))
    return max(hours) + HOUR if hours else None


def _model(settings: Settings, device_id: str) -> dict[str, Any] | None:
    from fleetwatch.scoring.registry import ModelRegistry

    registry = ModelRegistry(settings.layout.store, settings.layout.state)
    try:
        active = registry.active(device_id)
    except Exception as exc:  # a tampered manifest: shown as such
        return {"error": str(exc)}
    if active is None:
        return None
    manifest = active.manifest
    try:
        in_shadow = registry.shadow(device_id) if device_id in registry.shadowed_devices() else None
    except Exception:  # a tampered shadow manifest: not shown
        in_shadow = None
    return {
        "version": active.version,
        "kind": manifest.get("kind"),
        "threshold": manifest.get("threshold"),
        "target_far": manifest.get("calibration", {}).get("target_far"),
        "rule": manifest.get("calibration", {}).get("rule"),
        "trained": f"{manifest['training']['from']} .. {manifest['training']['until']}",
        "windows": manifest["training"]["windows"],
        "features": len(manifest.get("features", [])),
        "shadow": None if in_shadow is None else in_shadow.version,
    }


def runs(settings: Settings, limit: int = 200) -> dict[str, Any]:
    """The run history (outcomes, durations, errors) and what is pending."""
    from fleetwatch.aggregate.progress import closed_through
    from fleetwatch.scheduler.service import pending_now
    from fleetwatch.scheduler.status import scheduler

    layout = settings.layout
    history: list[dict[str, Any]] = []
    if layout.database.exists():
        with connect(layout.database, read_only=True) as db:
            if has_table(db, "runs"):
                cursor = db.execute(
                    "SELECT window_start, status, scope, devices_scored, devices_failed, "
                    "devices_silent, devices_without_model, rows_scored, "
                    "epoch_ms(finished_at) - epoch_ms(started_at) AS ms, started_at, error, "
                    "run_id FROM runs ORDER BY started_at DESC LIMIT ?",
                    [limit],
                )
                names = [c[0] for c in cursor.description]
                history = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    pending = pending_now(settings)
    return {
        "scheduler": scheduler(settings),
        "closed_through": closed_through(layout, settings.kafka.telemetry_topic),
        "pending": [
            {"hour": p.hour, "devices": "all" if p.devices is None else len(p.devices)}
            for p in pending
        ],
        "history": history,
    }


def parse_time(text: str | None, name: str) -> datetime | None:
    from fleetwatch.config import parse_timestamp

    if not text:
        return None
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise InvalidInputError(f"{name}: {exc}") from None
