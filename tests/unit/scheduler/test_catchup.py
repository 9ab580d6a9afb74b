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
from fleetwatch.scoring.pending import PendingHour
from fleetwatch.scoring.score import RunResult, score_hour
from fleetwatch.storage.checkpoints import Checkpoint, CheckpointStore
from tests.unit.scoring.conftest import DEVICES, T0, set_watermark

HOUR = timedelta(hours=1)


def duckdb_rows(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.data_dir / "fleetwatch.duckdb"), read_only=True) as db:
        return db.execute(sql).fetchall()


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

    def crash_after_first(settings: Settings, pending: PendingHour) -> RunResult:
        if calls:
            raise KeyboardInterrupt  # the process dies mid catch-up
        calls.append(pending.hour.hour)
        return score_hour(settings, pending.hour, devices=pending.devices, progress=False)

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


def test_unknown_means_not_closed(trained: Settings) -> None:
    """A partition without a checkpoint, or whose watermark is not known (it read nothing, or
    only dead letters, and is not idle yet), or an unknown partition count: nothing is closed.
    (Before, such a partition was read as "everything is closed" and open hours were scored.)"""
    set_watermark(trained, T0 + 3 * HOUR, partitions=3)
    store = CheckpointStore(trained.layout.store, "telemetry")
    store.delete(2)  # a partition no worker has taken yet
    assert CatchUp(trained)() == []
    store.save(2, Checkpoint(None, 1, None, None))  # one dead letter read, nothing closed
    assert CatchUp(trained)() == []
    (trained.data_dir / "state" / "aggregate" / "telemetry" / "topic.json").unlink()  # never
    # recorded by a worker
    store.save(2, Checkpoint(0, 10, 0, 0))
    assert CatchUp(trained)() == []
    early = int((T0 + HOUR).timestamp() * 1000)
    set_watermark(trained, T0 + 3 * HOUR, partitions=3)
    store.save(2, Checkpoint(50, 50, early, early, idle=True))  # an idle one at 01:00
    assert [r.window_start.hour for r in CatchUp(trained)()] == [0]


def test_a_device_trained_later_is_scored_for_the_hours_it_missed(trained: Settings) -> None:
    """The unit of exactly-once is (hour, device): an hour scored while a device had no model
    is pending for that device once it has one, and only for it."""
    from fleetwatch.scheduler.status import status
    from fleetwatch.scoring.registry import ModelRegistry
    from fleetwatch.scoring.train import train

    shutil.rmtree(trained.data_dir / "models")  # pump-05 as if it had never been trained
    train(trained, T0, T0 + 2 * HOUR, [d for d in DEVICES if d != "pump-05"])
    assert ModelRegistry.of(trained.data_dir).active_version("pump-05") is None
    set_watermark(trained, T0 + 3 * HOUR)
    assert len(CatchUp(trained)()) == 3
    assert status(trained)["pending_hours"] == []
    outcomes = dict(duckdb_rows(trained, "SELECT outcome, count(*) FROM device_runs GROUP BY 1"))
    assert outcomes == {"scored": 21, "no_model": 3}
    train(trained, T0, T0 + 2 * HOUR, ["pump-05"])
    report = status(trained)
    assert report["pending_devices"] == 3
    assert [p["devices"] for p in report["pending_hours"]] == [1, 1, 1]
    results = CatchUp(trained)()
    assert [(r.scope, r.devices_scored) for r in results] == [("devices", 1)] * 3
    assert status(trained)["pending_hours"] == [] and CatchUp(trained)() == []
    counts = duckdb_rows(
        trained, "SELECT device_id, count(*), count(DISTINCT window_start) FROM scores GROUP BY 1"
    )
    assert len(counts) == 8 and all(n == 180 and m == 180 for _, n, m in counts)  # no duplicates


def test_a_failing_model_is_retried_only_once_it_changes(trained: Settings) -> None:
    from fleetwatch.scoring.registry import ModelRegistry
    from fleetwatch.scoring.train import train
    from tests.unit.scoring.tamper import rewrite_row

    model = ModelRegistry.of(trained.data_dir).active("pump-02")
    assert model is not None
    rewrite_row(trained.data_dir, model, params=lambda blob: blob + b"tampered")
    set_watermark(trained, T0 + 3 * HOUR)
    assert [r.devices_failed for r in CatchUp(trained)()] == [1, 1, 1]
    assert CatchUp(trained)() == []  # not retried with the same broken model
    train(trained, T0, T0 + 2 * HOUR, ["pump-02"])
    assert [(r.scope, r.devices_scored) for r in CatchUp(trained)()] == [("devices", 1)] * 3


def test_an_hour_scored_before_it_closed_is_scored_again_once_it_is(trained: Settings) -> None:
    from fleetwatch.scoring.score import score_hour

    set_watermark(trained, T0 + 2 * HOUR)
    early = score_hour(trained, T0 + 2 * HOUR, progress=False)
    assert early.status == "provisional"
    assert [r.window_start.hour for r in CatchUp(trained)()] == [0, 1]
    set_watermark(trained, T0 + 3 * HOUR)
    [again] = CatchUp(trained)()
    assert (again.window_start.hour, again.status, again.scope) == (2, "succeeded", "hour")
    rows = duckdb_rows(
        trained, "SELECT count(*), count(DISTINCT run_id) FROM scores WHERE hour(window_start) = 2"
    )
    assert rows == [(8 * 60, 1)]


def test_a_second_scheduler_refuses_and_a_killed_one_leaves_no_lock(
    trained: Settings, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env.update(
        {
            "FLEETWATCH_DATA_DIR": str(trained.data_dir),
            "FLEETWATCH_SCORE_WORKERS": "1",
            "FLEETWATCH_SCHEDULE_EVERY": "1s",
        }
    )
    log = tmp_path / "first.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("a") as handle:
            return subprocess.Popen(
                [sys.executable, "-m", "fleetwatch", "schedule"],
                env=env,
                stdout=handle,
                stderr=handle,
            )

    first = start()
    try:
        deadline = time.monotonic() + 60
        while "scheduler started" not in log.read_text():
            assert time.monotonic() < deadline and first.poll() is None, log.read_text()
            time.sleep(0.1)
        second = subprocess.run(
            [sys.executable, "-m", "fleetwatch", "schedule"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        [line] = second.stderr.strip().splitlines()
        assert f"pid {first.pid}" in line and "one scheduler per data directory" in line
        first.kill()  # kill -9: the lock goes with it
        first.wait(10)
        third = start()
        deadline = time.monotonic() + 60
        while log.read_text().count("scheduler started") < 2:
            assert time.monotonic() < deadline and third.poll() is None, log.read_text()
            time.sleep(0.1)
        third.send_signal(signal.SIGTERM)
        assert third.wait(60) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert all(n == 1 for n in runs_per_hour(trained).values())


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
    shown = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"running (every 1s, pid {process.pid}" in shown  # what runs, not a cron default
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
    registry = ModelRegistry.of(trained.data_dir)
    for device in registry.devices():
        active = registry.active(device)
        assert active is not None and active.version == "v0002"
        assert active.manifest["training"]["from"].startswith("2026-11-22T01:00")
        assert active.manifest["training"]["until"].startswith("2026-11-22T03:00")
