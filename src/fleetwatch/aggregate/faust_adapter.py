"""The one module that touches Faust's and aiokafka's internals; everything else uses this.

Faust provides the worker process model (a consumer group whose members share the partitions),
rebalancing, signal handling and the producer. Its per-event ``Stream`` path costs about 150 us
per message here (several asyncio tasks per event: 6.7k messages/s with an empty agent,
``stream.take()`` included), far from the 15k messages/s (150k readings/s) a worker must do, so
the consumer's drain loop is replaced by one that hands whole fetched batches to the
:class:`~fleetwatch.aggregate.coordinator.Aggregator`.

Read against faust-streaming 0.15.3 and aiokafka 0.14.0 (the bounds in ``pyproject.toml`` admit
the releases whose code here was compared with this surface: faust-streaming >=0.11,<0.16 and
aiokafka >=0.10,<0.15). What is used that is not public, each once, below:

- ``faust.transport.consumer.Consumer._drain_messages(fetcher)``: replaced by
  :meth:`BatchConsumer._drain_messages`. Upstream turns each fetched record into a Faust
  event; ours delivers a partition's batch at once. Like upstream's ``getmany``, it does not
  deliver records fetched while the flow is stopped (a rebalance began) or under an older
  consumer generation; unlike upstream, which re-seeks to the committed offsets, it seeks those
  partitions back to what the aggregator has read, so nothing fetched is lost. Like upstream, it
  returns quietly when cancelled or stopped while the app stops.
- ``Consumer._wait_next_records(timeout)``: the fetch that upstream's ``getmany`` wraps
  (returns the records by partition and the active partitions).
- ``Consumer._commit(offsets)``: Faust's commit of explicit offsets (its public ``commit``
  commits what its streams acked, and there are no streams here).
- ``App._new_transport()``: overridden so the app's consumer is a :class:`BatchConsumer`.
- ``ThreadDelegateConsumer._thread`` and ``AIOKafkaConsumerThread._ensure_consumer()``: the
  aiokafka consumer in Faust's consumer thread, for its public ``last_poll_timestamp(tp)``
  (when the broker last answered a fetch of the partition, which Faust does not pass on):
  :meth:`FaustSource.answered_age`, so that a broker outage is not taken for idle devices.
- aiokafka's ``PartitionRecords._consumer_record(tp, record)``: replaced in the worker's
  process (:func:`install_record_tuples`) so that a fetched record becomes the coordinator's
  ``(offset, key, value, timestamp)`` tuple where it is unpacked, instead of an 11-field
  ``ConsumerRecord`` the receiver then turned into that tuple (one object a record instead of
  two, on the consumer's thread, which shares the GIL with the hot path). A consumer with
  deserializers (none in the worker) gets upstream's records. Read against aiokafka 0.10-0.14,
  where it is the same function.

:func:`check_private_surface` checks that all of it still exists with the expected shape; the
worker calls it at start (an upgrade that changed it fails there, with a clear message, not
somewhere in the middle of a rebalance) and ``tests/unit/aggregate/test_faust_adapter.py`` runs
it in the suite.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.consumer import fetcher as aiokafka_fetcher
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from fleetwatch.aggregate.coordinator import Aggregator, Headers
from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError, PrivateSurfaceError

log = logging.getLogger("fleetwatch.aggregate")

READ_AGAINST = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


def check_private_surface() -> None:
    """Raise :class:`PrivateSurfaceError` naming what changed, if anything did."""
    problems = []
    base = faust_consumer.Consumer
    expected = {
        (base, "_drain_messages"): ["self", "fetcher"],
        (base, "_wait_next_records"): ["self", "timeout"],
        (faust_aiokafka.Consumer, "_commit"): ["self", "offsets"],
        (faust.App, "_new_transport"): ["self"],
        (aiokafka_fetcher.PartitionRecords, "_consumer_record"): ["self", "tp", "record"],
    }
    for (owner, name), parameters in expected.items():
        member = getattr(owner, name, None)
        if member is None or not callable(member):
            problems.append(f"{owner.__module__}.{owner.__qualname__}.{name} is gone")
            continue
        found = list(inspect.signature(member).parameters)
        if found != parameters:
            problems.append(
                f"{owner.__qualname__}.{name}{tuple(found)} no longer takes {tuple(parameters)}"
            )
    if not callable(getattr(faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer", None)):
        problems.append("faust's AIOKafkaConsumerThread has no _ensure_consumer()")
    delegate = inspect.getsource(faust_consumer.ThreadDelegateConsumer.__init__)
    if "self._thread = " not in delegate:
        problems.append("faust's ThreadDelegateConsumer no longer keeps its thread in _thread")
    polled = getattr(AIOKafkaConsumer, "last_poll_timestamp", None)
    if polled is None or list(inspect.signature(polled).parameters) != ["self", "partition"]:
        problems.append("aiokafka's AIOKafkaConsumer.last_poll_timestamp(partition) changed")
    for name in ("flow_active", "consumer_stopped_errors"):
        if not hasattr(faust_aiokafka.Consumer, name):
            problems.append(f"faust's aiokafka Consumer has no {name}")
    if not hasattr(faust.App, "consumer_generation_id"):
        problems.append("faust.App has no consumer_generation_id")
    records = inspect.signature(aiokafka_fetcher.PartitionRecords.__init__).parameters
    if not {"key_deserializer", "value_deserializer"} <= set(records):
        problems.append("aiokafka's PartitionRecords no longer takes its deserializers")
    if problems:
        from importlib.metadata import version

        raise PrivateSurfaceError(
            f"faust-streaming {version('faust-streaming')} changed what fleetwatch's adapter "
            f"relies on ({'; '.join(problems)}); it was read against {READ_AGAINST}: install "
            "a version within pyproject.toml's bounds, or update fleetwatch.aggregate."
            "faust_adapter"
        )


_UPSTREAM_RECORD = aiokafka_fetcher.PartitionRecords._consumer_record  # noqa: SLF001


def _record_tuple(self: Any, tp: Any, record: Any) -> Any:
    if self._key_deserializer or self._value_deserializer:
        return _UPSTREAM_RECORD(self, tp, record)
    return (record.offset, record.key, record.value, record.timestamp)


def install_record_tuples() -> None:
    """Fetched records become ``(offset, key, value, timestamp)`` tuples where aiokafka
    unpacks them (see the module docstring); for the worker's process only."""
    aiokafka_fetcher.PartitionRecords._consumer_record = _record_tuple  # noqa: SLF001


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, draining whole fetched batches to the aggregator."""

    app: FleetwatchApp

    async def _drain_messages(self, fetcher: Any) -> None:
        app = self.app
        receiver = app.receiver
        try:
            while not (self.should_stop or fetcher.should_stop):
                generation = app.consumer_generation_id
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    await asyncio.sleep(0)
                    continue
                if receiver is None:
                    continue
                stale = not self.flow_active or app.consumer_generation_id != generation
                mine = {
                    tp: batch
                    for tp, batch in records.items()
                    if not stale and (active is None or tp in active)
                }
                left = [tp for tp in records if tp not in mine]
                if left:
                    await receiver.rewind(left)
                if mine:
                    await receiver.deliver(mine)
                # Give the loop back after every batch: with a full fetch buffer nothing
                # above suspends, and the timers (the log line, the status file, idle
                # partitions) and the heartbeats would starve for a whole backlog.
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if app.should_stop:
                return  # the app is stopping: not a crash (upstream does the same)
            raise


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class FleetwatchApp(faust.App):
    """A Faust app whose consumer drains batches to its :attr:`receiver`."""

    receiver: FaustReceiver | None = None

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


class FaustSource:
    """The coordinator's :class:`~fleetwatch.aggregate.coordinator.Source`, through Faust."""

    def __init__(self, app: FleetwatchApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.topic = settings.kafka.telemetry_topic
        self.dead_letter_topic = settings.kafka.dead_letter_topic

    def _tp(self, partition: int) -> TP:
        return TP(self.topic, partition)

    async def seek(self, partition: int, offset: int) -> None:
        # On the consumer's own thread (Faust runs aiokafka in one): a seek from this one
        # races with a fetch there (seen: KeyError in aiokafka's fetched_records).
        await self.app.consumer.seek_wait({self._tp(partition): offset})

    def highwater(self, partition: int) -> int | None:
        try:
            mark = self.app.consumer.highwater(self._tp(partition))
        except Exception:  # not assigned (any more), or nothing fetched from it yet
            return None
        return None if mark is None else int(mark)

    def answered_age(self, partition: int) -> float | None:
        consumer: Any = self.app.consumer
        try:  # aiokafka's own consumer, in Faust's consumer thread (see the module docstring)
            client = consumer._thread._ensure_consumer()  # noqa: SLF001
            stamp = client.last_poll_timestamp(self._tp(partition))
        except Exception:  # not started, not assigned (any more)
            return None
        return None if stamp is None else max(0.0, time.time() - stamp / 1000)

    async def position(self, partition: int) -> int | None:
        try:
            position = await self.app.consumer.position(self._tp(partition))
        except Exception:
            return None
        return None if position is None else int(position)

    async def log_starts(self, partitions: Sequence[int]) -> dict[int, int]:
        if not partitions:
            return {}
        found = await self.app.consumer.earliest_offsets(*map(self._tp, partitions))
        return {tp.partition: int(offset) for tp, offset in found.items() if offset is not None}

    async def commit(self, partition: int, offset: int) -> None:
        consumer: Any = self.app.consumer
        await consumer._commit({self._tp(partition): offset})  # noqa: SLF001 - see module docstring

    async def send_dead_letter(self, key: bytes | None, value: bytes, headers: Headers) -> None:
        await self.app.producer.send(self.dead_letter_topic, key, value, None, None, headers)

    async def flush(self) -> None:
        await self.app.producer.flush()

    async def topic_id(self) -> str | None:
        from fleetwatch.brokers.topics import topic_id

        return await asyncio.to_thread(topic_id, self.settings.kafka, self.topic)

    def partition_count(self) -> int | None:
        count = self.app.consumer.topic_partitions(self.topic)
        return None if count is None else int(count)


class FaustReceiver:
    """Turns what the consumer fetched (Faust's partitions, aiokafka's records) into the
    coordinator's terms; an error in a batch is logged as one line and crashes the worker."""

    def __init__(self, aggregator: Aggregator, topic: str) -> None:
        self.aggregator = aggregator
        self.topic = topic
        self.failure: BaseException | None = None

    async def rewind(self, tps: list[TP]) -> None:
        await self.aggregator.rewind([tp.partition for tp in tps if tp.topic == self.topic])

    async def deliver(self, records: Mapping[TP, list[Any]]) -> None:
        batches = {
            tp.partition: (
                batch  # tuples already (install_record_tuples)
                if type(batch[0]) is tuple
                else [(r.offset, r.key, r.value, r.timestamp) for r in batch]
            )
            for tp, batch in records.items()
            if tp.topic == self.topic and batch
        }
        try:
            await self.aggregator.on_records(batches)
        except FleetwatchError as exc:
            self.failure = exc
            log.error("%s", exc)
            raise
        except Exception as exc:
            self.failure = exc
            log.exception("aggregation stopped: %s: %s", type(exc).__name__, exc)
            raise
