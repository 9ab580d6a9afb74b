"""The columnar model store (issue 26, item 2): a training run writes a few objects, not a folder
per device; versions, activation, shadows, rollback and history keep working through the
journal; each device's integrity holds alone; two writers never take the same version; a run
object no record publishes is no version; a registry of version folders is read as it is."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fleetwatch.errors import InvalidInputError
from fleetwatch.scoring import journal as journal_module
from fleetwatch.scoring.calibration import Calibration
from fleetwatch.scoring.kinds import new_model
from fleetwatch.scoring.pack import ModelPack, pack_entry
from fleetwatch.scoring.registry import ModelIntegrityError, ModelRegistry, model_row
from fleetwatch.scoring.score import score_hour
from fleetwatch.scoring.train import train
from fleetwatch.storage.models import ModelFiles
from tests.unit.scoring.conftest import DEVICES, T0, settings_for, synthetic_windows, write_windows
from tests.unit.scoring.tamper import append_record, rewrite_row
from tests.unit.scoring.test_kinds import NAMES, WHEN, data
from tests.unit.scoring.test_score import HOUR3, assert_scores_equal_sklearn

TWO_HOURS = pd.Timedelta(hours=2).to_pytimedelta()


def fitted(seed: int = 0):  # type: ignore[no-untyped-def]
    model = new_model("device", 0.05, "scale", "rbf")
    model.fit(data(seed, 100), NAMES)
    return model


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "models").rglob("*") if p.is_file())


def test_a_training_run_writes_one_object_and_one_record_whatever_its_devices(
    tmp_path: Path,
) -> None:
    """Before: 6 files a device (3 of them fsync'ed per version), 600,002 files at 100k."""
    counts = {}
    for fleet in (2, 8):
        data_dir = tmp_path / f"fleet{fleet}"
        write_windows(data_dir, synthetic_windows())
        summary = train(settings_for(data_dir), T0, T0 + TWO_HOURS, DEVICES[:fleet])
        assert sorted(summary.trained) == DEVICES[:fleet]
        files = stored_files(data_dir)
        counts[fleet] = len(files)
        names = {p.relative_to(data_dir / "models").parts[0] for p in files}
        assert names == {"runs", "journal"}  # no device folder
    assert counts == {2: 2, 8: 2}  # one run object, one journal record


def test_activation_shadow_promotion_rollback_and_history(tmp_path: Path) -> None:
    registry = ModelRegistry.of(tmp_path)
    first = registry.save("pump-1", fitted(0), NAMES, WHEN, WHEN, 100, {})
    second = registry.save("pump-1", fitted(1), NAMES, WHEN, WHEN, 100, {}, activate=False)
    assert (first.version, second.version) == ("v0001", "v0002")
    assert registry.active_version("pump-1") == "v0001"
    registry.set_shadow("pump-1", "v0002")
    assert registry.shadowed_devices() == {"pump-1"}
    assert registry.promote("pump-1") == "v0002" and registry.shadow("pump-1") is None
    assert registry.rollback("pump-1") == "v0001"
    assert registry.history("pump-1") == ["v0001", "v0002", "v0001"]
    again = ModelRegistry.of(tmp_path)  # read back by another process
    assert again.history("pump-1") == ["v0001", "v0002", "v0001"]
    assert again.active_version("pump-1") == "v0001" and not again.shadowed_devices()
    assert [v.version for v in again.versions("pump-1")] == ["v0001", "v0002"]
    # each version's parameters are its own model's
    for version, seed in (("v0001", 0), ("v0002", 1)):
        _, arrays = again.load_params(again.get("pump-1", version))
        np.testing.assert_array_equal(arrays["sv"], fitted(seed).arrays()["sv"])
    described = again.describe("pump-1")
    assert described["version"] == "v0001" and described["sha256_verified"]
    # a version it does not have: the error names those it has (`models activate pump-1 2`)
    for act in (again.activate, again.set_shadow, again.get):
        with pytest.raises(
            InvalidInputError, match=r"no model version 2; its versions: v0001, v0002$"
        ):
            act("pump-1", "2")


def test_a_changed_row_fails_its_device_alone(tmp_path: Path) -> None:
    registry = ModelRegistry.of(tmp_path)
    rows = [model_row(d, fitted(i), NAMES, WHEN, WHEN, 100, {}) for i, d in enumerate("abc")]
    registry.publish(rows, {})
    model = registry.active("b")
    assert model is not None
    rewrite_row(tmp_path, model, estimator=lambda blob: blob[:-1] + b"\x00")
    fresh = ModelRegistry.of(tmp_path)
    for device in "ac":
        fresh.describe(device)  # both files check out
    with pytest.raises(ModelIntegrityError, match=r"model\.joblib does not match"):
        fresh.describe("b")


def test_two_writers_at_once_never_take_the_same_version(tmp_path: Path) -> None:
    """Four threads, five saves each, of one device: the create-only journal record makes each
    version number one writer's; a writer that lost re-reads and takes the next."""
    errors: list[BaseException] = []

    def saves(seed: int) -> None:
        try:
            registry = ModelRegistry.of(tmp_path, live=False)
            for _ in range(5):
                registry.save("pump-1", fitted(seed), NAMES, WHEN, WHEN, 100, {})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=saves, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    registry = ModelRegistry.of(tmp_path)
    versions = registry.versions("pump-1")
    assert [v.version for v in versions] == [f"v{n:04d}" for n in range(1, 21)]
    assert len({v.run for v in versions}) == 20 and len(registry.history("pump-1")) == 20
    for version in versions:
        registry.load_params(version)


def test_a_run_object_no_record_publishes_is_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry.of(tmp_path)
    registry.save("pump-1", fitted(0), NAMES, WHEN, WHEN, 100, {})

    def dies(*_: object) -> None:
        raise KeyboardInterrupt  # as a writer killed between its run object and its record

    monkeypatch.setattr(ModelFiles, "append_journal", dies)
    with pytest.raises(KeyboardInterrupt):
        registry.save("pump-1", fitted(1), NAMES, WHEN, WHEN, 100, {})
    monkeypatch.undo()
    assert len(list((tmp_path / "models" / "runs").glob("*.parquet"))) == 2
    fresh = ModelRegistry.of(tmp_path)
    assert [v.version for v in fresh.versions("pump-1")] == ["v0001"]
    assert fresh.save("pump-1", fitted(2), NAMES, WHEN, WHEN, 100, {}).version == "v0002"


def test_snapshots_keep_the_state_and_bound_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "SNAPSHOT_EVERY", 4)
    registry = ModelRegistry.of(tmp_path)
    registry.save("pump-1", fitted(0), NAMES, WHEN, WHEN, 100, {})
    registry.save("pump-1", fitted(1), NAMES, WHEN, WHEN, 100, {})
    reader = ModelRegistry.of(tmp_path)  # a live reader that read early
    assert reader.active_version("pump-1") == "v0002"
    for _ in range(15):
        registry.rollback("pump-1")
    folder = tmp_path / "models" / "journal"
    assert len(list(folder.glob("*.json"))) <= 2 * 4 + 1
    history = ["v0001", "v0002"] + ["v0001", "v0002"] * 7 + ["v0001"]
    assert registry.history("pump-1") == history
    assert ModelRegistry.of(tmp_path).history("pump-1") == history  # from the snapshot
    assert reader.history("pump-1") == history  # caught up across deleted records
    assert reader.active_version("pump-1") == "v0001"


