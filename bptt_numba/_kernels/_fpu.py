"""Flush denormals to zero inside the kernels (x86-64).

Values below ~1e-38 (float32) are "denormal": the CPU handles them in
microcode, up to a hundred times slower.  Recurrent training produces them
(vanishing gradients, saturated gates), and then whole steps slow down: the
same step in PyTorch ran 7 to 17 times slower here until it flushed them.
The kernels set the MXCSR register's flush-to-zero and denormals-are-zero
bits at the start of each parallel task (the register is per thread) and
restore it at the end, so code around them is unaffected.  Results change
only where a value would have been denormal.
"""

import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, register_jitable

#: MXCSR bits: flush-to-zero (15) and denormals-are-zero (6).
_FTZ_DAZ = np.uint32(0x8040)


def _mxcsr_intrinsic(name, signature):
    """An intrinsic calling ``llvm.x86.sse.{name}`` on a 32-bit slot."""

    def generate(typingctx, *args):
        def codegen(context, builder, sig, values):
            slot = builder.alloca(ir.IntType(32))
            if values:
                builder.store(values[0], slot)
            fnty = ir.FunctionType(ir.VoidType(), [ir.PointerType(ir.IntType(8))])
            function = builder.module.declare_intrinsic(f"llvm.x86.sse.{name}", fnty=fnty)
            builder.call(function, [builder.bitcast(slot, ir.PointerType(ir.IntType(8)))])
            return builder.load(slot) if not values else context.get_dummy_value()

        return signature, codegen

    return generate


if platform.machine().lower() in ("x86_64", "amd64"):
    _read_csr = intrinsic(lambda typingctx: _mxcsr_intrinsic("stmxcsr", types.uint32())(typingctx))
    _write_csr = intrinsic(lambda typingctx, value: _mxcsr_intrinsic("ldmxcsr", types.void(types.uint32))(typingctx, value))

    @register_jitable(inline="always")
    def flush_denormals():
        """Set flush-to-zero and denormals-are-zero; returns the previous state."""
        previous = _read_csr()
        _write_csr(previous | _FTZ_DAZ)
        return previous

    @register_jitable(inline="always")
    def restore_fpu(previous):
        """Restore the state `flush_denormals` returned."""
        _write_csr(previous)

else:  # other CPUs keep their default (ARM flushes through FPCR, not set here)

    @register_jitable(inline="always")
    def flush_denormals():
        """No-op off x86-64."""
        return np.uint32(0)

    @register_jitable(inline="always")
    def restore_fpu(previous):
        """No-op off x86-64."""
