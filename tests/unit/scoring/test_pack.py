"""The model pack: used while it holds the active models as they are, never after they change."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fleetwatch.scoring.score as scoring
from fleetwatch.cli import main
from fleetwatch.config import Settings
from fleetwatch.scoring.pack import ModelPack, read_active
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.score import score_hour
from fleetwatch.scoring.train import train
from tests.unit.scoring.conftest import DEVICES, T0
from tests.unit.scoring.tamper import append_record, rewrite_row
from tests.unit.scoring.test_score import HOUR3, assert_scores_equal_sklearn, db

TWO_HOURS = pd.Timedelta(hours=2).to_pytimedelta()


def open_pack(settings: Settings) -> ModelPack:
    return ModelPack.open(settings.layout.model_pack, ModelRegistry.of(settings.data_dir))


def segments(settings: Settings) -> list[Path]:
    return sorted(settings.layout.model_pack.glob("*.bin"))


@pytest.fixture
def read_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file listing the devices whose model scoring read from the registry's files (the
    workers are forked, so they append to a file rather than to a list)."""
    record = tmp_path / "read-from-files.txt"
    record.touch()

    def recording(registry: ModelRegistry, device_id: str):  # type: ignore[no-untyped-def]
        with record.open("a") as handle:
            handle.write(device_id + "\n")
        return read_active(registry, device_id)

    monkeypatch.setattr(scoring, "read_active", recording)
    return record


def test_training_packs_the_models_and_scoring_uses_the_pack(
    trained: Settings, read_from_files: Path
) -> None:
    assert len(open_pack(trained)) == len(DEVICES)
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_scored == len(DEVICES)
    assert read_from_files.read_text() == ""  # every model came from the pack
    assert_scores_equal_sklearn(trained)


def _resident_kib(path: Path) -> int:
    """How much of ``path``'s mapping in this process is resident (Linux's smaps)."""
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's first line: its file last
            inside = line.split()[-1] == str(path)
        elif inside and line.startswith("Rss:"):
            resident += int(line.split()[1])
    return resident


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux's smaps")
def test_forgetting_a_part_lets_go_of_the_pack_pages_it_read(trained: Settings) -> None:
    """Scoring an hour in parts: the pack's pages a part's models were read from stop
    counting in the scoring process when the part is done (issue 26: at 100,000 devices they
    were 600 of its 1,500 MiB), and its models load again, the same, afterwards."""
    pack = open_pack(trained)
    [segment] = segments(trained)
    assert pack.preload(DEVICES) == len(DEVICES)
    before = {d: pack.load(d) for d in DEVICES}
    assert _resident_kib(segment) > 0
    pack.forget(DEVICES)
    assert _resident_kib(segment) == 0
    for device_id, model in before.items():
        again = pack.load(device_id)
        assert model is not None and again is not None and again.version == model.version
        windows = np.random.default_rng(0).normal(size=(5, len(model.features)))
        np.testing.assert_array_equal(
            again.scorer.decision(windows), model.scorer.decision(windows)
        )


def test_an_activated_version_is_scored_at_once_then_packed(
    trained: Settings, read_from_files: Path
) -> None:
    train(trained, T0, T0 + TWO_HOURS, ["pump-01", "pump-02"])  # v0002, active and packed
    registry = ModelRegistry.of(trained.data_dir)
    registry.activate("pump-01", "v0001")
    digest = registry.journal.devices()["pump-02"].versions["v0001"][1]
    append_record(trained.data_dir, [["activate", "pump-02", "v0001", digest]])  # by hand
    score_hour(trained, HOUR3, progress=False)
    assert sorted(read_from_files.read_text().split()) == ["pump-01", "pump-02"]
    versions = dict(db(trained, "SELECT device_id, model_version FROM device_runs"))
    assert versions["pump-01"] == versions["pump-02"] == "v0001"
    assert versions["pump-03"] == "v0001"
    assert_scores_equal_sklearn(trained)  # against the active (v0001) estimators
    read_from_files.write_text("")
    score_hour(trained, HOUR3, progress=False)  # the run packed them
    assert read_from_files.read_text() == ""


def test_a_tampered_file_fails_its_device_although_the_pack_holds_a_good_copy(
    trained: Settings,
) -> None:
    model = ModelRegistry.of(trained.data_dir).active("pump-04")
    assert model is not None

    def flipped(blob: bytes) -> bytes:  # same size: one byte of one device's parameters
        return blob[:100] + bytes([blob[100] ^ 0xFF]) + blob[101:]

    rewrite_row(trained.data_dir, model, params=flipped)
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_failed == 1 and result.devices_scored == len(DEVICES) - 1
    error = db(trained, "SELECT error FROM device_runs WHERE device_id = 'pump-04'")[0][0]
    assert "does not match the sha256" in error
    assert "pump-04" not in _fresh_entries(trained)


