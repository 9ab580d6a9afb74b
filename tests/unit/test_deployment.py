"""docker-compose.yml and Dockerfile: every service runs a real command with valid settings.

Docker cannot run here, so the file is checked the way Docker would read it, against the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleetwatch.cli import parser as build_parser
from fleetwatch.cli.parser import overrides
from fleetwatch.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def fleetwatch_services(compose: dict) -> dict[str, dict]:
    return {
        n: s
        for n, s in compose["services"].items()
        if (s.get("image") == "fleetwatch:latest" and "entrypoint" not in s) or n == "sql"
    }


def test_every_fleetwatch_service_command_parses(compose: dict) -> None:
    services = fleetwatch_services(compose)
    assert set(services) == {"topics", "simulator", "aggregator", "scheduler", "sql", "dashboard"}
    parser = build_parser()
    for name, service in services.items():
        argv = list(service["command"])
        entrypoint = service.get("entrypoint", ["fleetwatch"])
        assert entrypoint[0] == "fleetwatch", name
        argv = [*entrypoint[1:], *argv]
        args = parser.parse_args(argv)  # raises UsageError on a bad flag or subcommand
        environment = {k: str(v) for k, v in service["environment"].items()}
        assert all(k.startswith("FLEETWATCH_") for k in environment), name
        load_settings(environ=environment, overrides=overrides(args))  # raises on a bad value


def test_services_share_one_data_volume_and_wait_for_kafka(compose: dict) -> None:
    services = fleetwatch_services(compose)
    for name, service in services.items():
        wanted = "data:/data:ro" if name == "dashboard" else "data:/data"  # it only reads
        assert wanted in service["volumes"], name
        assert service["environment"]["FLEETWATCH_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert compose["services"]["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("simulator", "aggregator", "scheduler"):
        condition = compose["services"][name]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully"
    assert "container_name" not in compose["services"]["aggregator"]  # --scale needs this
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:") and "healthcheck" in kafka
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert "data" in compose["volumes"]
    # Kafka's log lives as long as the data volume's checkpoints: `down`/`up` keeps both
    assert "kafka:/var/lib/kafka/data" in kafka["volumes"]
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "kafka" in compose["volumes"]
    # the dashboard is published on this machine only, its port the one it listens on
    # the dask profile: a scheduler, scalable workers from the same image (Dask's own CLI)
    dask = {n: s for n, s in compose["services"].items() if s.get("profiles") == ["dask"]}
    assert set(dask) == {"dask-scheduler", "dask-worker"}
    assert dask["dask-worker"]["command"][:1] == ["tcp://dask-scheduler:8786"]
    assert (
        "container_name" not in dask["dask-worker"]
        and "data:/data" in dask["dask-worker"]["volumes"]
    )
    dashboard = compose["services"]["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8050:8050"] and "8050" in dashboard["command"]


def test_dockerfile_installs_the_package_and_uses_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[dask,s3]"' in text and 'ENTRYPOINT ["fleetwatch"]' in text
    assert "FLEETWATCH_DATA_DIR=/data" in text


def test_the_object_storage_override_points_every_data_service_at_its_bucket(
    compose: dict,
) -> None:
    """docker-compose.s3.yml: MinIO, a one-shot bucket job, and the services that read or
    write the data plane given an s3:// data dir (valid settings) once the bucket exists."""
    override = yaml.safe_load((ROOT / "docker-compose.s3.yml").read_text())
    services = override["services"]
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")  # pinned
    assert "mc mb --ignore-existing s3/fleetwatch" in services["bucket"]["command"][0]
    data_services = {"aggregator", "scheduler", "dashboard", "sql", "dask-worker"}
    assert data_services <= set(compose["services"]) and data_services <= set(services)
    for name in data_services:
        environment = {k: str(v) for k, v in services[name]["environment"].items()}
        settings = load_settings(
            environ={k: v for k, v in environment.items() if k.startswith("FLEETWATCH_")}
        )
        assert str(settings.data_dir) == "s3://fleetwatch/data", name
        assert environment["AWS_ENDPOINT_URL"] == "http://minio:9000"
        if name not in ("sql", "dask-worker"):
            assert services[name]["depends_on"]["bucket"]["condition"] == (
                "service_completed_successfully"
            )
    assert "objects" in override["volumes"]
