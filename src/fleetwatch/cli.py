"""The ``fleetwatch`` command line: one entry point, one subcommand per pipeline stage.

Every setting flag is generated from :mod:`fleetwatch.config`, so a flag, its ``fleetwatch.toml``
key and its ``FLEETWATCH_*`` variable can never drift apart. User errors print one line with the
fix and exit 2 (1 for delivery failures); there is no traceback unless ``FLEETWATCH_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from fleetwatch import __version__
from fleetwatch.config import SettingInfo, Settings, describe, load_settings
from fleetwatch.errors import FleetwatchError
from fleetwatch.output import emit_record, emit_table

Handler = Callable[[argparse.Namespace, Settings], int]
COMMON_SECTIONS = ("", "kafka")


def _add_setting_flags(parser: argparse.ArgumentParser, sections: Sequence[str]) -> None:
    seen: set[str] = set()
    for section in sections:
        title = {"": "general", "kafka": "Kafka connection"}.get(section, f"{section} options")
        group = parser.add_argument_group(title)
        for info in describe(section):
            if info.flag not in seen:  # e.g. --format of two sections: the first one's
                seen.add(info.flag)
                _add_flag(group, info)


def _add_flag(group: argparse._ArgumentGroup, info: SettingInfo) -> None:
    shown = "********" if "password" in info.name else info.default
    if isinstance(shown, list):
        shown = ",".join(shown)
    help_text = f"{info.help} [default: {shown}; env {info.env_var}]"
    dest = f"setting:{info.section}:{info.name}"
    if info.annotation is bool:
        group.add_argument(
            info.flag,
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=help_text,
        )
        return
    metavar = info.metavar or {"duration": "DURATION", "timestamp": "TIME"}.get(
        info.kind, info.name.upper()
    )
    group.add_argument(
        info.flag, dest=dest, default=argparse.SUPPRESS, metavar=metavar, help=help_text
    )


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if dest.startswith("setting:"):
            _, section, name = dest.split(":", 2)
            result.setdefault(section, {})[name] = value
    return result


def _add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    examples: str,
    sections: Sequence[str],
    handler: Handler,
    only: str | None = None,
) -> argparse.ArgumentParser:
    """A command; its settings' flags unless ``only`` names another command."""
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="settings file (default: $FLEETWATCH_CONFIG or ./fleetwatch.toml if present)",
    )
    if only in (None, name):
        _add_setting_flags(parser, [*COMMON_SECTIONS, *sections])
    parser.set_defaults(handler=handler)
    return parser


# ---------------------------------------------------------------- command handlers


