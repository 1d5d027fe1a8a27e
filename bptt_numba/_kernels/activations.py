"""Numerically stable scalar activations and their derivatives for the kernels.

Each helper is a plain NumPy function (usable and testable from Python) with a
Numba overload that is inlined into the kernels.  The overloads build their
constants in the argument's own float type: a bare ``1.0`` literal is float64
in Numba and would silently promote float32 gate math to float64.
"""

import numpy as np
from numba import types
from numba.extending import overload
from numba.np.numpy_support import as_dtype


def sigmoid(x):
    """Logistic function, written through tanh so it cannot overflow."""
    return 0.5 * np.tanh(0.5 * x) + 0.5


def dsigmoid(x):
    """Derivative of the logistic function, from its output ``x``."""
    return x * (1.0 - x)


def dtanh(x):
    """Derivative of tanh, from its output ``x``."""
    return 1.0 - x * x


def relu(x):
    """Rectified linear unit."""
    return x if x > 0.0 else 0.0 * x


def drelu(x):
    """Derivative of the ReLU, from its output ``x`` (0 at the kink)."""
    return 1.0 if x > 0.0 else 0.0


def one_minus(x):
    """``1 - x`` in the type of ``x``."""
    return 1.0 - x


def _float_overload(func, make_impl):
    """Register ``make_impl(zero, half, one)`` as ``func``'s float overload."""

    @overload(func, inline="always")
    def _overload(x):
        if isinstance(x, types.Float):
            kind = as_dtype(x).type
            return make_impl(kind(0.0), kind(0.5), kind(1.0))
        return None

    return _overload


_float_overload(sigmoid, lambda zero, half, one: lambda x: half * np.tanh(half * x) + half)
_float_overload(dsigmoid, lambda zero, half, one: lambda x: x * (one - x))
_float_overload(dtanh, lambda zero, half, one: lambda x: one - x * x)
_float_overload(relu, lambda zero, half, one: lambda x: x if x > zero else zero)
_float_overload(drelu, lambda zero, half, one: lambda x: one if x > zero else zero)
_float_overload(one_minus, lambda zero, half, one: lambda x: one - x)
