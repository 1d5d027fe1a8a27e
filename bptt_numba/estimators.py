"""scikit-learn estimators: RNNRegressor, RNNClassifier, RNNForecaster.

They feel like ``MLPRegressor``/``MLPClassifier`` for sequences: the same
parameter names and meanings where the concept is the same, plus the
recurrent ones (``cell``, ``truncate``, ``clip_norm`` ...).  Inputs may be
3-D arrays (n_samples, n_timesteps, n_features), 2-D arrays (n_samples,
n_timesteps) of univariate sequences, or lists of sequences of different
lengths (padded internally, lengths tracked: padding never reaches a
prediction).
"""

import copy
import warnings
from contextlib import contextmanager, nullcontext

import numba
import numpy as np

from . import _validation as val
from ._compat import (
    BaseEstimator,
    ClassifierMixin,
    DataConversionWarning,
    RegressorMixin,
    accuracy_score,
    check_feature_names,
    check_is_fitted,
    r2_score,
)
from .network import Network
from .training import Trainer, make_streams


def _threads(n_jobs):
    """Run with ``n_jobs`` Numba threads (None: unchanged; -1: all), then restore."""
    if n_jobs is None:
        # No generator to step through: a one-sequence prediction makes this call.
        return nullcontext()
    available = numba.config.NUMBA_NUM_THREADS
    n_threads = available if n_jobs == -1 else min(val.check_positive_int("n_jobs", n_jobs), available)
    return _numba_threads(n_threads)


@contextmanager
def _numba_threads(n_threads):
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


