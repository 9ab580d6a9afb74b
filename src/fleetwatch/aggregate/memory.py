"""An in-memory log and :class:`~fleetwatch.aggregate.coordinator.Source`, for tests.

Like arroyo's local backend: the coordinator runs against it in milliseconds, with the log
events a real broker produces on purpose (a topic deleted and created again, records deleted
by retention, a fetch position beyond the log's end answered the way Kafka does or the way the
embedded broker does).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fleetwatch.aggregate.coordinator import Headers
from fleetwatch.aggregate.processor import RawRecord

#: What a fetch beyond the log's end does: Kafka answers OFFSET_OUT_OF_RANGE and the client
#: resets to the earliest offset; the embedded broker (Tansu) answers an empty batch.
OutOfRange = Literal["reset_to_earliest", "empty"]


@dataclass
class MemoryLog:
    """A topic's partitions: each a list of ``(key, value, timestamp_ms)`` from ``start``."""

    partitions: int
    topic_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    records: dict[int, list[tuple[bytes | None, bytes | None, int | None]]] = field(
        default_factory=dict
    )
    start: dict[int, int] = field(default_factory=dict)  # first offset still in the log

    def __post_init__(self) -> None:
        for partition in range(self.partitions):
            self.records.setdefault(partition, [])
            self.start.setdefault(partition, 0)

    def append(
        self,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None = None,
    ) -> int:
        self.records[partition].append((key, value, timestamp_ms))
        return self.end(partition) - 1

    def end(self, partition: int) -> int:
        return self.start[partition] + len(self.records[partition])

    def recreate(self) -> None:
        """The topic was deleted and created again: empty, offsets from 0, a new id."""
        self.topic_id = str(uuid.uuid4())
        for partition in range(self.partitions):
            self.records[partition] = []
            self.start[partition] = 0

    def delete_before(self, partition: int, offset: int) -> None:
        """Retention: records before ``offset`` are gone."""
        drop = max(0, offset - self.start[partition])
        self.records[partition] = self.records[partition][drop:]
        self.start[partition] += drop


@dataclass
class MemorySource:
    """A consumer of a :class:`MemoryLog` (all its partitions) and a dead-letter collector."""

    log: MemoryLog
    out_of_range: OutOfRange = "reset_to_earliest"
    positions: dict[int, int] = field(default_factory=dict)
    fetched_highwater: dict[int, int] = field(default_factory=dict)
    answered_at: dict[int, float] = field(default_factory=dict)  # by ``clock``, at each poll
    clock: Callable[[], float] = time.monotonic
    committed: dict[int, int] = field(default_factory=dict)
    dead_letters: list[tuple[bytes | None, bytes, Headers]] = field(default_factory=list)
    queued: list[tuple[bytes | None, bytes, Headers]] = field(default_factory=list)
    fail_sends: bool = False
    with_topic_ids: bool = True

    async def seek(self, partition: int, offset: int) -> None:
        self.positions[partition] = offset

    def highwater(self, partition: int) -> int | None:
        return self.fetched_highwater.get(partition)

    def answered_age(self, partition: int) -> float | None:
        answered = self.answered_at.get(partition)
        return None if answered is None else self.clock() - answered

    async def position(self, partition: int) -> int | None:
        return self.positions.get(partition)

    async def log_starts(self, partitions: Sequence[int]) -> dict[int, int]:
        return {partition: self.log.start[partition] for partition in partitions}

    async def commit(self, partition: int, offset: int) -> None:
        self.committed[partition] = offset

    async def send_dead_letter(self, key: bytes | None, value: bytes, headers: Headers) -> None:
        if self.fail_sends:
            raise ConnectionError("the dead-letter topic is unreachable")
        self.queued.append((key, value, headers))

    async def flush(self) -> None:
        self.dead_letters += self.queued
        self.queued = []

    async def topic_id(self) -> str | None:
        return self.log.topic_id if self.with_topic_ids else None

    def partition_count(self) -> int | None:
        return self.log.partitions

    def poll(self, max_records: int = 500) -> dict[int, list[RawRecord]]:
        """One fetch from every assigned (sought) partition, as a consumer's getmany."""
        batches: dict[int, list[RawRecord]] = {}
        for partition, position in list(self.positions.items()):
            self.answered_at[partition] = self.clock()
            start, end = self.log.start[partition], self.log.end(partition)
            if not start <= position <= end:
                if self.out_of_range == "empty" and position > end:
                    self.fetched_highwater[partition] = end
                    continue
                position = self.positions[partition] = start
            self.fetched_highwater[partition] = end
            chosen = self.log.records[partition][position - start : position - start + max_records]
            if chosen:
                batches[partition] = [
                    (position + i, key, value, timestamp)
                    for i, (key, value, timestamp) in enumerate(chosen)
                ]
                self.positions[partition] = position + len(chosen)
        return batches
