"""The aggregation coordinator on an in-memory log: checkpoints, idle partitions, resets, dead
letters. Reference answers come from the plain per-event loop + pandas of test_processor."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from fleetwatch.aggregate.coordinator import (
    DEAD_LETTER_MAX_VALUE,
    Aggregator,
    OffsetResetError,
)
from fleetwatch.aggregate.memory import MemoryLog, MemorySource, OutOfRange
from fleetwatch.aggregate.progress import closed_through, progress
from fleetwatch.config import Settings, load_settings
from fleetwatch.storage.checkpoints import Checkpoint
from fleetwatch.storage.layout import parse_live_file_name
from fleetwatch.storage.parquet import staged_key
from fleetwatch.storage.store import StoredObject
from tests.unit.aggregate.test_processor import (
    T0,
    as_ms,
    compare,
    make_records,
    read_dir,
    reference,
)

TOPIC = "telemetry"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings_for(root: Path, **aggregate: str) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "": {"data_dir": str(root)},
            "aggregate": {"idle_timeout": "5s", "checkpoint_interval": "10s", **aggregate},
        },
    )


class Harness:
    """An aggregator over a memory log, pumped by hand with a fake clock."""

    def __init__(
        self, root: Path, log: MemoryLog, out_of_range: OutOfRange = "reset_to_earliest", **agg: str
    ) -> None:
        self.root = root
        self.log = log
        self.clock = Clock()
        self.source = MemorySource(log, out_of_range=out_of_range, clock=self.clock)
        self.settings = settings_for(root, **agg)
        self.aggregator = Aggregator(self.settings, self.source, clock=self.clock)

    def run(self, coroutine: object) -> None:
        asyncio.run(coroutine)  # type: ignore[arg-type]

    def assign(self, *partitions: int) -> None:
        self.run(self.aggregator.on_assigned(list(partitions)))

    def pump(self, rounds: int = 50, batch: int = 137) -> None:
        async def go() -> None:
            for _ in range(rounds):
                batches = self.source.poll(batch)
                if batches:
                    await self.aggregator.on_records(batches)
                await self.aggregator.tick()

        self.run(go())

    def idle(self, seconds: float = 6.0) -> None:
        """Let wall-clock time pass with nothing new while the broker answers, then tick."""
        self.pump(rounds=1)  # answered (and ticked) as the silence begins
        self.clock.now += seconds
        self.pump(rounds=3)

    def stop(self) -> None:
        self.run(self.aggregator.on_shutdown())

    @property
    def closed(self) -> int | None:
        return progress(self.aggregator.layout, TOPIC).closed_through_ms


def fill(log: MemoryLog, partition: int, records: list[tuple[int, bytes, bytes]]) -> None:
    for _, key, value in records:
        log.append(partition, key, value)


def reading(device: str, ts: int, value: float = 1.0) -> bytes:
    return json.dumps({"device_id": device, "ts": ts, "readings": {"s": value}}).encode()


def test_windows_dead_letters_and_checkpoints_are_exact(tmp_path: Path) -> None:
    log = MemoryLog(partitions=2)
    records = {p: make_records(20 + p, 1200, f"p{p}") for p in range(2)}
    for partition, rows in records.items():
        fill(log, partition, rows)
    harness = Harness(tmp_path, log)
    harness.assign(0, 1)
    harness.pump()
    harness.idle()
    harness.stop()
    expected = pd.concat([reference(rows)[0] for rows in records.values()], ignore_index=True)
    compare(tmp_path, expected)
    invalid = sum(reference(rows)[2] for rows in records.values())
    assert len(harness.source.dead_letters) == invalid > 0
    reasons = {dict(h)["fleetwatch.reason"] for _, _, h in harness.source.dead_letters}
    assert reasons == {b"not_json"}
    # the group's committed offsets follow the checkpoints: everything was read and closed
    assert harness.source.committed == {0: 1200, 1: 1200}


def test_the_topic_is_closed_only_once_every_partition_is_known(tmp_path: Path) -> None:
    """Unknown means not closed: a partition that read nothing (or only dead letters) holds
    the topic back until it is idle, then follows the busy partitions' watermark."""
    log = MemoryLog(partitions=3)
    fill(log, 0, make_records(1, 2000, "busy"))
    log.append(1, b"x", b"{not json")  # a partition with a single malformed message
    harness = Harness(tmp_path, log)
    harness.assign(0, 1, 2)
    harness.pump(rounds=20)
    assert harness.aggregator.processors[0].close_boundary is not None
    assert harness.closed is None  # partitions 1 and 2 know no watermark yet
    harness.clock.now += 6  # the others are idle now; partition 0 keeps receiving
    log.append(0, b"busy-1", reading("busy-1", T0 + 2000 * 200))
    harness.pump(rounds=2)
    busy = harness.aggregator.processors[0].close_boundary
    assert harness.closed == busy  # the idle ones follow the busy one
    checkpoints = progress(harness.aggregator.layout, TOPIC).partitions
    assert [c.idle for c in checkpoints.values() if c] == [False, True, True]
    # more data on the busy partition: the idle ones keep following
    for offset in range(2000, 2400):
        log.append(0, b"busy-1", reading("busy-1", T0 + offset * 200))
    harness.pump(rounds=5)
    harness.clock.now += 1
    harness.pump(rounds=2)
    later = harness.aggregator.processors[0].close_boundary
    assert later is not None and later > busy and harness.closed == later
    # a reading arriving later on an idle partition for a closed window is late, not added
    log.append(2, b"quiet", reading("quiet", T0 + 60_000))
    harness.pump(rounds=2)
    harness.stop()
    late = read_dir(tmp_path / "late")
    assert (late["device_id"] == "quiet").sum() == 1
    assert "quiet" not in set(read_dir(tmp_path / "aggregates")["device_id"])


