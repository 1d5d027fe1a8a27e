"""Every Numba option of the package, in one place.

Kernels import their decorators from here so that caching, the fastmath flag
set and parallelism are chosen once and consistently.
"""

import threading

import numba

#: LLVM fast-math flags the kernels may use: an explicit set, deliberately
#: without the blanket setting, whose ``nnan``/``ninf`` flags let LLVM delete
#: the very NaN/inf checks that catch exploding gradients.
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


_THREADING_LAYER = None


def _needs_lock():
    global _THREADING_LAYER
    if _THREADING_LAYER is None:
        try:
            _THREADING_LAYER = numba.threading_layer()
        except ValueError:  # no parallel region launched yet: the layer is unknown
            return True
    return _THREADING_LAYER == "workqueue"


class kernel_section:
    """Context for running the kernels: who gets the threads, and thread safety.

    With ``blas_threads=1`` the kernels parallelise over the batch (or, for
    the long products of large weights, over blocks of rows) with Numba's
    threads, and call BLAS single-threaded inside their parallel regions.
    A multithreaded BLAS would oversubscribe the cores, and its threads spin
    between calls: measured here on 2 cores, an LSTM step went from 25 ms to
    over 1 s, and an LSTM H=512 forward pass whose input projection BLAS ran
    on both cores took 35-44 ms instead of 19-25.  So BLAS runs
    single-threaded and the thread count is Numba's alone.

    Sections nest: the training loop holds one for a whole fit, so that
    its steps find the thread counts already set (setting and restoring
    them took 54 us of an LSTM H=64 B=64 step).

    ``blas_threads=None`` is for kernels that call no BLAS (forward passes
    with small weights: ``_kernels._products`` does their products);
    BLAS is left as it is, which saves a one-sequence prediction
    the 5-8 us of setting and restoring its thread counts.

    A class, not a generator-based context manager, and the threading
    layer looked up once: entering and leaving a section took 4.7 us
    without BLAS and 15.4 us with (two OpenBLAS threads set to one and
    back) that way, 0.8 and 6.2 us now.
    """

    __slots__ = ("_blas_threads", "_restore", "_locked")

    def __init__(self, blas_threads=1):
        self._blas_threads = blas_threads
        self._restore = []
        self._locked = False

    def __enter__(self):
        if self._blas_threads is not None:
            for library in _blas_libraries():
                threads = library.get_num_threads()
                if threads != self._blas_threads:
                    # Recorded before setting: a failure half-way restores what was changed.
                    self._restore.append((library, threads))
                    try:
                        library.set_num_threads(self._blas_threads)
                    except BaseException:
                        self.__exit__(None, None, None)
                        raise
        self._locked = _needs_lock()
        if self._locked:
            _WORKQUEUE_LOCK.acquire()
        return self

    def __exit__(self, exc_type, exc, traceback):
        if self._locked:
            _WORKQUEUE_LOCK.release()
            self._locked = False
        for library, threads in reversed(self._restore):
            library.set_num_threads(threads)
        self._restore.clear()


def _blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries loaded (found once).

    Calling them directly costs a few microseconds; a fresh
    ``threadpool_limits`` context re-inspects every library each time (about
    60 us, a quarter of a one-sequence LSTM forward pass).
    """
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        # Numba calls the BLAS that SciPy ships; load it before looking.
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController().select(user_api="blas").lib_controllers
    return _BLAS_CONTROLLER


#: Recurrent weights larger than this (bytes) no longer sit in a core's L2
#: cache: every chunk would stream them from L3 at every step.
LARGE_WEIGHTS = 1 << 20


#: Samples per task with large weights (`batch_plan`).
LARGE_CHUNK = 4


def batch_plan(n_samples, weight_bytes):
    """Samples per prange task: how a batch is parallelised.

    Small weights: about 16 tasks of at least 16 samples each (so the
    per-step products stay efficient); a function of the batch size alone,
    so results are identical for any thread count.  Measured on 2 cores, a
    training step with chunks of 16 against 8 samples: LSTM H=128 B=32
    T=100, 25 against 36 ms; GRU H=256 B=32, 57 against 84 ms; LSTM H=32
    B=32, 2.4 against 4.0 ms.
    Weights beyond the L2 cache: tasks of `LARGE_CHUNK` samples, which
    stream the recurrent weights from L3 at every step however many samples
    share them, while the input projection and the weight gradients are
    whole-batch GEMMs split between the threads by rows
    (``_kernels.layers``), so that no task packs the weights for a few rows.
    There a row's rounding in those GEMMs depends on the batch size and
    the thread count.

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
        return min(n_samples, LARGE_CHUNK)
    return min(n_samples, max(16, -(-n_samples // 16)))
