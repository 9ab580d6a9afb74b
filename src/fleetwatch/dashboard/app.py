"""The dashboard's web app: three read-only pages over the data folder.

Starlette routes render Jinja2 templates (autoescaped); each chart is a Plotly figure written as
JSON into the page (``tojson`` escapes it for HTML) and drawn by plotly.js, which is served
from the plotly package itself, so the dashboard needs no network. Only GET (and HEAD) exist;
every parameter is checked before it reaches a query: device ids as everywhere, times parsed.
"""

from __future__ import annotations

import errno
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from fleetwatch.config import Settings
from fleetwatch.dashboard import data
from fleetwatch.errors import FleetwatchError, InvalidInputError
from fleetwatch.scheduler.status import live_line
from fleetwatch.storage.layout import HOUR

HERE = Path(__file__).parent
#: Scripts and styles come from this server only; the figures' JSON is data, never run.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: Heatmap colours: failed, silent, no model, then the share of anomalous windows (0 -> 1).
#: "No anomaly" is a pale green, unlike the white of a cell that was not scored.
NO_ANOMALY = "#d9f0d3"
NOT_SCORED = "#ffffff"
PROVISIONAL = "#1f78b4"  # the dashed outline of a column not final yet
COLORSCALE = [
    [0.0, "#6a3d9a"],
    [0.166, "#6a3d9a"],
    [0.167, "#9e9e9e"],
    [0.333, "#9e9e9e"],
    [0.334, "#9ecae1"],
    [0.4999, "#9ecae1"],
    [0.5, NO_ANOMALY],
    [0.52, "#fee8c8"],
    [0.6, "#fdbb84"],
    [0.75, "#e34a33"],
    [1.0, "#7f0000"],
]
ROW_PIXELS = 14


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M")


