"""``fleetwatch status``: what the scheduler does, what is closed, what is pending, last runs.

Read-only: it never creates or changes anything in the data directory.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fleetwatch.aggregate.progress import closed_through
from fleetwatch.config import Settings
from fleetwatch.scheduler.service import pending_now, scheduler_lock


def scheduler(settings: Settings) -> dict[str, Any]:
    """The running scheduler as it described itself, or ``{"running": False}``."""
    layout = settings.layout
    if not layout.scheduler_lock.exists() or not scheduler_lock(settings).held():
        return {"running": False}
    try:
        state: dict[str, Any] = json.loads(layout.scheduler_state.read_bytes())
    except (OSError, ValueError):
        state = {}
    return {"running": True, **state}


def live_line(scheduler: dict[str, Any]) -> str:
    """The live ticks as a person reads them: how long ago, how much, how late."""
    last = scheduler.get("last_live_tick")
    if not last:
        return "on, no tick yet"
    ago = (datetime.now(UTC) - datetime.fromisoformat(last)).total_seconds()
    line = f"last tick {ago:.0f} s ago, {scheduler.get('live_windows', 0)} windows scored"
    if scheduler.get("live_lag_s") is not None:
        line += (
            f"; window close to score {scheduler['live_lag_s']:g} s "
            f"(max {scheduler.get('live_lag_max_s', '?')} s)"
        )
    return line


def last_runs(settings: Settings, limit: int = 10) -> list[dict[str, Any]]:
    layout = settings.layout
    if not layout.database.exists():
        return []
    from fleetwatch.storage.duck import connect, has_table

    with connect(layout.database, read_only=True, lock_timeout=settings.score.lock_timeout) as db:
        if not has_table(db, "runs"):
            return []
        cursor = db.execute(
            "SELECT r.window_start, r.status, r.scope, r.devices_scored, r.devices_failed, "
            "r.devices_without_model, r.devices_silent, r.rows_scored, "
            "(SELECT count(*) FROM scores s WHERE s.run_id = r.run_id AND s.is_anomaly) "
            "AS anomalies, r.started_at, r.finished_at, r.run_id, r.error "
            "FROM runs r ORDER BY r.started_at DESC LIMIT ?",
            [limit],
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def status(settings: Settings, runs: int = 10) -> dict[str, Any]:
    settings.layout.require()
    pending = pending_now(settings)
    closed: datetime | None = closed_through(settings.layout, settings.kafka.telemetry_topic)
    return {
        "scheduler": scheduler(settings),
        "closed_through": closed,
        "pending_hours": [
            {
                "hour": item.hour.isoformat(),
                "devices": "all" if item.devices is None else len(item.devices),
            }
            for item in pending
        ],
        "pending_devices": sum(len(item.devices or ()) for item in pending),
        "last_runs": last_runs(settings, runs),
    }
