"""``fleetwatch status``: what the scheduler did and will do, from DuckDB and the checkpoints."""

from __future__ import annotations

from typing import Any

from fleetwatch.config import Settings
from fleetwatch.scheduler.service import next_tick
from fleetwatch.scoring.score import closed_through, database_path, missed_hours
from fleetwatch.storage.duck import connect, ensure_schema


def status(settings: Settings, runs: int = 10) -> dict[str, Any]:
    path = database_path(settings)
    ensure_schema(path, settings.score.lock_timeout)
    with connect(path, read_only=True, lock_timeout=settings.score.lock_timeout) as db:
        frame = db.execute(
            "SELECT r.*, (SELECT count(*) FROM scores s WHERE s.run_id = r.run_id "
            "AND s.is_anomaly) AS anomalies FROM runs r ORDER BY started_at DESC LIMIT ?",
            [runs],
        ).fetchdf()
    return {
        "next_run": next_tick(settings),
        "closed_through": closed_through(settings),
        "pending_hours": [h.isoformat() for h in missed_hours(settings)],
        "last_runs": frame.to_dict(orient="records"),
    }
