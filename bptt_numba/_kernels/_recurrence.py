"""Time-index bookkeeping shared by the recurrent kernels.

States live in time-major buffers of ``T + 1`` slots.  A forward-direction
layer keeps its initial state in slot 0 and the state after step ``t`` in slot
``t + 1``; a reverse-direction layer keeps its initial state in slot ``T`` and
the state after step ``t`` in slot ``t``.  Either way the layer's output at
step ``t`` and the state it read are contiguous slices of one buffer.
"""

from numba.extending import register_jitable


@register_jitable(inline="always")
def step_slots(s, n_steps, reverse):
    """Time index and state slots of the ``s``-th step in processing order.

    Returns
    -------
    t : int
        Time index of the step.
    prev : int
        Slot holding the state the step reads.
    new : int
        Slot the step writes its state to.
    """
    if reverse:
        t = n_steps - 1 - s
        return t, t + 1, t
    return s, s, s + 1


@register_jitable(inline="always")
def crosses_border(t, reverse, t_offset, truncate):
    """Whether the recurrent edge out of step ``t`` crosses a truncation border.

    The edge joins step ``t`` to the next step in processing order.  Borders
    sit before the absolute times ``truncate, 2 * truncate, ...``; ``truncate``
    of 0 means no borders (full BPTT).
    """
    if truncate <= 0:
        return False
    later = t + t_offset if reverse else t + 1 + t_offset
    return later % truncate == 0


def check_buffers(*arrays):
    """Raise if the buffers handed to a kernel would force a new compilation.

    Every buffer must be C-contiguous and share one float dtype: a strided
    view or a stray float64 array would silently compile (and run) another
    specialisation of the kernel.
    """
    dtype = arrays[0].dtype
    for array in arrays:
        if array.dtype != dtype or not array.flags.c_contiguous:
            raise TypeError(
                f"kernel buffers must be C-contiguous {dtype}; got {array.dtype} "
                f"with shape {array.shape} (contiguous={array.flags.c_contiguous})"
            )
