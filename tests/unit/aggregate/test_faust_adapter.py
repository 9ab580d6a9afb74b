"""The one place fleetwatch touches Faust's internals: exactly that surface, checked here, so an
upgrade that changes it fails in this test (and at the worker's start) with a clear message."""

from __future__ import annotations

import faust
import pytest
from aiokafka.consumer.fetcher import PartitionRecords
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from fleetwatch.aggregate import faust_adapter
from fleetwatch.aggregate.faust_adapter import (
    BatchConsumer,
    BatchTransport,
    FleetwatchApp,
    PrivateSurfaceError,
    check_private_surface,
)


def test_the_installed_faust_has_the_surface_the_adapter_was_read_against() -> None:
    check_private_surface()


def test_the_app_builds_the_batch_consumer() -> None:
    app = FleetwatchApp("probe", broker="kafka://127.0.0.1:1", web_enabled=False)
    transport = app.transport  # made by the overridden _new_transport
    assert isinstance(transport, BatchTransport) and transport.Consumer is BatchConsumer
    assert issubclass(BatchConsumer, faust_aiokafka.Consumer)
    assert "_drain_messages" in vars(BatchConsumer)  # replaced, not inherited


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (faust_consumer.Consumer, "_wait_next_records"),
        (faust_aiokafka.Consumer, "_commit"),
        (faust.App, "_new_transport"),
        (faust_consumer.Consumer, "_drain_messages"),
        (PartitionRecords, "_consumer_record"),
    ],
)
def test_a_changed_surface_is_a_clear_error(
    owner: type, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owner, name, lambda self, renamed_argument: None)
    with pytest.raises(PrivateSurfaceError, match=rf"{name}.* no longer takes") as caught:
        check_private_surface()
    assert "pyproject.toml" in str(caught.value) and faust_adapter.READ_AGAINST[
        "faust-streaming"
    ] in str(caught.value)


def test_a_missing_member_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(faust_consumer.ThreadDelegateConsumer, "_commit")
    monkeypatch.delattr(faust_consumer.Consumer, "_commit")
    with pytest.raises(PrivateSurfaceError, match="_commit is gone"):
        check_private_surface()


def test_the_drain_loop_lets_the_timers_run_while_a_backlog_streams_in() -> None:
    """Issue 25: a 69,538-window backfill printed nothing and wrote no status file for 12
    minutes: with the fetcher's buffer always full, the drain loop never gave the event loop
    back, so the one-second timer (the log line, the status file, idle partitions) starved."""
    import asyncio
    from types import SimpleNamespace

    delivered: list[int] = []
    ticks_at: list[int] = []

    class Receiver:
        async def deliver(self, records: object) -> None:
            delivered.append(1)  # as the aggregator: CPU work, no suspension
            if len(delivered) >= 200:
                consumer.should_stop = True

        async def rewind(self, tps: object) -> None:  # pragma: no cover - not called
            pass

    async def wait_next_records(timeout: float) -> tuple[dict[str, list[int]], None]:
        return {"tp": [1, 2, 3]}, None  # a full buffer: returns without suspending

    app = SimpleNamespace(receiver=Receiver(), consumer_generation_id=1, should_stop=False)
    consumer = SimpleNamespace(
        app=app,
        should_stop=False,
        flow_active=True,
        consumer_stopped_errors=(),
        _wait_next_records=wait_next_records,
    )

    async def timer() -> None:
        while not consumer.should_stop:
            ticks_at.append(len(delivered))
            await asyncio.sleep(0)

    async def main() -> None:
        ticking = asyncio.create_task(timer())
        await asyncio.sleep(0)  # the timer starts
        drain = BatchConsumer._drain_messages  # noqa: SLF001 - the adapter's own override
        await drain(consumer, SimpleNamespace(should_stop=False))  # type: ignore[arg-type]
        await ticking

    asyncio.run(main())
    assert len(delivered) == 200
    assert any(0 < at < 200 for at in ticks_at), "the timer never ran while batches streamed"


def test_fetched_records_become_the_coordinators_tuples_where_aiokafka_unpacks_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 27: in the worker's process a fetched record is unpacked straight into ``(offset,
    key, value, timestamp)``, the same four fields aiokafka's ``ConsumerRecord`` carries; a
    consumer with deserializers still gets upstream's records."""
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    sent = [(i, 1_795_000_000_000 + i, f"pump-{i}".encode(), b'{"x": %d}' % i) for i in range(5)]
    for offset, timestamp, key, value in sent:
        builder.append(offset, timestamp, key, value, headers=[])
    raw = bytes(builder.build())
    tp = TopicPartition("telemetry", 3)

    def unpacked(deserializer: object = None) -> list[object]:
        records = PartitionRecords(
            tp, MemoryRecords(raw), [], 0, None, deserializer, True, 0
        )  # fmt: skip
        return list(records)

    upstream = unpacked()
    upstream_record = PartitionRecords._consumer_record  # noqa: SLF001 - restored after the test
    monkeypatch.setattr(PartitionRecords, "_consumer_record", upstream_record)
    faust_adapter.install_record_tuples()
    tuples = unpacked()
    assert tuples == [(r.offset, r.key, r.value, r.timestamp) for r in upstream]  # type: ignore[attr-defined]
    assert tuples == [(offset, key, value, timestamp) for offset, timestamp, key, value in sent]
    decoded = unpacked(bytes.upper)
    assert [r.value for r in decoded] == [v.upper() for *_, v in sent]  # type: ignore[attr-defined]


def test_the_consumer_threads_aiokafka_consumer_is_named_when_it_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka import AIOKafkaConsumer

    monkeypatch.delattr(faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer")
    monkeypatch.setattr(AIOKafkaConsumer, "last_poll_timestamp", lambda self, tp, now: None)
    with pytest.raises(PrivateSurfaceError) as caught:
        check_private_surface()
    assert "no _ensure_consumer()" in str(caught.value)
    assert "last_poll_timestamp(partition) changed" in str(caught.value)


def test_the_answer_age_comes_from_aiokafkas_last_poll_of_the_partition() -> None:
    """:meth:`FaustSource.answered_age` through exactly the surface named above: Faust's
    consumer thread's aiokafka consumer, its public ``last_poll_timestamp``."""
    import time
    from types import SimpleNamespace

    from fleetwatch.aggregate.faust_adapter import FaustSource
    from fleetwatch.config import load_settings

    polled = {0: int(time.time() * 1000) - 7_000, 1: None}

    class Client:
        def last_poll_timestamp(self, partition: object) -> int | None:
            if partition.partition == 2:  # type: ignore[attr-defined]
                raise AssertionError("Partition is not assigned")  # as aiokafka's assert
            return polled[partition.partition]  # type: ignore[attr-defined]

    thread = SimpleNamespace(_ensure_consumer=Client)
    app = SimpleNamespace(consumer=SimpleNamespace(_thread=thread))
    source = FaustSource(app, load_settings(environ={}))  # type: ignore[arg-type]
    age = source.answered_age(0)
    assert age is not None and 6.5 < age < 30
    assert source.answered_age(1) is None and source.answered_age(2) is None
