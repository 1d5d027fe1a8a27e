"""The per-step recurrent products on one thread: Numba's BLAS against NumPy's.

Usage (from the repository root)::

    python benchmarks/blas_small_gemm.py [--repeat 200]

Each training step of a recurrent layer multiplies a chunk of 16 states by
the recurrent weights at every time step, ``(16, H) @ (H, G*H)``.  Numba's
``np.dot`` calls the BLAS that SciPy ships (through ``scipy.linalg.cython_blas``),
which may be another OpenBLAS build than NumPy's; this prints the median time
of each shape through both, one BLAS thread, so a slow library shows up as
such and not as a slow kernel.
"""

import argparse

import numpy as np
from numba import njit
from threadpoolctl import threadpool_info, threadpool_limits

from bptt_numba._bench import median_ms

SHAPES = [(16, 32, 128), (16, 64, 256), (16, 128, 512), (16, 256, 768), (16, 512, 2048), (64, 512, 2048)]


@njit(cache=True)
def _numba_dot(a, b, out):
    np.dot(a, b, out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    for info in threadpool_info():
        if info["user_api"] == "blas":
            print(f"# {info['internal_api']} {info['version']} {info.get('architecture', '')}: {info['filepath']}")
    rng = np.random.default_rng(0)
    print(f"{'M':>4} {'K':>4} {'N':>5} {'numba us':>9} {'numpy us':>9}")
    with threadpool_limits(1, user_api="blas"):
        for m, k, n in SHAPES:
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            out = np.empty((m, n), np.float32)
            ours = median_ms(lambda: _numba_dot(a, b, out), args.repeat)
            theirs = median_ms(lambda: np.dot(a, b, out), args.repeat)
            print(f"{m:4d} {k:4d} {n:5d} {1e3 * ours:9.1f} {1e3 * theirs:9.1f}")


if __name__ == "__main__":
    main()
