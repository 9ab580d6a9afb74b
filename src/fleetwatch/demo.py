"""``fleetwatch demo``: the whole system on the embedded broker, end to end, in about a minute.

Broker -> topics -> simulator (accelerated clock, clean training hours, labelled anomalies) ->
aggregation worker (a real ``fleetwatch aggregate`` process) -> training on the clean hours ->
live scoring of every window as it closes (alerts to a JSONL file in its logs folder) and the
scheduler's catch-up scoring the following hours as they close -> precision and recall against
the injected labels, and the time to alert per fault kind. Every process it starts is stopped
again, also on Ctrl-C.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleetwatch.aggregate.progress import closed_through
from fleetwatch.alerts import Alerter
from fleetwatch.brokers.embedded import EmbeddedBroker
from fleetwatch.brokers.topics import ensure_topics
from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError, InvalidInputError
from fleetwatch.evaluation.datasets import from_spec
from fleetwatch.evaluation.metrics import Report
from fleetwatch.evaluation.metrics import evaluate as evaluate_points
from fleetwatch.evaluation.run import predictions
from fleetwatch.scheduler.service import CatchUp, scoring_lock
from fleetwatch.scoring.incidents import began_in_alerted_incident
from fleetwatch.scoring.live import live_tick
from fleetwatch.scoring.score import Scoring
from fleetwatch.scoring.train import train
from fleetwatch.simulators.fleet import FleetSpec
from fleetwatch.simulators.publish import simulate, spec_from_settings
from fleetwatch.storage.layout import HOUR, DataLayout
from fleetwatch.storage.locks import FolderUse
from fleetwatch.storage.store import storage_error
from fleetwatch.telemetry import MAX_EVENT_MS, MIN_EVENT_MS

log = logging.getLogger("fleetwatch.demo")


def _prepare(data_dir: Path | str) -> tuple[DataLayout, FolderUse]:
    """A fresh data directory, held for this demo: only ever emptied when an earlier demo made
    it and no other process uses it."""
    if isinstance(data_dir, str):
        raise FleetwatchError(
            f"the demo runs on a local folder, not {data_dir}; pass --data-dir DIR "
            "(aggregate, train, score and schedule take s3:// data dirs)"
        )
    layout = DataLayout.open(data_dir)
    layout.check_writable_folder()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(str(data_dir), exc) from None
    use = FolderUse(data_dir).take("pass another --data-dir, or stop that process first")
    if any(data_dir.iterdir()) and not layout.demo_marker.exists():
        use.release()
        raise FleetwatchError(
            f"{data_dir} is not empty and was not made by the demo; pass --data-dir NEW_DIR"
        )
    layout.empty_local()
    layout.demo_marker.write_text("made by fleetwatch demo; the next demo run replaces it\n")
    layout.logs.mkdir()
    return layout, use.share()  # the demo's own aggregator shares it from now on


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _wait_closed(
    settings: Settings, until: datetime, deadline: float, why: str, outcome: dict[str, Any]
) -> None:
    while True:
        closed = closed_through(settings.layout, settings.kafka.telemetry_topic)
        if closed is not None and closed >= until:
            return
        if "error" in outcome:  # the simulator died: nothing more will close
            raise FleetwatchError(f"the simulator stopped: {outcome['error']}")
        if time.monotonic() > deadline:
            raise FleetwatchError(f"timed out waiting for {why} (closed through {closed})")
        time.sleep(0.5)


def _start_dashboard(
    settings: Settings, env: dict[str, str], log_path: Path, deadline: float
) -> tuple[subprocess.Popen[bytes] | None, str | None]:
    """``fleetwatch dashboard`` over the demo's data folder, in its own process (DuckDB allows
    one configuration per file and process: the demo writes, the dashboard reads). Returns the
    process and its URL, or no URL when it could not start (the demo goes on without it)."""
    options = settings.dashboard
    with log_path.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetwatch", "dashboard", "--host", options.host,
             "--port", str(options.port)],
            env=env, stdout=handle, stderr=handle,
        )  # fmt: skip
    wait_until = min(deadline, time.monotonic() + 20)
    while time.monotonic() < wait_until:
        text = log_path.read_text(errors="replace")
        if "http://" in text:
            return process, text[text.index("http://") :].split()[0]
        if process.poll() is not None:
            break
        time.sleep(0.1)
    if process.poll() is None:
        process.terminate()
    lines = log_path.read_text(errors="replace").strip().splitlines()
    _say(f"the dashboard did not start ({lines[-1] if lines else 'no output'}); going on")
    return None, None


def evaluate(settings: Settings, spec: FleetSpec, since: datetime, until: datetime) -> Report:
    """The demo's detection figures, by :mod:`fleetwatch.evaluation`'s code: each reading the
    simulator published between ``since`` and ``until`` (generated again: the fleet is
    deterministic) judged by its window's flag, against the injected anomalies."""
    dataset = from_spec(spec, round(until.timestamp() * 1000))
    times = dataset.times
    test = times >= round(since.timestamp() * 1000)
    window_ms = round(settings.aggregate.window * 1000)
    predicted, _ = predictions(settings.layout, dataset.devices, times, window_ms)
    return evaluate_points(
        dataset.truth[test], predicted[test], dataset.episodes[test], dataset.kinds
    )


