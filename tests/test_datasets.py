"""Dataset generators and loaders: shapes, dtypes, seeding, and the structure
and statistics that make each task what it claims to be."""

import subprocess
import sys

import numpy as np
import pytest

from bptt_numba import datasets
from bptt_numba.datasets import (
    load_digits_sequences,
    make_adding_problem,
    make_copy_task,
    make_mackey_glass,
    make_parity,
    make_sine_series,
    make_windows,
)

#: name -> call with small sizes; every generator, seeded through ``random_state``.
GENERATORS = {
    "adding": lambda **kw: make_adding_problem(n_samples=30, n_steps=12, **kw),
    "copy": lambda **kw: make_copy_task(n_samples=30, n_symbols=5, length=4, delay=3, **kw),
    "parity": lambda **kw: make_parity(n_samples=30, n_steps=9, **kw),
    "parity_per_step": lambda **kw: make_parity(n_samples=30, n_steps=9, per_step=True, **kw),
    "sine": lambda **kw: make_sine_series(n_steps=200, periods=(7.0, 13.0), **kw),
    "mackey_glass": lambda **kw: make_mackey_glass(n_steps=300, discard=200, **kw),
}


def _arrays(result):
    return result if isinstance(result, tuple) else (result,)


def _assert_same(a, b):
    for left, right in zip(_arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(left, right)


def _autocorrelation(series, lag):
    centred = series - series.mean()
    return float(np.dot(centred[:-lag], centred[lag:]) / np.dot(centred, centred))


# ---------------------------------------------------------------- shared contract


def test_module_lists_what_it_exports():
    for name in datasets.__all__:
        assert callable(getattr(datasets, name))
        assert name in datasets.__doc__
        assert getattr(datasets, name).__doc__


@pytest.mark.parametrize("name", GENERATORS)
def test_same_seed_same_data_and_generator_accepted(name):
    make = GENERATORS[name]
    _assert_same(make(random_state=3), make(random_state=3))
    _assert_same(make(random_state=3), make(random_state=np.random.default_rng(3)))
    _arrays(make(random_state=None))  # unseeded works


@pytest.mark.parametrize("name", GENERATORS)
def test_different_seeds_different_data(name):
    make = GENERATORS[name]
    first, second = _arrays(make(random_state=0))[0], _arrays(make(random_state=1))[0]
    assert first.shape == second.shape
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("name", GENERATORS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_outputs_follow_dtype_and_values_do_not(name, dtype):
    make = GENERATORS[name]
    result = _arrays(make(random_state=5, dtype=dtype))
    reference = _arrays(make(random_state=5, dtype="float64"))
    for array, ref in zip(result, reference, strict=True):
        assert array.flags.c_contiguous
        if ref.dtype.kind == "f":
            assert array.dtype == np.dtype(dtype)
            np.testing.assert_allclose(array, ref, rtol=1e-6, atol=1e-6)
        else:
            assert array.dtype == np.int64
            np.testing.assert_array_equal(array, ref)


@pytest.mark.parametrize("name", GENERATORS)
def test_bad_dtype_and_random_state_rejected(name):
    make = GENERATORS[name]
    with pytest.raises(ValueError, match="dtype"):
        make(dtype="int32")
    with pytest.raises(ValueError, match="random_state"):
        make(random_state="seed")


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: make_adding_problem(n_steps=1), ValueError),
        (lambda: make_adding_problem(n_samples=0), ValueError),
        (lambda: make_adding_problem(n_samples=2.5), TypeError),
        (lambda: make_copy_task(length=0), ValueError),
        (lambda: make_copy_task(delay=-1), ValueError),
        (lambda: make_copy_task(n_symbols=0), ValueError),
        (lambda: make_parity(n_steps=0), ValueError),
        (lambda: make_sine_series(periods=()), ValueError),
        (lambda: make_sine_series(periods=(20.0, 0.0)), ValueError),
        (lambda: make_sine_series(periods="20"), TypeError),
        (lambda: make_sine_series(noise=-0.1), ValueError),
        (lambda: make_sine_series(noise=float("nan")), ValueError),
        (lambda: make_mackey_glass(dt=0.0), ValueError),
        (lambda: make_mackey_glass(tau=0.5, dt=1.0), ValueError),
        (lambda: make_mackey_glass(subsample=0), ValueError),
        (lambda: make_mackey_glass(discard=-1), ValueError),
        (lambda: make_mackey_glass(n=0), ValueError),
    ],
)
def test_bad_arguments_rejected(call, error):
    with pytest.raises(error):
        call()


