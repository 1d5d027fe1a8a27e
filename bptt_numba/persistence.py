"""Save and load fitted estimators without pickle.

A model file is one ``.npz`` archive: the network's parameter vector and the
other fitted arrays, plus a JSON document (stored as a string array) with the
estimator's class, its parameters and its fitted scalars.  Loading uses
``numpy.load(..., allow_pickle=False)`` and rebuilds only the package's own
classes, so opening a model file from elsewhere cannot run code.
"""

import json

import numpy as np

from .network import Network

FORMAT = "bptt-numba-model"
VERSION = 1
_CLASSES = ("RNNRegressor", "RNNClassifier", "RNNForecaster")
_SCALARS = ("n_features_in_", "n_outputs_", "n_iter_", "t_", "best_loss_", "best_validation_score_", "_layout",
            "_y_scalar")
_LISTS = ("loss_curve_", "validation_scores_")


def save(estimator, path):
    """Write a fitted estimator to ``path`` (an ``.npz`` file).

    Parameters
    ----------
    estimator : RNNRegressor, RNNClassifier or RNNForecaster
        Fitted.
    path : str or path-like
    """
    name = type(estimator).__name__
    if name not in _CLASSES:
        raise TypeError(f"save() writes bptt-numba estimators, not {name}")
    if not hasattr(estimator, "network_"):
        raise ValueError(f"this {name} is not fitted yet: call fit before save")
    net = estimator.network_
    arrays = {"params": net.params}
    if hasattr(estimator, "classes_"):
        arrays["classes_"] = _plain_array(estimator.classes_, "classes_")
    if hasattr(estimator, "feature_names_in_"):
        arrays["feature_names_in_"] = _plain_array(estimator.feature_names_in_, "feature_names_in_")
    if hasattr(estimator, "state_"):
        arrays["last_"] = estimator.last_
        for layer, entry in enumerate(estimator.state_):
            for part, array in enumerate(entry if isinstance(entry, tuple) else (entry,)):
                arrays[f"state_{layer}_{part}"] = array
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "class": name,
        "params": _jsonable(estimator.get_params()),
        "network": {
            "n_features": net.n_features,
            "hidden_sizes": list(net.hidden_sizes),
            "cell": net.cell,
            "n_outputs": net.n_outputs,
            "bidirectional": net.bidirectional,
            "nonlinearity": net.nonlinearity,
            "dtype": net.dtype.name,
        },
        "fitted": {k: _jsonable(getattr(estimator, k)) for k in _SCALARS + _LISTS if hasattr(estimator, k)},
    }
    arrays["metadata"] = np.array(json.dumps(metadata))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def load(path):
    """Read an estimator written by `save`.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    RNNRegressor, RNNClassifier or RNNForecaster
        Fitted, predicting exactly as the saved one did.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path} is not a readable bptt-numba model file ({error})") from None
    if "metadata" not in arrays:
        raise ValueError(f"{path} is not a bptt-numba model file (no metadata)")
    metadata = json.loads(str(arrays.pop("metadata")))
    if metadata.get("format") != FORMAT or metadata.get("class") not in _CLASSES:
        raise ValueError(f"{path} is not a bptt-numba model file")
    if metadata["version"] > VERSION:
        raise ValueError(f"{path} was written by a newer bptt-numba (format {metadata['version']})")
    params = metadata["params"]
    for key in ("hidden_layer_sizes", "truncate"):
        if isinstance(params.get(key), list):
            params[key] = tuple(params[key])
    from . import estimators  # here: it imports scikit-learn, slow to import

    estimator = getattr(estimators, metadata["class"])(**params)
    net = Network(random_state=0, **metadata["network"])
    if arrays["params"].shape != net.params.shape:
        raise ValueError(f"{path}: the parameter vector does not match the network it describes")
    net.params[:] = arrays.pop("params")
    estimator.network_ = net
    for key, value in metadata["fitted"].items():
        setattr(estimator, key, value)
    for key in ("classes_", "feature_names_in_"):
        if key in arrays:
            values = arrays.pop(key)
            setattr(estimator, key, values.astype(object) if key == "feature_names_in_" else values)
    if "last_" in arrays:
        estimator.last_ = arrays.pop("last_")
        n_parts = 2 if net.cell == "lstm" else 1
        estimator.state_ = [
            tuple(arrays[f"state_{layer}_{part}"] for part in range(n_parts)) if n_parts == 2
            else arrays[f"state_{layer}_0"]
            for layer in range(len(net.hidden_sizes))
        ]
    return estimator


def _plain_array(values, name):
    """Labels as an array numpy can store without pickle (numbers or strings)."""
    array = np.asarray(values)
    if array.dtype.kind == "O":
        array = array.astype(str)
    if array.dtype.kind not in "biufU":
        raise TypeError(f"{name} of dtype {array.dtype} cannot be saved without pickle")
    return array


def _jsonable(value):
    """Parameters and fitted scalars as JSON values."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.random.Generator) or isinstance(value, np.random.RandomState):
        return None  # a seed object cannot be stored; the fitted model does not need it
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else (1e308 if value > 0 else -1e308)
    return value
