"""One settings object, layered: defaults < ``fleetwatch.toml`` < ``FLEETWATCH_*`` < CLI flags.

Every setting lives in a section dataclass. The same name is used everywhere::

    fleetwatch.toml            environment                      command line
    data_dir = "/srv/fw"       FLEETWATCH_DATA_DIR=/srv/fw      --data-dir /srv/fw
    [kafka]
    bootstrap_servers = "k:9092"  FLEETWATCH_BOOTSTRAP_SERVERS  --bootstrap-servers k:9092
    [simulate]
    devices = 50               FLEETWATCH_SIMULATE_DEVICES=50   fleetwatch simulate --devices 50

Settings of the top level and of ``[kafka]`` have unprefixed environment names; every other
section's names carry the section (``FLEETWATCH_SIMULATE_DEVICES``). Unknown keys and bad values
raise :class:`~fleetwatch.errors.ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from fleetwatch.errors import ConfigError

ENV_PREFIX = "FLEETWATCH_"
CONFIG_ENV = "FLEETWATCH_CONFIG"
DEFAULT_CONFIG_FILE = Path("fleetwatch.toml")


class Secret:
    """A string that never shows itself in a repr, a log line or a printed settings dump."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value, for handing to a client library and nowhere else."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__


Kind = Literal["plain", "duration", "timestamp", "list"]


