"""One behaviour suite over every model kind (river's ``checks/``): fast scores equal
scikit-learn's (on the score's scale), keep ranking where scikit-learn's stop, the registry and
the pack round-trip, a tampered file is never loaded."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import pytest

from fleetwatch.scoring import registry as registry_module
from fleetwatch.scoring.features import feature_names
from fleetwatch.scoring.kinds import KINDS, DeviceModel, kind_named, new_model
from fleetwatch.scoring.kinds.svm import SvmParams, decide
from fleetwatch.scoring.pack import ModelPack
from fleetwatch.scoring.registry import (
    ModelIntegrityError,
    ModelRegistry,
    ParamsLayout,
    pack_arrays,
)
from tests.unit.scoring.tamper import rewrite_row

NAMES = feature_names(["a", "b", "c"], slow=["c"])
WHEN = datetime(2026, 11, 22, tzinfo=UTC)
A_STATISTICS = [NAMES.index(n) for n in NAMES if n.startswith("a__") and n != "a__count"]


def data(seed: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(rows, len(NAMES)))
    for i, name in enumerate(NAMES):
        if name.endswith("__count"):
            matrix[:, i] = 6.0
        elif name.endswith("__std"):
            matrix[:, i] = np.abs(matrix[:, i]) + 0.1
    return matrix


def probe(seed: int, rows: int = 80) -> np.ndarray:
    matrix = data(seed, rows)
    matrix[::7, A_STATISTICS] = np.nan  # a sensor that did not report
    matrix[::7, NAMES.index("a__count")] = 0.0
    return matrix


def assert_scores_equal(fast: np.ndarray, reference: np.ndarray, mostly: float = 0.5) -> None:
    """Equal wherever scikit-learn's decision value is not at its floor (and there mostly)."""
    there = np.isfinite(reference)
    assert there.mean() >= mostly and np.isfinite(fast).all()
    np.testing.assert_allclose(fast[there], reference[there], rtol=0, atol=1e-9)


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly", "sigmoid"])
def test_fast_scores_equal_sklearn(kind: str, kernel: str) -> None:
    model = new_model(kind, 0.05, "scale", kernel)
    model.fit(data(0, 300), NAMES)
    window = probe(1)
    fast = kind_named(kind).scorer(model.arrays()).decision(window)
    assert_scores_equal(fast, model.reference_scores(window))


def test_scores_keep_ranking_beyond_the_support(kind: str) -> None:
    """Far from every support vector scikit-learn's RBF decision values all tie at -rho;
    the scores keep falling with the distance."""
    model = new_model(kind, 0.05, "scale", "rbf")
    model.fit(data(0, 300), NAMES)
    far = np.repeat(data(1, 1), 4, axis=0)
    mean = NAMES.index("b__mean")
    far[:, mean] = [20.0, 40.0, 80.0, 160.0]  # ever further, in a level
    decision = model.sklearn_decision(far)
    if kind != "covariance":  # a Mahalanobis distance has no floor to begin with
        assert np.ptp(decision[1:]) < 1e-12  # scikit-learn's SVM: a floor
    scores = kind_named(kind).scorer(model.arrays()).decision(far)
    assert np.all(np.diff(scores) < 0) and np.isfinite(scores).all()
    # ... and that far the score is, per device, about -gamma times the squared distance
    ratios = np.diff(scores[1:]) / np.diff(far[1:, mean] ** 2)
    np.testing.assert_allclose(ratios, ratios[0], rtol=0.05)


def test_many_devices_at_once_equal_one_by_one(kind: str) -> None:
    models, probes = [], []
    for seed in range(4):
        model = new_model(kind, 0.05, "scale", "rbf")
        model.fit(data(seed, 150), NAMES)
        models.append(model)
        probes.append(probe(10 + seed, 30 + 10 * seed))
    counts = np.array([len(p) for p in probes])
    windows = np.full((len(probes), counts.max(), len(NAMES)), np.nan)
    for index, matrix in enumerate(probes):
        windows[index, : len(matrix)] = matrix
    cls = kind_named(kind)
    scorers = [cls.scorer(m.arrays()) for m in models]
    for model, matrix, fast in zip(
        models, probes, cls.decide_many(scorers, windows, counts), strict=True
    ):
        assert_scores_equal(fast, model.reference_scores(matrix))


