"""The dashboard's pages over a scored data folder, through Starlette's test client: what they
show against DuckDB and the Parquet read independently, what they refuse, and that they never
write. (The browser test, tests/integration/test_dashboard_browser.py, draws them.)"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from starlette.testclient import TestClient

from fleetwatch.config import Settings
from fleetwatch.dashboard.app import create_app
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.score import score_hour
from fleetwatch.storage.layout import DataLayout
from tests.unit.scoring.conftest import DEVICES, T0, synthetic_windows, write_windows

HOUR = timedelta(hours=1)


@pytest.fixture
def scored(trained: Settings) -> Settings:
    """Three hours scored; then a fourth where pump-05 sent nothing (silent)."""
    fourth = synthetic_windows(hours=4, seed=3)
    fourth = fourth[(fourth["window_start"] >= pd.Timestamp(T0 + 3 * HOUR))]
    write_windows(trained.data_dir, fourth[fourth["device_id"] != "pump-05"])
    from tests.unit.scoring.conftest import set_watermark

    set_watermark(trained, T0 + 4 * HOUR)
    for hour in range(4):
        assert score_hour(trained, T0 + hour * HOUR, progress=False).status == "succeeded"
    return trained


def figure(html: str, name: str) -> dict:
    found = re.search(rf'<script type="application/json" data-plot="{name}">(.*?)</script>', html)
    assert found, f"no {name} figure"
    return json.loads(found.group(1))


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_fleet_heatmap_is_the_share_of_anomalous_windows(scored: Settings) -> None:
    client = TestClient(create_app(scored))
    page = client.get("/fleet")
    assert page.status_code == 200
    heat = figure(page.text, "heatmap")["data"][0]
    with duckdb.connect(str(DataLayout.open(scored.data_dir).database), read_only=True) as db:
        scores = db.execute("SELECT device_id, window_start, is_anomaly FROM scores").df()
    scores["hour"] = scores["window_start"].dt.floor("h").dt.strftime("%Y-%m-%dT%H:%M")
    share = scores.groupby(["device_id", "hour"])["is_anomaly"].mean()
    assert sorted(heat["y"]) == sorted(DEVICES)  # one row per device
    # each cell is drawn centred on the middle of its hour (17:00 spans 17:00-18:00), and
    # carries the hour's start (hover, click)
    starts = [(T0 + i * HOUR).strftime("%Y-%m-%dT%H:%M") for i in range(4)]
    assert heat["x"] == [(T0 + i * HOUR + HOUR / 2).isoformat()[:19] for i in range(4)]
    assert all(row == starts for row in heat["customdata"])
    for row, device in enumerate(heat["y"]):
        for col, hour in enumerate(starts):
            if (device, hour) in share.index:
                assert heat["z"][row][col] == pytest.approx(share[(device, hour)], abs=5e-4)
            else:  # the silent hour: its own (negative) value, named in the hover text
                assert device == "pump-05" and hour == starts[3]
                assert heat["z"][row][col] < 0 and "silent" in heat["text"][row][col]
    worst = share.groupby(level=0).sum().sort_values(ascending=False)
    assert heat["y"][0] == worst.index[0]  # worst first
    by_name = figure(client.get("/fleet?sort=name").text, "heatmap")["data"][0]
    assert by_name["y"] == sorted(DEVICES)
    only = figure(client.get("/fleet?device=pump-0&since=2026-11-22T02:00").text, "heatmap")
    assert only["data"][0]["customdata"][0] == starts[2:]
    assert "pump-03" in client.get("/fleet").text  # the worst-devices table links it
    assert 'href="/device/pump-03"' in client.get("/fleet").text


def test_the_device_page_shows_its_windows_anomalies_and_model(scored: Settings) -> None:
    client = TestClient(create_app(scored))
    anomaly = (T0 + 2 * HOUR + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")
    page = client.get(
        f"/device/pump-03?since=2026-11-22T00:00&until=2026-11-22T03:00&anomaly={anomaly}"
    )
    assert page.status_code == 200, page.text
    sensors = figure(page.text, "sensors")["data"]
    windows = synthetic_windows()
    own = windows[windows["device_id"] == "pump-03"].sort_values("window_start")
    for sensor in ("pressure", "temperature", "vibration"):
        traces = [t for t in sensors if t["name"] == sensor]
        band_max, band_min, mean, marks = traces
        expected = own[own["sensor"] == sensor]
        assert mean["y"] == pytest.approx(expected["mean"].tolist())
        assert band_min["y"] == pytest.approx(expected["min"].tolist())
        assert band_max["y"] == pytest.approx(expected["max"].tolist())
    with duckdb.connect(str(DataLayout.open(scored.data_dir).database), read_only=True) as db:
        flagged = db.execute(
            "SELECT strftime(window_start, '%Y-%m-%dT%H:%M') FROM scores WHERE device_id = "
            "'pump-03' AND is_anomaly AND window_start < ? ORDER BY 1", [T0 + 3 * HOUR]
        ).fetchall()  # fmt: skip
    assert marks["x"] == [row[0] for row in flagged] and flagged
    active = ModelRegistry.of(scored.data_dir).active("pump-03")
    assert active is not None
    assert f'id="model-version">{active.version}' in page.text
    assert f'id="threshold">{active.manifest["threshold"]}' in page.text
    drivers = figure(page.text, "drivers")["data"][0]
    assert len(drivers["y"]) >= 1 and sum(drivers["x"]) == pytest.approx(100, abs=1.5)


def test_the_runs_page_lists_every_run_and_what_is_pending(scored: Settings) -> None:
    client = TestClient(create_app(scored))
    page = client.get("/runs")
    assert page.status_code == 200
    with duckdb.connect(str(DataLayout.open(scored.data_dir).database), read_only=True) as db:
        runs = db.execute("SELECT count(*) FROM runs").fetchone()
    assert runs is not None and page.text.count('<tr class="status-') == runs[0]
    assert 'id="pending-count">0 hours' in page.text
    assert len(figure(page.text, "durations")["data"][0]["y"]) == runs[0]


@pytest.mark.parametrize(
    "path",
    [
        "/device/bad%20id",
        "/device/%3Cscript%3Ealert(1)%3C",
        "/device/" + "x" * 65,
        "/fleet?device=%3Cscript%3E",
        "/fleet?device=%27%20OR%201%3D1%20--",
        "/fleet?since=yesterday",
        "/fleet?sort=random()",
        "/device/pump-01?anomaly=soon",
    ],
)
def test_bad_parameters_are_one_escaped_line_and_a_400(scored: Settings, path: str) -> None:
    page = TestClient(create_app(scored)).get(path)
    assert page.status_code == 400
    assert "<script>" not in page.text and 'id="error"' in page.text


def test_unknown_devices_and_paths_are_404(scored: Settings) -> None:
    client = TestClient(create_app(scored))
    assert client.get("/device/pump-99").status_code == 404
    assert client.get("/device/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/static/..%2F..%2Fapp.py").status_code == 404


def test_there_is_nothing_to_write_to_and_nothing_is_written(scored: Settings) -> None:
    before = digest(scored.data_dir)
    client = TestClient(create_app(scored))
    for method in ("post", "put", "delete", "patch"):
        for path in ("/fleet", "/device/pump-01", "/runs", "/"):
            assert getattr(client, method)(path).status_code == 405
    for path in ("/", "/fleet", "/device/pump-03", "/runs", "/static/plotly.min.js"):
        response = client.get(path)
        assert response.status_code == 200
    page = client.get("/fleet")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert digest(scored.data_dir) == before


def test_an_empty_data_dir_says_what_to_run(tmp_path: Path, scored: Settings) -> None:
    from dataclasses import replace

    empty = replace(scored, data_dir=tmp_path / "empty")
    empty.data_dir.mkdir()
    client = TestClient(create_app(empty))
    assert "fleetwatch score" in client.get("/fleet").text
    assert client.get("/runs").status_code == 200