class _RNNBase(BaseEstimator):
    """Shared parameters, input handling and the fit machinery."""

    _loss = "mse"

    def __init__(
        self,
        hidden_layer_sizes=(64,),
        cell="lstm",
        nonlinearity="tanh",
        bidirectional=False,
        dropout=0.0,
        output="last",
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        truncate=None,
        clip_norm=None,
        clip_value=None,
        dtype="float32",
        n_jobs=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.cell = cell
        self.nonlinearity = nonlinearity
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.output = output
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.truncate = truncate
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.dtype = dtype
        self.n_jobs = n_jobs

    def __sklearn_is_fitted__(self):
        return hasattr(self, "network_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------ input
    def _sequences(self, X, reset):
        """Validated padded batch ``(X, lengths, layout)`` for fit or predict."""
        if not reset:
            check_is_fitted(self)
        # A fitted model takes its input in its own dtype.
        dtype = val.check_dtype(self.dtype) if reset else self.network_.dtype
        X_arr, lengths, layout = val.check_sequence_input(X, dtype)
        check_feature_names(self, X, reset=reset)
        n_features = X_arr.shape[1] if layout == "2d" else X_arr.shape[2]
        if reset:
            self.n_features_in_ = n_features
            self._layout = layout
            return X_arr, lengths, layout
        step_features = self.network_.n_features
        if layout == "2d" and self._layout == "2d" and n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                "features as input."
            )
        if X_arr.shape[2] != step_features:
            raise ValueError(
                f"X has {X_arr.shape[2]} features per time step, but {type(self).__name__} is expecting "
                f"{step_features} features per step as input."
            )
        return X_arr, lengths, layout

    def _batch_size(self, n_samples):
        if self.batch_size == "auto":
            return min(200, n_samples)
        size = val.check_positive_int("batch_size", self.batch_size)
        if size > n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        return min(size, n_samples)

    # -------------------------------------------------------------------- fit
    def _fit(self, X, y, sample_weight, incremental, classes=None):
        first = incremental and not hasattr(self, "network_")
        reset = not incremental or first
        X_arr, lengths, _ = self._sequences(X, reset=reset)
        targets, n_outputs = self._targets(y, lengths, X_arr.shape[1], reset, classes)
        weights = self._sample_weight(sample_weight, targets, lengths)
        fitted = hasattr(self, "network_")
        if incremental and fitted:
            # partial_fit continues the optimizer (its moments, its step count).
            trainer = copy.deepcopy(self.trainer_)
            self._update_trainer(trainer, X_arr.shape[0])
        elif self.warm_start and fitted:
            # warm_start continues the weights with a fresh optimizer, as MLP does.
            trainer = self._make_trainer(copy.deepcopy(self.network_), X_arr.shape[0])
        else:
            network = Network(
                X_arr.shape[2],
                self.hidden_layer_sizes,
                cell=self.cell,
                n_outputs=n_outputs,
                bidirectional=self.bidirectional,
                nonlinearity=self.nonlinearity,
                dtype=self.dtype,
                random_state=val.as_generator(self.random_state),
            )
            trainer = self._make_trainer(network, X_arr.shape[0])
        with _threads(self.n_jobs):
            if incremental:
                trainer.partial_fit(X_arr, targets, lengths, weights)
            else:
                trainer.fit(X_arr, targets, lengths, weights)
                if self.warm_start and fitted:
                    trainer.loss_curve_ = self.loss_curve_ + trainer.loss_curve_
                    trainer.n_iter_ += self.n_iter_
                    trainer.t_ += self.t_
        # Only a completed fit replaces the model: a failed one raised above.
        self.trainer_ = trainer
        self.network_ = trainer.network
        self.loss_curve_ = list(trainer.loss_curve_)
        self.validation_scores_ = list(trainer.validation_scores_) if self.early_stopping else None
        self.best_validation_score_ = trainer.best_validation_score_ if self.early_stopping else None
        self.best_loss_ = None if self.early_stopping else trainer.best_loss_
        self.n_iter_ = trainer.n_iter_
        self.t_ = trainer.t_
        self.n_outputs_ = n_outputs
        return self

    def _make_trainer(self, network, n_samples):
        return Trainer(
            network,
            loss=self._loss,
            output=self.output,
            solver=self.solver,
            learning_rate=self.learning_rate,
            learning_rate_init=self.learning_rate_init,
            power_t=self.power_t,
            batch_size=self._batch_size(n_samples),
            max_iter=self.max_iter,
            shuffle=self.shuffle,
            random_state=val.as_generator(self.random_state),
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
            early_stopping=self.early_stopping,
            validation_fraction=self.validation_fraction,
            alpha=self.alpha,
            momentum=self.momentum,
            nesterovs_momentum=self.nesterovs_momentum,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            clip_norm=self.clip_norm,
            clip_value=self.clip_value,
            truncate=self.truncate,
            dropout=self.dropout,
            verbose=self.verbose,
            score=self._network_score,
        )

    def _update_trainer(self, trainer, n_samples):
        """Carry parameters changed by ``set_params`` into a continued fit."""
        fresh = self._make_trainer(trainer.network, n_samples)
        for name in ("batch_size", "max_iter", "tol", "n_iter_no_change", "alpha", "clip_norm", "clip_value",
                     "windows", "dropout", "verbose", "learning_rate", "learning_rate_init"):
            setattr(trainer, name, getattr(fresh, name))

    def _sample_weight(self, sample_weight, targets, lengths):
        if sample_weight is None:
            return None
        return val.check_sample_weight(sample_weight, lengths.shape[0], val.check_dtype(self.dtype))

    # ---------------------------------------------------------------- predict
    def _raw_predict(self, X):
        """Network outputs, the lengths and the input layout."""
        X_arr, lengths, layout = self._sequences(X, reset=False)
        with _threads(self.n_jobs):
            Y = self.network_._valid_outputs(X_arr, lengths, self.output)
        return Y, lengths, layout

    def _per_sequence(self, values, lengths, layout):
        """Per-step results as a list of per-sequence arrays for ragged input."""
        if self.output == "sequence" and layout == "list":
            return [values[i, : lengths[i]] for i in range(len(lengths))]
        return values

    def _sequence_score(self, X, y, sample_weight):
        """`score` for ``output="sequence"``: every valid step counts once."""
        X_arr, lengths, _ = self._sequences(X, reset=False)
        predicted = self.predict(X)
        if isinstance(predicted, list):
            predicted = np.concatenate(predicted)
        else:
            predicted = predicted[val.valid_mask(lengths, X_arr.shape[1])]
        truth = val.check_step_targets(y, lengths, X_arr.shape[1])[val.valid_mask(lengths, X_arr.shape[1])]
        weights = None if sample_weight is None else np.repeat(np.asarray(sample_weight, float), lengths)
        return self._metric(truth, predicted, weights)


class RNNRegressor(RegressorMixin, _RNNBase):
    """Recurrent-network regressor trained with backpropagation through time.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default=(64,)
        Hidden units of each recurrent layer.
    cell : {"lstm", "gru", "rnn"}, default="lstm"
    nonlinearity : {"tanh", "relu"}, default="tanh"
        Activation of the Elman cell (``cell="rnn"``).
    bidirectional : bool, default=False
    dropout : float, default=0.0
        Inverted dropout between recurrent layers while training.
    output : {"last", "sequence"}, default="last"
        ``"last"``: one prediction per sequence (its last valid step);
        ``"sequence"``: one per step (sequence regression / tagging).
    solver : {"adam", "adamw", "sgd", "rmsprop", "lbfgs"}, default="adam"
    alpha : float, default=1e-4
        L2 penalty on the weights (not biases), as in ``MLPRegressor``.
    batch_size : int or "auto", default="auto"
        ``min(200, n_samples)`` for "auto".
    learning_rate : {"constant", "invscaling", "adaptive"}, default="constant"
    learning_rate_init, power_t, max_iter, shuffle, random_state, tol, verbose, warm_start, momentum,
    nesterovs_momentum, early_stopping, validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change
        As in ``MLPRegressor``.
    truncate : int or (int, int), optional
        Truncated BPTT window ``k`` or ``(k1, k2)`` (see `bptt_numba.Trainer`).
    clip_norm, clip_value : float, optional
        Gradient clipping by global L2 norm / by value.
    dtype : {"float32", "float64"}, default="float32"
    n_jobs : int, optional
        Numba threads for fit and predict (-1: all); restored afterwards.

    Attributes
    ----------
    network_ : Network
    trainer_ : Trainer
        Its optimizer state (used by ``partial_fit`` and ``warm_start``).
    n_features_in_ : int
        Columns of a 2-D input; features per step otherwise.
    feature_names_in_ : ndarray
        Column names of a DataFrame input.
    loss_curve_, validation_scores_, best_loss_, best_validation_score_, n_iter_, t_, n_outputs_
        As in ``MLPRegressor``.
    """

    def fit(self, X, y, sample_weight=None):
        """Fit the model; returns self.

        Parameters
        ----------
        X : array-like (n_samples, n_timesteps[, n_features]) or list of sequences
        y : array-like
            (n_samples[, n_outputs]) for ``output="last"``; per-step targets
            (an array (n_samples, n_timesteps[, n_outputs]) or a list matching
            X's sequences) for ``"sequence"``.
        sample_weight : array-like of shape (n_samples,), optional
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over the given batch, continuing the optimizer; returns self."""
        return self._fit(X, y, sample_weight, incremental=True)

    def score(self, X, y, sample_weight=None):
        """R^2 of the predictions (over every valid step for ``output="sequence"``)."""
        if self.output == "sequence":
            return self._sequence_score(X, y, sample_weight)
        return super().score(X, y, sample_weight=sample_weight)

    def predict(self, X):
        """Predictions: (n_samples[, n_outputs]) or per step for ``output="sequence"``."""
        Y, lengths, layout = self._raw_predict(X)
        if self._y_scalar:
            Y = Y[..., 0]
        return self._per_sequence(Y, lengths, layout)

    def _targets(self, y, lengths, n_steps, reset, classes):
        dtype = val.check_dtype(self.dtype)
        if y is None:
            raise ValueError("requires y to be passed, but the target y is None")
        if self.output == "sequence":
            y_arr = val.check_step_targets(y, lengths, n_steps, dtype)
            scalar = y_arr.ndim == 2
        else:
            y_arr = val._numeric("y", y, dtype)
            if y_arr.ndim == 2 and y_arr.shape[1] == 1:
                warnings.warn(
                    "A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
                    "(n_samples, ), for example using ravel().",
                    DataConversionWarning,
                )
                y_arr = y_arr[:, 0]
            if y_arr.ndim not in (1, 2) or y_arr.shape[0] != lengths.shape[0]:
                raise ValueError(
                    f"y must have shape (n_samples,) or (n_samples, n_outputs) with n_samples={lengths.shape[0]}; "
                    f"got {y_arr.shape}"
                )
            scalar = y_arr.ndim == 1
        mask = val.valid_mask(lengths, n_steps) if self.output == "sequence" else slice(None)
        val.check_finite("y", y_arr[mask])
        if scalar:
            y_arr = y_arr[..., None]
        n_outputs = y_arr.shape[-1]
        if not reset and n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} outputs but the model was fitted with {self.n_outputs_}")
        if reset:
            self._y_scalar = scalar
        return y_arr, n_outputs

    def _network_score(self, network, X, y, lengths, weights):
        Y = network._valid_outputs(X, lengths, self.output)
        if self.output == "sequence":
            mask = val.valid_mask(lengths, X.shape[1])
            return r2_score(y[mask], Y[mask])
        return r2_score(y, Y, sample_weight=weights)

    @staticmethod
    def _metric(truth, predicted, weights):
        return r2_score(truth, predicted, sample_weight=weights)


