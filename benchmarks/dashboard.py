"""The dashboard's pages at 1,000 devices x 48 hours, against what a competent user would write.

    python benchmarks/dashboard.py                        # 1,000 devices x 48 h, 5 rounds
    python benchmarks/dashboard.py --data-dir /tmp/fw-dash --rounds 9 --format json

Setup (not timed): a data folder as 48 hourly scoring runs leave it: one-minute windows of 3
sensors per device as Parquet (8.6 M window rows), their scores in DuckDB (2.9 M rows, 2% of
them anomalous, some devices silent or failed in some hours), the runs and device outcomes.
Then, per round:

(a) the baseline a competent user writes for the same three pages: pandas over DuckDB and the
    Parquet (``.df()``, ``groupby().unstack()``, ``pd.read_parquet(filters=...)``) and
    plotly's own figures (``go.Heatmap``, ``make_subplots``, ``fig.to_html``), the runs as
    ``DataFrame.to_html``;
(b) fleetwatch's pages through its ASGI app in process (Starlette's test client: routing,
    queries, templates; no network), the server's share of a page load;
(c) with ``--browser`` (and Chromium installed): the whole load in headless Chromium against
    ``fleetwatch dashboard``, from navigation until every chart is drawn (plotly.js cached
    after the first page, as a browser keeps it).

Printed: per page, the medians of (a), (b) and (c), the ratio a/b, and the page's size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from fleetwatch.config import load_settings
from fleetwatch.storage.duck import ensure_schema
from fleetwatch.storage.layout import DataLayout
from fleetwatch.storage.parquet import PartitionedParquetSink, publish_staged

T0 = datetime(2026, 11, 20, tzinfo=UTC)
SENSORS = ["pressure", "temperature", "vibration"]


def build(data: Path, devices: int, hours: int, seed: int = 0) -> None:
    """The data folder: Parquet windows, and DuckDB's runs, outcomes and scores (in SQL)."""
    rng = np.random.default_rng(seed)
    layout = DataLayout.open(data)
    sink = PartitionedParquetSink(layout, "aggregates")
    names = np.array([f"pump-{d:05d}" for d in range(devices)])
    for hour in range(hours):
        start = pd.Timestamp(T0 + timedelta(hours=hour))
        minutes = pd.date_range(start, periods=60, freq="1min")
        count = devices * len(SENSORS) * 60
        mean = rng.normal(10, 1, count)
        frame = pd.DataFrame(
            {
                "device_id": np.repeat(names, len(SENSORS) * 60),
                "sensor": np.tile(np.repeat(SENSORS, 60), devices),
                "window_start": np.tile(minutes, devices * len(SENSORS)),
                "window_end": np.tile(minutes + pd.Timedelta(minutes=1), devices * len(SENSORS)),
                "count": np.full(count, 6, dtype=np.int64),
                "mean": mean,
                "std": np.abs(rng.normal(0.5, 0.1, count)),
                "min": mean - 1,
                "max": mean + 1,
                "first_offset": np.zeros(count, dtype=np.int64),
                "last_offset": np.zeros(count, dtype=np.int64),
            }
        )
        for column in ("window_start", "window_end"):
            frame[column] = frame[column].astype("datetime64[ms, UTC]")
        sink.write(frame, 0, "window_start")
        publish_staged(sink)
    ensure_schema(layout.database)
    with duckdb.connect(str(layout.database)) as db:
        db.execute("SET TimeZone = 'UTC'")
        db.execute(
            """
            INSERT INTO runs (run_id, window_start, window_end, started_at, finished_at, status,
                devices_total, devices_scored, devices_failed, devices_without_model,
                devices_silent, rows_scored, error, scope)
            SELECT 'run-' || h, ?::TIMESTAMPTZ + h * INTERVAL 1 HOUR,
                ?::TIMESTAMPTZ + (h + 1) * INTERVAL 1 HOUR,
                ?::TIMESTAMPTZ + (h + 1) * INTERVAL 1 HOUR + INTERVAL 5 MINUTE,
                ?::TIMESTAMPTZ + (h + 1) * INTERVAL 1 HOUR + INTERVAL 5 MINUTE + INTERVAL 2 SECOND,
                'succeeded', ?, ? - 20, 10, 0, 10, (? - 20) * 60, NULL, 'hour'
            FROM range(?) t(h)
            """,
            [T0, T0, T0, T0, devices, devices, devices, hours],
        )
        db.execute(
            """
            INSERT INTO device_runs
            SELECT 'run-' || h, printf('pump-%05d', d),
                CASE WHEN (d + h) % 97 = 0 THEN 'failed'
                     WHEN (d + h) % 89 = 0 THEN 'silent' ELSE 'scored' END,
                NULL, 'v0001', 60
            FROM range(?) a(h), range(?) b(d)
            """,
            [hours, devices],
        )
        db.execute(
            """
            INSERT INTO scores (run_id, device_id, window_start, window_end, score, is_anomaly,
                model_version, score_normalized, top_sensors)
            SELECT 'run-' || h, printf('pump-%05d', d),
                ?::TIMESTAMPTZ + h * INTERVAL 1 HOUR + m * INTERVAL 1 MINUTE,
                ?::TIMESTAMPTZ + h * INTERVAL 1 HOUR + (m + 1) * INTERVAL 1 MINUTE,
                s, s < -1.0, 'v0001', s,
                CASE WHEN s < -1.0 THEN [{'sensor': 'pressure', 'share': 0.6},
                                         {'sensor': 'vibration', 'share': 0.4}] END
            FROM (SELECT h, d, m, 2 * random() - 0.96 + 0.0 * h AS s
                  FROM range(?) a(h), range(?) b(d), range(60) c(m)
                  WHERE (d + h) % 97 <> 0 AND (d + h) % 89 <> 0)
            """,
            [T0, T0, hours, devices],
        )


