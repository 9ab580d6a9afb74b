"""``fleetwatch aggregate``: the Faust worker that turns telemetry into Parquet windows.

Wiring only: a Faust app (:mod:`fleetwatch.aggregate.faust_adapter`) whose consumer delivers
fetched batches to the :class:`~fleetwatch.aggregate.coordinator.Aggregator`, Faust's rebalance
signals and a one-second timer connected to it. Order of durability, per checkpoint: closed
windows and late readings are written (fsync + rename), dead letters are flushed, the
checkpoint file is saved, then the offset is committed to Kafka.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable
from typing import Any

import faust
from faust.types import TP

from fleetwatch.aggregate.coordinator import AggregationSetup, Aggregator
from fleetwatch.aggregate.faust_adapter import (
    FaustReceiver,
    FaustSource,
    FleetwatchApp,
    check_private_surface,
    install_record_tuples,
)
from fleetwatch.aggregate.processor import OrphanedFilesError
from fleetwatch.aggregate.progress import checkpoints
from fleetwatch.brokers.clients import admin_client, ssl_context
from fleetwatch.brokers.topics import topic_id
from fleetwatch.config import Settings
from fleetwatch.errors import BrokerError, FleetwatchError
from fleetwatch.storage.checkpoints import CheckpointStore
from fleetwatch.storage.layout import DataLayout, by_partition
from fleetwatch.storage.parquet import PartitionedParquetSink
from fleetwatch.storage.store import storage_error

log = logging.getLogger("fleetwatch.aggregate")


def _credentials(settings: Settings) -> Any:
    kafka = settings.kafka
    if kafka.security_protocol.startswith("SASL"):
        context = None
        if kafka.security_protocol == "SASL_SSL":
            context = ssl_context(kafka)
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.reveal(),
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(ssl_context(kafka))
    return None


def check_ready(settings: Settings) -> None:
    """Fail fast with one line if the broker is unreachable, the topic is missing, or the
    data folder holds aggregates its checkpoints no longer vouch for."""
    with admin_client(settings.kafka) as admin:
        topics = set(admin.list_topics())
        for name in (settings.kafka.telemetry_topic, settings.kafka.dead_letter_topic):
            if name not in topics:
                raise BrokerError(
                    f"topic {name} does not exist on {settings.kafka.bootstrap_servers}; "
                    "create it with `fleetwatch topics create`"
                )
        described = admin.describe_topics([settings.kafka.telemetry_topic])
    partitions = len(described[0]["partitions"]) if described else 0
    layout = settings.layout
    layout.check_writable_folder()
    store = checkpoints(layout, settings.kafka.telemetry_topic)
    check_no_other_topic(settings, store, topic_id(settings.kafka, settings.kafka.telemetry_topic))
    sink = PartitionedParquetSink(layout, "aggregates")
    listed = by_partition(sink.listing())
    for partition in range(partitions):
        existing = sink.has_files(partition, listed.get(partition, []))
        if existing is not None and store.load(partition) is None:
            raise OrphanedFilesError(
                f"aggregates of partition {partition} exist ({existing}) but its checkpoint "
                f"{store.describe(partition)} does not (the state folder was lost or moved): "
                "restore it, or move the aggregates away to rebuild them from Kafka"
            )


def check_no_other_topic(
    settings: Settings, store: CheckpointStore, current: str | None, now: float | None = None
) -> None:
    """Refuse, in one line, to write a data folder that a running worker fills from another
    topic of the same name (another Kafka cluster, another embedded broker): its windows would
    mix with ours. A recorded topic id nobody writes from any more is a reset (the topic was
    created again), which the workers handle (``on_offset_reset``)."""
    recorded = store.load_topic_state()
    if recorded is None or recorded.topic_id is None or current is None:
        return
    if recorded.topic_id == current:
        return
    stale_after = 3 * settings.aggregate.log_interval + 30
    now = time.time() if now is None else now
    for status in store.statuses():
        if status.get("topic_id") != recorded.topic_id or status.get("stopped"):
            continue
        updated = status.get("updated_at")
        if not isinstance(updated, int | float) or now - updated > stale_after:
            continue
        pid, host = status.get("pid"), status.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            continue
        raise FleetwatchError(
            f"{settings.data_dir} is being filled from another topic named "
            f"{settings.kafka.telemetry_topic} (topic id {recorded.topic_id}, by pid {pid} on "
            f"{host}); this broker's has id {current}: use another --data-dir, or stop that "
            "worker first"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_app(settings: Settings) -> tuple[FleetwatchApp, Aggregator]:
    options = settings.aggregate
    setup = AggregationSetup.of(settings)
    faust_dir = setup.layout.faust_state
    try:
        faust_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    except OSError as exc:
        raise storage_error(str(faust_dir), exc) from None
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
    aggregator = Aggregator(setup, FaustSource(app, settings))
    receiver = FaustReceiver(aggregator, settings.kafka.telemetry_topic)
    app.receiver = receiver
    topic = app.topic(
        settings.kafka.telemetry_topic, key_serializer="raw", value_serializer="raw", acks=False
    )
    app.topics.add(topic)
    name = settings.kafka.telemetry_topic

    def ours(tps: set[TP]) -> list[int]:
        return [tp.partition for tp in tps if tp.topic == name]

    async def reported(work: Awaitable[None]) -> None:
        """A failure in a rebalance or the timer: said in one line (ours) or with its
        traceback (anything else), remembered so that shutdown does not call it clean."""
        try:
            await work
        except FleetwatchError as exc:
            if receiver.failure is None:
                receiver.failure = exc
                log.error("%s", exc)
            raise
        except Exception as exc:
            if receiver.failure is None:
                receiver.failure = exc
                log.exception("aggregation stopped: %s: %s", type(exc).__name__, exc)
            raise

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(app: faust.App, assigned: set[TP], **_: Any) -> None:
        await reported(aggregator.on_assigned(ours(assigned)))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(app: faust.App, revoked: set[TP], **_: Any) -> None:
        await reported(aggregator.on_revoked(ours(revoked)))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _shutdown(app: faust.App, **_: Any) -> None:
        await aggregator.on_shutdown(receiver.failure)

    @app.timer(1.0)  # type: ignore[untyped-decorator]
    async def _tick() -> None:
        await reported(aggregator.tick())

    return app, aggregator


def run_worker(settings: Settings) -> int:
    """Run the worker in the foreground until SIGTERM/SIGINT; its exit code."""
    from fleetwatch.metrics import watch_aggregation

    check_private_surface()
    install_record_tuples()
    in_use = settings.layout.use()  # held for the worker's life: a demo cannot empty it
    check_ready(settings)
    app, aggregator = build_app(settings)
    options = settings.aggregate
    watch_aggregation(aggregator, options.metrics_port, options.metrics_host)
    log.info(
        "aggregating %s -> %s (window %gs, grace %gs, idle timeout %gs, group %s)",
        settings.kafka.telemetry_topic,
        DataLayout.open(settings.data_dir, settings.local_dir).store.describe("aggregates"),
        settings.aggregate.window,
        settings.aggregate.grace,
        settings.aggregate.idle_timeout,
        settings.aggregate.group_id,
    )
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:  # pragma: no cover - execute_from_commandline always exits
        code = 0
    reason = worker.crash_reason or app.crash_reason
    if code and reason is not None and app.receiver is not None and app.receiver.failure is None:
        # Faust exits 1 on a crash without saying why; say it (errors of ours were said)
        log.error(
            "the worker stopped after an error: %s: %s",
            type(reason).__name__,
            reason,
            exc_info=(type(reason), reason, reason.__traceback__),
        )
    in_use.release()
    return code
