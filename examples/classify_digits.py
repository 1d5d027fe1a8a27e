"""Classify handwritten digits read row by row (8 steps of 8 pixels) with an LSTM.

Needs scikit-learn (for its bundled digits).  Run: python examples/classify_digits.py
"""

import warnings

import numpy as np

from bptt_numba import RNNClassifier, datasets

X, y = datasets.load_digits_sequences()
order = np.random.default_rng(0).permutation(len(X))
train, test = order[:1400], order[1400:]

clf = RNNClassifier(hidden_layer_sizes=(64,), max_iter=30, learning_rate_init=5e-3, batch_size=32, random_state=0)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    clf.fit(X[train], y[train])
print(f"test accuracy {clf.score(X[test], y[test]):.3f}")
