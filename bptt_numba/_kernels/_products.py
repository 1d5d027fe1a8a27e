"""The matrix products of the kernels, ``out = a @ b`` by a weight matrix ``b``, without BLAS.

OpenBLAS 0.3.30 (what Numba calls) packs both operands at every call, which
dominates the small products of a time step: (16, 64) @ (64, 256) took
15.6 us in BLAS here against 7.9 us in a Numba loop.

- The recurrent products: the kernels get ``W_hh`` packed once per call in
  panels of `PANEL_VECTORS` SIMD vectors of columns, each contiguous
  (`pack_panels`), and `panel_matmul` keeps a tile of 4 rows of ``out`` by
  one panel (or one row by `ROW_PANELS` panels) in SIMD registers over the
  whole inner dimension, streaming the panels in order, and stores it
  once.  The tiles are LLVM vector code written with llvmlite (an
  ``intrinsic``): Numba disables LLVM's SLP vectoriser, which is what would
  keep scalar accumulators in vector registers.  Every element is the chain of fused multiply-adds ``acc =
  fma(a[i, k], b[k, j], acc)`` for ``k = 0, 1, ...`` from 0.
- The input projection of a chunk's steps, many rows by ``W_ih^T`` read as
  it is, plus the bias (and the network's head): `affine`, tiles of the
  same kind over ``b``'s rows.
- A chunk's weight gradients over narrow inputs or states, ``d.T @ x``
  over all its steps: `gradient_matmul`, a sum of outer products in
  vector tiles (``_recurrence.NARROW_GRADIENT``; wider ones are BLAS).

Either computes every output row by the same arithmetic whatever the other
rows of the call and its position among them, so a sample's outputs do not
depend on the rest of its batch.  BLAS gives no such promise (OpenBLAS
rounded 16 equal rows 3 different ways).

Every recurrent weight is packed, whatever its size, so the kernels
compile one product for it: in alternating fresh processes with an empty
cache a first LSTM fit compiled in 27-33 s (median 29.6 s of 5) against
39-45 s (39.0 s) with the register tiles for short rows, explicit-FMA
streamed rows and panels only from 64 KiB that came before (2e1b9d7), and
25-31 s (26.6 s) before any of them (5f9378a), at the same step times
within 5% (the one-row tile over `ROW_PANELS` panels, added after, left
it at 28.3 s against 30.2 s, median of 3).

Vectors are 32 bytes (8 float32 or 4 float64, AVX2); LLVM splits or widens
them for other targets.  ``llvm.fma`` is one instruction on CPUs with FMA
(x86-64 since 2013, ARM64), a library call elsewhere.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba import prange
from numba.extending import intrinsic, register_jitable

from .._config import kernel

#: Bytes of one SIMD vector of the tiles.
VECTOR_BYTES = 32

#: Vectors across one panel of packed weights (`pack_panels`).
PANEL_VECTORS = 3


_FLOATS = (types.float32, types.float64)


def _fma_function(builder, vector_type, dtype, lanes):
    suffix = "f32" if dtype == types.float32 else "f64"
    function_type = ir.FunctionType(vector_type, [vector_type] * 3)
    return cgutils.get_or_insert_function(builder.module, function_type, f"llvm.fma.v{lanes}{suffix}")


class _VectorOps:
    """What the tiles' code generation shares: their ``n_arrays`` arrays, the vector type and its helpers."""

    def __init__(self, context, builder, sig, args, n_arrays=3):
        self.context, self.builder, self.types = context, builder, sig.args[:n_arrays]
        self.arrays = [context.make_array(ty)(context, builder, value) for ty, value in zip(self.types, args)]
        dtype = sig.args[0].dtype
        self.float_type = context.get_value_type(dtype)
        self.size = context.get_abi_sizeof(self.float_type)
        self.lanes = VECTOR_BYTES // self.size
        self.vector_type = ir.VectorType(self.float_type, self.lanes)
        self.fused = _fma_function(builder, self.vector_type, dtype, self.lanes)
        self.intp = context.get_value_type(types.intp)

    def pointer(self, which, *index):
        """Pointer to an element of array ``which`` (0, 1, ...)."""
        array, ty = self.arrays[which], self.types[which]
        shape = cgutils.unpack_tuple(self.builder, array.shape)
        strides = cgutils.unpack_tuple(self.builder, array.strides)
        return cgutils.get_item_pointer2(self.context, self.builder, array.data, shape, strides, ty.layout, index)

    def vector_at(self, start, v):
        """Pointer to the ``v``-th vector from ``start``."""
        offset = self.builder.gep(start, [ir.Constant(self.intp, v * self.lanes)])
        return self.builder.bitcast(offset, self.vector_type.as_pointer())

    def splat(self, value):
        """A vector of ``value`` in every lane."""
        undefined = ir.Constant(self.vector_type, ir.Undefined)
        first = self.builder.insert_element(undefined, value, ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), self.lanes), [0] * self.lanes)
        return self.builder.shuffle_vector(first, undefined, mask)

    def load_vectors(self, start, n):
        """The ``n`` vectors from ``start``."""
        return [self.builder.load(self.vector_at(start, v), align=self.size) for v in range(n)]

    def store_vectors(self, sums, start):
        """Store the accumulators ``sums`` as the vectors from ``start``."""
        for v, total in enumerate(sums):
            self.builder.store(self.builder.load(total), self.vector_at(start, v), align=self.size)

    def accumulators(self, initial, n_sets):
        """``n_sets`` sets of accumulators, each starting from the vectors ``initial``."""
        return [[cgutils.alloca_once_value(self.builder, value) for value in initial] for _ in range(n_sets)]

    def accumulate(self, n_inner, scalars_at, vectors_at, sums):
        """The loop every tile runs: for ``k`` in ``0 .. n_inner``, ``sums[s][v] = fma(x_s, y_v, sums[s][v])``.

        ``x_s`` is the element at the ``s``-th pointer of ``scalars_at(k)``
        in every lane, ``y_v`` the ``v``-th vector of ``vectors_at(k)``:
        one chain of fused multiply-adds per accumulator, ``k`` in order.
        """
        with cgutils.for_range(self.builder, n_inner) as loop:
            vectors = vectors_at(loop.index)
            for s, pointer in enumerate(scalars_at(loop.index)):
                x = self.splat(self.builder.load(pointer))
                for v, y in enumerate(vectors):
                    total = sums[s][v]
                    self.builder.store(self.builder.call(self.fused, [x, y, self.builder.load(total)]), total)


