"""Live scoring (issue 28): windows scored as their files are published, provisional until the
final run of their hour replaces them; each (device, window) stored once whatever the order;
incidents and alerts from the live scores, with one retraction when the final run disagrees."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from fleetwatch.alerts import Alerter, read_alerts
from fleetwatch.config import Settings
from fleetwatch.scoring.live import live_tick
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.score import Scoring, score_hour
from fleetwatch.scoring.train import train
from fleetwatch.storage.locks import ProcessLock
from tests.unit.scoring.conftest import (
    DEVICES,
    T0,
    set_watermark,
    settings_for,
    synthetic_windows,
    write_windows,
)

HOUR = timedelta(hours=1)
OPEN = T0 + 2 * HOUR  # the hour being scored live


def rows(settings: Settings, sql: str, parameters: list[object] | None = None) -> list[tuple]:
    with duckdb.connect(str(settings.data_dir / "fleetwatch.duckdb"), read_only=True) as c:
        return c.execute(sql, parameters or []).fetchall()


def lock(settings: Settings):  # type: ignore[no-untyped-def]
    return lambda: ProcessLock(settings.layout.state / "scoring.lock", "scoring")


def publish(settings: Settings, frame: pd.DataFrame, minutes: tuple[int, int], part: int) -> None:
    """The windows of minutes [a, b) of the open hour, as one file the aggregator published."""
    start = pd.Timestamp(OPEN) + pd.Timedelta(minutes=minutes[0])
    end = pd.Timestamp(OPEN) + pd.Timedelta(minutes=minutes[1])
    chosen = frame[(frame["window_start"] >= start) & (frame["window_start"] < end)].copy()
    chosen["first_offset"], chosen["last_offset"] = part * 1000, part * 1000 + 999
    write_windows(settings.data_dir, chosen)


@pytest.fixture
def live(tmp_path: Path) -> tuple[Settings, pd.DataFrame]:
    """Two hours trained on and scored final; the third (pump-03 shifts from minute 30 on)
    not yet published."""
    frame = synthetic_windows(hours=3)
    data = tmp_path / "data"
    write_windows(data, frame[frame["window_start"] < pd.Timestamp(OPEN)])
    settings = settings_for(data, incident_gap="3m")
    assert len(train(settings, T0, OPEN).trained) == len(DEVICES)
    set_watermark(settings, OPEN)
    assert score_hour(settings, T0 + HOUR, progress=False).status == "succeeded"
    return settings, frame


def test_each_tick_scores_only_what_was_published_since_and_the_final_run_replaces_it(
    live: tuple[Settings, pd.DataFrame],
) -> None:
    settings, frame = live
    scoring = Scoring.of(settings)
    assert live_tick(scoring, lock(settings)).runs == []  # nothing published in the hour yet
    publish(settings, frame, (0, 20), 1)
    set_watermark(settings, OPEN + timedelta(minutes=20))
    first = live_tick(scoring, lock(settings))
    starts = frame["window_start"]
    opened = pd.Timestamp(OPEN)
    windows = frame[(starts >= opened) & (starts < opened + pd.Timedelta(minutes=20))]
    expected = windows.groupby(["device_id", "window_start"]).ngroups
    assert [r.status for r in first.runs] == ["provisional"] and first.windows == expected
    assert first.lag_s is not None and first.lag_s > 0
    assert live_tick(scoring, lock(settings)).runs == []  # no new file: nothing read
    publish(settings, frame, (20, 40), 2)
    set_watermark(settings, OPEN + timedelta(minutes=40))
    second = live_tick(scoring, lock(settings))
    assert second.windows == expected  # the new file's windows only
    stored = rows(
        settings,
        "SELECT count(*), count(DISTINCT (device_id, window_start)) FROM scores "
        "WHERE window_start >= ?",
        [OPEN],
    )[0]
    assert stored == (2 * expected, 2 * expected)  # no duplicate
    # pump-03 shifted from minute 30: found live, an incident already
    assert rows(settings, "SELECT count(*) FROM incidents WHERE device_id = 'pump-03' "
                "AND window_start >= ?", [OPEN])[0][0] == 1  # fmt: skip
    # the hour closes: its final run replaces every provisional score, exactly once
    publish(settings, frame, (40, 60), 3)
    set_watermark(settings, OPEN + HOUR + timedelta(minutes=1))
    final = score_hour(settings, OPEN, progress=False)
    assert final.status == "succeeded"
    total = frame[frame["window_start"] >= pd.Timestamp(OPEN)].groupby(
        ["device_id", "window_start"]).ngroups  # fmt: skip
    stored = rows(
        settings,
        "SELECT count(*), count(DISTINCT (device_id, window_start)), count(DISTINCT run_id) "
        "FROM scores WHERE window_start >= ?",
        [OPEN],
    )[0]
    assert stored == (total, total, 1)
    assert live_tick(scoring, lock(settings)).runs == []  # a final hour is not scored live
    scopes = rows(settings, "SELECT scope, status FROM runs WHERE window_start = ? "
                  "ORDER BY started_at", [OPEN])  # fmt: skip
    assert scopes == [("live", "provisional")] * 2 + [("hour", "succeeded")]


def test_live_and_final_scores_are_the_same_numbers(live: tuple[Settings, pd.DataFrame]) -> None:
    settings, frame = live
    publish(settings, frame, (0, 60), 1)
    set_watermark(settings, OPEN + timedelta(minutes=59))
    live_tick(Scoring.of(settings), lock(settings))
    provisional = rows(settings, "SELECT device_id, window_start, score, is_anomaly FROM scores "
                       "WHERE window_start >= ? ORDER BY 1, 2", [OPEN])  # fmt: skip
    set_watermark(settings, OPEN + HOUR + timedelta(minutes=1))
    score_hour(settings, OPEN, progress=False)
    final = rows(settings, "SELECT device_id, window_start, score, is_anomaly FROM scores "
                 "WHERE window_start >= ? ORDER BY 1, 2", [OPEN])  # fmt: skip
    assert len(provisional) == len(final) > 0
    assert [r[:2] for r in provisional] == [r[:2] for r in final]
    np.testing.assert_allclose([r[2] for r in provisional], [r[2] for r in final], atol=1e-12)
    assert [r[3] for r in provisional] == [r[3] for r in final]


def test_a_live_incident_alerts_once_and_is_retracted_once_if_the_final_run_disagrees(
    live: tuple[Settings, pd.DataFrame], tmp_path: Path
) -> None:
    settings, frame = live
    sink = tmp_path / "alerts.jsonl"
    from dataclasses import replace

    settings = replace(settings, alerts=replace(settings.alerts, jsonl=sink))
    alerter = Alerter(settings, lock(settings))
    publish(settings, frame, (0, 45), 1)
    set_watermark(settings, OPEN + timedelta(minutes=45))
    live_tick(Scoring.of(settings), lock(settings))
    alerter()

    def pump03() -> list[dict[str, object]]:  # the shifted pump's alerts (others have theirs)
        return [a for a in read_alerts(sink) if a["device_id"] == "pump-03"]

    sent = pump03()
    assert [a["kind"] for a in sent] == ["anomaly"]
    everything = len(read_alerts(sink))
    alerter()
    assert len(read_alerts(sink)) == everything  # once
    # the final run agrees: nothing more
    publish(settings, frame, (45, 60), 2)
    set_watermark(settings, OPEN + HOUR + timedelta(minutes=1))
    score_hour(settings, OPEN, progress=False)
    alerter()
    assert pump03() == sent
    # a new threshold (a new version) no longer finds it: the hour rescored, one retraction
    from fleetwatch.cli.main import main

    done = main(["models", "set-threshold", "pump-03", "--value", "-1e9",
                 "--data-dir", str(settings.data_dir)])  # fmt: skip
    assert done == 0 and ModelRegistry.of(settings.data_dir).active_version("pump-03") == "v0002"
    score_hour(settings, OPEN, devices=["pump-03"], progress=False)
    alerter()
    alerter()
    after = pump03()
    assert [a["kind"] for a in after] == ["anomaly", "retracted"]
    assert after[1]["refers_to"] == sent[0]["alert_id"]


def test_status_and_the_dashboard_show_the_live_state(
    live: tuple[Settings, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    """The open hour's cells are marked provisional until its final run; status and the
    dashboard say how long ago the last live tick was and the lag from window close to score."""
    import json
    import re
    from datetime import UTC, datetime

    from starlette.testclient import TestClient

    from fleetwatch.cli.main import main
    from fleetwatch.dashboard.app import create_app
    from fleetwatch.scheduler.service import scheduler_lock, write_state

    settings, frame = live
    publish(settings, frame, (0, 20), 1)
    set_watermark(settings, OPEN + timedelta(minutes=20))
    done = live_tick(Scoring.of(settings), lock(settings))
    assert done.lag_s is not None and done.lag_max_s is not None

    def heatmap() -> tuple[dict, str]:
        page = TestClient(create_app(settings)).get("/fleet")
        assert page.status_code == 200
        found = re.search(r'data-plot="heatmap">(.*?)</script>', page.text)
        assert found
        return json.loads(found.group(1)), page.text

    drawn, _ = heatmap()
    outlined = [(s["x0"], s["x1"]) for s in drawn["layout"]["shapes"]]
    assert outlined == [(OPEN.isoformat()[:19], (OPEN + HOUR).isoformat()[:19])]
    columns = drawn["data"][0]["customdata"][0]
    open_column = columns.index(OPEN.strftime("%Y-%m-%dT%H:%M"))
    texts = drawn["data"][0]["text"]
    assert all(row[open_column].endswith("(provisional)") for row in texts if row[open_column])
    assert not any("provisional" in row[0] for row in texts)  # the final hours are not
    state = {
        "last_live_tick": done.at.isoformat(),
        "live_windows": done.windows,
        "live_lag_s": round(done.lag_s, 1),
        "live_lag_max_s": round(done.lag_max_s, 1),
    }
    with scheduler_lock(settings):  # a scheduler with --live, as it describes itself
        write_state(settings, datetime.now(UTC), None, state)
        assert main(["status", "--data-dir", str(settings.data_dir)]) == 0
        shown = capsys.readouterr().out
        assert f"{done.windows} windows scored" in shown
        assert f"window close to score {round(done.lag_s, 1):g} s" in shown
        _, page = heatmap()
        assert 'id="live"' in page and f"{done.windows} windows scored" in page
    # the hour closes: its final run; no column is provisional any more
    publish(settings, frame, (20, 60), 2)
    set_watermark(settings, OPEN + HOUR + timedelta(minutes=1))
    assert score_hour(settings, OPEN, progress=False).status == "succeeded"
    drawn, page = heatmap()
    assert drawn["layout"]["shapes"] == [] and 'id="live"' not in page


def test_a_live_incident_is_open_while_it_reaches_the_latest_window_scored_live(
    live: tuple[Settings, pd.DataFrame],
) -> None:
    """An incident's status reads what was scored for its device: in the open hour, the latest
    window a live (provisional) run scored, not the hour's end, which no live run reached."""
    settings, frame = live
    gap = timedelta(minutes=3)  # the fixture's incident gap

    def incident() -> tuple:
        (found,) = rows(settings, "SELECT window_start, window_end, status FROM incidents "
                        "WHERE device_id = 'pump-03' AND window_start >= ?", [OPEN])  # fmt: skip
        return found

    def scored_until() -> object:
        return rows(settings, "SELECT max(window_end) FROM scores WHERE device_id = 'pump-03'")[0][
            0
        ]

    publish(settings, frame, (0, 40), 1)  # pump-03 shifted from minute 30: anomalous to 40
    set_watermark(settings, OPEN + timedelta(minutes=40))
    live_tick(Scoring.of(settings), lock(settings))
    start, end, status = incident()
    assert end + gap >= scored_until()  # it reaches what was scored: it may grow
    assert status == "open"
    publish(settings, frame, (40, 60), 2)  # ... and it grows, still open at the hour's end
    set_watermark(settings, OPEN + HOUR + timedelta(minutes=1))
    live_tick(Scoring.of(settings), lock(settings))
    assert incident()[2] == "open" and incident()[0] == start
    score_hour(settings, OPEN, progress=False)  # the final run: the same
    assert incident()[2] == "open"
