"""Forecast a chaotic series (Mackey-Glass) several steps ahead with RNNForecaster.

Run: python examples/forecast_series.py
"""

import warnings

import numpy as np

from bptt_numba import RNNForecaster, datasets

series = datasets.make_mackey_glass(2600, random_state=0)
train, test = series[:2500], series[2500:]

model = RNNForecaster(hidden_layer_sizes=(32,), max_iter=40, learning_rate_init=5e-3, truncate=(25, 50),
                      n_streams=10, random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # max_iter reached: fine for an example
    model.fit(train)

horizon = 20
forecast = model.predict(horizon)
mse = np.mean((forecast - test[:horizon]) ** 2)
persistence = np.mean((train[-1] - test[:horizon]) ** 2)
print(f"{horizon}-step forecast MSE {mse:.5f} vs persistence {persistence:.5f}")
