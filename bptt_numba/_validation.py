"""Input normalisation at the package boundary; every error message lives here.

Arrays leave these functions C-contiguous, finite and in the model dtype, so
the kernels compile once per dtype and never meet a surprise.
"""

import math
import numbers

import numpy as np
from scipy.sparse import issparse

CELLS = ("rnn", "lstm", "gru")
NONLINEARITIES = ("tanh", "relu")
DTYPES = ("float32", "float64")
LOSSES = ("mse", "cross_entropy", "binary_cross_entropy")
OUTPUTS = ("last", "sequence")


class ConvergenceWarning(UserWarning):
    """Training stopped at ``max_iter`` before the loss converged.

    The stand-in for scikit-learn's, used when scikit-learn is not loaded
    (see ``training._warn_not_converged``).
    """


def check_choice(name, value, options):
    """Return ``value`` if it is one of ``options``, else raise ValueError."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def check_positive_int(name, value, minimum=1):
    """Return ``value`` as int if it is an integer >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def check_fraction(name, value):
    """Return ``value`` as float if it lies in [0, 1)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1); got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1); got {value}")
    return float(value)


def check_hidden_sizes(hidden_sizes):
    """Return ``hidden_sizes`` as a non-empty tuple of positive ints."""
    if isinstance(hidden_sizes, numbers.Integral):
        hidden_sizes = (hidden_sizes,)
    try:
        sizes = tuple(hidden_sizes)
    except TypeError:
        raise TypeError(f"hidden_sizes must be an int or a tuple of ints; got {hidden_sizes!r}") from None
    if not sizes:
        raise ValueError("hidden_sizes must name at least one layer")
    return tuple(check_positive_int("each hidden size", size) for size in sizes)


def check_dtype(dtype):
    """Return the model dtype, float32 or float64."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be 'float32' or 'float64'; got {dtype!r}") from None
    check_choice("dtype", dtype.name, DTYPES)
    return dtype


def as_generator(random_state):
    """Turn ``random_state`` (None, int, Generator or RandomState) into a Generator."""
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    try:
        return np.random.default_rng(random_state)
    except (TypeError, ValueError):
        raise ValueError(f"random_state must be None, an int or a numpy Generator; got {random_state!r}") from None