def _fresh_entries(settings: Settings) -> set[str]:
    pack = open_pack(settings)
    return {d for d in DEVICES if pack.load(d) is not None}


def test_a_damaged_pack_is_read_around_and_mended(trained: Settings, read_from_files: Path) -> None:
    [segment] = segments(trained)
    index = json.loads(segment.with_suffix(".json").read_text())
    offset = index["entries"]["pump-05"][8]
    blob = bytearray(segment.read_bytes())
    blob[offset + 8] ^= 0xFF
    segment.write_bytes(bytes(blob))
    assert _fresh_entries(trained) == set(DEVICES) - {"pump-05"}
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_scored == len(DEVICES) and result.devices_failed == 0
    assert read_from_files.read_text().split() == ["pump-05"]
    assert_scores_equal_sklearn(trained)
    assert _fresh_entries(trained) == set(DEVICES)  # packed again after the run


@pytest.mark.parametrize("damage", ["not JSON", "an older format"])
def test_an_unreadable_pack_index_is_left_out_then_replaced(
    trained: Settings, read_from_files: Path, damage: str
) -> None:
    [segment] = segments(trained)
    index = segment.with_suffix(".json")
    if damage == "not JSON":
        index.write_text("{not json")
    else:  # as a fleetwatch of format 2 (params.bin copies) left it
        index.write_text(json.dumps({**json.loads(index.read_text()), "format": 2}))
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_scored == len(DEVICES) and result.devices_failed == 0
    assert sorted(read_from_files.read_text().split()) == DEVICES
    assert_scores_equal_sklearn(trained)
    assert segment not in segments(trained)  # the run's refresh deleted the damaged segment
    assert _fresh_entries(trained) == set(DEVICES)


def test_scoring_without_a_pack_reads_the_files_and_packs_them(
    trained: Settings, read_from_files: Path
) -> None:
    for path in trained.layout.model_pack.iterdir():
        path.unlink()
    result = score_hour(trained, HOUR3, progress=False)
    assert result.devices_scored == len(DEVICES)
    assert sorted(read_from_files.read_text().split()) == DEVICES
    assert_scores_equal_sklearn(trained)
    assert _fresh_entries(trained) == set(DEVICES)


def test_retraining_compacts_the_pack(trained: Settings) -> None:
    for _ in range(3):
        train(trained, T0, T0 + TWO_HOURS)
    pack = open_pack(trained)
    assert len(pack) == len(DEVICES)
    assert len(segments(trained)) <= 2  # superseded versions do not pile up
    assert {pack.load(d).version for d in DEVICES} == {"v0004"}  # type: ignore[union-attr]


def test_models_pack_command(trained: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    for path in trained.layout.model_pack.iterdir():
        path.unlink()
    code = main(["models", "pack", "--data-dir", str(trained.data_dir), "--format", "json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["packed_now"] == record["in_pack"] == len(DEVICES)
    assert _fresh_entries(trained) == set(DEVICES)


def test_training_reads_its_windows_once_and_packs_what_its_workers_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: the slow-sensor judgement's read is kept for the fits (the windows fit in one
    read), and the pack is written from the entries the workers made, not by the parent
    re-reading every device's files."""
    from fleetwatch.scoring import pack as packing
    from fleetwatch.scoring import train as training
    from tests.unit.scoring.conftest import (
        set_watermark,
        settings_for,
        synthetic_windows,
        write_windows,
    )

    data = tmp_path / "data"
    write_windows(data, synthetic_windows())
    settings = settings_for(data)
    reads: list[int] = []
    real_read = training.read_cube
    monkeypatch.setattr(
        training, "read_cube", lambda *a, **k: reads.append(1) or real_read(*a, **k)
    )
    from_files: list[str] = []
    real_entry = packing.pack_entry  # what the parent's refresh reads the files with

    def recorded(registry: ModelRegistry, device_id: str):  # type: ignore[no-untyped-def]
        from_files.append(device_id)
        return real_entry(registry, device_id)

    monkeypatch.setattr(packing, "pack_entry", recorded)
    summary = train(settings, T0, T0 + TWO_HOURS)
    assert len(summary.trained) == len(DEVICES) and summary.slow == {}
    assert len(reads) == 1  # judged and fitted from one read
    assert from_files == []  # every entry came from a worker
    assert len(open_pack(settings)) == len(DEVICES)
    set_watermark(settings, T0 + pd.Timedelta(hours=3).to_pytimedelta())
    assert score_hour(settings, HOUR3, progress=False).devices_scored == len(DEVICES)
    assert_scores_equal_sklearn(settings)
