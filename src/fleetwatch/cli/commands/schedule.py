"""``fleetwatch schedule``: score every closed hour on a schedule, catching up missed ones."""

from __future__ import annotations

import argparse

from fleetwatch.cli.commands.train import MODEL_SETTINGS
from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scheduler.service import run_schedule

    return run_schedule(settings)


COMMAND = Command(
    "schedule",
    "score every closed hour on a schedule, catching up missed ones",
    """
    fleetwatch schedule                        # at minute 5 of every hour (UTC)
    fleetwatch schedule --cron "*/15 * * * *" --max-catchup 24
    fleetwatch schedule --every 10s            # fast cadence for tests and demos
    fleetwatch schedule --train-first 2h       # train new devices on their first 2 h
    fleetwatch schedule --retrain-every 7d --retrain-window 2d
    fleetwatch schedule --metrics-port 9108 --webhook-url https://hooks.example/fleet \\
        --jsonl alerts.jsonl                  # Prometheus metrics; alerts per incident
    """,
    {
        "": "*",
        "score": "*",
        "schedule": (
            "cron",
            "every",
            "max_catchup",
            "misfire_grace",
            "retrain_every",
            "retrain_window",
            "train_first",
            "metrics_port",
            "metrics_host",
            "compact",
        ),
        "alerts": "*",
        "train": MODEL_SETTINGS,
        "aggregate": ("window",),
        "kafka": ("telemetry_topic",),
    },
    run,
)
