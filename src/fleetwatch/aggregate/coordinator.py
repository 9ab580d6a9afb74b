"""The aggregation coordinator: every assigned partition's processor, and what keeps it honest.

No Kafka client here: the coordinator talks to a :class:`Source` (the Faust adapter in
production, :class:`fleetwatch.aggregate.memory.MemorySource` in tests), so most of the
worker's behaviour is tested in milliseconds. It

- resumes each assigned partition from its checkpoint and seeks the source there;
- feeds each fetched batch to the partition's :class:`PartitionProcessor`, sends its dead
  letters, and checkpoints in the order of durability: closed windows and late readings
  written, dead letters flushed, checkpoint saved, offset committed;
- notices a partition that went idle (caught up, silent for the idle timeout), closes its
  windows and advances its watermark (the closing rule is :mod:`fleetwatch.aggregate.progress`'s);
- notices a log that lost records the partition had not finished with (a reset or recreated
  topic, records deleted by retention) and follows ``[aggregate] on_offset_reset``: ``earliest``
  logs one ERROR with the numbers and goes on from the log's start, ``fail`` stops the worker.
  It never skips records silently.

A partition whose batch failed (a full disk, an unreachable dead-letter topic) is *poisoned*:
it is never checkpointed again by this process, so the next start replays it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from fleetwatch.aggregate.processor import (
    PartitionLostError,
    PartitionProcessor,
    RawRecord,
    restore_all,
)
from fleetwatch.aggregate.progress import checkpoints, idle_frontier
from fleetwatch.aggregate.windows import WindowSpec
from fleetwatch.config import AggregateSettings, Settings
from fleetwatch.errors import FleetwatchError
from fleetwatch.storage.checkpoints import Checkpoint, TopicState
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.parquet import PartitionedParquetSink
from fleetwatch.telemetry import InvalidReason

log = logging.getLogger("fleetwatch.aggregate")

#: A dead letter keeps the original bytes up to this size; a bigger payload (which the
#: dead-letter topic's size limit might refuse) is cut here and carries its size in a header.
DEAD_LETTER_MAX_VALUE: Final = 512 * 1024
DEAD_LETTER_MAX_KEY: Final = 4 * 1024
#: A partition whose fetches went unanswered this long is not heard from: its silence is the
#: broker's, not the devices', and does not count toward its idle timeout. The consumer's
#: fetches wait at most 1.5 s for data, so a broker that answers does within this.
ANSWER_GAP_S: Final = 4.0
Headers = list[tuple[str, bytes]]


class Source(Protocol):
    """The consumer side the coordinator drives. Partition numbers are of the telemetry topic.

    The methods are called from the coordinator's event loop; the ``async`` ones may wait for
    the broker and raise whatever the client raises.
    """

    async def seek(self, partition: int, offset: int) -> None:
        """Fetch ``partition`` from ``offset`` on."""

    def highwater(self, partition: int) -> int | None:
        """The log end offset the last fetch response reported (None: no response yet)."""

    def answered_age(self, partition: int) -> float | None:
        """Seconds since the broker last answered a fetch of ``partition``, with records or
        without (None: never, or not assigned)."""

    async def position(self, partition: int) -> int | None:
        """The offset of the next record the source will deliver (None: unknown)."""

    async def log_starts(self, partitions: Sequence[int]) -> dict[int, int]:
        """The first offset still in each partition's log (one request for all)."""

    async def commit(self, partition: int, offset: int) -> None:
        """Record ``offset`` as the group's position (for lag monitoring; never the truth)."""

    async def send_dead_letter(self, key: bytes | None, value: bytes, headers: Headers) -> None:
        """Queue a record for the dead-letter topic."""

    async def flush(self) -> None:
        """Wait until every queued dead letter is acknowledged by the broker."""

    async def topic_id(self) -> str | None:
        """The telemetry topic's current id, where the broker has topic ids."""

    def partition_count(self) -> int | None:
        """The telemetry topic's partition count, from the client's metadata."""


class OffsetResetError(FleetwatchError):
    """The log lost records a partition had not finished with, and the policy is ``fail``."""

    exit_code = 1


@dataclass
class _Partition:
    processor: PartitionProcessor
    last_record_at: float
    poisoned: bool = False
    checkpointed_at: float | None = None  # the clock when it last had nothing unsaved
    answered_since: float | None = None  # the clock since when its fetches are answered


