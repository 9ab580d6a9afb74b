"""``fleetwatch schedule``: hourly scoring with catch-up, on APScheduler 3.

The state is DuckDB's ``runs`` and ``device_runs``, not the scheduler: at start and at every
tick the scheduler scores every *pending* (hour, device) pair (see
:mod:`fleetwatch.scoring.pending`), oldest hour first, at most ``--max-catchup`` hours per
tick. A restart therefore never skips a pair (it is still pending) and never scores one twice
(it has an outcome). Event time, not wall-clock time, decides which hours are closed, so an
accelerated simulator's hours are scored as they close.

One scheduler per data directory: a second one refuses to start (the lock dies with its holder,
``kill -9`` included). Every scoring process (the scheduler's ticks, ``fleetwatch score``) takes
the scoring lock for one hour at a time, so two of them never score the same pairs at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError
from fleetwatch.scoring.pending import PendingHour, closed_hours, migrate_signatures, pending_hours
from fleetwatch.scoring.score import RunResult, Scoring, score_hour
from fleetwatch.storage.compaction import compact_hour, finish, needs_compaction
from fleetwatch.storage.layout import HOUR
from fleetwatch.storage.locks import ProcessLock
from fleetwatch.storage.store import DataStore

if TYPE_CHECKING:
    from fleetwatch.metrics import SchedulerMetrics

log = logging.getLogger("fleetwatch.schedule")


def make_trigger(settings: Settings) -> Any:
    options = settings.schedule
    if options.every:
        return IntervalTrigger(seconds=options.every, timezone=UTC)
    return CronTrigger.from_crontab(options.cron, timezone=UTC)


def scoring_lock(settings: Settings) -> ProcessLock:
    """Held while deciding what to score and scoring it, one hour at a time."""
    return ProcessLock(
        settings.layout.scoring_lock,
        f"scoring {settings.data_dir}",
        wait=max(settings.score.lock_timeout, 1.0),
        advice="try again when it is done, or raise --lock-timeout",
    )


def scheduler_lock(settings: Settings) -> ProcessLock:
    """Held by the one ``fleetwatch schedule`` of a data directory for its lifetime."""
    return ProcessLock(
        settings.layout.scheduler_lock,
        f"already scheduling {settings.data_dir}",
        advice="one scheduler per data directory: stop that one first",
    )


def _score_pending(settings: Settings, pending: PendingHour) -> RunResult:
    return score_hour(
        Scoring.of(settings), pending.hour, devices=pending.devices, progress=False,
        files=pending.files,
    )  # fmt: skip


def pending_now(
    settings: Settings, limit: int | None = None, hours: list[datetime] | None = None
) -> list[PendingHour]:
    """:func:`~fleetwatch.scoring.pending.pending_hours` of ``settings``' data directory."""
    return pending_hours(
        settings.layout, settings.kafka.telemetry_topic, limit, hours, settings.score.lock_timeout
    )


@dataclass
class CatchUp:
    """Scores pending (hour, device) pairs; the job both the scheduler and the tests run."""

    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    score: Callable[[Settings, PendingHour], RunResult] = field(default=_score_pending)
    results: list[RunResult] = field(default_factory=list)
    metrics: SchedulerMetrics | None = None
    migrated: bool = False

    def pending(self) -> list[PendingHour]:
        return pending_now(self.settings, limit=self.settings.schedule.max_catchup)

    def __call__(self) -> list[RunResult]:
        if not self.migrated:
            with scoring_lock(self.settings):
                migrate_signatures(self.settings.layout, self.settings.score.lock_timeout)
            self.migrated = True
        done = []
        candidates = self.pending()
        for candidate in candidates:
            if self.stop.is_set():
                log.info(
                    "stopping: %s and later hours stay pending", f"{candidate.hour:%Y-%m-%dT%H}"
                )
                break
            with scoring_lock(self.settings):
                # another process may have scored it meanwhile: what is left of it, now (the
                # run scores exactly the files of this listing)
                still = pending_now(self.settings, hours=[candidate.hour])
                if not still:
                    continue
                started = time.monotonic()
                result = self.score(self.settings, still[0])
                if self.metrics is not None:
                    self.metrics.run(result, time.monotonic() - started)
            log.info(
                "scored %s (%s): %s, %d devices scored, %d failed, %d silent, %d anomalies",
                f"{candidate.hour:%Y-%m-%dT%H}",
                "every device" if still[0].whole else f"{len(still[0].devices or ())} devices",
                result.status,
                result.devices_scored,
                result.devices_failed,
                result.devices_silent,
                result.anomalies,
            )
            done.append(result)
        self.results += done
        if self.metrics is not None:
            self.metrics.tick(len(candidates) - len(done))
        if self.settings.schedule.compact and not self.stop.is_set():
            compact_closed_hours(self.settings, self.stop)
        return done