def test_a_broker_that_stops_answering_makes_no_partition_idle(tmp_path: Path) -> None:
    """Silence while the broker does not answer is not the devices' silence. Before, a
    partition read to the end its last fetch reported counted as caught up for the whole
    outage: after the idle timeout every open window was closed with what it had, and the rest
    of their readings, sent once the broker was back, went to the late sink."""
    log = MemoryLog(partitions=2)
    records = {p: make_records(30 + p, 1200, f"p{p}") for p in range(2)}
    for partition, rows in records.items():
        fill(log, partition, rows[:600])
    harness = Harness(tmp_path, log)
    harness.assign(0, 1)
    harness.pump()
    written = [p.counters.windows_written for p in harness.aggregator.processors.values()]

    async def outage() -> None:  # the timers run, no fetch is answered
        for _ in range(30):
            harness.clock.now += 1
            await harness.aggregator.tick()

    harness.run(outage())
    assert not any(p.idle for p in harness.aggregator.processors.values())
    assert [p.counters.windows_written for p in harness.aggregator.processors.values()] == written
    for partition, rows in records.items():  # the broker is back, with what was sent meanwhile
        fill(log, partition, rows[600:])
    harness.pump()
    harness.idle()
    assert all(p.idle for p in harness.aggregator.processors.values())  # answered: idle
    harness.stop()
    compare(tmp_path, pd.concat([reference(rows)[0] for rows in records.values()]))
    assert len(read_dir(tmp_path / "late")) == sum(len(reference(r)[1]) for r in records.values())


