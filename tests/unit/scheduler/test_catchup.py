"""Catch-up: every closed hour exactly once, across restarts, gaps and a moving watermark.

The clock that matters is event time: the aggregation checkpoints' close boundary, which the
tests set by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from fleetwatch.config import Settings, load_settings
from fleetwatch.scheduler.service import CatchUp, next_tick
from fleetwatch.scoring.score import RunResult, score_hour
from fleetwatch.storage.checkpoints import Checkpoint, CheckpointStore
from tests.unit.scoring.conftest import T0

HOUR = timedelta(hours=1)


def set_watermark(settings: Settings, closed: datetime, partitions: int = 2) -> None:
    store = CheckpointStore(settings.data_dir / "state" / "aggregate" / "telemetry")
    for partition in range(partitions):
        boundary = int(closed.timestamp() * 1000) + partition * 60_000  # the min counts
        store.save(partition, Checkpoint(0, 10, boundary, boundary))  # windows still open


def runs_per_hour(settings: Settings) -> dict[int, int]:
    with duckdb.connect(str(settings.data_dir / "fleetwatch.duckdb"), read_only=True) as db:
        rows = db.execute(
            "SELECT hour(window_start), count(*) FROM runs WHERE status = 'succeeded' GROUP BY 1"
        ).fetchall()
    return dict(rows)


def test_closed_hours_once_each_as_the_watermark_moves(trained: Settings) -> None:
    set_watermark(trained, T0 + 2 * HOUR)
    catch_up = CatchUp(trained)
    assert [r.window_start.hour for r in catch_up()] == [0, 1]
    assert catch_up() == []  # nothing new: no duplicates
    set_watermark(trained, T0 + 3 * HOUR)
    assert [r.window_start.hour for r in catch_up()] == [2]
    assert runs_per_hour(trained) == {0: 1, 1: 1, 2: 1}


def test_restart_mid_run_resumes_without_skipping_or_repeating(trained: Settings) -> None:
    set_watermark(trained, T0 + 3 * HOUR)
    calls: list[int] = []

    def crash_after_first(settings: Settings, hour: datetime) -> RunResult:
        if calls:
            raise KeyboardInterrupt  # the process dies mid catch-up
        calls.append(hour.hour)
        return score_hour(settings, hour, progress=False)

    with pytest.raises(KeyboardInterrupt):
        CatchUp(trained, score=crash_after_first)()
    assert runs_per_hour(trained) == {0: 1}
    restarted = CatchUp(trained)  # a new process: state comes from DuckDB only
    assert [r.window_start.hour for r in restarted()] == [1, 2]
    assert runs_per_hour(trained) == {0: 1, 1: 1, 2: 1}


def test_hours_without_data_are_not_runs(trained: Settings) -> None:
    shutil.rmtree(trained.data_dir / "aggregates" / "date=2026-11-22" / "hour=01")
    set_watermark(trained, T0 + 3 * HOUR)
    assert [r.window_start.hour for r in CatchUp(trained)()] == [0, 2]


def test_max_catchup_bounds_a_tick_oldest_first(trained: Settings) -> None:
    set_watermark(trained, T0 + 3 * HOUR)
    settings = load_settings(
        environ={},
        overrides={
            "": {"data_dir": str(trained.data_dir)},
            "schedule": {"max_catchup": "2"},
            "score": {"workers": "1"},
        },
    )
    catch_up = CatchUp(settings)
    assert [r.window_start.hour for r in catch_up()] == [0, 1]
    assert [r.window_start.hour for r in catch_up()] == [2]


def test_an_unfinished_hour_waits_for_every_partition(trained: Settings) -> None:
    set_watermark(trained, T0 + 2 * HOUR + timedelta(minutes=30))
    assert [r.window_start.hour for r in CatchUp(trained)()] == [0, 1]


def test_idle_or_empty_partitions_do_not_hold_hours_back(trained: Settings) -> None:
    set_watermark(trained, T0 + 3 * HOUR, partitions=2)
    store = CheckpointStore(trained.data_dir / "state" / "aggregate" / "telemetry")
    early = int((T0 + HOUR).timestamp() * 1000)
    store.save(2, Checkpoint(50, 50, early, early))  # idle since 01:00, nothing open
    store.save(3, Checkpoint(None, None, None, None))  # never saw data
    assert [r.window_start.hour for r in CatchUp(trained)()] == [0, 1, 2]
    store.save(4, Checkpoint(60, 70, early, early))  # open windows at 01:00 hold back
    set_watermark(trained, T0 + 4 * HOUR, partitions=2)
    assert CatchUp(trained)() == []


def test_next_tick_cron_and_every() -> None:
    settings = load_settings(environ={})
    assert next_tick(settings, T0 + timedelta(minutes=7)) == T0 + HOUR + timedelta(minutes=5)
    fast = load_settings(environ={"FLEETWATCH_SCHEDULE_EVERY": "10s"})
    now = datetime.now(T0.tzinfo)
    tick = next_tick(fast, now)
    assert tick is not None and timedelta(0) <= tick - now <= timedelta(seconds=11)


def test_schedule_sigterm_finishes_the_current_hour_and_exits(
    trained: Settings, tmp_path: Path
) -> None:
    set_watermark(trained, T0 + 3 * HOUR)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env.update(
        {
            "FLEETWATCH_DATA_DIR": str(trained.data_dir),
            "FLEETWATCH_SCORE_WORKERS": "1",
            "FLEETWATCH_SCHEDULE_EVERY": "1s",
        }
    )
    log = tmp_path / "schedule.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetwatch", "schedule"], env=env, stdout=handle, stderr=handle
        )
    deadline = time.monotonic() + 60
    while "scored 2026-11-22T00" not in log.read_text():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert "stopped cleanly" in text and "Traceback" not in text
    done = runs_per_hour(trained)
    assert all(count == 1 for count in done.values()) and 0 in done
    # whatever was left is picked up by the next start, once
    assert [r.window_start.hour for r in CatchUp(trained)()] == sorted({0, 1, 2} - set(done))
    assert runs_per_hour(trained) == {0: 1, 1: 1, 2: 1}
    status = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "status", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(status.stdout)
    assert report["pending_hours"] == [] and len(report["last_runs"]) == 3


def test_retraining_job_makes_new_active_versions(trained: Settings) -> None:
    from fleetwatch.scheduler.service import Retrainer
    from fleetwatch.scoring.registry import ModelRegistry

    set_watermark(trained, T0 + 3 * HOUR)
    settings = load_settings(
        environ={},
        overrides={
            "": {"data_dir": str(trained.data_dir)},
            "schedule": {"retrain_window": "2h"},
            "train": {"workers": "1", "progress": "false"},
        },
    )
    Retrainer(settings)()
    registry = ModelRegistry(trained.data_dir / "models")
    for device in registry.devices():
        active = registry.active(device)
        assert active is not None and active.version == "v0002"
        assert active.manifest["training"]["from"].startswith("2026-11-22T01:00")
        assert active.manifest["training"]["until"].startswith("2026-11-22T03:00")
