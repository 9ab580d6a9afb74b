"""Per-partition checkpoints of the aggregator: where to resume and what is already on disk.

A checkpoint is written (atomically) only after every file it vouches for is durable, and
before the matching Kafka offset commit. It is the source of truth for resuming a partition:

- ``offset``: the first record a restart must re-read (the oldest record of any open window);
- ``next_offset``: the record after the last one processed when it was taken;
- ``close_boundary_ms``: the partition's persisted watermark: every window ending at or before
  it has been written, and a reading for such a window is late from now on;
- ``max_event_ms``: the partition's newest event time, from which its watermark follows;
- ``epoch``: how many times the partition's log was found reset (offsets started again);
- ``topic_id``: the Kafka topic id the offsets belong to (None where the broker has none);
- ``idle``: the partition was caught up and silent for the idle timeout when it was taken (see
  :mod:`fleetwatch.aggregate.progress` for what that changes).

Re-reading from ``offset`` rebuilds the open windows exactly; records before ``next_offset``
whose window is already closed were written (or sent to the late sink) before, so they are
skipped, and files written after the checkpoint are deleted before the replay rewrites them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fleetwatch.storage.atomic import read_whole, write_text_atomically


@dataclass(frozen=True)
class Checkpoint:
    offset: int | None = None  # None: nothing read yet, start at the beginning of the log
    next_offset: int | None = None
    close_boundary_ms: int | None = None
    max_event_ms: int | None = None
    epoch: int = 0
    topic_id: str | None = None
    idle: bool = False


_FIELDS = frozenset(f.name for f in fields(Checkpoint))


class CheckpointStore:
    """One JSON file per partition under ``root`` (``<data>/state/aggregate/<topic>``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, partition: int) -> Path:
        return self.root / f"p{partition:04d}.json"

    def load(self, partition: int) -> Checkpoint | None:
        try:
            document = json.loads(read_whole(self.path(partition)))
        except FileNotFoundError:
            return None
        return Checkpoint(**{k: v for k, v in document.items() if k in _FIELDS})

    def save(self, partition: int, checkpoint: Checkpoint) -> None:
        write_text_atomically(self.path(partition), json.dumps(asdict(checkpoint)))
