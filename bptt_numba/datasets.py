"""Embedded data: seeded generators of classic recurrent-network benchmarks.

Everything here runs offline: the synthetic tasks are generated from a seed,
and the one loader reads data that scikit-learn ships inside its wheel.

Sequence inputs are ``(n_samples, n_timesteps, n_features)`` arrays, ready
for :class:`bptt_numba.Network` and the estimators.  Every generator takes
``random_state`` (None, an int or a :class:`numpy.random.Generator`) and is
deterministic for a given seed; float outputs take ``dtype`` (``"float32"``
or ``"float64"``), and the values do not depend on it beyond rounding,
because all draws are made in float64 and cast at the end.

Sequence tasks (``X, y`` pairs)
-------------------------------
make_adding_problem
    Hochreiter & Schmidhuber's adding problem, as in Le et al. (2015).
make_copy_task
    Recall a sequence of symbols after a delay (per-step classification).
make_parity
    The XOR of a bit string, at the end or at every step.

Series (1-D arrays, to cut with :func:`make_windows`)
-----------------------------------------------------
make_sine_series
    A sum of sines with random phases plus Gaussian noise.
make_mackey_glass
    The chaotic Mackey-Glass delay differential equation, integrated by RK4.
make_windows
    Overlapping ``(window, value horizon steps later)`` pairs from a series.

Loaders
-------
load_digits_sequences
    scikit-learn's bundled 8x8 digits as sequences of 8 rows of 8 pixels
    (needs the optional scikit-learn dependency).
"""

import math
import numbers

import numpy as np

from ._validation import as_generator, check_dtype, check_finite, check_positive_int

__all__ = [
    "make_adding_problem",
    "make_copy_task",
    "make_parity",
    "make_sine_series",
    "make_mackey_glass",
    "make_windows",
    "load_digits_sequences",
]

_SKLEARN_HINT = 'pip install "bptt-numba[sklearn]"'


# --------------------------------------------------------------------------
# small checks local to this module
# --------------------------------------------------------------------------


