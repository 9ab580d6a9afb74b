"""The ``fleetwatch`` command line: one entry point, one subcommand per pipeline stage.

Every setting flag is generated from :mod:`fleetwatch.config`, so a flag, its ``fleetwatch.toml``
key and its ``FLEETWATCH_*`` variable can never drift apart. User errors print one line with the
fix and exit 2 (1 for delivery failures); there is no traceback unless ``FLEETWATCH_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fleetwatch import __version__
from fleetwatch.config import SettingInfo, Settings, describe, load_settings
from fleetwatch.errors import FleetwatchError
from fleetwatch.output import emit_record, emit_table

Handler = Callable[[argparse.Namespace, Settings], int]
COMMON_SECTIONS = ("", "kafka")


def _add_setting_flags(parser: argparse.ArgumentParser, sections: Sequence[str]) -> None:
    for section in sections:
        title = {"": "general", "kafka": "Kafka connection"}.get(section, f"{section} options")
        group = parser.add_argument_group(title)
        for info in describe(section):
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


def _command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    examples: str,
    sections: Sequence[str],
    handler: Handler,
) -> argparse.ArgumentParser:
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


def _run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from fleetwatch.simulators.publish import simulate

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


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
