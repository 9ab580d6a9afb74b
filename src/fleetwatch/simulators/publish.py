"""``fleetwatch simulate``: publish a simulated fleet's telemetry to Kafka.

Generation (:mod:`fleetwatch.simulators.fleet`) is deterministic; this module adds the producer,
wall-clock pacing (``--speed``), the progress bar, the labels file and the summary.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka.errors import KafkaError

from fleetwatch.brokers.clients import delivery_error, event_time_span, finish, make_producer
from fleetwatch.config import Settings
from fleetwatch.output import progress_bar
from fleetwatch.simulators.anomalies import write_labels
from fleetwatch.simulators.fleet import FleetSpec, FleetStream, Message


@dataclass
class SimulationSummary:
    seed: int
    messages_sent: int = 0
    messages_failed: int = 0
    readings: int = 0
    late: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    anomalies: dict[str, int] = field(default_factory=dict)
    first_event: str | None = None
    last_event: str | None = None
    elapsed_s: float = 0.0
    interrupted: bool = False
    first_error: str | None = None

    @property
    def messages_per_s(self) -> float:
        return self.messages_sent / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.elapsed_s if self.elapsed_s else 0.0

    def as_record(self) -> dict[str, Any]:
        return {
            "messages_sent": self.messages_sent,
            "messages_failed": self.messages_failed,
            "readings": self.readings,
            "late": self.late,
            "malformed": self.malformed,
            "anomalies": self.anomalies,
            "first_event": self.first_event,
            "last_event": self.last_event,
            "elapsed_s": self.elapsed_s,
            "messages_per_s": self.messages_per_s,
            "readings_per_s": self.readings_per_s,
            "seed": self.seed,
            "interrupted": self.interrupted,
            "first_error": self.first_error,
        }


def spec_from_settings(settings: Settings, seed: int) -> FleetSpec:
    sim = settings.simulate
    start = sim.start or datetime.now(UTC).replace(microsecond=0)
    clean_for = sim.clean_for
    if sim.resume:
        span = event_time_span(settings.kafka, settings.kafka.telemetry_topic)
        if span is not None:
            first_ms, newest_ms = span
            interval_ms = max(1, round(sim.interval * 1000))
            resumed_ms = (newest_ms // interval_ms + 1) * interval_ms
            start = datetime.fromtimestamp(resumed_ms / 1000, UTC)
            clean_for = max(0.0, (first_ms + sim.clean_for * 1000 - resumed_ms) / 1000)
    return FleetSpec(
        devices=sim.devices,
        sensors=sim.sensors,
        start=start,
        interval_s=sim.interval,
        seed=seed,
        device_prefix=sim.device_prefix,
        anomaly_rate=sim.anomaly_rate,
        anomaly_kinds=tuple(sim.anomaly_kinds),
        clean_for_s=clean_for,
        daily_cycle=sim.daily_cycle,
        drift=sim.drift,
        late_fraction=sim.late_fraction,
        late_delay_s=sim.late_delay,
        malformed_fraction=sim.malformed_fraction,
    )


class _DeliveryTracker:
    """Counts failed deliveries from the producer's callbacks (they run on its I/O thread)."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None

    def on_error(self, exc: BaseException) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = delivery_error(exc)


def check_settings(settings: Settings) -> None:
    """What the simulator is asked, checked before it connects or sends anything."""
    from fleetwatch.errors import InvalidInputError
    from fleetwatch.telemetry import MAX_EVENT_MS, MIN_EVENT_MS, is_valid_name

    sim = settings.simulate
    example = f"{sim.device_prefix}-{sim.devices:04d}"
    if not is_valid_name(example):
        raise InvalidInputError(
            f"--device-prefix {sim.device_prefix!r} makes device ids like {example!r}, which are "
            "not 1-64 of [A-Za-z0-9_.-]: use letters, digits, '_', '-', '.'"
        )
    if sim.duration is not None and sim.duration * 1000 < max(sim.interval * 1000, 1):
        raise InvalidInputError(
            f"--duration {sim.duration:g}s is shorter than one --interval ({sim.interval:g}s): "
            "nothing would be sent; give a longer one"
        )
    if sim.start is not None:
        first_ms = sim.start.timestamp() * 1000
        last_ms = first_ms + (sim.duration or 0) * 1000
        if first_ms < MIN_EVENT_MS or last_ms >= MAX_EVENT_MS:
            raise InvalidInputError(
                f"--start {sim.start:%Y-%m-%dT%H:%MZ}"
                + (f" --duration {sim.duration:g}s" if sim.duration else "")
                + " is outside 2000..2100, the times readings can have (every reading would go "
                "to the dead-letter topic): give a start in that range"
            )
    if sim.labels is not None:
        import tempfile

        try:  # a file can be made in its folder (made if need be); the labels come at the end
            sim.labels.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=sim.labels.parent, prefix=".labels-probe-"):
                pass
            if sim.labels.is_dir() or (sim.labels.exists() and not os.access(sim.labels, os.W_OK)):
                raise PermissionError(13, "not a writable file")
        except OSError as exc:
            raise InvalidInputError(
                f"--labels {sim.labels}: cannot be written ({exc.strerror}); give a writable "
                "path (the labels are written when the run ends)"
            ) from None