# ----------------------------------------------------------------------------- (a) baseline


def baseline_fleet(data: Path) -> str:
    import plotly.graph_objects as go

    with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
        frame = db.execute("SELECT device_id, window_start, is_anomaly FROM scores").df()
    frame["hour"] = frame["window_start"].dt.floor("h")
    share = frame.groupby(["device_id", "hour"])["is_anomaly"].mean().unstack()
    share = share.loc[share.sum(axis=1).sort_values(ascending=False).index]
    figure = go.Figure(go.Heatmap(z=share.values, x=share.columns, y=share.index))
    return figure.to_html(include_plotlyjs=False, full_html=True)


def baseline_device(data: Path, device: str) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    until = T0 + timedelta(hours=48)
    since = until - timedelta(hours=6)
    frame = pd.read_parquet(
        data / "aggregates",
        filters=[("device_id", "=", device), ("window_start", ">=", since)],
        columns=["sensor", "window_start", "mean", "min", "max"],
    )
    with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
        anomalies = db.execute(
            "SELECT window_start FROM anomalies WHERE device_id = ? AND window_start >= ?",
            [device, since],
        ).df()
    sensors = sorted(frame["sensor"].astype(str).unique())
    figure = make_subplots(rows=len(sensors), cols=1, shared_xaxes=True)
    for row, sensor in enumerate(sensors, start=1):
        part = frame[frame["sensor"] == sensor].sort_values("window_start")
        figure.add_trace(go.Scatter(x=part["window_start"], y=part["max"]), row=row, col=1)
        figure.add_trace(
            go.Scatter(x=part["window_start"], y=part["min"], fill="tonexty"), row=row, col=1
        )
        figure.add_trace(go.Scatter(x=part["window_start"], y=part["mean"]), row=row, col=1)
        marked = part[part["window_start"].isin(anomalies["window_start"])]
        figure.add_trace(
            go.Scatter(x=marked["window_start"], y=marked["mean"], mode="markers"), row=row, col=1
        )
    return figure.to_html(include_plotlyjs=False, full_html=True)