def setting(
    default: Any,
    help: str,
    *,
    kind: Kind = "plain",
    minimum: float | None = None,
    maximum: float | None = None,
    metavar: str | None = None,
) -> Any:
    """Declare one setting: its default, its help text and how a string becomes its value."""
    meta = {"help": help, "kind": kind, "minimum": minimum, "maximum": maximum, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


SecurityProtocol = Literal["PLAINTEXT", "SASL_SSL", "SASL_PLAINTEXT", "SSL"]
Compression = Literal["lz4", "gzip", "zstd", "snappy", "none"]
OutputFormat = Literal["text", "json", "csv"]
ANOMALY_KINDS = ("spike", "level_shift", "stuck", "noise_burst", "drift_ramp", "dropout")


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = setting("localhost:9092", "Kafka bootstrap servers, host:port[,...]")
    security_protocol: SecurityProtocol = setting(
        "PLAINTEXT", "PLAINTEXT, or SASL_SSL for Azure Event Hubs / Confluent Cloud"
    )
    sasl_mechanism: Literal["PLAIN"] = setting("PLAIN", "SASL mechanism (PLAIN)")
    sasl_username: str = setting(
        "", "SASL user name; Event Hubs: the literal $ConnectionString", metavar="USER"
    )
    sasl_password: Secret = setting(
        Secret(""), "SASL password; Event Hubs: the connection string. Never logged.", metavar="PW"
    )
    ssl_cafile: str = setting("", "CA bundle for SSL (default: the system's)", metavar="PATH")
    telemetry_topic: str = setting("telemetry", "topic the devices publish readings to")
    dead_letter_topic: str = setting(
        "telemetry.deadletter", "topic that receives invalid messages with a reason header"
    )
    partitions: int = setting(4, "partitions when fleetwatch creates a topic", minimum=1)
    replication_factor: int = setting(1, "replication factor for created topics", minimum=1)
    compression: Compression = setting("lz4", "producer compression (Event Hubs: gzip or none)")
    timeout: float = setting(
        10.0, "how long to wait for the broker before giving up", kind="duration", minimum=0.1
    )


@dataclass(frozen=True)
class SimulateSettings:
    devices: int = setting(10, "number of simulated devices", minimum=1, maximum=1_000_000)
    sensors: int = setting(3, "sensors per device (named, then sensor_NN)", minimum=1, maximum=99)
    device_prefix: str = setting("pump", "device ids are <prefix>-0001, <prefix>-0002, ...")
    interval: float = setting(
        1.0, "simulated seconds between two readings of one device", kind="duration", minimum=0.001
    )
    speed: float = setting(
        1.0, "simulated clock speed-up; 0 = as fast as the broker takes it", minimum=0
    )
    start: datetime | None = setting(
        None, "simulated start time, ISO-8601 (default: now)", kind="timestamp"
    )
    resume: bool = setting(
        False,
        "continue the simulated clock after the newest event already in the topic (a "
        "restarted simulator); --clean-for counts from the topic's first event",
    )
    duration: float | None = setting(
        None, "stop after this much simulated time (30s, 10m, 2h, 1d)", kind="duration", minimum=0
    )
    messages: int | None = setting(None, "stop after this many messages", minimum=1)
    seed: int | None = setting(
        None, "random seed: same seed and flags, same bytes (default: random)"
    )
    anomaly_rate: float = setting(
        0.5, "injected anomalies per device per simulated hour", minimum=0
    )
    anomaly_kinds: list[str] = setting(
        list(ANOMALY_KINDS), "comma-separated anomaly kinds to inject", kind="list"
    )
    daily_cycle: float = setting(1.0, "scale of the sensors' daily cycle (0 = none)", minimum=0)
    drift: float = setting(1.0, "scale of the sensors' slow drift (0 = none)", minimum=0)
    clean_for: float = setting(
        0.0, "keep the first simulated span free of anomalies (e.g. 2h)", kind="duration", minimum=0
    )
    labels: Path | None = setting(
        None, "write injected anomalies (ground truth) to this .parquet or .csv", metavar="PATH"
    )
    late_fraction: float = setting(
        0.0, "fraction of messages delivered late (after --late-delay)", minimum=0, maximum=1
    )
    late_delay: float = setting(
        300.0, "simulated delay of late messages", kind="duration", minimum=0
    )
    malformed_fraction: float = setting(
        0.0,
        "fraction of messages garbled on purpose (test the dead-letter path)",
        minimum=0,
        maximum=1,
    )
    format: OutputFormat = setting("text", "summary format")
    progress: bool = setting(True, "show a progress bar on a terminal")


@dataclass(frozen=True)
class ImportSettings:
    layout: Literal["auto", "long", "wide"] = setting(
        "auto", "long = TS,Device,Tag,Value rows; wide = timestamp,device_id,<sensor>... columns"
    )
    assume_timezone: str = setting(
        "",
        "zone for timestamps without an offset, e.g. UTC (default: such rows are invalid)",
        metavar="TZ",
    )
    device_id: str = setting("", "device id for a wide file without a device_id column")
    sanitize_names: bool = setting(
        False, "replace characters outside [A-Za-z0-9_.-] in sensor column names with _"
    )
    rejects: Path | None = setting(
        None, "write every invalid row (line, reason) to this CSV", metavar="PATH"
    )
    delimiter: str = setting("", "CSV delimiter (default: sniffed)")
    backfill: bool = setting(
        False,
        "historical data: write its windows straight into the aggregates (no Kafka, no "
        "watermark) instead of publishing it",
    )
    format: OutputFormat = setting("text", "summary format")


@dataclass(frozen=True)
class AggregateSettings:
    window: float = setting(60.0, "tumbling window length", kind="duration", minimum=1)
    grace: float = setting(
        30.0,
        "how long after a window's end late readings are still accepted",
        kind="duration",
        minimum=0,
    )
    idle_timeout: float = setting(
        60.0,
        "close the open windows of a partition that was silent this long (wall clock)",
        kind="duration",
        minimum=0.1,
    )
    group_id: str = setting("fleetwatch-aggregate", "consumer group of the aggregation workers")
    max_open_windows: int = setting(
        2_000_000,
        "open (device, sensor, window) states per partition before the oldest are closed early",
        minimum=100,
    )
    checkpoint_interval: float = setting(
        10.0,
        "checkpoint (late readings, dead letters, offsets) at least this often",
        kind="duration",
        minimum=0.1,
    )
    log_interval: float = setting(
        10.0,
        "how often to log throughput, open windows, lag, dead letters, late readings",
        kind="duration",
        minimum=0.1,
    )
    rebalance_timeout: float = setting(
        10.0,
        "consumer-group rebalance/session timeout (about 5s against the embedded broker)",
        kind="duration",
        minimum=1,
    )
    parquet_compression: Compression = setting(
        "snappy",  # = storage.parquet.DEFAULT_COMPRESSION (not imported: it imports pyarrow)
        "codec of the aggregate and late Parquet files; zstd: up to 8% smaller, 1.7x the CPU "
        "for scoring to read",
    )
    future_limit: float = setting(
        3600.0,
        "dead-letter a reading stamped more than this ahead of its Kafka record's timestamp "
        "(future_timestamp; 0 = no limit)",
        kind="duration",
        minimum=0,
    )
    on_offset_reset: Literal["earliest", "fail"] = setting(
        "earliest",
        "when the log lost records a partition had not finished (topic reset or recreated, "
        "retention): log an ERROR and go on from the log's start (earliest), or stop (fail)",
    )


@dataclass(frozen=True)
class TrainSettings:
    since: datetime | None = setting(
        None, "first window start to train on (ISO-8601)", kind="timestamp"
    )
    until: datetime | None = setting(
        None, "train on windows starting before this", kind="timestamp"
    )
    devices: list[str] = setting(
        [], "comma-separated device ids (default: every device)", kind="list"
    )
    nu: float = setting(
        0.01, "OneClassSVM nu: the expected fraction of outliers", minimum=1e-6, maximum=1
    )
    gamma: str = setting("scale", "RBF/poly/sigmoid gamma: scale, auto or a number")
    kernel: Literal["rbf", "linear", "poly", "sigmoid"] = setting("rbf", "SVM kernel")
    per_sensor: bool = setting(False, "one univariate model per (device, sensor) instead")
    min_windows: int = setting(30, "skip devices with fewer training windows", minimum=2)
    threshold_quantile: float = setting(
        0.01,
        "flag a window when its score is below this quantile of the training scores (and below 0)",
        minimum=0,
        maximum=0.5,
    )
    workers: int = setting(0, "parallel processes (0 = one per core)", minimum=0)
    activate: bool = setting(True, "make the new versions active")
    progress: bool = setting(True, "show a progress bar on a terminal")
    format: OutputFormat = setting("text", "summary format")


@dataclass(frozen=True)
class ScoreSettings:
    workers: int = setting(0, "worker processes (0 = one per core)", minimum=0)
    mini_batch_size: int = setting(
        2000, "at most this many devices per task (a task is one forked process)", minimum=1
    )
    task_timeout: float = setting(
        300.0, "kill and retry a task after this long", kind="duration", minimum=0.1
    )
    max_retries: int = setting(2, "retries of a failed task (split in halves each time)", minimum=0)
    error_threshold: int = setting(
        -1, "abort the run when more devices than this fail (-1 = never)", minimum=-1
    )
    output: Literal["anomalies", "all"] = setting("all", "store every score, or only the anomalies")
    lock_timeout: float = setting(
        30.0, "wait this long for the DuckDB file lock", kind="duration", minimum=0
    )
    format: OutputFormat = setting("text", "summary format")


@dataclass(frozen=True)
class ScheduleSettings:
    cron: str = setting("5 * * * *", "when to score, crontab syntax in UTC (default: minute 5)")
    every: float | None = setting(
        None,
        "instead of --cron: score every this long (e.g. 10s for tests and the demo)",
        kind="duration",
        minimum=0.1,
    )
    max_catchup: int = setting(
        48, "at most this many pending hours per tick, oldest first", minimum=1
    )
    misfire_grace: float = setting(
        3600.0, "a tick missed by less than this still runs", kind="duration", minimum=1
    )
    retrain_every: float | None = setting(
        None, "also retrain every device this often (e.g. 7d)", kind="duration", minimum=1
    )
    retrain_window: float = setting(
        86400.0, "retrain on this much of the newest closed data", kind="duration", minimum=60
    )
    train_first: float | None = setting(
        None,
        "train every device without a model on its first this much of closed data, as soon as "
        "it is closed (e.g. 2h)",
        kind="duration",
        minimum=60,
    )
    format: OutputFormat = setting("text", "output format of `fleetwatch status`")


@dataclass(frozen=True)
class DemoSettings:
    devices: int = setting(30, "simulated devices", minimum=1)
    sensors: int = setting(4, "sensors per device", minimum=1, maximum=99)
    interval: float = setting(
        10.0, "simulated seconds between readings", kind="duration", minimum=0.1
    )
    speed: float = setting(360.0, "simulated clock speed-up (360: an hour every 10 s)", minimum=1)
    start: datetime | None = setting(
        None, "simulated start (default: yesterday, this hour)", kind="timestamp"
    )
    train_for: float = setting(
        7200.0, "anomaly-free simulated time to train on", kind="duration", minimum=3600
    )
    score_for: float = setting(
        10800.0, "simulated time to score after training", kind="duration", minimum=3600
    )
    anomaly_rate: float = setting(1.0, "anomalies per device per simulated hour", minimum=0)
    daily_cycle: float = setting(
        0.1,
        "daily-cycle scale of the demo fleet (two training hours cannot learn a day)",
        minimum=0,
    )
    drift: float = setting(0.0, "drift scale of the demo fleet", minimum=0)
    seed: int = setting(7, "random seed")
    tick: float = setting(2.0, "scheduler cadence during the demo", kind="duration", minimum=0.1)
    timeout: float = setting(600.0, "give up after this long", kind="duration", minimum=10)
    keep_running: bool = setting(False, "keep streaming and scoring until Ctrl-C")


@dataclass(frozen=True)
class BrokerSettings:
    host: str = setting("127.0.0.1", "address the embedded broker listens on")
    port: int = setting(
        9092, "port of the embedded broker (0 = any free port)", maximum=65535, minimum=0
    )


@dataclass(frozen=True)
class Settings:
    data_dir: Path = setting(Path("fleetwatch-data"), "where aggregates, models and DuckDB live")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "log verbosity")
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    aggregate: AggregateSettings = field(default_factory=AggregateSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    simulate: SimulateSettings = field(default_factory=SimulateSettings)
    import_: ImportSettings = field(default_factory=ImportSettings)


#: TOML section name -> attribute of :class:`Settings`.
SECTIONS: dict[str, str] = {
    "kafka": "kafka",
    "broker": "broker",
    "aggregate": "aggregate",
    "train": "train",
    "score": "score",
    "schedule": "schedule",
    "demo": "demo",
    "simulate": "simulate",
    "import": "import_",
}
#: Sections whose environment variables carry no section prefix.
UNPREFIXED_SECTIONS = frozenset({"", "kafka"})


# ---------------------------------------------------------------- parsing of single values

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | float) -> float:
    """Seconds in a duration such as ``90``, ``30s``, ``5m``, ``2h``, ``7d``.

    >>> parse_duration("2h"), parse_duration("1.5m"), parse_duration(45)
    (7200.0, 90.0, 45.0)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(f"bad duration {text!r} (use e.g. 30s, 5m, 2h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def parse_timestamp(text: str | datetime) -> datetime:
    """An aware UTC datetime from ISO-8601; ``2026-11-22T10`` means 10:00, no offset means UTC.

    >>> parse_timestamp("2026-11-22T10").isoformat()
    '2026-11-22T10:00:00+00:00'
    """
    if isinstance(text, datetime):
        value = text
    else:
        raw = str(text).strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}", raw):
            raw += ":00"
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"bad timestamp {text!r} (use ISO-8601, e.g. 2026-11-22T10:00:00Z)"
            ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _coerce(raw: Any, annotation: Any, meta: Mapping[str, Any]) -> Any:
    """Turn a raw value (a TOML value, an env string or an argparse string) into ``annotation``."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        return _coerce(raw, members[0], meta)
    kind = meta.get("kind", "plain")
    if kind == "duration":
        value: Any = parse_duration(raw)
    elif kind == "timestamp":
        value = parse_timestamp(raw)
    elif kind == "list":
        items = raw if isinstance(raw, list) else str(raw).split(",")
        value = [str(item).strip() for item in items if str(item).strip()]
    elif origin is Literal:
        choices = get_args(annotation)
        text = str(raw)
        match = next((c for c in choices if str(c).lower() == text.lower()), None)
        if match is None:
            raise ValueError(f"{text!r} is not one of {', '.join(map(str, choices))}")
        value = match
    elif annotation is bool:
        if isinstance(raw, bool):
            value = raw
        elif str(raw).strip().lower() in ("1", "true", "yes", "on"):
            value = True
        elif str(raw).strip().lower() in ("0", "false", "no", "off"):
            value = False
        else:
            raise ValueError(f"{raw!r} is not a boolean (use true or false)")
    elif annotation is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"{raw!r} is not a whole number")
        try:
            value = int(str(raw).replace("_", "")) if not isinstance(raw, int | float) else int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a whole number") from None
    elif annotation is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{raw!r} is not a finite number")
    elif annotation is Path:
        value = Path(str(raw)).expanduser()
    elif annotation is Secret:
        value = raw if isinstance(raw, Secret) else Secret(str(raw))
    elif annotation is str:
        if not isinstance(raw, str):
            raise ValueError(f"{raw!r} is not a string")
        value = raw
    else:  # pragma: no cover - a declaration error, not a user error
        raise TypeError(f"unsupported setting type {annotation!r}")
    minimum, maximum = meta.get("minimum"), meta.get("maximum")
    if minimum is not None and value < minimum:
        raise ValueError(f"{value!r} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{value!r} is above the maximum {maximum}")
    return value


# ---------------------------------------------------------------- the layered loader


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
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (check --config)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
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
        if var.startswith(ENV_PREFIX) and var != CONFIG_ENV and var not in by_env:
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
            values[info.section][info.name] = _coerce(raw, info.annotation, info.meta)
        except ValueError as exc:
            shown = "********" if info.annotation is Secret else raw
            raise ConfigError(f"{origin}={shown}: {exc}") from None

    sections = {attr: _section_class(name)[0](**values[name]) for name, attr in SECTIONS.items()}
    settings = Settings(**values[""], **sections)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    """Rules that involve more than one setting."""
    kafka = settings.kafka
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
            float(gamma)
        except ValueError:
            raise ConfigError(f"gamma={gamma!r}: use scale, auto or a number") from None
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