def test_an_idle_partition_reads_the_other_workers_checkpoints_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle partition follows the watermark of partitions other workers own, read from
    their checkpoints at every tick (every second) while it is idle: one read a partition,
    on object storage a request each, which held the event loop (32 partitions elsewhere:
    a third of every second). Each read here waits until the loop has run a callback."""
    log = MemoryLog(partitions=3)
    fill(log, 0, make_records(50, 30, "a0"))
    fill(log, 1, make_records(51, 900, "b1"))
    fill(log, 2, make_records(52, 900, "b2"))
    other = Harness(tmp_path, log)  # another worker, with partitions 1 and 2
    other.assign(1, 2)
    other.pump()
    other.stop()
    boundaries = {p: other.aggregator.checkpoints.load(p) for p in (1, 2)}
    frontier = min(c.close_boundary_ms for c in boundaries.values() if c)
    harness = Harness(tmp_path, log)
    harness.assign(0)
    harness.pump()  # read to its end: idle after the idle timeout
    checkpoints = harness.aggregator.checkpoints
    real = checkpoints.load
    loop: asyncio.AbstractEventLoop | None = None
    read: list[int] = []

    def load(partition: int) -> Checkpoint | None:
        ran = threading.Event()
        assert loop is not None
        loop.call_soon_threadsafe(ran.set)  # runs only while the loop is free
        assert ran.wait(10), "the event loop was held up by a checkpoint read"
        read.append(partition)
        return real(partition)

    monkeypatch.setattr(checkpoints, "load", load)

    async def idle() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        harness.clock.now += 6
        harness.source.poll()  # the broker answered all along, with nothing new
        await harness.aggregator.tick()

    harness.run(idle())
    monkeypatch.undo()
    assert sorted(read) == [1, 2]
    assert harness.aggregator.processors[0].close_boundary == frontier
    harness.stop()


def test_when_every_partition_is_idle_everything_read_is_closed(tmp_path: Path) -> None:
    log = MemoryLog(partitions=2)
    fill(log, 0, make_records(2, 500, "a"))
    fill(log, 1, make_records(3, 300, "b"))
    harness = Harness(tmp_path, log)
    harness.assign(0, 1)
    harness.pump()
    assert harness.closed is not None
    harness.idle()
    expected = pd.concat(
        [reference(make_records(2, 500, "a"))[0], reference(make_records(3, 300, "b"))[0]]
    )
    newest_end = int(expected["window_start"].max()) + 60_000
    assert harness.closed == newest_end
    compare(tmp_path, expected)


def test_no_checkpoint_or_unknown_partition_count_means_not_closed(tmp_path: Path) -> None:
    log = MemoryLog(partitions=2)
    fill(log, 0, make_records(4, 800, "a"))
    harness = Harness(tmp_path, log)
    harness.assign(0)  # partition 1 belongs to a worker that has not started
    harness.pump()
    harness.idle()
    assert harness.closed is None
    assert closed_through(harness.aggregator.layout, "other-topic") is None


@pytest.mark.parametrize("out_of_range", ["reset_to_earliest", "empty"])
def test_a_topic_reset_under_a_running_worker_loses_nothing(
    tmp_path: Path, out_of_range: OutOfRange, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker restarts with empty topics (the embedded one is memory-only): what is sent
    afterwards is aggregated (or late, never dropped), in files that overwrite nothing."""
    first = make_records(5, 1500, "d")
    log = MemoryLog(partitions=1)
    fill(log, 0, first)
    harness = Harness(tmp_path, log, out_of_range=out_of_range)
    harness.assign(0)
    harness.pump()
    before = {p.name: p.read_bytes() for p in (tmp_path / "aggregates").rglob("*.parquet")}
    assert before
    log.recreate()
    # the new log: later readings, plus a few for windows that were closed before the reset
    shift = 1500 * 200 + 120_000
    second = [(o, k, v) for o, k, v in make_records(6, 900, "d")]
    second = [
        (o, k, json.dumps({**json.loads(v), "ts": json.loads(v)["ts"] + shift}).encode())
        if v.startswith(b'{"')
        else (o, k, v)
        for o, k, v in second
    ]
    second += [(900 + i, b"d-0", reading("d-0", T0 + 10_000 * i)) for i in range(5)]
    with caplog.at_level(logging.ERROR, logger="fleetwatch.aggregate"):
        fill(log, 0, second[:10])
        harness.pump(rounds=3)
        fill(log, 0, second[10:])
        harness.pump()
    harness.idle()
    harness.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "topic was reset" in errors[0] and "epoch 1" in errors[0]
    after = {p.name: p.read_bytes() for p in (tmp_path / "aggregates").rglob("*.parquet")}
    assert all(after[name] == data for name, data in before.items())  # nothing overwritten
    new = [parse_live_file_name(name) for name in set(after) - set(before)]
    assert {name.epoch for name in new if name} == {0, 1}
    # epoch 0: the windows still open at the reset, written then from the old log's records
    assert all(name.last_offset < 1500 for name in new if name and name.epoch == 0)
    expected, expected_late, _ = reference(first + second)
    compare(tmp_path, expected)
    late = read_dir(tmp_path / "late")
    assert len(late) == len(expected_late) and (as_ms(late["ts"]) < T0 + 50_000).sum() >= 5


def test_a_topic_recreated_while_the_worker_was_down_is_noticed_at_assignment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = MemoryLog(partitions=1)
    fill(log, 0, make_records(7, 600, "d"))
    harness = Harness(tmp_path, log)
    harness.assign(0)
    harness.pump()
    harness.stop()
    log.recreate()
    fill(log, 0, [(0, b"d-1", reading("d-1", T0 + 3_600_000 + i * 1000)) for i in range(700)])
    restarted = Harness(tmp_path, log)
    with caplog.at_level(logging.ERROR, logger="fleetwatch.aggregate"):
        restarted.assign(0)
        restarted.pump()
    restarted.idle()
    restarted.stop()
    assert any("deleted and created again" in r.getMessage() for r in caplog.records)
    written = read_dir(tmp_path / "aggregates")
    new = written[as_ms(written["window_start"]) >= T0 + 3_600_000]
    assert new["count"].sum() == 700  # every reading sent after the reset