def _number(value: Any) -> float | None:
    """JSON has no NaN: missing cells and values become null."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


def _rounded(cells: Any) -> list[list[float | None]]:
    """The cells for JSON: 3 decimals (a share to 0.1%), null for NaN."""
    import numpy as np

    rounded = np.round(cells, 3).astype(object)
    rounded[np.isnan(cells)] = None
    return rounded.tolist()  # type: ignore[no-any-return]


def fleet_figure(fleet: data.Fleet) -> dict[str, Any]:
    # a heatmap draws each cell centred on its x: the middle of the hour (or bucket) it is, so
    # that 17:00 spans 17:00-18:00; the start travels as customdata (for hover and clicks)
    half = fleet.bucket / 2
    starts = [[_iso(start) for start in fleet.hours]] * len(fleet.devices)
    # provisional columns (an hour scored live or early, not final yet): a dashed outline
    shapes = [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": start.strftime("%Y-%m-%dT%H:%M:%S"),
            "x1": (start + fleet.bucket).strftime("%Y-%m-%dT%H:%M:%S"),
            "y0": 0,
            "y1": 1,
            "line": {"color": PROVISIONAL, "width": 2, "dash": "dash"},
            "name": "provisional",
        }
        for start, open_ in zip(fleet.hours, fleet.provisional, strict=False)
        if open_
    ]
    return {
        "data": [
            {
                "type": "heatmap",
                "z": _rounded(fleet.cells),
                "x": [(start + half).strftime("%Y-%m-%dT%H:%M:%S") for start in fleet.hours],
                "y": fleet.devices,
                "text": fleet.text.tolist(),
                "customdata": starts,
                "hovertemplate": "%{y} %{customdata}: %{text}<extra></extra>",
                "zmin": -1,
                "zmax": 1,
                "colorscale": COLORSCALE,
                "showscale": False,
                "xgap": 1,
                "ygap": 1,
            }
        ],
        "layout": {
            "height": max(260, 120 + ROW_PIXELS * len(fleet.devices)),
            "margin": {"l": 120, "r": 20, "t": 30, "b": 60},
            "yaxis": {"autorange": "reversed", "type": "category", "automargin": True},
            "xaxis": {"type": "date", "side": "top"},
            "plot_bgcolor": NOT_SCORED,
            "shapes": shapes,
        },
    }


def device_figure(device: data.Device) -> dict[str, Any]:
    """One row per sensor: the window mean, its min-max band (a gap in the data is a gap), and
    a mark on the sensors that drove each anomalous window (on every sensor when the window has no
    stored explanation)."""
    sensors = sorted(device.series)
    drivers: dict[Any, set[str] | None] = {}
    for item in device.anomalies:
        named = {top["sensor"] for top in item["top_sensors"]}
        drivers[item["window_start"]] = named or None
    traces: list[dict[str, Any]] = []
    count = max(1, len(sensors))
    layout: dict[str, Any] = {
        "height": 150 + 170 * count,
        "margin": {"l": 70, "r": 20, "t": 30, "b": 40},
        "showlegend": False,
        "grid": {"rows": count, "columns": 1, "pattern": "independent"},
    }
    for index, sensor in enumerate(sensors, start=1):
        axis = "" if index == 1 else str(index)
        entry = device.series[sensor]
        x = [_iso(s) for s in entry["start"]]
        common = {"xaxis": f"x{axis}", "yaxis": f"y{axis}", "name": sensor}
        traces.append(
            {
                **common,
                "x": x,
                "y": [_number(v) for v in entry["max"]],
                "mode": "lines",
                "line": {"width": 0},
                "hoverinfo": "skip",
            }
        )
        traces.append(
            {
                **common,
                "x": x,
                "y": [_number(v) for v in entry["min"]],
                "mode": "lines",
                "line": {"width": 0},
                "fill": "tonexty",
                "fillcolor": "rgba(31,119,180,0.2)",
                "hoverinfo": "skip",
            }
        )
        traces.append(
            {
                **common,
                "x": x,
                "y": [_number(v) for v in entry["mean"]],
                "mode": "lines",
                "connectgaps": False,
                "line": {"color": "#1f77b4", "width": 1.5},
                "hovertemplate": f"{sensor} mean %{{y:.3f}}<br>%{{x}}<extra></extra>",
            }
        )
        marked = [
            i
            for i, start in enumerate(entry["start"])
            if entry["mean"][i] is not None
            and start in drivers
            and (drivers[start] is None or sensor in drivers[start])  # type: ignore[operator]
        ]
        traces.append(
            {
                **common,
                "x": [x[i] for i in marked],
                "y": [_number(entry["mean"][i]) for i in marked],
                "mode": "markers",
                "marker": {"color": "#d62728", "size": 7, "symbol": "x"},
                "hovertemplate": "anomalous window %{x}<extra></extra>",
            }
        )
        layout[f"yaxis{axis}"] = {"title": {"text": sensor}}
        layout[f"xaxis{axis}"] = {"type": "date", "matches": "x"}
    if device.selected is not None:  # the selected anomaly: a line through every sensor
        layout["shapes"] = [
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": _iso(device.selected["window_start"]),
                "x1": _iso(device.selected["window_start"]),
                "y0": 0,
                "y1": 1,
                "line": {"color": "#d62728", "width": 1, "dash": "dot"},
            }
        ]
    return {"data": traces, "layout": layout}


def drivers_figure(selected: dict[str, Any]) -> dict[str, Any]:
    top = selected["top_sensors"]
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "x": [round(100 * item["share"], 1) for item in top],
                "y": [item["sensor"] for item in top],
                "marker": {"color": "#d62728"},
                "hovertemplate": "%{y}: %{x}% of the anomaly<extra></extra>",
            }
        ],
        "layout": {
            "height": 80 + 30 * len(top),
            "margin": {"l": 120, "r": 20, "t": 10, "b": 40},
            "xaxis": {"title": {"text": "share of the anomaly (%)"}},
            "yaxis": {"autorange": "reversed"},
        },
    }


def runs_figure(history: list[dict[str, Any]]) -> dict[str, Any]:
    """One bar per run, in the order they started (a category axis: runs that start in the same
    minute, or the same second, still get a bar each)."""
    colours = {"succeeded": "#2ca02c", "provisional": "#ff7f0e", "aborted": "#d62728"}
    ordered = list(reversed(history))
    return {
        "data": [
            {
                "type": "bar",
                "x": [
                    f"{r['started_at']:%m-%d %H:%M:%S} #{i + 1}" if r["started_at"] else str(i)
                    for i, r in enumerate(ordered)
                ],
                "y": [None if r["ms"] is None else r["ms"] / 1000 for r in ordered],
                "text": [f"{_iso(r['window_start'])} {r['status']}" for r in ordered],
                "marker": {"color": [colours.get(r["status"], "#d62728") for r in ordered]},
                "hovertemplate": "%{text}: %{y:.2f} s<extra></extra>",
            }
        ],
        "layout": {
            "height": 240,
            "margin": {"l": 60, "r": 20, "t": 10, "b": 40},
            "yaxis": {"title": {"text": "run duration (s)"}},
            "xaxis": {"type": "category", "title": {"text": "run (start time)"}},
        },
    }


class Dashboard:
    """The pages, bound to one data folder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["iso"] = _iso
        self.templates.filters["live"] = live_line

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("data_dir", str(self.settings.data_dir))
        html = self.templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)

    def error(self, page: str, message: str, status_code: int) -> HTMLResponse:
        return self.render("error.html", status_code, page=page, message=message)

    # The pages are plain functions: Starlette runs them in its thread pool, so a slow page
    # never holds the event loop (and /healthz) up.
    def fleet(self, request: Request) -> Response:
        query = request.query_params
        try:
            since = data.parse_time(query.get("since"), "since")
            until = data.parse_time(query.get("until"), "until")
            contains = data.device_filter(query.get("device", ""))
            sort = query.get("sort", "worst")
            if sort not in ("worst", "name"):
                raise InvalidInputError("sort is worst or name")
            found = data.fleet(self.settings, since, until, contains, sort)
        except data.TooSlowError as exc:
            return self.error("fleet", str(exc), 503)
        except InvalidInputError as exc:
            return self.error("fleet", str(exc), 400)
        except FleetwatchError as exc:
            return self.error("fleet", str(exc), 500)
        return self.render(
            "fleet.html",
            page="fleet",
            fleet=found,
            figure=None if found is None else fleet_figure(found),
            device=contains,
            sort=sort,
        )

    def device(self, request: Request) -> Response:
        query = request.query_params
        device_id = request.path_params["device_id"]
        try:
            data.check_device(device_id)
            since = data.parse_time(query.get("since"), "since")
            until = data.parse_time(query.get("until"), "until")
            around = data.parse_time(query.get("around"), "around")
            anomaly = data.parse_time(query.get("anomaly"), "anomaly")
            if around is not None:
                since = since or around - 2 * HOUR
                until = until or around + 3 * HOUR
            found = data.device(self.settings, device_id, since, until, anomaly)
        except data.TooSlowError as exc:
            return self.error("device", str(exc), 503)
        except InvalidInputError as exc:
            return self.error("device", str(exc), 400)
        except FleetwatchError as exc:
            return self.error("device", str(exc), 500)
        if not found.series and not found.anomalies and found.model is None:
            return self.error("device", f"no data and no model for device {device_id}", 404)
        return self.render(
            "device.html",
            page="device",
            device=found,
            figure=device_figure(found),
            drivers=None
            if found.selected is None or not found.selected["top_sensors"]
            else drivers_figure(found.selected),
        )

    def runs(self, request: Request) -> Response:
        try:
            report = data.runs(self.settings)
        except FleetwatchError as exc:
            return self.error("runs", str(exc), 500)
        return self.render(
            "runs.html",
            page="runs",
            report=report,
            figure=runs_figure(report["history"]) if report["history"] else None,
        )

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/fleet", status_code=302)

    async def healthz(self, request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def favicon(self, request: Request) -> Response:
        return Response(status_code=204)

    async def plotly_js(self, request: Request) -> Response:
        return FileResponse(
            _plotly_js(),
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    async def script(self, request: Request) -> Response:
        return FileResponse(HERE / "static" / "dashboard.js", media_type="text/javascript")

    async def style(self, request: Request) -> Response:
        return FileResponse(HERE / "static" / "dashboard.css", media_type="text/css")


def create_app(settings: Settings) -> Starlette:
    """The ASGI app (GET only: any other method is answered 405 by the router)."""
    pages = Dashboard(settings)
    routes = [
        Route("/", pages.home),
        Route("/fleet", pages.fleet),
        Route("/device/{device_id}", pages.device),
        Route("/runs", pages.runs),
        Route("/healthz", pages.healthz),
        Route("/favicon.ico", pages.favicon),
        Route("/static/plotly.min.js", pages.plotly_js),
        Route("/static/dashboard.js", pages.script),
        Route("/static/dashboard.css", pages.style),
    ]
    return Starlette(routes=routes, middleware=[Middleware(GZipMiddleware, minimum_size=1000)])


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until interrupted (uvicorn, one process; the pages only read). The address is
    bound first, so that port 0 (any free port) prints the port actually taken."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except socket.gaierror as exc:  # a host that does not resolve
        listener.close()
        raise InvalidInputError(
            f"cannot listen on {host}:{port}: {exc.strerror}; check --host (127.0.0.1, 0.0.0.0 "
            "or an address of this machine)"
        ) from None
    except OSError as exc:
        listener.close()
        advice = (
            "choose another --port"
            if exc.errno in (errno.EADDRINUSE, errno.EACCES)
            else "check --host and --port"
        )
        raise InvalidInputError(
            f"cannot listen on {host}:{port}: {exc.strerror}; {advice}"
        ) from None
    listener.listen(128)
    taken = listener.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"fleetwatch dashboard: http://{shown}:{taken}/ (Ctrl-C stops it)", flush=True)
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        access_log=os.environ.get("FLEETWATCH_DASHBOARD_ACCESS_LOG", "") == "1",
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[listener])
