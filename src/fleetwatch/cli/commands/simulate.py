"""``fleetwatch simulate``: a simulated fleet's telemetry, with labelled anomalies."""

from __future__ import annotations

import argparse
import signal
import sys

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings
from fleetwatch.output import emit_record


def stop_on_sigterm() -> None:
    """SIGTERM (``docker stop``, a service manager) stops like Ctrl-C: flushed, summed up."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.simulators.publish import check_settings, simulate

    check_settings(settings)  # one line for a bad flag, before the broker is even asked
    stop_on_sigterm()
    summary = simulate(settings)
    emit_record("fleetwatch simulate: summary", summary.as_record(), settings.simulate.format)
    if summary.messages_failed:
        print(
            f"fleetwatch simulate: error: {summary.messages_failed} messages were not delivered "
            f"({summary.first_error})",
            file=sys.stderr,
        )
        return 1
    return 130 if summary.interrupted else 0


COMMAND = Command(
    "simulate",
    "publish a simulated fleet's telemetry, with labelled anomalies",
    """
    fleetwatch simulate --devices 50 --sensors 4 --duration 10m
    fleetwatch simulate --devices 1000 --sensors 10 --messages 500000 --speed 0 --seed 7
    fleetwatch simulate --devices 30 --speed 60 --start 2026-11-22T00:00Z --duration 6h \\
        --clean-for 2h --anomaly-rate 1 --labels labels.parquet
    fleetwatch simulate --late-fraction 0.01 --malformed-fraction 0.01 --messages 10000
    fleetwatch simulate --devices 200 --speed 60 --resume   # a restarted simulator
    """,
    {"": ("log_level",), "kafka": "*", "simulate": "*"},
    run,
)
