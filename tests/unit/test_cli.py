from __future__ import annotations

from pathlib import Path

import pytest

from fleetwatch.cli import build_parser, main

COMMANDS = ["broker", "topics", "simulate", "import"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"fleetwatch {command}" in text
    assert "--bootstrap-servers" in text and "FLEETWATCH_BOOTSTRAP_SERVERS" in text


def test_bad_setting_is_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--devices", "zero"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "fleetwatch simulate: error: --devices=zero: 'zero' is not a whole number"


def test_bad_config_file_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "fw.toml"
    config.write_text("[simulate]\ndevics = 3\n")
    assert main(["simulate", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key [simulate] devics (did you mean devices?)" in err
    assert len(err.splitlines()) == 1


def test_password_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    parser.parse_args(["simulate"])
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    assert "********" in capsys.readouterr().out
    # a bad value next to a password: the error names the bad key, never the password
    assert (
        main(
            [
                "simulate",
                "--sasl-password",
                "TOPSECRET",
                "--security-protocol",
                "SASL_SSL",
                "--timeout",
                "nope",
            ]
        )
        == 2
    )
    assert "TOPSECRET" not in capsys.readouterr().err


def test_a_command_built_alone_has_the_flags_it_has_among_all() -> None:
    """`main` builds only the invoked command's settings flags; they must be all of them."""
    import argparse

    def flags(parser: argparse.ArgumentParser, command: str) -> set[str]:
        [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        chosen = commands.choices[command]
        return {flag for action in chosen._actions for flag in action.option_strings}  # noqa: SLF001

    full = build_parser()
    [commands] = [a for a in full._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    for command in commands.choices:
        alone = flags(build_parser(command), command)
        assert alone == flags(full, command), command
        assert "--data-dir" in alone or command in {"broker", "topics"}, command


def test_the_command_runs_exit_handlers_and_keeps_its_output_and_exit_code(
    tmp_path: Path,
) -> None:
    """`run` skips the interpreter's teardown, never the exit handlers, the output or the code."""
    import subprocess
    import sys

    script = (
        "import atexit, sys\n"
        "from fleetwatch.cli import run\n"
        "atexit.register(print, 'handler ran')\n"
        "run(sys.argv[1:])\n"
    )
    data = ["--data-dir", str(tmp_path)]
    listed = subprocess.run(
        [sys.executable, "-c", script, "models", "list", *data, "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert (listed.returncode, listed.stdout) == (0, "[]\nhandler ran\n")
    refused = subprocess.run(
        [sys.executable, "-c", script, "sql", "DROP TABLE runs", *data],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and refused.stdout == "handler ran\n"
    assert refused.stderr.strip().endswith("read-only: DROP statements are refused (use SELECT)")
