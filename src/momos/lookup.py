"""A Linear layer's product with a mosaic weight, computed from the motifs without the weight.

When every row of a weight ``(out, in)`` is cut into its own ``n = ceil(in / s)`` blocks (runs
of ``s`` values with ``in % s == 0``, runs cut row by row, or tiles of one row), row ``i`` is
``scale_i x (motif[idx[i, 0]], ..., motif[idx[i, n-1]])``, so with ``x`` cut into the same
chunks ``x_j`` (zero-padded to ``n * s`` values)

    P[j, m, b] = x_j[b] . motif_m                  (n, k, B): one small matmul
    y[b, i]    = scale_i x sum_j P[j, idx[i, j], b]  + bias_i

costs ``B * in * k`` multiply-adds plus ``B * out * n`` lookups instead of ``B * in * out``
multiply-adds and a weight of ``out * in`` values: less when the codebook is small (``k`` well
below ``out``) and the batch too small for the matmul to reuse the weight.

The result is the dense product up to the order of the float summation: ``y`` sums the chunks'
products in order ``j = 0 .. n-1``, a BLAS ``F.linear`` in its own order, so both lie within the
usual bound ``in x eps x (|x| @ |W|^T + |bias|)`` of the exact product; they are not bit for bit
equal. Scales are powers of two, so multiplying by them is exact.

Measured (``bench/lookup.py``, one thread): never faster than ``F.linear`` with the dense
weight (at best 2.0x its time: 4096x4096, s=8, k=2,097, one row), and faster than rebuilding the
weight with :func:`momos.packing.gather` first only for small tables (0.33x to 0.85x its time
with ``B x k`` up to about ``out / 2``; slower from about ``out`` on).

On CPU with numba installed (``momos[fast]``) the lookups run in a compiled kernel that reads
the indices in their stored dtype; elsewhere ``torch.embedding_bag`` sums them.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .blocks import BlockLayout
from .kernels import torch_thread_count

try:
    import numba
except ImportError:  # numba is optional; the PyTorch path serves without it
    numba = None

# Output rows per task of the compiled kernel: their accumulators stay in L1/L2 while a
# chunk's table is read; each task reads the whole table once.
TILE_ROWS = 1024


def row_indices(indices: torch.Tensor, layout: BlockLayout) -> torch.Tensor | None:
    """The block indices of a 2-D weight as ``(out, n)``, row ``i`` holding row ``i``'s blocks
    in order; None when blocks span rows (runs with ``in % s != 0``) or tiles span rows.

    ``indices``: ``(num_blocks,)`` of the one tensor of ``layout``.
    """
    shape = layout.shapes[0]
    if len(shape) != 2 or shape[0] == 0:
        return None
    rows, columns = shape
    if layout.is_tiled(0):
        aligned = layout.tile_shape[0] == 1
    else:
        aligned = layout.row_count(0) == rows or columns % layout.block_size == 0
    return indices.view(rows, -1) if aligned else None


def linear(x: torch.Tensor, motifs: torch.Tensor, columns: torch.Tensor,
           exponents: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` for the mosaic weight ``W`` whose block indices are ``columns``
    (see the module notes).

    Args:
        x: ``(..., in)`` floating point.
        motifs: ``(k, s)``, cast to ``x``'s dtype.
        columns: ``(n, out)`` integer (uint8, int16, int32 or int64), ``n = ceil(in / s)``: the
            transpose of :func:`row_indices`, chunk by chunk, so that one chunk's indices of all
            rows are read in a line.
        exponents: ``()`` or ``(out,)`` integer, the scales ``2**e``; or None.
        bias: ``(out,)`` or None.

    Returns:
        ``(..., out)`` in ``x``'s dtype.
    """
    s = motifs.shape[1]
    n, out = columns.shape
    if n != -(-x.shape[-1] // s):
        raise ValueError(f"{n} blocks of {s} values per row do not cover {x.shape[-1]} inputs")
    flat = x.reshape(-1, x.shape[-1])
    chunks = F.pad(flat, (0, n * s - flat.shape[1])).view(-1, n, s)
    # (n, k, B): the B values one index selects are adjacent, read in one go
    table = (chunks.reshape(-1, s) @ motifs.to(x.dtype).T).view(-1, n, len(motifs)).permute(1, 2, 0).contiguous()
    y = _sum_compiled(table, columns) if usable(table) else _sum_torch(table, columns)
    if exponents is not None:
        y = torch.ldexp(y, exponents.to(y.dtype).reshape(-1, 1))
    if bias is not None:
        y = y + bias.reshape(-1, 1)
    return y.T.reshape(*x.shape[:-1], out)


def usable(x: torch.Tensor) -> bool:
    """True when the compiled kernel serves ``x``: numba is installed, ``x`` is float32 or float64
    on the CPU; otherwise :func:`linear` takes the (much slower) ``embedding_bag`` path."""
    return numba is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _sum_torch(table: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``(out, B)``: ``sum_j table[j, columns[j, i]]`` through ``embedding_bag``, one bag per
    output row, its indices shifted to their chunk's part of the flattened table."""
    n, k, batch = table.shape
    offsets = torch.arange(0, n * k, k, device=columns.device).reshape(-1, 1)
    return F.embedding_bag((columns.long() + offsets).T, table.reshape(n * k, batch), mode="sum")


def _sum_compiled(table: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Like :func:`_sum_torch`, in the compiled kernel, on as many threads as torch may use."""
    y = torch.empty(columns.shape[1], table.shape[2], dtype=table.dtype)
    with torch_thread_count():
        _sum_kernel(table.numpy(), columns.contiguous().numpy(), y.numpy(), (0,) * table.shape[2])
    return y


if numba is not None:
    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _sum_kernel(table, columns, y, width):  # pragma: no cover - compiled
        """``y[i, b] = sum_j table[j, columns[j, i], b]``, ``j`` in order; tiles of rows in
        parallel. ``width``: a tuple of length B, so the batch loop is compiled to its length."""
        n, rows = columns.shape
        for t in numba.prange((rows + TILE_ROWS - 1) // TILE_ROWS):
            rows_t = y[t * TILE_ROWS:(t + 1) * TILE_ROWS]
            rows_t[:] = 0
            # chunk by chunk: one chunk's (k, B) table stays in cache while the tile reads it
            for j in range(n):
                chunk = table[j]
                line = columns[j, t * TILE_ROWS:(t + 1) * TILE_ROWS]
                for i in range(len(line)):
                    m = line[i]
                    for b in range(len(width)):
                        rows_t[i, b] += chunk[m, b]
