"""What the aggregation has closed: the one place other stages learn it from.

Each partition's checkpoint persists its **watermark** (its close boundary: every window of the
partition ending at or before it is on disk, and a reading for such a window is late from then
on) and whether the partition is **idle** (caught up with its log and silent for the idle
timeout). The topic's partition count is kept beside them (``topic.json``).

The closing rule, for the topic as a whole: event time is closed through the lowest watermark
of all its partitions. Unknown means *not* closed: a partition without a checkpoint, or whose
watermark is not known yet (it has read nothing but dead letters, or nothing at all, and is not
idle), holds everything back, and so does a topic whose partition count was never recorded.

An idle partition does not hold the others back: the worker advances its watermark to the
lowest watermark of the partitions that are not idle (see :func:`idle_frontier`), or, when every
partition is idle (everything in Kafka has been read and every window written), to the highest
one. A reading that arrives afterwards for a window before its partition's watermark goes to the
late sink, so a closed hour never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from fleetwatch.storage.checkpoints import Checkpoint, CheckpointStore, TopicState
from fleetwatch.storage.layout import DataLayout

__all__ = ["Progress", "TopicState", "checkpoints", "closed_through", "idle_frontier", "progress"]


def checkpoints(layout: DataLayout, topic: str) -> CheckpointStore:
    return CheckpointStore(layout.store, topic)


@dataclass(frozen=True)
class Progress:
    """Every partition's persisted checkpoint (None: none yet) of a topic."""

    partitions: dict[int, Checkpoint | None]
    known: bool  # the partition count was recorded

    @property
    def closed_through_ms(self) -> int | None:
        """The topic's watermark in epoch ms; None when any part of it is unknown."""
        if not self.known or not self.partitions:
            return None
        boundaries = [
            c.readable_boundary_ms if c is not None else None for c in self.partitions.values()
        ]
        if any(b is None for b in boundaries):
            return None
        return min(b for b in boundaries if b is not None)

    @property
    def closed_through(self) -> datetime | None:
        """Event time before which every window of the topic is on disk, or None."""
        closed = self.closed_through_ms
        return None if closed is None else datetime.fromtimestamp(closed / 1000, UTC)


def progress(layout: DataLayout, topic: str) -> Progress:
    store = checkpoints(layout, topic)
    state = store.load_topic_state()
    if state is None:
        return Progress({}, known=False)
    return Progress(store.load_many(range(state.partitions)), known=True)


def closed_through(layout: DataLayout, topic: str) -> datetime | None:
    """Event time before which every window of ``topic`` is on disk (None: not known yet)."""
    return progress(layout, topic).closed_through


def idle_frontier(partitions: dict[int, Checkpoint | None], partition: int) -> int | None:
    """The watermark an idle ``partition`` may advance to, given every partition's checkpoint.

    >>> busy, idle = Checkpoint(close_boundary_ms=600), Checkpoint(close_boundary_ms=300, idle=True)
    >>> idle_frontier({0: busy, 1: idle, 2: Checkpoint(idle=True)}, 2)
    600
    >>> idle_frontier({0: Checkpoint(close_boundary_ms=600, idle=True), 1: idle}, 1)
    600
    """
    others = {p: c for p, c in partitions.items() if p != partition and c is not None}
    busy = [c.close_boundary_ms for c in others.values() if not c.idle]
    if any(b is not None for b in busy):
        return min(b for b in busy if b is not None)
    if busy:  # a busy partition whose watermark is not known yet: nothing to follow
        return None
    known = [c.close_boundary_ms for c in others.values() if c.close_boundary_ms is not None]
    return max(known) if known else None
