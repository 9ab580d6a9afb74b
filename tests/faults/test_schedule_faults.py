"""Each (hour, device) scored once and alerts at least once with at most one repeat per crash,
whatever happens to the scheduler: kill -9 right after a compacted file is written, right
after a sink took an alert, with every device scored and nothing recorded, and at a random
moment; on a local folder and on S3. The answers come from a clean scoring of the same data and
from the incident rule recomputed with pandas from the stored scores."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from fleetwatch.config import Settings
from fleetwatch.config.values import parse_location
from fleetwatch.scoring.score import score_hour
from fleetwatch.scoring.train import train
from tests.conftest import wait_for
from tests.faults.conftest import Backend, fleetwatch, rng_for
from tests.unit.scoring.conftest import (
    DEVICES,
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
)
from tests.unit.storage.test_compaction import write_in_pieces

pytestmark = pytest.mark.faults
HOURS = 4


def prepared(backend: Backend, tmp_path: Path) -> tuple[Settings, pd.DataFrame]:
    """Four hours of eight devices in many small files (as the aggregator writes them), models
    trained on the first two, every hour closed: as a scheduler finds a data folder."""
    frame = synthetic_windows(hours=HOURS)
    for device in DEVICES[4:]:  # incidents to alert about: spikes in the last two hours
        for minute in (130, 150, 175, 200, 230):
            rows = (frame["device_id"] == device) & (
                frame["window_start"] == T0 + timedelta(minutes=minute)
            )
            frame.loc[rows, ["mean", "min", "max"]] += 40
    settings = replace(
        settings_for(Path("unused")),
        data_dir=parse_location(backend.data_dir),
        local_dir=backend.local_dir if backend.s3 is not None else None,
    )
    write_in_pieces(backend.data_dir, frame)
    train_mixed(settings)
    set_watermark(settings, T0 + timedelta(hours=HOURS))
    clean = settings_for(tmp_path / "clean")  # the answer: each hour scored once, in one piece
    write_in_pieces(clean.data_dir, frame)
    train_mixed(clean)
    set_watermark(clean, T0 + timedelta(hours=HOURS))
    for hour in range(HOURS):
        score_hour(clean, T0 + timedelta(hours=hour), progress=False)
    return settings, stored(clean.layout.database)


def train_mixed(settings: Settings) -> None:
    """Half the fleet on the default model, half on ``--model-kind covariance`` (two of them
    with incidents): the guarantees hold whatever a device's model."""
    train(settings, T0, T0 + timedelta(hours=2), DEVICES[0::2])
    covariance = replace(settings, train=replace(settings.train, model_kind="covariance"))
    train(covariance, T0, T0 + timedelta(hours=2), DEVICES[1::2])


def stored(database: Path) -> pd.DataFrame:
    with duckdb.connect(str(database), read_only=True) as db:
        return db.execute(
            "SELECT device_id, window_start, score, is_anomaly FROM scores ORDER BY 1, 2"
        ).df()


def whole_runs(database: Path) -> Counter[Any]:
    with duckdb.connect(str(database), read_only=True) as db:
        rows = db.execute(
            "SELECT window_start FROM runs WHERE status = 'succeeded' AND scope = 'hour'"
        ).fetchall()
    return Counter(hour for (hour,) in rows)


def final_hours(database: Path) -> int:
    """How many hours have their final run so far; 0 while the scheduler holds the database
    (a reader cannot open it then: DuckDB's file lock), to be asked again."""
    try:
        return len(whole_runs(database))
    except duckdb.Error:
        return 0


def schedule(backend: Backend, log: Path, faults: str = "", *flags: str) -> Any:
    env = {**backend.env, **({"FLEETWATCH_FAULTS": faults} if faults else {})}
    return fleetwatch(
        "schedule", "--every", "1s", "--workers", "2", "--mini-batch-size", "3",
        "--lock-timeout", "30s", *flags, env=env, log=log,
    )  # fmt: skip


def finished(process: Any, within: float = 90) -> int:
    """The process's exit code: killed at its fault point, or stopped when it never got there."""
    try:
        return int(process.wait(within))
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        return int(process.wait(60))


def settled(backend: Backend) -> bool:
    """Every hour scored, and every hour's files merged into one."""
    database = backend.local_dir / "fleetwatch.duckdb"
    if not database.exists():
        return False
    try:
        if len(whole_runs(database)) < HOURS:
            return False
    except duckdb.Error:  # being written
        return False
    names = [key.rsplit("/", 1)[-1] for key in backend.names("aggregates")]
    return sum(name.startswith("p") for name in names) == 0