def old_version(root: Path, device: str, version: str, seed: int) -> str:
    """A version folder as a fleetwatch before the journal wrote it; its manifest's sha256."""
    row = model_row(device, fitted(seed), NAMES, WHEN, WHEN, 100, {})
    manifest = json.loads(row.manifest) | {"version": version}
    folder = root / "models" / device / version
    folder.mkdir(parents=True)
    for name, content in row.files.items():
        (folder / name).write_bytes(content)
    raw = json.dumps(manifest, indent=2).encode()
    (folder / "manifest.json").write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


def test_a_registry_of_version_folders_is_read_as_it_is(tmp_path: Path) -> None:
    digest = old_version(tmp_path, "pump-1", "v0001", 0)
    (tmp_path / "models" / "pump-1" / "ACTIVE").write_text(f"v0001 sha256={digest}\n")
    (tmp_path / "models" / "pump-1" / "history.json").write_text('["v0001"]')
    before = stored_files(tmp_path)
    registry = ModelRegistry.of(tmp_path)
    assert registry.active_version("pump-1") == "v0001" and registry.devices() == ["pump-1"]
    pack = ModelPack.open(tmp_path / "pack", registry)
    assert pack_entry(registry, "pump-1") is not None and pack.refresh() == 1
    assert pack.load("pump-1") is not None
    assert registry.save("pump-1", fitted(1), NAMES, WHEN, WHEN, 100, {}).version == "v0002"
    assert registry.rollback("pump-1") == "v0001"  # the folder's version, through the journal
    assert registry.history("pump-1") == ["v0001", "v0002", "v0001"]
    reopened = ModelPack.open(tmp_path / "pack", ModelRegistry.of(tmp_path))
    loaded = reopened.load("pump-1")
    assert loaded is not None and loaded.version == "v0001"
    folder_files = [p for p in stored_files(tmp_path) if "pump-1" in p.parts]
    assert folder_files == before  # the folder is only read
    (tmp_path / "models" / "pump-1" / "v0001" / "params.bin").write_bytes(b"tampered")
    fresh = ModelRegistry.of(tmp_path)
    with pytest.raises(ModelIntegrityError, match=r"params\.bin"):
        fresh.load_params(fresh.get("pump-1", "v0001"))


