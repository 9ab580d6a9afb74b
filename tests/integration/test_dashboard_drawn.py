"""What the dashboard draws, read back from plotly.js in headless Chromium (issue 24, item 5):
an hour's heatmap cell spans that hour (not half an hour early); the Durations chart has a bar
per run even when runs start in the same minute; the marks sit on the sensors that drove each
anomaly; a gap in the data is drawn as a gap; "no anomaly" and "not scored" look different.
Skips, saying why, where no Chromium or Playwright is installed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from fleetwatch.config import Settings
from fleetwatch.scoring.score import score_hour
from tests.conftest import wait_for
from tests.integration.test_dashboard_browser import CHROMIUM, browser_missing
from tests.unit.scoring.conftest import T0
from tests.unit.scoring.conftest import trained as trained  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.scenario]
HOUR = timedelta(hours=1)


@pytest.fixture
def served(trained: Settings, tmp_path: Path) -> Any:
    for hour in range(3):
        score_hour(trained, T0 + hour * HOUR, progress=False)
    score_hour(trained, T0 + 2 * HOUR, progress=False)  # two runs that start in one minute
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    log = (tmp_path / "dashboard.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "dashboard", "--data-dir", str(trained.data_dir),
         "--port", "0"],
        env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    url = line.split("http://", 1)[1].split()[0].rstrip("/")
    yield f"http://{url}", trained
    process.send_signal(signal.SIGINT)
    process.wait(30)
    log.close()


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_what_is_drawn_is_what_the_data_says(served: Any) -> None:
    from playwright.sync_api import sync_playwright

    url, settings = served
    with duckdb.connect(str(settings.layout.database), read_only=True) as db:
        runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]  # type: ignore[index]
        drivers = db.execute(
            "SELECT strftime(window_start, '%Y-%m-%dT%H:%M'), list(t.sensor) FROM "
            "(SELECT window_start, unnest(top_sensors) AS t FROM anomalies "
            " WHERE device_id = 'pump-03') GROUP BY 1"
        ).fetchall()
    driven = {start: set(sensors) for start, sensors in drivers}
    assert driven  # pump-03's level shift: anomalies with their sensors
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(f"{url}/fleet")
        page.wait_for_selector("#heatmap[data-ready='1']", timeout=30_000)
        # the pixel column of each cell's edges, against the axis' pixel of each hour start
        edges, hours = page.evaluate(
            """() => {
                const gd = document.getElementById('heatmap');
                const axis = gd._fullLayout.xaxis;
                const cells = gd.calcdata[0][0].x;  // cell edges (brick boundaries)
                const starts = gd.data[0].customdata[0];
                return [cells.map((x) => axis.c2p(x)),
                        starts.map((s) => axis.d2p(s.replace('T', ' ')))];
            }"""
        )
        assert len(edges) == len(hours) + 1
        for edge, hour in zip(edges, hours, strict=False):
            assert abs(edge - hour) < 1.5, (edges, hours)  # 17:00's cell starts at 17:00
        colours = page.evaluate(
            """() => [...document.querySelectorAll('.legend .swatch')].map(
                (s) => getComputedStyle(s).backgroundColor)"""
        )
        assert len(set(colours)) == len(colours)  # no two legend swatches alike

        page.goto(f"{url}/runs")
        page.wait_for_selector("#durations[data-ready='1']", timeout=30_000)
        bars = page.evaluate(
            """() => {
                const gd = document.getElementById('durations');
                const axis = gd._fullLayout.xaxis;
                return gd.calcdata[0].map((bar) => axis.c2p(bar.p));
            }"""
        )
        assert len(bars) == runs and len({round(b) for b in bars}) == runs  # a bar per run

        page.goto(f"{url}/device/pump-03?since=2026-11-22T00:00&until=2026-11-22T03:00")
        page.wait_for_selector("#sensors[data-ready='1']", timeout=30_000)
        marks = page.evaluate(
            """() => document.getElementById('sensors').data
                .filter((t) => t.mode === 'markers').map((t) => [t.name, t.x])"""
        )
        for sensor, starts in marks:
            for start in starts:
                assert sensor in driven[start[:16]], (sensor, start)
        assert sum(len(starts) for _, starts in marks) == sum(map(len, driven.values()))

        page.goto(f"{url}/device/pump-07?since=2026-11-22T00:00&until=2026-11-22T03:00")
        page.wait_for_selector("#sensors[data-ready='1']", timeout=30_000)
        vibration_end = page.evaluate(
            """() => {
                const t = document.getElementById('sensors').data
                    .filter((t) => t.name === 'vibration' && t.mode === 'lines');
                return t[t.length - 1].x[t[t.length - 1].x.length - 1];
            }"""
        )
        assert vibration_end < "2026-11-22T02:00"  # it stopped: the line is not drawn on
        browser.close()
    assert errors == []
    wait_for(lambda: True, 1, "nothing")
