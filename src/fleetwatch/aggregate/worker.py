"""``fleetwatch aggregate``: the Faust worker that turns telemetry into Parquet windows.

Faust provides the process model (``faust worker``: a consumer group whose members share the
partitions), rebalancing, signal handling and the producer. Its per-event ``Stream`` path costs
about 150 us per message here (several asyncio tasks per event), so this worker replaces the
consumer's drain loop with a batch one: the records Faust's consumer fetched are handed, a
partition's batch at a time, to a :class:`PartitionProcessor`, which windows them with numpy.

Order of durability, per checkpoint: closed windows and late readings are written (fsync +
rename), the dead-letter producer is flushed, the checkpoint file is saved, then the offset is
committed to Kafka.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from fleetwatch.aggregate.processor import PartitionProcessor, restore
from fleetwatch.aggregate.windows import WindowSpec
from fleetwatch.brokers.clients import admin_client
from fleetwatch.config import Settings
from fleetwatch.errors import BrokerError
from fleetwatch.ingest.telemetry import InvalidReason
from fleetwatch.storage.checkpoints import Checkpoint, CheckpointStore
from fleetwatch.storage.parquet import AGGREGATE_SCHEMA, LATE_SCHEMA, PartitionedParquetSink

log = logging.getLogger("fleetwatch.aggregate")


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, draining whole fetched batches instead of single events."""

    async def _drain_messages(self, fetcher: Any) -> None:
        handler: Aggregator = self.app.fleetwatch_aggregator  # type: ignore[attr-defined]
        try:
            while not (self.should_stop or fetcher.should_stop):
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop or not self.flow_active:
                    await asyncio.sleep(0)
                    continue
                batches = {
                    tp: batch for tp, batch in records.items() if active is None or tp in active
                }
                await handler.on_records(batches)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class FleetwatchApp(faust.App):
    """A Faust app whose consumer drains batches (see :class:`BatchConsumer`)."""

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