def test_the_registry_round_trip_scores_the_same(kind: str, tmp_path: Path) -> None:
    registry = ModelRegistry.of(tmp_path)
    model = new_model(kind, 0.05, "scale", "rbf")
    model.fit(data(2, 200), NAMES)
    saved = registry.save("pump-1", model, NAMES, WHEN, WHEN, 200, {"nu": 0.05})
    assert saved.manifest["kind"] == kind and saved.manifest["features"] == NAMES
    window = probe(3, 50)
    name, arrays = registry.load_params(registry.active("pump-1"))  # type: ignore[arg-type]
    assert_scores_equal(
        kind_named(name).scorer(arrays).decision(window), model.reference_scores(window)
    )
    reloaded = new_model(kind, 0.05, "scale", "rbf")
    estimator = registry.load_estimator(saved)
    reloaded.restore(estimator)
    np.testing.assert_allclose(
        reloaded.sklearn_decision(window), model.sklearn_decision(window), atol=1e-12
    )
    assert set(saved.manifest["libraries"]) >= {"scikit-learn", "numpy", "python"}


def test_the_pack_round_trip_scores_the_same(kind: str, tmp_path: Path) -> None:
    registry = ModelRegistry.of(tmp_path)
    model = new_model(kind, 0.05, "scale", "rbf")
    model.fit(data(5, 200), NAMES)
    registry.save("pump-1", model, NAMES, WHEN, WHEN, 200, {})
    ModelPack.open(tmp_path / "pack", registry).refresh()
    loaded = ModelPack.open(tmp_path / "pack", registry).load("pump-1")
    assert loaded is not None and loaded.kind is kind_named(kind)
    window = probe(6)
    assert_scores_equal(loaded.scorer.decision(window), model.reference_scores(window))