def compact_closed_hours(settings: Settings, stop: threading.Event | None = None) -> int:
    """Merge the live aggregate files of closed hours, oldest first, at most ``max_catchup``
    hours a call, each under the scoring lock; how many hours. Each hour is compacted from
    one listing taken under the lock: exactly its live files are merged, and only those are
    deleted (see :mod:`fleetwatch.storage.compaction`)."""
    layout = settings.layout
    topic = settings.kafka.telemetry_topic
    candidates = [f.hour for f in closed_hours(layout, topic) if needs_compaction(f)]
    compacted = 0
    for hour in candidates[: settings.schedule.max_catchup]:
        if stop is not None and stop.is_set():
            break
        with scoring_lock(settings):
            listed = closed_hours(layout, topic, [hour])
            if not listed or not needs_compaction(listed[0]):
                continue
            compaction = compact_hour(layout, listed[0], settings.aggregate.parquet_compression)
            if compaction is None:
                continue
            removed = finish(layout, compaction)
        compacted += 1
        log.info(
            "compacted %s: %d files -> %s (%d rows)",
            f"{hour:%Y-%m-%dT%H}", removed, compaction.name, compaction.rows,
        )  # fmt: skip
    return compacted


def score_hours(
    settings: Settings, hours: list[datetime]
) -> tuple[list[RunResult], list[datetime]]:
    """Score each of ``hours`` whole (replacing its scores), one at a time under the scoring
    lock; the runs, and the hours that had no aggregates at all (nothing was recorded)."""
    from fleetwatch.scoring.score import NoDataError

    results, empty = [], []
    for hour in hours:
        with scoring_lock(settings):
            try:
                results.append(score_hour(settings, hour))
            except NoDataError:
                empty.append(hour)
    return results, empty


@dataclass
class Retrainer:
    """Retrains every device on the newest closed ``--retrain-window`` of event time; a new
    version is activated only when it passes the held-out check, else kept in shadow (see
    :mod:`fleetwatch.scoring.calibration`)."""

    settings: Settings

    def __call__(self) -> None:
        from fleetwatch.scoring.train import train

        closed = closed_hours(self.settings.layout, self.settings.kafka.telemetry_topic)
        if not closed:
            log.info("retraining skipped: no closed hour yet")
            return
        until = closed[-1].hour + HOUR
        since = until - timedelta(seconds=self.settings.schedule.retrain_window)
        summary = train(self.settings, since, until, activate="if-calibrated")
        log.info(
            "retrained on %s..%s: %d trained (%d kept in shadow), %d skipped",
            since,
            until,
            len(summary.trained),
            len(summary.shadowed),
            len(summary.skipped),
        )
        for device_id, reason in sorted(summary.shadowed.items()):
            log.warning("%s: %s", device_id, reason)
        for device_id, reason in sorted(summary.degenerate.items()):
            log.warning("%s: its threshold is degenerate: %s", device_id, reason)


@dataclass
class FirstTraining:
    """Trains every device that has no model on the first ``--train-first`` of its data (from
    its first window on), once that much of it is closed: a fleet is trained on its first,
    clean hours, and a device that joins later gets its model the same way."""

    settings: Settings
    first_seen: dict[str, datetime] = field(default_factory=dict)
    scanned: set[datetime] = field(default_factory=set)
    tried: set[str] = field(default_factory=set)

    def __call__(self) -> None:
        from fleetwatch.scoring.features import devices_in_files
        from fleetwatch.scoring.registry import ModelRegistry
        from fleetwatch.scoring.train import train_ranges

        duration = timedelta(seconds=self.settings.schedule.train_first or 0)
        layout = self.settings.layout
        closed = closed_hours(layout, self.settings.kafka.telemetry_topic)
        for files in closed:
            if files.hour not in self.scanned:
                self.scanned.add(files.hour)
                new = set(devices_in_files(layout.store, files.keys)[0]) - set(self.first_seen)
                if new:
                    self.first_seen.update(first_windows(layout.store, files.keys, new))
        if not closed:
            return
        closed_until = closed[-1].hour + HOUR
        registry = ModelRegistry(layout.store, live=False)
        ready = {
            device: (first, first + duration)
            for device, first in sorted(self.first_seen.items())
            if first + duration <= closed_until
            and device not in self.tried
            and registry.active_version(device) is None
        }
        if not ready:
            return
        self.tried.update(ready)
        summary = train_ranges(self.settings, ready)
        log.info(
            "trained %d devices on their first %s of data (%d skipped, %d failed)",
            len(summary.trained),
            duration,
            len(summary.skipped),
            len(summary.failed),
        )


