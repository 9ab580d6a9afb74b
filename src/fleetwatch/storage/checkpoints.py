"""Per-partition checkpoints of the aggregator: where to resume and what is already on disk.

A checkpoint is written (atomically) only after every file it vouches for is durable, and
before the matching Kafka offset commit. It is the source of truth for resuming a partition:

- ``offset``: the first record a restart must re-read (the oldest record of any open window);
- ``next_offset``: the record after the last one processed when it was taken;
- ``close_boundary_ms``: every window ending at or before it has been written;
- ``max_event_ms``: the partition's newest event time, from which the watermark follows.

Re-reading from ``offset`` rebuilds the open windows exactly; records before ``next_offset``
whose window is already closed were written (or sent to the late sink) before, so they are
skipped, and files written after the checkpoint are deleted before the replay rewrites them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from fleetwatch.storage.parquet import fsync_directory


@dataclass(frozen=True)
class Checkpoint:
    offset: int | None  # None: nothing read yet, start where Kafka says
    next_offset: int | None
    close_boundary_ms: int | None
    max_event_ms: int | None


class CheckpointStore:
    """One JSON file per partition under ``root`` (``<data>/state/aggregate/<topic>``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, partition: int) -> Path:
        return self.root / f"p{partition:04d}.json"

    def load(self, partition: int) -> Checkpoint | None:
        try:
            document = json.loads(self.path(partition).read_text())
        except FileNotFoundError:
            return None
        return Checkpoint(**document)

    def save(self, partition: int, checkpoint: Checkpoint) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(partition)
        temporary = path.with_suffix(".json.tmp")
        with temporary.open("w") as handle:
            json.dump(asdict(checkpoint), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(self.root)
