"""``fleetwatch score``: score hours now: one, a range, or every pending one."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from fleetwatch.cli.parser import Command, UsageError
from fleetwatch.config import Settings, parse_timestamp
from fleetwatch.errors import FleetwatchError
from fleetwatch.output import emit_table

if TYPE_CHECKING:
    from fleetwatch.scoring.score import RunResult

COLUMNS = [
    "window_start",
    "status",
    "scope",
    "devices_total",
    "devices_scored",
    "devices_failed",
    "devices_without_model",
    "devices_silent",
    "rows_scored",
    "anomalies",
    "run_id",
]


def _time(flag: str, text: str) -> datetime:
    try:
        return parse_timestamp(text)
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r}: {exc}") from None


def requested_hours(args: argparse.Namespace) -> list[datetime]:
    """The hours ``--hour`` or ``--since/--until`` name (hours starting in [since, until))."""
    given = [flag for flag, value in (("--hour", args.hour), ("--missed", args.missed)) if value]
    if args.since or args.until:
        given.append("--since/--until")
    if len(given) > 1:
        raise UsageError(
            f"give one of --hour, --since/--until and --missed, not {' and '.join(given)}"
        )
    if args.hour:
        return [_time("--hour", args.hour).replace(minute=0, second=0, microsecond=0)]
    if not (args.since and args.until):
        raise UsageError("say which hours: --hour 2026-11-22T10, --since/--until, or --missed")
    start, end = _time("--since", args.since), _time("--until", args.until)
    hour = start.replace(minute=0, second=0, microsecond=0)
    if hour >= end:
        raise UsageError(
            f"--since {args.since} --until {args.until} is an empty range: --until is the end "
            "(exclusive) and must come after --since"
        )
    hours = []
    while hour < end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scheduler.service import CatchUp, score_hours

    empty: list[datetime] = []
    asked = [] if args.missed else requested_hours(args)
    settings.layout.require()
    settings.layout.use()  # held until the process ends: a demo cannot empty it meanwhile
    if args.missed:
        results = CatchUp(settings)()
    else:
        results, empty = score_hours(settings, asked)
    if results:
        sys.stdout.write(
            emit_table([r.as_record() for r in results], COLUMNS, settings.score.format)
        )
    for result in results:
        if result.status == "provisional":
            print(
                f"fleetwatch score: warning: {result.window_start:%Y-%m-%dT%H} is not closed "
                "yet (windows may still come): its run is provisional, and its devices are "
                "scored again once it is closed",
                file=sys.stderr,
            )
    if empty and not results:
        hours = ", ".join(f"{h:%Y-%m-%dT%H}" for h in empty[:5]) + (
            " ..." if len(empty) > 5 else ""
        )
        raise NothingToScoreError(
            f"no aggregates for {hours} in {settings.layout.store.describe('aggregates')}: "
            "nothing was "
            "scored (check --data-dir and the hours)"
        )
    for hour in empty:
        print(f"fleetwatch score: warning: no aggregates for {hour:%Y-%m-%dT%H}", file=sys.stderr)
    _say_devices_without_model(results)
    if args.missed and not results:
        print("fleetwatch score: nothing pending", file=sys.stderr)
    if args.missed and len(results) >= settings.schedule.max_catchup:
        from fleetwatch.scheduler.service import pending_now

        left = len(pending_now(settings))
        if left:
            print(
                f"fleetwatch score: {left} more closed hours are pending (at most --max-catchup "
                f"{settings.schedule.max_catchup} a run): run `fleetwatch score --missed` again, "
                "or raise --max-catchup",
                file=sys.stderr,
            )
    return 1 if any(r.status == "aborted" for r in results) else 0


def _say_devices_without_model(results: list[RunResult]) -> None:
    """Hours whose devices had no active model: not scored, and not a success when no device
    at all was (the runs stay recorded: each device's hours are pending once it is trained)."""
    lacking = [r for r in results if r.devices_without_model]
    if not lacking:
        return
    most = max(r.devices_without_model for r in lacking)
    hours = f"{lacking[0].window_start:%Y-%m-%dT%H}" + (
        f" and {len(lacking) - 1} more hours" if len(lacking) > 1 else ""
    )
    train = "`fleetwatch train --first 2h` (or --since/--until)"
    if not any(r.devices_scored or r.devices_failed for r in results):
        raise NothingToScoreError(
            f"nothing was scored: the {most} devices with data in {hours} have no active model; "
            f"train them first ({train}), then `fleetwatch score --missed` scores these hours"
        )
    print(
        f"fleetwatch score: warning: up to {most} devices an hour have no active model and were "
        f"not scored ({hours}); once trained ({train}) `fleetwatch score --missed` scores them",
        file=sys.stderr,
    )


class NothingToScoreError(FleetwatchError):
    """None of the hours asked for has aggregates (nothing was scored, nothing recorded), or
    none of their devices has a model (nothing scored; the runs recorded)."""

    exit_code = 1


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hour", help="the hour to score, e.g. 2026-11-22T10")
    parser.add_argument("--since", help="first hour of a range")
    parser.add_argument("--until", help="end of a range (exclusive)")
    parser.add_argument(
        "--missed",
        action="store_true",
        help="every pending (hour, device) of closed hours; then their files are compacted "
        "(--no-compact: not)",
    )


COMMAND = Command(
    "score",
    "score hours with every device's active model, into DuckDB",
    """
    fleetwatch score --hour 2026-11-22T10
    fleetwatch score --since 2026-11-22T00 --until 2026-11-22T06 --workers 2
    fleetwatch score --missed --output anomalies --error-threshold 10
    """,
    {
        "": "*",
        "score": "*",
        "schedule": ("max_catchup", "compact"),
        "aggregate": ("window",),
        "kafka": ("telemetry_topic",),
    },
    run,
    arguments,
)
