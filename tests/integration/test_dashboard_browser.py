"""The dashboard in a real browser: `fleetwatch demo --dashboard`, then headless Chromium
(Debian's ``chromium``, driven by Playwright) on each page: drawn without console errors, one
heatmap row per device, a click on a cell opens that device's page. A screenshot of each page
is saved: in ``$FLEETWATCH_SCREENSHOTS`` when set (the README's come from there), else in the
test's temporary folder. Skips, saying why, where no Chromium or Playwright is installed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tests.conftest import wait_for
from tests.integration.test_demo_embedded_broker import session_members

pytestmark = [pytest.mark.integration, pytest.mark.scenario]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browser_missing() -> str | None:
    if CHROMIUM is None:
        return "no Chromium: apt-get install chromium (.ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "no Playwright: pip install -e '.[dev]'"
    return None


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_every_page_draws_in_chromium_and_a_cell_opens_its_device(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("FLEETWATCH_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "demo", "--dashboard", "--data-dir", str(data),
         "--devices", "12", "--sensors", "3", "--speed", "720", "--train-for", "2h",
         "--score-for", "2h", "--anomaly-rate", "2", "--timeout", "150s"],
        env={**env, "PYTHONUNBUFFERED": "1", "FLEETWATCH_DASHBOARD_PORT": "0"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert demo.stdout is not None
    seen: list[str] = []
    url = None
    try:
        for line in demo.stdout:  # the demo ends by printing the open dashboard's address
            seen.append(line)
            if line.startswith("dashboard ") and "http://" in line:
                url = line.split()[1].rstrip("/")
                break
        assert url is not None, "".join(seen)
        with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
            devices = {
                row[0] for row in db.execute("SELECT DISTINCT device_id FROM scores").fetchall()
            }
        errors: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            page.goto(f"{url}/fleet")
            page.wait_for_selector("#heatmap[data-ready='1']", timeout=30_000)
            rows = page.evaluate("document.getElementById('heatmap').data[0].y")
            assert sorted(rows) == sorted(devices) and len(rows) == 12
            assert page.locator("#heatmap .nsewdrag").count() == 1
            page.screenshot(path=str(shots / "fleet.png"), full_page=True)

            box = page.locator("#heatmap .nsewdrag").first.bounding_box()
            assert box is not None
            row_height = box["height"] / len(rows)
            page.mouse.click(box["x"] + box["width"] - 5, box["y"] + row_height / 2)
            page.wait_for_url("**/device/**", timeout=10_000)
            assert page.url.split("/device/")[1].split("?")[0] == rows[0]  # the worst, on top
            page.wait_for_selector("#sensors[data-ready='1']", timeout=30_000)
            assert page.locator("#device-id").inner_text() == rows[0]
            first = page.locator("#anomalies a").first
            if first.count():  # select an anomaly: what drove it is drawn
                first.click()
                page.wait_for_selector("#drivers[data-ready='1']", timeout=30_000)
            page.screenshot(path=str(shots / "device.png"), full_page=True)

            page.goto(f"{url}/runs")
            page.wait_for_selector("#durations[data-ready='1']", timeout=30_000)
            scopes = page.locator("#history tbody tr td:nth-child(3)").all_inner_texts()
            assert scopes.count("hour") == 4  # 2 training + 2 scored hours, each once
            assert set(scopes) <= {"hour", "live"}  # and the demo's live runs
            page.screenshot(path=str(shots / "runs.png"), full_page=True)
            browser.close()
        assert errors == []
        assert all(
            (shots / f"{name}.png").stat().st_size > 10_000 for name in ("fleet", "device", "runs")
        )
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)  # --dashboard: Ctrl-C ends it, cleanly
        out, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, "".join(seen) + out
    wait_for(lambda: not session_members(demo.pid), 10, "the demo's processes to end")
