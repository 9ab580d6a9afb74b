"""What the dashboard shows, read from the data folder: DuckDB opened read-only, Parquet read.

Nothing here writes. Device ids reach a query only as bound parameters, after the same
validation as everywhere (:func:`fleetwatch.telemetry.is_valid_name`).

**Every page costs a bounded amount, whatever its parameters.** Times are refused outside
2000..2100 (the telemetry contract's range); a range is cut to the data there is; the fleet
heatmap has at most :data:`MAX_COLUMNS` columns (hours, or longer buckets for a long range) and
:data:`MAX_ROWS` devices (the worst first; a filter finds the others); a device page draws at
most :data:`MAX_SENSORS` sensors of at most :data:`MAX_POINTS` points each (windows merged into
longer buckets beyond that) and lists at most :data:`MAX_ANOMALIES` anomalies; and every DuckDB
query of a page is interrupted after :data:`TIME_BUDGET` seconds (the page then says to narrow
its range).
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np

from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError, InvalidInputError
from fleetwatch.storage.duck import connect, has_table
from fleetwatch.storage.layout import HOUR, DataLayout, floor_hour
from fleetwatch.storage.parquet import read_table
from fleetwatch.telemetry import is_valid_name

#: Heatmap cell values for what is not a share of anomalous windows (drawn in their own colours).
FAILED, SILENT, NO_MODEL = -0.84, -0.5, -0.17
#: The most a page shows (see the module docstring).
MAX_COLUMNS: Final = 336  # two weeks of hours; a longer range gets longer buckets
MAX_ROWS: Final = 500
MAX_SENSORS: Final = 24
MAX_POINTS: Final = 1500
MAX_ANOMALIES: Final = 500
TIME_BUDGET: Final = 20.0
EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2100, 1, 1, tzinfo=UTC)
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
    bucket: timedelta = timedelta(hours=1)  # what a column covers
    matching: int = 0  # devices that match the filter (the rows show at most MAX_ROWS)
    provisional: list[bool] = field(default_factory=list)  # per column: an hour not yet final
    live: dict[str, Any] | None = None  # the live scheduler's last tick (``schedule --live``)


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
    """Devices x time over [since, until) (default: the scored hours, at most the last 48),
    cut to the scored span, in at most :data:`MAX_COLUMNS` columns and :data:`MAX_ROWS` rows;
    None when nothing was scored yet."""
    layout = settings.layout
    if not layout.database.exists():
        return None
    with connect(layout.database, read_only=True) as db, budget(db):
        if not has_table(db, "runs") or (span := _scored_span(db)) is None:
            return None
        first, last = floor_hour(span[0]), span[1]
        until = min(floor_hour(until), last) if until else last
        since = floor_hour(since) if since else max(until - 48 * HOUR, min(first, until - HOUR))
        if until <= since:
            raise InvalidInputError("the range is empty: `until` must come after `since`")
        since = max(since, first)  # nothing was scored before: no columns for it
        if until <= since:
            until = since + HOUR
        hours = math.ceil((until - since) / HOUR)
        step = max(1, math.ceil(hours / MAX_COLUMNS))  # hours per column
        bucket_ms = step * 3_600_000
        base_ms = int(since.timestamp() * 1000)
        pattern = f"%{contains}%"
        # columns as integers ((epoch_ms - since) // bucket): no time-zone arithmetic
        shares = db.execute(
            "SELECT device_id, (epoch_ms(window_start) - ?) // ? AS col, "
            "count(*) FILTER (WHERE is_anomaly) AS anomalous, count(*) AS windows, "
            "min(score_normalized) AS worst FROM scores "
            "WHERE window_start >= ? AND window_start < ? AND device_id LIKE ? GROUP BY 1, 2",
            [base_ms, bucket_ms, since, until, pattern],
        ).fetchnumpy()
        # the last outcome of each (device, hour) that was not scored: failed, silent, no model
        statuses = db.execute(
            "SELECT device_id, col, arg_max(outcome, started) FROM ("
            " SELECT d.device_id, (epoch_ms(r.window_start) - ?) // ? AS col,"
            " d.outcome, r.started_at AS started"
            " FROM device_runs d JOIN runs r USING (run_id)"
            " WHERE r.window_start >= ? AND r.window_start < ? AND d.device_id LIKE ?"
            " AND r.status <> 'aborted') GROUP BY 1, 2"
            " HAVING arg_max(outcome, started) IN ('failed', 'silent', 'no_model')",
            [base_ms, bucket_ms, since, until, pattern],
        ).fetchall()
        runs = db.execute(
            "SELECT window_start, status, devices_scored, devices_failed, devices_silent, "
            "devices_without_model, started_at FROM runs ORDER BY started_at DESC LIMIT 5"
        ).fetchall()
        # columns whose scores are provisional: an hour scored (live or early) but not final
        open_columns = db.execute(
            "SELECT DISTINCT (epoch_ms(window_start) - ?) // ? FROM runs "
            "WHERE window_start >= ? AND window_start < ? GROUP BY window_start "
            "HAVING bool_or(status = 'provisional') AND NOT bool_or(status = 'succeeded')",
            [base_ms, bucket_ms, since, until],
        ).fetchall()
    width = math.ceil(hours / step)
    provisional = [False] * width
    for (col,) in open_columns:
        if 0 <= int(col) < width:
            provisional[int(col)] = True
    columns_start = [since + i * step * HOUR for i in range(width)]
    scored_ids = np.asarray(shares["device_id"], dtype=object)
    anomalous = np.asarray(shares["anomalous"], dtype=np.int64)
    windows = np.asarray(shares["windows"], dtype=np.int64)
    worst_scores = np.asarray(
        np.ma.filled(np.ma.asarray(shares["worst"], dtype=np.float64), np.nan), dtype=np.float64
    )
    columns = np.asarray(shares["col"], dtype=np.int64)
    names = sorted(set(scored_ids.tolist()) | {row[0] for row in statuses})
    index = {name: i for i, name in enumerate(names)}
    rows = np.fromiter((index[d] for d in scored_ids), dtype=np.int64, count=len(scored_ids))
    total_anomalous = np.bincount(rows, weights=anomalous, minlength=len(names))
    total_windows = np.bincount(rows, weights=windows, minlength=len(names))
    lowest = np.full(len(names), np.inf)
    np.fmin.at(lowest, rows, np.where(np.isnan(worst_scores), np.inf, worst_scores))
    worst_first = sorted(range(len(names)), key=lambda i: (-total_anomalous[i], lowest[i], i))
    order = (list(range(len(names))) if sort == "name" else worst_first)[:MAX_ROWS]
    position = np.full(len(names), -1, dtype=np.int64)
    position[order] = np.arange(len(order))
    cells = np.full((len(order), width), np.nan)
    text = np.full((len(order), width), "", dtype=object)
    shown = position[rows] >= 0
    cells[position[rows][shown], columns[shown]] = (anomalous / np.maximum(windows, 1))[shown]
    text[position[rows][shown], columns[shown]] = [
        f"{a} of {w} anomalous" for a, w in zip(anomalous[shown], windows[shown], strict=True)
    ]
    values = {"failed": FAILED, "silent": SILENT, "no_model": NO_MODEL}
    for device_id, col, outcome in statuses:
        row, col = int(position[index[device_id]]), int(col)
        if row >= 0 and 0 <= col < width and not text[row, col]:  # scored data wins
            cells[row, col] = values[outcome]
            text[row, col] = outcome.replace("_", " ")
    for col in (c for c in range(width) if provisional[c]):
        text[:, col] = [f"{t} (provisional)" if t else t for t in text[:, col]]
    worst = [
        {
            "device_id": names[i],
            "anomalous": int(total_anomalous[i]),
            "windows": int(total_windows[i]),
            "worst": None if lowest[i] == np.inf else round(float(lowest[i]), 2),
        }
        for i in worst_first[:20]
    ]
    recent = [
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
    from fleetwatch.scheduler.status import scheduler

    running = scheduler(settings)
    return Fleet(
        since, until, columns_start, devices, cells, text, worst, recent,
        bucket=step * HOUR, matching=len(names), provisional=provisional,
        live=running if running.get("live") else None,
    )  # fmt: skip


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
    hidden_sensors: int = 0  # sensors with data not drawn (see MAX_SENSORS)
    merged: int = 1  # windows per drawn point (see MAX_POINTS)


def device(
    settings: Settings,
    device_id: str,
    since: datetime | None,
    until: datetime | None,
    anomaly: datetime | None,
) -> Device:
    """One device's sensors, anomalies, incidents and model over [since, until) (default: the
    six hours up to its newest window, or around ``anomaly``), cut to the hours that hold data:
    at most :data:`MAX_SENSORS` sensors drawn, each with at most :data:`MAX_POINTS` points."""
    check_device(device_id)
    layout = settings.layout
    anomalies: list[dict[str, Any]] = []
    incidents: list[dict[str, Any]] = []
    newest: datetime | None = None
    if layout.database.exists():
        with connect(layout.database, read_only=True) as db, budget(db):
            if has_table(db, "scores"):
                found = db.execute(
                    "SELECT max(window_end) FROM scores WHERE device_id = ?", [device_id]
                ).fetchone()
                newest = None if found is None else found[0]
    if anomaly is not None:
        since = since or anomaly - 2 * HOUR
        until = until or anomaly + HOUR
    data_hours = sorted(layout.hour_objects("aggregates"))  # one listing: the hours with data
    if until is None:
        until = newest or (data_hours[-1] + HOUR if data_hours else None)
    if until is None:
        raise InvalidInputError(f"no data for {device_id} in {settings.data_dir}")
    since = since or until - 6 * HOUR
    if until <= since:
        raise InvalidInputError("the range is empty: `until` must come after `since`")
    hours = [hour for hour in data_hours if since - HOUR < hour < until]
    window_ms = round(settings.aggregate.window * 1000)
    series, hidden = _series(layout, device_id, hours, since, until, window_ms)
    selected = None
    if layout.database.exists():
        with connect(layout.database, read_only=True) as db, budget(db):
            if has_table(db, "scores"):
                rows = db.execute(
                    "SELECT window_start, score, score_normalized, top_sensors, model_version "
                    "FROM anomalies WHERE device_id = ? AND window_start >= ? "
                    "AND window_start < ? ORDER BY score_normalized, window_start LIMIT ?",
                    [device_id, since, until, MAX_ANOMALIES],
                ).fetchall()
                anomalies = sorted(
                    (
                        {
                            "window_start": r[0],
                            "score": r[1],
                            "normalized": r[2],
                            "top_sensors": r[3] or [],
                            "version": r[4],
                        }
                        for r in rows
                    ),
                    key=lambda a: a["window_start"],
                )
                if anomaly is not None and not any(a["window_start"] == anomaly for a in anomalies):
                    rows = db.execute(
                        "SELECT window_start, score, score_normalized, top_sensors, "
                        "model_version FROM anomalies WHERE device_id = ? AND window_start = ?",
                        [device_id, anomaly],
                    ).fetchall()
                    anomalies += [
                        {"window_start": r[0], "score": r[1], "normalized": r[2],
                         "top_sensors": r[3] or [], "version": r[4]}
                        for r in rows
                    ]  # fmt: skip
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
    drawn = _chosen_sensors(series, anomalies, selected)
    return Device(
        device_id, since, until, {s: series[s] for s in drawn}, anomalies, incidents,
        _model(settings, device_id), selected, hidden_sensors=len(series) - len(drawn),
        merged=hidden,
    )  # fmt: skip


def _series(
    layout: DataLayout,
    device_id: str,
    hours: list[datetime],
    since: datetime,
    until: datetime,
    window_ms: int,
) -> tuple[dict[str, dict[str, list[Any]]], int]:
    """Per sensor: window starts, means, mins and maxes over [since, until), with ``None``
    where windows are missing (a gap is drawn as a gap); windows merged into buckets of
    several (mean of means, min of mins, max of maxes) when there would be more than
    :data:`MAX_POINTS`. Also how many windows each point stands for."""
    import pyarrow.compute as pc

    keys = [item.key for files in layout.inventory(hours) for item in files.files]
    if not keys:
        return {}, 1
    table = read_table(
        layout.store,
        keys,
        columns=["sensor", "window_start", "mean", "min", "max"],
        filters=[
            ("device_id", "=", device_id),
            ("window_start", ">=", since),
            ("window_start", "<", until),
        ],
    )
    if table.num_rows == 0:
        return {}, 1
    starts = pc.cast(table.column("window_start"), "int64").to_numpy()
    span = max(1, int(starts.max() - starts.min()) // window_ms + 1)
    merge = max(1, math.ceil(span / MAX_POINTS))  # windows per point
    step = merge * window_ms
    origin = int(starts.min())
    slots = (starts - origin) // step
    sensors = pc.cast(table.column("sensor"), "string").to_numpy(zero_copy_only=False)
    stats = {name: table.column(name).to_numpy() for name in ("mean", "min", "max")}
    series: dict[str, dict[str, list[Any]]] = {}
    for sensor in np.unique(sensors):
        mine = sensors == sensor
        slot = slots[mine]
        order = np.argsort(slot, kind="stable")
        slot = slot[order]
        unique, first = np.unique(slot, return_index=True)
        means = np.add.reduceat(stats["mean"][mine][order], first) / np.diff(
            np.append(first, len(slot))
        )
        lows = np.minimum.reduceat(stats["min"][mine][order], first)
        highs = np.maximum.reduceat(stats["max"][mine][order], first)
        entry: dict[str, list[Any]] = {"start": [], "mean": [], "min": [], "max": []}
        previous = None
        for position, at in enumerate(unique.tolist()):
            if previous is not None and at - previous > 1:  # a gap: break the line and band
                for name in ("mean", "min", "max"):
                    entry[name].append(None)
                entry["start"].append(_at(origin + (previous + 1) * step))
            entry["start"].append(_at(origin + at * step))
            entry["mean"].append(float(means[position]))
            entry["min"].append(float(lows[position]))
            entry["max"].append(float(highs[position]))
            previous = at
        series[str(sensor)] = entry
    return series, merge


def _at(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


def _chosen_sensors(
    series: dict[str, dict[str, list[Any]]],
    anomalies: list[dict[str, Any]],
    selected: dict[str, Any] | None,
) -> list[str]:
    """At most :data:`MAX_SENSORS` sensors: the selected anomaly's drivers, then those that
    drove the most anomalies, then the rest by name."""
    weight: dict[str, float] = {}
    for item in anomalies:
        for top in item["top_sensors"]:
            weight[top["sensor"]] = weight.get(top["sensor"], 0.0) + float(top["share"])
    if selected is not None:
        for top in selected["top_sensors"]:
            weight[top["sensor"]] = weight.get(top["sensor"], 0.0) + 1e9
    ranked = sorted(series, key=lambda s: (-weight.get(s, 0.0), s))
    return sorted(ranked[:MAX_SENSORS])


def _model(settings: Settings, device_id: str) -> dict[str, Any] | None:
    from fleetwatch.scoring.registry import ModelRegistry

    registry = ModelRegistry(settings.layout.store)
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
    """A time parameter, within 2000..2100 (the range the telemetry contract accepts; an
    ``until``, which is exclusive, may be 2100-01-01 itself)."""
    from fleetwatch.config import parse_timestamp

    if not text:
        return None
    try:
        moment = parse_timestamp(text[:64])
    except (ValueError, OverflowError) as exc:
        raise InvalidInputError(f"{name}: {exc}") from None
    if not EARLIEST <= moment <= LATEST or (moment == LATEST and name != "until"):
        raise InvalidInputError(
            f"{name}: {moment:%Y-%m-%dT%H:%M}Z is outside 2000-01-01..2100-01-01, the times "
            "readings can have"
        )
    return moment


class TooSlowError(FleetwatchError):
    """A page's queries took longer than :data:`TIME_BUDGET`."""


@contextlib.contextmanager
def budget(connection: Any, seconds: float | None = None) -> Iterator[None]:
    """Interrupt ``connection``'s query when the page has used its time budget."""
    import duckdb

    limit = TIME_BUDGET if seconds is None else seconds
    timer = threading.Timer(limit, connection.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    except duckdb.InterruptException:
        raise TooSlowError(
            f"this page needed more than {limit:g} s; choose a shorter range or filter the devices"
        ) from None
    finally:
        timer.cancel()
