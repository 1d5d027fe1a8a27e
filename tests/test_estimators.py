"""The scikit-learn estimators: contract, inputs, faults, persistence, evidence."""

import json
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from bptt_numba import RNNClassifier, RNNForecaster, RNNRegressor, datasets, load, save
from bptt_numba._compat import ConvergenceWarning

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

SMALL = dict(hidden_layer_sizes=(16,), max_iter=100, learning_rate_init=1e-2, random_state=0)

_FORECAST_API = "predict takes a forecast horizon (an int), not an X to predict for"
_FORECASTER_FAILURES = {
    **{
        name: _FORECAST_API
        for name in (
            "check_dict_unchanged", "check_dtype_object", "check_estimators_dtypes", "check_estimators_nan_inf",
            "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit2d_predict1d",
            "check_fit_idempotent", "check_methods_sample_order_invariance", "check_methods_subset_invariance",
            "check_n_features_in_after_fitting", "check_regressor_data_not_an_array", "check_regressors_int",
            "check_supervised_y_2d",
        )
    },
    "check_fit1d": "a 1-D array is a valid univariate series to forecast",
    "check_regressors_train": "y is ignored: a forecaster's targets are its series one step ahead",
    "check_supervised_y_no_nan": "y is ignored: a forecaster's targets are its series one step ahead",
}
_STOCHASTIC = (
    "mini-batch stochastic training: weighting a sample is not the same as repeating it (as for sklearn's MLP)"
)


def _expected_failures(estimator):
    failures = {"check_sample_weight_equivalence_on_dense_data": _STOCHASTIC}
    if isinstance(estimator, RNNForecaster):
        failures.update(_FORECASTER_FAILURES)
    return failures


@parametrize_with_checks(
    [RNNRegressor(**SMALL), RNNClassifier(**SMALL), RNNForecaster(hidden_layer_sizes=(8,), max_iter=5, random_state=0)],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# ------------------------------------------------------------------ inputs
def _ragged(n=30, seed=0, n_features=2):
    rng = np.random.default_rng(seed)
    X = [rng.normal(size=(int(rng.integers(3, 12)), n_features)) for _ in range(n)]
    y = np.array([x[:, 0].sum() for x in X])
    return X, y


def test_ragged_lists_never_leak_padding():
    X, y = _ragged()
    reg = RNNRegressor(**{**SMALL, "max_iter": 20}).fit(X, y)
    together = reg.predict(X)
    alone = np.array([reg.predict([x])[0] for x in X])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    # Sequences at predict may be longer or shorter than at fit.
    longer = [np.concatenate([x, x]) for x in X[:3]] + [X[0][:1]]
    assert reg.predict(longer).shape == (4,)


def test_input_formats_are_converted_not_rejected():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 5, size=(20, 6, 1))
    y = X.sum(axis=(1, 2)).astype(float)
    reg = RNNRegressor(**{**SMALL, "max_iter": 5}).fit(X, y)
    expected = reg.predict(X.astype(np.float32))
    variants = [X, X.astype(np.float16), np.asfortranarray(X.astype(np.float64)), X.astype(">f8"), X[..., 0]]
    for variant in variants:
        variant = np.array(variant)
        variant.setflags(write=False)
        np.testing.assert_allclose(reg.predict(variant), expected, rtol=1e-6)
    np.testing.assert_allclose(reg.predict(list(X)), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda X, y: (np.where(X > 1, np.nan, X), y), ValueError, "X contains NaN"),
        (lambda X, y: (np.where(X > 1, np.inf, X), y), ValueError, "X contains infinity"),
        (lambda X, y: (X, np.where(y > 0, np.inf, y)), ValueError, "y contains infinity"),
        (lambda X, y: (X[:, 0, 0], y), ValueError, "Expected a 2-D .* or 3-D"),
        (lambda X, y: (X[None], y), ValueError, "Expected a 2-D .* or 3-D"),
        (lambda X, y: (X[:0], y[:0]), ValueError, "0 sample"),
        (lambda X, y: (list(X[:3]) + [np.zeros((0, 2))], y[:4]), ValueError, "sequence 3 of X has no time steps"),
        (lambda X, y: (X, y[:5]), ValueError, "n_samples=8"),
    ],
)
def test_bad_fit_input_raises_clear_errors(make, error, match):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 5, 2)), rng.normal(size=8)
    X, y = make(X, y)
    with pytest.raises(error, match=match):
        RNNRegressor(**SMALL).fit(X, y)


