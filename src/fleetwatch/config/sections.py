"""Every setting, declared once: its section, name, type, default, help and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from fleetwatch.config.values import Secret
from fleetwatch.storage.layout import DataLayout

Kind = Literal["plain", "duration", "timestamp", "list", "location"]


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


#: Processes one host forks at most (a larger count is a slip: each is a Python process).
MAX_WORKERS = 1024

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
    partitions: int = setting(
        4, "partitions when fleetwatch creates a topic", minimum=1, maximum=100_000
    )
    replication_factor: int = setting(
        1, "replication factor for created topics", minimum=1, maximum=32_767
    )
    compression: Compression = setting("lz4", "producer compression (Event Hubs: gzip or none)")
    timeout: float = setting(
        10.0,
        "how long to wait for the broker before giving up",
        kind="duration",
        minimum=0.1,
        maximum=86_400,  # Kafka's request timeouts are int32 milliseconds
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
        None, "random seed: same seed and flags, same bytes (default: random)", minimum=0
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
        "auto",
        "long = TS,Device,Tag,Value rows (or timestamp,device_id,sensor|metric,value|reading); "
        "wide = timestamp,device_id,<sensor>... columns",
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
    label_columns: list[str] = setting(
        [], "comma-separated label columns: kept out of the readings (never sensors)", kind="list"
    )
    exclude_columns: list[str] = setting(
        [], "comma-separated columns to leave out (not readings)", kind="list"
    )
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
    group_id: str = setting(
        "fleetwatch-aggregate",
        "consumer group of the aggregation workers (1-200 of [A-Za-z0-9._-])",
    )
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
        maximum=86_400,  # int32 milliseconds in the group protocol
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
    metrics_port: int = setting(
        0, "serve Prometheus metrics on this port (0 = off)", minimum=0, maximum=65535
    )
    metrics_host: str = setting("127.0.0.1", "address the metrics endpoint listens on")
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
    model_kind: Literal["device", "covariance", "auto"] = setting(
        "device",
        "a device's model: device (one one-class SVM over all its features), covariance "
        "(Hotelling's T-squared over the same features, a shrunk covariance), or auto "
        "(covariance for a device of two sensors or more, device for one); --per-sensor "
        "overrides it",
    )
    first: str | None = setting(
        None,
        "train each device on its own first part of the range: N readings (400), a duration "
        "(400s, 2h) or a share of its windows (0.3)",
    )
    ranges: Path | None = setting(
        None, "CSV of per-device training ranges: device_id,since,until", metavar="CSV"
    )
    min_windows: int = setting(
        15, "skip devices with fewer training windows (15: 10 to fit, 5 held out)", minimum=15
    )
    target_far: float = setting(
        0.001,
        "target false-alarm rate: the share of normal windows the threshold may flag",
        minimum=1e-9,
        maximum=0.5,
    )
    slow_sensors: list[str] = setting(
        ["auto"],
        "sensors described by their change from the previous window instead of their level "
        "(ones whose level wanders, e.g. temperatures): auto (each device judges on its "
        "training windows, the devices trained together decide by majority), none, or "
        "comma-separated sensor names",
        kind="list",
    )
    workers: int = setting(
        0, "parallel processes (0 = one per core)", minimum=0, maximum=MAX_WORKERS
    )
    activate: bool = setting(True, "make the new versions active")
    keep_estimator: bool = setting(
        False,
        "also store each model's scikit-learn objects (model.joblib: a reference for audits, "
        "about as large again as the parameters scoring uses)",
    )
    progress: bool = setting(True, "show a progress bar on a terminal")
    format: OutputFormat = setting("text", "summary format")


@dataclass(frozen=True)
class ScoreSettings:
    workers: int = setting(0, "worker processes (0 = one per core)", minimum=0, maximum=MAX_WORKERS)
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
    part_rows: int = setting(
        2_000_000,
        "score an hour of more aggregate rows than this a part of its devices at a time, each "
        "part about this many rows (bounds memory: ~250 MB a part of 2 M rows)",
        minimum=1,
    )
    executor: Literal["local", "dask"] = setting(
        "local", "where tasks run: forked processes here, or a Dask cluster (--dask-scheduler)"
    )
    dask_scheduler: str = setting(
        "", "the Dask scheduler for executor = dask (tcp://HOST:8786)", metavar="ADDRESS"
    )
    incident_gap: float = setting(
        300.0,
        "anomalous windows of a device at most this far apart are one incident",
        kind="duration",
        minimum=0,
    )
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
    metrics_port: int = setting(
        0, "serve Prometheus metrics on this port (0 = off)", minimum=0, maximum=65535
    )
    metrics_host: str = setting("127.0.0.1", "address the metrics endpoint listens on")
    train_first: float | None = setting(
        None,
        "train every device without a model on its first this much of closed data, as soon as "
        "it is closed (e.g. 2h)",
        kind="duration",
        minimum=60,
    )
    format: OutputFormat = setting("text", "output format of `fleetwatch status`")
    compact: bool = setting(
        True, "after scoring, merge each closed hour's aggregate files into one"
    )
    live: bool = setting(
        False,
        "also score every window as soon as the aggregation closes it (provisional, replaced "
        "by the final run of its hour); alerts come minutes, not an hour, after a fault",
    )
    live_every: float = setting(
        10.0,
        "with --live: look for newly closed windows this often",
        kind="duration",
        minimum=0.5,
    )


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
    seed: int = setting(7, "random seed", minimum=0)
    tick: float = setting(2.0, "scheduler cadence during the demo", kind="duration", minimum=0.1)
    timeout: float = setting(600.0, "give up after this long", kind="duration", minimum=10)
    keep_running: bool = setting(False, "keep streaming and scoring until Ctrl-C")
    dashboard: bool = setting(False, "keep the dashboard open after the demo, until Ctrl-C")


@dataclass(frozen=True)
class AlertSettings:
    webhook_url: Secret = setting(
        Secret(""),
        "POST each alert as JSON to this URL (it may hold a token: never logged)",
        metavar="URL",
    )
    jsonl: Path | None = setting(
        None, "append each alert as a JSON line to this file", metavar="PATH"
    )
    webhook_timeout: float = setting(
        5.0, "webhook timeout per attempt", kind="duration", minimum=0.1
    )
    webhook_retries: int = setting(
        3, "webhook retries before an alert waits for the next tick", minimum=0
    )
    max_age: float = setting(
        86400.0,
        "incidents that ended longer than this before the newest scored window are not sent",
        kind="duration",
        minimum=0,
    )
    silent: bool = setting(True, "also alert when a device goes silent")


@dataclass(frozen=True)
class DashboardSettings:
    host: str = setting(
        "127.0.0.1", "address the dashboard listens on (0.0.0.0: every interface; it has no login)"
    )
    port: int = setting(8050, "port of the dashboard (0 = any free port)", minimum=0, maximum=65535)


@dataclass(frozen=True)
class SqlSettings:
    query_timeout: float = setting(
        300.0,
        "stop a query after this long (0 = never): while it runs it holds the database's "
        "read lock, which scoring waits for",
        kind="duration",
        minimum=0,
    )
    memory_limit: str = setting(
        "25%",
        "memory a query may use: a share of RAM (25%) or a size (2GB, 512MB); scoring and "
        "aggregation run on the same machine",
        metavar="SIZE",
    )


@dataclass(frozen=True)
class EvaluateSettings:
    label_column: str = setting("anomaly", "the label column: non-zero or true = anomalous")
    label_columns: list[str] = setting(
        [], "more label columns to keep out of the readings (e.g. changepoint)", kind="list"
    )
    kind_column: str = setting("", "a column naming each anomalous reading's kind (optional)")
    train_first: str | None = setting(
        None,
        "each device's training part: N readings (400), a duration (400s) or a share (0.3) "
        "(default: the simulator's clean part; files: 0.3)",
    )
    train_ranges: Path | None = setting(
        None,
        "CSV of each device's training range (device_id,since,until, as `train --ranges`); "
        "its readings from `until` on are the test set",
        metavar="CSV",
    )
    keep: Path | None = setting(
        None,
        "keep the evaluation's data folder here, with evaluation/points.parquet (each point's "
        "label and flag; default: a temporary folder)",
        metavar="DIR",
    )
    format: OutputFormat = setting("text", "report format")


@dataclass(frozen=True)
class BrokerSettings:
    host: str = setting("127.0.0.1", "address the embedded broker listens on")
    port: int = setting(
        9092, "port of the embedded broker (0 = any free port)", maximum=65535, minimum=0
    )


@dataclass(frozen=True)
class Settings:
    data_dir: Path | str = setting(
        Path("fleetwatch-data"),
        "where aggregates, models and DuckDB live: a folder or s3://bucket/prefix",
        kind="location",
    )
    local_dir: Path | None = setting(
        None,
        "with an s3:// data dir: the local folder for DuckDB, locks and caches "
        "(default ~/.cache/fleetwatch/<bucket>-<hash>)",
        metavar="DIR",
    )
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
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    sql: SqlSettings = field(default_factory=SqlSettings)

    @cached_property
    def layout(self) -> DataLayout:
        """The data directory (its store and this machine's folder), opened once."""
        return DataLayout.open(self.data_dir, self.local_dir)


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
    "evaluate": "evaluate",
    "alerts": "alerts",
    "dashboard": "dashboard",
    "sql": "sql",
}
#: Sections whose environment variables carry no section prefix.
UNPREFIXED_SECTIONS = frozenset({"", "kafka"})
