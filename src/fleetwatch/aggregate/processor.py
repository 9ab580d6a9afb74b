"""One partition's aggregation: validate, window, close, and say what is safe to commit.

No Kafka here: a :class:`PartitionProcessor` takes batches of raw records ``(offset, key,
value[, timestamp_ms])`` of one partition in offset order and writes closed windows and late
readings through its sinks. The coordinator (:mod:`fleetwatch.aggregate.coordinator`) feeds it
and persists its checkpoints. Everything it decides depends only on the records, never on how
they were batched or on the wall clock, so a replay from a checkpoint reproduces the same files
(see :mod:`..storage.checkpoints`).

Watermark: per partition, the newest event time seen minus the grace period. A window
``[start, end)`` is closed, and written, once the watermark reaches ``end``; a reading whose
window is already closed is late and goes to the late sink with its lateness. The close
boundary also moves when the coordinator finds the partition idle (:meth:`advance_to`).

A message whose event time lies more than ``future_limit_ms`` ahead of its Kafka record's
timestamp (the producer's clock) is dead-lettered ``future_timestamp``: one message stamped
2099 must not move the watermark and make every normal reading after it late. A producer
whose own clock says 2099 stamps its records 2099 too, so a message is also dead-lettered
``future_timestamp`` when it lies more than ``future_limit_ms`` ahead of this machine's clock
*and* of the partition's newest reading: an accelerated simulated clock that runs ahead of the
wall clock moves forward a little at a time and passes, a jump to 2099 does not. That decision
depends on the wall clock, so the offsets it rejected are kept in the checkpoint, and a replay
decides those records as they were decided.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from fleetwatch.aggregate.windows import (
    OpenWindow,
    WindowSpec,
    aggregate_batch,
)
from fleetwatch.errors import FleetwatchError
from fleetwatch.faults import point
from fleetwatch.storage.checkpoints import Checkpoint, CheckpointStore
from fleetwatch.storage.layout import by_partition
from fleetwatch.storage.parquet import PartitionedParquetSink, RecordSink, Staged
from fleetwatch.storage.store import ConflictError, StoredObject
from fleetwatch.telemetry import (
    InvalidMessage,
    InvalidReason,
    Telemetry,
    format_ts,
    parse_exact,
    parse_fast,
)

log = logging.getLogger(__name__)

#: ``(offset, key, value)`` or ``(offset, key, value, timestamp_ms)``; the Kafka record's
#: timestamp (None or negative when it has none) bounds how far ahead its event time may be.
RawRecord = tuple[Any, ...]
DeadLetterFn = Callable[[int, bytes | None, bytes | None, InvalidReason, str], None]
_NO_BOUNDARY = np.iinfo(np.int64).min
_PAIR_SHIFT = 32
_WINDOW_MASK = (1 << _PAIR_SHIFT) - 1
#: (device, its message's sensors) -> their pair ids: emptied when it holds this many.
SHAPES_LIMIT = 1_000_000
Shape = tuple[tuple[str, ...], np.ndarray]  # a message's sensors, in order, and their pair ids


@dataclass
class PartitionCounters:
    messages: int = 0
    readings: int = 0  # readings aggregated into windows
    late_readings: int = 0
    replayed_skipped: int = 0
    duplicates_skipped: int = 0  # records delivered again around a seek
    windows_written: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    forced_closes: int = 0


class OffsetGapError(FleetwatchError):
    """Records were skipped between two batches of a partition: something upstream of the
    processor lost them (see :meth:`PartitionProcessor.process`)."""

    exit_code = 1

    def __init__(self, partition: int, expected: int, got: int) -> None:
        super().__init__(
            f"partition {partition}: expected offset {expected} next, got {got}: "
            f"{got - expected} records were skipped before reaching the aggregator"
        )
        self.partition = partition
        self.expected = expected
        self.got = got


class PartitionLostError(FleetwatchError):
    """Another worker took the partition over: this one's checkpoint write was refused, and
    the files it had staged since its last checkpoint were deleted, never published."""

    exit_code = 1


class PartitionProcessor:
    """Windows of one partition, from a checkpoint onwards."""

    def __init__(
        self,
        partition: int,
        spec: WindowSpec,
        aggregates: RecordSink,
        late: RecordSink,
        dead_letter: DeadLetterFn,
        checkpoint: Checkpoint | None = None,
        max_open_windows: int = 2_000_000,
        future_limit_ms: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.partition = partition
        self.clock = clock
        self.spec = spec
        self.aggregates = aggregates
        self.late = late
        self.dead_letter = dead_letter
        self.max_open_windows = max_open_windows
        self.future_limit_ms = future_limit_ms
        checkpoint = checkpoint or Checkpoint()
        self.epoch = checkpoint.epoch
        self.topic_id = checkpoint.topic_id
        self.idle = False  # set by the coordinator: caught up and silent for the idle timeout
        self.close_boundary: int | None = checkpoint.close_boundary_ms
        self.max_event: int | None = checkpoint.max_event_ms
        self.next_offset: int | None = checkpoint.offset
        # Records before this offset were processed before the checkpoint was taken: their
        # dead letters were sent and their closed-window readings written already.
        self.replay_until: int | None = checkpoint.next_offset
        self.future_rejected: set[int] = set(checkpoint.future_rejected)
        self.open: dict[int, OpenWindow] = {}  # by window start
        self.open_count = 0
        self.pending_late: list[tuple[str, str, int, float, int, int, int]] = []
        self.counters = PartitionCounters()
        # Every (device, sensor) pair gets an id; a message's pairs are looked up once per
        # shape (its device and its sensors, in order), not once per reading: by device (its
        # last shape), and for a device seen with more than one, by device and sensors.
        self._pair_ids: dict[tuple[str, str], int] = {}
        self._pair_devices: list[str] = []
        self._pair_sensors: list[str] = []
        self._last_shape: dict[str, Shape] = {}
        self._shapes: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}
        #: This worker's token for the partition, and the checkpoint's version as it last
        #: wrote it: a write over any other version is refused (see :meth:`commit`).
        self.owner = checkpoint.owner
        self.version: str | None = None
        self.saved: Checkpoint | None = checkpoint

    # ------------------------------------------------------------------ input

    def process(self, records: Sequence[RawRecord]) -> bool:
        """Process records in offset order; True if windows were closed (time to checkpoint).

        Records before ``next_offset`` were delivered again around a seek and are skipped.
        The rest must follow on without a hole: a skipped offset raises
        :class:`OffsetGapError` *before* anything changes, since a record lost upstream would
        otherwise vanish without a trace.
        """
        start = 0
        if self.next_offset is not None:
            while start < len(records) and records[start][0] < self.next_offset:
                start += 1
        expected = self.next_offset
        for record in records[start:]:
            if expected is not None and record[0] != expected:
                raise OffsetGapError(self.partition, expected, record[0])
            expected = record[0] + 1
        self.counters.duplicates_skipped += start
        offsets: list[int] = []
        messages: list[Telemetry] = []
        limit = self.future_limit_ms
        now_ms = round(self.clock() * 1000)
        newest = self.max_event  # the partition's newest reading so far, this batch included
        replay_until = self.replay_until
        clock_limit = now_ms + (limit or 0)
        for record in records[start:]:
            offset, key, value = record[0], record[1], record[2]
            try:
                message = parse_fast(value, key)
                if message is None:  # invalid (its reason), or valid in an unusual way
                    message = parse_exact(value, key)
                ts_ms = message.ts_ms
                if limit is not None:
                    produced = record[3] if len(record) > 3 else None
                    if produced is not None and produced >= 0 and ts_ms > produced + limit:
                        raise InvalidMessage(
                            "future_timestamp",
                            f"ts {format_ts(ts_ms)} is more than {limit // 1000}s ahead "
                            f"of the record's timestamp {format_ts(produced)}",
                        )
                    if (
                        # (the method only when it matters: a reading ahead of the clock, or
                        # a replayed record, whose decision was recorded when first read)
                        (ts_ms > clock_limit or replay_until is not None)
                        and self._ahead_of_the_clock(offset, message, now_ms, newest)
                    ):
                        raise InvalidMessage(
                            "future_timestamp",
                            f"ts {format_ts(ts_ms)} is more than {limit // 1000}s ahead of "
                            f"this machine's clock ({format_ts(now_ms)}) and of the "
                            "partition's newest reading",
                        )
                if newest is None or ts_ms > newest:
                    newest = ts_ms
                messages.append(message)
                offsets.append(offset)
            except InvalidMessage as exc:
                self.counters.dead_lettered[exc.reason] += 1
                if self.replay_until is None or offset >= self.replay_until:
                    self.dead_letter(offset, key, value, exc.reason, exc.detail)
        if start < len(records):
            self.next_offset = records[-1][0] + 1
            self.counters.messages += len(records) - start
        if not messages:
            return False
        return self._window(offsets, messages)

    def _ahead_of_the_clock(
        self, offset: int, message: Telemetry, now_ms: int, newest: int | None
    ) -> bool:
        """The wall-clock rule (see the module docstring); for a replayed record, the
        decision recorded when it was first read."""
        if self.replay_until is not None and offset < self.replay_until:
            return offset in self.future_rejected
        limit = self.future_limit_ms or 0
        ahead = message.ts_ms > now_ms + limit and (
            newest is None or message.ts_ms > newest + limit
        )
        if ahead:
            self.future_rejected.add(offset)
        return ahead

    def _window(self, offsets: list[int], messages: list[Telemetry]) -> bool:
        size = self.spec.size_ms
        ts = np.fromiter((m.ts_ms for m in messages), dtype=np.int64, count=len(messages))
        newest = np.maximum.accumulate(ts)
        if self.max_event is not None:
            newest = np.maximum(newest, self.max_event)
        watermark = newest - self.spec.grace_ms
        boundary = watermark - watermark % size
        if self.close_boundary is not None:
            boundary = np.maximum(boundary, self.close_boundary)
        before = np.empty_like(boundary)
        before[0] = _NO_BOUNDARY if self.close_boundary is None else self.close_boundary
        before[1:] = boundary[:-1]
        window_start = ts - ts % size
        late = window_start + size <= before
        at = np.array(offsets, dtype=np.int64)  # once a batch: every segment takes its rows
        replaying = np.zeros(len(ts), dtype=bool)
        if self.replay_until is not None:
            replaying = at < self.replay_until

        closings = np.flatnonzero(boundary > before).tolist()
        cuts = [0, *closings, len(ts)]
        closed_any = False
        # Segments between the records that advance the close boundary: aggregate a segment,
        # then close what the next record's watermark closes. Batching cannot change this.
        for begin, end in itertools.pairwise(cuts):
            if begin < end:
                self._add(at, messages, window_start, late, replaying, newest, ts, begin, end)
            if end < len(ts):
                closed_any |= self._close_through(int(boundary[end]))
        self.max_event = int(newest[-1])
        self.close_boundary = int(boundary[-1])
        if self.open_count > self.max_open_windows:
            closed_any |= self._force_close()
        return closed_any

    def _add(
        self,
        offsets: np.ndarray,
        messages: list[Telemetry],
        window_start: np.ndarray,
        late: np.ndarray,
        replaying: np.ndarray,
        newest: np.ndarray,
        ts: np.ndarray,
        begin: int,
        end: int,
    ) -> None:
        """Aggregate messages ``begin:end`` into their open windows, a batch at a time: their
        readings grouped by (pair, window) with numpy, each window's groups merged with
        vector operations (:class:`OpenWindow`). Late messages go to the late sink."""
        ids: list[np.ndarray] = []
        values: list[float] = []
        lengths: list[int] = []
        last_shape = self._last_shape
        size = self.spec.size_ms
        kept: range | list[int] = range(begin, end)
        if late[begin:end].any():
            kept = []
            for i in range(begin, end):
                if late[i]:
                    self._late(messages[i], int(offsets[i]), int(window_start[i]),
                               int(newest[i] - ts[i]), bool(replaying[i]))  # fmt: skip
                else:
                    kept.append(i)
            if not kept:
                return
        # The one loop over messages: the rest of the batch's columns are numpy's.
        for i in kept:
            device_id, _, readings = messages[i]
            sensors = tuple(readings)
            shape = last_shape.get(device_id)
            if shape is None or shape[0] != sensors:
                shape = self._shape(device_id, sensors)
            ids.append(shape[1])
            values.extend(readings.values())
            lengths.append(len(readings))
        rows = slice(begin, end) if isinstance(kept, range) else np.array(kept)
        repeat = np.array(lengths, dtype=np.int64)
        codes = (np.concatenate(ids) << _PAIR_SHIFT) | np.repeat(window_start[rows] // size, repeat)
        self.counters.readings += len(codes)
        stats = aggregate_batch(
            codes,
            np.array(values, dtype=np.float64),
            np.repeat(offsets[rows], repeat),
        )
        group_windows = stats.codes & _WINDOW_MASK
        group_pairs = stats.codes >> _PAIR_SHIFT
        for window_index in np.unique(group_windows).tolist():
            chosen = np.flatnonzero(group_windows == window_index)
            start = window_index * size
            window = self.open.get(start)
            if window is None:
                window = self.open[start] = OpenWindow()
            self.open_count += window.merge(group_pairs[chosen], stats, chosen)

    def _shape(self, device: str, sensors: tuple[str, ...]) -> Shape:
        """A message's shape when it is not its device's last one. Remembered by device: a
        message then costs a lookup by its device id and a comparison of its sensors (hashing
        device and sensors for each message cost 0.2 us more). A device seen with more than
        one shape has them all kept by (device, sensors) too, so alternating costs a lookup
        and a device with one shape costs no more memory than a map of shapes would."""
        last = self._last_shape.get(device)
        ids = None
        if last is not None:
            if len(self._shapes) >= SHAPES_LIMIT:
                self._shapes.clear()
            self._shapes[device, last[0]] = last[1]
            ids = self._shapes.get((device, sensors))
        if ids is None:
            ids = self._shape_ids(device, sensors)
        if len(self._last_shape) >= SHAPES_LIMIT:
            self._last_shape.clear()
        shape = self._last_shape[device] = (sensors, ids)
        return shape

    def _shape_ids(self, device: str, sensors: tuple[str, ...]) -> np.ndarray:
        """The pair ids of a message shape (new pairs numbered)."""
        found = []
        for sensor in sensors:
            pair = (device, sensor)
            pair_id = self._pair_ids.get(pair)
            if pair_id is None:
                pair_id = self._pair_ids[pair] = len(self._pair_devices)
                self._pair_devices.append(device)
                self._pair_sensors.append(sensor)
            found.append(pair_id)
        return np.array(found, dtype=np.int64)

    def _late(
        self, message: Telemetry, offset: int, start: int, lateness: int, replaying: bool
    ) -> None:
        if replaying:
            self.counters.replayed_skipped += 1
            return
        for sensor, value in message.readings.items():
            self.pending_late.append(
                (message.device_id, sensor, message.ts_ms, value, start, lateness, offset)
            )
        self.counters.late_readings += len(message.readings)

    # ------------------------------------------------------------------ closing

    def _close_through(self, boundary: int) -> bool:
        """Write every open window ending at or before ``boundary``."""
        size = self.spec.size_ms
        starts = sorted(s for s in self.open if s + size <= boundary)
        if not starts:
            return False
        devices = np.array(self._pair_devices, dtype=object)
        sensors = np.array(self._pair_sensors, dtype=object)
        parts = []
        for start in starts:
            window = self.open.pop(start)
            self.open_count -= len(window)
            parts.append(
                pd.DataFrame(
                    {
                        "device_id": devices[window.pairs],
                        "sensor": sensors[window.pairs],
                        "window_start": np.full(len(window), start, dtype=np.int64),
                        "window_end": np.full(len(window), start + size, dtype=np.int64),
                        "count": window.count,
                        "mean": window.mean,
                        "std": window.std(),
                        "min": window.minimum,
                        "max": window.maximum,
                        "first_offset": window.first,
                        "last_offset": window.last,
                    }
                )
            )
        frame = _with_utc_ms(
            pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0],
            ("window_start", "window_end"),
        )
        frame = frame.sort_values(["window_start", "device_id", "sensor"], kind="stable")
        self.aggregates.write(frame, self.partition, "window_start", self.epoch)
        self.counters.windows_written += len(frame)
        return True

    def close_all(self) -> bool:
        """Close every open window now (the partition went quiet for the idle timeout)."""
        if not self.open:
            return False
        boundary = max(self.open) + self.spec.size_ms
        self.close_boundary = max(boundary, self.close_boundary or boundary)
        return self._close_through(self.close_boundary)

    def advance_to(self, boundary_ms: int) -> bool:
        """Move the close boundary of an idle partition forward to ``boundary_ms`` (the other
        partitions' watermark), closing what it passes: readings for windows before it are late
        from now on. True if anything changed."""
        if self.close_boundary is not None and boundary_ms <= self.close_boundary:
            return False
        self.close_boundary = boundary_ms
        self._close_through(boundary_ms)
        return True

    def resume_after_loss(self, offset: int, new_epoch: bool) -> int:
        """Continue at ``offset`` after the log lost records this partition had not finished
        with (a reset or recreated topic: ``new_epoch``, offsets start again; or retention
        deleted unread records). Windows still open are written as they are (their records
        are gone), and so are pending late readings; the watermark is kept, so readings for
        windows already closed go to the late sink. Returns how many windows were written."""
        written = self.counters.windows_written
        self.close_all()
        self.flush_late()
        if new_epoch:
            self.epoch += 1
        self.next_offset = offset
        self.replay_until = None
        self.future_rejected.clear()
        return self.counters.windows_written - written

    def _force_close(self) -> bool:
        """Too many open windows: close the oldest until under 90 % of the cap."""
        size = self.spec.size_ms
        target = int(self.max_open_windows * 0.9)
        remaining = self.open_count
        boundary = self.close_boundary
        for start in sorted(self.open):
            if remaining <= target:
                break
            remaining -= len(self.open[start])
            boundary = start + size
        assert boundary is not None
        log.warning(
            "partition %d: %d open windows exceed --max-open-windows %d; closing windows "
            "before %s early. Raise the cap, or look for devices with skewed clocks.",
            self.partition,
            self.open_count,
            self.max_open_windows,
            pd.Timestamp(boundary, unit="ms", tz="UTC"),
        )
        self.counters.forced_closes += 1
        self.close_boundary = max(boundary, self.close_boundary or boundary)
        return self._close_through(self.close_boundary)

    # ------------------------------------------------------------------ checkpoints

    def flush_late(self) -> None:
        if not self.pending_late:
            return
        frame = _with_utc_ms(
            pd.DataFrame(
                self.pending_late,
                columns=[
                    "device_id",
                    "sensor",
                    "ts",
                    "value",
                    "window_start",
                    "lateness_ms",
                    "offset",
                ],
            ),
            ("ts", "window_start"),
        )
        frame["partition"] = np.int32(self.partition)
        self.late.write(frame, self.partition, "ts", self.epoch)
        self.pending_late = []

    def checkpoint(self) -> Checkpoint:
        """Write pending late readings; the checkpoint that is now true on disk.

        The caller flushes its dead-letter producer, saves this, then commits ``offset``.
        """
        self.flush_late()
        view = self.checkpoint_view()
        self.future_rejected = set(view.future_rejected)  # older ones are never replayed
        return view

    def checkpoint_view(self) -> Checkpoint:
        """The checkpoint of the current state (true on disk once late readings are written)."""
        oldest = min(
            (int(window.first.min()) for window in self.open.values() if len(window)),
            default=self.next_offset,
        )
        kept = (
            () if oldest is None else tuple(sorted(o for o in self.future_rejected if o >= oldest))
        )
        return Checkpoint(
            offset=oldest,
            next_offset=self.next_offset,
            close_boundary_ms=self.close_boundary,
            max_event_ms=self.max_event,
            epoch=self.epoch,
            topic_id=self.topic_id,
            idle=self.idle,
            future_rejected=kept,
        )

    def commit(
        self, checkpoints: CheckpointStore, checkpoint: Checkpoint, force: bool = False
    ) -> bool:
        """Save ``checkpoint`` (from :meth:`checkpoint`, dead letters flushed since) and
        publish the files staged since the last commit; False when nothing changed.

        Fenced: each write is conditional on the version this processor wrote last, so a
        worker whose partition was taken over publishes nothing (:class:`PartitionLostError`,
        its staged files deleted). With files to publish, the checkpoint is written twice:
        first naming them (readers keep the previous watermark), then, once they are
        published, as it is; a crash in between is completed by whoever restores it."""
        staged = self.aggregates.take_staged(self.partition) + self.late.take_staged(self.partition)
        checkpoint = replace(checkpoint, owner=self.owner)
        if not staged and not force and checkpoint == self.saved:
            return False
        try:
            point("checkpoint.staged")  # files staged, nothing recorded
            if staged:
                before = self.saved.close_boundary_ms if self.saved is not None else None
                intent = replace(checkpoint, publishing=tuple(staged), published_boundary_ms=before)
                self.version = checkpoints.save(self.partition, intent, self.version)
                point("checkpoint.intent")  # recorded, not yet published
                publish(self.aggregates, staged)
                point("checkpoint.published")  # published, the checkpoint still names them
            self.version = checkpoints.save(self.partition, checkpoint, self.version)
        except ConflictError as exc:
            self.aggregates.discard(staged)
            raise PartitionLostError(
                f"partition {self.partition} was taken over by another worker ({exc}); "
                "this worker's unpublished windows were dropped, the new owner replays them"
            ) from None
        self.saved = checkpoint
        return True

    def save(self, checkpoints: CheckpointStore) -> bool:
        """:meth:`checkpoint` and :meth:`commit`, for a caller without dead letters to flush."""
        return self.commit(checkpoints, self.checkpoint())


def publish(sink: RecordSink, staged: Sequence[Staged]) -> None:
    """Move staged files under their names (one already moved is skipped)."""
    for staged_key, final_key in staged:
        sink.store.move(staged_key, final_key)


def _with_utc_ms(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Epoch-millisecond columns as timestamp(ms, UTC), the Parquet schema's type."""
    for column in columns:
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True).astype(
            "datetime64[ms, UTC]"
        )
    return frame


