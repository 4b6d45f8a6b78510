"""Compiled nearest-motif kernels (numba), used on CPU when numba is installed (``momos[fast]``).

Each kernel fuses the distance computation with the running minimum: a tile of
``TILE_ROWS`` blocks is copied into a transposed float64 scratch array, then every motif
is compared with the whole tile at once, so the innermost loop runs across blocks and
vectorizes, and nothing larger than the tile is ever held. ``nearest_motif`` searches all
motifs; ``nearest_few`` and ``nearest_in_cells`` serve the approximate inverted file. Distances are the float64 sums
``sum_c (b_c - z_c)^2`` added left to right (no reassociation, no fused multiply-add), the
exact definition that every backend of :mod:`momos.assign` reproduces, and a motif
replaces the current best only when strictly nearer, so ties keep the lowest index.
Tiles are spread over all threads that torch is allowed to use.

Every kernel also takes per-value importance weights ``h`` (``(m, s)``, like the blocks) or
None. With weights each term becomes ``h_c * (e * e)``, ``e = b_c - z_c``; the weights are
loaded into a tile like the blocks. Passing None compiles the plain kernel: numba prunes
``weights is None`` branches at compile time, so one source serves both and the plain
search pays nothing for the option.

Compiled code is cached on disk (``cache=True``), so only the first call for a new
``(dtype, block size)`` ever compiles.
"""

from __future__ import annotations

from contextlib import contextmanager

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


def usable(blocks: torch.Tensor) -> bool:
    """True when the compiled kernels can search ``blocks`` ``(m, s)``: numba is installed, the
    blocks are on the CPU and ``s <= MAX_BLOCK_SIZE``; otherwise callers take the PyTorch path."""
    return numba is not None and blocks.device.type == "cpu" and blocks.shape[1] <= MAX_BLOCK_SIZE