def _tile(rows, n_panels):
    """An intrinsic ``tile(a, panels, out, i0, p0)``: rows ``i0 .. i0 + rows`` of ``out`` over panels ``p0 .. p0 + n_panels``.

    ``panels`` is ``b`` packed by `pack_panels`; ``out`` has room for all
    their columns.  ``a``, ``panels`` and ``out`` are C-ordered, of one
    float dtype; the tile must lie inside them (not checked).  The
    ``rows * n_panels * PANEL_VECTORS`` sums are independent chains of
    fused multiply-adds, as many as the CPU needs in flight to hide their
    latency: 12 for 4 rows by one panel or one row by 4 panels.
    """
    vectors = PANEL_VECTORS

    def typer(typingctx, a, panels, out, i0, p0):
        shapes = ((a, 2), (panels, 3), (out, 2))
        if not all(isinstance(x, types.Array) and x.ndim == ndim and x.layout == "C" for x, ndim in shapes):
            return None
        if a.dtype not in _FLOATS or not a.dtype == panels.dtype == out.dtype:
            return None
        return types.void(a, panels, out, types.intp, types.intp), codegen

    def codegen(context, builder, sig, args):
        ops = _VectorOps(context, builder, sig, args)
        i0, p0 = args[3], args[4]
        intp = ops.intp
        zero = ir.Constant(ops.vector_type, [ir.Constant(ops.float_type, 0.0)] * ops.lanes)
        sums = ops.accumulators([zero] * (n_panels * vectors), rows)
        row = [builder.add(i0, ir.Constant(intp, r)) for r in range(rows)]
        panel = [builder.add(p0, ir.Constant(intp, q)) for q in range(n_panels)]
        zero_index = ir.Constant(intp, 0)

        def panel_vectors(k):
            starts = [ops.pointer(1, panel[q], k, zero_index) for q in range(n_panels)]
            return [y for start in starts for y in ops.load_vectors(start, vectors)]

        n_inner = cgutils.unpack_tuple(builder, ops.arrays[0].shape)[1]
        ops.accumulate(n_inner, lambda k: [ops.pointer(0, i, k) for i in row], panel_vectors, sums)
        first_column = builder.mul(p0, ir.Constant(intp, vectors * ops.lanes))
        for r in range(rows):
            ops.store_vectors(sums[r], ops.pointer(2, row[r], first_column))
        return context.get_dummy_value()

    return intrinsic(typer)


