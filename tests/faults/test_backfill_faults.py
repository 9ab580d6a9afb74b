"""`fleetwatch import --backfill` killed between the hours it writes (each hour is one file), then
run again: every window of the file exactly once, on a local folder and on S3 (the windows
compared with pandas over the file's readings)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.faults.conftest import Backend, fleetwatch, rng_for
from tests.unit.ingest.test_backfill import assert_windows_equal, azure_csv, expected_windows

pytestmark = pytest.mark.faults
HOURS = 5


def test_a_backfill_killed_between_its_hours_and_run_again_writes_every_window_once(
    backend: Backend, tmp_path: Path
) -> None:
    rng = rng_for("backfill-kill", backend.name)
    source = tmp_path / "history.csv"
    frame = azure_csv(source, hours=HOURS, seed=rng.randrange(1000))
    log = tmp_path / "import.log"
    command = ["import", str(source), "--backfill", "--assume-timezone", "UTC"]
    written_before = rng.randint(1, HOURS - 1)
    killed = fleetwatch(
        *command,
        env={**backend.env, "FLEETWATCH_FAULTS": f"backfill.written:{written_before}"},
        log=log,
    )
    assert killed.wait(120) == -signal.SIGKILL, log.read_text()[-3000:]
    assert len(backend.names("aggregates")) == written_before  # some hours, not all
    again = fleetwatch(*command, env=backend.env, log=log)
    assert again.wait(120) == 0, log.read_text()[-3000:]

    assert len(backend.names("aggregates")) == HOURS
    assert_windows_equal(backend.frame("aggregates"), expected_windows(frame))
    got = backend.frame("aggregates")
    assert not got.duplicated(["device_id", "sensor", "window_start"]).any()
    assert backend.hidden("aggregates") == []  # no temporary left by the killed run