def simulate(
    settings: Settings, *, stop_after_s: float | None = None, stop: threading.Event | None = None
) -> SimulationSummary:
    """Run the simulator per ``settings.simulate``; returns the summary (also on Ctrl-C).

    Stops after ``--messages``, after ``--duration`` of simulated time, or on Ctrl-C; late
    messages still held back are sent before it returns, and the producer is flushed.
    ``stop_after_s`` bounds the wall-clock time; ``stop`` ends the run from another thread.
    """
    sim = settings.simulate
    check_settings(settings)  # before anything is sent: nothing to lose afterwards
    seed = sim.seed if sim.seed is not None else int.from_bytes(os.urandom(4), "big")
    spec = spec_from_settings(settings, seed)
    stream = FleetStream(spec)
    topic = settings.kafka.telemetry_topic
    producer = make_producer(settings.kafka)
    tracker = _DeliveryTracker()
    summary = SimulationSummary(seed=seed)

    last_tick: int | None = None
    last_sent_tick = 0
    unsent: tuple[list[Message], int] | None = None
    if sim.duration is not None:
        last_tick = max(0, math.ceil(sim.duration * 1000 / spec.interval_ms) - 1)
    total: float | None = sim.messages
    if total is None and last_tick is not None:
        total = (last_tick + 1) * spec.devices

    def send(messages: list[Message], simulated_ms: int) -> None:
        # The record's timestamp is the producer's clock, which the aggregator holds event
        # times to (see [aggregate] future_limit): the simulated clock where it runs ahead of
        # the wall clock, else the wall clock (time-based retention reads it too).
        stamp = max(simulated_ms, int(time.time() * 1000))
        for key, value in messages:
            try:
                producer.send(topic, key=key, value=value, timestamp_ms=stamp).add_errback(
                    tracker.on_error
                )
            except KafkaError as exc:  # no metadata or a full buffer within --timeout
                tracker.on_error(exc)
            summary.messages_sent += 1

    started = time.monotonic()
    try:
        with progress_bar("simulate", total, sim.progress) as bar:
            next_refresh = started
            for tick, messages in stream.ticks(sim.messages):
                if last_tick is not None and tick > last_tick:
                    break
                # generated (and counted): sent even when Ctrl-C comes during the pause
                unsent = (messages, stream.tick_time_ms(tick))
                if sim.speed > 0:
                    due = started + tick * spec.interval_s / sim.speed
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                send(*unsent)
                unsent = None
                last_sent_tick = tick
                if tracker.failed:
                    break  # the broker is refusing or gone: stop, flush and report
                if stop is not None and stop.is_set():
                    summary.interrupted = True
                    break
                now = time.monotonic()
                if stop_after_s is not None and now - started > stop_after_s:
                    break
                if bar is not None and now >= next_refresh:
                    rate = summary.messages_sent / max(now - started, 1e-9)
                    bar.update(
                        bar.task_ids[0],
                        completed=stream.counters.generated,
                        rate=f"{rate:,.0f} msg/s",
                    )
                    next_refresh = now + 0.2
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        try:
            if unsent is not None:
                if tracker.failed:
                    tracker.failed += len(unsent[0])
                    summary.messages_sent += len(unsent[0])
                else:
                    send(*unsent)
            held = stream.drain_late()
            if tracker.failed:
                tracker.failed += len(held)  # never sent: the broker was already failing
                summary.messages_sent += len(held)
            else:
                send(held, stream.tick_time_ms(last_sent_tick))
        except KeyboardInterrupt:
            summary.interrupted = True
        except KafkaError as exc:
            tracker.on_error(exc)
        finally:
            try:
                finish(producer)  # every message counted delivered or failed
            except KeyboardInterrupt:
                summary.interrupted = True
    summary.elapsed_s = time.monotonic() - started

    counters = stream.counters
    labels = stream.close()
    if sim.labels is not None:
        write_labels(labels, sim.labels, keep_existing=sim.resume)
    summary.messages_failed = tracker.failed
    summary.messages_sent -= tracker.failed
    summary.first_error = tracker.first_error
    summary.readings = counters.readings
    summary.late = counters.late
    summary.malformed = dict(sorted(counters.malformed.items()))
    kinds: dict[str, int] = {}
    for label in labels:
        kinds[label.kind] = kinds.get(label.kind, 0) + 1
    summary.anomalies = dict(sorted(kinds.items()))
    if counters.first_event_ms is not None and counters.last_event_ms is not None:
        summary.first_event = _iso(counters.first_event_ms)
        summary.last_event = _iso(counters.last_event_ms)
    return summary


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
