"""Alerts: one per incident and per silent device, to a webhook and/or a JSONL file.

After each scheduler tick, new incidents (see :mod:`fleetwatch.scoring.incidents`) and devices
that went silent become rows of DuckDB's ``alerts`` table (id, kind, device, payload), under
the scoring lock; then each pending row is delivered to each configured sink, outside the
lock. An alert is marked per sink as soon as that sink took it: the mark goes to a journal
file beside the database at once (one fsync'ed line), and the journal is folded into the
``alerts`` table at the end of the pass and at the start of the next one. A restart therefore
delivers what is still pending and nothing twice, except the one alert a crash may interrupt
between its sink taking it and its mark: at most one repeat per crash (each alert carries its
``alert_id`` to deduplicate).

- ``webhook``: a JSON POST, ``webhook_timeout`` per attempt, ``webhook_retries`` more attempts
  with backoff; still failing, it is logged and stays pending for the next tick. Delivery runs
  in its own thread: a slow or dead webhook never holds scoring up.
- ``jsonl``: one JSON object per line, appended and flushed to disk.

Ids: ``incident:<device>@<first window>`` and ``silent:<device>@<end of its last data>``.

With live scoring (``schedule --live``) an incident is found, and alerted, from provisional
scores; the final run of its hour agreeing sends nothing more. When that final run no longer
finds it (late data changed its windows, or it now starts earlier: its id changed), the alert
gets one follow-up, ``retracted:<device>@<first window>`` (``kind: retracted``, ``refers_to``
the alert it retracts), once every hour it covered is final; an alert not yet delivered
anywhere is dropped instead.
Incidents that ended more than ``max_age`` before the newest scored window are recorded
without being sent (a first start on a year of history does not page anyone).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleetwatch.config import Settings
from fleetwatch.faults import point
from fleetwatch.storage.duck import connect, has_table

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id VARCHAR PRIMARY KEY, kind VARCHAR, device_id VARCHAR,
    created_at TIMESTAMPTZ, payload VARCHAR,
    webhook_at TIMESTAMPTZ, jsonl_at TIMESTAMPTZ,   -- when each sink took it
    attempts INTEGER, last_error VARCHAR, skipped BOOLEAN
);
"""
SINKS = ("webhook", "jsonl")


def check_webhook_url(url: str) -> None:
    """An http(s) URL with a host, or nothing: else one line at start (the URL is a secret: it
    is not shown), not an error at every tick."""
    if not url:
        return
    from urllib.parse import urlsplit

    from fleetwatch.errors import ConfigError

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "--webhook-url is not an http:// or https:// URL with a host (it is not shown: it "
            "may hold a token)"
        )