def test_scoring_a_fleet_from_its_run_objects_without_a_pack(tmp_path: Path) -> None:
    """With no pack the models are read from their rows (a row group at a time) and score
    as scikit-learn does; devices trained in two runs are read from both objects."""
    data_dir = tmp_path / "data"
    write_windows(data_dir, synthetic_windows())
    settings = settings_for(data_dir)
    train(settings, T0, T0 + TWO_HOURS, DEVICES[:4])
    train(settings, T0, T0 + TWO_HOURS, DEVICES[4:])
    assert len(list((data_dir / "models" / "runs").glob("*.parquet"))) == 2
    for path in settings.layout.model_pack.iterdir():
        path.unlink()
    result = score_hour(settings, HOUR3, progress=False)
    assert result.devices_scored == len(DEVICES) and result.devices_failed == 0
    assert_scores_equal_sklearn(settings)


def test_by_default_a_version_keeps_its_parameters_not_its_estimator(tmp_path: Path) -> None:
    """``[train] keep_estimator`` off (the default): the row holds the parameters scoring uses,
    not the scikit-learn objects (about as large again); the scores are the same."""
    stored = {}
    for keep in (True, False):
        data_dir = tmp_path / f"keep-{keep}"
        write_windows(data_dir, synthetic_windows())
        settings = settings_for(data_dir)
        settings = replace(settings, train=replace(settings.train, keep_estimator=keep))
        train(settings, T0, T0 + TWO_HOURS, DEVICES)
        assert score_hour(settings, HOUR3, progress=False).devices_scored == len(DEVICES)
        with duckdb.connect(str(data_dir / "fleetwatch.duckdb"), read_only=True) as db:
            stored[keep] = db.execute("SELECT * EXCLUDE (run_id) FROM scores ORDER BY ALL").df()
        [run] = (data_dir / "models" / "runs").glob("*.parquet")
        stored[f"bytes-{keep}"] = run.stat().st_size
    pd.testing.assert_frame_equal(stored[True], stored[False])
    assert stored["bytes-False"] < 0.6 * stored["bytes-True"]
    registry = ModelRegistry.of(tmp_path / "keep-False")
    model = registry.active("pump-01")
    assert model is not None and set(model.manifest["sha256"]) == {"params.bin"}
    assert registry.describe("pump-01")["sha256_verified"]
    with pytest.raises(InvalidInputError, match="keep_estimator"):
        registry.load_estimator(model)
    saved = registry.with_threshold("pump-01", model.version, Calibration(-1.0, 1.0, 0.1, "x", []))
    assert registry.read_params(saved) == registry.read_params(model)


