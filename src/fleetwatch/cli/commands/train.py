"""``fleetwatch train``: fit one anomaly model per device from a range of aggregates."""

from __future__ import annotations

import argparse

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError
from fleetwatch.output import emit_record


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scoring.train import train

    options = settings.train
    if options.since is None or options.until is None:
        raise FleetwatchError(
            "give the training range: --since 2026-11-22T00 --until 2026-11-22T02"
        )
    summary = train(settings, options.since, options.until, options.devices or None)
    emit_record("fleetwatch train: summary", summary.as_record(), options.format)
    return 0 if summary.trained else 1


COMMAND = Command(
    "train",
    "fit one anomaly model per device from a range of aggregates",
    """
    fleetwatch train --since 2026-11-22T00 --until 2026-11-22T02
    fleetwatch train --since 2026-11-21 --until 2026-11-22 --nu 0.02 --devices pump-1,pump-2
    fleetwatch train --since 2026-11-21 --until 2026-11-22 --per-sensor --no-activate
    """,
    {"": "*", "train": "*", "aggregate": ("window",)},
    run,
)
