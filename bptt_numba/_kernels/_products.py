"""The small matrix products of the kernels, ``out = a @ b``, without BLAS.

OpenBLAS 0.3.30 (what Numba calls) packs both operands at every call, which
dominates the products of a time step: (16, 64) @ (64, 256) took 15.6 us in
BLAS here against 7.9 us in a Numba loop.  `matmul` has two ways:

- register tiles (`_tiled_rows`): a tile of 4 rows of ``out`` by up to 3
  SIMD vectors stays in registers over the whole inner dimension and is
  stored once.  They are LLVM vector code written with llvmlite (an
  ``intrinsic``): Numba disables LLVM's SLP vectoriser, which is what would
  keep scalar accumulators in vector registers.
- streamed rows (`_streamed_rows`): each row segment of ``b`` loaded feeds
  up to 4 rows of ``out``, in a loop over the columns that LLVM vectorises;
  ``b`` is read in its own order, which is what weights streamed from L3
  need.

Both compute every output element by the same chain of fused multiply-adds,
``acc = fma(a[i, k], b[k, j], acc)`` for ``k = 0, 1, ...`` from 0, so a
row's result does not depend on the way, on the other rows of the call, nor
on its position among them: a sample's outputs do not depend on the rest of
its batch.  BLAS gives no such promise (OpenBLAS rounded 16 equal rows 3
different ways).

Vectors are 32 bytes (8 float32 or 4 float64, AVX2); LLVM splits or widens
them for other targets.  ``llvm.fma`` is one instruction on CPUs with FMA
(x86-64 since 2013, ARM64), a library call elsewhere.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba import prange
from numba.extending import intrinsic, register_jitable

from .._config import LARGE_WEIGHTS, kernel

#: Bytes of one SIMD vector of the tiles.
VECTOR_BYTES = 32

#: Inner and column sizes up to which tiles are used (either suffices; see
#: `matmul`).
TILED_SIZE = 128

#: Vectors across one panel of packed weights (`pack_panels`).
PANEL_VECTORS = 3

#: Bytes of recurrent weights from which their products read them in panels
#: (`uses_panels`).
PANELS_FROM = 64 << 10

_FLOATS = (types.float32, types.float64)


def _fma_function(builder, value_type, dtype, lanes):
    suffix = "f32" if dtype == types.float32 else "f64"
    name = f"llvm.fma.{suffix}" if lanes == 1 else f"llvm.fma.v{lanes}{suffix}"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(value_type, [value_type] * 3), name)


@intrinsic
def fma(typingctx, x, y, z):
    """``x * y + z`` rounded once (LLVM's ``llvm.fma``), for floats of one type."""
    if x not in _FLOATS or not x == y == z:
        return None

    def codegen(context, builder, sig, args):
        value_type = context.get_value_type(sig.args[0])
        return builder.call(_fma_function(builder, value_type, sig.args[0], 1), args)

    return x(x, y, z), codegen


def _tile(rows, vectors, scalar=False, panel=False):
    """An intrinsic ``tile(a, b, out, i0, j0)``: rows ``i0 .. i0 + rows`` of ``out`` over ``vectors`` vectors from column ``j0``.

    One column instead with ``scalar``.  With ``panel``, ``b`` is one panel
    (see `pack_panels`), read from its column 0.  ``a``, ``b`` and ``out``
    are 2-D, C-ordered, of one float dtype; the tile must lie inside them
    (not checked).
    """

    def typer(typingctx, a, b, out, i0, j0):
        arrays = (a, b, out)
        if not all(isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" for x in arrays):
            return None
        if a.dtype not in _FLOATS or not a.dtype == b.dtype == out.dtype:
            return None
        return types.void(a, b, out, types.intp, types.intp), codegen

    def codegen(context, builder, sig, args):
        dtype = sig.args[0].dtype
        a, b, out = (context.make_array(ty)(context, builder, value) for ty, value in zip(sig.args[:3], args[:3]))
        i0, j0 = args[3], args[4]
        float_type = context.get_value_type(dtype)
        size = context.get_abi_sizeof(float_type)
        lanes = 1 if scalar else VECTOR_BYTES // size
        value_type = float_type if scalar else ir.VectorType(float_type, lanes)
        fused = _fma_function(builder, value_type, dtype, lanes)
        intp = context.get_value_type(types.intp)
        zero = ir.Constant(float_type, 0.0)
        zero = zero if scalar else ir.Constant(value_type, [zero] * lanes)
        sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(rows)]

        def pointer(array, ty, i, j):
            shape = cgutils.unpack_tuple(builder, array.shape)
            strides = cgutils.unpack_tuple(builder, array.strides)
            return cgutils.get_item_pointer2(context, builder, array.data, shape, strides, ty.layout, [i, j])

        def vector_at(start, v):
            element = builder.gep(start, [ir.Constant(intp, v * lanes)])
            return element if scalar else builder.bitcast(element, value_type.as_pointer())

        def splat(value):
            if scalar:
                return value
            first = builder.insert_element(ir.Constant(value_type, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
            mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            return builder.shuffle_vector(first, ir.Constant(value_type, ir.Undefined), mask)

        row = [builder.add(i0, ir.Constant(intp, r)) for r in range(rows)]
        with cgutils.for_range(builder, cgutils.unpack_tuple(builder, a.shape)[1]) as loop:
            k = loop.index
            start = pointer(b, sig.args[1], k, ir.Constant(intp, 0) if panel else j0)
            b_k = [builder.load(vector_at(start, v), align=size) for v in range(vectors)]
            for r in range(rows):
                a_rk = splat(builder.load(pointer(a, sig.args[0], row[r], k)))
                for v in range(vectors):
                    builder.store(builder.call(fused, [a_rk, b_k[v], builder.load(sums[r][v])]), sums[r][v])
        for r in range(rows):
            start = pointer(out, sig.args[2], row[r], j0)
            for v in range(vectors):
                builder.store(builder.load(sums[r][v]), vector_at(start, v), align=size)
        return context.get_dummy_value()

    return intrinsic(typer)


_tile_3 = _tile(4, 3)
_tile_2 = _tile(4, 2)
_tile_1 = _tile(4, 1)
_tile_column = _tile(4, 1, scalar=True)
_panel_block = _tile(4, PANEL_VECTORS, panel=True)
_panel_row = _tile(1, PANEL_VECTORS, panel=True)


@register_jitable
def matmul(a, b, out):
    """``out = a @ b`` for the products of the kernels (see the module docstring).

    Tiles take the blocks of 4 rows when ``b`` has at most `TILED_SIZE`
    rows or columns (and is not a large weight); streamed rows take the
    rest.  Measured on one core (AVX2), the best of eleven runs of many
    calls, microseconds for streamed rows against tiles: (16, 32) @ (32,
    128) 1.97 against 1.52, (16, 128) @ (128, 32) 2.66 against 1.63, (16,
    64) @ (64, 256) 6.53 against 5.52, (16, 256) @ (256, 64) 9.11 against
    6.18, (16, 64) @ (64, 64) 2.19 against 1.38, (448, 28) @ (28, 256) 108
    against 74, (16, 512) @ (512, 128) 27.8 against 25.7; where both sizes
    pass 128 the tiles do not gain, (16, 256) @ (256, 256) 29.1 against
    29.1, (16, 256) @ (256, 768) 97 against 105, and a large weight
    streamed from L3 needs its rows read in order, (4, 512) @ (512, 2048)
    153 against 215.  One row is streamed: (1, 64) @ (64, 256) 0.69 us.

    Parameters
    ----------
    a : ndarray of shape (M, K), C-ordered
    b : ndarray of shape (K, N), C-ordered
    out : ndarray of shape (M, N), C-ordered
        Written.
    """
    n_rows, inner = a.shape
    n_cols = b.shape[1]
    tiled = 0
    if min(inner, n_cols) <= TILED_SIZE and inner * n_cols * b.itemsize <= LARGE_WEIGHTS:
        tiled = n_rows - n_rows % 4
        _tiled_rows(a, b, out, tiled)
    _streamed_rows(a, b, out, tiled)


@register_jitable
def _tiled_rows(a, b, out, stop):
    """Rows ``0 .. stop`` (a multiple of 4) of ``out = a @ b`` in register tiles, widest first."""
    n_cols = b.shape[1]
    lanes = VECTOR_BYTES // out.itemsize
    for i in range(0, stop, 4):
        j = 0
        while j + 3 * lanes <= n_cols:
            _tile_3(a, b, out, i, j)
            j += 3 * lanes
        if j + 2 * lanes <= n_cols:
            _tile_2(a, b, out, i, j)
            j += 2 * lanes
        if j + lanes <= n_cols:
            _tile_1(a, b, out, i, j)
            j += lanes
        while j < n_cols:
            _tile_column(a, b, out, i, j)
            j += 1


@register_jitable
def _streamed_rows(a, b, out, start):
    """Rows ``start ..`` of ``out = a @ b``: four rows of ``a`` by four rows of ``b`` at a time."""
    n_rows, inner = a.shape
    inner4 = inner - inner % 4
    rows4 = start + (n_rows - start) - (n_rows - start) % 4
    out[start:] = 0
    for i in range(start, rows4, 4):
        o0, o1, o2, o3 = out[i], out[i + 1], out[i + 2], out[i + 3]
        a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        for k in range(0, inner4, 4):
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            x00, x01, x02, x03 = a0[k], a0[k + 1], a0[k + 2], a0[k + 3]
            x10, x11, x12, x13 = a1[k], a1[k + 1], a1[k + 2], a1[k + 3]
            x20, x21, x22, x23 = a2[k], a2[k + 1], a2[k + 2], a2[k + 3]
            x30, x31, x32, x33 = a3[k], a3[k + 1], a3[k + 2], a3[k + 3]
            for j in range(out.shape[1]):
                v0, v1, v2, v3 = b0[j], b1[j], b2[j], b3[j]
                o0[j] = fma(x03, v3, fma(x02, v2, fma(x01, v1, fma(x00, v0, o0[j]))))
                o1[j] = fma(x13, v3, fma(x12, v2, fma(x11, v1, fma(x10, v0, o1[j]))))
                o2[j] = fma(x23, v3, fma(x22, v2, fma(x21, v1, fma(x20, v0, o2[j]))))
                o3[j] = fma(x33, v3, fma(x32, v2, fma(x31, v1, fma(x30, v0, o3[j]))))
        for k in range(inner4, inner):
            bk = b[k]
            x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
            for j in range(out.shape[1]):
                o0[j] = fma(x0, bk[j], o0[j])
                o1[j] = fma(x1, bk[j], o1[j])
                o2[j] = fma(x2, bk[j], o2[j])
                o3[j] = fma(x3, bk[j], o3[j])
    for i in range(rows4, n_rows):
        o0, a0 = out[i], a[i]
        for k in range(0, inner4, 4):
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            x00, x01, x02, x03 = a0[k], a0[k + 1], a0[k + 2], a0[k + 3]
            for j in range(out.shape[1]):
                o0[j] = fma(x03, b3[j], fma(x02, b2[j], fma(x01, b1[j], fma(x00, b0[j], o0[j]))))
        for k in range(inner4, inner):
            bk = b[k]
            x0 = a0[k]
            for j in range(out.shape[1]):
                o0[j] = fma(x0, bk[j], o0[j])


def panel_width(dtype):
    """Columns of one panel of packed weights of ``dtype`` (24 float32, 12 float64)."""
    return PANEL_VECTORS * VECTOR_BYTES // dtype.itemsize


@kernel(parallel=True)
def pack_panels(b, panels):
    """Cut ``b`` into panels of `panel_width` columns, each contiguous: the layout `panel_matmul` reads.

    A tile then streams its panel in order, where a strip of a row-major
    ``b`` is a short piece of each of its rows: for the 4 MiB of recurrent
    weights of an LSTM H=512 (streamed from L3 at every step), a chunk's
    product (4, 512) @ (512, 2048) took 178 us streamed (`matmul`) against
    95 us in panels, four chunks on 2 cores.  Columns past ``b``'s are
    zero.  The panels are split between the threads (`pack_panels_serial`
    for weights too small to pay for a parallel region).

    Parameters
    ----------
    b : ndarray of shape (K, N)
        Any layout (``W.T`` of PyTorch's ``W`` packs without a copy).
    panels : ndarray of shape (ceil(N / width), K, width), C-ordered
        Written.
    """
    for p in prange(panels.shape[0]):
        _pack_panel(b, panels, p)


@kernel
def pack_panels_serial(b, panels):
    """`pack_panels` on one thread."""
    for p in range(panels.shape[0]):
        _pack_panel(b, panels, p)


@register_jitable
def _pack_panel(b, panels, p):
    """Panel ``p`` of `pack_panels`."""
    n_inner, n_cols = b.shape
    width = panels.shape[2]
    panel = panels[p]
    stop = min(width, n_cols - p * width)
    panel[:, stop:] = 0
    # Read ``b`` along its contiguous axis: a row-major W (backward)
    # packed column by column took 2.8 ms instead of 0.8 (2048 x 512).
    if b.strides[1] == b.itemsize:
        for k in range(n_inner):
            for c in range(stop):
                panel[k, c] = b[k, p * width + c]
    else:
        for c in range(stop):
            for k in range(n_inner):
                panel[k, c] = b[k, p * width + c]


@register_jitable
def panel_matmul(a, panels, out):
    """``out = a @ b`` for a ``b`` packed by `pack_panels`, panel by panel.

    Each panel stays in cache while every block of 4 rows of ``a`` (then
    each row left) passes over it.  The same chain of multiply-adds per
    element as `matmul`, so the same bits.

    Parameters
    ----------
    a : ndarray of shape (M, K), C-ordered
    panels : ndarray of shape (P, K, width), C-ordered
    out : ndarray of shape (M, P * width), C-ordered
        Written, the columns past ``b``'s with zeros.
    """
    n_rows = a.shape[0]
    rows4 = n_rows - n_rows % 4
    width = panels.shape[2]
    for p in range(panels.shape[0]):
        panel = panels[p]
        for i in range(0, rows4, 4):
            _panel_block(a, panel, out, i, p * width)
        for i in range(rows4, n_rows):
            _panel_row(a, panel, out, i, p * width)


@register_jitable
def uses_panels(n_inner, n_cols, itemsize):
    """Whether the recurrent weights of a product ``(M, n_inner) @ (n_inner, n_cols)`` come in panels.

    From `PANELS_FROM` bytes, which no longer fit a core's L1 cache: a
    tile's strip of a row-major ``b`` is then a short piece of each of many
    rows fetched from L2 or L3.  Measured on one core, microseconds of
    `matmul` against `panel_matmul`: (16, 64) @ (64, 256) 6.3 against 5.7,
    (16, 128) @ (128, 512) 27.1 against 22.4, (16, 512) @ (512, 128) 29.4
    against 23.8, (16, 256) @ (256, 768) 85 against 65, (16, 768) @ (768,
    256) 95 against 67, one row (1, 64) @ (64, 256) 0.94 against 0.87;
    below it panels lost, (16, 128) @ (128, 32) 1.66 against 2.00, (16,
    192) @ (192, 64) 4.6 against 5.0 (a last panel partly empty), and (1,
    256) @ (256, 64) tied (0.96 against 1.02).
    """
    return n_inner * n_cols * itemsize >= PANELS_FROM


@register_jitable
def recurrent_product(a, w, out, n_cols):
    """``out = a @ b`` by the recurrent weights ``w`` of a kernel, ``b`` having ``n_cols`` columns.

    ``w`` is ``b`` itself as a (1, K, N) array, or its panels when
    `uses_panels` (see ``layers._recurrent_weights``); ``out`` has
    ``w.shape[0] * w.shape[2]`` columns either way.
    """
    if uses_panels(w.shape[1], n_cols, out.itemsize):
        panel_matmul(a, w, out)
    else:
        matmul(a, w[0], out)