def test_kills_mid_compaction_and_mid_scoring_score_each_hour_once(
    backend: Backend, tmp_path: Path
) -> None:
    _settings, answer = prepared(backend, tmp_path)
    rng = rng_for("schedule-kill", backend.name)
    log = tmp_path / "schedule.log"
    points = [  # in the order a scheduler reaches them: scoring, then compaction
        f"score.computed:{rng.randint(1, HOURS)}",  # every device scored, nothing recorded
        f"compaction.published:{rng.randint(1, 2)}",  # the compacted file written, no more
        "moment",
    ]
    crashes = 0
    for point in points:
        process = schedule(backend, log, "" if point == "moment" else point)
        if point == "moment":
            time.sleep(rng.uniform(1.0, 4.0))
            process.kill()
        crashes += finished(process) == -signal.SIGKILL
    assert crashes >= 2, log.read_text()[-3000:]
    starts = log.read_text().count("scheduler started")
    process = schedule(backend, log)
    try:
        wait_for(lambda: log.read_text().count("scheduler started") > starts, 60, "a start", log)
        wait_for(lambda: settled(backend), 180, "every hour scored and compacted", log)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    database = backend.local_dir / "fleetwatch.duckdb"
    assert set(whole_runs(database).values()) == {1}, whole_runs(database)  # each hour once
    pd.testing.assert_frame_equal(stored(database), answer)  # the clean scores, row for row
    windows = backend.frame("aggregates")
    assert len(windows) == len(synthetic_windows(hours=HOURS))  # every window, once
    assert not windows.duplicated(["device_id", "sensor", "window_start"]).any()


def expected_incidents(scores: pd.DataFrame, gap: timedelta) -> set[tuple[str, pd.Timestamp]]:
    """The incident rule, recomputed: a device's anomalous windows at most ``gap`` apart."""
    found = set()
    anomalies = scores[scores["is_anomaly"]].sort_values(["device_id", "window_start"])
    for device, rows in anomalies.groupby("device_id"):
        starts = list(rows["window_start"])
        first = previous = starts[0]
        for start in starts[1:]:
            if start - previous > gap + timedelta(minutes=1):  # windows are a minute long
                found.add((str(device), first))
                first = start
            previous = start
        found.add((str(device), first))
    return found


def test_kills_mid_alert_delivery_repeat_at_most_one_alert_each(
    backend: Backend, tmp_path: Path
) -> None:
    _, answer = prepared(backend, tmp_path)
    rng = rng_for("alert-kill", backend.name)
    jsonl = tmp_path / "alerts.jsonl"
    log = tmp_path / "schedule.log"
    flags = ("--jsonl", str(jsonl), "--no-silent", "--max-age", "3650d")
    crashes = 0
    for count in sorted(rng.sample(range(1, 12), 4)):
        process = schedule(backend, log, f"alerts.delivered:{count}", *flags)
        crashes += finished(process) == -signal.SIGKILL
    process = schedule(backend, log, "", *flags)
    try:
        expected = expected_incidents(answer, timedelta(minutes=5))

        def all_sent() -> bool:
            return jsonl.exists() and len(
                {json.loads(line)["alert_id"] for line in jsonl.read_text().splitlines()}
            ) >= len(expected)

        wait_for(all_sent, 120, "every incident alerted", log)
        time.sleep(2)  # a few more ticks: nothing more is sent
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    sent = [json.loads(line) for line in jsonl.read_text().splitlines()]
    ids = Counter(alert["alert_id"] for alert in sent)
    got = {(a["device_id"], pd.Timestamp(a["window_start"])) for a in sent}
    assert got == {(device, pd.Timestamp(start)) for device, start in expected}
    assert crashes >= 3
    assert sum(ids.values()) - len(ids) <= crashes, ids  # at most one repeat per crash


@pytest.mark.parametrize("part_rows", [None, 500], ids=["whole", "in-parts"])
def test_score_killed_with_its_hour_computed_records_nothing_and_a_rerun_is_the_clean_one(
    backend: Backend, tmp_path: Path, part_rows: int | None
) -> None:
    """`fleetwatch score --hour` killed after scoring every device and before recording: the
    database has no trace of the run (one transaction); the rerun's rows are a clean run's.
    The same when the hour is scored a part of its devices at a time (``--part-rows``; an hour
    here is 1,440 rows: three parts)."""
    _, answer = prepared(backend, tmp_path)
    rng = rng_for("score-kill", backend.name)
    hour = T0 + timedelta(hours=rng.randrange(HOURS))
    log = tmp_path / "score.log"
    arguments: tuple[str, ...] = ("score", "--hour", hour.isoformat(), "--workers", "2")
    if part_rows is not None:
        arguments += ("--part-rows", str(part_rows))
    killed = fleetwatch(*arguments, env={**backend.env, "FLEETWATCH_FAULTS": "score.computed:1"},
                        log=log)  # fmt: skip
    assert killed.wait(120) == -signal.SIGKILL
    database = backend.local_dir / "fleetwatch.duckdb"
    assert not database.exists() or whole_runs(database) == Counter()
    again = fleetwatch(*arguments, env=backend.env, log=log)
    assert again.wait(120) == 0, log.read_text()[-2000:]
    assert whole_runs(database) == Counter({hour: 1})
    got = stored(database)
    want = answer[answer["window_start"].between(hour, hour + timedelta(minutes=59))]
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True))


