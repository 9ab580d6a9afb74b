"""`fleetwatch train` killed while it publishes its models (issue 26, the columnar store): right
after writing its run object and before the journal record that makes its rows versions, and
right after that record. Either way every device has all of its run's versions or none, and a
rerun activates models whose parameters and thresholds are a clean training's (scikit-learn's
fits are deterministic); on a local folder and on S3."""

from __future__ import annotations

import signal
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from fleetwatch.config.values import parse_location
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.train import train
from tests.faults.conftest import Backend, fleetwatch
from tests.unit.scoring.conftest import DEVICES, T0, settings_for, synthetic_windows
from tests.unit.storage.test_compaction import write_in_pieces

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("point", ["registry.run_written", "registry.published"])
def test_train_killed_while_publishing_leaves_whole_versions_and_a_rerun_is_a_clean_one(
    backend: Backend, tmp_path: Path, point: str
) -> None:
    frame = synthetic_windows(hours=2)
    write_in_pieces(backend.data_dir, frame)
    clean = settings_for(tmp_path / "clean")
    write_in_pieces(str(clean.data_dir), frame)
    train(clean, T0, T0 + timedelta(hours=2), DEVICES)
    answer = ModelRegistry.of(clean.data_dir)
    settings = replace(
        settings_for(Path("unused")),
        data_dir=parse_location(backend.data_dir),
        local_dir=backend.local_dir if backend.s3 is not None else None,
    )
    until = (T0 + timedelta(hours=2)).isoformat()
    arguments = ("train", "--since", T0.isoformat(), "--until", until, "--workers", "2",
                 "--min-windows", "30")  # fmt: skip
    log = tmp_path / "train.log"
    killed = fleetwatch(*arguments, env={**backend.env, "FLEETWATCH_FAULTS": f"{point}:1"},
                        log=log)  # fmt: skip
    assert killed.wait(120) == -signal.SIGKILL, log.read_text()[-2000:]
    registry = ModelRegistry(settings.layout.store)
    published = point == "registry.published"
    for device in DEVICES:  # nothing half: all published, or none
        assert len(registry.versions(device)) == (1 if published else 0)
        assert registry.active_version(device) == ("v0001" if published else None)
    again = fleetwatch(*arguments, env=backend.env, log=log)
    assert again.wait(120) == 0, log.read_text()[-2000:]
    registry = ModelRegistry(settings.layout.store)
    for device in DEVICES:
        versions = registry.versions(device)
        assert [v.version for v in versions] == (["v0001", "v0002"] if published else ["v0001"])
        active, expected = registry.active(device), answer.active(device)
        assert active is not None and expected is not None
        assert active.version == versions[-1].version
        assert registry.read_params(active) == answer.read_params(expected)
        assert active.manifest["threshold"] == expected.manifest["threshold"]