class Alerter:
    """Records and delivers alerts for one data folder (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        lock: Callable[[], Any],
        on_delivered: Callable[[str], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = settings.alerts
        self.layout = settings.layout
        self.lock = lock  # the scoring lock: DuckDB has one writer
        self.on_delivered = on_delivered or (lambda sink: None)
        self.on_failed = on_failed or (lambda sink: None)

    @property
    def sinks(self) -> list[str]:
        chosen = []
        if self.options.webhook_url:
            chosen.append("webhook")
        if self.options.jsonl is not None:
            chosen.append("jsonl")
        return chosen

    def __call__(self) -> int:
        """Record new alerts and deliver the pending ones; how many deliveries succeeded."""
        if not self.sinks or not self.layout.database.exists():
            return 0
        with self.lock():
            pending = self._record()
        delivered: dict[str, list[str]] = {sink: [] for sink in self.sinks}
        failures: dict[str, tuple[list[str], str]] = {}
        for alert_id, payload, done in pending:
            for sink in self.sinks:
                if sink in done:
                    continue
                error = self._send(sink, payload)
                if error is None:
                    self._journal(alert_id, sink)  # marked now: a crash repeats only this one
                    point("alerts.delivered")
                    delivered[sink].append(alert_id)
                    self.on_delivered(sink)
                else:
                    failures.setdefault(sink, ([], error))[0].append(alert_id)
                    self.on_failed(sink)
        if any(delivered.values()) or failures:
            with self.lock():
                self._mark(delivered, failures)
        for sink, (ids, error) in failures.items():
            log.warning(
                "%d alerts not delivered to the %s sink (%s); they stay pending and are sent "
                "at the next tick",
                len(ids),
                sink,
                error,
            )
        return sum(len(ids) for ids in delivered.values())

    # ------------------------------------------------------------------ recording

    def _record(self) -> list[tuple[str, dict[str, Any], set[str]]]:
        with connect(self.layout.database, read_only=False) as connection:
            connection.execute(SCHEMA)
            self._fold_journal(connection)
            now = datetime.now(UTC)
            if has_table(connection, "incidents"):
                self._record_incidents(connection, now)
                self._record_retractions(connection, now)
            if self.options.silent and has_table(connection, "device_runs"):
                self._record_silent(connection, now)
            rows = connection.execute(
                "SELECT alert_id, payload, webhook_at IS NOT NULL, jsonl_at IS NOT NULL "
                "FROM alerts WHERE NOT skipped AND (webhook_at IS NULL OR jsonl_at IS NULL) "
                "ORDER BY created_at, alert_id"
            ).fetchall()
        pending = []
        for alert_id, payload, webhook_done, jsonl_done in rows:
            done = {s for s, d in (("webhook", webhook_done), ("jsonl", jsonl_done)) if d}
            if set(self.sinks) - done:
                pending.append((alert_id, json.loads(payload), done))
        return pending

    def _record_incidents(self, connection: Any, now: datetime) -> None:
        newest = connection.execute("SELECT max(window_end) FROM incidents").fetchone()
        if newest is None or newest[0] is None:
            return
        oldest = newest[0] - timedelta(seconds=self.options.max_age)
        rows = connection.execute(
            "SELECT incident_id, device_id, window_start, window_end, windows, peak_score, "
            "top_sensors, status, model_version FROM incidents i "
            "WHERE NOT EXISTS (SELECT 1 FROM alerts a WHERE a.alert_id = 'incident:' || "
            "i.incident_id) ORDER BY window_start"
        ).fetchall()
        for incident_id, device_id, start, end, windows, peak, top, status, version in rows:
            payload = {
                "alert_id": f"incident:{incident_id}",
                "kind": "anomaly",
                "device_id": device_id,
                "window_start": start.isoformat(),
                "window_end": end.isoformat(),
                "windows": windows,
                "peak_score": peak,
                "top_sensors": top,
                "status": status,
                "model_version": version,
                "created_at": now.isoformat(),
            }
            self._insert(connection, payload, now, skipped=end < oldest)

    def _record_retractions(self, connection: Any, now: datetime) -> None:
        """Alerted incidents that no longer exist once the hours they covered are final."""
        rows = connection.execute(
            """
            SELECT a.alert_id, a.device_id, a.payload,
                   a.webhook_at IS NOT NULL OR a.jsonl_at IS NOT NULL AS delivered
            FROM alerts a
            WHERE a.kind = 'anomaly' AND NOT a.skipped
              AND NOT EXISTS (SELECT 1 FROM incidents i
                              WHERE 'incident:' || i.incident_id = a.alert_id)
              AND NOT EXISTS (SELECT 1 FROM alerts b
                              WHERE b.alert_id = 'retracted:' || substr(a.alert_id, 10))
            """
        ).fetchall()
        for alert_id, device_id, payload, delivered in rows:
            original = json.loads(payload)
            start = datetime.fromisoformat(original["window_start"])
            end = datetime.fromisoformat(original["window_end"])
            if not self._final(connection, start, end):
                continue  # provisional scores may still change: decide when they are final
            if not delivered:
                connection.execute(
                    "UPDATE alerts SET skipped = true WHERE alert_id = ?", [alert_id]
                )
                continue
            retraction = {
                "alert_id": "retracted:" + alert_id.removeprefix("incident:"),
                "kind": "retracted",
                "device_id": device_id,
                "refers_to": alert_id,
                "window_start": original["window_start"],
                "window_end": original["window_end"],
                "reason": "the final scoring of its hours does not find this incident",
                "created_at": now.isoformat(),
            }
            self._insert(connection, retraction, now, skipped=False)

    @staticmethod
    def _final(connection: Any, start: datetime, end: datetime) -> bool:
        """Every hour from ``start``'s to ``end``'s has a succeeded whole-hour run."""
        first = start.replace(minute=0, second=0, microsecond=0)
        hours = math.ceil((end - first).total_seconds() / 3600)
        row = connection.execute(
            "SELECT count(DISTINCT window_start) FROM runs WHERE scope = 'hour' "
            "AND status = 'succeeded' AND window_start >= ? AND window_start < ?",
            [first, end],
        ).fetchone()
        return bool(row) and int(row[0]) >= max(hours, 1)

    def _record_silent(self, connection: Any, now: datetime) -> None:
        """A device whose latest outcome is ``silent``, since the end of its last hour with
        data (one alert per silence, however many hours it lasts)."""
        rows = connection.execute(
            """
            WITH outcomes AS (
                SELECT d.device_id, d.outcome, r.window_start, r.window_end,
                    row_number() OVER (PARTITION BY d.device_id
                        ORDER BY r.window_start DESC, r.started_at DESC) AS latest
                FROM device_runs d JOIN runs r USING (run_id) WHERE r.status <> 'aborted'
            )
            SELECT o.device_id, o.window_start,
                (SELECT max(p.window_end) FROM outcomes p
                 WHERE p.device_id = o.device_id AND p.outcome <> 'silent')
            FROM outcomes o WHERE o.latest = 1 AND o.outcome = 'silent'
            """
        ).fetchall()
        for device_id, hour, since in rows:
            since = since or hour
            payload = {
                "alert_id": f"silent:{device_id}@{since.isoformat()}",
                "kind": "silent",
                "device_id": device_id,
                "silent_since": since.isoformat(),
                "hour": hour.isoformat(),
                "created_at": now.isoformat(),
            }
            self._insert(connection, payload, now, skipped=False)

    @staticmethod
    def _insert(connection: Any, payload: dict[str, Any], now: datetime, skipped: bool) -> None:
        connection.execute(
            "INSERT INTO alerts (alert_id, kind, device_id, created_at, payload, attempts, "
            "skipped) VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT DO NOTHING",
            [
                payload["alert_id"],
                payload["kind"],
                payload["device_id"],
                now,
                json.dumps(payload, default=str),
                skipped,
            ],
        )

    def _journal(self, alert_id: str, sink: str) -> None:
        """Mark one delivery durably at once (the journal is folded into DuckDB later)."""
        path = self.layout.alert_journal
        line = json.dumps({"alert_id": alert_id, "sink": sink, "at": datetime.now(UTC).isoformat()})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # the mark at the end of the pass still records it
            log.warning("alert delivery not journalled (%s): a crash now would repeat it", exc)

    def _fold_journal(self, connection: Any) -> None:
        """Deliveries journalled and not yet in ``alerts`` (a crash came first): marked now,
        then the journal emptied."""
        path = self.layout.alert_journal
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        by_sink: dict[str, list[str]] = {}
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:  # the last line of a write cut by the crash
                continue
            if entry.get("sink") in SINKS and isinstance(entry.get("alert_id"), str):
                by_sink.setdefault(entry["sink"], []).append(entry["alert_id"])
        self._set_delivered(connection, by_sink, datetime.now(UTC))
        path.unlink(missing_ok=True)

    @staticmethod
    def _set_delivered(connection: Any, delivered: dict[str, list[str]], now: datetime) -> None:
        for sink, ids in delivered.items():
            if ids and sink in SINKS:  # sink is one of SINKS: a fixed column name
                connection.execute(
                    f"UPDATE alerts SET {sink}_at = coalesce({sink}_at, ?) "  # noqa: S608
                    "WHERE alert_id IN (SELECT unnest(?::VARCHAR[]))",
                    [now, ids],
                )

    def _mark(
        self, delivered: dict[str, list[str]], failures: dict[str, tuple[list[str], str]]
    ) -> None:
        now = datetime.now(UTC)
        with connect(self.layout.database, read_only=False) as connection:
            self._set_delivered(connection, delivered, now)
            self.layout.alert_journal.unlink(missing_ok=True)  # all of it is in the table now
            for ids, error in failures.values():
                connection.execute(
                    "UPDATE alerts SET attempts = attempts + 1, last_error = ? "
                    "WHERE alert_id IN (SELECT unnest(?::VARCHAR[]))",
                    [error[:500], ids],
                )

    # ------------------------------------------------------------------ delivering

    def _send(self, sink: str, payload: dict[str, Any]) -> str | None:
        """Deliver one alert; None, or why it failed (after the retries)."""
        if sink == "jsonl":
            return self._append(payload)
        error = None
        for attempt in range(self.options.webhook_retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
            error = self._post(payload)
            if error is None:
                return None
        return error

    def _post(self, payload: dict[str, Any]) -> str | None:
        request = urllib.request.Request(  # noqa: S310 - the operator's own http(s) URL
            self.options.webhook_url.reveal(),
            data=json.dumps(payload, default=str).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "fleetwatch-alerts"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.options.webhook_timeout) as response:  # noqa: S310
                response.read()
            return None
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"{type(exc).__name__}: {reason}"  # never the URL: it may hold a token

    def _append(self, payload: dict[str, Any]) -> str | None:
        path = self.options.jsonl
        if path is None:
            return "no jsonl file configured"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(payload, default=str) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            return f"{path}: {exc.strerror or exc}"
        return None


class AlertThread:
    """Runs an :class:`Alerter` after each scheduler tick, in its own thread."""

    def __init__(self, alerter: Alerter) -> None:
        self.alerter = alerter
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fleetwatch-alerts", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def poke(self) -> None:
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.thread.join(
            timeout=self.alerter.options.webhook_timeout
            * (self.alerter.options.webhook_retries + 2)
        )

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait()
            self.wake.clear()
            try:
                self.alerter()
            except Exception as exc:  # alerting must never stop the scheduler
                log.warning("alerts not processed this tick: %s: %s", type(exc).__name__, exc)


def read_alerts(path: Path) -> list[dict[str, Any]]:
    """The alerts in a JSONL sink file (for tests and tools)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
