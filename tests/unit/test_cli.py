"""The command line: help, flags per command, one-line errors with suggestions, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleetwatch.cli import main
from fleetwatch.cli.commands import COMMANDS
from fleetwatch.cli.parser import flags_of

NAMES = [command.name for command in COMMANDS]


@pytest.mark.parametrize("command", NAMES)
def test_every_command_renders_its_help_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"fleetwatch {command}" in text
    assert "{'option_strings'" not in text and "%%" not in text  # a % in a help string
    assert "[default: None" not in text and "default: 3600.0" not in text


def test_a_command_shows_only_the_flags_it_uses() -> None:
    flags = {command.name: flags_of(command) for command in COMMANDS}
    kafka = {"--bootstrap-servers", "--sasl-password", "--security-protocol"}
    for name in ("topics", "simulate", "import", "aggregate"):
        assert kafka <= flags[name], name
    for name in ("sql", "models", "train", "score", "schedule", "status", "broker"):
        assert not flags[name] & kafka, name
    assert "--data-dir" in flags["sql"] and "--data-dir" not in flags["broker"]
    assert "--max-catchup" in flags["score"] and "--cron" not in flags["score"]
    assert "--train-first" in flags["schedule"] and "--since" not in flags["schedule"]


def test_durations_show_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    main(["schedule", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[default: 1h; env FLEETWATCH_SCHEDULE_MISFIRE_GRACE]" in text
    main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: now) [env FLEETWATCH_SIMULATE_START]" in text


def test_bad_setting_is_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--devices", "zero"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "fleetwatch simulate: error: --devices=zero: 'zero' is not a whole number"


@pytest.mark.parametrize("value", [",,,", " , "])
def test_a_list_of_nothing_is_refused_not_taken_for_the_default(
    value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--slow-sensors ,,,`` would have meant no slow sensor, ``--devices ,`` every device."""
    assert main(["train", "--slow-sensors", value]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"fleetwatch train: error: --slow-sensors={value}: {value!r} names nothing: give "
        "comma-separated names"
    )
    monkeypatch.setenv("FLEETWATCH_TRAIN_DEVICES", value)
    assert main(["train"]) == 2
    assert "names nothing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["score", "--mised"], "did you mean --missed?"),
        (["simulate", "--devics", "3"], "did you mean --devices?"),
        (["models", "lst"], "did you mean list?"),
        (["scroe", "--missed"], "did you mean score?"),
    ],
)
def test_a_mistyped_flag_choice_or_command_gets_one_line_and_a_suggestion(
    argv: list[str], suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert suggestion in line and line.startswith("fleetwatch")
    assert captured.out == ""


def test_bad_config_file_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "fw.toml"
    config.write_text("[simulate]\ndevics = 3\n")
    assert main(["simulate", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key [simulate] devics (did you mean devices?)" in err
    assert len(err.splitlines()) == 1


def test_password_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    main(["simulate", "--help"])
    assert "hunter2" not in capsys.readouterr().out
    args = ["simulate", "--sasl-password", "TOPSECRET", "--security-protocol", "SASL_SSL"]
    assert main([*args, "--timeout", "nope"]) == 2
    assert "TOPSECRET" not in capsys.readouterr().err


def test_the_command_keeps_its_output_and_exit_code_through_a_pipe(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    listed = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "models", "list", *data, "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (listed.returncode, listed.stdout) == (0, "[]\n")
    refused = subprocess.run(
        [sys.executable, "-m", "fleetwatch", "sql", "DROP TABLE runs", *data],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().endswith("read-only: DROP statements are refused (use SELECT)")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--data-dir", "/x", "status"],
            "fleetwatch status: error: options come after the "
            "command: fleetwatch status --data-dir ...",
        ),
        (["--sasl-password=TOPSECRET", "score", "--missed"], "fleetwatch score --sasl-password"),
        (["--log-level", "DEBUG"], "fleetwatch COMMAND --log-level ..."),
    ],
)
def test_options_before_the_command_get_the_order_in_one_line_without_their_values(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    [said] = captured.err.strip().splitlines()
    assert line in said and "TOPSECRET" not in said and "/x" not in said
    assert captured.out == ""
    assert main(["--version"]) == 0 and main(["--help"]) == 0
