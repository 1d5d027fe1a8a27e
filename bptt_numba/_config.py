"""Every Numba option of the package, in one place.

Kernels import their decorators from here so that caching, the fastmath flag
set and parallelism are chosen once and consistently.
"""

import threading
from contextlib import contextmanager

import numba

#: LLVM fast-math flags the kernels may use.  Deliberately *not*
#: ``fastmath=True``: that adds ``nnan``/``ninf``, which lets LLVM delete the
#: very NaN/inf checks that catch exploding gradients.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

#: IEEE semantics for division by zero (inf/NaN, caught by the training
#: loop's finiteness checks) instead of Python's ZeroDivisionError: the
#: check Numba inserts for the latter stops LLVM from vectorising any loop
#: that divides, such as the float32 tanh.
ERROR_MODEL = "numpy"

#: Compiled kernels are written to Numba's cache (``NUMBA_CACHE_DIR`` or
#: ``__pycache__``) so that only the first process on a machine pays compile
#: time.
CACHE = True


def kernel(func=None, *, parallel=False):
    """Compile ``func`` with the package's Numba options.

    Parameters
    ----------
    func : callable, optional
        The function to compile; when omitted, a decorator is returned.
    parallel : bool, default=False
        Turn ``prange`` loops into parallel regions.

    Returns
    -------
    numba.core.registry.CPUDispatcher or callable
    """
    options = dict(
        nogil=True, cache=CACHE, fastmath=set(FASTMATH), error_model=ERROR_MODEL, parallel=parallel
    )
    if func is None:
        return numba.njit(**options)
    return numba.njit(**options)(func)



_BLAS_CONTROLLER = None

#: Serialises the kernels under Numba's workqueue threading layer, which
#: aborts the process when two threads launch parallel regions at once (the
#: OpenMP and TBB layers are thread-safe and take no lock).
_WORKQUEUE_LOCK = threading.RLock()


def _needs_lock():
    try:
        return numba.threading_layer() == "workqueue"
    except ValueError:  # no parallel region launched yet: the layer is unknown
        return True


@contextmanager
def kernel_section():
    """Context for running the kernels: one BLAS thread, and thread safety.

    The kernels parallelise over the batch with Numba's threads and call
    BLAS inside their parallel regions (on a chunk of the batch each).  A
    multithreaded BLAS would oversubscribe the cores, and its threads spin
    between calls: measured here on 2 cores, an LSTM step went from 25 ms to
    over 1 s.  So BLAS runs single-threaded inside the package's passes and
    the thread count is Numba's alone.
    """
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        # Numba calls the BLAS that SciPy ships; load it before looking.
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
        if _needs_lock():
            with _WORKQUEUE_LOCK:
                yield
        else:
            yield


#: Recurrent weights larger than this (bytes) no longer sit in a core's L2
#: cache: every chunk then streams them from L3 at every step.
LARGE_WEIGHTS = 1 << 20


def batch_chunk(n_samples, weight_bytes):
    """Samples per ``prange`` task for a batch of ``n_samples``.

    Small weights: a function of the batch size alone, about 16 tasks of at
    least 8 samples (so the per-step GEMMs stay efficient), and results
    identical for any thread count.  Weights beyond the L2 cache: one task
    per thread, so each thread streams the weights once per step (measured,
    LSTM H=512 on 2 cores: 1.19 s per step with chunks of 4, 0.40 s with one
    chunk per thread); results then differ across thread counts by rounding
    only, through the order the chunks' gradient shares are added in.

    Parameters
    ----------
    n_samples : int
    weight_bytes : int
        Size of the largest recurrent weight matrix.

    Returns
    -------
    int
    """
    if weight_bytes > LARGE_WEIGHTS:
        return -(-n_samples // numba.get_num_threads())
    return min(n_samples, max(8, -(-n_samples // 16)))