def test_more_bad_input():
    X, y = _ragged(12)
    reg = RNNRegressor(**{**SMALL, "max_iter": 3}, output="sequence")
    steps = [x[:, 0] for x in X]
    steps[4] = steps[4][:-1]
    with pytest.raises(ValueError, match="targets of sequence 4 have .* steps but the sequence has"):
        reg.fit(X, steps)
    reg = RNNRegressor(**{**SMALL, "max_iter": 3}).fit(X, y)
    with pytest.raises(ValueError, match="3 features per time step.*expecting 2"):
        reg.predict([np.zeros((4, 3))])
    with pytest.raises(ValueError, match="number of classes has to be greater than one"):
        RNNClassifier(**SMALL).fit(X, np.zeros(12, int))
    clf = RNNClassifier(**{**SMALL, "max_iter": 3})
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, np.arange(12) % 2)
    clf.partial_fit(X, np.arange(12) % 2, classes=[0, 1])
    with pytest.raises(ValueError, match=r"labels \[7\] not seen in classes \[0, 1\]"):
        clf.partial_fit(X, np.where(np.arange(12) == 3, 7, np.arange(12) % 2))


def test_diverging_fit_raises_and_keeps_the_previous_model():
    X, y = datasets.make_windows(datasets.make_sine_series(1500, noise=0.05, random_state=0), 60)
    reg = RNNRegressor(hidden_layer_sizes=(32,), max_iter=2, random_state=0, dtype="float64").fit(X, y)
    before = reg.predict(X[:10])
    params = reg.network_.params.copy()
    reg.set_params(solver="sgd", learning_rate_init=0.3, momentum=0.9, batch_size=64, max_iter=30, warm_start=True)
    with pytest.raises(FloatingPointError, match="clip_norm"):
        reg.fit(X, y)
    np.testing.assert_array_equal(reg.network_.params, params)
    np.testing.assert_array_equal(reg.predict(X[:10]), before)


# ------------------------------------------------------------- sklearn tools
def test_pipeline_search_and_cross_validation():
    X, y = _ragged(40)
    X2 = np.stack([np.resize(x[:, 0], 8) for x in X])
    y2 = X2.sum(axis=1)
    pipe = make_pipeline(StandardScaler(), RNNRegressor(**{**SMALL, "max_iter": 30}))
    scores = cross_val_score(pipe, X2, y2, cv=2)
    assert scores.shape == (2,)
    search = GridSearchCV(RNNRegressor(**{**SMALL, "max_iter": 10}), {"hidden_layer_sizes": [(4,), (8,)]}, cv=2)
    search.fit(X2, y2)
    assert search.best_params_["hidden_layer_sizes"] in [(4,), (8,)]
    cloned = clone(RNNClassifier(**SMALL))
    assert cloned.get_params() == RNNClassifier(**SMALL).get_params()


def test_works_without_scikit_learn():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["sklearn"] = None  # as if not installed
        import numpy as np
        from bptt_numba import RNNClassifier, RNNRegressor
        from bptt_numba._compat import HAVE_SKLEARN
        assert not HAVE_SKLEARN
        rng = np.random.default_rng(0)
        X = rng.normal(size=(30, 5, 2)); y = X.sum(axis=(1, 2))
        reg = RNNRegressor(hidden_layer_sizes=(8,), max_iter=30, learning_rate_init=1e-2, random_state=0)
        assert reg.get_params()["hidden_layer_sizes"] == (8,)
        reg.set_params(max_iter=40).fit(X, y)
        assert reg.score(X, y) > 0.5, reg.score(X, y)
        clf = RNNClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X, (y > 0).astype(int))
        assert clf.predict_proba(X).shape == (30, 2) and 0 <= clf.score(X, (y > 0).astype(int)) <= 1
        print("ok", repr(reg)[:13])
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok RNNRegressor")


