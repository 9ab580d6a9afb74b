"""``fleetwatch``: parse, load the settings, run the command, and turn every failure a user can
meet into one line with its exit code.

Exit codes: 0 done; 1 the work did not succeed (a run aborted, an hour without data, messages
not delivered, a file that could not be written); 2 the command or its settings are wrong (the
message says how to fix it); 130 interrupted (Ctrl-C). A reader that stops reading (``| head``)
ends the output quietly. ``FLEETWATCH_DEBUG=1`` shows the traceback of an error instead.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from fleetwatch import __version__, logs
from fleetwatch.cli.commands import COMMANDS
from fleetwatch.cli.parser import Command, Parser, build_parser, overrides, parse
from fleetwatch.config import load_settings
from fleetwatch.errors import FleetwatchError

#: Long-running commands whose documented answer to SIGTERM is a clean stop (exit 0).
SERVICES = frozenset({"aggregate", "schedule", "dashboard", "broker"})
#: What the top level itself takes before a command.
TOP_LEVEL_FLAGS = frozenset({"-h", "--help", "--version"})


class Terminated(BaseException):
    """SIGTERM before the command installed its own handling (a service stopped as it starts)."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def parser() -> Parser:
    return build_parser(COMMANDS, __version__)


def _name(arguments: Sequence[str]) -> str:
    known = {command.name for command in COMMANDS}
    return next((a for a in arguments if a in known), "")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("FLEETWATCH_DEBUG", "") not in ("", "0")
    environ = {k: v for k, v in os.environ.items() if k != "FLEETWATCH_DEBUG"}
    prefix = f"fleetwatch {_name(arguments)}".rstrip()
    started = False
    if arguments and arguments[0] not in TOP_LEVEL_FLAGS and arguments[0].startswith("-"):
        # options belong to a command: `fleetwatch --data-dir X status` would otherwise be
        # told that X is not a command (only the options' names are repeated: a value may be
        # a secret)
        name = _name(arguments)
        before = arguments[: arguments.index(name)] if name else arguments[:1]
        flags = " ".join(a.split("=", 1)[0] for a in before if a.startswith("-"))
        print(
            f"{prefix}: error: options come after the command: fleetwatch {name or 'COMMAND'} "
            f"{flags} ...",
            file=sys.stderr,
        )
        return 2
    try:
        try:
            args = parse(parser(), arguments)
        except SystemExit as exc:  # --help, --version
            return int(exc.code or 0)
        command: Command = args.command
        settings = load_settings(
            config_path=args.config, environ=environ, overrides=overrides(args)
        )
        logs.configure(
            settings.log_level,
            [settings.kafka.sasl_password.reveal(), settings.alerts.webhook_url.reveal()],
        )
        started = True
        return command.handler(args, settings)
    except Terminated:
        if not started or _name(arguments) in SERVICES:  # a service's SIGTERM is a clean stop
            print(f"{prefix}: stopped (SIGTERM) before it began its work", file=sys.stderr)
            return 0
        print(f"{prefix}: interrupted (SIGTERM)", file=sys.stderr)
        return 130
    except FleetwatchError as exc:
        if debug:
            raise
        print(f"{prefix}: error: {logs.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0


def _quiet_stdout() -> None:
    """The reader went away: what is left to flush goes nowhere (Python's own advice)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``fleetwatch`` command."""
    signal.signal(signal.SIGTERM, _terminated)  # until the command installs its own
    code = main(argv)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    sys.exit(code)