# ---------------------------------------------------------------- adding problem


def test_adding_problem_structure():
    n_steps = 11
    X, y = make_adding_problem(n_samples=500, n_steps=n_steps, random_state=0)
    assert X.shape == (500, n_steps, 2) and y.shape == (500,)
    values, markers = X[:, :, 0], X[:, :, 1]
    assert values.min() >= 0 and values.max() < 1
    assert set(np.unique(markers)) == {0.0, 1.0}
    half = n_steps // 2
    np.testing.assert_array_equal(markers[:, :half].sum(axis=1), 1)
    np.testing.assert_array_equal(markers[:, half:].sum(axis=1), 1)
    np.testing.assert_allclose(y, (values * markers).sum(axis=1), rtol=1e-6)
    # every position of each half is used
    positions = np.argwhere(markers)[:, 1]
    assert set(positions) == set(range(n_steps))


def test_adding_problem_baseline_mse_is_one_sixth():
    _, y = make_adding_problem(n_samples=20000, n_steps=20, random_state=0, dtype="float64")
    assert abs(np.mean((y - 1.0) ** 2) - 1 / 6) < 0.01
    assert abs(y.mean() - 1.0) < 0.02
    assert y.min() >= 0 and y.max() < 2


# ---------------------------------------------------------------- copy task


def test_copy_task_layout_and_targets_match_inputs():
    n_symbols, length, delay = 6, 5, 7
    X, y = make_copy_task(n_samples=200, n_symbols=n_symbols, length=length, delay=delay, random_state=0)
    n_steps = 2 * length + delay + 1
    assert X.shape == (200, n_steps, n_symbols + 2) and y.shape == (200, n_steps)
    np.testing.assert_array_equal(X.sum(axis=2), 1)  # one-hot at every step
    assert set(np.unique(X)) == {0.0, 1.0}
    tokens = X.argmax(axis=2)
    marker = length + delay
    symbols = tokens[:, :length]
    assert symbols.min() == 1 and symbols.max() == n_symbols
    np.testing.assert_array_equal(tokens[:, length:marker], 0)
    np.testing.assert_array_equal(tokens[:, marker], n_symbols + 1)
    np.testing.assert_array_equal(tokens[:, marker + 1 :], 0)
    np.testing.assert_array_equal(y[:, : marker + 1], 0)
    np.testing.assert_array_equal(y[:, marker + 1 :], symbols)
    assert y.max() == n_symbols  # n_symbols + 1 classes


def test_copy_task_without_delay():
    X, y = make_copy_task(n_samples=3, n_symbols=2, length=1, delay=0, random_state=0)
    assert X.shape == (3, 3, 4)
    np.testing.assert_array_equal(X[:, 1].argmax(axis=1), 3)
    np.testing.assert_array_equal(y[:, 2], X[:, 0].argmax(axis=1))


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("per_step", [False, True])
def test_parity_matches_numpy(per_step):
    X, y = make_parity(n_samples=300, n_steps=13, random_state=2, per_step=per_step)
    assert X.shape == (300, 13, 1)
    bits = X[:, :, 0].astype(np.int64)
    assert set(np.unique(bits)) == {0, 1}
    if per_step:
        assert y.shape == (300, 13)
        expected = np.bitwise_xor.accumulate(bits, axis=1)
    else:
        assert y.shape == (300,)
        expected = np.bitwise_xor.reduce(bits, axis=1)
    np.testing.assert_array_equal(y, expected)
    assert 0.4 < y.mean() < 0.6  # balanced classes


def test_parity_final_equals_last_running_value():
    _, y_last = make_parity(n_samples=50, n_steps=8, random_state=4)
    _, y_steps = make_parity(n_samples=50, n_steps=8, random_state=4, per_step=True)
    np.testing.assert_array_equal(y_last, y_steps[:, -1])


# ---------------------------------------------------------------- sine series


def test_sine_series_without_noise_is_periodic_and_bounded():
    series = make_sine_series(n_steps=500, periods=(20.0,), noise=0.0, random_state=0, dtype="float64")
    assert series.shape == (500,)
    assert np.abs(series).max() <= 1.0
    np.testing.assert_allclose(series[20:], series[:-20], atol=1e-9)
    assert series.std() > 0.6  # a sine, not a constant (std 1/sqrt(2))