#: Panels one row takes at a time (`panel_matmul`).
ROW_PANELS = 4

_block = _tile(4, 1)
_row = _tile(1, ROW_PANELS)
_row_panel = _tile(1, 1)


#: Columns of ``x`` one tile of `gradient_matmul` takes.
GRADIENT_COLUMNS = 4

#: Rows a block of `gradient_matmul` takes: the slices of ``d`` its tiles
#: read (two cache lines a row) stay in L1 across the columns beside those
#: of ``x``.  256 rows filled the 32 KiB L1 with ``d`` alone: measured in
#: one process against 128 (alternating calls, one core), (448, 256) by
#: (448, 64), an LSTM H=64 chunk's ``W_hh`` gradient, took 8% longer,
#: (1600, 192) by (1600, 64) 12%, (3200, 32) by (3200, 8) 19%.
GRADIENT_ROWS = 128


def _gradient_tile(n_vectors):
    """An intrinsic ``tile(d, x, sums, i0, j0)`` of `gradient_matmul`.

    ``sums[j0 + c, i0 : i0 + n_vectors * lanes] += sum_r x[r, j0 + c] *
    d[r, i0 : ...]`` for the `GRADIENT_COLUMNS` columns ``c``: a row of
    ``d`` loaded as vectors, each element of ``x``'s row broadcast, 12
    independent chains of fused multiply-adds for 3 vectors.  All three
    arrays are C-ordered, of one float dtype, and the tile lies inside them
    (not checked).
    """
    columns = GRADIENT_COLUMNS

    def typer(typingctx, d, x, sums, i0, j0):
        if not all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in (d, x, sums)):
            return None
        if d.dtype not in _FLOATS or not d.dtype == x.dtype == sums.dtype:
            return None
        return types.void(d, x, sums, types.intp, types.intp), codegen

    def codegen(context, builder, sig, args):
        ops = _VectorOps(context, builder, sig, args)
        i0, j0 = args[3], args[4]
        intp = ops.intp
        col = [builder.add(j0, ir.Constant(intp, c)) for c in range(columns)]
        sums = [ops.accumulators(ops.load_vectors(ops.pointer(2, col[c], i0), n_vectors), 1)[0] for c in range(columns)]

        def x_row(r):
            start = ops.pointer(1, r, j0)
            return [builder.gep(start, [ir.Constant(intp, c)]) for c in range(columns)]

        n_rows = cgutils.unpack_tuple(builder, ops.arrays[0].shape)[0]
        ops.accumulate(n_rows, x_row, lambda r: ops.load_vectors(ops.pointer(0, r, i0), n_vectors), sums)
        for c in range(columns):
            ops.store_vectors(sums[c], ops.pointer(2, col[c], i0))
        return context.get_dummy_value()

    return intrinsic(typer)


#: Vectors of outputs one wide tile of `gradient_matmul` takes (12 chains).
GRADIENT_VECTORS = 3

_gradient_wide = _gradient_tile(GRADIENT_VECTORS)
# For the outputs past the wide tiles: 8 chains, where two one-vector tiles
# of 4 waited on their multiply-adds (the 16 left of an LSTM H=64's 256
# gates: that gradient 3-5% faster).
_gradient_pair = _gradient_tile(2)
_gradient_narrow = _gradient_tile(1)


