"""``fleetwatch schedule``: score every closed hour on a schedule, catching up missed ones."""

from __future__ import annotations

import argparse

from fleetwatch.cli.commands.train import MODEL_SETTINGS
from fleetwatch.cli.parser import Command, UsageError
from fleetwatch.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.alerts import check_webhook_url
    from fleetwatch.config import ScheduleSettings
    from fleetwatch.scheduler.service import run_schedule
    from fleetwatch.storage.atomic import check_appendable

    options = settings.schedule
    cron_given = hasattr(args, "setting:schedule:cron") or options.cron != ScheduleSettings().cron
    if options.every and cron_given:
        raise UsageError("give --cron or --every, not both (one of them would be ignored)")
    check_webhook_url(settings.alerts.webhook_url.reveal())
    if settings.alerts.jsonl is not None:  # each tick would only warn that alerts wait
        check_appendable(settings.alerts.jsonl, "--jsonl")
    return run_schedule(settings)


COMMAND = Command(
    "schedule",
    "score every closed hour on a schedule, catching up missed ones",
    """
    fleetwatch schedule                        # at minute 5 of every hour (UTC)
    fleetwatch schedule --cron "*/15 * * * *" --max-catchup 24
    fleetwatch schedule --every 10s            # fast cadence for tests and demos
    fleetwatch schedule --train-first 2h       # train new devices on their first 2 h
    fleetwatch schedule --live --jsonl alerts.jsonl   # score each window as it closes: alerts in
                                               # about a window and a grace after a fault
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
            "live",
            "live_every",
        ),
        "alerts": "*",
        "train": MODEL_SETTINGS,
        "aggregate": ("window",),
        "kafka": ("telemetry_topic",),
    },
    run,
)
