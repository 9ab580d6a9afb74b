"""The partition processor against an independent reference: a plain per-event loop + pandas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetwatch.aggregate.processor import OrphanedFilesError, PartitionProcessor, restore
from fleetwatch.aggregate.windows import WindowSpec
from fleetwatch.storage import parquet
from fleetwatch.storage.checkpoints import CheckpointStore
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.parquet import PartitionedParquetSink

SPEC = WindowSpec(size_ms=60_000, grace_ms=30_000)
T0 = 1_795_334_400_000  # 2026-11-22T08:00:00Z


def make_records(
    seed: int, count: int = 3000, prefix: str = "dev"
) -> list[tuple[int, bytes, bytes]]:
    """Readings every ~1 s from 5 devices, with jitter, out-of-order, late and garbage."""
    rng = np.random.default_rng(seed)
    records = []
    for offset in range(count):
        device = f"{prefix}-{rng.integers(5)}"
        ts = T0 + offset * 200 + int(rng.integers(-5_000, 5_000))  # within grace
        if rng.random() < 0.02:
            ts -= int(rng.integers(100_000, 400_000))  # beyond grace: late
        readings = {f"s{j}": float(rng.normal(50, 10)) for j in range(int(rng.integers(1, 4)))}
        value = json.dumps({"device_id": device, "ts": ts, "readings": readings}).encode()
        if rng.random() < 0.01:
            value = b"{broken" + value
        records.append((offset, device.encode(), value))
    return records


def reference(records: list[tuple[int, bytes, bytes]]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Per-event watermark rule, written plainly; then pandas for the window statistics."""
    newest = None
    boundary = None
    kept, late, invalid = [], [], 0
    for _offset, _key, value in records:
        try:
            document = json.loads(value)
        except ValueError:
            invalid += 1
            continue
        ts = document["ts"]
        newest = ts if newest is None else max(newest, ts)
        window_end = ts - ts % 60_000 + 60_000
        target = (newest - 30_000) - (newest - 30_000) % 60_000
        if boundary is not None and window_end <= boundary:
            late += [(document["device_id"], s, ts, v) for s, v in document["readings"].items()]
        else:
            kept += [(document["device_id"], s, ts, v) for s, v in document["readings"].items()]
        boundary = target if boundary is None else max(boundary, target)
    frame = pd.DataFrame(kept, columns=["device_id", "sensor", "ts", "value"])
    frame["window_start"] = frame["ts"] - frame["ts"] % 60_000
    expected = (
        frame.groupby(["device_id", "sensor", "window_start"])["value"]
        .agg(count="count", mean="mean", std=lambda v: v.std(ddof=0), min="min", max="max")
        .reset_index()
    )
    late_frame = pd.DataFrame(late, columns=["device_id", "sensor", "ts", "value"])
    return expected, late_frame, invalid