def test_sine_series_spectrum_peaks_at_the_periods():
    n_steps = 2000
    series = make_sine_series(n_steps=n_steps, periods=(20.0, 50.0), noise=0.3, random_state=1, dtype="float64")
    spectrum = np.abs(np.fft.rfft(series))
    top = set(np.argsort(spectrum)[-2:])
    assert top == {n_steps // 20, n_steps // 50}


def test_sine_series_noise_has_the_requested_std():
    clean = make_sine_series(n_steps=20000, noise=0.0, random_state=7, dtype="float64")
    noisy = make_sine_series(n_steps=20000, noise=0.5, random_state=7, dtype="float64")
    residual = noisy - clean
    assert abs(residual.std() - 0.5) < 0.01
    assert abs(residual.mean()) < 0.02


# ---------------------------------------------------------------- Mackey-Glass


def test_mackey_glass_bounded_varied_and_correlated_at_the_delay():
    series = make_mackey_glass(random_state=0, dtype="float64")
    assert series.shape == (2000,)
    assert np.isfinite(series).all()
    assert 0.3 < series.min() < 0.55 and 1.2 < series.max() < 1.4
    assert series.std() > 0.15
    acf = np.array([_autocorrelation(series, lag) for lag in range(17, 51)])
    assert acf.min() < -0.5 and acf.max() > 0.5  # strong structure at the delay's time scale
    # a shuffled copy loses it: the structure is temporal, not in the marginal
    shuffled = np.random.default_rng(0).permutation(series)
    assert max(abs(_autocorrelation(shuffled, lag)) for lag in range(17, 51)) < 0.1


def _mackey_glass_errors(tau, steps):
    """Max deviation from a fine (dt=0.02) solution over 100 time units, for each (dt, subsample)."""
    options = dict(n_steps=100, tau=tau, discard=0, random_state=3, dtype="float64")
    fine = make_mackey_glass(dt=0.02, subsample=50, **options)
    return [np.abs(make_mackey_glass(dt=dt, subsample=sub, **options) - fine).max() for dt, sub in steps]


def test_mackey_glass_integrator_is_fourth_order_on_the_grid():
    # same history for any dt; tau a multiple of dt: RK4 with Hermite-interpolated delays keeps its order
    errors = _mackey_glass_errors(17.0, [(1.0, 1), (0.5, 2), (0.25, 4)])
    assert errors[0] < 2e-5
    assert errors[0] / errors[1] > 12 and errors[1] / errors[2] > 12


def test_mackey_glass_integrator_converges_off_the_grid():
    # tau not a multiple of dt: the history's kinks fall between steps and the order drops, but it converges
    errors = _mackey_glass_errors(17.3, [(1.0, 1), (0.5, 2), (0.25, 4), (0.125, 8)])
    assert errors[0] < 1e-3
    assert errors[1] > errors[2] > errors[3] and errors[2] / errors[3] > 3
    assert errors[3] < 1e-5


def test_mackey_glass_satisfies_its_equation():
    # non-default parameters, so each is checked to be wired to its place in the equation
    tau, beta, gamma, n, dt = 20.0, 0.25, 0.12, 8.0, 0.05
    x = make_mackey_glass(
        n_steps=3000, tau=tau, beta=beta, gamma=gamma, n=n, dt=dt, discard=0, random_state=1, dtype="float64"
    )
    lag = round(tau / dt)
    index = np.arange(lag + 1, x.size - 1)
    derivative = (x[index + 1] - x[index - 1]) / (2 * dt)
    delayed = x[index - lag]
    rate = beta * delayed / (1 + delayed**n) - gamma * x[index]
    assert np.abs(derivative - rate).max() < 1e-3
    assert np.abs(rate).max() > 0.01


def test_mackey_glass_subsample_and_discard():
    every = make_mackey_glass(n_steps=200, subsample=1, discard=40, random_state=2, dtype="float64")
    every_other = make_mackey_glass(n_steps=100, subsample=2, discard=20, random_state=2, dtype="float64")
    np.testing.assert_array_equal(every_other, every[1::2])
    longer = make_mackey_glass(n_steps=240, subsample=1, discard=0, random_state=2, dtype="float64")
    np.testing.assert_array_equal(every, longer[40:])


# ---------------------------------------------------------------- windows


def test_make_windows_one_dimensional_by_hand():
    X, y = make_windows(np.arange(6.0), n_steps=3)
    np.testing.assert_array_equal(X[:, :, 0], [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(y, [3, 4, 5])
    assert X.shape == (3, 3, 1) and y.shape == (3,)
    X, y = make_windows(np.arange(6.0), n_steps=3, horizon=2)
    np.testing.assert_array_equal(X[:, :, 0], [[0, 1, 2], [1, 2, 3]])
    np.testing.assert_array_equal(y, [4, 5])
    X, y = make_windows(np.arange(6.0), n_steps=5)  # the shortest series that works
    assert X.shape == (1, 5, 1)
    np.testing.assert_array_equal(y, [5])


def test_make_windows_two_dimensional_by_hand():
    series = np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0]])
    X, y = make_windows(series, n_steps=2)
    expected = [[[0, 10], [1, 11]], [[1, 11], [2, 12]]]
    np.testing.assert_array_equal(X, expected)
    np.testing.assert_array_equal(y, [[2, 12], [3, 13]])
    assert X.flags.c_contiguous and y.shape == (2, 2)