class OrphanedFilesError(FleetwatchError):
    """Aggregates exist for a partition that has no checkpoint."""


@dataclass(frozen=True)
class Listings:
    """The aggregates and the late readings, each listed once for all the partitions one
    assignment restores (:func:`restore`), by partition: on object storage a listing is one
    request per thousand objects, and a dataset holds every partition's files of the hours
    not yet compacted (each partition going through all of them took 0.26 s of CPU a
    partition at 45,000 files). With the store's temporaries (a local folder is walked for
    them once, not once a partition: 0.4 s a partition at 20,000 files)."""

    aggregates: Mapping[int, Sequence[StoredObject]]
    late: Mapping[int, Sequence[StoredObject]]

    @classmethod
    def of(cls, aggregates: PartitionedParquetSink, late: PartitionedParquetSink) -> Listings:
        return cls(
            by_partition(aggregates.listing(temporaries=True)),
            by_partition(late.listing(temporaries=True)),
        )


def restore(
    partition: int,
    spec: WindowSpec,
    checkpoints: CheckpointStore,
    aggregates: PartitionedParquetSink,
    late: PartitionedParquetSink,
    dead_letter: DeadLetterFn,
    max_open_windows: int = 2_000_000,
    future_limit_ms: int | None = None,
    listed: Listings | None = None,
) -> PartitionProcessor:
    """A processor for ``partition`` resumed from its checkpoint: the partition taken over
    (its checkpoint rewritten with a token of this worker's, conditionally, so that a worker
    that had it before can publish nothing more), files its checkpoint was publishing
    published, files written after it removed.

    ``listed``: the datasets listed once for all the partitions of an assignment (without
    it, this partition lists each dataset twice). A listing made before the take-over can
    miss only what the previous owner wrote in between: staged files, which it deletes
    itself when its next checkpoint write is refused, or files its last checkpoint
    publishes, which this one publishes too; the next take-over's listing sees any left.

    Seek the partition to the returned processor's ``next_offset`` (None: the log's start).
    """
    mine = late_ones = None
    if listed is not None:
        mine, late_ones = listed.aggregates.get(partition, []), listed.late.get(partition, [])
    owner = uuid.uuid4().hex[:12]
    for _ in range(20):
        checkpoint, version = checkpoints.load_versioned(partition)
        if checkpoint is None:
            existing = aggregates.has_files(partition, mine)
            if existing is not None:
                raise OrphanedFilesError(
                    f"aggregates of partition {partition} exist ({existing}) but there is no "
                    f"checkpoint {checkpoints.describe(partition)}; restore the state "
                    "directory, or move the old aggregates away to rebuild them from Kafka"
                )
            checkpoint = Checkpoint()
        taken = replace(checkpoint, owner=owner)
        try:
            version = checkpoints.save(partition, taken, version)
            break
        except ConflictError:  # its previous owner wrote meanwhile: read it again
            continue
    else:
        raise FleetwatchError(f"partition {partition}: could not take its checkpoint over")
    if taken.publishing:  # the last owner stopped between its two checkpoint writes
        publish(aggregates, taken.publishing)
        taken = replace(taken, publishing=(), published_boundary_ms=None)
        version = checkpoints.save(partition, taken, version)
    removed = aggregates.remove_leftovers(partition, listed=mine)
    removed += late.remove_leftovers(partition, listed=late_ones)
    removed += aggregates.remove_windows_after(
        partition, taken.close_boundary_ms, taken.epoch, taken.next_offset, mine
    )
    removed += late.remove_from_offset(partition, taken.epoch, taken.next_offset, late_ones)
    if removed:
        log.info("partition %d: removed %d files written after its checkpoint", partition, removed)
    processor = PartitionProcessor(
        partition,
        spec,
        aggregates,
        late,
        dead_letter,
        taken,
        max_open_windows,
        future_limit_ms,
    )
    processor.version = version
    return processor


