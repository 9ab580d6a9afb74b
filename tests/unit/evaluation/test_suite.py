"""``fleetwatch evaluate --suite``: several sets in one run, their macro average, and a stored
baseline that fails the run loudly when a set gets worse."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fleetwatch.errors import InvalidInputError
from fleetwatch.evaluation.suite import compare, macro_average, read_suite
from tests.unit.evaluation.test_evaluate import labelled_file


def fleetwatch(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch", *arguments],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_a_suite_file_names_its_sets_relative_to_itself_and_with_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWATCH_DATASETS", str(tmp_path / "cache"))
    (tmp_path / "cache" / "tep").mkdir(parents=True)
    suite = tmp_path / "suite" / "suite.toml"
    suite.parent.mkdir()
    suite.write_text(
        '[sets.near]\nsource = "../data"\narguments = ["--window", "5s"]\n'
        '[sets.tep]\nsource = "${FLEETWATCH_DATASETS}/tep"\n'
        'arguments = ["--train-ranges", "${FLEETWATCH_DATASETS}/r.csv"]\n'
        '[sets.sim]\nsource = "simulator"\n'
        '[sets.gone]\nsource = "/nowhere/at/all"\nfetch = "run the fetch script"\n'
    )
    near, tep, sim, gone = read_suite(suite)
    assert near.source == str(tmp_path / "data") and near.arguments == ["--window", "5s"]
    assert near.missing() is not None  # tmp_path/data does not exist
    assert tep.source == str(tmp_path / "cache" / "tep") and tep.missing() is None
    assert tep.arguments == ["--train-ranges", str(tmp_path / "cache" / "r.csv")]
    assert sim.source == "simulator" and sim.missing() is None
    assert "run the fetch script" in (gone.missing() or "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sets", "not valid TOML"),
        ("title = 1\n", "no [sets.NAME] tables"),
        ("[sets.a]\narguments = []\n", "needs source"),
        ('[sets.a]\nsource = "x"\nargs = []\n', "unknown key args"),
        ('[sets.a]\nsource = "x"\narguments = "--window 5s"\n', "a list of strings"),
        ('[sets.a]\nsource = "${NOT_SET_ANYWHERE_42}"\n', "is not set"),
        # a set's name names its folder under --keep: never a way out of it
        ('[sets."../../etc"]\nsource = "simulator"\n', "is not a set name"),
        ('[sets.".."]\nsource = "simulator"\n', "is not a set name"),
        ('[sets."a/b"]\nsource = "simulator"\n', "is not a set name"),
        ('[sets.""]\nsource = "simulator"\n', "is not a set name"),
    ],
)
def test_a_bad_suite_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(text)
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[")):
        read_suite(suite)


def test_the_comparison_names_every_set_worse_by_more_than_the_margin() -> None:
    before = {"sets": {"a": {"f1": 0.80, "point_adjusted_f1": 0.90}, "b": {"f1": 0.5}}}
    now = {"a": {"f1": 0.77, "point_adjusted_f1": 0.89}, "c": {"f1": 0.9}}
    changes, worse, unmatched = compare(before, now, 0.02)
    assert [(c.name, c.figure) for c in worse] == [("a", "f1")]
    assert worse[0].drop == pytest.approx(0.03)
    assert len(changes) == 2 and unmatched == ["b", "c"]
    assert compare(before, now, 0.05)[1] == []
    average = macro_average({"a": {"f1": 0.5, "far_percent": 2.0}, "b": {"f1": 1.0}})
    assert average["f1"] == 0.75 and average["far_percent"] == 2.0
    assert math.isnan(average["recall"])


def test_a_suite_run_saves_its_figures_and_fails_when_a_set_got_worse(tmp_path: Path) -> None:
    labelled_file(tmp_path / "pumps" / "valve1" / "0.csv", seed=1, shift_at=600)
    labelled_file(tmp_path / "pumps" / "valve1" / "1.csv", seed=2, shift_at=700)
    labelled_file(tmp_path / "one.csv", seed=3, shift_at=500)
    suite = tmp_path / "suite.toml"
    suite.write_text(
        "[sets.pumps]\n"
        'source = "pumps"\n'
        'arguments = ["--label-columns", "changepoint", "--train-first", "400", "--window", "5s"]\n'
        "[sets.one]\n"
        'source = "one.csv"\n'
        'arguments = ["--label-columns", "changepoint", "--train-first", "400"]\n'
        "[sets.absent]\n"
        'source = "not-fetched"\n'
        'fetch = "python fetch.py absent"\n'
    )
    saved = tmp_path / "baseline.json"
    done = fleetwatch("evaluate", "--suite", str(suite), "--window", "5s", "--save", str(saved))
    assert done.returncode == 0, done.stderr
    assert "skipped: absent: " in done.stdout and "python fetch.py absent" in done.stdout
    assert "macro average (2 sets)" in done.stdout
    document = json.loads(saved.read_text())
    assert set(document["sets"]) == {"pumps", "one"} and "absent" in document["skipped"]
    assert document["sets"]["one"]["window"] == 5.0  # the command line's flag applies to all
    for figure in ("f1", "precision"):
        mean = (document["sets"]["pumps"][figure] + document["sets"]["one"][figure]) / 2
        assert document["macro"][figure] == pytest.approx(mean)
    same = fleetwatch("evaluate", "--suite", str(suite), "--window", "5s", "--compare", str(saved))
    assert same.returncode == 0, same.stderr
    assert "pumps" in same.stdout and "WORSE" not in same.stdout
    document["sets"]["one"]["f1"] += 0.1  # as if the stored run had done better
    better = tmp_path / "better.json"
    better.write_text(json.dumps(document))
    worse = fleetwatch(
        "evaluate", "--suite", str(suite), "--window", "5s", "--compare", str(better)
    )
    assert worse.returncode == 1
    assert worse.stderr.count("\n") == 1 and "one f1" in worse.stderr
    assert "WORSE" in worse.stdout
    both = fleetwatch("evaluate", "simulator", "--suite", str(suite))
    assert both.returncode == 2 and both.stderr.count("\n") == 1
    lonely = fleetwatch("evaluate", str(tmp_path / "one.csv"), "--compare", str(saved))
    assert lonely.returncode == 2 and "with --suite" in lonely.stderr


def test_evaluate_trains_each_device_on_its_own_range(tmp_path: Path) -> None:
    """``--train-ranges``: each device trains on its range; its readings from ``until`` on are
    the test set (counted here from the files)."""
    import pandas as pd

    frames = {
        "valve1-0": labelled_file(tmp_path / "data" / "valve1" / "0.csv", 1, 800),
        "valve1-1": labelled_file(tmp_path / "data" / "valve1" / "1.csv", 2, 900),
    }
    ranges = tmp_path / "ranges.csv"
    ranges.write_text(
        "device_id,since,until\n"
        "valve1-0,2026-03-01T10:00:00,2026-03-01T10:08:20\n"  # its first 500 seconds
        "valve1-1,2026-03-01T10:00:00,2026-03-01T10:11:40\n"  # its first 700
    )
    done = fleetwatch(
        "evaluate", str(tmp_path / "data"), "--label-columns", "changepoint", "--window", "5s",
        "--train-ranges", str(ranges), "--format", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    until = {"valve1-0": "2026-03-01 10:08:20", "valve1-1": "2026-03-01 10:11:40"}
    expected = sum(
        int((pd.to_datetime(frame["datetime"]) >= pd.Timestamp(until[device])).sum())
        for device, frame in frames.items()
    )
    assert record["test_points"] == expected == 700 + 500
    assert record["train_first"] == "ranges from ranges.csv"
    ranges.write_text("device_id,since,until\nvalve9-9,2026-03-01T10:00,2026-03-01T10:05\n")
    unknown = fleetwatch(
        "evaluate", str(tmp_path / "data"), "--label-columns", "changepoint",
        "--train-ranges", str(ranges),
    )  # fmt: skip
    assert unknown.returncode == 2 and "valve9-9" in unknown.stderr
    assert unknown.stderr.count("\n") == 1
    both = fleetwatch(
        "evaluate", str(tmp_path / "data"), "--label-columns", "changepoint",
        "--train-ranges", str(ranges), "--train-first", "400",
    )  # fmt: skip
    assert both.returncode == 2 and "exclusive" in both.stderr