def test_records_deleted_by_retention_are_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = MemoryLog(partitions=1)
    fill(log, 0, make_records(8, 400, "d"))
    harness = Harness(tmp_path, log)
    harness.assign(0)
    harness.pump()
    harness.stop()
    fill(log, 0, make_records(9, 600, "d")[400:])
    log.delete_before(0, 500)
    restarted = Harness(tmp_path, log)
    with caplog.at_level(logging.ERROR, logger="fleetwatch.aggregate"):
        restarted.assign(0)
        restarted.pump()
    assert any("deleted from the log" in r.getMessage() for r in caplog.records)
    assert restarted.aggregator.processors[0].next_offset == 600


def test_on_offset_reset_fail_stops_without_changing_anything(tmp_path: Path) -> None:
    log = MemoryLog(partitions=1)
    fill(log, 0, make_records(10, 500, "d"))
    harness = Harness(tmp_path, log, on_offset_reset="fail")
    harness.assign(0)
    harness.pump()
    harness.stop()
    checkpoint = tmp_path / "state" / "aggregate" / TOPIC / "p0000.json"

    def content() -> dict[str, object]:  # all but the owner token a takeover writes
        return {k: v for k, v in json.loads(checkpoint.read_text()).items() if k != "owner"}

    saved = content()
    log.recreate()
    restarted = Harness(tmp_path, log, on_offset_reset="fail")
    with pytest.raises(OffsetResetError, match="on_offset_reset=fail"):
        restarted.assign(0)
    assert content() == saved


def test_an_assignment_lists_each_dataset_once_and_cleans_every_partition_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that stopped before its checkpoints left staged files in every partition,
    and temporaries of writes a crash cut short (of a file, and of a staged file); the next
    one takes the four partitions over with one listing of each dataset (not two a
    partition: on object storage one request per thousand objects each) and, locally, one
    walk of each folder for its temporaries (not one a partition: 0.4 s a partition at
    20,000 files), deletes every leftover of its partitions and writes each window once."""
    log = MemoryLog(partitions=4)
    records = {p: make_records(30 + p, 900, f"p{p}") for p in range(4)}
    for partition, rows in records.items():
        fill(log, partition, rows)
    crashed = Harness(tmp_path, log)
    crashed.assign(0, 1, 2, 3)
    crashed.pump(rounds=2)
    for published in sorted(tmp_path.glob("*/date=*/hour=*/p*.parquet")):  # and then died
        staged = tmp_path / staged_key(published.relative_to(tmp_path).as_posix())
        staged.write_bytes(published.read_bytes())
        for name in (published.name, staged.name, published.name.replace("p000", "p009")):
            (published.parent / f".{name}.0a1b2c3d.tmp").write_bytes(b"cut short")
    staged_names = {path.name[:6] for path in tmp_path.glob("*/date=*/hour=*/.p*.staged")}
    assert staged_names == {".p0000", ".p0001", ".p0002", ".p0003"}
    assert {path.name.lstrip(".")[:5] for path in tmp_path.glob("*/*/*/.*.tmp")} == {
        "p0000",
        "p0001",
        "p0002",
        "p0003",
        "p0090",
        "p0091",
        "p0092",
        "p0093",
    }

    restarted = Harness(tmp_path, log)
    store = restarted.aggregator.aggregates.store
    listed: list[str] = []
    real = store.listing

    def listing(prefix: str) -> list[StoredObject]:
        listed.append(prefix)
        return real(prefix)

    monkeypatch.setattr(store, "listing", listing)
    scanned: list[str] = []
    real_scandir = os.scandir

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        scanned.append(Path(path).relative_to(tmp_path).as_posix())
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    restarted.assign(0, 1, 2, 3)
    monkeypatch.undo()
    assert sorted(listed) == ["aggregates", "late"]
    assert scanned.count("aggregates") <= 2 and scanned.count("late") <= 2  # files, temporaries
    assert not any(tmp_path.glob("*/date=*/hour=*/.p*.staged"))
    left = sorted(path.name.lstrip(".")[:5] for path in tmp_path.glob("*/*/*/.*.tmp"))
    assert set(left) == {"p0090", "p0091", "p0092", "p0093"}  # no partition of this worker's
    restarted.pump()
    restarted.idle()
    restarted.stop()
    expected = pd.concat([reference(rows)[0] for rows in records.values()], ignore_index=True)
    compare(tmp_path, expected)


def test_an_assignment_restores_its_partitions_at_once_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each partition's restore is a few requests of the store (checkpoint read, conditional
    write, deletes); one after another on the event loop, 64 of them on object storage held
    up the heartbeats and the web server for seconds. Here each restore waits until all four
    have begun and until the event loop has run a callback: restores one after another, or
    on the loop, would wait in vain (10 s, then fail)."""
    log = MemoryLog(partitions=4)
    records = {p: make_records(40 + p, 600, f"p{p}") for p in range(4)}
    for partition, rows in records.items():
        fill(log, partition, rows)
    harness = Harness(tmp_path, log)
    checkpoints = harness.aggregator.checkpoints
    real = checkpoints.load_versioned
    everyone = threading.Barrier(4, timeout=10)
    loop: asyncio.AbstractEventLoop | None = None

    def load_versioned(partition: int) -> tuple[Checkpoint | None, str | None]:
        everyone.wait()  # all four restores under way at once
        ran = threading.Event()
        assert loop is not None
        loop.call_soon_threadsafe(ran.set)  # runs only while the loop is free
        assert ran.wait(10), "the event loop was held up by a restore"
        return real(partition)

    monkeypatch.setattr(checkpoints, "load_versioned", load_versioned)

    async def assign() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        await harness.aggregator.on_assigned([0, 1, 2, 3])

    harness.run(assign())
    monkeypatch.undo()
    assert sorted(harness.aggregator.partitions) == [0, 1, 2, 3]
    harness.pump()
    harness.idle()
    harness.stop()
    expected = pd.concat([reference(rows)[0] for rows in records.values()], ignore_index=True)
    compare(tmp_path, expected)