def nearest_motif(blocks: torch.Tensor, motifs: torch.Tensor,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest motif of each block (see the module docstring for the exact rule).

    Args:
        blocks: ``(m, s)`` floating point on CPU, ``1 <= s <= MAX_BLOCK_SIZE``.
        motifs: ``(k, s)``, ``k >= 1``.
        weights: ``(m, s)`` importance of each block value, or None.

    Returns:
        ``(m,)`` int64.
    """
    b, h, z = _array(blocks), _array(weights), _array(motifs)
    out = np.empty(b.shape[0], dtype=np.int64)
    with torch_thread_count():
        _nearest_kernel(b, h, z, out, _width(b))
    return torch.from_numpy(out)


def nearest_few(blocks: torch.Tensor, points: torch.Tensor, count: int,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """The ``count`` nearest of a few ``points`` (e.g. cell centroids) for each block.

    Args:
        blocks: ``(m, s)`` floating point on CPU, ``1 <= s <= MAX_BLOCK_SIZE``.
        points: ``(p, s)`` with ``1 <= count <= p``.
        weights: ``(m, s)`` importance of each block value, or None.

    Returns:
        ``(m, count)`` int64, nearest first; equal distances keep the lower index first.
    """
    b, h, z = _array(blocks), _array(weights), _array(points)
    out = np.empty((b.shape[0], count), dtype=np.int64)
    with torch_thread_count():
        _nearest_few_kernel(b, h, z, out, _width(b))
    return torch.from_numpy(out)


def nearest_in_cells(blocks: torch.Tensor, cell_motifs: torch.Tensor, cell_starts: torch.Tensor,
                     probes: torch.Tensor, weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """For every (block, probed cell) pair, the cell's nearest motif and its distance.

    Args:
        blocks: ``(n, s)`` floating point on CPU, ``1 <= s <= MAX_BLOCK_SIZE``.
        cell_motifs: ``(k, s)`` motifs grouped by cell.
        cell_starts: ``(cells + 1,)`` int64 offsets of each cell's run in ``cell_motifs``;
            every cell holds at least one motif.
        probes: ``(n, nprobe)`` int64 cells to search for each block.
        weights: ``(n, s)`` importance of each block value, or None.

    Returns:
        ``(n, nprobe)`` int64 positions in ``cell_motifs`` (ties to the lowest position) and
        ``(n, nprobe)`` float64 distances, by the rule of the module docstring.
    """
    b, h, z = _array(blocks), _array(weights), _array(cell_motifs)
    cells = len(cell_starts) - 1
    n, nprobe = probes.shape
    pair_cells = probes.numpy().ravel()
    order, pair_starts = _bucket_kernel(pair_cells, cells)
    # work items: runs of at most TILE_ROWS pairs that search the same cell
    tiles = -(-np.diff(pair_starts) // TILE_ROWS)
    item_cell = np.repeat(np.arange(cells), tiles)
    first_item = np.cumsum(tiles) - tiles
    item_start = pair_starts[item_cell] + TILE_ROWS * (np.arange(len(item_cell)) - first_item[item_cell])
    item_end = np.minimum(item_start + TILE_ROWS, pair_starts[item_cell + 1])
    best_position = np.empty(n * nprobe, dtype=np.int64)
    best_distance = np.empty(n * nprobe)
    with torch_thread_count():
        _cells_kernel(b, h, z, cell_starts.numpy(), order, nprobe, item_cell, item_start, item_end,
                      best_position, best_distance, _width(b))
    return (torch.from_numpy(best_position).view(n, nprobe),
            torch.from_numpy(best_distance).view(n, nprobe))


def _array(tensor: torch.Tensor | None) -> np.ndarray | None:
    """A contiguous float64 (if float64) or float32 numpy view for the kernels; None stays None.

    Each tensor keeps its own precision: float32 holds every float16 and bfloat16 exactly,
    and the kernels widen every value to float64 before computing.
    """
    if tensor is None:
        return None
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.detach().to(dtype).contiguous().numpy()


@contextmanager
def torch_thread_count():
    """Run a kernel on as many threads as torch may use, and leave torch's count as it was.

    numba's OpenMP threading layer resets the OpenMP thread count that torch reads.
    """
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _width(blocks: np.ndarray) -> tuple[int, ...]:
    """A tuple of length s: passing it makes the block size a compile-time constant of a kernel."""
    return (0,) * blocks.shape[1]


if numba is not None:
    @numba.njit(fastmath=False, cache=True)
    def _load(blocks, rows, width):  # pragma: no cover - compiled
        """Blocks ``rows`` as a zero-filled ``(s, TILE_ROWS)`` float64 tile."""
        s = len(width)
        tile = np.zeros((s, TILE_ROWS))
        for i in range(len(rows)):
            for c in range(s):
                tile[c, i] = blocks[rows[i], c]
        return tile

    def _load_weights(weights, rows, width):
        """Like :func:`_load`, and None for no weights; callable from compiled code only."""

    @numba.extending.overload(_load_weights)
    def _load_weights_typed(weights, rows, width):
        # chosen by type at compile time: a plain `weights is None` branch would make the
        # tile's type Optional, and that check would then run inside the innermost loop
        if isinstance(weights, numba.types.NoneType):
            return lambda weights, rows, width: None
        return lambda weights, rows, width: _load(weights, rows, width)

    # inlined into the callers' loops before compiling, so the loop over blocks vectorizes;
    # callers take `weights` as an argument, so that numba prunes the branch for None
    @numba.njit(fastmath=False, cache=True, inline="always")
    def _distance(tile, weights, z, i, width):  # pragma: no cover - compiled
        """The distance of tile column ``i`` to ``z``, weighted by the weights tile unless None."""
        d = 0.0
        for c in range(len(width)):
            e = tile[c, i] - z[c]
            if weights is None:
                d += e * e
            else:
                d += weights[c, i] * (e * e)
        return d

    @numba.njit(fastmath=False, cache=True)
    def _scan(tile, weights, motifs, j0, j1, width):  # pragma: no cover - compiled
        """Nearest of motifs ``j0..j1-1`` for each tile column: ``(distances, indices)``."""
        s = len(width)
        best = np.full(TILE_ROWS, np.inf)
        best_index = np.zeros(TILE_ROWS, dtype=np.int64)
        z = np.empty(s)
        for j in range(j0, j1):
            for c in range(s):
                z[c] = motifs[j, c]
            for i in range(TILE_ROWS):
                d = _distance(tile, weights, z, i, width)
                if d < best[i]:
                    best[i] = d
                    best_index[i] = j
        return best, best_index

    @numba.njit(fastmath=False, cache=True)
    def _distances(tile, weights, points, width):  # pragma: no cover - compiled
        """``(p, TILE_ROWS)``: the distance of every tile column to every point."""
        s = len(width)
        dist = np.empty((points.shape[0], TILE_ROWS))
        z = np.empty(s)
        for j in range(points.shape[0]):
            for c in range(s):
                z[c] = points[j, c]
            for i in range(TILE_ROWS):
                dist[j, i] = _distance(tile, weights, z, i, width)
        return dist

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _nearest_kernel(blocks, weights, motifs, out, width):  # pragma: no cover - compiled
        m = blocks.shape[0]
        for t in numba.prange((m + TILE_ROWS - 1) // TILE_ROWS):
            rows = np.arange(t * TILE_ROWS, min(m, (t + 1) * TILE_ROWS))
            _, best_index = _scan(_load(blocks, rows, width), _load_weights(weights, rows, width), motifs,
                                  0, motifs.shape[0], width)
            out[rows] = best_index[:len(rows)]

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _cells_kernel(blocks, weights, motifs, cell_starts, order, nprobe, item_cell, item_start, item_end,
                      best_position, best_distance, width):  # pragma: no cover - compiled
        for w in numba.prange(len(item_cell)):
            pairs = order[item_start[w]:item_end[w]]
            rows = pairs // nprobe
            cell = item_cell[w]
            best, best_index = _scan(_load(blocks, rows, width), _load_weights(weights, rows, width), motifs,
                                     cell_starts[cell], cell_starts[cell + 1], width)
            best_position[pairs] = best_index[:len(pairs)]
            best_distance[pairs] = best[:len(pairs)]

    @numba.njit(fastmath=False, cache=True)
    def _bucket_kernel(keys, num_keys):  # pragma: no cover - compiled
        """Counting sort: positions of ``keys`` grouped by key (stable) and each key's start."""
        starts = np.zeros(num_keys + 1, dtype=np.int64)
        for key in keys:
            starts[key + 1] += 1
        for key in range(num_keys):
            starts[key + 1] += starts[key]
        fill = starts[:-1].copy()
        order = np.empty(len(keys), dtype=np.int64)
        for position in range(len(keys)):
            key = keys[position]
            order[fill[key]] = position
            fill[key] += 1
        return order, starts

    @numba.njit(parallel=True, fastmath=False, cache=True)
    def _nearest_few_kernel(blocks, weights, points, out, width):  # pragma: no cover - compiled
        m = blocks.shape[0]
        p = points.shape[0]
        count = out.shape[1]
        for t in numba.prange((m + TILE_ROWS - 1) // TILE_ROWS):
            rows = np.arange(t * TILE_ROWS, min(m, (t + 1) * TILE_ROWS))
            # all distances of the tile first (vectorized across blocks), then a small
            # insertion sort per block over them
            dist = _distances(_load(blocks, rows, width), _load_weights(weights, rows, width), points,
                              width)
            kept = np.empty(count)
            kept_index = np.empty(count, dtype=np.int64)
            for i in range(len(rows)):
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
                out[rows[i]] = kept_index
