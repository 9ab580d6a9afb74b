"""The layered loader: defaults < ``fleetwatch.toml`` < ``FLEETWATCH_*`` < command-line flags."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from fleetwatch.config.sections import (
    ANOMALY_KINDS,
    SECTIONS,
    UNPREFIXED_SECTIONS,
    ScheduleSettings,
    Settings,
)
from fleetwatch.config.values import FileTooLargeError, Secret, coerce, read_small
from fleetwatch.errors import ConfigError

ENV_PREFIX = "FLEETWATCH_"
CONFIG_ENV = "FLEETWATCH_CONFIG"
#: Variables that are not settings: the configuration file, tracebacks, the fault suite's points.
NOT_SETTINGS = frozenset({CONFIG_ENV, "FLEETWATCH_DEBUG", "FLEETWATCH_FAULTS"})
DEFAULT_CONFIG_FILE = Path("fleetwatch.toml")


@dataclass(frozen=True)
class SettingInfo:
    """What the CLI and the loader need to know of one setting."""

    section: str  # "" for the top level, else the TOML section name
    name: str
    annotation: Any
    default: Any
    help: str
    kind: str
    metavar: str | None
    meta: Mapping[str, Any]

    @property
    def env_var(self) -> str:
        if self.section in UNPREFIXED_SECTIONS:
            return f"{ENV_PREFIX}{self.name.upper()}"
        return f"{ENV_PREFIX}{self.section.upper()}_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@functools.cache
def _section_class(section: str) -> tuple[type[Any], dict[str, Any]]:
    """A section's class and its type hints (cached: ``get_type_hints`` compiles every
    annotation string, 30 ms of each CLI start)."""
    cls: type[Any] = Settings if section == "" else get_type_hints(Settings)[SECTIONS[section]]
    return cls, get_type_hints(cls)


def describe(section: str) -> list[SettingInfo]:
    """The settings of one section (``""`` = top level, without the nested sections)."""
    cls, hints = _section_class(section)
    infos = []
    for f in dataclasses.fields(cls):
        if section == "" and f.name in SECTIONS.values():
            continue
        default: Any = f.default
        factory: Any = f.default_factory
        if default is dataclasses.MISSING and factory is not dataclasses.MISSING:
            default = factory()
        infos.append(
            SettingInfo(
                section=section,
                name=f.name,
                annotation=hints[f.name],
                default=default,
                help=f.metadata.get("help", ""),
                kind=f.metadata.get("kind", "plain"),
                metavar=f.metadata.get("metavar"),
                meta=f.metadata,
            )
        )
    return infos


def _all_settings() -> list[SettingInfo]:
    return [info for section in ("", *SECTIONS) for info in describe(section)]


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        document = tomllib.loads(read_small(path).decode())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (check --config)") from None
    except FileTooLargeError as exc:
        raise ConfigError(f"config file {exc}: not a TOML file (check --config)") from None
    except IsADirectoryError:
        raise ConfigError(
            f"config file {path} is a folder, not a TOML file (check --config)"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not valid TOML ({reason}); check --config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    layered: dict[str, dict[str, Any]] = {"": {}}
    top_names = [i.name for i in describe("")]
    for key, value in document.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table")
            names = [i.name for i in describe(key)]
            for sub_key in value:
                if sub_key not in names:
                    hint = _suggest(sub_key, names)
                    raise ConfigError(f"{path}: unknown key [{key}] {sub_key}{hint}")
            layered[key] = dict(value)
        elif key in top_names:
            layered[""][key] = value
        else:
            raise ConfigError(
                f"{path}: unknown key {key}{_suggest(key, top_names + list(SECTIONS))}"
            )
    return layered


def load_settings(
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build :class:`Settings` from defaults, a TOML file, the environment and CLI overrides.

    ``config_path`` None means ``$FLEETWATCH_CONFIG`` or, if present, ``./fleetwatch.toml``.
    ``overrides`` maps a section name (``""`` for the top level) to raw values from the CLI.

    >>> load_settings(environ={}, overrides={"kafka": {"partitions": "8"}}).kafka.partitions
    8
    """
    env = dict(os.environ if environ is None else environ)
    infos = _all_settings()
    by_env = {info.env_var: info for info in infos}
    for var in env:
        if var.startswith(ENV_PREFIX) and var not in NOT_SETTINGS and var not in by_env:
            raise ConfigError(f"unknown environment variable {var}{_suggest(var, list(by_env))}")

    if config_path is None and env.get(CONFIG_ENV):
        config_path = Path(env[CONFIG_ENV])
    if config_path is None and DEFAULT_CONFIG_FILE.is_file():
        config_path = DEFAULT_CONFIG_FILE
    file_values = _read_toml(config_path) if config_path is not None else {}

    values: dict[str, dict[str, Any]] = {section: {} for section in ("", *SECTIONS)}
    for info in infos:
        sources: list[tuple[str, Any]] = []
        section_values = file_values.get(info.section, {})
        if info.name in section_values:
            where = f"[{info.section}] " if info.section else ""
            sources.append((f"{config_path}: {where}{info.name}", section_values[info.name]))
        if info.env_var in env:
            sources.append((info.env_var, env[info.env_var]))
        cli_values = (overrides or {}).get(info.section, {})
        if info.name in cli_values:
            sources.append((info.flag, cli_values[info.name]))
        if not sources:
            continue
        origin, raw = sources[-1]
        try:
            values[info.section][info.name] = coerce(raw, info.annotation, info.meta)
        except ValueError as exc:
            shown = "********" if info.annotation is Secret else raw
            raise ConfigError(f"{origin}={shown}: {exc}") from None

    sections = {attr: _section_class(name)[0](**values[name]) for name, attr in SECTIONS.items()}
    settings = Settings(**values[""], **sections)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    """Rules that involve more than one setting, or more than a type."""
    kafka = settings.kafka
    for server in kafka.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"bootstrap_servers={kafka.bootstrap_servers!r}: {server.strip()!r} is not "
                "host:port (e.g. localhost:9092, or mynamespace.servicebus.windows.net:9093)"
            )
    if kafka.security_protocol.startswith("SASL") and not (
        kafka.sasl_username and kafka.sasl_password
    ):
        raise ConfigError(
            f"security_protocol={kafka.security_protocol} needs sasl_username and sasl_password "
            "(Event Hubs: FLEETWATCH_SASL_USERNAME='$ConnectionString', "
            "FLEETWATCH_SASL_PASSWORD='Endpoint=sb://...')"
        )
    if settings.schedule.cron != ScheduleSettings.cron:  # APScheduler takes a while to import
        try:
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger.from_crontab(settings.schedule.cron)
        except ValueError as exc:
            raise ConfigError(f"cron={settings.schedule.cron!r}: {exc}") from None
    gamma = settings.train.gamma
    if gamma not in ("scale", "auto"):
        try:
            number = float(gamma)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number > 0):  # scikit-learn's rule, before any fit
            raise ConfigError(f"gamma={gamma!r}: use scale, auto or a positive number") from None
    memory = settings.sql.memory_limit
    size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|[KMGT]i?B)", memory.strip(), re.IGNORECASE)
    if size is None or float(size[1]) <= 0 or (size[2] == "%" and float(size[1]) > 100):
        raise ConfigError(
            f"memory_limit={memory!r}: give a share of RAM (25%) or a size (2GB, 512MB)"
        )
    bad = [d for d in settings.train.devices if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", d)]
    if bad:
        raise ConfigError(f"devices: {bad[0]!r} is not a device id (1-64 of [A-Za-z0-9_.-])")
    unknown = sorted(set(settings.simulate.anomaly_kinds) - set(ANOMALY_KINDS))
    if unknown:
        raise ConfigError(
            f"anomaly_kinds: unknown kind {unknown[0]!r} (choose from {', '.join(ANOMALY_KINDS)})"
        )
    for name in ("telemetry_topic", "dead_letter_topic"):
        topic = getattr(kafka, name)
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic):
            raise ConfigError(f"{name}={topic!r}: topic names use 1-249 of [A-Za-z0-9._-]")
    if settings.score.executor == "dask" and not settings.score.dask_scheduler.strip():
        # found here, not at the scheduler's first tick an hour later
        raise ConfigError(
            "executor = dask needs a scheduler: --dask-scheduler tcp://HOST:8786 "
            "(or FLEETWATCH_SCORE_DASK_SCHEDULER)"
        )
    group = settings.aggregate.group_id
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", group):
        # also Faust's app id: it names an internal topic and a folder
        raise ConfigError(f"group_id={group!r}: use 1-200 of [A-Za-z0-9._-]")