def _run_broker(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.brokers.embedded import EmbeddedBroker

    broker = EmbeddedBroker(settings.broker.host, settings.broker.port)

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        broker.start()
        print(
            f"fleetwatch broker: ready at {broker.bootstrap_servers} "
            "(embedded Tansu, memory-only; Ctrl-C stops it)",
            flush=True,
        )
        code = broker.wait()
        print(f"fleetwatch broker: the broker exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def _run_topics(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.brokers.topics import ensure_topics, list_topics

    if args.action == "create":
        topics = ensure_topics(settings.kafka)
    else:
        topics = list_topics(settings.kafka)
    rows = [{"topic": t.name, "partitions": t.partitions, "created": t.created} for t in topics]
    columns = (
        ["topic", "partitions", "created"] if args.action == "create" else ["topic", "partitions"]
    )
    sys.stdout.write(emit_table(rows, columns, args.format))
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM (``docker stop``, a service manager) stops like Ctrl-C: flushed, summed up."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.simulators.publish import simulate

    _stop_on_sigterm()
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


def _run_import(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.ingest.importer import import_file

    summary = import_file(settings, args.file)
    emit_record("fleetwatch import: summary", summary.as_record(), settings.import_.format)
    shown = summary.rejected[:20]
    for row in shown:
        label = "line" if args.file.suffix.lower() != ".parquet" else "row"
        print(f"{args.file}:{label} {row.line}: {row.reason}", file=sys.stderr)
    if len(summary.rejected) > len(shown):
        print(
            f"... and {len(summary.rejected) - len(shown)} more invalid rows "
            "(write them all with --rejects PATH)",
            file=sys.stderr,
        )
    if summary.readings_closed:
        print(
            f"fleetwatch import: warning: {summary.readings_closed} readings are for windows "
            f"the aggregation in {settings.data_dir} closed already (closed through "
            f"{summary.closed_through:%Y-%m-%dT%H:%M}Z): they go to its late sink; for a file "
            "of history, use --backfill",
            file=sys.stderr,
        )
    if summary.messages_failed:
        print(
            f"fleetwatch import: error: {summary.messages_failed} messages not delivered "
            f"({summary.first_error})",
            file=sys.stderr,
        )
        return 1
    return 1 if summary.rejected else 0


def _run_aggregate(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.aggregate.worker import run_worker

    return run_worker(settings)


def _run_train(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scoring.train import train

    options = settings.train
    if options.since is None or options.until is None:
        raise FleetwatchError(
            "give the training range: --since 2026-11-22T00 --until 2026-11-22T02"
        )
    summary = train(settings, options.since, options.until, options.devices or None)
    emit_record("fleetwatch train: summary", summary.as_record(), options.format)
    return 0 if summary.trained else 1


def _run_models(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scoring.registry import ModelRegistry

    registry = ModelRegistry(settings.data_dir / "models")
    if args.action == "list":
        rows = []
        for device_id in registry.devices():
            active = registry.active(device_id)
            rows.append(
                {
                    "device_id": device_id,
                    "active": active.version if active else None,
                    "versions": len(registry.versions(device_id)),
                    "kind": active.manifest["kind"] if active else None,
                    "trained_until": active.manifest["training"]["until"] if active else None,
                }
            )
        columns = ["device_id", "active", "versions", "kind", "trained_until"]
        sys.stdout.write(emit_table(rows, columns, args.format))
        return 0
    if args.action == "pack":
        from fleetwatch.scoring.pack import ModelPack, pack_folder

        pack = ModelPack.open(pack_folder(settings.data_dir), registry)
        packed = pack.refresh([args.device] if args.device else None)
        pack.compact()
        emit_record(
            "fleetwatch models pack",
            {"packed_now": packed, "in_pack": len(pack), "folder": str(pack.folder)},
            args.format,
        )
        return 0
    if not args.device:
        raise FleetwatchError(f"`models {args.action}` needs a device id: models {args.action} ID")
    if args.action == "show":
        version = args.version or registry.active_version(args.device)
        if version is None:
            raise FleetwatchError(f"{args.device} has no active model; train one first")
        model = registry.get(args.device, version)
        ModelRegistry.verified(model, "model.joblib")
        ModelRegistry.verified(model, "params.bin")
        print(
            json.dumps(
                {
                    **model.manifest,
                    "active": version == registry.active_version(args.device),
                    "sha256_verified": True,
                },
                indent=2,
            )
        )
        return 0
    if args.action == "activate":
        if not args.version:
            raise FleetwatchError("`models activate` needs a version: models activate ID v0002")
        registry.activate(args.device, args.version)
        print(f"{args.device}: {args.version} is active")
        return 0
    version = registry.rollback(args.device)
    print(f"{args.device}: rolled back to {version}")
    return 0


def _run_score(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from fleetwatch.config import parse_timestamp
    from fleetwatch.scheduler.service import CatchUp, scoring_lock
    from fleetwatch.scoring.score import score_hour

    if args.missed:
        results = CatchUp(settings)()
    else:
        if args.hour:
            hours = [parse_timestamp(args.hour)]
        elif args.since and args.until:
            start, end = parse_timestamp(args.since), parse_timestamp(args.until)
            start = start.replace(minute=0, second=0, microsecond=0)
            hours = []
            while start < end:
                hours.append(start)
                start += timedelta(hours=1)
        else:
            raise FleetwatchError(
                "say which hours: --hour 2026-11-22T10, --since/--until, or --missed"
            )
        results = []
        for hour in hours:
            with scoring_lock(settings):
                results.append(score_hour(settings, hour))
    rows = [r.as_record() for r in results]
    columns = [
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
    sys.stdout.write(emit_table(rows, columns, settings.score.format))
    for result in results:
        if result.status == "provisional":
            print(
                f"fleetwatch score: warning: {result.window_start:%Y-%m-%dT%H} is not closed "
                "yet (windows may still come): its run is provisional, and its devices are "
                "scored again once it is closed",
                file=sys.stderr,
            )
    if not results:
        print("fleetwatch score: nothing pending", file=sys.stderr)
    return 1 if any(r.status == "aborted" for r in results) else 0


def _run_sql(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.storage.duck import query

    frame = query(
        settings.data_dir / "fleetwatch.duckdb",
        settings.data_dir,
        args.query,
        settings.score.lock_timeout,
    )
    rows: list[dict[str, Any]] = [
        {str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")
    ]
    sys.stdout.write(emit_table(rows, [str(c) for c in frame.columns], args.format))
    return 0


def _run_schedule(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scheduler.service import run_schedule

    return run_schedule(settings)


def _run_status(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.scheduler.status import status

    report = status(settings)
    fmt = settings.schedule.format
    if fmt == "json":
        print(json.dumps(report, default=str))
        return 0
    columns = [
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
    if fmt == "csv":
        sys.stdout.write(emit_table(report["last_runs"], columns, "csv"))
        return 0
    scheduler = report["scheduler"]
    if scheduler.get("running"):
        print(
            f"scheduler       running ({scheduler.get('trigger', '?')}, pid "
            f"{scheduler.get('pid', '?')} on {scheduler.get('host', '?')}), next tick "
            f"{scheduler.get('next_tick')}"
        )
    else:
        print("scheduler       not running")
    print(f"closed through  {report['closed_through']}")
    pending = report["pending_hours"]
    whole = sum(1 for item in pending if item["devices"] == "all")
    print(
        f"hours pending   {len(pending)}"
        + (f" (oldest {pending[0]['hour']}; {whole} with every device)" if pending else "")
    )
    print(f"devices pending {report['pending_devices']} (in hours already scored)")
    sys.stdout.write(emit_table(report["last_runs"], columns, "text"))
    return 0


def _run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.demo import run_demo

    return run_demo(settings)


# ---------------------------------------------------------------- the parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI; with ``command``, only that command gets its settings' flags (the others'
    would cost 20 ms of every start: a scoring run is about two seconds)."""

    _command = functools.partial(_add_command, only=command)
    parser = argparse.ArgumentParser(
        prog="fleetwatch",
        description="Watch a fleet of IoT devices: Kafka telemetry -> event-time windows "
        "(Parquet) -> hourly per-device anomaly scoring (DuckDB).",
        epilog="Run `fleetwatch COMMAND --help` for a command's flags and examples.",
    )
    parser.add_argument("--version", action="version", version=f"fleetwatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(
        subparsers,
        "broker",
        "run the embedded Kafka-compatible broker (foreground)",
        """
        fleetwatch broker                      # 127.0.0.1:9092 until Ctrl-C
        fleetwatch broker --port 19092
        """,
        ["broker"],
        _run_broker,
    )
    topics = _command(
        subparsers,
        "topics",
        "create fleetwatch's topics (idempotent) or list topics",
        """
        fleetwatch topics create --partitions 8
        fleetwatch topics list --format json
        """,
        [],
        _run_topics,
    )
    topics.add_argument("action", choices=["create", "list"], help="what to do")
    topics.add_argument("--format", choices=["text", "json", "csv"], default="text")

    _command(
        subparsers,
        "simulate",
        "publish a simulated fleet's telemetry, with labelled anomalies",
        """
        fleetwatch simulate --devices 50 --sensors 4 --duration 10m
        fleetwatch simulate --devices 1000 --sensors 10 --messages 500000 --speed 0 --seed 7
        fleetwatch simulate --devices 30 --speed 60 --start 2026-11-22T00:00Z --duration 6h \\
            --clean-for 2h --anomaly-rate 1 --labels labels.parquet
        fleetwatch simulate --late-fraction 0.01 --malformed-fraction 0.01 --messages 10000
        """,
        ["simulate"],
        _run_simulate,
    )
    importer = _command(
        subparsers,
        "import",
        "publish a CSV/Parquet file of readings (long or wide layout)",
        """
        fleetwatch import readings.csv                      # TS,Device,Tag,Value rows
        fleetwatch import pump7.csv --device-id pump-0007 --assume-timezone UTC
        fleetwatch import skab.csv --device-id skab-1 --assume-timezone UTC --sanitize-names
        """,
        ["import"],
        _run_import,
    )
    importer.add_argument("file", type=Path, help="a .csv or .parquet file")
    _command(
        subparsers,
        "aggregate",
        "the Faust worker: telemetry -> event-time windows in Parquet (run several to scale)",
        """
        fleetwatch aggregate                                  # 60 s windows, 30 s grace
        fleetwatch aggregate --window 5m --grace 1m --idle-timeout 2m
        fleetwatch aggregate --bootstrap-servers 127.0.0.1:19092 --rebalance-timeout 5s
        """,
        ["aggregate"],
        _run_aggregate,
    )
    _command(
        subparsers,
        "train",
        "fit one anomaly model per device from a range of aggregates",
        """
        fleetwatch train --since 2026-11-22T00 --until 2026-11-22T02
        fleetwatch train --since 2026-11-21 --until 2026-11-22 --nu 0.02 --devices pump-1,pump-2
        fleetwatch train --since 2026-11-21 --until 2026-11-22 --per-sensor --no-activate
        """,
        ["train"],
        _run_train,
    )
    models = _command(
        subparsers,
        "models",
        "list, show, activate or roll back per-device model versions; pack them for scoring",
        """
        fleetwatch models list
        fleetwatch models show pump-0001            # manifest, sha256 verified
        fleetwatch models activate pump-0001 v0002
        fleetwatch models rollback pump-0001
        fleetwatch models pack                      # after copying models in by hand
        """,
        [],
        _run_models,
    )
    models.add_argument("action", choices=["list", "show", "activate", "rollback", "pack"])
    models.add_argument("device", nargs="?", help="device id")
    models.add_argument("version", nargs="?", help="version, e.g. v0002")
    models.add_argument("--format", choices=["text", "json", "csv"], default="text")
    score = _command(
        subparsers,
        "score",
        "score hours of closed windows with every device's active model",
        """
        fleetwatch score --hour 2026-11-22T10
        fleetwatch score --since 2026-11-22T00 --until 2026-11-22T06 --workers 2
        fleetwatch score --missed --output anomalies --error-threshold 10
        """,
        ["score"],
        _run_score,
    )
    score.add_argument("--hour", help="the hour to score, e.g. 2026-11-22T10")
    score.add_argument("--since", help="first hour of a range")
    score.add_argument("--until", help="end of a range (exclusive)")
    score.add_argument(
        "--missed", action="store_true", help="every closed hour with data and no successful run"
    )
    sql = _command(
        subparsers,
        "sql",
        "read-only SQL over runs, scores, anomalies and the Parquet aggregates",
        """
        fleetwatch sql "SELECT device_id, count(*) FROM anomalies GROUP BY 1 ORDER BY 2 DESC"
        fleetwatch sql "SELECT * FROM runs ORDER BY window_start DESC LIMIT 5" --format csv
        fleetwatch sql "SELECT sensor, avg(mean) FROM aggregates GROUP BY 1" --format json
        """,
        [],
        _run_sql,
    )
    sql.add_argument("query", help="one or more SELECT statements")
    _command(
        subparsers,
        "schedule",
        "score every closed hour on a schedule, catching up missed ones",
        """
        fleetwatch schedule                        # at minute 5 of every hour (UTC)
        fleetwatch schedule --cron "*/15 * * * *" --max-catchup 24
        fleetwatch schedule --every 10s            # fast cadence for tests and demos
        fleetwatch schedule --retrain-every 7d --retrain-window 2d
        """,
        ["score", "schedule"],
        _run_schedule,
    )
    _command(
        subparsers,
        "demo",
        "everything on the embedded broker, end to end, in about a minute",
        """
        fleetwatch demo
        fleetwatch demo --devices 100 --speed 720 --data-dir /tmp/fw-demo
        fleetwatch demo --keep-running            # keep streaming and scoring until Ctrl-C
        """,
        ["demo"],
        _run_demo,
    )
    _command(
        subparsers,
        "status",
        "last runs, next run, hours pending",
        """
        fleetwatch status
        fleetwatch status --format json
        """,
        ["schedule"],
        _run_status,
    )
    sql.add_argument("--format", choices=["table", "text", "csv", "json"], default="table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in arguments if not a.startswith("-")), None))
    args = parser.parse_args(arguments)
    debug = os.environ.get("FLEETWATCH_DEBUG", "") not in ("", "0")
    environ = {k: v for k, v in os.environ.items() if k != "FLEETWATCH_DEBUG"}
    try:
        settings = load_settings(
            config_path=args.config, environ=environ, overrides=_overrides(args)
        )
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        # kafka-python narrates every connection attempt; our errors say what matters in one line.
        quiet = logging.DEBUG if settings.log_level == "DEBUG" else logging.CRITICAL
        for noisy in ("kafka", "aiokafka", "faust", "mode"):
            logging.getLogger(noisy).setLevel(quiet)
        code: int = args.handler(args, settings)
        return code
    except FleetwatchError as exc:
        if debug:
            raise
        print(f"fleetwatch {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"fleetwatch {args.command}: interrupted", file=sys.stderr)
        return 130


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``fleetwatch`` command."""
    sys.exit(main(argv))