class Aggregator:
    """Owns one processor per assigned partition; checkpoints, logs, closes idle partitions."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        options = settings.aggregate
        self.topic = settings.kafka.telemetry_topic
        self.dead_letter_topic = settings.kafka.dead_letter_topic
        self.spec = WindowSpec(round(options.window * 1000), round(options.grace * 1000))
        data = settings.data_dir
        codec = options.parquet_compression
        self.aggregates = PartitionedParquetSink(data / "aggregates", AGGREGATE_SCHEMA, codec)
        self.late = PartitionedParquetSink(data / "late", LATE_SCHEMA, codec)
        self.state_dir = data / "state" / "aggregate" / self.topic
        self.checkpoints = CheckpointStore(self.state_dir)
        self.processors: dict[int, PartitionProcessor] = {}
        self.saved: dict[int, Checkpoint] = {}  # last checkpoint written per partition
        self.lock = asyncio.Lock()
        self.pending_dead: list[tuple[int, bytes | None, bytes | None, str, str]] = []
        self.last_record_at: dict[int, float] = {}
        self.last_checkpoint_at = time.monotonic()
        self.started_at = time.time()
        self.first_record_at: float | None = None
        self.last_activity_at: float | None = None
        self.totals = {"messages": 0, "readings": 0, "late": 0, "dead_lettered": 0, "windows": 0}
        self._last_log = (time.monotonic(), 0)
        self.status_path = self.state_dir / f"status-{socket.gethostname()}-{os.getpid()}.json"

    # ------------------------------------------------------------------ records

    async def on_records(self, batches: Mapping[TP, list[Any]]) -> None:
        async with self.lock:
            now = time.monotonic()
            closed: list[int] = []
            for tp, records in batches.items():
                processor = self.processors.get(tp.partition)
                if tp.topic != self.topic or processor is None or not records:
                    continue
                if self.first_record_at is None:
                    self.first_record_at = time.time()
                self.last_activity_at = time.time()
                self.last_record_at[tp.partition] = now
                dead_before = len(self.pending_dead)
                if processor.process([(r.offset, r.key, r.value) for r in records]):
                    closed.append(tp.partition)
                await self._send_dead_letters(tp.partition, dead_before)
            for partition in closed:
                await self._checkpoint(partition)

    def _dead_letter(self, partition: int) -> Any:
        def collect(
            offset: int, key: bytes | None, value: bytes | None, reason: InvalidReason, detail: str
        ) -> None:
            self.pending_dead.append((offset, key, value, reason, detail))

        return collect

    async def _send_dead_letters(self, partition: int, start: int) -> None:
        for offset, key, value, reason, detail in self.pending_dead[start:]:
            headers = [
                ("fleetwatch.reason", reason.encode()),
                ("fleetwatch.detail", detail.encode(errors="replace")[:1000]),
                ("fleetwatch.source.topic", self.topic.encode()),
                ("fleetwatch.source.partition", str(partition).encode()),
                ("fleetwatch.source.offset", str(offset).encode()),
            ]
            await self.app.producer.send(
                self.dead_letter_topic, key, value or b"", None, None, headers
            )
        del self.pending_dead[start:]

    # ------------------------------------------------------------------ durability

    async def _checkpoint(self, partition: int) -> None:
        processor = self.processors[partition]
        checkpoint = processor.checkpoint()  # writes late readings
        await self.app.producer.flush()  # dead letters are durable before the commit
        if self.saved.get(partition) == checkpoint:
            return  # a quiet partition: nothing new to save or commit
        self.checkpoints.save(partition, checkpoint)
        self.saved[partition] = checkpoint
        if checkpoint.offset is not None:
            try:
                consumer: Any = self.app.consumer  # Faust's commit of explicit offsets
                await consumer._commit({TP(self.topic, partition): checkpoint.offset})
            except Exception as exc:  # the checkpoint file is the source of truth
                log.warning("partition %d: offset commit failed (%s)", partition, exc)

    async def checkpoint_all(self) -> None:
        for partition in list(self.processors):
            await self._checkpoint(partition)
        self.last_checkpoint_at = time.monotonic()

    # ------------------------------------------------------------------ rebalancing

    async def on_assigned(self, assigned: set[TP]) -> None:
        async with self.lock:
            for tp in sorted(assigned):
                if tp.topic != self.topic or tp.partition in self.processors:
                    continue
                processor = restore(
                    tp.partition,
                    self.spec,
                    self.checkpoints,
                    self.aggregates,
                    self.late,
                    self._dead_letter(tp.partition),
                    self.settings.aggregate.max_open_windows,
                )
                self.processors[tp.partition] = processor
                self.last_record_at[tp.partition] = time.monotonic()
                if processor.next_offset is not None:
                    await self.app.consumer.seek(tp, processor.next_offset)
                log.info(
                    "partition %d assigned, resuming at offset %s",
                    tp.partition,
                    processor.next_offset
                    if processor.next_offset is not None
                    else "the committed/earliest one",
                )

    async def on_revoked(self, revoked: set[TP]) -> None:
        async with self.lock:
            for tp in sorted(revoked):
                if tp.topic == self.topic and tp.partition in self.processors:
                    await self._checkpoint(tp.partition)
                    self._retire(tp.partition)
                    log.info("partition %d revoked", tp.partition)

    def _retire(self, partition: int) -> None:
        processor = self.processors.pop(partition)
        self.saved.pop(partition, None)
        counters = processor.counters
        self.totals["messages"] += counters.messages
        self.totals["readings"] += counters.readings
        self.totals["late"] += counters.late_readings
        self.totals["dead_lettered"] += sum(counters.dead_lettered.values())
        self.totals["windows"] += counters.windows_written

    async def on_shutdown(self) -> None:
        async with self.lock:
            await self.checkpoint_all()
            for partition in list(self.processors):
                self._retire(partition)
            self.write_status()
            log.info("stopped cleanly: closed windows written, offsets committed")

    # ------------------------------------------------------------------ timers

    async def tick(self) -> None:
        """Every second: idle partitions, periodic checkpoints, the log line."""
        async with self.lock:
            now = time.monotonic()
            idle = self.settings.aggregate.idle_timeout
            for partition, processor in self.processors.items():
                # Silent means nothing new *in Kafka*: a partition the fetcher has not served
                # for a while but that still has records waiting is not idle.
                if (
                    processor.open
                    and now - self.last_record_at.get(partition, now) >= idle
                    and self._caught_up(partition, processor)
                ):
                    processor.close_all()
                    await self._checkpoint(partition)
                    log.info(
                        "partition %d idle for %.0fs: closed its open windows", partition, idle
                    )
            if now - self.last_checkpoint_at >= self.settings.aggregate.checkpoint_interval:
                await self.checkpoint_all()
            if now - self._last_log[0] >= self.settings.aggregate.log_interval:
                self._log_line(now)
                self.write_status()

    def _highwater(self, partition: int) -> int | None:
        try:
            mark = self.app.consumer.highwater(TP(self.topic, partition))
        except Exception:  # nothing fetched from it yet
            return None
        return None if mark is None else int(mark)

    def _caught_up(self, partition: int, processor: PartitionProcessor) -> bool:
        mark = self._highwater(partition)
        return (
            mark is not None
            and processor.next_offset is not None
            and (processor.next_offset >= mark)
        )

    def stats(self) -> dict[str, Any]:
        totals = dict(self.totals)
        open_windows = 0
        dead_by_reason: dict[str, int] = {}
        lag = 0
        for partition, processor in self.processors.items():
            counters = processor.counters
            totals["messages"] += counters.messages
            totals["readings"] += counters.readings
            totals["late"] += counters.late_readings
            totals["dead_lettered"] += sum(counters.dead_lettered.values())
            totals["windows"] += counters.windows_written
            for reason, count in counters.dead_lettered.items():
                dead_by_reason[reason] = dead_by_reason.get(reason, 0) + count
            open_windows += processor.open_count
            highwater = self._highwater(partition)
            if highwater is not None and processor.next_offset is not None:
                lag += max(0, highwater - processor.next_offset)
        return {
            **totals,
            "open_windows": open_windows,
            "lag": lag,
            "dead_lettered_by_reason": dead_by_reason,
            "partitions": sorted(self.processors),
            "started_at": self.started_at,
            "first_record_at": self.first_record_at,
            "last_activity_at": self.last_activity_at,
            "pid": os.getpid(),
        }

    def _log_line(self, now: float) -> None:
        stats = self.stats()
        then, readings_then = self._last_log
        rate = (stats["readings"] - readings_then) / max(now - then, 1e-9)
        self._last_log = (now, stats["readings"])
        log.info(
            "%s readings/s, %s open windows, lag %s, dead-lettered %s, late %s, windows written "
            "%s, partitions %s",
            f"{rate:,.0f}",
            f"{stats['open_windows']:,}",
            f"{stats['lag']:,}",
            f"{stats['dead_lettered']:,}",
            f"{stats['late']:,}",
            f"{stats['windows']:,}",
            stats["partitions"],
        )

    def write_status(self) -> None:
        """A JSON status file beside the checkpoints, for `status` commands and benchmarks."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.status_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.stats()))
        os.replace(temporary, self.status_path)