def _as_float_array(name, values, dtype):
    """Convert to a C-contiguous array of ``dtype``, refusing non-numbers."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers; got an array of dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=dtype)


def check_finite(name, array):
    """Raise ValueError naming ``name`` if ``array`` has NaN or infinity."""
    if not np.isfinite(array).all():
        kind = "NaN" if np.isnan(array).any() else "infinity"
        raise ValueError(f"{name} contains {kind}")


def check_sequences(X, n_features, dtype):
    """Validate a padded batch of sequences.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_timesteps, n_features)
    n_features : int
    dtype : numpy.dtype

    Returns
    -------
    ndarray of shape (n_samples, n_timesteps, n_features)
    """
    X = _as_float_array("X", X, dtype)
    if X.ndim != 3:
        raise ValueError(f"X must be 3-D (n_samples, n_timesteps, n_features); got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must hold at least one sample and one time step; got shape {X.shape}")
    if X.shape[2] != n_features:
        raise ValueError(f"X has {X.shape[2]} features per step but the network expects {n_features}")
    check_finite("X", X)
    return X


def check_lengths(lengths, n_samples, n_steps):
    """Validate per-sample sequence lengths; None means every step is valid.

    Returns
    -------
    ndarray of shape (n_samples,), int64
    """
    if lengths is None:
        return np.full(n_samples, n_steps, dtype=np.int64)
    array = np.asarray(lengths)
    if array.dtype.kind not in "iu" and not (array.dtype.kind == "f" and np.all(array == np.round(array))):
        raise TypeError(f"lengths must be integers; got dtype {array.dtype}")
    if array.shape != (n_samples,):
        raise ValueError(f"lengths must have shape ({n_samples},), one per sample; got {array.shape}")
    if array.min() < 1 or array.max() > n_steps:
        raise ValueError(
            f"lengths must lie in [1, {n_steps}] (zero-length sequences are not allowed); "
            f"got values from {array.min()} to {array.max()}"
        )
    return np.ascontiguousarray(array, dtype=np.int64)


def valid_mask(lengths, n_steps):
    """Boolean (n_samples, n_steps) mask of the valid steps."""
    return np.arange(n_steps)[None, :] < lengths[:, None]


def check_targets(y, loss, output, lengths, n_steps, n_outputs, dtype):
    """Validate targets for ``loss`` and ``output`` mode.

    Shapes: (n_samples[, n_outputs]) for ``output="last"``, (n_samples,
    n_timesteps[, n_outputs]) for ``"sequence"``; class indices (no output
    axis) for cross-entropy.  Entries at padded steps are ignored.

    Returns
    -------
    ndarray
        int64 labels for cross-entropy, else float targets with an output
        axis.
    """
    n_samples = lengths.shape[0]
    lead = (n_samples,) if output == "last" else (n_samples, n_steps)
    # Every sample has its last step: only "sequence" targets have padding.
    mask = None if output == "last" else valid_mask(lengths, n_steps)
    array = np.asarray(y)
    if loss == "cross_entropy":
        if array.shape != lead:
            raise ValueError(f"cross_entropy targets must be class indices of shape {lead}; got {array.shape}")
        labels = array if mask is None else array[mask]
        if array.dtype.kind not in "iu" and not (array.dtype.kind == "f" and np.all(labels == np.round(labels))):
            raise TypeError(f"cross_entropy targets must be integer class indices; got dtype {array.dtype}")
        if labels.min() < 0 or labels.max() >= n_outputs:
            raise ValueError(f"class indices must lie in [0, {n_outputs}); got {labels.min()} to {labels.max()}")
        return (array if mask is None else np.where(mask, array, 0)).astype(np.int64)
    if array.shape == lead and n_outputs == 1:
        array = array[..., None]
    if array.shape != lead + (n_outputs,):
        raise ValueError(f"y must have shape {lead + (n_outputs,)} for output={output!r}; got {np.shape(y)}")
    array = _as_float_array("y", array, dtype)
    valid = array if mask is None else array[mask]
    check_finite("y", valid)
    if loss == "binary_cross_entropy" and (valid.min() < 0 or valid.max() > 1):
        raise ValueError("binary_cross_entropy targets must lie in [0, 1]")
    return array


def check_sample_weight(sample_weight, n_samples, dtype):
    """Validate per-sample weights; None means all ones."""
    if sample_weight is None:
        return np.ones(n_samples, dtype=dtype)
    weights = _as_float_array("sample_weight", sample_weight, dtype)
    if weights.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},); got {weights.shape}")
    check_finite("sample_weight", weights)
    if weights.min() < 0 or weights.sum() <= 0:
        raise ValueError("sample_weight must be non-negative and not all zero")
    return weights


def check_truncate(truncate):
    """Return the TBPTT window as an int, 0 standing for full BPTT."""
    if truncate is None:
        return 0
    return check_positive_int("truncate", truncate)


def check_state(state, hidden_sizes, n_directions, n_state, n_samples, dtype):
    """Validate an initial state and split it per layer and direction.

    Parameters
    ----------
    state : None or list
        One entry per layer: an array (n_directions, n_samples, H_l), or for
        the LSTM a pair ``(h, c)`` of such arrays.
    n_state : int
        Arrays per layer entry (2 for the LSTM, 1 otherwise).

    Returns
    -------
    list of list of tuple of ndarray, or None
        ``[layer][direction]`` -> tuple of ``n_state`` arrays (n_samples,
        H_l); None (zeros) for a ``state`` of None.
    """
    if state is None:
        return None
    if not isinstance(state, (list, tuple)) or len(state) != len(hidden_sizes):
        raise ValueError(f"state must be a list with one entry per layer ({len(hidden_sizes)})")
    checked = []
    for layer, (entry, size) in enumerate(zip(state, hidden_sizes)):
        parts = tuple(entry) if n_state == 2 else (entry,)
        if n_state == 2 and len(parts) != 2:
            raise ValueError(f"LSTM state of layer {layer} must be a pair (h, c)")
        expected = (n_directions, n_samples, size)
        arrays = []
        for part in parts:
            array = _as_float_array(f"state of layer {layer}", part, dtype)
            if array.shape != expected:
                raise ValueError(f"state of layer {layer} must have shape {expected}; got {array.shape}")
            check_finite(f"state of layer {layer}", array)
            arrays.append(array)
        checked.append(arrays)
    return split_state(checked, n_directions)


def split_state(layers, n_directions):
    """``[layer] -> parts`` of (n_directions, n_samples, H) arrays to ``[layer][direction] -> tuple`` of views."""
    return [[tuple(part[d] for part in parts) for d in range(n_directions)] for parts in layers]


def check_windows(truncate):
    """``None`` or ``(k1, k2)`` from a TBPTT ``truncate`` option: k or (k1, k2 >= k1)."""
    if truncate is None:
        return None
    if isinstance(truncate, (tuple, list)):
        if len(truncate) != 2:
            raise ValueError(f"truncate must be k or (k1, k2); got {truncate!r}")
        k1, k2 = (check_positive_int("truncate", k) for k in truncate)
        if k2 < k1:
            raise ValueError(f"truncate=(k1, k2) needs k2 >= k1; got {truncate!r}")
        return k1, k2
    k = check_positive_int("truncate", truncate)
    return k, k


def check_positive_float(name, value):
    """Return ``value`` as a float if it is finite and > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number; got {value!r}")
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number; got {value}")
    return value


