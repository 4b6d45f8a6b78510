"""Exact nearest-motif search: every block to its closest motif, in bounded memory.

The distance of a block ``b`` to a motif ``z`` is the float64 sum ``sum_c (b_c - z_c)^2``,
added left to right; each block takes the motif with the smallest distance, ties going to
the lowest index. Every backend returns exactly these assignments:

- on CPU with numba installed, a compiled kernel computes that sum directly
  (:mod:`momos.kernels`);
- otherwise (no numba, CUDA, very wide blocks) PyTorch ranks the motifs tile by tile through
  the float64 expansion ``|z|^2 - 2 b.z`` (a matrix product). Its rounding error has a known
  bound, so a block whose runner-up lies outside the bound is certainly assigned right; the
  few blocks with a motif inside it (near ties) are ranked again with the float64 definition.

Distances are never held for more than one tile (``max_distance_bytes``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import kernels

DEFAULT_MAX_DISTANCE_BYTES = 4 * 2**20
# A tile keeps at least this many blocks, so that a very large codebook is split along
# the motif axis rather than shrinking tiles to single rows.
_MIN_TILE_ROWS = 64


def nearest_motif(blocks: torch.Tensor, motifs: torch.Tensor, *,
                  max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES) -> torch.Tensor:
    """Index of the nearest motif of each block.

    Args:
        blocks: ``(m, s)`` floating point, finite.
        motifs: ``(k, s)`` on the same device, finite, ``k >= 1``.
        max_distance_bytes: upper bound on the distance tile held at once.

    Returns:
        ``(m,)`` int64 on the blocks' device; ties go to the lowest motif index.
    """
    _check(blocks, motifs)
    if len(blocks) == 0:
        return torch.empty(0, dtype=torch.long, device=blocks.device)
    if kernels.available(blocks.device) and blocks.shape[1] <= kernels.MAX_BLOCK_SIZE:
        return kernels.nearest_motif(blocks, motifs)
    return _nearest_certified(blocks, motifs, max_distance_bytes)


def nearest_motif_ignoring_padding(blocks: torch.Tensor, motifs: torch.Tensor,
                                   padding_patterns: list[tuple[torch.Tensor, torch.Tensor]], *,
                                   max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES,
                                   search: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                                   ) -> torch.Tensor:
    """Like :func:`nearest_motif`, but a block holding padding is compared on its real values only.

    Padding is dropped when blocks go back into tensors, so the motif that is truly nearest
    for a block with padding is the one nearest on its real columns.

    Args:
        padding_patterns: ``(real_columns, block_indices)`` pairs of int64 tensors, as from
            ``BlockLayout.padding_patterns``.
        search: ``search(blocks, motifs) -> (m,)`` for the full-width blocks, e.g. an
            approximate search; default :func:`nearest_motif`. The few padded blocks are
            always searched exactly.
    """
    if search is None:
        assignments = nearest_motif(blocks, motifs, max_distance_bytes=max_distance_bytes)
    else:
        assignments = search(blocks, motifs)
    for columns, rows in padding_patterns:
        columns, rows = columns.to(blocks.device), rows.to(blocks.device)
        assignments[rows] = nearest_motif(blocks[rows][:, columns], motifs[:, columns].contiguous(),
                                          max_distance_bytes=max_distance_bytes)
    return assignments


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The defining float64 distances ``sum_c (a_c - b_c)^2``, added left to right.

    Args:
        a, b: ``(..., s)``, broadcastable; e.g. ``blocks[:, None]`` and ``motifs[None]`` for
            all pairs, or two ``(n, s)`` tensors for row-wise pairs.

    Returns:
        The broadcast leading shape, float64.
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    shape = torch.broadcast_shapes(a.shape, b.shape)[:-1]
    dist = torch.zeros(shape, dtype=torch.float64, device=a.device)
    for c in range(a.shape[-1]):
        e = a[..., c] - b[..., c]
        dist += e * e
    return dist


def _check(blocks: torch.Tensor, motifs: torch.Tensor) -> None:
    if blocks.dim() != 2 or motifs.dim() != 2:
        raise ValueError(f"blocks and motifs must be 2-D, got shapes {tuple(blocks.shape)} "
                         f"and {tuple(motifs.shape)}")
    if motifs.shape[1] != blocks.shape[1]:
        raise ValueError(f"blocks have {blocks.shape[1]} values, motifs have {motifs.shape[1]}")
    if len(motifs) == 0:
        raise ValueError("no motifs to assign to")
    if not (blocks.is_floating_point() and motifs.is_floating_point()):
        raise TypeError(f"blocks and motifs must be floating point, got {blocks.dtype} and {motifs.dtype}")
    if blocks.device != motifs.device:
        raise ValueError(f"blocks are on {blocks.device}, motifs on {motifs.device}")
    if not (torch.isfinite(blocks).all() and torch.isfinite(motifs).all()):
        raise ValueError("blocks or motifs hold NaN or Inf values")


def _nearest_certified(blocks: torch.Tensor, motifs: torch.Tensor,
                       max_distance_bytes: int) -> torch.Tensor:
    """The PyTorch backend: fast ranking, then near ties ranked again exactly."""
    motifs, first_index = _distinct_motifs(motifs)
    assignments, uncertain = _rank_with_bound(blocks, motifs, max_distance_bytes)
    rows = uncertain.nonzero().flatten()
    if len(rows):
        assignments[rows] = _rank_exactly(blocks[rows], motifs, max_distance_bytes)
    return first_index[assignments]


def _distinct_motifs(motifs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Equal motifs collapsed to their first occurrence: ``(distinct (k', s), index (k',))``.

    Equal motifs always tie, and the tie goes to the first of them; searching only the first
    keeps the answer and keeps duplicates (common once a model is a mosaic) out of the near
    ties that need a second, exact ranking.
    """
    distinct, inverse = torch.unique(motifs, dim=0, return_inverse=True)
    positions = torch.arange(len(motifs), device=motifs.device)
    first = torch.full((len(distinct),), len(motifs), dtype=torch.long, device=motifs.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    first = first.sort().values
    return motifs[first], first


def _rank_with_bound(blocks: torch.Tensor, motifs: torch.Tensor, max_distance_bytes: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest motif by the float64 expansion ``|z|^2 - 2 b.z``, and which rows are uncertain.

    The expansion is a matrix product (fast everywhere) whose rounding is bounded by
    ``gamma_{2s+2} (|b| + max|z|)^2`` with ``gamma_n = n u / (1 - n u)``, ``u = 2^-53``; a row
    is uncertain when another motif comes within four times that bound of its best.

    Returns:
        ``(m,)`` int64 indices and ``(m,)`` bool uncertain rows.
    """
    m, s = blocks.shape
    k = len(motifs)
    dtype = torch.float64
    unit = torch.finfo(dtype).eps / 2
    gamma = (2 * s + 2) * unit / (1 - (2 * s + 2) * unit)
    cols = min(k, max(1, max_distance_bytes // (8 * _MIN_TILE_ROWS)))
    rows = max(1, min(m, max_distance_bytes // (8 * cols)))
    motifs = motifs.to(dtype)
    motif_sq = (motifs * motifs).sum(dim=1)
    largest = float(motif_sq.max().sqrt())
    motifs_t = motifs.t()
    assignments = torch.empty(m, dtype=torch.long, device=blocks.device)
    uncertain = torch.empty(m, dtype=torch.bool, device=blocks.device)
    tile = torch.empty(rows * cols, dtype=dtype, device=blocks.device)  # reused: no page faults per tile
    for r0 in range(0, m, rows):
        block_tile = blocks[r0:r0 + rows].to(dtype)
        margin = 4 * gamma * (block_tile.norm(dim=1) + largest) ** 2 + torch.finfo(dtype).tiny
        best = best_index = doubt = None
        for c0 in range(0, k, cols):
            dist = tile[:len(block_tile) * len(motif_sq[c0:c0 + cols])].view(len(block_tile), -1)
            torch.addmm(motif_sq[c0:c0 + cols], block_tile, motifs_t[:, c0:c0 + cols], alpha=-2, out=dist)
            value, index = dist.min(dim=1)
            # the runner-up of the tile: the minimum once the best is masked out
            runner_up = dist.scatter_(1, index[:, None], math.inf).min(dim=1).values
            tile_doubt = runner_up <= value + margin
            if best is None:
                best, best_index, doubt = value, index, tile_doubt
                continue
            close = (value - best).abs() <= margin
            better = value < best
            doubt = torch.where(better, tile_doubt, doubt) | close
            best = torch.where(better, value, best)
            best_index = torch.where(better, index + c0, best_index)
        assignments[r0:r0 + len(block_tile)] = best_index
        uncertain[r0:r0 + len(block_tile)] = doubt
    return assignments, uncertain


def _rank_exactly(blocks: torch.Tensor, motifs: torch.Tensor, max_distance_bytes: int) -> torch.Tensor:
    """Nearest motif by the float64 definition (:func:`squared_distances`), in tiles."""
    m, k = len(blocks), len(motifs)
    # the distances and one coordinate's differences, both float64
    cols = min(k, max(1, max_distance_bytes // (16 * _MIN_TILE_ROWS)))
    rows = max(1, min(m, max_distance_bytes // (16 * cols)))
    assignments = torch.empty(m, dtype=torch.long, device=blocks.device)
    for r0 in range(0, m, rows):
        block_tile = blocks[r0:r0 + rows]
        best = best_index = None
        for c0 in range(0, k, cols):
            value, index = squared_distances(block_tile[:, None], motifs[None, c0:c0 + cols]).min(dim=1)
            if best is None:
                best, best_index = value, index
                continue
            # strictly smaller only, so ties keep the earlier (lower) motif index
            better = value < best
            best = torch.where(better, value, best)
            best_index = torch.where(better, index + c0, best_index)
        assignments[r0:r0 + len(block_tile)] = best_index
    return assignments