def first_windows(store: DataStore, files: list[str], devices: set[str]) -> dict[str, datetime]:
    """The first window start of each of ``devices`` in ``files``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from fleetwatch.storage.parquet import read_table

    tables = [read_table(store, key, columns=["device_id", "window_start"]) for key in files]
    table = pa.concat_tables(tables)
    table = table.filter(pc.is_in(table["device_id"], pa.array(sorted(devices))))
    firsts = table.group_by("device_id").aggregate([("window_start", "min")])
    return {
        str(device): start.astimezone(UTC)
        for device, start in zip(
            firsts["device_id"].to_pylist(), firsts["window_start_min"].to_pylist(), strict=True
        )
    }


def run_schedule(settings: Settings, *, install_signals: bool = True) -> int:
    """Run until SIGTERM/SIGINT; the current hour finishes, the rest stays pending."""
    in_use = settings.layout.use()  # made if need be (a service waits for data); a demo cannot
    # empty it meanwhile
    with scheduler_lock(settings):
        try:
            return _run_schedule(settings, install_signals)
        finally:
            in_use.release()


def _run_schedule(settings: Settings, install_signals: bool) -> int:
    from fleetwatch.alerts import Alerter, AlertThread
    from fleetwatch.metrics import scheduler_metrics, serve

    options = settings.schedule
    metrics = scheduler_metrics() if options.metrics_port else None
    catch_up = CatchUp(settings, metrics=metrics)
    first_training = FirstTraining(settings) if settings.schedule.train_first else None
    alerter = Alerter(
        settings,
        lambda: scoring_lock(settings),
        on_delivered=(lambda sink: metrics.alerts.labels(sink).inc()) if metrics else None,
        on_failed=(lambda sink: metrics.alert_failures.labels(sink).inc()) if metrics else None,
    )
    alerts = AlertThread(alerter) if alerter.sinks else None
    serve(options.metrics_port, options.metrics_host)

    def tick() -> None:
        try:
            if first_training is not None:
                first_training()  # before scoring: the hours it makes scorable are pending now
            catch_up()
        except FleetwatchError as exc:  # one line; the next tick tries again
            log.error("this tick did not complete: %s; the next tick tries again", exc)
        if alerts is not None:
            alerts.poke()  # delivered in its own thread: a slow webhook never holds scoring

    live_state: dict[str, Any] = {}

    def live() -> None:
        from fleetwatch.scoring.live import live_tick

        try:
            done = live_tick(Scoring.of(settings), lambda: scoring_lock(settings))
        except FleetwatchError as exc:
            log.error("this live tick did not complete: %s; the next one tries again", exc)
            return
        live_state.update(
            last_live_tick=done.at.isoformat(),
            live_windows=done.windows,
            **(
                {"live_lag_s": round(done.lag_s, 1), "live_lag_max_s": round(done.lag_max_s, 1)}
                if done.lag_s is not None and done.lag_max_s is not None
                else {}
            ),
        )
        if alerts is not None and done.runs:
            alerts.poke()

    scheduler = BackgroundScheduler(timezone=UTC)
    trigger = make_trigger(settings)
    started = datetime.now(UTC)
    write_state(settings, started, started)
    scheduler.add_job(
        tick,
        trigger,
        id="score",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(options.misfire_grace),
        next_run_time=datetime.now(UTC),
    )
    if options.live:
        scheduler.add_job(
            live,
            IntervalTrigger(seconds=options.live_every, timezone=UTC),
            id="live",
            max_instances=1,
            coalesce=True,
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
    if alerts is not None:
        alerts.start()
    scheduler.start()
    job = scheduler.get_job("score")
    log.info("scheduler started; next tick %s", job.next_run_time if job else None)
    shown: tuple[Any, ...] | None = None
    try:
        while not stopped.wait(0.5):
            job = scheduler.get_job("score")
            upcoming = job.next_run_time if job else None
            now_shown = (upcoming, live_state.get("last_live_tick"))
            if now_shown != shown:  # what `fleetwatch status` shows of this scheduler
                write_state(settings, started, upcoming, live_state if options.live else None)
                shown = now_shown
    finally:
        scheduler.shutdown(wait=True)  # waits for a running job: the current hour completes
        if alerts is not None:
            alerts.stop()
    log.info("scheduler stopped cleanly")
    return 0


def describe_trigger(settings: Settings) -> str:
    options = settings.schedule
    described = f"every {options.every:g}s" if options.every else f"cron {options.cron!r} (UTC)"
    if options.live:
        described += f"; live every {options.live_every:g}s"
    return described


def write_state(
    settings: Settings,
    started: datetime,
    next_run: datetime | None,
    live: dict[str, Any] | None = None,
) -> None:
    """What ``fleetwatch status`` shows of the running scheduler."""
    import json
    import os
    import socket

    from fleetwatch.storage.atomic import write_text_atomically

    state = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": started.isoformat(),
        "trigger": describe_trigger(settings),
        "last_tick": datetime.now(UTC).isoformat(),
        "next_tick": None if next_run is None else next_run.astimezone(UTC).isoformat(),
        **({"live": True, **live} if live is not None else {}),
    }
    write_text_atomically(settings.layout.scheduler_state, json.dumps(state))


def next_tick(settings: Settings, now: datetime | None = None) -> datetime | None:
    now = now or datetime.now(UTC)
    fire: datetime | None = make_trigger(settings).get_next_fire_time(None, now)
    return fire
