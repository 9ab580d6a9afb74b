"""``fleetwatch status``: the scheduler, what is closed, what is pending, the last runs."""

from __future__ import annotations

import argparse
import json
import sys

from fleetwatch.cli.parser import Command
from fleetwatch.config import Settings
from fleetwatch.output import emit_table, json_value

COLUMNS = [
    "window_start",
    "status",
    "scope",
    "devices_scored",
    "devices_failed",
    "devices_without_model",
    "devices_silent",
    "rows_scored",
    "anomalies",
    "finished_at",
]


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scheduler.status import live_line, status

    report = status(settings)
    fmt = settings.schedule.format
    if fmt == "json":
        print(json.dumps(json_value(report)))
        return 0
    if fmt == "csv":  # three tables, a blank line apart (as `sql` prints several results)
        scheduler = report["scheduler"]
        facts = {
            "scheduler_running": bool(scheduler.get("running")),
            "trigger": scheduler.get("trigger"),
            "pid": scheduler.get("pid"),
            "host": scheduler.get("host"),
            "next_tick": scheduler.get("next_tick"),
            "live": bool(scheduler.get("live")),
            "last_live_tick": scheduler.get("last_live_tick"),
            "live_lag_s": scheduler.get("live_lag_s"),
            "closed_through": report["closed_through"],
            "hours_pending": len(report["pending_hours"]),
            "devices_pending": report["pending_devices"],
        }
        sys.stdout.write(emit_table([facts], list(facts), "csv"))
        sys.stdout.write("\n" + emit_table(report["pending_hours"], ["hour", "devices"], "csv"))
        sys.stdout.write("\n" + emit_table(report["last_runs"], COLUMNS, "csv"))
        return 0
    scheduler = report["scheduler"]
    if scheduler.get("running"):
        print(
            f"scheduler       running ({scheduler.get('trigger', '?')}, pid "
            f"{scheduler.get('pid', '?')} on {scheduler.get('host', '?')}), next tick "
            f"{scheduler.get('next_tick')}"
        )
        if scheduler.get("live"):
            print(f"live scoring    {live_line(scheduler)}")
    else:
        print("scheduler       not running")
    print(f"closed through  {report['closed_through'] or 'nothing closed yet'}")
    pending = report["pending_hours"]
    whole = sum(1 for item in pending if item["devices"] == "all")
    print(
        f"hours pending   {len(pending)}"
        + (f" (oldest {pending[0]['hour']}; {whole} with every device)" if pending else "")
    )
    print(f"devices pending {report['pending_devices']} (in hours already scored)")
    sys.stdout.write(emit_table(report["last_runs"], COLUMNS, "text"))
    return 0


COMMAND = Command(
    "status",
    "the scheduler, what is closed, hours and devices pending, the last runs",
    """
    fleetwatch status
    fleetwatch status --format json
    """,
    {
        "": "*",
        "schedule": ("format",),
        "score": ("lock_timeout",),
        "kafka": ("telemetry_topic",),
    },
    run,
)