def test_make_windows_copies_and_keeps_float_dtypes():
    series = np.arange(10, dtype=np.float32)
    X, y = make_windows(series, n_steps=4)
    assert X.dtype == np.float32 and y.dtype == np.float32
    X[0, 0, 0] = -1
    y[0] = -1
    assert series[0] == 0 and series[4] == 4
    X, y = make_windows(list(range(10)), n_steps=4)
    assert X.dtype == np.float64 and y.dtype == np.float64


def test_make_windows_on_a_generated_series():
    series = make_mackey_glass(n_steps=300, discard=100, random_state=0)
    X, y = make_windows(series, n_steps=25, horizon=3)
    assert X.shape == (273, 25, 1)
    for i in (0, 100, 272):
        np.testing.assert_array_equal(X[i, :, 0], series[i : i + 25])
        assert y[i] == series[i + 24 + 3]


@pytest.mark.parametrize(
    "series, n_steps, horizon, message",
    [
        (np.arange(5.0), 5, 1, "too short"),
        (np.arange(5.0), 3, 3, "too short"),
        (np.zeros((2, 3, 4)), 1, 1, "1-D"),
        (np.float64(3.0), 1, 1, "1-D"),
        (np.zeros((5, 0)), 1, 1, "feature"),
        (np.array([0.0, 1.0, np.nan, 3.0, 4.0]), 2, 1, "NaN"),
        (np.array([0.0, 1.0, np.inf, 3.0, 4.0]), 2, 1, "infinity"),
        (np.arange(5.0), 0, 1, "n_steps"),
        (np.arange(5.0), 2, 0, "horizon"),
    ],
)
def test_make_windows_errors(series, n_steps, horizon, message):
    with pytest.raises(ValueError, match=message):
        make_windows(series, n_steps, horizon)


def test_make_windows_rejects_non_numbers():
    with pytest.raises(TypeError, match="real numbers"):
        make_windows(np.array(["a", "b", "c"]), 1)


# ---------------------------------------------------------------- digits


def test_load_digits_sequences():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    X, y = load_digits_sequences()
    assert X.shape == (1797, 8, 8) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    digits = sklearn_datasets.load_digits()
    np.testing.assert_array_equal(X * 16, digits.images)  # row t of image i is step t
    np.testing.assert_array_equal(X.reshape(1797, 64) * 16, digits.data)
    np.testing.assert_array_equal(y, digits.target)
    bunch = load_digits_sequences(return_X_y=False)
    np.testing.assert_array_equal(bunch.data, X)
    np.testing.assert_array_equal(bunch.target, y)
    assert list(bunch.target_names) == list(range(10))


def test_load_digits_without_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "bptt-numba\[sklearn\]"'):
        load_digits_sequences()


def test_module_imports_without_sklearn():
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import bptt_numba.datasets as d\n"
        "X, y = d.make_adding_problem(n_samples=2, random_state=0)\n"
        "try:\n"
        "    d.load_digits_sequences()\n"
        "except ImportError as exc:\n"
        "    assert 'bptt-numba[sklearn]' in str(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr



def test_edge_sizes():
    assert make_mackey_glass(n_steps=1, discard=0, random_state=0).shape == (1,)
    assert make_sine_series(n_steps=1, random_state=0).shape == (1,)
    X, y = make_adding_problem(n_samples=1, n_steps=2, random_state=0)
    np.testing.assert_array_equal(X[0, :, 1], [1, 1])
    assert y[0] == X[0, 0, 0] + X[0, 1, 0]
    X, y = make_parity(n_samples=1, n_steps=1, random_state=0)
    assert y[0] == X[0, 0, 0]