def test_a_worker_publishes_nothing_of_a_partition_taken_from_it(tmp_path: Path) -> None:
    """A worker paused while another took partition 1 over goes on with what it had fetched:
    a batch closing windows in partitions 0 and 1. The fence (its checkpoint writes are
    refused) must stop it publishing anything of partition 1: partition 0's checkpoint,
    still its own, published the files staged for partition 1 too (the staged files were
    one list for all partitions). The windows stayed exact only because the new owner's
    replay wrote files of the same names over them."""
    log = MemoryLog(partitions=2)
    records = {p: make_records(60, 1500, f"p{p}") for p in range(2)}  # windows close alike
    for partition, rows in records.items():
        fill(log, partition, rows)
    paused = Harness(tmp_path, log)
    paused.assign(0, 1)
    paused.pump(rounds=2)
    other = Harness(tmp_path, log)
    other.assign(1)  # while the first one is paused: it is told nothing yet

    def published(partition: int) -> set[str]:
        return {path.name for path in tmp_path.glob(f"*/date=*/hour=*/p{partition:04d}-*")}

    before = published(1)
    paused.pump(rounds=1, batch=1500)  # what it had fetched: windows close in both
    assert sorted(paused.aggregator.partitions) == [0]  # partition 1's checkpoint refused
    assert published(1) == before
    assert len(published(0)) > 2  # partition 0 went on
    other.pump()
    other.idle()
    other.stop()
    paused.pump()
    paused.idle()
    paused.stop()
    expected = pd.concat([reference(rows)[0] for rows in records.values()], ignore_index=True)
    compare(tmp_path, expected)


def test_a_failed_batch_is_never_checkpointed(tmp_path: Path) -> None:
    """A dead letter that cannot be sent stops the partition before its checkpoint moves:
    the next start replays the batch, dead letter included (at least once)."""
    log = MemoryLog(partitions=1)
    records = make_records(11, 300, "d")
    records[10] = (10, b"d-1", b"{broken")
    fill(log, 0, records)
    harness = Harness(tmp_path, log)
    harness.assign(0)
    harness.source.fail_sends = True
    with pytest.raises(ConnectionError):
        harness.pump()
    harness.stop()
    saved = json.loads((tmp_path / "state" / "aggregate" / TOPIC / "p0000.json").read_text())
    assert saved["next_offset"] is None  # nothing of the failed batch was vouched for
    restarted = Harness(tmp_path, log)
    restarted.assign(0)
    restarted.pump()
    restarted.idle()
    restarted.stop()
    expected, _, invalid = reference(records)
    compare(tmp_path, expected)
    assert len(restarted.source.dead_letters) == invalid


