"""``[score] executor = "dask"`` on a ``distributed.LocalCluster`` of worker processes: the
stored rows are the local executor's, row for row; a worker killed mid-run costs nothing; a
bad model fails its device only; no scheduler is one line."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from fleetwatch.config import Settings
from fleetwatch.errors import FleetwatchError
from fleetwatch.scoring.registry import ModelRegistry
from fleetwatch.scoring.score import score_hour
from fleetwatch.storage.layout import DataLayout
from tests.unit.scoring.conftest import T0
from tests.unit.scoring.tamper import rewrite_row

distributed = pytest.importorskip("distributed", reason="pip install -e '.[dev]' brings Dask")
HOURS = [T0 + timedelta(hours=h) for h in range(3)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local.scheduler_address


def on_dask(settings: Settings, address: str, data_dir: Path) -> Settings:
    shutil.copytree(settings.data_dir, data_dir)
    score = replace(settings.score, executor="dask", dask_scheduler=address)
    return replace(settings, data_dir=data_dir, score=score)


def stored(settings: Settings) -> pd.DataFrame:
    with duckdb.connect(str(DataLayout.open(settings.data_dir).database), read_only=True) as db:
        frame = db.execute(
            "SELECT device_id, window_start, window_end, score, score_normalized, is_anomaly, "
            "model_version, top_sensors FROM scores ORDER BY device_id, window_start"
        ).df()
    return frame


def outcomes(settings: Settings) -> list[tuple[str, str, str]]:
    with duckdb.connect(str(DataLayout.open(settings.data_dir).database), read_only=True) as db:
        return db.execute(
            "SELECT strftime(r.window_start, '%H'), d.device_id, d.outcome FROM device_runs d "
            "JOIN runs r USING (run_id) ORDER BY 1, 2"
        ).fetchall()


@dataclass(frozen=True)
class KillOnce:
    """A hook that kills the worker process the first time it reaches ``device``."""

    marker: str
    device: str

    def __call__(self, device_id: str) -> None:
        if device_id == self.device and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)


def test_dask_stores_the_local_executors_rows(
    trained: Settings, cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """... and the client never reads the hour's windows (the workers do; each result
    brings its window starts): only the device column of the hour's files."""
    from fleetwatch.scoring import score as score_module

    dask = on_dask(trained, cluster, tmp_path / "dask")
    for hour in HOURS:
        assert score_hour(trained, hour, progress=False).status == "succeeded"
    read_cube = score_module.read_cube

    def not_in_the_client(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Dask client read the hour's windows")

    monkeypatch.setattr(score_module, "read_cube", not_in_the_client)
    for hour in HOURS:
        assert score_hour(dask, hour, progress=False).status == "succeeded"
    monkeypatch.setattr(score_module, "read_cube", read_cube)
    local_rows, dask_rows = stored(trained), stored(dask)
    assert len(local_rows) == 3 * 60 * 8 and local_rows["is_anomaly"].any()
    pd.testing.assert_frame_equal(local_rows, dask_rows)
    assert outcomes(trained) == outcomes(dask)


def test_a_worker_killed_mid_run_costs_nothing(
    trained: Settings, cluster: str, tmp_path: Path
) -> None:
    dask = on_dask(trained, cluster, tmp_path / "dask")
    marker = tmp_path / "killed"
    result = score_hour(trained, HOURS[2], progress=False)
    from fleetwatch.scoring import score as score_module

    killed = score_module.score_hour(
        dask, HOURS[2], hook=KillOnce(str(marker), "pump-03"), progress=False
    )
    assert marker.exists()  # a worker process did die
    assert killed.status == "succeeded" and killed.devices_failed == 0
    assert killed.devices_scored == result.devices_scored == 8
    pd.testing.assert_frame_equal(stored(trained), stored(dask))


def test_a_bad_model_fails_its_device_only(trained: Settings, cluster: str, tmp_path: Path) -> None:
    dask = on_dask(trained, cluster, tmp_path / "dask")
    model = ModelRegistry.of(dask.data_dir).active("pump-02")
    assert model is not None
    rewrite_row(dask.data_dir, model, params=lambda _: b"tampered")
    result = score_hour(dask, HOURS[2], progress=False)
    assert result.devices_failed == 1 and result.devices_scored == 7
    [failed] = [o for o in outcomes(dask) if o[2] == "failed"]
    assert failed[1] == "pump-02"


def test_no_scheduler_is_one_line(trained: Settings) -> None:
    from fleetwatch.scoring.dask_executor import connect

    with pytest.raises(
        FleetwatchError, match=re.escape("no Dask scheduler answers at tcp://127.0.0.1:9")
    ):
        connect("tcp://127.0.0.1:9", timeout=2)
    with pytest.raises(FleetwatchError, match="--dask-scheduler"):
        connect("")


def test_training_on_dask_makes_the_local_models(
    trained: Settings, cluster: str, tmp_path: Path
) -> None:
    """The same devices fitted on the cluster (each worker reading its devices' windows):
    the same parameters, byte for byte, and the same thresholds."""

    from fleetwatch.scoring.train import train
    from tests.unit.scoring.conftest import DEVICES

    dask = on_dask(trained, cluster, tmp_path / "dask")
    shutil.rmtree(dask.data_dir / "models")
    summary = train(dask, T0, T0 + timedelta(hours=2), DEVICES)
    assert sorted(summary.trained) == DEVICES and not summary.failed
    assert len(list((dask.data_dir / "models" / "runs").glob("*.parquet"))) == 1
    local, remote = ModelRegistry.of(trained.data_dir), ModelRegistry.of(dask.data_dir)
    for device in DEVICES:
        mine, theirs = local.active(device), remote.active(device)
        assert mine is not None and theirs is not None
        assert local.read_params(mine) == remote.read_params(theirs)
        assert mine.manifest["threshold"] == theirs.manifest["threshold"]
        assert mine.manifest["features"] == theirs.manifest["features"]
    for hour in HOURS:  # and they score alike
        score_hour(trained, hour, progress=False)
        score_hour(dask, hour, progress=False)
    pd.testing.assert_frame_equal(stored(trained), stored(dask))


def test_the_fleet_judges_slow_sensors_on_the_workers(
    trained: Settings, cluster: str, tmp_path: Path
) -> None:
    """``--slow-sensors auto`` on the cluster: the workers judge their devices' sensors, the
    fleet's majority is the local one (5 of 8 temperatures slow: slow for all)."""
    from fleetwatch.scoring.train import train
    from tests.unit.scoring.conftest import DEVICES, drifting_windows, write_windows

    summaries = {}
    for executor in ("local", "dask"):
        data_dir = tmp_path / executor
        write_windows(data_dir, drifting_windows())
        score = replace(trained.score, executor=executor, dask_scheduler=cluster)
        settings = replace(trained, data_dir=data_dir, score=score)
        summaries[executor] = train(settings, T0, T0 + timedelta(minutes=45), DEVICES)
        registry = ModelRegistry.of(data_dir)
        for device in DEVICES:
            model = registry.active(device)
            assert model is not None and len(registry.versions(device)) == 1
            features = model.manifest["features"]
            assert "temperature__delta" in features and "pressure__mean" in features
    assert summaries["local"].slow == summaries["dask"].slow == {"temperature": (5, 8)}