def _credentials(settings: Settings) -> Any:
    kafka = settings.kafka
    if kafka.security_protocol.startswith("SASL"):
        context = None
        if kafka.security_protocol == "SASL_SSL":
            context = ssl.create_default_context(cafile=kafka.ssl_cafile or None)
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.reveal(),
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(ssl.create_default_context(cafile=kafka.ssl_cafile or None))
    return None


def check_ready(settings: Settings) -> None:
    """Fail fast with one line if the broker is unreachable or the topic is missing."""
    with admin_client(settings.kafka) as admin:
        topics = set(admin.list_topics())
    for name in (settings.kafka.telemetry_topic, settings.kafka.dead_letter_topic):
        if name not in topics:
            raise BrokerError(
                f"topic {name} does not exist on {settings.kafka.bootstrap_servers}; "
                "create it with `fleetwatch topics create`"
            )


def build_app(settings: Settings) -> tuple[faust.App, Aggregator]:
    options = settings.aggregate
    faust_dir = Path(settings.data_dir) / "state" / "faust"
    faust_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level itself
    servers = [s.strip() for s in settings.kafka.bootstrap_servers.split(",") if s.strip()]
    timeout = options.rebalance_timeout
    app = FleetwatchApp(
        options.group_id,
        broker=[f"kafka://{server}" for server in servers],
        broker_credentials=_credentials(settings),
        web_enabled=False,
        topic_disable_leader=True,
        store="memory://",
        datadir=str(faust_dir),
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=timeout,
        broker_rebalance_timeout=timeout,
        broker_heartbeat_interval=max(0.5, timeout / 5),
        broker_request_timeout=max(timeout * 3, 30.0),
        broker_commit_interval=3600.0,  # commits are ours, after the files are durable
        consumer_max_fetch_size=8 * 1024 * 1024,
        producer_acks=-1,
        producer_compression_type=None,
        stream_wait_empty=False,
        worker_redirect_stdouts=False,
    )
    aggregator = Aggregator(app, settings)
    app.fleetwatch_aggregator = aggregator  # type: ignore[attr-defined]
    topic = app.topic(
        settings.kafka.telemetry_topic, key_serializer="raw", value_serializer="raw", acks=False
    )
    app.topics.add(topic)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(app: faust.App, assigned: set[TP], **_: Any) -> None:
        await aggregator.on_assigned(assigned)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(app: faust.App, revoked: set[TP], **_: Any) -> None:
        await aggregator.on_revoked(revoked)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _shutdown(app: faust.App, **_: Any) -> None:
        await aggregator.on_shutdown()

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def _tick() -> None:
        await aggregator.tick()

    return app, aggregator


def run_worker(settings: Settings) -> int:
    """Run the worker in the foreground until SIGTERM/SIGINT."""
    check_ready(settings)
    app, _ = build_app(settings)
    log.info(
        "aggregating %s -> %s (window %gs, grace %gs, idle timeout %gs, group %s)",
        settings.kafka.telemetry_topic,
        settings.data_dir / "aggregates",
        settings.aggregate.window,
        settings.aggregate.grace,
        settings.aggregate.idle_timeout,
        settings.aggregate.group_id,
    )
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
