from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetwatch.config import Secret, load_settings, parse_duration, parse_timestamp
from fleetwatch.config.values import MAX_DURATION
from fleetwatch.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleetwatch.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.kafka.telemetry_topic == "telemetry"
    assert settings.kafka.dead_letter_topic == "telemetry.deadletter"
    assert settings.simulate.devices == 10


def test_layers_file_then_env_then_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'data_dir = "/from/file"\n[kafka]\npartitions = 3\nbootstrap_servers = "file:1"\n'
        "[simulate]\ndevices = 7\nsensors = 5\n",
    )
    env = {"FLEETWATCH_PARTITIONS": "6", "FLEETWATCH_SIMULATE_DEVICES": "8"}
    settings = load_settings(
        config_path=path, environ=env, overrides={"simulate": {"devices": "9"}}
    )
    assert settings.data_dir == Path("/from/file")  # file only
    assert settings.kafka.bootstrap_servers == "file:1"  # file only
    assert settings.kafka.partitions == 6  # env beats file
    assert settings.simulate.sensors == 5  # file only
    assert settings.simulate.devices == 9  # CLI beats env and file


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\npartitions = 12\n")
    settings = load_settings(environ={"FLEETWATCH_CONFIG": str(path)})
    assert settings.kafka.partitions == 12


def test_unknown_file_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\nbootstrap_server = 'x:1'\n")
    with pytest.raises(
        ConfigError, match=r"unknown key \[kafka\] bootstrap_server .*bootstrap_servers"
    ):
        load_settings(config_path=path, environ={})


def test_unknown_section_and_env_var(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key kafak"):
        load_settings(config_path=write(tmp_path, "[kafak]\nx = 1\n"), environ={})
    with pytest.raises(ConfigError, match=r"FLEETWATCH_PARTITONS .*FLEETWATCH_PARTITIONS"):
        load_settings(environ={"FLEETWATCH_PARTITONS": "3"})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"FLEETWATCH_PARTITIONS": "many"},
            "FLEETWATCH_PARTITIONS=many: 'many' is not a whole number",
        ),
        ({"FLEETWATCH_PARTITIONS": "0"}, "below the minimum"),
        ({"FLEETWATCH_SECURITY_PROTOCOL": "TLS"}, "not one of PLAINTEXT"),
        ({"FLEETWATCH_SIMULATE_INTERVAL": "5x"}, "bad duration"),
        ({"FLEETWATCH_SIMULATE_START": "yesterday"}, "bad timestamp"),
        ({"FLEETWATCH_SIMULATE_ANOMALY_KINDS": "spike,meteor"}, "unknown kind 'meteor'"),
        ({"FLEETWATCH_TELEMETRY_TOPIC": "bad topic"}, "topic names"),
        ({"FLEETWATCH_SIMULATE_LATE_FRACTION": "1.5"}, "above the maximum"),
        # an empty group id was a Faust traceback ("App requires an id!")
        ({"FLEETWATCH_AGGREGATE_GROUP_ID": ""}, "group_id='': use 1-200 of"),
        ({"FLEETWATCH_AGGREGATE_GROUP_ID": "a b"}, "group_id='a b': use 1-200 of"),
        # an empty data directory named "None" before
        ({"FLEETWATCH_DATA_DIR": ""}, "FLEETWATCH_DATA_DIR=: empty: give a folder"),
        ({"FLEETWATCH_DATA_DIR": "  "}, "FLEETWATCH_DATA_DIR=  : empty: give a folder"),
        # each was a traceback where a library met the number (numpy's int64, a socket's
        # time_t, kafka-python's int32 and int16 fields), or a fork of that many processes
        ({"FLEETWATCH_SIMULATE_INTERVAL": "99999999999999999999"}, "0 to 100 years"),
        ({"FLEETWATCH_TIMEOUT": "30d"}, "30d is above the maximum 1d"),
        ({"FLEETWATCH_AGGREGATE_REBALANCE_TIMEOUT": "2d"}, "2d is above the maximum 1d"),
        ({"FLEETWATCH_PARTITIONS": "3000000000"}, "above the maximum 100000"),
        ({"FLEETWATCH_REPLICATION_FACTOR": "40000"}, "above the maximum 32767"),
        ({"FLEETWATCH_SCORE_WORKERS": "99999999999999999999"}, "above the maximum 1024"),
        ({"FLEETWATCH_TRAIN_WORKERS": "5000"}, "above the maximum 1024"),
        # found at start, not at the scheduler's first tick an hour later
        (
            {"FLEETWATCH_SCORE_EXECUTOR": "dask"},
            "executor = dask needs a scheduler: .*FLEETWATCH_SCORE_DASK_SCHEDULER",
        ),
    ],
)
def test_bad_values_name_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


@pytest.mark.parametrize(
    "line",
    ["data_dir = ['x']", "[kafka]\nbootstrap_servers = ['a:1']", "[train]\ntarget_far = {a = 1}"],
)
def test_an_array_or_table_where_one_value_goes_is_refused(tmp_path: Path, line: str) -> None:
    # data_dir = ['x'] made a folder named "['x']"
    with pytest.raises(ConfigError, match="is not one value"):
        load_settings(config_path=write(tmp_path, line + "\n"), environ={})


def test_bad_value_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[simulate]\ndevices = 'lots'\n")
    with pytest.raises(ConfigError, match=r"fleetwatch.toml: \[simulate\] devices=lots"):
        load_settings(config_path=path, environ={})