def baseline_runs(data: Path) -> str:
    with duckdb.connect(str(data / "fleetwatch.duckdb"), read_only=True) as db:
        frame = db.execute("SELECT * FROM runs ORDER BY started_at DESC").df()
    return frame.to_html()


# ----------------------------------------------------------------------------- measuring


def timed(function: Any, rounds: int) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        size = len(function())
        times.append(time.perf_counter() - started)
    return statistics.median(times), size


def browser_times(data: Path, pages: dict[str, str], rounds: int) -> dict[str, float]:
    chromium = shutil.which("chromium")
    if chromium is None:
        return {}
    from playwright.sync_api import sync_playwright

    server = subprocess.Popen(
        [sys.executable, "-m", "fleetwatch", "dashboard", "--data-dir", str(data), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()
    url = line[line.index("http://") :].split()[0].rstrip("/")
    found: dict[str, float] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/runs")  # plotly.js into the browser's cache, as after one visit
            page.wait_for_selector(".plot[data-ready='1']", timeout=60_000)
            for name, path in pages.items():
                times = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    page.goto(url + path)
                    page.wait_for_function(
                        "[...document.querySelectorAll('.plot')].every(p => p.dataset.ready)",
                        timeout=60_000,
                    )
                    times.append(time.perf_counter() - started)
                found[name] = statistics.median(times)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--hours", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the data folder here")
    parser.add_argument("--browser", action="store_true", help="also time Chromium page loads")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    args = parser.parse_args()
    from starlette.testclient import TestClient

    from fleetwatch.dashboard.app import create_app

    temporary = None
    data = args.data_dir
    if data is None:
        temporary = tempfile.mkdtemp(prefix="fw-dash-")
        data = Path(temporary) / "data"
    try:
        if not (data / "fleetwatch.duckdb").exists():
            started = time.perf_counter()
            build(data, args.devices, args.hours)
            print(f"setup: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        settings = load_settings(environ={}, overrides={"": {"data_dir": str(data)}})
        client = TestClient(create_app(settings))
        device = "pump-00003"
        pages = {"fleet": "/fleet", "device": f"/device/{device}", "runs": "/runs"}
        baselines = {
            "fleet": lambda: baseline_fleet(data),
            "device": lambda: baseline_device(data, device),
            "runs": lambda: baseline_runs(data),
        }
        results: dict[str, Any] = {"devices": args.devices, "hours": args.hours}
        for name, path in pages.items():
            response = client.get(path)
            assert response.status_code == 200, response.text[:500]
            ours, size = timed(lambda p=path: client.get(p).text, args.rounds)
            theirs, their_size = timed(baselines[name], args.rounds)
            results[name] = {
                "fleetwatch_s": ours,
                "baseline_s": theirs,
                "ratio_baseline_to_fleetwatch": theirs / ours,
                "page_bytes": size,
                "baseline_bytes": their_size,
            }
        if args.browser:
            for name, seconds in browser_times(data, pages, args.rounds).items():
                results[name]["chromium_load_s"] = seconds
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    if args.format == "json":
        print(json.dumps(results))
        return 0
    print(f"{args.devices} devices x {args.hours} h; medians of {args.rounds} rounds")
    for name in pages:
        row = results[name]
        browser = (
            f", Chromium load {row['chromium_load_s']:.3f} s" if "chromium_load_s" in row else ""
        )
        print(
            f"{name:7s} fleetwatch {row['fleetwatch_s']:.3f} s ({row['page_bytes'] / 1e3:.0f} kB)"
            f" | baseline pandas+plotly {row['baseline_s']:.3f} s"
            f" | ratio {row['ratio_baseline_to_fleetwatch']:.1f}x{browser}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