# --------------------------------------------------------------- persistence
def test_pickle_round_trip_in_a_fresh_process(tmp_path):
    X, y = _ragged(20)
    labels = np.where(y > 0, "up", "down")
    clf = RNNClassifier(**{**SMALL, "max_iter": 5}).fit(X, labels)
    data = pickle.dumps(clf)
    assert b"CPUDispatcher" not in data and b"numba.core" not in data  # no compiled dispatcher
    (tmp_path / "model.pkl").write_bytes(data)
    np.save(tmp_path / "expected.npy", clf.predict_proba(X))
    with open(tmp_path / "X.json", "w") as f:
        json.dump([x.tolist() for x in X], f)
    code = textwrap.dedent(
        f"""
        import json, pickle, numpy as np
        clf = pickle.loads(open({str(tmp_path / 'model.pkl')!r}, "rb").read())
        X = [np.array(x) for x in json.load(open({str(tmp_path / 'X.json')!r}))]
        np.testing.assert_array_equal(clf.predict_proba(X), np.load({str(tmp_path / 'expected.npy')!r}))
        print("same")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "same", result.stderr


@pytest.mark.parametrize("kind", ["regressor", "classifier", "forecaster"])
def test_save_and_load_without_pickle(tmp_path, kind):
    X, y = _ragged(20)
    path = tmp_path / "model.npz"
    if kind == "forecaster":
        model = RNNForecaster(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
        model.fit(datasets.make_sine_series(300, random_state=0))
        save(model, path)
        np.testing.assert_array_equal(load(path).predict(7), model.predict(7))
        return
    if kind == "regressor":
        model = RNNRegressor(**{**SMALL, "max_iter": 5}, cell="gru", bidirectional=True).fit(X, y)
    else:
        model = RNNClassifier(**{**SMALL, "max_iter": 5}).fit(X, np.where(y > 0, "up", "down"))
    save(model, path)
    loaded = load(path)
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.loss_curve_ == model.loss_curve_
    with np.load(path, allow_pickle=False) as archive:  # nothing in it needs pickle
        assert set(archive.files) >= {"params", "metadata"}


def test_a_model_file_cannot_smuggle_objects(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, params=np.array([object()], dtype=object), metadata=np.array("{}"))
    with pytest.raises(ValueError, match="allow_pickle"):
        load(path)


# ------------------------------------------------------------------ threads
def test_concurrent_predict_from_four_threads():
    code = textwrap.dedent(
        """
        import threading, numpy as np
        from bptt_numba import RNNRegressor
        rng = np.random.default_rng(0)
        X = rng.normal(size=(64, 20, 3)); y = X.sum(axis=(1, 2))
        reg = RNNRegressor(hidden_layer_sizes=(32,), max_iter=2, random_state=0).fit(X, y)
        expected = reg.predict(X)
        results, errors = [], []
        def work():
            try:
                for _ in range(25):
                    results.append(np.array_equal(reg.predict(X), expected))
            except Exception as exc:
                errors.append(exc)
        threads = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        assert not errors and len(results) == 100 and all(results), (errors, sum(results))
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_n_jobs_sets_and_restores_numba_threads():
    import numba

    X, y = _ragged(10)
    before = numba.get_num_threads()
    reg = RNNRegressor(**{**SMALL, "max_iter": 2}, n_jobs=1).fit(X, y)
    assert numba.get_num_threads() == before
    reg.predict(X)
    assert numba.get_num_threads() == before


# ------------------------------------------------------------------ evidence
def test_digits_rows_as_sequences():
    X, y = datasets.load_digits_sequences()
    order = np.random.default_rng(0).permutation(len(X))
    train, test = order[:1400], order[1400:]
    clf = RNNClassifier(hidden_layer_sizes=(64,), max_iter=30, learning_rate_init=5e-3, batch_size=32,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X[train], y[train])
    assert clf.score(X[test], y[test]) >= 0.95


def test_sequence_tagging_beats_the_majority_baseline():
    X, y = datasets.make_parity(600, n_steps=8, per_step=True, random_state=0)
    X_test, y_test = datasets.make_parity(200, n_steps=8, per_step=True, random_state=1)
    clf = RNNClassifier(hidden_layer_sizes=(16,), output="sequence", max_iter=60, learning_rate_init=1e-2,
                        random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    baseline = max(np.mean(y_test), 1 - np.mean(y_test))
    assert clf.predict(X_test).shape == y_test.shape
    assert clf.score(X_test, y_test) > baseline + 0.3


def test_many_to_one_regression_on_ragged_sequences():
    X, y = _ragged(300, seed=0)
    X_test, y_test = _ragged(100, seed=1)
    reg = RNNRegressor(hidden_layer_sizes=(32,), max_iter=60, learning_rate_init=1e-2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, y)
    assert reg.score(X_test, y_test) > 0.9  # the mean predictor scores 0


def test_forecaster_beats_persistence():
    series = datasets.make_sine_series(2200, periods=(25.0,), noise=0.02, random_state=0)
    model = RNNForecaster(hidden_layer_sizes=(32,), max_iter=30, learning_rate_init=5e-3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(series[:2000])
    forecast = model.predict(10)
    truth = series[2000:2010]
    persistence = np.full(10, series[1999])
    assert forecast.shape == (10,)
    assert np.mean((forecast - truth) ** 2) < np.mean((persistence - truth) ** 2) / 4
    from_history = model.predict(10, history=series[:2000])
    np.testing.assert_allclose(from_history, forecast, rtol=1e-5, atol=1e-6)


def test_class_weight_and_sample_weight_shift_the_decision():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4, 1))
    y = (X.sum(axis=(1, 2)) > 1.0).astype(int)  # about 1 in 4 positive
    options = dict(hidden_layer_sizes=(8,), max_iter=30, learning_rate_init=1e-2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = RNNClassifier(**options).fit(X, y)
        balanced = RNNClassifier(**options, class_weight="balanced").fit(X, y)
        weighted = RNNClassifier(**options).fit(X, y, sample_weight=np.where(y == 1, 3.0, 1.0))
    assert balanced.predict(X).mean() > plain.predict(X).mean()
    assert weighted.predict(X).mean() > plain.predict(X).mean()
    with pytest.raises(ValueError, match="not in classes"):
        RNNClassifier(**options, class_weight={5: 2.0}).fit(X, y)
