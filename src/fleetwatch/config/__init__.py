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

from fleetwatch.config.loader import (
    CONFIG_ENV,
    ENV_PREFIX,
    SettingInfo,
    describe,
    load_settings,
)
from fleetwatch.config.sections import (
    ANOMALY_KINDS,
    SECTIONS,
    AggregateSettings,
    AlertSettings,
    BrokerSettings,
    DashboardSettings,
    DemoSettings,
    EvaluateSettings,
    ImportSettings,
    KafkaSettings,
    ScheduleSettings,
    ScoreSettings,
    Settings,
    SimulateSettings,
    TrainSettings,
    setting,
)
from fleetwatch.config.values import Secret, format_duration, parse_duration, parse_timestamp

__all__ = [
    "ANOMALY_KINDS",
    "CONFIG_ENV",
    "ENV_PREFIX",
    "SECTIONS",
    "AggregateSettings",
    "AlertSettings",
    "BrokerSettings",
    "DashboardSettings",
    "DemoSettings",
    "EvaluateSettings",
    "ImportSettings",
    "KafkaSettings",
    "ScheduleSettings",
    "ScoreSettings",
    "Secret",
    "SettingInfo",
    "Settings",
    "SimulateSettings",
    "TrainSettings",
    "describe",
    "format_duration",
    "load_settings",
    "parse_duration",
    "parse_timestamp",
    "setting",
]