@pytest.mark.parametrize("file_name", ["model.joblib", "params.bin"])
def test_a_tampered_file_is_never_loaded(
    kind: str, file_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = ModelRegistry.of(tmp_path)
    model = new_model(kind, 0.05, "scale", "rbf")
    model.fit(data(4, 100), NAMES)
    saved = registry.save("pump-1", model, NAMES, WHEN, WHEN, 100, {})
    column = {"model.joblib": "estimator", "params.bin": "params"}[file_name]
    rewrite_row(tmp_path, saved, **{column: lambda blob: blob + b"\x00evil"})
    registry = ModelRegistry.of(tmp_path)  # not the rows it has read
    loads: list[object] = []
    monkeypatch.setattr(joblib, "load", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(registry_module, "unpack_arrays", lambda *a, **k: loads.append(a))
    with pytest.raises(ModelIntegrityError, match="does not match the sha256"):
        if file_name == "model.joblib":
            registry.load_estimator(saved)
        else:
            registry.load_params(saved)
    assert loads == []  # nothing was unpickled or decoded
    # the same two loaders do load the untampered file: the spies above can see a load
    fresh = registry.save("pump-2", model, NAMES, WHEN, WHEN, 100, {})
    registry.load_estimator(fresh)
    registry.load_params(fresh)
    assert len(loads) == 2


def test_devices_scored_together_whose_support_vectors_use_other_features() -> None:
    """``decide`` scores a group of single-pipeline devices at once; each model's support
    vectors keep only the features that are not 0 in all of them, so models of one group may
    keep different ones (or none), and a kernel other than RBF skips the RBF extension."""
    always, sometimes, constant = data(0, 300), data(4, 300), np.ones((300, len(NAMES)))
    sometimes[::5, NAMES.index("a__count")] = 0.0  # sensor a missing in a fifth
    sometimes[::5, A_STATISTICS] = np.nan
    models = []
    for training, kernel in (
        (always, "rbf"),
        (sometimes, "rbf"),
        (constant, "rbf"),
        (always, "linear"),
    ):
        model = DeviceModel(0.05, "scale", kernel)
        model.fit(training, NAMES)
        models.append(model)
    scorers = [SvmParams.from_pipeline(m.pipeline).scorer() for m in models]
    presents = [NAMES.index(n) for n in NAMES if n.endswith("count")]
    assert not set(presents) & set(scorers[0].columns.tolist())
    assert NAMES.index("a__count") in scorers[1].columns.tolist()
    # constant training: nothing left in the support vectors but rounding (a log's last bit)
    assert np.abs(models[2].pipeline.named_steps["svm"].support_vectors_).max() < 1e-12
    counts = np.array([80, 61, 80, 17])
    probes = [data(10 + i, int(count)) for i, count in enumerate(counts)]
    probes[1][::3, NAMES.index("a__count")] = 0.0
    windows = np.full((len(models), 80, len(NAMES)), np.nan)
    for i, matrix in enumerate(probes):
        windows[i, : len(matrix)] = matrix
    results = decide(scorers, windows, counts)
    for index, (model, matrix, fast) in enumerate(zip(models, probes, results, strict=True)):
        # the model trained on constant windows finds every probe far beyond its support
        assert_scores_equal(fast, model.reference_scores(matrix), 0.0 if index == 2 else 0.5)


def test_the_stored_model_is_the_fit_with_its_support_vectors_rounded_to_float32() -> None:
    """The support vectors are kept as float32 (half the bytes); scikit-learn's decision is
    the rounded model's, and within 1e-6 of the same SVM fitted without rounding."""
    matrix, window = data(7, 400), probe(8)
    model = DeviceModel(0.05, "scale", "rbf")
    model.fit(matrix, NAMES)
    steps = model.pipeline.named_steps
    stored = model.arrays()["sv"]
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, steps["svm"].support_vectors_)
    from sklearn.svm import OneClassSVM

    def scaled(windows: np.ndarray) -> np.ndarray:
        for step in list(steps.values())[:-1]:
            windows = step.transform(windows)
        return windows

    unrounded = OneClassSVM(nu=0.05, gamma=steps["svm"].gamma).fit(scaled(matrix))
    vectors = unrounded.support_vectors_
    assert not np.array_equal(vectors.astype(np.float32), vectors)  # rounding did happen
    exact = unrounded.decision_function(scaled(window))
    np.testing.assert_allclose(model.sklearn_decision(window), exact, rtol=0, atol=1e-6)
    assert_scores_equal(
        DeviceModel.scorer(model.arrays()).decision(window), model.reference_scores(window)
    )


def test_parameters_written_as_float64_by_an_older_fleetwatch_are_read_as_they_are() -> None:
    model = DeviceModel(0.05, "scale", "rbf")
    model.fit(data(9, 200), NAMES)
    arrays, window = model.arrays(), probe(10)
    params, blob = pack_arrays(arrays)
    vectors = arrays["sv"].size
    assert set(params["float32"]["layout"]) == {"sv"}
    assert len(blob) == params["float32"]["at"] + 4 * vectors
    old_params, old_blob = pack_arrays(arrays | {"sv": arrays["sv"].astype(np.float64)})
    assert "float32" not in old_params and len(old_blob) == len(blob) + 4 * vectors
    for layout, stored in ((params, blob), (old_params, old_blob)):
        scorer = DeviceModel.scorer(ParamsLayout(layout).arrays(stored))
        assert_scores_equal(scorer.decision(window), model.reference_scores(window))
    with pytest.raises(ValueError, match="float32 part"):
        ParamsLayout(params | {"float32": {**params["float32"], "at": len(blob) + 8}}).arrays(blob)


def test_versions_activate_and_rollback(tmp_path: Path) -> None:
    registry = ModelRegistry.of(tmp_path)
    for seed in range(3):
        model = new_model("device", 0.05, "scale", "rbf")
        model.fit(data(seed, 60), NAMES)
        registry.save("pump-1", model, NAMES, WHEN, WHEN, 60, {}, activate=seed < 2)
    assert [v.version for v in registry.versions("pump-1")] == ["v0001", "v0002", "v0003"]
    assert registry.active_version("pump-1") == "v0002"  # the third was not activated
    registry.activate("pump-1", "v0003")
    assert registry.rollback("pump-1") == "v0002"
    assert registry.active_version("pump-1") == "v0002"
    with pytest.raises(Exception, match="not 1-64"):
        registry.active("../../etc")


def test_an_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(Exception, match="unknown model kind 'forest'"):
        kind_named("forest")


def test_the_imputer_and_scaler_compute_what_scikit_learns_do() -> None:
    """MedianImputer and Standardizer replace SimpleImputer(median, keep_empty_features) and
    StandardScaler for speed: the same numbers, on missing values, an empty column, a
    constant one and one within rounding of constant."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    from fleetwatch.scoring.kinds.transforms import MedianImputer, Standardizer

    rng = np.random.default_rng(5)
    matrix = rng.normal(10, 3, size=(300, 6))
    matrix[rng.random((300, 6)) < 0.1] = np.nan
    matrix[:, 2] = np.nan  # never seen
    matrix[:, 3] = 7.0  # constant
    matrix[:, 4] = 1e6 + rng.normal(0, 1e-10, 300)  # constant within rounding
    ours, theirs = (
        MedianImputer().fit(matrix),
        SimpleImputer(strategy="median", keep_empty_features=True).fit(matrix),
    )
    np.testing.assert_allclose(ours.statistics_, theirs.statistics_, rtol=1e-12, atol=0)
    filled = ours.transform(matrix)
    np.testing.assert_allclose(filled, theirs.transform(matrix), rtol=1e-12, atol=0)
    scaler, reference = Standardizer().fit(filled), StandardScaler().fit(filled)
    np.testing.assert_allclose(scaler.mean_, reference.mean_, rtol=1e-12)
    np.testing.assert_allclose(scaler.scale_, reference.scale_, rtol=1e-9)
    np.testing.assert_allclose(
        scaler.transform(filled), reference.transform(filled), rtol=1e-9, atol=1e-9
    )


def test_the_typical_value_is_each_columns_median_over_its_positive_values() -> None:
    """The window transform's scale (spreads, reading counts): per column, the median of its
    positive finite values, 1 for a column without any; computed for all columns at once
    where they allow it, compared here with numpy column by column."""
    from fleetwatch.scoring.kinds.transforms import _typical

    rng = np.random.default_rng(11)
    matrix = np.abs(rng.normal(5, 2, size=(241, 7)))
    matrix[rng.random(241) < 0.2, 1] = np.nan
    matrix[::3, 2] = 0.0
    matrix[::5, 3] = -1.0
    matrix[:, 4] = np.nan
    matrix[7, 5] = np.inf
    matrix[:, 6] = 0.0
    expected = []
    for column in matrix.T:
        positive = column[np.isfinite(column) & (column > 0)]
        expected.append(np.median(positive) if len(positive) else 1.0)
    assert _typical(matrix).tolist() == expected
    assert _typical(matrix[:0]).tolist() == [1.0] * 7


@pytest.mark.parametrize("rows", [1, 2, 7, 1152, 1441])
def test_column_medians_are_numpys_medians(rows: int) -> None:
    """The imputer's and the window transform's medians, by one partition of the columns
    made rows: exactly numpy's numbers, odd and even counts, ties included."""
    from fleetwatch.scoring.kinds.transforms import column_medians

    rng = np.random.default_rng(rows)
    matrix = rng.normal(size=(rows, 9))
    matrix[:, 3] = np.round(matrix[:, 3])  # ties
    matrix[:, 4] = 2.5  # constant
    assert np.array_equal(column_medians(matrix), np.median(matrix, axis=0))
