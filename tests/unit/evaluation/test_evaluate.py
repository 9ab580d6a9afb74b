"""``fleetwatch evaluate``: the product's path on labelled data, its report checked against an
independent computation over the raw rows, and the documented targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from fleetwatch.config import load_settings
from fleetwatch.evaluation.run import run_evaluation
from fleetwatch.scoring.registry import ModelRegistry

SKAB = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "skab" / "data"


def labelled_file(path: Path, seed: int, shift_at: int | None) -> pd.DataFrame:
    """1 Hz readings of three sensors, a labelled level shift in ``flow`` from ``shift_at``."""
    rng = np.random.default_rng(seed)
    rows = 1200
    frame = pd.DataFrame(
        {
            "datetime": pd.date_range("2026-03-01 10:00:00", periods=rows, freq="s").astype(str),
            "flow": 30 + rng.normal(0, 0.5, rows),
            "Pressure (bar)": 2 + rng.normal(0, 0.05, rows),
            "temp": 70 + np.linspace(0, 3, rows) + rng.normal(0, 0.05, rows),  # slow: drifts
            "anomaly": 0.0,
            "changepoint": 0.0,
        }
    )
    if shift_at is not None:
        frame.loc[shift_at : shift_at + 199, "flow"] += 4.0
        frame.loc[shift_at : shift_at + 199, "anomaly"] = 1.0
        frame.loc[[shift_at, shift_at + 199], "changepoint"] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep=";", index=False)
    return frame


def settings_for(**evaluate: str):  # type: ignore[no-untyped-def]
    return load_settings(
        environ={},
        overrides={
            "evaluate": {"label_columns": "changepoint", **evaluate},
            "aggregate": {"window": "5s"},
            "train": {"workers": "2"},
        },
    )


def test_evaluate_a_folder_by_the_product_path(tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    frames = {
        "valve/0": labelled_file(folder / "valve" / "0.csv", 0, 700),
        "valve/1": labelled_file(folder / "valve" / "1.csv", 1, 900),
        "clean": labelled_file(folder / "clean.csv", 2, None),
    }
    labelled_file(folder / "extra.csv", 3, None).drop(columns=["anomaly"]).to_csv(
        folder / "extra.csv", sep=";", index=False
    )  # no label column: left out, said so
    keep = tmp_path / "kept"
    evaluation = run_evaluation(settings_for(train_first="400", keep=str(keep)), str(folder))
    record = evaluation.as_record()
    assert record["files_without_labels"] == "extra.csv"
    assert record["devices"] == record["devices_trained"] == 3
    registry = ModelRegistry.of(keep)
    for device_id in ("valve-0", "valve-1", "clean"):
        features = registry.describe(device_id)["features"]
        sensors = {f.rsplit("__", 1)[0] for f in features}
        assert sensors == {"flow", "Pressure__bar_", "temp"}  # labels never became sensors
        assert "temp__delta" in features and "flow__mean" in features  # temp is slow
    # independently: every row after each file's first 400, judged by its 5 s window's flag
    with duckdb.connect(str(keep / "fleetwatch.duckdb"), read_only=True) as connection:
        flags = dict(
            ((d, int(s)), bool(a))
            for d, s, a in connection.execute(
                "SELECT device_id, epoch_ms(window_start), is_anomaly FROM scores"
            ).fetchall()
        )
    truth, predicted = [], []
    for name, frame in frames.items():
        device_id = name.replace("/", "-")
        test = frame.iloc[400:]
        ms = pd.to_datetime(test["datetime"]).astype("datetime64[ms]").astype("int64")
        truth += (test["anomaly"] > 0).tolist()
        predicted += [flags[(device_id, int(t) - int(t) % 5000)] for t in ms]
    assert record["test_points"] == len(truth) == 3 * 800
    assert record["precision"] == round(precision_score(truth, predicted), 4)
    assert record["recall"] == round(recall_score(truth, predicted), 4)
    assert record["f1"] == round(f1_score(truth, predicted), 4)
    assert record["episodes"] == 2 and record["episodes_found"] == 2
    assert record["recall"] > 0.9 and record["precision"] > 0.8  # an 8-sigma shift, 200 s long
    # --keep also leaves every point judged: the same labels and flags as computed above
    points = pd.read_parquet(keep / "evaluation" / "points.parquet")
    points = points[points["test"]].sort_values(["device_id", "ts"], kind="stable")
    expected = []
    for name, frame in frames.items():
        device_id = name.replace("/", "-")
        test = frame.iloc[400:]
        ms = pd.to_datetime(test["datetime"]).astype("datetime64[ms]").astype("int64")
        expected += [(device_id, int(t), bool(a > 0), flags[(device_id, int(t) - int(t) % 5000)])
                     for t, a in zip(ms, test["anomaly"], strict=True)]  # fmt: skip
    epoch_ms = (points["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    got = zip(points["device_id"], epoch_ms, points["anomalous"], points["flagged"], strict=True)
    assert sorted(got) == sorted(expected)
    assert points["scored"].all()
    assert precision_score(points["anomalous"], points["flagged"]) == pytest.approx(
        record["precision"], abs=1e-4
    )
    assert recall_score(points["anomalous"], points["flagged"]) == pytest.approx(
        record["recall"], abs=1e-4
    )
    assert set(points.loc[points["anomalous"], "episode"]) == {0, 1}
    assert (points.loc[~points["anomalous"], "episode"] == -1).all()


def test_the_cli_reports_json_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    labelled_file(tmp_path / "one.csv", 0, 600)
    run = [sys.executable, "-m", "fleetwatch", "evaluate"]
    done = subprocess.run(
        [*run, str(tmp_path / "one.csv"), "--window", "5s", "--train-first", "0.4",
         "--format", "json", "--device-id", "pump-1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["devices_trained"] == 1 and report["train_first"] == "first 40% of its windows"
    assert 0 <= report["far_percent"] <= 100 and report["unit"] == "readings"
    bad = subprocess.run(
        [*run, str(tmp_path / "one.csv"), "--label-column", "label"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "--label-column" in bad.stderr
    missing = subprocess.run([*run, str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    # a --keep folder that cannot be one (a file's path, or under one), a bad --train-first
    (tmp_path / "a-file").write_text("x")
    for flags, says in (
        (["--keep", str(tmp_path / "a-file")], "--keep"),
        (["--keep", str(tmp_path / "a-file" / "below")], "--keep"),
        (["--train-first", "-1"], "--train-first '-1'"),
        # all of it for training: it was a DuckDB error about a database that does not exist
        (["--train-first", "99999"], "nothing is left to test after each device's first 99999"),
    ):
        refused = subprocess.run(
            [*run, str(tmp_path / "one.csv"), "--window", "5s", *flags],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert refused.returncode == 2 and refused.stdout == "", refused.stderr
        assert refused.stderr.count("\n") == 1 and says in refused.stderr, refused.stderr
    assert (tmp_path / "a-file").read_text() == "x"


def test_the_simulator_target_every_kind_found() -> None:
    """The issue's target on the demo's fleet: precision and recall >= 0.90, every kind."""
    settings = load_settings(environ={}, overrides={"train": {"workers": "2"}})
    report = run_evaluation(settings, "simulator").as_record()
    assert report["precision"] >= 0.9 and report["recall"] >= 0.9, report
    assert report["by_kind"] and all(
        row["found"] == row["episodes"] for row in report["by_kind"].values()
    )
    assert report["unscored_points"] == 0


@pytest.mark.skipif(not SKAB.is_dir(), reason=f"SKAB is not at {SKAB}")
def test_skab_with_its_protocol() -> None:
    """SKAB's 34 labelled files, each trained on its first 400 rows, the product's own
    thresholds (no test label used); the figures the README quotes, within rounding."""
    default = run_evaluation(settings_for(train_first="400"), str(SKAB)).as_record()
    assert default["devices_trained"] == 34 and default["files_without_labels"]
    assert default["f1"] >= 0.79 and default["far_percent"] <= 10.0, default
    assert default["seconds"] < 60
    assert (
        default["slow_sensors"].startswith("Temperature (")
        and "Thermocouple (" in default["slow_sensors"]
    )  # the fleet's judgement: the two temperatures and nothing else
    assert "Volume" not in default["slow_sensors"] and "Acceler" not in default["slow_sensors"]
    # The target: the product's own thresholds at a 1% false-alarm target
    looser = run_evaluation(
        load_settings(
            environ={},
            overrides={
                "evaluate": {"label_columns": "changepoint", "train_first": "400"},
                "aggregate": {"window": "5s"},
                "train": {"workers": "2", "target_far": "0.01"},
            },
        ),
        str(SKAB),
    ).as_record()
    assert looser["f1"] >= 0.80, looser
    assert looser["far_percent"] < 13.6 and looser["mar_percent"] <= 25.0, looser
