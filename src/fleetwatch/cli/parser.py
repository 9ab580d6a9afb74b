"""How a command is declared, and the argument parser built from the declarations.

Every command is a module of :mod:`fleetwatch.cli.commands` holding a :class:`Command`: its
summary and examples, the settings it uses (each becomes a flag, named after its
``fleetwatch.toml`` key, with its ``FLEETWATCH_*`` variable in the help), and its own arguments.
A command shows only the flags of the settings it uses. A mistyped flag, choice or command is
one line with the closest real one, exit 2, like a mistyped setting.
"""

from __future__ import annotations

import argparse
import difflib
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

from fleetwatch.config import Secret, SettingInfo, describe, format_duration
from fleetwatch.errors import FleetwatchError

#: For each settings section (``""``: the top level), the names a command uses, or all of them.
Uses = Mapping[str, tuple[str, ...] | Literal["*"]]


class UsageError(FleetwatchError):
    """The command line itself is wrong: an unknown flag, command or choice, a missing value."""


@dataclass(frozen=True)
class Command:
    """One ``fleetwatch`` subcommand."""

    name: str
    summary: str
    examples: str
    uses: Uses
    handler: Callable[[argparse.Namespace, Any], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    aliases: tuple[str, ...] = field(default=())

    def settings(self) -> list[SettingInfo]:
        """The settings this command has flags for, in declaration order."""
        chosen = []
        for section, names in self.uses.items():
            for info in describe(section):
                if names == "*" or info.name in names:
                    chosen.append(info)
        return chosen


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line with a suggestion, as settings errors are.

    It remembers the flags added through it (``flags``), for those suggestions."""

    flags: list[str]
    subcommands: dict[str, Parser]

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        if not hasattr(self, "flags"):  # argparse adds --help from its own __init__
            self.flags = []
        self.flags += [n for n in names if isinstance(n, str) and n.startswith("-")]
        return super().add_argument(*names, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}{_suggestion(self, message)}")


def _suggestion(parser: Parser, message: str) -> str:
    unknown = re.search(r"unrecognized arguments: (\S+)", message)
    if unknown:
        flag = unknown.group(1).split("=", 1)[0]
        close = difflib.get_close_matches(flag, parser.flags, n=1)
        return f" (did you mean {close[0]}?)" if close else f"; see `{parser.prog} --help`"
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        options = re.findall(r"'?([\w.-]+)'?", choice.group(2))
        close = difflib.get_close_matches(choice.group(1), options, n=1)
        return f" (did you mean {close[0]}?)" if close else ""
    return ""


def help_text(info: SettingInfo) -> str:
    """The flag's help: what it does, its default as one writes it, its variable."""
    default = info.default
    if isinstance(default, Secret) or "password" in info.name:
        shown: str | None = "********" if default else None
    elif default is None:
        shown = None
    elif info.kind == "duration":
        shown = format_duration(float(default))
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, list):
        shown = ",".join(map(str, default)) or None
    elif isinstance(default, Path):
        shown = str(default)
    else:
        shown = str(default)
    where = f"default: {shown}; " if shown not in (None, "") else ""
    # argparse %-formats help strings: a literal % must be doubled
    return f"{info.help} [{where}env {info.env_var}]".replace("%", "%%")


def _add_setting_flag(parser: Parser, group: Any, info: SettingInfo) -> None:
    parser.flags.append(info.flag)
    dest = f"setting:{info.section}:{info.name}"
    if info.annotation is bool:
        parser.flags.append(f"--no-{info.flag[2:]}")
        group.add_argument(
            info.flag,
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=help_text(info),
        )
        return
    metavar = info.metavar or {"duration": "DURATION", "timestamp": "TIME"}.get(
        info.kind, info.name.upper()
    )
    group.add_argument(
        info.flag, dest=dest, default=argparse.SUPPRESS, metavar=metavar, help=help_text(info)
    )


def add_command(subparsers: Any, command: Command) -> Parser:
    parser: Parser = subparsers.add_parser(
        command.name,
        help=command.summary,
        description=command.summary,
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(command.examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if command.arguments is not None:
        command.arguments(parser)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="settings file (default: $FLEETWATCH_CONFIG or ./fleetwatch.toml if present)",
    )
    groups: dict[str, Any] = {}
    seen = set(parser.flags)
    for info in command.settings():
        if info.flag in seen:  # e.g. two sections' --format: the command's own argument wins
            continue
        seen.add(info.flag)
        title = {"": "general", "kafka": "Kafka connection"}.get(
            info.section, f"{info.section} settings"
        )
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        _add_setting_flag(parser, groups[title], info)
    parser.set_defaults(command=command)
    return parser


def build_parser(commands: Sequence[Command], version: str) -> Parser:
    parser = Parser(
        prog="fleetwatch",
        description="Watch a fleet of IoT devices: Kafka telemetry -> event-time windows "
        "(Parquet) -> hourly per-device anomaly scoring (DuckDB).",
        epilog="Run `fleetwatch COMMAND --help` for a command's flags and examples.",
    )
    parser.add_argument("--version", action="version", version=f"fleetwatch {version}")
    subparsers = parser.add_subparsers(
        dest="command_name", required=True, metavar="COMMAND", parser_class=Parser
    )
    parser.subcommands = {command.name: add_command(subparsers, command) for command in commands}
    return parser


#: Flags whose values are secrets wherever they are given (a command that has no such flag
#: still must not echo one back in "unrecognized arguments").
SECRET_FLAGS = ("--sasl-password", "--webhook-url")
_NEGATIVE = re.compile(r"-\d")


def parse(parser: Parser, arguments: Sequence[str]) -> argparse.Namespace:
    """Parse; an unknown flag is reported by its command's parser, which knows the flags the
    suggestion is drawn from. A value that starts like a negative number (``--task-timeout
    -5s``) is the flag's value, so that its own check says what is wrong with it; a secret's
    value never appears in an error."""
    tokens = _joined_values(list(arguments))
    secrets = _secret_values(tokens)
    try:
        args, extra = parser.parse_known_args(tokens)
        if extra:
            parser.subcommands[args.command_name].error(
                f"unrecognized arguments: {' '.join(extra)}"
            )
    except UsageError as exc:
        message = str(exc)
        for secret in sorted(secrets, key=len, reverse=True):
            message = message.replace(secret, "********")
        raise UsageError(message) from None
    return args


def _joined_values(tokens: list[str]) -> list[str]:
    """``--flag -5s`` as ``--flag=-5s`` (argparse would take ``-5s`` for a flag)."""
    joined: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if (
            token.startswith("--")
            and "=" not in token
            and following is not None
            and _NEGATIVE.match(following)
        ):
            joined.append(f"{token}={following}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def _secret_values(tokens: list[str]) -> list[str]:
    found = []
    for index, token in enumerate(tokens):
        name, equals, value = token.partition("=")
        if name in SECRET_FLAGS:
            if equals and value:
                found.append(value)
            elif index + 1 < len(tokens) and tokens[index + 1]:
                found.append(tokens[index + 1])
    return found


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings given as flags, by section, for :func:`~fleetwatch.config.load_settings`."""
    result: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if dest.startswith("setting:"):
            _, section, name = dest.split(":", 2)
            result.setdefault(section, {})[name] = value
    return result


def flags_of(command: Command) -> set[str]:
    """Every flag ``fleetwatch <command>`` accepts (for tests and tooling)."""
    parser = Parser(prog="probe")
    subparsers = parser.add_subparsers(parser_class=Parser)
    return set(add_command(subparsers, command).flags)