class RNNClassifier(ClassifierMixin, _RNNBase):
    """Recurrent-network classifier trained with backpropagation through time.

    Softmax cross-entropy over the classes (two outputs for a binary
    problem).  Parameters are those of `RNNRegressor`, plus:

    Parameters
    ----------
    class_weight : dict, "balanced" or None, default=None
        Weights per class, multiplied into ``sample_weight``
        (``output="last"`` only).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    """

    _loss = "cross_entropy"

    def __init__(
        self,
        hidden_layer_sizes=(64,),
        cell="lstm",
        nonlinearity="tanh",
        bidirectional=False,
        dropout=0.0,
        output="last",
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        truncate=None,
        clip_norm=None,
        clip_value=None,
        dtype="float32",
        n_jobs=None,
        class_weight=None,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            cell=cell,
            nonlinearity=nonlinearity,
            bidirectional=bidirectional,
            dropout=dropout,
            output=output,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            truncate=truncate,
            clip_norm=clip_norm,
            clip_value=clip_value,
            dtype=dtype,
            n_jobs=n_jobs,
        )
        self.class_weight = class_weight

    def fit(self, X, y, sample_weight=None):
        """Fit the model; returns self.

        Parameters
        ----------
        X : array-like (n_samples, n_timesteps[, n_features]) or list of sequences
        y : array-like
            Labels (n_samples,) for ``output="last"``; per-step labels (an
            array (n_samples, n_timesteps) or a list matching X) for
            ``"sequence"``.
        sample_weight : array-like of shape (n_samples,), optional
        """
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over the given batch; ``classes`` is required on the first call."""
        if not hasattr(self, "classes_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes) or per step."""
        Y, lengths, layout = self._raw_predict(X)
        return self._per_sequence(_softmax(Y.astype(np.float64)), lengths, layout)

    def predict_log_proba(self, X):
        """Logarithm of `predict_proba`, computed stably."""
        Y, lengths, layout = self._raw_predict(X)
        return self._per_sequence(_log_softmax(Y.astype(np.float64)), lengths, layout)

    def score(self, X, y, sample_weight=None):
        """Accuracy of the predictions (over every valid step for ``output="sequence"``)."""
        if self.output == "sequence":
            return self._sequence_score(X, y, sample_weight)
        return super().score(X, y, sample_weight=sample_weight)

    def predict(self, X):
        """Predicted labels, (n_samples,) or per step."""
        Y, lengths, layout = self._raw_predict(X)
        return self._per_sequence(self.classes_[np.argmax(Y, axis=-1)], lengths, layout)

    def _targets(self, y, lengths, n_steps, reset, classes):
        if y is None:
            raise ValueError("requires y to be passed, but the target y is None")
        if self.output == "sequence":
            labels = val.check_step_targets(y, lengths, n_steps)
            mask = val.valid_mask(lengths, n_steps)
        else:
            labels = np.asarray(y)
            if labels.ndim == 2 and labels.shape[1] == 1:
                warnings.warn(
                    "A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
                    "(n_samples, ), for example using ravel().",
                    DataConversionWarning,
                )
                labels = labels[:, 0]
            if labels.ndim != 1 or labels.shape[0] != lengths.shape[0]:
                raise ValueError(
                    f"y must be a 1-D array of labels with {lengths.shape[0]} entries; got shape {labels.shape} "
                    "(multilabel and multi-output targets are not supported)"
                )
            mask = slice(None)
        valid = labels[mask]
        if valid.dtype.kind == "f":
            val.check_finite("y", valid)
            if not np.all(valid == np.round(valid)):
                raise ValueError("Unknown label type: continuous targets; RNNClassifier needs class labels")
        if reset:
            known = np.unique(valid) if classes is None else np.unique(np.asarray(classes))
            if known.shape[0] < 2 and classes is None:
                raise ValueError(
                    f"The number of classes has to be greater than one; got {known.shape[0]} class ({known})"
                )
            self.classes_ = known
        unseen = np.setdiff1d(np.unique(valid), self.classes_)
        if unseen.size:
            raise ValueError(f"y contains labels {unseen.tolist()} not seen in classes {self.classes_.tolist()}")
        codes = np.zeros(labels.shape, dtype=np.int64)
        codes[mask] = np.searchsorted(self.classes_, valid)
        return codes, max(2, self.classes_.shape[0])

    def _sample_weight(self, sample_weight, targets, lengths):
        weights = super()._sample_weight(sample_weight, targets, lengths)
        if self.class_weight is None:
            return weights
        if self.output == "sequence":
            raise ValueError("class_weight needs output='last' (weights are per sequence)")
        per_class = _class_weights(self.class_weight, self.classes_, targets)
        scaled = per_class[targets]
        return scaled if weights is None else weights * scaled

    def _network_score(self, network, X, y, lengths, weights):
        Y = network._valid_outputs(X, lengths, self.output)
        predicted = np.argmax(Y, axis=-1)
        if self.output == "sequence":
            mask = val.valid_mask(lengths, X.shape[1])
            return accuracy_score(y[mask], predicted[mask])
        return accuracy_score(y, predicted, sample_weight=weights)

    @staticmethod
    def _metric(truth, predicted, weights):
        return accuracy_score(truth, predicted, sample_weight=weights)