class Live:
    """The demo's live scoring (``schedule --live``) and alerts to a JSONL file: each alert's
    wall-clock arrival is noted, for the time to alert per fault kind."""

    def __init__(self, settings: Settings, sink: Path) -> None:
        self.settings = settings
        self.sink = sink
        self.scoring = Scoring.of(settings)
        alerts = replace(settings.alerts, jsonl=sink, silent=False)
        self.alerter = Alerter(replace(settings, alerts=alerts), self.lock)
        self.arrived: dict[str, float] = {}
        self.alerts: list[dict[str, Any]] = []
        self.read = 0

    def lock(self) -> Any:
        return scoring_lock(self.settings)

    def __call__(self) -> None:
        live_tick(self.scoring, self.lock)
        self.alerter()
        if not self.sink.exists():
            return
        with self.sink.open("rb") as handle:
            handle.seek(self.read)
            lines = handle.read().split(b"\n")
        self.read += sum(len(line) + 1 for line in lines[:-1])  # whole lines only
        now = time.time()
        for line in lines[:-1]:
            alert = json.loads(line)
            if alert["alert_id"] not in self.arrived:
                self.arrived[alert["alert_id"]] = now
                self.alerts.append(alert)

    def time_to_alert(
        self, labels: Path, since: datetime, start: datetime, started: float, speed: float
    ) -> dict[str, dict[str, Any]]:
        """Per fault kind after ``since``: faults, how many alerted, how many began while an
        incident of their device was open and alerted already (they continue it: no alert of
        their own), the median simulated minutes from the fault's start to the close of its
        first anomalous window that alerted, the median wall-clock seconds from that close to
        the alert, and the hourly path's minutes (the hour's end + 5 min, its cron tick)."""
        import pandas as pd

        from fleetwatch.storage.duck import connect

        faults = pd.read_parquet(labels)
        faults = faults[pd.to_datetime(faults["start"], utc=True) >= pd.Timestamp(since)]
        window = timedelta(seconds=self.settings.aggregate.window)
        closing = timedelta(seconds=self.settings.aggregate.grace)
        with connect(self.settings.layout.database, read_only=True) as db:
            flagged = db.execute(
                "SELECT device_id, window_start, window_end FROM scores WHERE is_anomaly"
            ).df()
            incidents = db.execute(
                "SELECT device_id, window_start, window_end FROM incidents"
            ).fetchall()
        alerted_incidents = {
            (a["device_id"], datetime.fromisoformat(a["window_start"]))
            for a in self.alerts
            if a.get("kind") == "anomaly"
        }
        rows: dict[str, list[tuple[float, float] | None]] = {}
        continued: dict[str, int] = {}
        hourly: dict[str, list[float]] = {}
        spans = zip(
            faults["device_id"],
            faults["kind"].astype(str),
            pd.to_datetime(faults["start"], utc=True),
            pd.to_datetime(faults["end"], utc=True),
            strict=True,
        )
        for device_id, kind, first, last in spans:
            begin, end = first.to_pydatetime(), last.to_pydatetime() + window
            hour_end = begin.replace(minute=0, second=0, microsecond=0) + HOUR
            hourly.setdefault(kind, []).append(
                (hour_end + timedelta(minutes=5) - begin).total_seconds() / 60
            )
            answered = [
                self.arrived[a["alert_id"]]
                for a in self.alerts
                if a.get("kind") == "anomaly"
                and a["device_id"] == device_id
                and datetime.fromisoformat(a["window_start"]) < end
                and datetime.fromisoformat(a["window_end"]) > begin
            ]
            mine = flagged[
                (flagged["device_id"] == device_id)
                & (flagged["window_end"] > pd.Timestamp(begin))
                & (flagged["window_start"] < pd.Timestamp(end))
            ]
            if not answered or mine.empty:
                rows.setdefault(kind, []).append(None)
                if began_in_alerted_incident(device_id, begin, incidents, alerted_incidents):
                    continued[kind] = continued.get(kind, 0) + 1
                continue
            closed = mine["window_end"].min().to_pydatetime() + closing
            closed_wall = started + (closed - start).total_seconds() / speed
            rows.setdefault(kind, []).append(
                ((closed - begin).total_seconds() / 60, max(0.0, min(answered) - closed_wall))
            )
        summary: dict[str, dict[str, Any]] = {}
        for kind in sorted(rows):
            found = [row for row in rows[kind] if row is not None]
            summary[kind] = {
                "faults": len(rows[kind]),
                "alerted": len(found),
                "continued": continued.get(kind, 0),
                "data_min": statistics.median(r[0] for r in found) if found else None,
                "wall_s": statistics.median(r[1] for r in found) if found else None,
                "hourly_min": statistics.median(hourly[kind]),
            }
        return summary


