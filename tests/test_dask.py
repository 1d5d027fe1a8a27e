"""Scale-out on Dask: data-parallel fit, searches and Incremental on local clusters."""

import os
import warnings

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("sklearn")

from bptt_numba import RNNClassifier, RNNRegressor  # noqa: E402
from bptt_numba import dask as bptt_dask  # noqa: E402

OPTIONS = dict(hidden_layer_sizes=(8,), max_iter=3, batch_size=16, random_state=0, dtype="float64")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 10, 2))
    return X, X.sum(axis=(1, 2))


def test_gradient_averaging_equals_single_process_training(client):
    X, y = _data()
    lengths_free = [x[: 4 + i % 7] for i, x in enumerate(X)]  # ragged, too
    for data in (X, lengths_free):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = RNNRegressor(**OPTIONS).fit(data, y)
            spread = bptt_dask.fit(RNNRegressor(**OPTIONS), data, y, client=client)
        np.testing.assert_allclose(spread.network_.params, single.network_.params, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(spread.loss_curve_, single.loss_curve_, rtol=1e-10)
        np.testing.assert_allclose(spread.predict(data), single.predict(data), rtol=1e-10, atol=1e-12)


def test_a_float32_model_with_float64_targets_matches_single_process(client):
    """Each worker checks and converts its share as `Trainer.fit` does its data."""
    X, y = _data()
    options = {**OPTIONS, "dtype": "float32", "truncate": (4, 6)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = RNNRegressor(**options).fit(X, y)
        spread = bptt_dask.fit(RNNRegressor(**options), X, y, client=client)
    assert spread.network_.params.dtype == np.float32
    np.testing.assert_allclose(spread.network_.params, single.network_.params, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(spread.loss_curve_, single.loss_curve_, rtol=1e-3)


@pytest.mark.parametrize("output", ["last", "sequence"])
def test_tbptt_windows_on_the_workers_equal_single_process(client, output):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 11, 2))
    lengths = rng.integers(3, 12, size=40)
    data = [x[:n] for x, n in zip(X, lengths)]
    y = [np.cumsum(x[:, 0]) for x in data] if output == "sequence" else np.array([x.sum() for x in data])
    options = {**OPTIONS, "truncate": (3, 5), "output": output}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = RNNRegressor(**options).fit(data, y)
        spread = bptt_dask.fit(RNNRegressor(**options), data, y, client=client)
    np.testing.assert_allclose(spread.network_.params, single.network_.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(spread.loss_curve_, single.loss_curve_, rtol=1e-9)


def test_model_averaging_learns(client):
    X, y = _data(128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = bptt_dask.fit(RNNRegressor(**{**OPTIONS, "max_iter": 15, "learning_rate_init": 1e-2}), X, y,
                              client=client, averaging="model", sync_every=4)
    assert model.loss_curve_[-1] < model.loss_curve_[0] / 2
    assert model.score(X, y) > 0.5


def test_grid_search_on_the_dask_joblib_backend(client):
    import joblib
    from sklearn.model_selection import GridSearchCV

    X, y = _data(48)
    search = GridSearchCV(RNNRegressor(**OPTIONS), {"hidden_layer_sizes": [(4,), (8,)]}, cv=2, n_jobs=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with joblib.parallel_backend("dask"):
            search.fit(X, y)
    assert len(search.cv_results_["mean_test_score"]) == 2


def test_numba_in_threaded_dask_workers():
    """Kernels launched from several worker threads at once must not abort."""
    import joblib
    from sklearn.model_selection import RandomizedSearchCV

    X, y = _data(48)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=4, processes=False, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            model = RNNRegressor(**OPTIONS).fit(X, y)
            futures = [client.submit(model.predict, X, pure=False) for _ in range(16)]
            results = client.gather(futures)
            search = RandomizedSearchCV(RNNRegressor(**OPTIONS), {"learning_rate_init": [1e-3, 1e-2, 3e-2]},
                                        n_iter=3, cv=2, n_jobs=-1, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with joblib.parallel_backend("dask"):
                    search.fit(X, y)
    expected = model.predict(X)
    assert all(np.array_equal(r, expected) for r in results)
    assert len(search.cv_results_["mean_test_score"]) == 3


def test_partial_fit_under_dask_ml_incremental(client):
    import dask.array as da
    from dask_ml.wrappers import Incremental

    X, y = _data(96)
    X = X[..., 0]  # dask-ml's wrapper indexes 2-D blocks: univariate sequences (n_samples, n_timesteps)
    labels = (X.sum(axis=1) > 0).astype(int)
    dX = da.from_array(X, chunks=(32, 10))
    dy = da.from_array(labels, chunks=32)
    model = Incremental(RNNClassifier(**OPTIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(dX, dy, classes=[0, 1])
    assert model.estimator_.n_iter_ == 3  # one partial_fit per block
    assert model.predict(dX).compute().shape == (96,)


def test_a_lost_worker_gives_a_clear_error():
    X, y = _data(64)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            original = bptt_dask._gather
            calls = []

            def kill_then_gather(c, futures, epoch, step):
                calls.append(step)
                if len(calls) == 2:  # lose a worker, and the shard it held, mid-fit
                    worker = sorted(c.scheduler_info()["workers"])[0]
                    try:
                        c.run(os._exit, 1, workers=[worker])
                    except Exception:  # the worker dies before it can answer
                        pass
                return original(c, futures, epoch, step)

            bptt_dask._gather = kill_then_gather
            try:
                model = RNNRegressor(**{**OPTIONS, "max_iter": 5})
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with pytest.raises(RuntimeError, match="Dask worker failed during epoch 1, step 2"):
                        bptt_dask.fit(model, X, y, client=client)
            finally:
                bptt_dask._gather = original
    assert not hasattr(model, "network_")  # nothing half-trained was attached