def test_live_scheduler_killed_mid_tick_never_duplicates_or_loses_a_window(
    backend: Backend, tmp_path: Path
) -> None:
    """Issue 28: `schedule --live` killed with windows scored and nothing recorded (the live
    runs and the hourly ones alike), after a sink took an alert, and at a random moment: every
    window of the open hour is scored once, with the clean scores; every incident alerted, at
    most one repeat per kill; then the hour closes and its final run replaces the live scores,
    and sends nothing again."""
    settings, answer = prepared(backend, tmp_path)
    open_hour = T0 + timedelta(hours=HOURS - 1)
    set_watermark(settings, open_hour + timedelta(minutes=30))  # the last hour is open
    rng = rng_for("live-kill", backend.name)
    log = tmp_path / "schedule.log"
    jsonl = tmp_path / "alerts.jsonl"
    flags = ("--live", "--live-every", "1s", "--jsonl", str(jsonl), "--no-silent",
             "--max-age", "3650d")  # fmt: skip
    crashes = 0
    points = [f"score.computed:{n}" for n in sorted(rng.sample(range(1, 5), 2))]
    points += [f"alerts.delivered:{rng.randrange(1, 6)}", "moment"]
    for point in points:
        process = schedule(backend, log, "" if point == "moment" else point, *flags)
        if point == "moment":
            time.sleep(rng.uniform(1.0, 4.0))
            process.kill()
        crashes += finished(process) == -signal.SIGKILL
    assert crashes >= 3, log.read_text()[-3000:]
    database = backend.local_dir / "fleetwatch.duckdb"
    expected = expected_incidents(answer, timedelta(minutes=5))

    def sent() -> list[dict[str, Any]]:
        if not jsonl.exists():
            return []
        return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]

    def live_scored() -> bool:
        try:
            with duckdb.connect(str(database), read_only=True) as db:
                count = db.execute(
                    "SELECT count(*) FROM scores WHERE window_start >= ?", [open_hour]
                ).fetchone()
        except duckdb.Error:
            return False
        want = answer[answer["window_start"] >= pd.Timestamp(open_hour)]
        everything = count is not None and count[0] == len(want)
        alerted = len({a["alert_id"] for a in sent()}) >= len(expected)
        return everything and alerted and final_hours(database) >= HOURS - 1

    process = schedule(backend, log, "", *flags)
    try:
        wait_for(live_scored, 120, "the open hour scored live, the closed ones final", log)
        time.sleep(2)  # more live ticks: nothing new to read, nothing stored twice
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    alerts = sent()
    ids = Counter(a["alert_id"] for a in alerts)
    got_alerts = {(a["device_id"], pd.Timestamp(a["window_start"])) for a in alerts}
    assert got_alerts == {(device, pd.Timestamp(start)) for device, start in expected}
    assert sum(ids.values()) - len(ids) <= crashes, ids  # at most one repeat per crash
    got = stored(database)
    assert not got.duplicated(["device_id", "window_start"]).any()
    pd.testing.assert_frame_equal(got, answer)  # the clean scores, row for row
    with duckdb.connect(str(database), read_only=True) as db:
        scopes = db.execute(
            "SELECT DISTINCT r.scope FROM scores s JOIN runs r USING (run_id) "
            "WHERE s.window_start >= ?",
            [open_hour],
        ).fetchall()
    assert scopes == [("live",)]
    assert whole_runs(database) == Counter({T0 + timedelta(hours=h): 1 for h in range(HOURS - 1)})
    # the hour closes: its final run replaces the live scores, the same numbers; the incidents
    # it finds are those alerted live: nothing is sent again
    set_watermark(settings, open_hour + timedelta(hours=1, minutes=1))
    process = schedule(backend, log, "", *flags)
    try:
        wait_for(lambda: final_hours(database) >= HOURS, 120, "the last hour final", log)
        time.sleep(2)  # a few more ticks and alert passes
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    assert whole_runs(database) == Counter({T0 + timedelta(hours=h): 1 for h in range(HOURS)})
    pd.testing.assert_frame_equal(stored(database), answer)
    assert sent() == alerts