def read_dir(root: Path) -> pd.DataFrame:
    files = sorted(root.glob("date=*/hour=*/*.parquet"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def as_ms(series: pd.Series) -> pd.Series:
    return series.dt.as_unit("ms").astype("int64")


def compare(root: Path, expected: pd.DataFrame) -> None:
    got = read_dir(root / "aggregates")
    got["window_start"] = as_ms(got["window_start"])
    assert (as_ms(got["window_end"]) - got["window_start"] == 60_000).all()
    assert not got.duplicated(["device_id", "sensor", "window_start"]).any()
    merged = expected.merge(
        got,
        on=["device_id", "sensor", "window_start"],
        how="outer",
        suffixes=("_want", "_got"),
        indicator=True,
    )
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
    assert (merged["count_want"] == merged["count_got"]).all()
    for column in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(
            merged[f"{column}_got"], merged[f"{column}_want"], rtol=1e-9, atol=1e-9
        )


class Harness:
    def __init__(self, root: Path | str) -> None:
        self.root = root
        layout = DataLayout.open(root)
        self.aggregates = PartitionedParquetSink(layout, "aggregates")
        self.late = PartitionedParquetSink(layout, "late")
        self.store = CheckpointStore(layout.store, "telemetry")
        self.dead: list[tuple[int, str]] = []

    def dead_letter(
        self, offset: int, key: object, value: object, reason: str, detail: str
    ) -> None:
        self.dead.append((offset, reason))

    def restore(self) -> PartitionProcessor:
        return restore(0, SPEC, self.store, self.aggregates, self.late, self.dead_letter)


def feed(
    processor: PartitionProcessor, records: list, rng: np.random.Generator, harness: Harness
) -> None:
    position = 0
    while position < len(records):
        size = int(rng.integers(1, 400))
        if processor.process(records[position : position + size]):
            processor.save(harness.store)
        position += size


def finish(
    processor: PartitionProcessor, records: list, rng: np.random.Generator, harness: Harness
) -> None:
    """Feed the records from where the processor resumes, close everything and save."""
    feed(processor, records[processor.next_offset or 0 :], rng, harness)
    processor.close_all()
    processor.save(harness.store)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_windows_equal_pandas_and_late_readings_are_kept(tmp_path: Path, seed: int) -> None:
    records = make_records(seed)
    harness = Harness(tmp_path)
    processor = harness.restore()
    feed(processor, records, np.random.default_rng(seed), harness)
    processor.close_all()
    processor.save(harness.store)
    expected, expected_late, invalid = reference(records)
    compare(tmp_path, expected)
    late = read_dir(tmp_path / "late")
    assert len(late) == len(expected_late) > 0
    got_late = sorted(
        zip(late["device_id"], late["sensor"], as_ms(late["ts"]), late["value"], strict=True)
    )
    assert got_late == sorted(map(tuple, expected_late.itertuples(index=False)))
    assert (late["lateness_ms"] > 30_000).all()
    assert len(harness.dead) == invalid > 0
    assert {reason for _, reason in harness.dead} == {"not_json"}


def test_shapes_forgotten_at_the_limit_change_no_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message's pair ids come from its device's last shape, or from the shapes kept for a
    device seen with several (here every device alternates between 1 to 3 sensors): with both
    maps emptied every few devices, the windows are still pandas'."""
    from fleetwatch.aggregate import processor as module

    monkeypatch.setattr(module, "SHAPES_LIMIT", 3)
    records = make_records(8)
    harness = Harness(tmp_path)
    processor = harness.restore()
    feed(processor, records, np.random.default_rng(8), harness)
    processor.close_all()
    processor.save(harness.store)
    compare(tmp_path, reference(records)[0])


def crash_three_times(
    harness: Harness, records: list, rng: np.random.Generator, checkpoint_chance: float
) -> None:
    """Three crashes at random points: a checkpoint follows a write only ``checkpoint_chance``
    of the time, so files written after the last checkpoint are left behind."""
    for _ in range(3):
        processor = harness.restore()
        position = processor.next_offset or 0
        stop = int(rng.integers(position + 1, len(records)))
        while position < stop:
            size = int(rng.integers(1, 300))
            closed = processor.process(records[position : min(stop, position + size)])
            if closed and rng.random() < checkpoint_chance:
                processor.save(harness.store)
            position += size


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_crash_and_replay_from_checkpoint_gives_the_same_files(tmp_path: Path, seed: int) -> None:
    records = make_records(seed)
    rng = np.random.default_rng(seed)
    clean = Harness(tmp_path / "clean")
    processor = clean.restore()
    feed(processor, records, rng, clean)
    processor.close_all()
    processor.save(clean.store)

    crashy = Harness(tmp_path / "crashy")
    crash_three_times(crashy, records, rng, checkpoint_chance=0.7)
    processor = crashy.restore()
    finish(processor, records, rng, crashy)

    expected, _, _ = reference(records)
    compare(tmp_path / "clean", expected)
    compare(tmp_path / "crashy", expected)
    late_clean = read_dir(tmp_path / "clean" / "late").sort_values(["offset", "sensor"])
    late_crashy = read_dir(tmp_path / "crashy" / "late").sort_values(["offset", "sensor"])
    pd.testing.assert_frame_equal(
        late_clean.reset_index(drop=True), late_crashy.reset_index(drop=True)
    )


def test_idle_close_and_checkpoint_offset(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    processor = harness.restore()
    records = make_records(9, 50)
    processor.process(records)
    assert processor.open_count > 0
    checkpoint = processor.checkpoint()
    assert checkpoint.offset == 0  # the oldest record of an open window
    assert processor.close_all()
    assert processor.open_count == 0
    assert processor.checkpoint().offset == 50


def test_taking_a_partition_over_reads_none_of_its_published_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file a checkpoint published is known from its name: a restore lists them and
    reads none (it read each one's windows: ~5 s a partition on object storage, which set
    off rebalance after rebalance)."""
    harness = Harness(tmp_path)
    records = make_records(12)
    feed(harness.restore(), records[:2000], np.random.default_rng(12), harness)
    published = sorted((tmp_path / "aggregates").glob("date=*/hour=*/*.parquet"))
    assert len(published) > 5
    reads: list[object] = []
    real = parquet.read_table
    monkeypatch.setattr(parquet, "read_table", lambda *a, **k: reads.append(a) or real(*a, **k))
    processor = harness.restore()
    assert reads == []
    assert sorted((tmp_path / "aggregates").glob("date=*/hour=*/*.parquet")) == published
    finish(processor, records, np.random.default_rng(13), harness)
    compare(tmp_path, reference(records)[0])


def test_files_no_checkpoint_published_are_removed_and_written_again(tmp_path: Path) -> None:
    """Files made from records after the checkpoint, visible without one (a writer that did
    not stage them), are read and removed; the replay writes their windows again, once."""
    harness = Harness(tmp_path)
    records = make_records(14)
    processor = harness.restore()
    processor.process(records[:1500])
    processor.save(harness.store)
    before = set((tmp_path / "aggregates").glob("date=*/hour=*/*.parquet"))
    processor.process(records[1500:2500])
    foreign = parquet.publish_staged(harness.aggregates)
    assert foreign
    assert len(set((tmp_path / "aggregates").glob("date=*/hour=*/*.parquet")) - before) > 0
    processor = harness.restore()
    assert set((tmp_path / "aggregates").glob("date=*/hour=*/*.parquet")) == before
    finish(processor, records, np.random.default_rng(15), harness)
    compare(tmp_path, reference(records)[0])


def test_missing_checkpoint_with_existing_files_is_refused(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    processor = harness.restore()
    processor.process(make_records(3, 500))
    processor.close_all()
    processor.save(harness.store)
    harness.store.delete(0)
    with pytest.raises(OrphanedFilesError, match="no checkpoint"):
        harness.restore()


def test_open_window_cap_closes_the_oldest(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    processor = PartitionProcessor(
        0, SPEC, harness.aggregates, harness.late, harness.dead_letter, max_open_windows=20
    )
    processor.process(make_records(2, 400))
    assert processor.open_count <= 20
    assert processor.counters.forced_closes >= 1


def reading(offset: int, ts: int, produced: int | None, device: str = "dev-0") -> tuple:
    value = json.dumps({"device_id": device, "ts": ts, "readings": {"s": 1.0}}).encode()
    return (offset, device.encode(), value, produced)


def test_one_future_timestamp_cannot_poison_the_partition(tmp_path: Path) -> None:
    """A message stamped 2099 is dead-lettered future_timestamp; the readings after it are not
    late. The bound is the record's own timestamp (the producer's clock), so an accelerated
    simulated clock that stamps its records in simulated time passes, and a replay decides
    the same way."""
    harness = Harness(tmp_path)
    processor = PartitionProcessor(
        0, SPEC, harness.aggregates, harness.late, harness.dead_letter, future_limit_ms=3_600_000
    )
    now = T0
    records = [reading(0, now, now)]
    records.append(reading(1, 4_102_358_400_000, now))  # 2099-12-31, produced now
    records += [reading(2 + i, now + 1000 * i, now + 1000 * i) for i in range(120)]
    # an accelerated clock: hours ahead of the wall clock, stamped so by its producer
    records += [reading(122 + i, now + 7_200_000 + i, now + 7_200_000) for i in range(3)]
    processor.process(records)
    processor.close_all()
    processor.save(harness.store)
    assert harness.dead == [(1, "future_timestamp")]
    assert processor.counters.late_readings == 0
    assert read_dir(tmp_path / "aggregates")["count"].sum() == 1 + 120 + 3


def test_a_skipped_offset_fails_loudly_before_changing_anything(tmp_path: Path) -> None:
    from fleetwatch.aggregate.processor import OffsetGapError

    harness = Harness(tmp_path)
    processor = harness.restore()
    records = make_records(13, 100)
    processor.process(records[:40])
    before = processor.checkpoint_view()
    with pytest.raises(OffsetGapError, match="expected offset 40 next, got 45"):
        processor.process(records[45:60])
    with pytest.raises(OffsetGapError, match="expected offset 52 next, got 55"):
        processor.process(records[30:52] + records[55:60])  # a hole inside a batch
    assert processor.checkpoint_view() == before
    processor.process(records[35:100])  # redelivered records before 40 are skipped
    assert processor.counters.duplicates_skipped == 5


def test_an_idle_partition_advances_to_the_frontier(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    processor = harness.restore()
    processor.process([reading(0, T0 + 5_000, None)])
    assert processor.close_boundary == T0 - 60_000 and processor.open_count == 1
    assert processor.advance_to(T0 + 120_000)
    assert processor.open_count == 0 and processor.close_boundary == T0 + 120_000
    assert not processor.advance_to(T0 + 60_000)  # never backwards
    processor.process([reading(1, T0 + 90_000, None)])  # its window is closed now: late
    assert processor.counters.late_readings == 1


NOW = T0 + 3_600_000  # this machine's clock in the tests below: an hour after T0
Y2099 = 4_070_908_800_000


def test_a_producer_clock_in_2099_cannot_poison_the_partition(tmp_path: Path) -> None:
    """Issue 23, defect 5: the record's own timestamp says 2099 too (a device whose clock is
    wrong stamps its records with it). The messages are dead-lettered future_timestamp, the
    watermark stays, and the valid readings after them are windowed, not late."""
    harness = Harness(tmp_path)
    processor = PartitionProcessor(
        0, SPEC, harness.aggregates, harness.late, harness.dead_letter,
        future_limit_ms=3_600_000, clock=lambda: NOW / 1000,
    )  # fmt: skip
    records = [reading(0, NOW - 5_000, NOW - 5_000)]
    records += [reading(1 + i, Y2099 + 1000 * i, Y2099 + 1000 * i, "dev-9") for i in range(10)]
    records += [reading(11 + i, NOW + 1000 * i, NOW + 1000 * i) for i in range(60)]
    processor.process(records)
    assert harness.dead == [(1 + i, "future_timestamp") for i in range(10)]
    assert processor.counters.late_readings == 0
    assert processor.max_event == NOW + 59_000  # the watermark follows the valid readings
    processor.close_all()
    processor.save(harness.store)
    assert read_dir(tmp_path / "aggregates")["count"].sum() == 61


def test_an_accelerated_clock_ahead_of_this_machine_keeps_working(tmp_path: Path) -> None:
    """The simulator at 360x from now: its event time (and its records' timestamps) run hours
    ahead of the wall clock, a little at a time; nothing is dead-lettered."""
    harness = Harness(tmp_path)
    processor = PartitionProcessor(
        0, SPEC, harness.aggregates, harness.late, harness.dead_letter,
        future_limit_ms=3_600_000, clock=lambda: NOW / 1000,
    )  # fmt: skip
    records = [reading(i, NOW + 10_000 * i, NOW + 10_000 * i) for i in range(3000)]  # 8 h ahead
    processor.process(records)
    assert harness.dead == [] and processor.counters.late_readings == 0


def test_a_replay_decides_the_wall_clock_rule_as_it_was_decided(tmp_path: Path) -> None:
    """A message rejected for being ahead of this machine's clock, then a crash before its
    window closed: the restarted worker (whose clock has moved past it) rejects it again, so
    the files are a run's without the crash."""
    late_clock = (NOW + 3 * 3_600_000) / 1000  # three hours later: the message would pass

    def run(root: Path, crash: bool) -> pd.DataFrame:
        harness = Harness(root)
        processor = harness.restore()
        processor.clock = lambda: NOW / 1000  # type: ignore[method-assign]
        processor.future_limit_ms = 3_600_000
        first = [reading(0, NOW, NOW), reading(1, NOW + 7_300_000, NOW + 7_300_000, "dev-9")]
        first += [reading(2 + i, NOW + 1000 * i, NOW + 1000 * i) for i in range(30)]
        processor.process(first)
        processor.save(harness.store)  # the checkpoint: every window still open
        rest = [reading(32 + i, NOW + 30_000 + 1000 * i, None) for i in range(200)]
        if crash:
            processor = harness.restore()  # the crash, and a restart three hours later
            processor.clock = lambda: late_clock  # type: ignore[method-assign]
            processor.future_limit_ms = 3_600_000
            processor.process(first)  # re-read from the oldest open window's record
        processor.process(rest)
        processor.close_all()
        processor.save(harness.store)
        return read_dir(root / "aggregates").sort_values(["device_id", "sensor", "window_start"])

    clean, crashed = run(tmp_path / "clean", False), run(tmp_path / "crashed", True)
    assert "dev-9" not in set(clean["device_id"])
    pd.testing.assert_frame_equal(clean.reset_index(drop=True), crashed.reset_index(drop=True))


def test_an_open_window_merges_batches_as_the_per_pair_rule_does() -> None:
    """Issue 27: a window's states are arrays merged a batch at a time; every pair's result
    equals the per-pair rule (``merge_into``) applied in the same order, to the last bit, with
    pairs arriving in any order, new ones mid-stream, several batches each."""
    from fleetwatch.aggregate.windows import (
        COUNT,
        FIRST_OFFSET,
        LAST_OFFSET,
        M2,
        MAX,
        MEAN,
        MIN,
        OpenWindow,
        aggregate_batch,
        merge_into,
        new_state,
    )

    rng = np.random.default_rng(11)
    window = OpenWindow()
    reference: dict[int, list[float]] = {}
    offset = 0
    for _ in range(40):
        size = int(rng.integers(1, 300))
        pairs = rng.integers(0, 500, size)
        values = rng.normal(0, 1e3, size) * rng.choice([1e-6, 1.0, 1e6], size)
        offsets = np.arange(offset, offset + size)
        offset += size
        stats = aggregate_batch(pairs.astype(np.int64), values, offsets)
        window.merge(stats.codes, stats, slice(None))
        for i, pair in enumerate(stats.codes.tolist()):
            row = (
                int(stats.count[i]), float(stats.mean[i]), float(stats.m2[i]),
                float(stats.minimum[i]), float(stats.maximum[i]),
                int(stats.first_offset[i]), int(stats.last_offset[i]),
            )  # fmt: skip
            if pair in reference:
                merge_into(reference[pair], *row)
            else:
                reference[pair] = new_state(*row)
    assert window.pairs.tolist() == sorted(reference)
    for i, pair in enumerate(window.pairs.tolist()):
        state = reference[pair]
        assert window.count[i] == state[COUNT]
        assert window.mean[i] == state[MEAN] and window.m2[i] == state[M2]
        assert window.minimum[i] == state[MIN] and window.maximum[i] == state[MAX]
        assert window.first[i] == state[FIRST_OFFSET] and window.last[i] == state[LAST_OFFSET]