@dataclass(frozen=True)
class AggregationSetup:
    """What the coordinator needs: the data directory, ``[aggregate]`` and the topics."""

    layout: DataLayout
    options: AggregateSettings
    topic: str
    dead_letter_topic: str

    @classmethod
    def of(cls, settings: Settings) -> AggregationSetup:
        return cls(
            settings.layout,
            settings.aggregate,
            settings.kafka.telemetry_topic,
            settings.kafka.dead_letter_topic,
        )


class Aggregator:
    """Owns one processor per assigned partition; checkpoints, logs, closes idle partitions."""

    def __init__(
        self,
        setup: AggregationSetup | Settings,
        source: Source,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(setup, Settings):
            setup = AggregationSetup.of(setup)
        self.source = source
        self.clock = clock
        self.options = options = setup.options
        self.topic = setup.topic
        self.dead_letter_topic = setup.dead_letter_topic
        self.spec = WindowSpec(round(options.window * 1000), round(options.grace * 1000))
        self.future_limit_ms = round(options.future_limit * 1000) or None
        self.layout = setup.layout
        codec = options.parquet_compression
        self.aggregates = PartitionedParquetSink(self.layout, "aggregates", codec)
        self.late = PartitionedParquetSink(self.layout, "late", codec)
        self.checkpoints = checkpoints(self.layout, self.topic)
        self.partitions: dict[int, _Partition] = {}
        self.lock = asyncio.Lock()
        self.last_checkpoint_at = clock()
        self.started_at = time.time()
        self.first_record_at: float | None = None
        self.last_activity_at: float | None = None
        self.topic_id: str | None = None  # as the broker said at the last assignment
        self.stopped = False
        self.totals = {"messages": 0, "readings": 0, "late": 0, "dead_lettered": 0, "windows": 0}
        self.resets = 0
        self.pending_dead: list[tuple[int, bytes | None, bytes | None, str, str]] = []
        self._last_log = (clock(), 0)
        self.worker_name = f"{socket.gethostname()}-{os.getpid()}"

    @property
    def processors(self) -> dict[int, PartitionProcessor]:
        return {p: state.processor for p, state in self.partitions.items()}

    # ------------------------------------------------------------------ rebalancing

    async def on_assigned(self, assigned: Sequence[int]) -> None:
        async with self.lock:
            fresh = [p for p in sorted(assigned) if p not in self.partitions]
            if not fresh:
                return
            topic_id = await self.source.topic_id()
            self.topic_id = topic_id
            self._record_topic(topic_id)
            starts = await self.source.log_starts(fresh)
            # in threads: the loop stays free for the heartbeats and the web server
            restored = await asyncio.to_thread(
                restore_all,
                fresh,
                self.spec,
                self.checkpoints,
                self.aggregates,
                self.late,
                self._dead_letter_collector(),
                self.options.max_open_windows,
                self.future_limit_ms,
            )
            for partition, processor in zip(fresh, restored, strict=True):
                state = _Partition(processor, self.clock())
                self.partitions[partition] = state
                start = starts.get(partition, 0)
                await self._check_log_at_assignment(partition, state, topic_id, start)
                await self.source.seek(
                    partition, start if processor.next_offset is None else processor.next_offset
                )
                log.info(
                    "partition %d assigned, resuming at offset %s",
                    partition,
                    processor.next_offset
                    if processor.next_offset is not None
                    else "the start of the log",
                )

    def _record_topic(self, topic_id: str | None) -> None:
        count = self.source.partition_count()
        known = self.checkpoints.load_topic_state()
        if count is not None and known != TopicState(count, topic_id):
            self.checkpoints.save_topic_state(TopicState(count, topic_id))

    async def _check_log_at_assignment(
        self, partition: int, state: _Partition, topic_id: str | None, start: int
    ) -> None:
        processor = state.processor
        known_id = processor.topic_id
        read_something = processor.next_offset is not None
        if read_something and topic_id is not None and known_id not in (None, topic_id):
            await self._lost(
                partition,
                state,
                f"the topic was deleted and created again (topic id {known_id} -> {topic_id})",
                start,
                new_epoch=True,
            )
        elif processor.next_offset is not None and start > processor.next_offset:
            await self._lost(
                partition,
                state,
                f"records {processor.next_offset}..{start - 1} were deleted from the log "
                "(retention) before they were aggregated",
                start,
                new_epoch=False,
            )
        if topic_id is not None and processor.topic_id != topic_id:
            processor.topic_id = topic_id
            await self._checkpoint(partition, force=True)

    async def _lost(
        self, partition: int, state: _Partition, what: str, resume_at: int, *, new_epoch: bool
    ) -> None:
        """The log lost records this partition had not finished with: say so, then follow the
        ``on_offset_reset`` policy."""
        processor = state.processor
        read = processor.replay_until or processor.next_offset
        message = (
            f"partition {partition}: {what}; the checkpoint had read up to offset {read} "
            f"(epoch {processor.epoch}), {processor.open_count} window states were open"
        )
        if self.options.on_offset_reset == "fail":
            log.error("%s; on_offset_reset=fail: stopping", message)
            raise OffsetResetError(
                f"{message}; on_offset_reset=fail: stopped. Set on_offset_reset=earliest to "
                "go on from the log's start (late readings go to the late sink)"
            )
        written = processor.resume_after_loss(resume_at, new_epoch)
        self.resets += 1
        log.error(
            "%s; on_offset_reset=earliest: %d open window states written as they were, going on "
            "from offset %d (epoch %d); readings for windows already closed go to the late sink",
            message,
            written,
            resume_at,
            processor.epoch,
        )
        await self._checkpoint(partition, force=True)

    async def on_revoked(self, revoked: Sequence[int]) -> None:
        async with self.lock:
            for partition in sorted(revoked):
                if partition in self.partitions:
                    await self._checkpoint(partition)  # lost to another worker: retired there
                    if partition in self.partitions:
                        self._retire(partition)
                    log.info("partition %d revoked", partition)

    def _retire(self, partition: int) -> None:
        counters = self.partitions.pop(partition).processor.counters
        self.totals["messages"] += counters.messages
        self.totals["readings"] += counters.readings
        self.totals["late"] += counters.late_readings
        self.totals["dead_lettered"] += sum(counters.dead_lettered.values())
        self.totals["windows"] += counters.windows_written

    async def on_shutdown(self, failure: BaseException | None = None) -> None:
        async with self.lock:
            await self.checkpoint_all()
            poisoned = sorted(p for p, state in self.partitions.items() if state.poisoned)
            for partition in list(self.partitions):
                self._retire(partition)
            self.stopped = True
            self.write_status()
            if failure is None:
                log.info("stopped cleanly: closed windows written, offsets committed")
            else:
                log.error(
                    "stopped after an error; partitions %s resume from their last checkpoint, "
                    "the others were checkpointed",
                    poisoned or "-",
                )

    # ------------------------------------------------------------------ records

    async def rewind(self, partitions: Sequence[int]) -> None:
        """The source fetched records it will not deliver (a rebalance began): fetch those
        partitions again from what their processors have read, so nothing is skipped."""
        async with self.lock:
            for partition in partitions:
                state = self.partitions.get(partition)
                if state is not None and not state.poisoned:
                    offset = state.processor.next_offset
                    if offset is None:
                        offset = (await self.source.log_starts([partition])).get(partition, 0)
                    await self.source.seek(partition, offset)

    async def on_records(self, batches: Mapping[int, Sequence[RawRecord]]) -> None:
        async with self.lock:
            now = self.clock()
            closed: list[int] = []
            processed = False
            for partition, records in batches.items():
                state = self.partitions.get(partition)
                if state is None or state.poisoned or not records:
                    continue
                if self.first_record_at is None:
                    self.first_record_at = time.time()
                processed = True
                state.last_record_at = now
                try:
                    if await self._process(partition, state, records):
                        closed.append(partition)
                except BaseException:
                    state.poisoned = True  # never checkpointed again: the next start replays
                    raise
            for partition in closed:
                await self._checkpoint(partition)
            if processed:
                self.last_activity_at = time.time()  # records processed (and checkpointed)

    async def _process(
        self, partition: int, state: _Partition, records: Sequence[RawRecord]
    ) -> bool:
        processor = state.processor
        highwater = self.source.highwater(partition)
        first = records[0][0]
        if (
            processor.next_offset is not None
            and first < processor.next_offset
            and highwater is not None
            and highwater < processor.next_offset
        ):
            # Delivered from below where this partition had read, by a log that now ends
            # before it: the broker reset the position of a log that was reset.
            await self._lost(
                partition,
                state,
                f"the log now ends at offset {highwater}, before offset "
                f"{processor.next_offset} that this partition had read: the topic was reset",
                first,
                new_epoch=True,
            )
        was_idle = processor.idle
        processor.idle = False
        self.pending_dead.clear()
        closed = processor.process(records)
        for offset, key, value, reason, detail in self.pending_dead:
            await self.source.send_dead_letter(
                *dead_letter_record(self.topic, partition, offset, key, value, reason, detail)
            )
        return closed or was_idle

    def _dead_letter_collector(self) -> Any:
        def collect(
            offset: int, key: bytes | None, value: bytes | None, reason: InvalidReason, detail: str
        ) -> None:
            self.pending_dead.append((offset, key, value, reason, detail))

        return collect

    # ------------------------------------------------------------------ durability

    async def _checkpoint(self, partition: int, force: bool = False) -> None:
        state = self.partitions.get(partition)
        if state is None or state.poisoned:
            return
        checkpoint = state.processor.checkpoint()  # writes late readings (staged)
        await self.source.flush()  # dead letters are durable before the commit
        try:
            saved = state.processor.commit(self.checkpoints, checkpoint, force)
        except PartitionLostError as exc:
            log.warning("%s", exc)
            self._retire(partition)
            return
        state.checkpointed_at = self.clock()
        if not saved:
            return  # a quiet partition: nothing new to save or commit
        if checkpoint.offset is not None:
            try:
                await self.source.commit(partition, checkpoint.offset)
            except Exception as exc:  # the checkpoint file is the source of truth
                log.warning("partition %d: offset commit failed (%s)", partition, exc)

    async def checkpoint_all(self) -> None:
        for partition in list(self.partitions):
            await self._checkpoint(partition)
        self.last_checkpoint_at = self.clock()

    # ------------------------------------------------------------------ timers

    async def tick(self) -> None:
        """Every second: resets and idle partitions, periodic checkpoints, the log line."""
        async with self.lock:
            now = self.clock()
            options = self.options
            idle_now: list[int] = []
            for partition, state in list(self.partitions.items()):
                if state.poisoned:
                    continue
                processor = state.processor
                highwater = self.source.highwater(partition)
                if (
                    highwater is not None
                    and processor.next_offset is not None
                    and highwater < processor.next_offset
                ):
                    # The log ends before what was read, and nothing comes (some brokers
                    # answer a fetch beyond the end with an empty batch, not an error).
                    start = (await self.source.log_starts([partition])).get(partition, 0)
                    await self._lost(
                        partition,
                        state,
                        f"the log now ends at offset {highwater}, before offset "
                        f"{processor.next_offset} that this partition had read: the topic "
                        "was reset",
                        start,
                        new_epoch=True,
                    )
                    await self.source.seek(partition, start)
                    continue
                if self._silent_for(partition, state, now) >= options.idle_timeout and (
                    await self._caught_up(partition, processor)
                ):
                    idle_now.append(partition)
            if idle_now:
                await self._advance_idle(idle_now)
            if now - self.last_checkpoint_at >= options.checkpoint_interval:
                await self.checkpoint_all()
            if now - self._last_log[0] >= options.log_interval:
                self._log_line(now)
                self.write_status()

    async def _advance_idle(self, idle: list[int]) -> None:
        """Idle partitions close their windows and follow the others' watermark."""
        count = self.source.partition_count() or 0
        others = [p for p in range(count) if p not in self.partitions]
        # other workers' checkpoints, at every tick while idle: off the loop, at once
        everyone = await asyncio.to_thread(self.checkpoints.load_many, others)
        for partition, state in self.partitions.items():  # this worker's own: fresher
            everyone[partition] = Checkpoint(
                close_boundary_ms=state.processor.close_boundary, idle=partition in idle
            )
        for partition in idle:
            found = self.partitions.get(partition)
            if found is None:
                continue
            processor = found.processor
            changed = not processor.idle
            processor.idle = True
            if processor.close_all():
                changed = True
                log.info("partition %d idle: closed its open windows", partition)
            frontier = idle_frontier(everyone, partition)
            if frontier is not None and processor.advance_to(frontier):
                changed = True
            if changed:
                everyone[partition] = Checkpoint(
                    close_boundary_ms=processor.close_boundary, idle=True
                )
                await self._checkpoint(partition)

    def _silent_for(self, partition: int, state: _Partition, now: float) -> float:
        """How long ``partition`` has had no record while the broker answered its fetches: a
        broker that stopped answering (down, paused, unreachable) restarts the count when it
        answers again, so an outage never makes a partition idle and closes its windows."""
        age = self.source.answered_age(partition)
        if age is None or age > ANSWER_GAP_S:
            state.answered_since = None
            return 0.0
        if state.answered_since is None:
            state.answered_since = now
        return now - max(state.last_record_at, state.answered_since)

    async def _caught_up(self, partition: int, processor: PartitionProcessor) -> bool:
        highwater = self.source.highwater(partition)
        if highwater is None:
            return False
        position = processor.next_offset
        if position is None:
            position = await self.source.position(partition)
        return position is not None and position >= highwater

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict[str, Any]:
        totals = dict(self.totals)
        open_windows = 0
        dead_by_reason: dict[str, int] = {}
        lag = 0
        for partition, state in self.partitions.items():
            processor = state.processor
            counters = processor.counters
            totals["messages"] += counters.messages
            totals["readings"] += counters.readings
            totals["late"] += counters.late_readings
            totals["dead_lettered"] += sum(counters.dead_lettered.values())
            totals["windows"] += counters.windows_written
            for reason, count in counters.dead_lettered.items():
                dead_by_reason[reason] = dead_by_reason.get(reason, 0) + count
            open_windows += processor.open_count
            highwater = self.source.highwater(partition)
            if highwater is not None and processor.next_offset is not None:
                lag += max(0, highwater - processor.next_offset)
        return {
            **totals,
            "open_windows": open_windows,
            "lag": lag,
            "dead_lettered_by_reason": dead_by_reason,
            "resets": self.resets,
            "partitions": sorted(self.partitions),
            "started_at": self.started_at,
            "first_record_at": self.first_record_at,
            "last_activity_at": self.last_activity_at,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "topic_id": self.topic_id,
            "updated_at": time.time(),
            "stopped": self.stopped,
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        """What ``fleetwatch.metrics`` exposes: the totals, dead letters by reason, open
        windows, and per partition its lag and the age of its last checkpoint. Read from the
        metrics server's thread: the partitions are copied first."""
        stats = self.stats()
        now = self.clock()
        partitions = {}
        for partition, state in list(self.partitions.items()):
            highwater = self.source.highwater(partition)
            position = state.processor.next_offset
            lag = None if highwater is None or position is None else max(0, highwater - position)
            age = None if state.checkpointed_at is None else max(0.0, now - state.checkpointed_at)
            partitions[partition] = {"lag": lag, "checkpoint_age": age}
        return {
            "totals": {key: stats[key] for key in self.totals},
            "dead_lettered_by_reason": stats["dead_lettered_by_reason"],
            "open_windows": stats["open_windows"],
            "partitions": partitions,
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
        """A JSON status file beside the checkpoints, for `status` commands and benchmarks;
        informational, so a failure to write it is a warning, never a stop."""
        try:
            self.checkpoints.write_status(self.worker_name, json.dumps(self.stats()))
        except FleetwatchError as exc:
            log.warning("status file not written: %s", exc)


def dead_letter_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    detail: str,
) -> tuple[bytes | None, bytes, Headers]:
    """The dead letter of an invalid record: its bytes (cut to a size any topic takes, the
    original size in a header) and headers saying why and where it came from."""
    value = value or b""
    headers: Headers = [
        ("fleetwatch.reason", reason.encode()),
        ("fleetwatch.detail", detail.encode(errors="replace")[:1000]),
        ("fleetwatch.source.topic", topic.encode()),
        ("fleetwatch.source.partition", str(partition).encode()),
        ("fleetwatch.source.offset", str(offset).encode()),
    ]
    if len(value) > DEAD_LETTER_MAX_VALUE:
        headers.append(("fleetwatch.truncated.value_bytes", str(len(value)).encode()))
        value = value[:DEAD_LETTER_MAX_VALUE]
    if key is not None and len(key) > DEAD_LETTER_MAX_KEY:
        headers.append(("fleetwatch.truncated.key_bytes", str(len(key)).encode()))
        key = key[:DEAD_LETTER_MAX_KEY]
    return key, value, headers
