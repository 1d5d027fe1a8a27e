"""Samples per second of data-parallel training on 1 and 2 local Dask worker processes.

Usage: python benchmarks/dask_scaling.py
(each worker one thread; LSTM H=64, 2048 sequences of 50 steps, batches of 512)
"""

import time
import warnings

import numpy as np
from distributed import Client, LocalCluster

from bptt_numba import RNNRegressor
from bptt_numba import dask as bptt_dask


def main():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2048, 50, 4)).astype(np.float32)
    y = X.sum(axis=(1, 2))
    options = dict(hidden_layer_sizes=(64,), max_iter=3, batch_size=512, random_state=0)
    for n_workers in (1, 2):
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          env={"NUMBA_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bptt_dask.fit(RNNRegressor(**{**options, "max_iter": 1}), X[:512], y[:512], client=client)  # compile
                start = time.perf_counter()
                bptt_dask.fit(RNNRegressor(**options), X, y, client=client)
            elapsed = time.perf_counter() - start
        print(f"{n_workers} worker(s): {3 * len(X) / elapsed:,.0f} samples/s ({elapsed:.2f} s for 3 epochs)")


if __name__ == "__main__":
    main()