def _check_real(name, value, minimum=None, strict=False):
    """Return ``value`` as a float, checking it is real, finite and in range.

    Parameters
    ----------
    name : str
        Name used in the error message.
    value : object
        The value to check.
    minimum : float or None, default=None
        Lower bound, or None for none.
    strict : bool, default=False
        Whether ``value`` must be strictly greater than ``minimum``.

    Returns
    -------
    float
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}; got {value}")
    return value


def _check_periods(periods):
    """Return ``periods`` (a number or a sequence of numbers) as a tuple of positive floats."""
    if isinstance(periods, numbers.Real):
        periods = (periods,)
    try:
        periods = tuple(periods)
    except TypeError:
        raise TypeError(f"periods must be a number or a sequence of numbers; got {periods!r}") from None
    if not periods:
        raise ValueError("periods must name at least one period")
    return tuple(_check_real("each period", period, minimum=0.0, strict=True) for period in periods)


# --------------------------------------------------------------------------
# sequence tasks
# --------------------------------------------------------------------------


def make_adding_problem(n_samples=1000, n_steps=50, random_state=None, dtype="float32"):
    """Generate the adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    Each sequence has two channels.  Channel 0 holds values drawn uniformly
    from [0, 1); channel 1 is zero except for two ones, one at a position
    drawn uniformly from the first half, steps ``[0, n_steps // 2)``, and
    one from the second half, steps ``[n_steps // 2, n_steps)``.  The target
    is the sum of the two marked values, so it lies in [0, 2).  Always
    predicting 1 gives a mean squared error of 1/6 (about 0.167): the
    baseline a model must beat.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of sequences.
    n_steps : int, default=50
        Sequence length T; at least 2.
    random_state : None, int or numpy.random.Generator, default=None
        Seed or generator for the draws.
    dtype : {"float32", "float64"}, default="float32"
        Float type of ``X`` and ``y``.

    Returns
    -------
    X : ndarray of shape (n_samples, n_steps, 2)
        Values (channel 0) and markers (channel 1).
    y : ndarray of shape (n_samples,)
        Sum of the two marked values.

    References
    ----------
    Hochreiter, S. and Schmidhuber, J. (1997). Long short-term memory.
    Neural Computation 9(8).
    Le, Q. V., Jaitly, N. and Hinton, G. E. (2015). A simple way to
    initialize recurrent networks of rectified linear units. arXiv:1504.00941.

    Examples
    --------
    >>> X, y = make_adding_problem(n_samples=4, n_steps=10, random_state=0)
    >>> X.shape, y.shape
    ((4, 10, 2), (4,))
    """
    n_samples = check_positive_int("n_samples", n_samples)
    n_steps = check_positive_int("n_steps", n_steps, minimum=2)
    dtype = check_dtype(dtype)
    rng = as_generator(random_state)

    values = rng.random((n_samples, n_steps))
    half = n_steps // 2
    rows = np.arange(n_samples)
    first = rng.integers(0, half, size=n_samples)
    second = rng.integers(half, n_steps, size=n_samples)

    X = np.zeros((n_samples, n_steps, 2), dtype=dtype)
    X[:, :, 0] = values
    X[rows, first, 1] = 1
    X[rows, second, 1] = 1
    y = X[rows, first, 0] + X[rows, second, 0]
    return X, y.astype(dtype)


def make_copy_task(n_samples=1000, n_symbols=8, length=10, delay=20, random_state=None, dtype="float32"):
    """Generate the copy (memory) task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

    The input sequence has ``T = length + delay + 1 + length`` steps:

    * steps ``[0, length)``: the symbols to remember, drawn uniformly from
      ``1..n_symbols``;
    * steps ``[length, length + delay)``: blanks;
    * step ``length + delay``: the go marker;
    * steps ``[length + delay + 1, T)``: blanks, during which the model must
      output the remembered symbols in order.

    Inputs are one-hot over ``n_symbols + 2`` channels: channel 0 is the
    blank, channels ``1..n_symbols`` the symbols, channel ``n_symbols + 1``
    the go marker.  Targets are class indices over ``n_symbols + 1`` classes
    at every step: 0 (blank) wherever nothing is to be recalled, and the
    remembered symbol over the last ``length`` steps.  Train with
    ``output="sequence"`` and cross-entropy; the memoryless baseline (blank
    first, then uniform guesses) has a cross-entropy of
    ``length * log(n_symbols) / T`` per step.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of sequences.
    n_symbols : int, default=8
        Size of the alphabet to remember.
    length : int, default=10
        Number of symbols to remember.
    delay : int, default=20
        Number of blank steps between the symbols and the go marker; may be 0.
    random_state : None, int or numpy.random.Generator, default=None
        Seed or generator for the draws.
    dtype : {"float32", "float64"}, default="float32"
        Float type of ``X``.

    Returns
    -------
    X : ndarray of shape (n_samples, 2 * length + delay + 1, n_symbols + 2)
        One-hot inputs.
    y : ndarray of shape (n_samples, 2 * length + delay + 1), int64
        Class index per step, in ``0..n_symbols``.

    References
    ----------
    Arjovsky, M., Shah, A. and Bengio, Y. (2016). Unitary evolution recurrent
    neural networks. ICML.

    Examples
    --------
    >>> X, y = make_copy_task(n_samples=2, n_symbols=3, length=2, delay=1, random_state=0)
    >>> X.shape, y.shape
    ((2, 6, 5), (2, 6))
    """
    n_samples = check_positive_int("n_samples", n_samples)
    n_symbols = check_positive_int("n_symbols", n_symbols)
    length = check_positive_int("length", length)
    delay = check_positive_int("delay", delay, minimum=0)
    dtype = check_dtype(dtype)
    rng = as_generator(random_state)

    symbols = rng.integers(1, n_symbols + 1, size=(n_samples, length))
    marker = length + delay
    n_steps = marker + 1 + length

    tokens = np.zeros((n_samples, n_steps), dtype=np.int64)
    tokens[:, :length] = symbols
    tokens[:, marker] = n_symbols + 1
    X = np.eye(n_symbols + 2, dtype=dtype)[tokens]

    y = np.zeros((n_samples, n_steps), dtype=np.int64)
    y[:, marker + 1 :] = symbols
    return X, y


def make_parity(n_samples=1000, n_steps=20, random_state=None, dtype="float32", per_step=False):
    """Generate the parity (XOR) task on random bit strings.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of sequences.
    n_steps : int, default=20
        Bits per sequence.
    random_state : None, int or numpy.random.Generator, default=None
        Seed or generator for the draws.
    dtype : {"float32", "float64"}, default="float32"
        Float type of ``X``.
    per_step : bool, default=False
        If True, the target is the running parity of the bits seen so far at
        every step (train with ``output="sequence"``); otherwise the parity
        of the whole string (``output="last"``).

    Returns
    -------
    X : ndarray of shape (n_samples, n_steps, 1)
        Bits, 0.0 or 1.0, each with probability 1/2.
    y : ndarray of shape (n_samples,) or (n_samples, n_steps), int64
        1 where an odd number of the bits (so far) are ones, else 0.

    Examples
    --------
    >>> X, y = make_parity(n_samples=3, n_steps=4, random_state=0, per_step=True)
    >>> X.shape, y.shape
    ((3, 4, 1), (3, 4))
    """
    n_samples = check_positive_int("n_samples", n_samples)
    n_steps = check_positive_int("n_steps", n_steps)
    dtype = check_dtype(dtype)
    rng = as_generator(random_state)

    bits = rng.integers(0, 2, size=(n_samples, n_steps))
    running = np.cumsum(bits, axis=1) % 2
    y = running if per_step else running[:, -1]
    X = bits[:, :, None].astype(dtype)
    return X, np.ascontiguousarray(y, dtype=np.int64)


# --------------------------------------------------------------------------
# series
# --------------------------------------------------------------------------


def make_sine_series(n_steps=2000, periods=(20.0,), noise=0.1, random_state=None, dtype="float32"):
    """Generate a sum of unit-amplitude sines with random phases, plus Gaussian noise.

    ``series[t] = sum_k sin(2 pi t / periods[k] + phase_k) + noise * e_t``
    with ``phase_k`` uniform in [0, 2 pi) and ``e_t`` standard normal.  The
    phases are drawn before the noise, so for a fixed seed changing only
    ``noise`` keeps the same clean signal.

    Parameters
    ----------
    n_steps : int, default=2000
        Length of the series.
    periods : float or sequence of float, default=(20.0,)
        Period of each sine, in steps; each must be positive.
    noise : float, default=0.1
        Standard deviation of the additive Gaussian noise; may be 0.
    random_state : None, int or numpy.random.Generator, default=None
        Seed or generator for the draws.
    dtype : {"float32", "float64"}, default="float32"
        Float type of the series.

    Returns
    -------
    series : ndarray of shape (n_steps,)

    Examples
    --------
    >>> make_sine_series(n_steps=100, periods=(10, 25), random_state=0).shape
    (100,)
    """
    n_steps = check_positive_int("n_steps", n_steps)
    periods = np.array(_check_periods(periods))
    noise = _check_real("noise", noise, minimum=0.0)
    dtype = check_dtype(dtype)
    rng = as_generator(random_state)

    phases = rng.uniform(0.0, 2.0 * np.pi, size=periods.size)
    steps = np.arange(n_steps, dtype=np.float64)
    clean = np.sin(2.0 * np.pi * steps[:, None] / periods[None, :] + phases[None, :]).sum(axis=1)
    return (clean + noise * rng.standard_normal(n_steps)).astype(dtype)


def _mackey_glass_rate(x, x_delayed, beta, gamma, n):
    """Right-hand side of the Mackey-Glass equation, dx/dt."""
    return beta * x_delayed / (1.0 + x_delayed**n) - gamma * x


def _hermite(path, rates, position, dt):
    """Cubic Hermite interpolation of the solution at a fractional grid index.

    Uses the values ``path`` and derivatives ``rates`` at the two grid points
    around ``position``: fourth-order accurate, so the delayed values do not
    spoil the order of RK4.
    """
    index = math.floor(position)
    s = position - index
    if s == 0.0:
        return path[index]
    s2 = s * s
    s3 = s2 * s
    return (
        (2.0 * s3 - 3.0 * s2 + 1.0) * path[index]
        + (s3 - 2.0 * s2 + s) * dt * rates[index]
        + (3.0 * s2 - 2.0 * s3) * path[index + 1]
        + (s3 - s2) * dt * rates[index + 1]
    )


def _integrate_mackey_glass(x0, n_integration_steps, delay, dt, beta, gamma, n):
    """Integrate Mackey-Glass by RK4 from a constant history ``x(t) = x0`` for ``t <= 0``.

    Parameters
    ----------
    x0 : float
        History value on ``[-tau, 0]``.
    n_integration_steps : int
        Number of RK4 steps of size ``dt``.
    delay : float
        ``tau / dt``, at least 1.  Delayed values off the grid (at the half
        steps, and everywhere when ``delay`` is not an integer) come from
        cubic Hermite interpolation of the computed solution.
    dt, beta, gamma, n : float
        Step size and equation parameters.

    Returns
    -------
    ndarray of shape (n_integration_steps,), float64
        ``x(dt), x(2 dt), ...``.
    """
    origin = math.ceil(delay)  # path[origin] is x(0); earlier entries are the history
    path = [x0] * (origin + 1)
    rates = [0.0] * origin  # dx/dt at each grid point, from the right

    def lagged(position):
        return x0 if position <= origin else _hermite(path, rates, position, dt)

    for j in range(origin, origin + n_integration_steps):
        x = path[j]
        k1 = _mackey_glass_rate(x, lagged(j - delay), beta, gamma, n)
        rates.append(k1)
        lag_middle = lagged(j + 0.5 - delay)
        k2 = _mackey_glass_rate(x + 0.5 * dt * k1, lag_middle, beta, gamma, n)
        k3 = _mackey_glass_rate(x + 0.5 * dt * k2, lag_middle, beta, gamma, n)
        k4 = _mackey_glass_rate(x + dt * k3, lagged(j + 1.0 - delay), beta, gamma, n)
        path.append(x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4))
    return np.array(path[origin + 1 :])


def make_mackey_glass(
    n_steps=2000,
    tau=17,
    beta=0.2,
    gamma=0.1,
    n=10,
    dt=1.0,
    subsample=1,
    discard=500,
    random_state=None,
    dtype="float32",
):
    """Generate a Mackey-Glass chaotic time series.

    Integrates the delay differential equation

    ``dx/dt = beta * x(t - tau) / (1 + x(t - tau)**n) - gamma * x(t)``

    with the classical fourth-order Runge-Kutta scheme at a fixed step
    ``dt``; the delayed values needed at half steps (and, when ``tau`` is
    not a multiple of ``dt``, at every stage) come from cubic Hermite
    interpolation between grid points.  When ``tau`` is a multiple of
    ``dt`` the scheme is fourth-order (with the defaults the error is about
    1e-5 over 100 time units); otherwise the kinks that the constant history
    propagates (at multiples of ``tau``) fall between steps and the order
    drops to about two, with errors about 1e-4 at ``dt=1``.  The history on ``[-tau, 0]`` is the constant
    ``1.2 + delta`` with ``delta`` drawn uniformly from [-0.05, 0.05), so
    that each seed gives a different trajectory (the system is chaotic for
    the default ``tau=17``) while the history does not depend on ``dt``.

    The series is sampled every ``subsample`` integration steps (a spacing
    of ``dt * subsample`` time units) and the first ``discard`` samples are
    dropped as transient.  Values are returned raw, not standardised: with
    the default parameters (``tau=17``) the attractor spans about 0.42 to
    1.32 with a mean near 0.93; a longer delay widens it (``tau=30``: about
    0.2 to 1.39).

    Parameters
    ----------
    n_steps : int, default=2000
        Length of the returned series.
    tau : float, default=17
        Delay; must be at least ``dt``.  17 gives the classic mildly chaotic
        attractor, 30 a more complex one.
    beta : float, default=0.2
        Production rate.
    gamma : float, default=0.1
        Decay rate.
    n : float, default=10
        Exponent of the nonlinearity.
    dt : float, default=1.0
        RK4 step, in time units.
    subsample : int, default=1
        Keep one integration step in ``subsample``.
    discard : int, default=500
        Leading samples (after subsampling) dropped as transient.
    random_state : None, int or numpy.random.Generator, default=None
        Seed or generator for the history perturbation.
    dtype : {"float32", "float64"}, default="float32"
        Float type of the series.

    Returns
    -------
    series : ndarray of shape (n_steps,)
        ``x`` at times ``(discard + k) * dt * subsample`` for
        ``k = 1..n_steps``.

    References
    ----------
    Mackey, M. C. and Glass, L. (1977). Oscillation and chaos in
    physiological control systems. Science 197(4300).

    Examples
    --------
    >>> make_mackey_glass(n_steps=100, discard=100, random_state=0).shape
    (100,)
    """
    n_steps = check_positive_int("n_steps", n_steps)
    dt = _check_real("dt", dt, minimum=0.0, strict=True)
    tau = _check_real("tau", tau, minimum=dt)
    beta = _check_real("beta", beta, minimum=0.0)
    gamma = _check_real("gamma", gamma, minimum=0.0)
    n = _check_real("n", n, minimum=0.0, strict=True)
    subsample = check_positive_int("subsample", subsample)
    discard = check_positive_int("discard", discard, minimum=0)
    dtype = check_dtype(dtype)
    rng = as_generator(random_state)

    delay = tau / dt
    if abs(delay - round(delay)) < 1e-9:
        delay = float(round(delay))  # keep exact grid lookups when tau is a multiple of dt
    x0 = 1.2 + rng.uniform(-0.05, 0.05)
    path = _integrate_mackey_glass(x0, (discard + n_steps) * subsample, delay, dt, beta, gamma, n)
    return path[subsample - 1 :: subsample][discard:].astype(dtype)


def make_windows(series, n_steps, horizon=1):
    """Cut a series into overlapping windows for ``horizon``-step-ahead forecasting.

    Window ``i`` is ``series[i : i + n_steps]`` and its target is
    ``series[i + n_steps - 1 + horizon]``, the value ``horizon`` steps after
    the window's last step.  There are ``len(series) - n_steps - horizon + 1``
    windows, with stride 1.

    Parameters
    ----------
    series : array-like of shape (n_total,) or (n_total, n_features)
        A finite, real-valued series.  float32 and float64 are kept; any
        other numeric type becomes float64.
    n_steps : int
        Window length.
    horizon : int, default=1
        How many steps after the window's last step the target lies.

    Returns
    -------
    X : ndarray of shape (n_windows, n_steps, n_features)
        The windows, a C-contiguous copy (``n_features`` is 1 for a 1-D
        series).
    y : ndarray of shape (n_windows,) or (n_windows, n_features)
        The targets; 1-D when ``series`` is.

    Raises
    ------
    ValueError
        If ``series`` is not 1-D or 2-D, has no features, holds NaN or
        infinity, or is shorter than ``n_steps + horizon``.

    Examples
    --------
    >>> X, y = make_windows(np.arange(6.0), n_steps=3)
    >>> X[:, :, 0]
    array([[0., 1., 2.],
           [1., 2., 3.],
           [2., 3., 4.]])
    >>> y
    array([3., 4., 5.])
    """
    n_steps = check_positive_int("n_steps", n_steps)
    horizon = check_positive_int("horizon", horizon)
    values = np.asarray(series)
    if values.dtype.kind not in "biuf":
        raise TypeError(f"series must hold real numbers; got an array of dtype {values.dtype}")
    if values.ndim not in (1, 2):
        raise ValueError(f"series must be 1-D (n_total,) or 2-D (n_total, n_features); got shape {values.shape}")
    if values.ndim == 2 and values.shape[1] == 0:
        raise ValueError(f"series must have at least one feature; got shape {values.shape}")
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    check_finite("series", values)

    n_total = values.shape[0]
    n_windows = n_total - n_steps - horizon + 1
    if n_windows < 1:
        raise ValueError(
            f"series of length {n_total} is too short for n_steps={n_steps} and horizon={horizon}: "
            f"it needs at least n_steps + horizon = {n_steps + horizon} values"
        )

    table = values.reshape(n_total, -1)
    windows = np.lib.stride_tricks.sliding_window_view(table[: n_total - horizon], n_steps, axis=0)
    X = np.ascontiguousarray(windows.transpose(0, 2, 1))
    y = table[n_steps - 1 + horizon :].copy()
    return X, (y[:, 0] if values.ndim == 1 else y)


# --------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------


def _import_load_digits():
    """Return ``sklearn.datasets.load_digits``, or raise ImportError with the install hint."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "load_digits_sequences needs scikit-learn, which ships the digits data; "
            f"install it with: {_SKLEARN_HINT}"
        ) from exc
    return load_digits


def load_digits_sequences(return_X_y=True):
    """Load scikit-learn's bundled handwritten digits as sequences of pixel rows.

    Each 8x8 image is read top to bottom as 8 time steps of 8 pixels, the
    classic "row-by-row" sequence view of image classification.  The data
    ship inside scikit-learn, so nothing is downloaded.  Needs the optional
    scikit-learn dependency (``pip install "bptt-numba[sklearn]"``).

    Parameters
    ----------
    return_X_y : bool, default=True
        If True, return ``(X, y)``; otherwise a :class:`sklearn.utils.Bunch`
        with ``data`` (= ``X``), ``target`` (= ``y``), ``target_names`` and
        ``DESCR``.

    Returns
    -------
    X : ndarray of shape (1797, 8, 8), float32
        Pixel intensities (0..16 in the source) scaled to [0, 1];
        ``X[i, t]`` is row ``t`` of image ``i``.
    y : ndarray of shape (1797,), int64
        Digit, 0..9.

    Raises
    ------
    ImportError
        If scikit-learn is not installed.

    Examples
    --------
    >>> X, y = load_digits_sequences()  # doctest: +SKIP
    >>> X.shape, y.shape  # doctest: +SKIP
    ((1797, 8, 8), (1797,))
    """
    load_digits = _import_load_digits()
    digits = load_digits()
    X = np.ascontiguousarray(digits.images / 16.0, dtype=np.float32)
    y = np.ascontiguousarray(digits.target, dtype=np.int64)
    if return_X_y:
        return X, y

    from sklearn.utils import Bunch

    return Bunch(
        data=X,
        target=y,
        target_names=np.asarray(digits.target_names),
        DESCR="scikit-learn's 8x8 digits as sequences of 8 rows of 8 pixels scaled to [0, 1].\n\n" + digits.DESCR,
    )
