"""``fleetwatch dashboard``: the fleet, one device, the runs, in a browser (read-only)."""

from __future__ import annotations

import argparse

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.dashboard.app import serve

    settings.layout.require()
    serve(settings, settings.dashboard.host, settings.dashboard.port)
    return 0


COMMAND = Command(
    "dashboard",
    "the fleet, one device and the runs in a browser (read-only web pages)",
    """
    fleetwatch dashboard --data-dir fleetwatch-data     # then open http://127.0.0.1:8050/
    fleetwatch dashboard --host 0.0.0.0 --port 8080     # every interface: it has no login
    """,
    {"": "*", "dashboard": "*"},
    run,
)