def test_a_hand_made_record_damages_only_the_devices_it_names_wrongly(tmp_path: Path) -> None:
    registry = ModelRegistry.of(tmp_path)
    rows = [model_row(d, fitted(i), NAMES, WHEN, WHEN, 100, {}) for i, d in enumerate("abc")]
    run, _ = registry.publish(rows, {})
    digests = [row.digest for row in rows]
    append_record(
        tmp_path,
        [["publish", run, ["a", "b", "../c", "d"], ["v0002", "../v", "v0002", "v0001"],
          [digests[0], digests[1], digests[2], digests[0]], ["a", "a", "a", "k"]]],
    )  # fmt: skip
    fresh = ModelRegistry.of(tmp_path)
    assert fresh.active_version("a") == "v0002"  # a second version of the same row: valid
    with pytest.raises(ModelIntegrityError, match="activate a version to mend it"):
        fresh.active_version("b")
    assert fresh.active_version("c") == "v0001"  # "../c" is no device: left out
    assert fresh.active_version("d") is None  # kept, not active: a row its run lacks
    with pytest.raises(ModelIntegrityError, match="missing or unreadable"):
        fresh.get("d", "v0001")
    fresh.activate("b", "v0001")  # mended
    assert ModelRegistry.of(tmp_path).active_version("b") == "v0001"


def test_damaged_bytes_fail_the_devices_of_their_row_group_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte flipped inside a run object's compressed pages: the devices of that row group
    fail (they cannot be read, or their digests do not match), never with a wrong model; the
    other groups' devices load as published."""
    monkeypatch.setattr(journal_module, "ROWS_PER_GROUP", 2)
    registry = ModelRegistry.of(tmp_path)
    names = [f"pump-{i}" for i in range(6)]
    rows = [model_row(d, fitted(i), NAMES, WHEN, WHEN, 100, {}) for i, d in enumerate(names)]
    run, _ = registry.publish(rows, {})
    published = {row.device_id: row.files["params.bin"] for row in rows}
    path = tmp_path / "models" / "runs" / f"{run}.parquet"
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(2)  # pump-2, pump-3's params
    assert chunk.path_in_schema == "params"
    stored = bytearray(path.read_bytes())
    stored[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(stored))
    fresh = ModelRegistry.of(tmp_path)
    failed = set()
    for device in names:
        try:
            model = fresh.active(device)
            assert model is not None
            assert fresh.read_params(model) == published[device]  # never another model's
        except ModelIntegrityError:
            failed.add(device)
    assert failed and failed <= {"pump-2", "pump-3"}


def runs_on_disk(root: Path) -> set[str]:
    return {p.stem for p in (root / "models" / "runs").glob("*.parquet")}


def test_prune_keeps_the_newest_the_active_and_the_shadow_and_deletes_what_no_version_names(
    tmp_path: Path,
) -> None:
    """`models prune --keep N`: each device keeps its N newest versions, its active one and the
    one in shadow; the others are forgotten by one journal record, and the run objects no
    version names any more are deleted. Numbers are never reused; what stays loads and scores
    as before; rollback moves among what stays."""
    registry = ModelRegistry.of(tmp_path)
    for seed in range(5):  # v0001..v0005 of pump-1, each its own run object
        registry.save("pump-1", fitted(seed), NAMES, WHEN, WHEN, 100, {}, activate=seed == 1)
    shared_row = model_row("pump-2", fitted(9), NAMES, WHEN, WHEN, 100, {})
    other = model_row("pump-1", fitted(8), NAMES, WHEN, WHEN, 100, {})
    shared_run, _ = registry.publish([shared_row, other], {"pump-1": "keep"})  # p1 v0006, p2 v0001
    registry.set_shadow("pump-1", "v0003")
    runs = {v.version: registry.get("pump-1", v.version) for v in registry.versions("pump-1")}
    params = {v: registry.read_params(m) for v, m in runs.items()}
    before = runs_on_disk(tmp_path)
    assert len(before) == 6

    dry = registry.prune(keep=2, dry_run=True)
    assert dry.forgotten == {"pump-1": ["v0001", "v0004"]}  # v0002 active, v0003 shadow
    assert runs_on_disk(tmp_path) == before and len(registry.versions("pump-1")) == 6
    result = ModelRegistry.of(tmp_path).prune(keep=2)
    assert result.forgotten == dry.forgotten and sorted(result.deleted_runs) == sorted(
        dry.deleted_runs
    )
    assert len(result.deleted_runs) == 2 and shared_run not in result.deleted_runs
    assert runs_on_disk(tmp_path) == before - set(result.deleted_runs)
    again = ModelRegistry.of(tmp_path)  # another process reads the journal
    assert [v.version for v in again.versions("pump-1")] == ["v0002", "v0003", "v0005", "v0006"]
    assert [v.version for v in again.versions("pump-2")] == ["v0001"]
    assert again.active_version("pump-1") == "v0002" and again.shadow("pump-1") is not None
    for version in ("v0002", "v0003", "v0005", "v0006"):
        assert again.read_params(again.get("pump-1", version)) == params[version]
    with pytest.raises((InvalidInputError, FileNotFoundError, ModelIntegrityError)):
        again.get("pump-1", "v0001")
    assert again.history("pump-1") == ["v0002"]
    newest = again.save("pump-1", fitted(7), NAMES, WHEN, WHEN, 100, {})
    assert newest.version == "v0007"  # never a forgotten number
    assert again.rollback("pump-1") == "v0002"
    assert again.prune(keep=10).forgotten == {}  # nothing more to forget: no record
    with pytest.raises(InvalidInputError, match="--keep 0"):
        again.prune(keep=0)


