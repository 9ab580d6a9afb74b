"""A full disk is one line that says so, and leaves nothing half-written (before: a DuckDB
rollback error hid it, tracebacks, and a `.v0002.tmp` folder left in the registry)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from fleetwatch.cli import main
from fleetwatch.errors import StorageError
from tests.conftest import fill, small_disk
from tests.unit.scoring.conftest import (
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
    write_windows,
)


@pytest.fixture
def scored_folder(tmp_path: Path) -> Path:
    from fleetwatch.scoring.train import train

    data = tmp_path / "source"
    write_windows(data, synthetic_windows(hours=3))
    settings = settings_for(data)
    train(settings, T0, T0.replace(hour=2))
    set_watermark(settings, T0.replace(hour=3))
    return data


def test_scoring_on_a_full_disk(
    scored_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with small_disk(tmp_path / "disk", "16m") as disk:
        data = disk / "data"
        shutil.copytree(scored_folder, data)
        fill(disk)
        code = main(["score", "--hour", "2026-11-22T02", "--data-dir", str(data), "--workers", "1"])
        err = capsys.readouterr().err.strip()
        assert code == 1, err
        [line] = err.splitlines()
        assert "No space left on device" in line or "no space left" in line
        assert "rollback" not in line.lower() and "Traceback" not in err


def test_training_on_a_full_disk_leaves_no_half_version(
    scored_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with small_disk(tmp_path / "disk", "16m") as disk:
        data = disk / "data"
        shutil.copytree(scored_folder, data)
        fill(disk)
        code = main(
            ["train", "--data-dir", str(data), "--since", "2026-11-22T00", "--until",
             "2026-11-22T02", "--workers", "1", "--no-progress"]
        )  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 1, err
        [line] = err.splitlines()
        assert "No space left on device" in line and "free some space" in line
        assert not list((data / "models").rglob(".v*.tmp")), "a half-written version was left"
        assert not list((data / "models").rglob("v0002"))


def test_aggregation_on_a_full_disk_stops_that_partition_without_a_checkpoint(
    tmp_path: Path,
) -> None:
    from fleetwatch.aggregate.memory import MemoryLog
    from tests.unit.aggregate.test_coordinator import Harness
    from tests.unit.aggregate.test_coordinator import fill as fill_log
    from tests.unit.aggregate.test_processor import make_records

    with small_disk(tmp_path / "disk", "8m") as disk:
        log = MemoryLog(partitions=1)
        fill_log(log, 0, make_records(3, 2000, "d"))
        harness = Harness(disk / "data", log)
        harness.assign(0)
        saved = (disk / "data" / "state" / "aggregate" / "telemetry" / "p0000.json").read_text()
        fill(disk)
        with pytest.raises(StorageError, match="No space left on device"):
            harness.pump()
        asyncio.run(harness.aggregator.on_shutdown())
        after = (disk / "data" / "state" / "aggregate" / "telemetry" / "p0000.json").read_text()
        assert after == saved  # nothing vouched for what could not be written
        assert not list((disk / "data").rglob(".*.tmp"))


def test_writing_commands_on_a_read_only_data_folder_are_one_line(
    scored_folder: Path, tmp_path: Path
) -> None:
    """Issue 24: `score` there was an OSError traceback (its lock), `aggregate` another (Faust's
    state folder). Each writing command says the folder is read-only in one line."""
    from tests.conftest import fleetwatch_cli, remount_read_only

    with small_disk(tmp_path / "disk", "16m") as disk:
        data = disk / "data"
        shutil.copytree(scored_folder, data)
        remount_read_only(disk)
        for arguments in (
            ["score", "--hour", "2026-11-22T01"],
            ["score", "--missed"],
            ["train", "--since", "2026-11-22T00", "--until", "2026-11-22T02"],
            ["schedule", "--every", "1s"],
            ["aggregate", "--bootstrap-servers", "127.0.0.1:9", "--timeout", "1s"],
        ):
            run = fleetwatch_cli(*arguments, "--data-dir", str(data), timeout=60)
            assert run.returncode in (1, 2), (arguments, run.stderr)
            assert "Traceback" not in run.stderr, (arguments, run.stderr)
            [line] = run.stderr.strip().splitlines()
            assert "read-only" in line.lower() or "127.0.0.1:9" in line, (arguments, line)
