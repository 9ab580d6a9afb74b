"""What is left to score: the unit of exactly-once is (hour, device).

An hour is **closed** when no more windows can arrive for it: its end is at or before the
aggregation's watermark (:func:`fleetwatch.aggregate.progress.closed_through`; unknown means
not closed), or every file in it came from a backfill (``fleetwatch import --backfill``).

A closed hour is **pending** when

- it was never scored by a successful run of the whole hour, or its data changed since (a
  backfill added to it; its files' signature changed: a compaction does not change it); then
  every device in it is scored again; or
- a device has data in it, has an active model now, and neither a ``scored`` outcome since the
  hour's last whole-hour run nor a ``failed`` one with the model it has now (a model that
  fails is not retried until it changes: retrain, roll back, or ``score --hour``). Devices
  that had no model when the hour was scored become pending once they are trained.

``runs`` and ``device_runs`` in DuckDB are therefore the whole state: a scheduler that was down
catches up when it starts, and a restart never skips or repeats a pair. Each
:class:`PendingHour` carries the listing it was decided on: the run scores those files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleetwatch.aggregate.progress import closed_through
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.storage.duck import connect, has_table
from fleetwatch.storage.layout import HOUR, DataLayout, HourFiles, legacy_signature

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingHour:
    """A closed hour with something to score: every device (``devices`` None) or some."""

    hour: datetime
    signature: str
    devices: tuple[str, ...] | None
    files: HourFiles | None = None  # the listing this was decided on

    @property
    def whole(self) -> bool:
        return self.devices is None


def is_closed(files: HourFiles, watermark: datetime | None) -> bool:
    return files.backfill_only or (watermark is not None and files.hour + HOUR <= watermark)


def closed_hours(
    layout: DataLayout, topic: str, hours: Sequence[datetime] | None = None
) -> list[HourFiles]:
    """Closed hours with data (all, or those of ``hours``), oldest first, from one listing.
    The watermark is read before the listing: an hour closed by it has all its files by then."""
    mark = closed_through(layout, topic)
    return [
        files
        for files in layout.inventory(list(hours) if hours else None)
        if is_closed(files, mark)
    ]


def pending_hours(
    layout: DataLayout,
    topic: str,
    limit: int | None = None,
    hours: Sequence[datetime] | None = None,
    lock_timeout: float = 30.0,
) -> list[PendingHour]:
    """Closed hours with something to score, oldest first (at most ``limit``)."""
    closed = closed_hours(layout, topic, hours)
    if not closed:
        return []
    recorded, done = _recorded(layout, [files.hour for files in closed], lock_timeout)
    registry = ModelRegistry(layout.store, live=False)
    active: dict[str, str | None] = {}

    def active_version(device_id: str) -> str | None:
        if device_id not in active:
            try:
                active[device_id] = registry.active_version(device_id)
            except Exception:  # an unreadable ACTIVE: scoring reports it for the device
                active[device_id] = "?"
        return active[device_id]

    found = []
    for files in closed:
        record = recorded.get(files.hour)
        if record is None or not same_data(record[0], files):
            found.append(PendingHour(files.hour, files.signature, None, files))
        else:
            outcomes = done.get(files.hour, {})
            devices = tuple(
                device
                for device in record[1]
                if (version := active_version(device)) is not None
                and outcomes.get(device) not in ("scored", f"failed:{version}")
            )
            if devices:
                found.append(PendingHour(files.hour, files.signature, devices, files))
        if limit is not None and len(found) >= limit:
            break
    return found


def same_data(recorded: str, files: HourFiles) -> bool:
    """A recorded signature is the hour's as it is now (or fleetwatch 0.1's for it)."""
    return recorded == files.signature or recorded == legacy_signature(files)


def migrate_signatures(layout: DataLayout, lock_timeout: float = 30.0) -> int:
    """Hours recorded with fleetwatch 0.1's file signature (names, sizes and times) get the
    signature of their data (see :func:`fleetwatch.storage.layout.hour_signature`), so that
    compacting them does not score them again. Runs once per database; how many hours."""
    if not layout.database.exists():
        return 0
    with connect(layout.database, read_only=False, lock_timeout=lock_timeout) as db:
        if not has_table(db, "hour_devices"):
            return 0
        db.execute("CREATE TABLE IF NOT EXISTS fleetwatch_migrations (name VARCHAR PRIMARY KEY)")
        if db.execute(
            "SELECT count(*) FROM fleetwatch_migrations WHERE name = 'signatures-v2'"
        ).fetchone() != (0,):
            return 0
        rows: list[Any] = db.execute(
            "SELECT DISTINCT window_start, files_signature FROM hour_devices"
        ).fetchall()
        recorded = {_utc(hour): signature for hour, signature in rows}
        moved = 0
        db.execute("BEGIN TRANSACTION")
        for files in layout.inventory(list(recorded)) if recorded else []:
            old = recorded.get(files.hour)
            if old is not None and old != files.signature and old == legacy_signature(files):
                for table in ("runs", "hour_devices"):
                    db.execute(
                        f"UPDATE {table} SET files_signature = ? "  # noqa: S608 - fixed names
                        "WHERE window_start = ? AND files_signature = ?",
                        [files.signature, files.hour, old],
                    )
                moved += 1
        db.execute("INSERT INTO fleetwatch_migrations VALUES ('signatures-v2')")
        db.execute("COMMIT")
    if moved:
        log.info("%d scored hours given the new kind of file signature", moved)
    return moved


def _recorded(
    layout: DataLayout, hours: list[datetime], lock_timeout: float
) -> tuple[dict[datetime, tuple[str, list[str]]], dict[datetime, dict[str, str]]]:
    """Per hour: (signature, devices with data) of its last successful whole-hour run, and each
    device's outcome since (``scored`` or ``failed:<version>``)."""
    if not layout.database.exists():
        return {}, {}
    first, last = min(hours), max(hours) + HOUR
    with connect(layout.database, read_only=True, lock_timeout=lock_timeout) as db:
        if not has_table(db, "hour_devices"):
            return {}, {}
        rows: list[Any] = db.execute(
            "SELECT window_start, files_signature, list(device_id ORDER BY device_id) "
            "FROM hour_devices WHERE window_start >= ? AND window_start < ? GROUP BY 1, 2",
            [first, last],
        ).fetchall()
        recorded = {_utc(hour): (signature, devices) for hour, signature, devices in rows}
        rows = db.execute(
            """
            WITH whole AS (
                SELECT window_start, max(started_at) AS since FROM runs
                WHERE scope = 'hour' AND status = 'succeeded'
                  AND window_start >= ? AND window_start < ?
                GROUP BY 1
            )
            SELECT r.window_start, d.device_id,
                   CASE WHEN d.outcome = 'scored' THEN 'scored'
                        ELSE 'failed:' || coalesce(d.model_version, '') END
            FROM device_runs d JOIN runs r USING (run_id) JOIN whole w USING (window_start)
            WHERE r.status = 'succeeded' AND r.started_at >= w.since
              AND d.outcome IN ('scored', 'failed')
            ORDER BY r.started_at
            """,
            [first, last],
        ).fetchall()
    done: dict[datetime, dict[str, str]] = {}
    for hour, device, outcome in rows:
        per_hour = done.setdefault(_utc(hour), {})
        if per_hour.get(device) != "scored":  # once scored, a later failure changes nothing
            per_hour[device] = outcome
    return recorded, done


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
