"""``fleetwatch train``: fit one anomaly model per device from a range of aggregates."""

from __future__ import annotations

import argparse

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError, NothingDoneError
from fleetwatch.output import emit_record

#: The ``[train]`` settings of the commands that train as part of their work (``schedule``,
#: ``evaluate``): how a model is made, not which windows.
MODEL_SETTINGS = (
    "nu",
    "gamma",
    "kernel",
    "per_sensor",
    "model_kind",
    "min_windows",
    "target_far",
    "slow_sensors",
    "workers",
)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scoring.ranges import FirstPart, data_span, first_ranges, read_ranges
    from fleetwatch.scoring.train import TrainSummary, train, train_ranges

    options = settings.train
    layout = settings.layout
    layout.require()
    layout.use()  # held until the process ends: a demo cannot empty it meanwhile
    if options.ranges is not None:
        ranges = read_ranges(options.ranges)
        if options.devices:
            ranges = {d: r for d, r in ranges.items() if d in set(options.devices)}
        summary = train_ranges(settings, ranges)
    elif options.first is not None:
        first = FirstPart.parse(options.first)
        layout.require()
        span = data_span(layout)
        if span is None:
            raise FleetwatchError(
                f"no aggregates in {layout.store.describe('aggregates')}: run "
                "`fleetwatch aggregate` or `fleetwatch import --backfill` first"
            )
        since, until = options.since or span[0], options.until or span[1]
        window_ms = round(settings.aggregate.window * 1000)
        ranges = first_ranges(layout, first, since, until, window_ms, options.devices or None)
        summary = TrainSummary()
        for device_id in sorted(set(options.devices or ()) - set(ranges)):
            summary.skipped[device_id] = "no windows in the training range"
        summary = train_ranges(settings, ranges, summary)
    else:
        if options.since is None or options.until is None:
            raise FleetwatchError(
                "give the training range: --since 2026-11-22T00 --until 2026-11-22T02, or each "
                "device's first part (--first 400, --first 2h, --first 0.3), or --ranges FILE"
            )
        summary = train(settings, options.since, options.until, options.devices or None)
    emit_record("fleetwatch train: summary", summary.as_record(), options.format)
    if not summary.trained:
        reasons = {**summary.skipped, **summary.failed}
        first_reason = next(iter(reasons.items()), None)
        detail = f" (first: {first_reason[0]}: {first_reason[1]})" if first_reason else ""
        raise NothingDoneError(
            f"no device was trained: {len(summary.skipped)} skipped, {len(summary.failed)} "
            f"failed{detail}"
        )
    return 0


COMMAND = Command(
    "train",
    "fit one anomaly model per device from a range of aggregates",
    """
    fleetwatch train --since 2026-11-22T00 --until 2026-11-22T02
    fleetwatch train --first 2h                  # each device on its own first two hours
    fleetwatch train --first 400 --window 5s      # ... on its first 400 readings
    fleetwatch train --ranges ranges.csv          # device_id,since,until per line
    fleetwatch train --since 2026-11-21 --until 2026-11-22 --target-far 0.0001
    fleetwatch train --since 2026-11-21 --until 2026-11-22 --per-sensor --no-activate
    """,
    {"": "*", "train": "*", "aggregate": ("window",), "score": ("executor", "dask_scheduler")},
    run,
)
