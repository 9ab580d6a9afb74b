"""``fleetwatch aggregate``: the Faust worker, telemetry -> event-time windows in Parquet."""

from __future__ import annotations

import argparse

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.aggregate.worker import run_worker

    return run_worker(settings)


COMMAND = Command(
    "aggregate",
    "the Faust worker: telemetry -> event-time windows in Parquet (run several to scale)",
    """
    fleetwatch aggregate                                  # 60 s windows, 30 s grace
    fleetwatch aggregate --window 5m --grace 1m --idle-timeout 2m
    fleetwatch aggregate --bootstrap-servers 127.0.0.1:19092 --rebalance-timeout 5s
    """,
    {"": "*", "kafka": "*", "aggregate": "*"},
    run,
)