@register_jitable
def gradient_matmul(d, x, out):
    """``out = d.T @ x`` over a long inner dimension: a chunk's weight gradients over its steps.

    ``x`` is narrow there (a layer's few inputs, or a small layer's states)
    and OpenBLAS 0.3.30 ran such products at 9-58 GFLOP/s on one core here,
    against 80-110 for wide ones.  Here it is a sum of outer products:
    tiles of 24 columns of ``out^T`` by 4 of ``x``, whose rows stream by
    `GRADIENT_ROWS` at a time (``x``'s copied, padded to whole tiles, and
    ``d``'s as they are), each element one chain of fused multiply-adds
    over the rows in order.

    Parameters
    ----------
    d : ndarray of shape (R, M), C-ordered
    x : ndarray of shape (R, N), C-ordered
    out : ndarray of shape (M, N), C-ordered
        Written.
    """
    n_rows, n_out = d.shape
    n_cols = x.shape[1]
    lanes = VECTOR_BYTES // d.itemsize
    wide = GRADIENT_VECTORS * lanes
    padded = -(-n_cols // GRADIENT_COLUMNS) * GRADIENT_COLUMNS
    sums = np.zeros((padded, n_out), dtype=out.dtype)
    block = np.zeros((min(GRADIENT_ROWS, n_rows), padded), dtype=out.dtype)
    n_wide = n_out - n_out % wide
    n_vectors = n_out - n_out % lanes
    n_pairs = n_wide + (n_vectors - n_wide) // (2 * lanes) * 2 * lanes
    for r0 in range(0, n_rows, GRADIENT_ROWS):
        r1 = min(n_rows, r0 + GRADIENT_ROWS)
        xb = block[: r1 - r0]
        for r in range(r1 - r0):
            source, target = x[r0 + r], xb[r]
            for j in range(n_cols):
                target[j] = source[j]
        db = d[r0:r1]
        for i in range(0, n_wide, wide):
            for j in range(0, padded, GRADIENT_COLUMNS):
                _gradient_wide(db, xb, sums, i, j)
        for i in range(n_wide, n_pairs, 2 * lanes):
            for j in range(0, padded, GRADIENT_COLUMNS):
                _gradient_pair(db, xb, sums, i, j)
        for i in range(n_pairs, n_vectors, lanes):
            for j in range(0, padded, GRADIENT_COLUMNS):
                _gradient_narrow(db, xb, sums, i, j)
        for i in range(n_vectors, n_out):
            for j in range(n_cols):
                total = sums[j, i]
                for r in range(r1 - r0):
                    total += db[r, i] * xb[r, j]
                sums[j, i] = total
    for i in range(n_out):
        row = out[i]
        for j in range(n_cols):
            row[j] = sums[j, i]


def _affine_tile(rows, n_vectors):
    """An intrinsic ``tile(a, b, out, bias, i0, j0)`` of `affine`.

    ``out[i, j0 : j0 + n_vectors * lanes] = bias[j0 : ...] + sum_k a[i, k] *
    b[k, j0 : ...]`` for the ``rows`` rows from ``i0``: ``b``'s row segment
    loaded as vectors, ``a``'s element broadcast, ``rows * n_vectors``
    independent chains of fused multiply-adds from the bias, for ``k = 0, 1,
    ...`` in order, held in registers and stored once.  All four arrays
    are C-ordered, of one float dtype, and the tile lies inside them (not
    checked).
    """

    def typer(typingctx, a, b, out, bias, i0, j0):
        shapes = ((a, 2), (b, 2), (out, 2), (bias, 1))
        if not all(isinstance(x, types.Array) and x.ndim == ndim and x.layout == "C" for x, ndim in shapes):
            return None
        if a.dtype not in _FLOATS or not a.dtype == b.dtype == out.dtype == bias.dtype:
            return None
        return types.void(a, b, out, bias, types.intp, types.intp), codegen

    def codegen(context, builder, sig, args):
        ops = _VectorOps(context, builder, sig, args, n_arrays=4)
        i0, j0 = args[4], args[5]
        sums = ops.accumulators(ops.load_vectors(ops.pointer(3, j0), n_vectors), rows)
        row = [builder.add(i0, ir.Constant(ops.intp, r)) for r in range(rows)]
        n_inner = cgutils.unpack_tuple(builder, ops.arrays[0].shape)[1]
        ops.accumulate(
            n_inner, lambda k: [ops.pointer(0, i, k) for i in row],
            lambda k: ops.load_vectors(ops.pointer(1, k, j0), n_vectors), sums,
        )
        for r in range(rows):
            ops.store_vectors(sums[r], ops.pointer(2, row[r], j0))
        return context.get_dummy_value()

    return intrinsic(typer)


_affine_block = _affine_tile(4, PANEL_VECTORS)
_affine_row = _affine_tile(1, PANEL_VECTORS)
_affine_vector_block = _affine_tile(4, 1)
_affine_vector_row = _affine_tile(1, 1)

#: Rows of ``a`` `affine` takes at a time: their outputs stay in cache while
#: the tiles pass over every column.  Measured on one core, interleaved
#: against blocks of 16 and 256: within 10% of each other on every shape.
AFFINE_ROWS = 64


@register_jitable
def affine(a, b, bias, out):
    """``out = a @ b + bias`` with ``b`` as it is: the input projection of a chunk.

    Tiles of 4 rows by `PANEL_VECTORS` vectors of columns (12 chains of
    fused multiply-adds in registers), read straight from ``b``'s rows, so
    ``W_ih^T`` needs no packing; then one-vector tiles and a scalar loop
    for the columns left over, one-row tiles for the rows left over.  On
    one core here, interleaved, against the four-row loop LLVM vectorised
    that came before (and a pass adding the bias): a chunk's projection
    (448, 28) @ (28, 256) 0.61-0.68x the time, (1600, 32) @ (32, 512)
    0.62-0.70x, (1600, 8) @ (8, 128) 0.54-0.60x, one sequence (100, 8) @
    (8, 256) 0.60-0.72x, (3200, 4) @ (4, 192) 0.82-1.13x (writing the
    output is what it waits on there).

    Every output row is computed by the same arithmetic whatever its
    position, alone or among others, so a sample's outputs do not depend on
    the rest of its batch.  BLAS gives no such promise: OpenBLAS rounds a
    row by its position in the call (16 equal rows gave 3 different
    results).

    Parameters
    ----------
    a : ndarray of shape (M, K), C-ordered
    b : ndarray of shape (K, N), C-ordered
    bias : ndarray of shape (N,)
    out : ndarray of shape (M, N), C-ordered
        Written.
    """
    n_rows, inner = a.shape
    n_out = b.shape[1]
    lanes = VECTOR_BYTES // a.itemsize
    wide = PANEL_VECTORS * lanes
    n_wide = n_out - n_out % wide
    n_vectors = n_out - n_out % lanes
    for r0 in range(0, n_rows, AFFINE_ROWS):
        r1 = min(n_rows, r0 + AFFINE_ROWS)
        rows4 = r1 - (r1 - r0) % 4
        for j in range(0, n_wide, wide):
            for i in range(r0, rows4, 4):
                _affine_block(a, b, out, bias, i, j)
            for i in range(rows4, r1):
                _affine_row(a, b, out, bias, i, j)
        for j in range(n_wide, n_vectors, lanes):
            for i in range(r0, rows4, 4):
                _affine_vector_block(a, b, out, bias, i, j)
            for i in range(rows4, r1):
                _affine_vector_row(a, b, out, bias, i, j)
        for i in range(r0, r1):
            a_i, out_i = a[i], out[i]
            for j in range(n_vectors, n_out):
                total = bias[j]
                for k in range(inner):
                    total += a_i[k] * b[k, j]
                out_i[j] = total


def packed(w, transposed, parallel):
    """New panels of ``b = w.T if transposed else w`` (see `pack_panels`).

    ``parallel`` packs over the threads: 0.5-0.8 ms for a 2048 x 512
    float32 matrix on 2 cores, where NumPy took 4.6 ms to transpose it;
    weights too small to pay for a parallel region are packed on this
    thread.  The product's output then needs ``panels.shape[0] *
    panels.shape[2]`` columns.
    """
    return (pack_panels if parallel else pack_panels_serial)(w, transposed)


@kernel
def aligned_empty(size, dtype):
    """An uninitialised 1-D array of ``size`` elements whose data start on a `VECTOR_BYTES` boundary.

    Numba aligns its arrays so, NumPy to 16 bytes only, and half the
    vectors a tile loads from a NumPy array may straddle two cache lines; a
    process's buffers land either way, and stay so call after call.
    Measured on the kernels, their arrays 16 bytes past a boundary against
    on one (interleaved, 2 threads): the forward pass of one LSTM H=64
    sequence (T=100) took 8% longer with the panels of `pack_panels` so
    placed, one GRU's 9%; the backward pass of an LSTM H=64 B=64 T=28 layer
    14% longer with its tape so placed, of a GRU H=64 B=16 T=200 3%.  The
    same bits either way.

    Parameters
    ----------
    size : int
    dtype : numpy.dtype

    Returns
    -------
    ndarray of shape (size,)
    """
    return np.empty(size, dtype)


@register_jitable
def _empty_panels(w, transposed):
    """Uninitialised panels for `pack_panels` (aligned: see `aligned_empty`)."""
    width = PANEL_VECTORS * VECTOR_BYTES // w.itemsize
    n_cols, n_inner = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    return np.empty((-(-n_cols // width), n_inner, width), dtype=w.dtype)


@kernel(parallel=True)
def pack_panels(w, transposed):
    """Cut ``b = w.T if transposed else w`` into panels of `PANEL_VECTORS` SIMD vectors of columns, each contiguous: the layout `panel_matmul` reads.

    A tile then streams its panel in order, where a strip of a row-major
    ``b`` is a short piece of each of its rows: for the 4 MiB of recurrent
    weights of an LSTM H=512 (streamed from L3 at every step), a chunk's
    product (4, 512) @ (512, 2048) took 178 us streamed (a loop over ``b``'s rows) against
    95 us in panels, four chunks on 2 cores.  Columns past ``b``'s are
    zero.  The panels are split between the threads (`pack_panels_serial`
    for weights too small to pay for a parallel region).

    Parameters
    ----------
    w : ndarray of shape (N, K) if ``transposed``, else (K, N)
        PyTorch's ``W_hh`` for either product (forward ``W_hh.T``, backward
        ``W_hh``): one compiled packer for both, where passing ``W_hh.T``
        would compile a second one for its F order (0.8 s from an empty
        cache).
    transposed : bool

    Returns
    -------
    panels : ndarray of shape (ceil(N / width), K, width), C-ordered
    """
    panels = _empty_panels(w, transposed)
    for p in prange(panels.shape[0]):
        _pack_panel(w, transposed, panels, p)
    return panels


@kernel
def pack_panels_serial(w, transposed):
    """`pack_panels` on one thread."""
    panels = _empty_panels(w, transposed)
    for p in range(panels.shape[0]):
        _pack_panel(w, transposed, panels, p)
    return panels


@register_jitable
def _pack_panel(w, transposed, panels, p):
    """Panel ``p`` of `pack_panels`."""
    n_inner, width = panels.shape[1:]
    first = p * width
    stop = min(width, (w.shape[0] if transposed else w.shape[1]) - first)
    panel = panels[p]
    panel[:, stop:] = 0
    # Each element of ``w`` read along its rows: a row-major W (backward)
    # packed column by column took 2.8 ms instead of 0.8 (2048 x 512).
    if transposed:
        for c in range(stop):
            row = w[first + c]
            for k in range(n_inner):
                panel[k, c] = row[k]
    else:
        # Views indexed from 0: ``row[first + c]`` kept Numba's wraparound
        # check and the copy scalar (an LSTM's W_hh took 14.3 against 7.7 us at
        # H=64, 47 against 16 at H=128).
        for k in range(n_inner):
            row = w[k, first : first + stop]
            out = panel[k]
            for c in range(stop):
                out[c] = row[c]


@register_jitable
def panel_matmul(a, panels, out, backwards):
    """``out = a @ b`` for a ``b`` packed by `pack_panels`.

    Each group of `ROW_PANELS` panels stays in cache while every block of 4
    rows of ``a`` passes over each of its panels, then each row left over
    all of them at once.  One panel at a time, a row's 3 chains of
    multiply-adds waited on each other: measured against that (in-process
    A/B, 2 threads), an LSTM H=512 B=2 T=25 training step took 16% less,
    predicting one H=512 sequence 4-9% less and three H=256 sequences 8%
    less; H=64 with B=1 the same.  Every element is the same chain of fused
    multiply-adds whichever tile computes it, and in whichever order the
    groups come.

    Parameters
    ----------
    a : ndarray of shape (M, K), C-ordered
    panels : ndarray of shape (P, K, width), C-ordered
    out : ndarray of shape (M, P * width), C-ordered
        Written, the columns past ``b``'s with zeros.
    backwards : bool
        Take the groups from the last: a time loop alternates, so that each
        step starts on the panels the step before it left in L1.  One row
        by 64 KiB of weights (an LSTM H=64 predicting one sequence), which
        streams them from L2, took 0.84 instead of 1.0 us a step, with the
        same bits.
    """
    n_rows = a.shape[0]
    n_panels = panels.shape[0]
    rows4 = n_rows - n_rows % 4
    n_groups = -(-n_panels // ROW_PANELS)
    for group in range(n_groups):
        p0 = (n_groups - 1 - group if backwards else group) * ROW_PANELS
        stop = min(p0 + ROW_PANELS, n_panels)
        for p in range(p0, stop):
            for i in range(0, rows4, 4):
                _block(a, panels, out, i, p)
        for i in range(rows4, n_rows):
            if stop - p0 == ROW_PANELS:
                _row(a, panels, out, i, p0)
            else:
                for p in range(p0, stop):
                    _row_panel(a, panels, out, i, p)
