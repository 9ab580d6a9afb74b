"""No secret in any output at any log level: every command at DEBUG, the SASL password given as a
flag, an environment variable or in fleetwatch.toml, every byte written checked (before:
kafka-python's admin client logged ``sasl_plain_password`` at DEBUG from topics and aggregate)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwatch.config import Settings
from tests.conftest import fleetwatch_cli

pytestmark = pytest.mark.integration
PASSWORD = "Endpoint=sb://ns.example/;SharedAccessKey=hunter2-Zq8/x+y=="
COMMANDS: list[list[str]] = [
    ["topics", "list"],
    ["topics", "create"],
    ["simulate", "--messages", "3", "--no-progress"],
    ["import", "{csv}"],
    ["aggregate"],
    ["status"],
    ["sql", "SELECT 1"],
    ["models", "list"],
    ["score", "--missed"],
    ["train", "--since", "2026-11-22T00", "--until", "2026-11-22T01"],
]


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("flag", marks=pytest.mark.scenario),  # ~9 s each: CI runs them as
        "environment",  # scenarios; the environment one stays in the main suite
        pytest.param("toml", marks=pytest.mark.scenario),
    ],
)
def test_no_command_writes_the_password_at_debug(
    source: str, settings: Settings, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    csv = tmp_path / "readings.csv"
    csv.write_text("TS,Device,Tag,Value\n2026-11-22T10:00:00Z,pump-1,t,1.0\n")
    env = {
        "FLEETWATCH_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "FLEETWATCH_TELEMETRY_TOPIC": settings.kafka.telemetry_topic,
        "FLEETWATCH_DEAD_LETTER_TOPIC": settings.kafka.dead_letter_topic,
        "FLEETWATCH_DATA_DIR": str(data),
        "FLEETWATCH_LOG_LEVEL": "DEBUG",
        "FLEETWATCH_TIMEOUT": "1s",
        "FLEETWATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FLEETWATCH_SASL_USERNAME": "$ConnectionString",
    }
    config = tmp_path / "fleetwatch.toml"
    config.write_text(f"[kafka]\nsasl_password = {PASSWORD!r}\n".replace("'", '"'))
    written = []
    for command in COMMANDS:
        argv = [part.replace("{csv}", str(csv)) for part in command]
        extra: dict[str, str] = {}
        if source == "flag":
            argv += ["--sasl-password", PASSWORD] if _takes_kafka(argv[0]) else []
            extra["FLEETWATCH_SASL_PASSWORD"] = PASSWORD  # for the commands without the flag
        elif source == "environment":
            extra["FLEETWATCH_SASL_PASSWORD"] = PASSWORD
        else:
            argv += ["--config", str(config)]
        result = fleetwatch_cli(*argv, env={**env, **extra}, timeout=120, cwd=tmp_path)
        written.append((argv[0], result.stdout + result.stderr))
    written += [
        (str(p), p.read_bytes().decode(errors="replace")) for p in data.rglob("*") if p.is_file()
    ]
    leaks = [where for where, text in written if "hunter2" in text]
    assert leaks == []
    # the commands did run and talk (this is not a test of commands that said nothing)
    debug = [where for where, text in written if "DEBUG" in text]
    assert len(debug) >= 3, written


def _takes_kafka(command: str) -> bool:
    return command in {"topics", "simulate", "import", "aggregate"}
