"""Live scoring (``schedule --live``): every window scored as soon as the aggregation closes it.

The aggregation publishes a window's file only once the watermark has closed it, so every
aggregate file of an open hour holds closed windows only. At every live tick (``--live-every``),
for the hour the watermark is in and the hour before it, unless that hour already has its final
run: the files published since the hour's last live run (``live_files`` in DuckDB names those
read) are scored with each device's active model, as a ``provisional`` run of scope ``live``
(:func:`fleetwatch.scoring.score.score_hour` with ``live=True``). Its scores take the place of
any stored for the same (device, window), its files are recorded as read, and the incidents of
its devices are rebuilt: all in the run's one transaction. A tick's cost follows the new files,
not the hour.

When the hour closes, its final run (the hourly path, unchanged) replaces every score of the
hour: exactly once holds per (window, device) for final results, as without ``--live``, and
provisional rows never duplicate (a window lies in one file, a file is scored live once, and
each live run replaces by (device, window)). A crash mid-tick rolls its transaction back: the
next tick reads the same files again.

Alerts follow the incidents (:mod:`fleetwatch.alerts`): an incident found live alerts at once,
and the final run agreeing changes nothing; an alerted incident that the final run of its hour
no longer finds gets one ``retracted`` follow-up.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from fleetwatch.scoring.score import RunResult, Scoring, score_hour
from fleetwatch.storage.duck import connect, has_table
from fleetwatch.storage.layout import HOUR, floor_hour

log = logging.getLogger(__name__)


@dataclass
class LiveTick:
    """What one live tick did, for the scheduler's state and ``fleetwatch status``."""

    at: datetime
    runs: list[RunResult]
    windows: int  # rows scored
    lag_s: float | None  # median of (scored at - window end) over the windows scored
    lag_max_s: float | None


def live_tick(scoring: Scoring, lock: Callable[[], AbstractContextManager[Any]]) -> LiveTick:
    """Score the windows closed since the last tick (see the module docstring)."""
    layout = scoring.layout
    now = datetime.now(UTC)
    mark = scoring.watermark()
    if mark is None:
        return LiveTick(now, [], 0, None, None)
    current = floor_hour(mark)
    runs: list[RunResult] = []
    lags: list[float] = []
    for hour in (current - HOUR, current):
        with lock():
            if _is_final(scoring, hour):
                continue
            found = layout.inventory([hour])
            if not found:
                continue
            files = found[0]
            seen = _seen(scoring, hour)
            new = tuple(item for item in files.files if item.key not in seen)
            if not new:
                continue
            result = score_hour(
                scoring, hour, files=replace(files, files=new), live=True, progress=False
            )
            runs.append(result)
            lags += _lags(scoring, result.run_id)
    windows = sum(r.rows_scored for r in runs)
    if runs:
        log.info(
            "live: %d windows of %d devices scored, %d anomalies; lag from window end %s s",
            windows,
            sum(r.devices_scored for r in runs),
            sum(r.anomalies for r in runs),
            f"{statistics.median(lags):.1f}" if lags else "-",
        )
    return LiveTick(
        now,
        runs,
        windows,
        statistics.median(lags) if lags else None,
        max(lags) if lags else None,
    )


def _is_final(scoring: Scoring, hour: datetime) -> bool:
    """The hour has a succeeded whole-hour run: its scores are final."""
    database = scoring.layout.database
    if not database.exists():
        return False
    with connect(database, read_only=True, lock_timeout=scoring.options.lock_timeout) as db:
        if not has_table(db, "runs"):
            return False
        row = db.execute(
            "SELECT count(*) FROM runs WHERE window_start = ? AND scope = 'hour' "
            "AND status = 'succeeded'",
            [hour],
        ).fetchone()
    return bool(row and row[0])


def _seen(scoring: Scoring, hour: datetime) -> set[str]:
    database = scoring.layout.database
    if not database.exists():
        return set()
    with connect(database, read_only=True, lock_timeout=scoring.options.lock_timeout) as db:
        if not has_table(db, "live_files"):
            return set()
        rows = db.execute("SELECT key FROM live_files WHERE window_start = ?", [hour]).fetchall()
    return {key for (key,) in rows}


def _lags(scoring: Scoring, run_id: str) -> list[float]:
    """Seconds from each scored window's end to its run's end."""
    with connect(
        scoring.layout.database, read_only=True, lock_timeout=scoring.options.lock_timeout
    ) as db:
        rows = db.execute(
            "SELECT epoch(r.finished_at) - epoch(s.window_end) FROM scores s "
            "JOIN runs r USING (run_id) WHERE s.run_id = ?",
            [run_id],
        ).fetchall()
    return [float(lag) for (lag,) in rows if lag is not None]
