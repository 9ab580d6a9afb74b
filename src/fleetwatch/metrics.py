"""Prometheus metrics of ``fleetwatch aggregate`` and ``fleetwatch schedule`` (``--metrics-port``).

With prometheus-client, the standard library for them. The aggregation's figures are read from
its own counters when Prometheus scrapes (a collector: nothing is added to the per-message
path); the scheduler's are updated after each run and tick. Names follow Prometheus's
conventions: a ``fleetwatch_`` prefix, base units in the name (``_seconds``), ``_total`` on
counters. Served on ``--metrics-host`` (default 127.0.0.1) at ``/metrics``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fleetwatch.errors import FleetwatchError

if TYPE_CHECKING:
    from fleetwatch.aggregate.coordinator import Aggregator
    from fleetwatch.scoring.score import RunResult

log = logging.getLogger(__name__)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (0: not at all)."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise FleetwatchError(
            f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "pick a free port"
        ) from None
    log.info("metrics on http://%s:%d/metrics", host, port)


class AggregationCollector(Collector):
    """The aggregation worker's counters and gauges, read from its state at each scrape."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def collect(self) -> Iterator[Any]:
        snapshot = self.aggregator.metrics_snapshot()
        counters = (
            ("messages_consumed", "messages", "Telemetry messages consumed"),
            ("readings_consumed", "readings", "Readings aggregated into windows"),
            ("late_readings", "late", "Readings for closed windows, sent to the late sink"),
            ("windows_written", "windows", "Windows written to Parquet"),
        )
        for name, key, text in counters:
            family = CounterMetricFamily(f"fleetwatch_{name}", text)
            family.add_metric([], snapshot["totals"][key])
            yield family
        dead = CounterMetricFamily(
            "fleetwatch_dead_letters", "Messages sent to the dead-letter topic", labels=["reason"]
        )
        for reason, count in sorted(snapshot["dead_lettered_by_reason"].items()):
            dead.add_metric([reason], count)
        yield dead
        lag = GaugeMetricFamily(
            "fleetwatch_consumer_lag_messages",
            "Records between the partition's position and its high watermark",
            labels=["partition"],
        )
        age = GaugeMetricFamily(
            "fleetwatch_checkpoint_age_seconds",
            "Seconds since the partition's last checkpoint",
            labels=["partition"],
        )
        for partition, row in sorted(snapshot["partitions"].items()):
            if row["lag"] is not None:
                lag.add_metric([str(partition)], row["lag"])
            if row["checkpoint_age"] is not None:
                age.add_metric([str(partition)], row["checkpoint_age"])
        yield lag
        yield age
        open_windows = GaugeMetricFamily("fleetwatch_open_windows", "Windows not yet closed")
        open_windows.add_metric([], snapshot["open_windows"])
        yield open_windows


_COLLECTOR: list[AggregationCollector] = []  # the one registered in this process


def watch_aggregation(aggregator: Aggregator, port: int, host: str) -> None:
    """Expose ``aggregator``'s figures on ``host:port`` (0: not at all)."""
    if not port:
        return
    for collector in _COLLECTOR:
        REGISTRY.unregister(collector)
    _COLLECTOR[:] = [AggregationCollector(aggregator)]
    REGISTRY.register(_COLLECTOR[0])
    serve(port, host)


@functools.cache
def scheduler_metrics() -> SchedulerMetrics:
    """The process's scheduler metrics (registered once)."""
    return SchedulerMetrics()


class SchedulerMetrics:
    """The scheduler's metrics, updated after each run and tick."""

    def __init__(self) -> None:
        self.runs = Counter(
            "fleetwatch_scoring_runs", "Scoring runs, by status", ["status"], registry=None
        )
        self.duration = Histogram(
            "fleetwatch_scoring_run_duration_seconds",
            "Duration of scoring runs",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=None,
        )
        self.devices = Counter(
            "fleetwatch_scored_devices",
            "Devices in scoring runs, by outcome",
            ["outcome"],
            registry=None,
        )
        self.last_devices = Gauge(
            "fleetwatch_last_run_devices",
            "Devices in the latest scoring run, by outcome",
            ["outcome"],
            registry=None,
        )
        self.pending = Gauge(
            "fleetwatch_pending_hours", "Closed hours with devices still to score", registry=None
        )
        self.anomalies = Counter(
            "fleetwatch_anomalous_windows", "Anomalous windows found", registry=None
        )
        self.alerts = Counter(
            "fleetwatch_alerts_sent", "Alerts delivered, by sink", ["sink"], registry=None
        )
        self.alert_failures = Counter(
            "fleetwatch_alert_delivery_failures",
            "Alert deliveries that failed after their retries, by sink",
            ["sink"],
            registry=None,
        )
        self.last_tick = Gauge(
            "fleetwatch_scheduler_last_tick_timestamp_seconds",
            "When the scheduler last finished a tick (Unix time)",
            registry=None,
        )
        for metric in (
            self.runs,
            self.duration,
            self.devices,
            self.last_devices,
            self.pending,
            self.anomalies,
            self.alerts,
            self.alert_failures,
            self.last_tick,
        ):
            REGISTRY.register(metric)

    def run(self, result: RunResult, seconds: float) -> None:
        self.runs.labels(result.status).inc()
        self.duration.observe(seconds)
        outcomes = {
            "scored": result.devices_scored,
            "failed": result.devices_failed,
            "no_model": result.devices_without_model,
            "silent": result.devices_silent,
        }
        for outcome, count in outcomes.items():
            self.devices.labels(outcome).inc(count)
            self.last_devices.labels(outcome).set(count)
        self.anomalies.inc(result.anomalies)

    def tick(self, pending_hours: int) -> None:
        self.pending.set(pending_hours)
        self.last_tick.set(time.time())
