"""``fleetwatch demo``: everything on the embedded broker, end to end, in about a minute."""

from __future__ import annotations

import argparse

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.demo import run_demo

    return run_demo(settings)


COMMAND = Command(
    "demo",
    "everything on the embedded broker, end to end, in about a minute",
    """
    fleetwatch demo
    fleetwatch demo --devices 100 --speed 720 --data-dir /tmp/fw-demo
    fleetwatch demo --keep-running            # keep streaming and scoring until Ctrl-C
    """,
    {"": "*", "demo": "*", "broker": ("host",), "aggregate": ("window", "grace")},
    run,
)