class RNNForecaster(RegressorMixin, _RNNBase):
    """Recursive multi-step forecaster of one or several long series.

    ``fit`` trains next-step prediction with stateful truncated BPTT over the
    series, cut into ``n_streams`` parallel streams; ``predict(horizon)``
    then forecasts recursively from the end of the training series, or from
    a given ``history``.  Parameters are those of `RNNRegressor` (``output``
    is always "sequence"), plus:

    Parameters
    ----------
    n_streams : int, default=8
        Parallel streams each training series is cut into.
    truncate : int or (int, int), default=(32, 64)
        TBPTT windows over the streams.

    Attributes
    ----------
    n_features_in_ : int
        Features per step of the series.
    """

    def __init__(
        self,
        hidden_layer_sizes=(64,),
        cell="lstm",
        nonlinearity="tanh",
        dropout=0.0,
        solver="adam",
        alpha=0.0001,
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        truncate=(32, 64),
        clip_norm=None,
        clip_value=None,
        dtype="float32",
        n_jobs=None,
        n_streams=8,
    ):
        # Only the parameters in this signature are set (scikit-learn's
        # rule); the choices a forecaster fixes are the class attributes below.
        for name, value in list(locals().items()):
            if name != "self":
                setattr(self, name, value)

    bidirectional = False
    output = "sequence"
    batch_size = "auto"
    shuffle = False
    early_stopping = False
    validation_fraction = 0.1

    def __sklearn_is_fitted__(self):
        # Forecasts start from the state a fit ends with, set last.
        return hasattr(self, "state_")

    def fit(self, X, y=None):
        """Fit on one series (n_timesteps[, n_features]) or a list of series; returns self.

        ``y`` is ignored: the targets are each series one step ahead.
        """
        dtype = val.check_dtype(self.dtype)
        series_list = [val.check_series(s, dtype) for s in (X if isinstance(X, (list, tuple)) else [X])]
        n_features = {s.shape[1] for s in series_list}
        if len(n_features) != 1:
            raise ValueError(f"all series must have the same number of features; got {sorted(n_features)}")
        n_streams = val.check_positive_int("n_streams", self.n_streams)
        inputs, targets = [], []
        for series in series_list:
            streams = max(1, min(n_streams, (series.shape[0] - 1) // 2))
            X_s, y_s = make_streams(series, streams)
            inputs.append(X_s)
            targets.append(y_s)
        steps = min(x.shape[1] for x in inputs)
        X_all = np.concatenate([x[:, :steps] for x in inputs])
        y_all = np.concatenate([t[:, :steps] for t in targets])
        self._fit(X_all, y_all, None, incremental=False)
        self.n_features_in_ = X_all.shape[2]
        self._y_scalar = np.ndim(X if not isinstance(X, (list, tuple)) else X[0]) == 1
        with _threads(self.n_jobs):
            self.state_, self.last_ = self._condition(series_list[-1])
        return self

    def predict(self, horizon, history=None):
        """Recursive forecasts of the next ``horizon`` steps.

        Parameters
        ----------
        horizon : int
        history : array-like (n_timesteps[, n_features]), optional
            Forecast from the end of this series instead of the training one.

        Returns
        -------
        ndarray of shape (horizon,) or (horizon, n_features)
        """
        check_is_fitted(self)
        horizon = val.check_positive_int("horizon", horizon)
        with _threads(self.n_jobs):
            if history is None:
                state, last = self.state_, self.last_
            else:
                history = val.check_series(history, val.check_dtype(self.dtype))
                if history.shape[1] != self.n_features_in_:
                    raise ValueError(
                        f"history has {history.shape[1]} features per step but the model expects {self.n_features_in_}"
                    )
                state, last = self._condition(history)
            forecasts, _ = self.network_._rollout(last, state, horizon)
        return forecasts[:, 0] if self._y_scalar and self.n_features_in_ == 1 else forecasts

    def score(self, X, y=None):
        """R^2 of one-step-ahead predictions along a series (teacher forcing)."""
        check_is_fitted(self)
        series = val.check_series(X, val.check_dtype(self.dtype))
        Y = self.network_._outputs(series[None, :-1], output="sequence")[0]
        return r2_score(series[1:], Y[0])

    def _condition(self, series):
        """State after running ``series`` through the network, and its last value."""
        network = self.network_
        return network._final_state(network._batch(series[None, :-1], None, None, "sequence")), series[-1]

    _targets = RNNRegressor._targets
    _network_score = RNNRegressor._network_score


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _class_weights(class_weight, classes, codes):
    """Weight of each class index from a dict or "balanced"."""
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict, 'balanced' or None; got {class_weight!r}")
        counts = np.bincount(codes, minlength=classes.shape[0]).astype(np.float64)
        return np.where(counts > 0, codes.shape[0] / (classes.shape[0] * np.maximum(counts, 1)), 0.0)
    weights = np.ones(classes.shape[0])
    for label, weight in dict(class_weight).items():
        index = np.searchsorted(classes, label)
        if index >= classes.shape[0] or classes[index] != label:
            raise ValueError(f"class_weight names the label {label!r}, which is not in classes {classes.tolist()}")
        weights[index] = weight
    return weights