def _check_span(start: datetime, end: datetime) -> None:
    """The demo's simulated readings lie where readings can (2000..2100), else every one would
    be dead-lettered: said before anything starts or an earlier demo's folder is emptied."""
    if start.timestamp() * 1000 < MIN_EVENT_MS or end.timestamp() * 1000 >= MAX_EVENT_MS:
        raise InvalidInputError(
            f"--start {start:%Y-%m-%dT%H:%MZ}: the demo's readings (to {end:%Y-%m-%dT%H:%MZ}) "
            "would be outside 2000..2100, the times readings can have: give a start in that range"
        )


def run_demo(settings: Settings) -> int:
    options = settings.demo
    start = options.start or datetime.now(UTC).replace(
        minute=0, second=0, microsecond=0
    ) - timedelta(days=1)
    train_until = start + timedelta(seconds=options.train_for)
    end = train_until + timedelta(seconds=options.score_for)
    _check_span(start, end)
    layout, in_use = _prepare(settings.data_dir)
    data_dir = layout.local
    labels_path = layout.demo_labels
    logs = layout.logs
    started = time.monotonic()
    deadline = started + options.timeout
    stop = threading.Event()
    processes: list[subprocess.Popen[bytes]] = []
    simulator: threading.Thread | None = None
    broker = EmbeddedBroker(settings.broker.host, 0)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C
    try:
        broker.start()
        _say(f"embedded broker at {broker.bootstrap_servers} (memory-only)")
        kafka = replace(settings.kafka, bootstrap_servers=broker.bootstrap_servers, timeout=10.0)
        settings = replace(settings, kafka=kafka)
        ensure_topics(kafka)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")} | {
            "FLEETWATCH_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "FLEETWATCH_TELEMETRY_TOPIC": kafka.telemetry_topic,
            "FLEETWATCH_DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
            "FLEETWATCH_DATA_DIR": str(data_dir),
            "FLEETWATCH_AGGREGATE_REBALANCE_TIMEOUT": "5s",
            "FLEETWATCH_AGGREGATE_IDLE_TIMEOUT": "3s",
            "FLEETWATCH_AGGREGATE_WINDOW": str(settings.aggregate.window),
            "FLEETWATCH_AGGREGATE_GRACE": str(settings.aggregate.grace),
        }
        with (logs / "aggregate.log").open("ab") as handle:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "fleetwatch", "aggregate"],
                    env=env,
                    stdout=handle,
                    stderr=handle,
                )
            )
        _say(f"aggregation worker started (log: {logs / 'aggregate.log'})")
        dashboard, url = _start_dashboard(settings, env, logs / "dashboard.log", deadline)
        if dashboard is not None:
            processes.append(dashboard)
            _say(f"dashboard at {url} (live while the demo runs)")

        simulated = (end - start).total_seconds()
        simulator_settings = replace(
            settings,
            simulate=replace(
                settings.simulate,
                devices=options.devices,
                sensors=options.sensors,
                interval=options.interval,
                speed=options.speed,
                start=start,
                duration=None if options.keep_running else simulated,
                seed=options.seed,
                anomaly_rate=options.anomaly_rate,
                clean_for=options.train_for,
                labels=labels_path,
                daily_cycle=options.daily_cycle,
                drift=options.drift,
                progress=False,
            ),
        )
        _say(
            f"simulating {options.devices} devices x {options.sensors} sensors from "
            f"{start:%Y-%m-%dT%H:%M}Z, {options.speed:g}x real time; the first "
            f"{options.train_for / 3600:g} h are anomaly-free for training"
        )
        outcome: dict[str, Any] = {}

        def run_simulator() -> None:
            try:
                outcome["summary"] = simulate(simulator_settings, stop=stop)
            except Exception as exc:  # said once by the demo, never a thread's traceback
                outcome["error"] = exc

        simulator = threading.Thread(target=run_simulator, daemon=True)
        simulator_started = time.time()
        simulator.start()

        _wait_closed(settings, train_until, deadline, "the training hours to close", outcome)
        summary = train(
            replace(settings, train=replace(settings.train, progress=False)), start, train_until
        )
        _say(
            f"trained {len(summary.trained)} device models on "
            f"{start:%H:%M}-{train_until:%H:%M} (skipped {len(summary.skipped)})"
        )

        catch_up = CatchUp(settings)
        live = Live(settings, layout.logs / "alerts.jsonl")
        hours = int(options.score_for // 3600)
        while True:
            live()  # the windows closed since the last tick, and their alerts
            for result in catch_up():
                _say(
                    f"scored {result.window_start:%Y-%m-%dT%H}: {result.devices_scored} devices,"
                    f" {result.anomalies} anomalous windows"
                )
            scored = {r.window_start for r in catch_up.results if r.status == "succeeded"}
            if not options.keep_running and len({h for h in scored if h >= train_until}) >= hours:
                break
            if not options.keep_running and time.monotonic() > deadline:
                raise FleetwatchError("the demo ran out of time before every hour was scored")
            time.sleep(options.tick)
        simulator.join(30)
        if "error" in outcome:
            raise FleetwatchError(f"the simulator stopped: {outcome['error']}")

        report = evaluate(
            settings, spec_from_settings(simulator_settings, options.seed), train_until, end
        )
        sim = outcome.get("summary")
        _say(f"done in {time.monotonic() - started:.0f} s")
        print()
        runs = catch_up.results
        scored_hours = sorted({r.window_start for r in runs if r.status == "succeeded"})
        span = f"{scored_hours[0]:%H:%M}-{scored_hours[-1] + HOUR:%H:%M}" if scored_hours else "-"
        print(
            f"hours scored        {len(scored_hours)} ({span} simulated: the {hours} scored "
            f"hours and the training hours), in {len(runs)} runs"
        )
        print(f"devices             {options.devices} ({len(summary.trained)} with a model)")
        print(f"messages            {sim.messages_sent if sim else '?'}")
        counts = report.counts
        print(
            f"readings judged     {counts.tp + counts.fp + counts.fn + counts.tn} after training "
            f"({counts.tp + counts.fn} in injected anomalies)"
        )
        print(
            f"precision           {counts.precision:.2f} (flagged readings in an injected anomaly)"
        )
        print(f"recall              {counts.recall:.2f} (readings of anomalies flagged)")
        print(f"F1, FAR             {counts.f1:.2f}, {counts.far:.1f}% of normal readings flagged")
        print(
            "found by kind       "
            + ", ".join(f"{k} {found}/{total}" for k, (found, total, _) in report.by_kind.items())
        )
        delays = live.time_to_alert(
            labels_path, train_until, start, simulator_started, options.speed
        )
        if delays:
            print(
                "time to alert       live scoring, per kind: the median simulated time from a "
                "fault's first reading to the close of the first window that alerted, + the "
                "wall-clock time to score and send it (hourly: at the hour's close + 5 min)"
            )
            for kind, row in delays.items():
                print(
                    f"  {kind:<17} {row['alerted']}/{row['faults']} alerted"
                    + (
                        f" ({row['continued']} more began in an incident already alerted)"
                        if row["continued"]
                        else ""
                    )
                    + ": "
                    + (
                        f"{row['data_min']:.1f} min + {row['wall_s']:.1f} s"
                        if row["alerted"]
                        else "none"
                    )
                    + f" (hourly: {row['hourly_min']:.0f} min)"
                )
        print()
        print("try:")
        # printed suggestions for the user, never executed here
        prefix = f"fleetwatch sql --data-dir {data_dir}"
        print(
            f'  {prefix} "SELECT device_id, count(*) AS anomalies, min(score) FROM anomalies '
            'GROUP BY 1 ORDER BY 2 DESC LIMIT 10"'
        )
        print(
            f'  {prefix} "SELECT window_start, status, devices_scored, rows_scored FROM runs '
            'ORDER BY window_start"'
        )
        print(
            f'  {prefix} "SELECT sensor, round(avg(mean), 3) AS mean, sum(count) AS readings '
            'FROM aggregates GROUP BY 1"'
        )
        if url is not None and options.dashboard and dashboard is not None:
            print()
            print(f"dashboard           {url} (open until Ctrl-C)", flush=True)
            try:
                dashboard.wait()
            except KeyboardInterrupt:
                return 0
            raise FleetwatchError(f"the dashboard stopped (log: {logs / 'dashboard.log'})")
        if url is not None:
            print(f"  fleetwatch dashboard --data-dir {data_dir}   # then open {url}")
        return 0
    except KeyboardInterrupt:
        _say("interrupted: stopping everything")
        return 130
    finally:
        stop.set()
        # its producer flushed and closed before the broker goes (unless Ctrl-C came before
        # it started: a thread never started cannot be joined)
        if simulator is not None and simulator.ident is not None:
            simulator.join(30)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        broker.stop()
        in_use.release()
        signal.signal(signal.SIGTERM, previous)
