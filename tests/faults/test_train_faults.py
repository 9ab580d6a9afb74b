"""`fleetwatch train` killed while it publishes its models (issue 26, the columnar store): right
after writing its run object and before the journal record that makes its rows versions, and
right after that record. Either way every device has all of its run's versions or none, and a
rerun activates models whose parameters and thresholds are a clean training's (scikit-learn's
fits are deterministic); on a local folder and on S3."""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from fleetwatch.config.values import parse_location
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.train import train
from tests.faults.conftest import Backend, fleetwatch, processes_of
from tests.unit.scoring.conftest import DEVICES, T0, settings_for, synthetic_windows
from tests.unit.storage.test_compaction import write_in_pieces

pytestmark = pytest.mark.faults


@pytest.mark.parametrize(
    ("point", "kind"),
    [
        ("registry.run_written", "device"),
        ("registry.published", "device"),
        ("registry.published", "per_sensor"),
    ],
)
def test_train_killed_while_publishing_leaves_whole_versions_and_a_rerun_is_a_clean_one(
    backend: Backend, tmp_path: Path, point: str, kind: str
) -> None:
    frame = synthetic_windows(hours=2)
    write_in_pieces(backend.data_dir, frame)
    clean = settings_for(tmp_path / "clean")
    clean = replace(clean, train=replace(clean.train, per_sensor=kind == "per_sensor"))
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
                 "--min-windows", "30", *(["--per-sensor"] if kind == "per_sensor" else []),
                 )  # fmt: skip
    log = tmp_path / "train.log"
    killed = fleetwatch(*arguments, env={**backend.env, "FLEETWATCH_FAULTS": f"{point}:1"},
                        log=log)  # fmt: skip
    assert killed.wait(120) == -signal.SIGKILL, log.read_text()[-2000:]
    deadline = time.monotonic() + 15  # its pool's processes follow it (about a second)
    while processes_of(backend.data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_of(backend.data_dir), "train's pool outlived it"
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
        assert active.manifest["kind"] == kind


def test_prune_killed_between_its_record_and_its_deletes_loses_nothing_it_kept(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`models prune` killed right after the journal record that forgets the old versions,
    before it deletes their run objects: the kept versions load and verify as before, the
    forgotten ones are gone from every listing, and their run objects are left over (extra
    bytes, nothing lost): the next prune deletes them once they are a day old."""
    import fleetwatch.scoring.registry as registry_module

    frame = synthetic_windows(hours=2)
    write_in_pieces(backend.data_dir, frame)
    settings = replace(
        settings_for(Path("unused")),
        data_dir=parse_location(backend.data_dir),
        local_dir=backend.local_dir if backend.s3 is not None else None,
    )
    for _ in range(3):  # v0001..v0003 of every device, a run object each
        train(settings, T0, T0 + timedelta(hours=2), DEVICES)
    registry = ModelRegistry(settings.layout.store)
    kept = {d: registry.read_params(registry.get(d, "v0003")) for d in DEVICES}
    runs = {item.name for item in registry.files.runs()}
    assert len(runs) == 3
    log = tmp_path / "prune.log"
    env = {**backend.env, "FLEETWATCH_FAULTS": "registry.forgotten:1"}
    killed = fleetwatch("models", "prune", "--keep", "1", env=env, log=log)
    assert killed.wait(120) == -signal.SIGKILL, log.read_text()[-2000:]
    registry = ModelRegistry(settings.layout.store)
    for device in DEVICES:
        assert [v.version for v in registry.versions(device)] == ["v0003"]
        assert registry.active_version(device) == "v0003"
        assert registry.read_params(registry.get(device, "v0003")) == kept[device]
    assert {item.name for item in registry.files.runs()} == runs  # left over, not lost
    again = fleetwatch("models", "prune", "--keep", "1", env=backend.env, log=log)
    assert again.wait(120) == 0, log.read_text()[-2000:]
    assert len(registry.files.runs()) == 3  # too young to be told from a run publishing now
    monkeypatch.setattr(registry_module, "ORPHAN_AGE", timedelta(0))
    result = ModelRegistry(settings.layout.store).prune(keep=1)
    assert result.forgotten == {} and len(result.deleted_runs) == 2
    registry = ModelRegistry(settings.layout.store)
    assert len(registry.files.runs()) == 1
    for device in DEVICES:
        assert registry.read_params(registry.active(device)) == kept[device]  # type: ignore[arg-type]
