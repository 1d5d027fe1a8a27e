"""The per-step products on one thread: the kernels' own against BLAS.

Usage (from the repository root)::

    python benchmarks/blas_small_gemm.py [--repeat 200]

Each training step of a recurrent layer multiplies a chunk of 16 states by
the recurrent weights at every time step, ``(16, H) @ (H, G*H)`` forward and
``(16, G*H) @ (G*H, H)`` backward.  The kernels do it with
``_kernels._products.panel_matmul`` on the weights packed once per call
(packing not timed here), and a chunk's input projection with
``_products.affine`` (a zero bias here); Numba's ``np.dot`` calls the BLAS that SciPy ships
(through ``scipy.linalg.cython_blas``), which may be another OpenBLAS build
than NumPy's.  This prints the median time of each shape through all four,
one thread.
"""

import argparse

import numpy as np
from numba import njit
from threadpoolctl import threadpool_info, threadpool_limits

from bptt_numba._bench import median_ms
from bptt_numba._config import kernel
from bptt_numba._kernels._products import affine, packed, panel_matmul

SHAPES = [
    (16, 32, 128), (16, 64, 256), (16, 256, 64), (16, 128, 512), (16, 512, 128), (16, 256, 768), (16, 512, 2048),
    (64, 512, 2048), (1, 64, 256),
]


@njit(cache=True)
def _numba_dot(a, b, out):
    np.dot(a, b, out)


@kernel
def _affine(a, b, bias, out):
    affine(a, b, bias, out)


@kernel
def _panel_matmul(a, panels, out):
    panel_matmul(a, panels, out, False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba calls: list it too)

    for info in threadpool_info():
        if info["user_api"] == "blas":
            print(f"# {info['internal_api']} {info['version']} {info.get('architecture', '')}: {info['filepath']}")
    rng = np.random.default_rng(0)
    print(f"{'M':>4} {'K':>4} {'N':>5} {'panels us':>10} {'affine us':>10} {'numba us':>9} {'numpy us':>9}")
    with threadpool_limits(1, user_api="blas"):
        for m, k, n in SHAPES:
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            out = np.empty((m, n), np.float32)
            panels = packed(b, False, False)
            wide = np.empty((m, panels.shape[0] * panels.shape[2]), np.float32)
            in_panels = median_ms(lambda: _panel_matmul(a, panels, wide), args.repeat)
            bias = np.zeros(n, np.float32)
            own = median_ms(lambda: _affine(a, b, bias, out), args.repeat)
            ours = median_ms(lambda: _numba_dot(a, b, out), args.repeat)
            theirs = median_ms(lambda: np.dot(a, b, out), args.repeat)
            print(f"{m:4d} {k:4d} {n:5d} {1e3 * in_panels:10.1f} {1e3 * own:10.1f} {1e3 * ours:9.1f} {1e3 * theirs:9.1f}")


if __name__ == "__main__":
    main()
