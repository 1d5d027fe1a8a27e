"""Estimator-level suites: fit, predict, peak memory and the loss they reach."""

import warnings


from bptt_numba import RNNClassifier, RNNForecaster, RNNRegressor, datasets, make_streams


def _quiet_fit(model, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, y)


class AddingProblem:
    """RNNRegressor on the adding problem (T = 50)."""

    params = (["lstm", "gru"],)
    param_names = ["cell"]

    def setup(self, cell):
        self.X, self.y = datasets.make_adding_problem(512, 50, random_state=0)
        self.model = RNNRegressor(hidden_layer_sizes=(32,), cell=cell, max_iter=3, batch_size=32,
                                  learning_rate_init=1e-2, random_state=0)
        _quiet_fit(self.model, self.X[:8], self.y[:8])  # compile outside the timed region

    def time_fit(self, cell):
        _quiet_fit(self.model, self.X, self.y)

    def peakmem_fit(self, cell):
        _quiet_fit(self.model, self.X, self.y)

    def time_predict(self, cell):
        self.model.predict(self.X)

    def time_predict_one(self, cell):
        # One sequence: what the Python around the kernels costs a caller.
        self.model.predict(self.X[:1])

    def track_final_loss(self, cell):
        return _quiet_fit(self.model, self.X, self.y).loss_curve_[-1]


class TruncatedStreams:
    """Stateful TBPTT(k1, k2): 16 streams of one long series (T = 400), every step scored."""

    params = (["25,25", "20,40"],)
    param_names = ["truncate"]

    def setup(self, truncate):
        self.X, self.y = make_streams(datasets.make_sine_series(16 * 400 + 1, random_state=0), 16)
        k1, k2 = (int(k) for k in truncate.split(","))
        self.model = RNNRegressor(hidden_layer_sizes=(32,), output="sequence", truncate=(k1, k2), max_iter=2,
                                  batch_size=16, random_state=0)
        _quiet_fit(self.model, self.X[:, :50], self.y[:, :50])

    def time_fit(self, truncate):
        _quiet_fit(self.model, self.X, self.y)

    def track_final_loss(self, truncate):
        return _quiet_fit(self.model, self.X, self.y).loss_curve_[-1]


class DigitsClassifier:
    """RNNClassifier on scikit-learn's digits as row sequences (when installed)."""

    def setup(self):
        try:
            self.X, self.y = datasets.load_digits_sequences()
        except ImportError:
            raise NotImplementedError("scikit-learn is not installed") from None
        self.model = RNNClassifier(hidden_layer_sizes=(64,), max_iter=2, batch_size=32, random_state=0)
        _quiet_fit(self.model, self.X[:16], self.y[:16])

    def time_fit(self):
        _quiet_fit(self.model, self.X, self.y)

    def time_predict_proba(self):
        self.model.predict_proba(self.X)

    def track_train_accuracy(self):
        return _quiet_fit(self.model, self.X, self.y).score(self.X, self.y)


class Forecast:
    """RNNForecaster's recursive forecasts of a noisy sine, one step fed back at a time."""

    params = ([10, 200],)
    param_names = ["horizon"]

    def setup(self, horizon):
        series = datasets.make_sine_series(400, random_state=0)
        self.model = RNNForecaster(hidden_layer_sizes=(32,), max_iter=2, random_state=0)
        _quiet_fit(self.model, series, None)
        self.model.predict(2)

    def time_predict(self, horizon):
        self.model.predict(horizon)