def test_event_hubs_settings_and_password_never_shown() -> None:
    conn = (
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=SECRETKEY"
    )
    settings = load_settings(
        environ={
            "FLEETWATCH_BOOTSTRAP_SERVERS": "ns.servicebus.windows.net:9093",
            "FLEETWATCH_SECURITY_PROTOCOL": "SASL_SSL",
            "FLEETWATCH_SASL_USERNAME": "$ConnectionString",
            "FLEETWATCH_SASL_PASSWORD": conn,
        }
    )
    assert settings.kafka.sasl_password.reveal() == conn
    assert "SECRETKEY" not in repr(settings)
    assert "SECRETKEY" not in str(settings.kafka)
    from fleetwatch.brokers.clients import common_config, describe_target

    config = common_config(settings.kafka)
    assert config["sasl_plain_username"] == "$ConnectionString"
    assert config["sasl_plain_password"] == conn
    assert config["security_protocol"] == "SASL_SSL"
    assert "SECRETKEY" not in describe_target(settings.kafka)


def test_a_ca_bundle_that_is_missing_or_not_pem_is_named(tmp_path: Path) -> None:
    # Before: "cannot reach Kafka at ... (SSL) within 10s", the file never mentioned. Checked
    # where a client is built (kafka-python's config, Faust's credentials), not at every load.
    from fleetwatch.brokers.clients import common_config, ssl_context

    ssl = {"FLEETWATCH_SECURITY_PROTOCOL": "SSL"}
    missing = str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=f"ssl_cafile={missing}: no such file"):
        common_config(load_settings(environ={**ssl, "FLEETWATCH_SSL_CAFILE": missing}).kafka)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a readable bundle of PEM certificates"):
        ssl_context(load_settings(environ={**ssl, "FLEETWATCH_SSL_CAFILE": str(garbage)}).kafka)
    certifi = pytest.importorskip("certifi")

    loaded = load_settings(environ={**ssl, "FLEETWATCH_SSL_CAFILE": certifi.where()})
    assert loaded.kafka.ssl_cafile == certifi.where()
    assert common_config(loaded.kafka)["ssl_cafile"] == certifi.where()


def test_sasl_without_credentials_is_an_error() -> None:
    with pytest.raises(ConfigError, match="needs sasl_username and sasl_password"):
        load_settings(environ={"FLEETWATCH_SECURITY_PROTOCOL": "SASL_SSL"})


def test_bad_password_value_is_masked_in_errors() -> None:
    assert repr(Secret("hunter2")) == "Secret('********')"


def test_parsers() -> None:
    assert parse_duration("90") == 90.0
    assert parse_duration("2h") == 7200.0
    assert parse_duration("7d") == 604800.0
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("-3s")
    assert parse_duration("36500d") == 36500 * 86400.0
    for longer in ("36526d", "99999999999999999999", 1e300, float("nan"), -1):
        with pytest.raises(ValueError, match=r"bad duration .*0 to 100 years"):
            parse_duration(longer)
    assert parse_timestamp("2026-11-22T10") == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_timestamp("2026-11-22T12:00:00+02:00") == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_timestamp("2026-11-22T10:00:00") == datetime(2026, 11, 22, 10, tzinfo=UTC)


def test_the_parquet_codec_setting_defaults_to_what_the_writer_uses() -> None:
    """Config does not import pyarrow (every command would pay for it), so the default is
    written twice: here they must agree."""
    from fleetwatch.storage.parquet import DEFAULT_COMPRESSION

    assert load_settings(environ={}).aggregate.parquet_compression == DEFAULT_COMPRESSION


@pytest.mark.parametrize("gamma", ["-1", "0", "nan", "inf", "abc", ""])
def test_a_gamma_scikit_learn_would_refuse_is_refused_before_any_fit(gamma: str) -> None:
    """Before: `--gamma -1` trained every device, failed each, and exited 1."""
    with pytest.raises(ConfigError, match="positive number"):
        load_settings(environ={"FLEETWATCH_TRAIN_GAMMA": gamma})


@pytest.mark.parametrize("gamma", ["scale", "auto", "0.5", "2"])
def test_a_gamma_scikit_learn_takes_is_taken(gamma: str) -> None:
    from sklearn.svm import OneClassSVM

    assert load_settings(environ={"FLEETWATCH_TRAIN_GAMMA": gamma}).train.gamma == gamma
    value = gamma if gamma in ("scale", "auto") else float(gamma)
    OneClassSVM(gamma=value).fit([[0.0], [1.0], [2.0]])  # scikit-learn agrees


def test_an_object_store_scheme_without_its_package_names_that_package(tmp_path: Path) -> None:
    # gs:// said "pip install 'fleetwatch[s3]'", which does not install gcsfs
    import importlib.util

    from fleetwatch.errors import FleetwatchError
    from fleetwatch.storage.store import open_store

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here: the message is for a machine without it")
    store = open_store("gs://fleet/prod")
    with pytest.raises(FleetwatchError, match=r"gs:// needs the gcsfs package: pip install gcsfs"):
        store.listing("aggregates")


@given(st.text(max_size=30) | st.floats() | st.integers(min_value=-(10**30), max_value=10**30))
def test_a_duration_is_a_number_of_seconds_a_clock_can_hold_or_an_error(raw: object) -> None:
    try:
        seconds = parse_duration(raw)  # type: ignore[arg-type]
    except ValueError as exc:
        assert "bad duration" in str(exc)
    else:
        assert 0 <= seconds <= MAX_DURATION