def test_prune_deletes_a_run_object_no_record_published_once_it_is_a_day_old(
    tmp_path: Path,
) -> None:
    """A training run that died after writing its run object leaves it unnamed: too young, it
    may be a run publishing right now and stays; a day old, prune deletes it."""
    registry = ModelRegistry.of(tmp_path)
    registry.save("pump-1", fitted(0), NAMES, WHEN, WHEN, 100, {})
    files = ModelFiles(registry.store)
    rows = [model_row("pump-1", fitted(1), NAMES, WHEN, WHEN, 100, {})]
    young, old = "20991231T000000-aaaaaaaa", "20200101T000000-bbbbbbbb"
    for name in (young, old):
        files.write_run(name, journal_module.run_writer(rows))
    result = registry.prune(keep=1)
    assert result.forgotten == {} and result.deleted_runs == [old]
    assert young in runs_on_disk(tmp_path) and old not in runs_on_disk(tmp_path)
    assert registry.active_version("pump-1") == "v0001"


def test_a_forget_record_never_drops_the_active_version_or_the_shadow(tmp_path: Path) -> None:
    """A hand-made record that names the active version and the shadow: they stay."""
    registry = ModelRegistry.of(tmp_path)
    for seed in range(3):
        registry.save("pump-1", fitted(seed), NAMES, WHEN, WHEN, 100, {}, activate=seed == 0)
    registry.set_shadow("pump-1", "v0002")
    append_record(tmp_path, [["forget", ["pump-1"], [["v0001", "v0002", "v0003"]]]])
    again = ModelRegistry.of(tmp_path)
    assert [v.version for v in again.versions("pump-1")] == ["v0001", "v0002"]
    assert again.active_version("pump-1") == "v0001" and again.shadow("pump-1") is not None


def test_models_prune_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleetwatch.cli.main import main

    registry = ModelRegistry.of(tmp_path)
    for seed in range(3):
        registry.save("pump-1", fitted(seed), NAMES, WHEN, WHEN, 100, {})
    data = ["--data-dir", str(tmp_path)]
    for argv, message in (
        (["models", "prune"], "needs --keep N"),
        (["models", "prune", "--keep", "0"], "--keep 0"),
        (["models", "prune", "pump-1", "--keep", "1"], "takes no 'pump-1'"),
    ):
        assert main([*argv, *data]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert message in line
    assert main(["models", "prune", "--keep", "1", "--dry-run", "--format", "json", *data]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["forgotten"] == {"pump-1": ["v0001", "v0002"]} and dry["dry_run"] is True
    assert len(dry["deleted_runs"]) == 2 and len(runs_on_disk(tmp_path)) == 3
    assert main(["models", "prune", "--keep", "1", *data]) == 0
    text = capsys.readouterr().out
    assert "versions_forgotten" in text and "2" in text
    assert len(runs_on_disk(tmp_path)) == 1 and not set(dry["deleted_runs"]) & runs_on_disk(
        tmp_path
    )
    assert [v.version for v in ModelRegistry.of(tmp_path).versions("pump-1")] == ["v0003"]
