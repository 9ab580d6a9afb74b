"""``fleetwatch schedule``: hourly scoring with catch-up, on APScheduler 3.

The state is the DuckDB ``runs`` table, not the scheduler: at start and at every tick the
scheduler scores every *closed* event-time hour that has data and no successful run, oldest
first, at most ``--max-catchup`` per tick. A restart therefore never skips an hour (it is still
missing) and never scores one twice (it has a successful run). Event time, not wall-clock time,
decides which hours exist, so an accelerated simulator's hours are scored as they close.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from fleetwatch.config import Settings
from fleetwatch.scoring.score import HOUR, RunResult, missed_hours, score_hour

log = logging.getLogger("fleetwatch.schedule")


def make_trigger(settings: Settings) -> Any:
    options = settings.schedule
    if options.every:
        return IntervalTrigger(seconds=options.every, timezone=UTC)
    return CronTrigger.from_crontab(options.cron, timezone=UTC)


@dataclass
class CatchUp:
    """Scores pending hours; the job both the scheduler and the tests run."""

    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    score: Callable[[Settings, datetime], RunResult] = field(
        default=lambda s, h: score_hour(s, h, progress=False)
    )
    results: list[RunResult] = field(default_factory=list)

    def pending(self) -> list[datetime]:
        return missed_hours(self.settings, limit=self.settings.schedule.max_catchup)

    def __call__(self) -> list[RunResult]:
        done = []
        for hour in self.pending():
            if self.stop.is_set():
                log.info("stopping: %s and later hours stay pending", f"{hour:%Y-%m-%dT%H}")
                break
            result = self.score(self.settings, hour)
            log.info(
                "scored %s: %s, %d devices scored, %d failed, %d silent, %d anomalies",
                f"{hour:%Y-%m-%dT%H}",
                result.status,
                result.devices_scored,
                result.devices_failed,
                result.devices_silent,
                result.anomalies,
            )
            done.append(result)
        self.results += done
        return done


@dataclass
class Retrainer:
    """Retrains every device on the newest closed ``--retrain-window`` of event time."""

    settings: Settings

    def __call__(self) -> None:
        from fleetwatch.scoring.score import closed_through, hours_with_data
        from fleetwatch.scoring.train import train

        hours = hours_with_data(self.settings)
        closed = closed_through(self.settings)
        if not hours:
            return
        until = closed or (hours[-1] + HOUR)
        since = until - timedelta(seconds=self.settings.schedule.retrain_window)
        summary = train(self.settings, since, until)
        log.info(
            "retrained on %s..%s: %d trained, %d skipped",
            since,
            until,
            len(summary.trained),
            len(summary.skipped),
        )


def run_schedule(settings: Settings, *, install_signals: bool = True) -> int:
    """Run until SIGTERM/SIGINT; the current hour finishes, the rest stays pending."""
    options = settings.schedule
    catch_up = CatchUp(settings)
    scheduler = BackgroundScheduler(timezone=UTC)
    trigger = make_trigger(settings)
    scheduler.add_job(
        catch_up,
        trigger,
        id="score",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(options.misfire_grace),
        next_run_time=datetime.now(UTC),
    )
    if options.retrain_every:
        scheduler.add_job(
            Retrainer(settings),
            IntervalTrigger(seconds=options.retrain_every, timezone=UTC),
            id="retrain",
            max_instances=1,
            coalesce=True,
        )
    stopped = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: finishing the current hour, then stopping", signum)
        catch_up.stop.set()
        stopped.set()

    if install_signals:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    scheduler.start()
    job = scheduler.get_job("score")
    log.info("scheduler started; next tick %s", job.next_run_time if job else None)
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        scheduler.shutdown(wait=True)  # waits for a running job: the current hour completes
    log.info("scheduler stopped cleanly")
    return 0


def next_tick(settings: Settings, now: datetime | None = None) -> datetime | None:
    now = now or datetime.now(UTC)
    fire: datetime | None = make_trigger(settings).get_next_fire_time(None, now)
    return fire
