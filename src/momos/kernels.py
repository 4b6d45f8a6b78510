"""A compiled nearest-motif kernel (numba), used on CPU when numba is installed (``momos[fast]``).

The kernel fuses the distance computation with the running minimum: a tile of
``TILE_ROWS`` blocks is copied into a transposed float64 scratch array, then every motif
is compared with the whole tile at once, so the innermost loop runs across blocks and
vectorizes, and nothing larger than the tile is ever held. Distances are the float64 sums
``sum_c (b_c - z_c)^2`` added left to right (no reassociation, no fused multiply-add), the
exact definition that every backend of :mod:`momos.assign` reproduces, and a motif
replaces the current best only when strictly nearer, so ties keep the lowest index.
Tiles are spread over all threads that torch is allowed to use.

Compiled code is cached on disk (``cache=True``), so only the first call for a new
``(dtype, block size)`` ever compiles.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import numba
except ImportError:  # numba is optional; momos.assign falls back to PyTorch
    numba = None

# Blocks per tile: the tile, its best distances and indices stay in L1 while all motifs stream by.
TILE_ROWS = 128
# The block size is compiled in, so the per-coordinate loop unrolls; above this the PyTorch
# path is used rather than compiling very wide kernels.
MAX_BLOCK_SIZE = 16


def available(device: torch.device | str = "cpu") -> bool:
    """True when the compiled kernel can search tensors on ``device``."""
    return numba is not None and torch.device(device).type == "cpu"


def nearest_motif(blocks: torch.Tensor, motifs: torch.Tensor) -> torch.Tensor:
    """Index of the nearest motif of each block (see the module docstring for the exact rule).

    Args:
        blocks: ``(m, s)`` floating point on CPU, ``1 <= s <= MAX_BLOCK_SIZE``.
        motifs: ``(k, s)``, ``k >= 1``.

    Returns:
        ``(m,)`` int64.
    """
    dtype = torch.float64 if blocks.dtype == torch.float64 else torch.float32
    b = blocks.detach().to(dtype).contiguous().numpy()
    z = motifs.detach().to(dtype).contiguous().numpy()
    out = np.empty(b.shape[0], dtype=np.int64)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    # A tuple of length s makes the block size a compile-time constant of the kernel.
    _nearest_kernel(b, z, out, (0,) * b.shape[1])
    return torch.from_numpy(out)


def nearest_few(blocks: torch.Tensor, points: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` nearest of a few ``points`` (e.g. cell centroids) for each block.

    Args:
        blocks: ``(m, s)`` floating point on CPU, ``1 <= s <= MAX_BLOCK_SIZE``.
        points: ``(p, s)`` with ``1 <= count <= p``.

    Returns:
        ``(m, count)`` int64, nearest first; equal distances keep the lower index first.
    """
    dtype = torch.float64 if blocks.dtype == torch.float64 else torch.float32
    b = blocks.detach().to(dtype).contiguous().numpy()
    z = points.detach().to(dtype).contiguous().numpy()
    out = np.empty((b.shape[0], count), dtype=np.int64)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    _nearest_few_kernel(b, z, out, (0,) * b.shape[1])
    return torch.from_numpy(out)


if numba is not None:
    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _nearest_kernel(blocks, motifs, out, width):  # pragma: no cover - compiled
        s = len(width)
        m = blocks.shape[0]
        k = motifs.shape[0]
        for t in numba.prange((m + TILE_ROWS - 1) // TILE_ROWS):
            r0 = t * TILE_ROWS
            n = min(TILE_ROWS, m - r0)
            tile = np.zeros((s, TILE_ROWS))
            for i in range(n):
                for c in range(s):
                    tile[c, i] = blocks[r0 + i, c]
            best = np.full(TILE_ROWS, np.inf)
            best_index = np.zeros(TILE_ROWS, dtype=np.int64)
            z = np.empty(s)
            for j in range(k):
                for c in range(s):
                    z[c] = motifs[j, c]
                for i in range(TILE_ROWS):
                    d = 0.0
                    for c in range(s):
                        e = tile[c, i] - z[c]
                        d += e * e
                    if d < best[i]:
                        best[i] = d
                        best_index[i] = j
            for i in range(n):
                out[r0 + i] = best_index[i]

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _nearest_few_kernel(blocks, points, out, width):  # pragma: no cover - compiled
        s = len(width)
        m = blocks.shape[0]
        p = points.shape[0]
        count = out.shape[1]
        for t in numba.prange((m + TILE_ROWS - 1) // TILE_ROWS):
            r0 = t * TILE_ROWS
            n = min(TILE_ROWS, m - r0)
            tile = np.zeros((s, TILE_ROWS))
            for i in range(n):
                for c in range(s):
                    tile[c, i] = blocks[r0 + i, c]
            # all distances of the tile first (vectorized across blocks), then a small
            # insertion sort per block over them
            dist = np.empty((p, TILE_ROWS))
            for j in range(p):
                for i in range(TILE_ROWS):
                    d = 0.0
                    for c in range(s):
                        e = tile[c, i] - points[j, c]
                        d += e * e
                    dist[j, i] = d
            kept = np.empty(count)
            kept_index = np.empty(count, dtype=np.int64)
            for i in range(n):
                size = 0
                for j in range(p):
                    d = dist[j, i]
                    if size == count and not d < kept[count - 1]:
                        continue
                    pos = min(size, count - 1)
                    while pos > 0 and d < kept[pos - 1]:
                        kept[pos] = kept[pos - 1]
                        kept_index[pos] = kept_index[pos - 1]
                        pos -= 1
                    kept[pos] = d
                    kept_index[pos] = j
                    size = min(size + 1, count)
                for q in range(count):
                    out[r0 + i, q] = kept_index[q]