#: Partitions of one assignment restored at once (each restore waits on a few requests).
RESTORE_THREADS = 16


def restore_all(
    partitions: Sequence[int],
    spec: WindowSpec,
    checkpoints: CheckpointStore,
    aggregates: PartitionedParquetSink,
    late: PartitionedParquetSink,
    dead_letter: DeadLetterFn,
    max_open_windows: int = 2_000_000,
    future_limit_ms: int | None = None,
    threads: int = RESTORE_THREADS,
) -> list[PartitionProcessor]:
    """:func:`restore` of every partition of an assignment, in order: the datasets listed
    once (:class:`Listings`), then up to ``threads`` partitions restored at once. A restore
    is a few requests one after another (the checkpoint read, its conditional rewrite,
    deletes), and each partition's are its own: its checkpoint, its files. The first
    failure is raised once the restores under way have ended."""
    listed = Listings.of(aggregates, late)

    def one(partition: int) -> PartitionProcessor:
        return restore(
            partition,
            spec,
            checkpoints,
            aggregates,
            late,
            dead_letter,
            max_open_windows,
            future_limit_ms,
            listed,
        )

    if threads <= 1 or len(partitions) <= 1:
        return [one(partition) for partition in partitions]
    with ThreadPoolExecutor(
        min(threads, len(partitions)), thread_name_prefix="fleetwatch-restore"
    ) as pool:
        return list(pool.map(one, partitions))