def test_a_huge_payload_is_dead_lettered_cut_with_its_size(tmp_path: Path) -> None:
    log = MemoryLog(partitions=1)
    huge = b"{" + b"x" * 1_000_082
    log.append(0, b"k" * 10_000, huge)
    log.append(0, b"d", reading("d", T0))
    harness = Harness(tmp_path, log)
    harness.assign(0)
    harness.pump()
    harness.idle()
    harness.stop()
    [(key, value, headers)] = harness.source.dead_letters
    named = dict(headers)
    assert named["fleetwatch.reason"] == b"oversized"
    assert value == huge[:DEAD_LETTER_MAX_VALUE] and key is not None and len(key) == 4096
    assert named["fleetwatch.truncated.value_bytes"] == str(len(huge)).encode()
    assert named["fleetwatch.truncated.key_bytes"] == b"10000"
    assert read_dir(tmp_path / "aggregates")["count"].tolist() == [1]


def test_records_fetched_during_a_rebalance_are_fetched_again(tmp_path: Path) -> None:
    log = MemoryLog(partitions=1)
    records = make_records(12, 700, "d")
    fill(log, 0, records)
    harness = Harness(tmp_path, log)
    harness.assign(0)

    async def stale_then_fresh() -> None:
        harness.source.poll(200)  # fetched, then the flow stopped: not delivered
        await harness.aggregator.rewind([0])
        for _ in range(20):
            batches = harness.source.poll(150)
            if batches:
                await harness.aggregator.on_records(batches)

    harness.run(stale_then_fresh())
    harness.idle()
    harness.stop()
    compare(tmp_path, reference(records)[0])


def test_a_paused_worker_that_lost_its_partition_publishes_nothing(tmp_path: Path) -> None:
    """Issue 23, defect 4: worker A is paused past its session; B takes the partition over and
    aggregates it; A resumes and goes on with the batch it had. A's checkpoint write is refused
    (fenced by B's takeover), its staged windows are dropped unpublished: every window once,
    equal to pandas over the records, and no two files of the partition cover one window."""
    log = MemoryLog(partitions=1)
    records = make_records(31, 2400, "d")
    fill(log, 0, records)
    first = Harness(tmp_path, log)
    first.assign(0)
    first.pump(rounds=6)  # part of the log read, some windows checkpointed
    second = Harness(tmp_path, log)  # the rebalance gave the partition to B
    second.assign(0)
    second.pump(rounds=60)
    first.pump(rounds=40)  # A wakes up and goes on with the partition it believes it has
    assert 0 not in first.aggregator.partitions  # A found out and let it go
    second.idle()
    second.stop()
    first.stop()
    expected, _, _ = reference(records)
    compare(tmp_path, expected)  # no duplicate (device, sensor, window), every one equal
    names = [parse_live_file_name(p.name) for p in (tmp_path / "aggregates").rglob("p*.parquet")]
    firsts = [(n.epoch, n.first_offset) for n in names if n is not None]
    assert len(firsts) == len(set(firsts))


def test_the_status_says_when_records_were_last_processed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``last_activity_at`` is taken once a batch is processed and its checkpoints saved (not
    when it arrived): with ``first_record_at``, how long the worker took over what it read
    (benchmarks/aggregate.py's measure comparable with consumers that stop at the last record)."""
    import time

    from fleetwatch.aggregate.processor import PartitionProcessor

    log = MemoryLog(partitions=1)
    fill(log, 0, make_records(3, 300, "p0"))
    harness = Harness(tmp_path, log)
    harness.assign(0)
    process = PartitionProcessor.process
    processed_at: list[float] = []

    def timed(self: PartitionProcessor, records: object) -> bool:
        closed = process(self, records)  # type: ignore[arg-type]
        processed_at.append(time.time())
        return closed

    monkeypatch.setattr(PartitionProcessor, "process", timed)
    harness.pump(rounds=1, batch=300)
    stats = harness.aggregator.stats()
    assert processed_at and stats["first_record_at"] <= processed_at[0]
    assert stats["last_activity_at"] >= processed_at[-1]
