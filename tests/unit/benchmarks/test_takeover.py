"""benchmarks/takeover.py's setup and its four ways of taking partitions over."""

from __future__ import annotations

from pathlib import Path

from fleetwatch.storage.checkpoints import CheckpointStore
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.parquet import PartitionedParquetSink
from tests.unit.benchmarks.conftest import load_script


def test_every_way_keeps_the_files_checkpoints_published(tmp_path: Path) -> None:
    """The files are what checkpoints published (a restore removes none of them, whichever
    way it lists), and each is read only by the way that reads them."""
    takeover = load_script("takeover.py")
    layout = DataLayout.open(tmp_path)
    checkpoints = CheckpointStore(layout.store, "telemetry")
    written = takeover.build(layout, checkpoints, partitions=3, files=30)
    aggregates = PartitionedParquetSink(layout, "aggregates")
    late = PartitionedParquetSink(layout, "late")
    assert written == len(list(tmp_path.glob("aggregates/date=*/hour=*/p*.parquet"))) == 30
    for how in takeover.HOWS:
        assert takeover.assign(3, checkpoints, aggregates, late, how) > 0
        assert len(aggregates.listing()) == written, how
    assert {checkpoints.load(p).next_offset for p in range(3)} == {100}
    assert set(takeover.read_checkpoints(checkpoints, 3, rounds=1)) == {
        "one after another",
        "at once",
    }