def check_non_negative_float(name, value):
    """Return ``value`` as a float if it is finite and >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a non-negative number; got {value!r}")
    value = float(value)
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a non-negative number; got {value}")
    return value


def _numeric(name, values, dtype):
    """Convert ``values`` to ``dtype``; object arrays of numbers are accepted."""
    array = np.asarray(values)
    if array.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {array.dtype}")
    if array.dtype.kind == "O":
        array = array.astype(np.float64)  # TypeError for non-numbers
    elif array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers; got an array of dtype {array.dtype}")
    return np.asarray(array, dtype=dtype)


def check_sequence_input(X, dtype):
    """Normalise estimator input to a padded batch.

    Parameters
    ----------
    X : array-like or list
        A 3-D array (n_samples, n_timesteps, n_features); a 2-D array
        (n_samples, n_timesteps) of univariate sequences; or a list of
        per-sequence arrays (n_timesteps_i[, n_features]) of any lengths.
    dtype : numpy.dtype

    Returns
    -------
    X : ndarray of shape (n_samples, max_timesteps, n_features)
        C-contiguous, finite, zero after each sequence's end.
    lengths : ndarray of shape (n_samples,), int64
    layout : {"2d", "3d", "list"}
    """
    if issparse(X):
        raise TypeError("Sparse data was passed for X, but dense data is required (sequences are dense arrays).")
    if isinstance(X, (list, tuple)) and len(X) and all(hasattr(x, "__len__") for x in X):
        try:
            array = np.asarray(X)
        except ValueError:
            array = None  # ragged
        if array is None or array.dtype.kind == "O":
            return _pad_sequences(X, dtype)
        X = array
    array = _numeric("X", X, dtype)
    if array.ndim not in (2, 3):
        raise ValueError(
            f"Expected a 2-D (n_samples, n_timesteps) or 3-D (n_samples, n_timesteps, n_features) array, or a "
            f"list of sequences; got an array of shape {array.shape}. Reshape your data."
        )
    if array.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={array.shape}) while a minimum of 1 is required.")
    if array.size == 0:
        kind = "feature(s)" if array.ndim == 2 else "time step(s) or feature(s)"
        raise ValueError(f"Found array with 0 {kind} (shape={array.shape}) while a minimum of 1 is required.")
    layout = "2d" if array.ndim == 2 else "3d"
    if layout == "2d":
        array = array[:, :, None]
    check_finite("X", array)
    return np.ascontiguousarray(array), np.full(array.shape[0], array.shape[1], dtype=np.int64), layout


def _pad_sequences(sequences, dtype):
    """Pad a list of (T_i[, D]) sequences into one batch."""
    arrays = []
    for i, sequence in enumerate(sequences):
        array = _numeric(f"sequence {i} of X", sequence, dtype)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise ValueError(f"sequence {i} of X must be 1-D or 2-D (n_timesteps, n_features); got shape {array.shape}")
        if array.shape[0] == 0:
            raise ValueError(f"sequence {i} of X has no time steps: zero-length sequences are not allowed")
        check_finite(f"sequence {i} of X", array)
        arrays.append(array)
    n_features = {a.shape[1] for a in arrays}
    if len(n_features) != 1:
        raise ValueError(f"all sequences must have the same number of features; got {sorted(n_features)}")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    padded = np.zeros((len(arrays), lengths.max(), arrays[0].shape[1]), dtype=dtype)
    for i, array in enumerate(arrays):
        padded[i, : lengths[i]] = array
    return padded, lengths, "list"


def check_step_targets(y, lengths, n_steps, dtype=None):
    """Per-step targets for ``output="sequence"``: an array or a list matching X.

    Parameters
    ----------
    y : array-like or list
        (n_samples, n_timesteps[, n_outputs]) or a list of per-sequence
        arrays (n_timesteps_i[, n_outputs]) whose lengths match X's.
    lengths : ndarray of shape (n_samples,)
    n_steps : int
    dtype : numpy.dtype, optional
        Float dtype to convert to; None keeps the labels as they are.

    Returns
    -------
    ndarray of shape (n_samples, n_steps[, n_outputs])
        Padded with the first valid value of each sequence.
    """
    if isinstance(y, (list, tuple)):
        if len(y) != lengths.shape[0]:
            raise ValueError(f"y has {len(y)} sequences but X has {lengths.shape[0]}")
        parts = [np.asarray(part) for part in y]
        for i, part in enumerate(parts):
            if part.ndim == 0 or part.shape[0] != lengths[i]:
                raise ValueError(
                    f"the targets of sequence {i} have {0 if part.ndim == 0 else part.shape[0]} steps but the "
                    f"sequence has {lengths[i]}"
                )
        tail = parts[0].shape[1:]
        padded = np.empty((len(parts), n_steps) + tail, dtype=parts[0].dtype if dtype is None else dtype)
        for i, part in enumerate(parts):
            padded[i, : lengths[i]] = part
            padded[i, lengths[i] :] = part[0]
        y = padded
    y = np.asarray(y)
    if y.ndim < 2 or y.shape[:2] != (lengths.shape[0], n_steps):
        raise ValueError(
            f"per-step targets must have shape (n_samples, n_timesteps[, n_outputs]) = ({lengths.shape[0]}, "
            f"{n_steps}, ...) or be a list matching X's sequences; got shape {y.shape}"
        )
    return y if dtype is None else _numeric("y", y, dtype)


def check_series(series, dtype):
    """One series as a finite (n_timesteps, n_features) array of ``dtype``."""
    if issparse(series):
        raise TypeError("Sparse data was passed for the series, but dense data is required.")
    array = _numeric("series", series, dtype)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"a series must be 1-D or 2-D (n_timesteps, n_features); got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={array.shape}) while a minimum of 1 is required.")
    if array.shape[0] < 3:
        raise ValueError(
            f"a series needs at least 3 time steps (the samples of a forecaster); got n_samples = {array.shape[0]}"
        )
    check_finite("series", array)
    return np.ascontiguousarray(array)
