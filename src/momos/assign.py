"""Exact nearest-motif search: every block to its closest motif, in bounded memory.

The distance of a block ``b`` to a motif ``z`` is the float64 sum ``sum_c (b_c - z_c)^2``,
added left to right; each block takes the motif with the smallest distance, ties going to
the lowest index. With importance weights ``h`` (one per block value) it is the weighted
sum ``sum_c h_c (b_c - z_c)^2``, each term computed as ``h_c * (e * e)`` with
``e = b_c - z_c``, again in float64 and left to right. Every backend returns exactly these
assignments:

- on CPU with numba installed, a compiled kernel computes that sum directly
  (:mod:`momos.kernels`);
- otherwise (no numba, CUDA, very wide blocks) PyTorch ranks the motifs tile by tile through
  the float64 expansion ``|z|^2 - 2 b.z`` (weighted: ``h.(z*z) - 2 (h*b).z``), a matrix
  product. Its rounding error has a known bound, so a block whose runner-up lies outside the
  bound is certainly assigned right; the few blocks with a motif inside it (near ties) are
  ranked again with the float64 definition.

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


def nearest_motif(blocks: torch.Tensor, motifs: torch.Tensor, *, weights: torch.Tensor | None = None,
                  max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES) -> torch.Tensor:
    """Index of the nearest motif of each block.

    Args:
        blocks: ``(m, s)`` floating point, finite.
        motifs: ``(k, s)`` on the same device, finite, ``k >= 1``.
        weights: ``(m, s)`` floating point importance of each block value on the same
            device, finite and non-negative; None weighs every value 1.
        max_distance_bytes: upper bound on the distance tile held at once.

    Returns:
        ``(m,)`` int64 on the blocks' device; ties go to the lowest motif index.
    """
    _check(blocks, motifs)
    if weights is not None:
        check_weights(weights, blocks)
    if len(blocks) == 0:
        return torch.empty(0, dtype=torch.long, device=blocks.device)
    if kernels.usable(blocks):
        return kernels.nearest_motif(blocks, motifs, weights)
    return _nearest_certified(blocks, motifs, max_distance_bytes, weights)


def nearest_motif_ignoring_padding(blocks: torch.Tensor, motifs: torch.Tensor,
                                   padding_patterns: list[tuple[torch.Tensor, torch.Tensor]], *,
                                   weights: torch.Tensor | None = None,
                                   max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES,
                                   search: Callable[..., torch.Tensor] | None = None
                                   ) -> torch.Tensor:
    """Like :func:`nearest_motif`, but a block holding padding is compared on its real values only.

    Padding is dropped when blocks go back into tensors, so the motif that is truly nearest
    for a block with padding is the one nearest on its real columns.

    Args:
        padding_patterns: ``(real_columns, block_indices)`` pairs of int64 tensors, as from
            ``BlockLayout.padding_patterns``.
        weights: ``(m, s)`` importance of each block value, as for :func:`nearest_motif`.
        search: the search to use instead of :func:`nearest_motif`, e.g. an approximate one:
            ``search(blocks, motifs) -> (m,)`` without weights, and
            ``search(blocks, motifs, weights=...)`` with them. Without weights it searches
            the full-width blocks, and the few padded blocks are always searched exactly.
    """
    if weights is not None:
        return _search_weighted_ignoring_padding(blocks, motifs, padding_patterns, weights,
                                                 max_distance_bytes, search)
    if search is None:
        assignments = nearest_motif(blocks, motifs, max_distance_bytes=max_distance_bytes)
    else:
        assignments = search(blocks, motifs)
    for columns, rows in padding_patterns:
        columns, rows = columns.to(blocks.device), rows.to(blocks.device)
        assignments[rows] = nearest_motif(blocks[rows][:, columns], motifs[:, columns].contiguous(),
                                          max_distance_bytes=max_distance_bytes)
    return assignments


def squared_distances(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The defining float64 distances ``sum_c (a_c - b_c)^2``, added left to right.

    With ``weights`` ``h``, the weighted distances ``sum_c h_c * (e * e)``, ``e = a_c - b_c``.

    Args:
        a, b: ``(..., s)``, broadcastable; e.g. ``blocks[:, None]`` and ``motifs[None]`` for
            all pairs, or two ``(n, s)`` tensors for row-wise pairs.
        weights: ``(..., s)`` broadcastable with them (e.g. ``block_weights[:, None]``), or None.

    Returns:
        The broadcast leading shape, float64.
    """
    a, b = a.to(torch.float64), b.to(torch.float64)
    shapes = [a.shape, b.shape]
    if weights is not None:
        weights = weights.to(torch.float64)
        shapes.append(weights.shape)
    dist = torch.zeros(torch.broadcast_shapes(*shapes)[:-1], dtype=torch.float64, device=a.device)
    for c in range(a.shape[-1]):
        e = a[..., c] - b[..., c]
        e = e * e
        # separate operations, never fused into a multiply-add (as CUDA would fuse addcmul)
        dist += e if weights is None else weights[..., c] * e
    return dist


def check_weights(weights: torch.Tensor, blocks: torch.Tensor) -> None:
    """Raise unless ``weights`` are importance weights for ``blocks``: same shape and device,
    floating point, finite, non-negative."""
    if weights.shape != blocks.shape:
        raise ValueError(f"weights must have the blocks' shape {tuple(blocks.shape)}, "
                         f"got {tuple(weights.shape)}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be floating point, got {weights.dtype}")
    if weights.device != blocks.device:
        raise ValueError(f"blocks are on {blocks.device}, weights on {weights.device}")
    if not torch.isfinite(weights).all():
        raise ValueError("weights hold NaN or Inf values")
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")


def _search_weighted_ignoring_padding(blocks, motifs, padding_patterns, weights, max_distance_bytes,
                                      search) -> torch.Tensor:
    """:func:`nearest_motif_ignoring_padding` with weights: padding weighs 0, one search.

    All values are finite (and so are the squares ``e * e`` for any values a model holds),
    so a padding column adds ``0 * (e * e) = +0`` to the running sum, which leaves it
    unchanged: the weighted sum over all columns is exactly the weighted sum over the real
    columns, added left to right.
    """
    check_weights(weights, blocks)
    weights = weights.clone()
    for columns, rows in padding_patterns:
        columns, rows = columns.to(blocks.device), rows.to(blocks.device)
        real = torch.zeros(blocks.shape[1], dtype=torch.bool, device=blocks.device)
        real[columns] = True
        weights[rows] = weights[rows].masked_fill(~real, 0)
    if search is None:
        return nearest_motif(blocks, motifs, weights=weights, max_distance_bytes=max_distance_bytes)
    return search(blocks, motifs, weights=weights)


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


def _nearest_certified(blocks: torch.Tensor, motifs: torch.Tensor, max_distance_bytes: int,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """The PyTorch backend: fast ranking, then near ties ranked again exactly."""
    motifs, first_index = _distinct_motifs(motifs)
    assignments, uncertain = _rank_with_bound(blocks, motifs, weights, max_distance_bytes)
    rows = uncertain.nonzero().flatten()
    if len(rows):
        assignments[rows] = _rank_exactly(blocks[rows], motifs, None if weights is None else weights[rows],
                                          max_distance_bytes)
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


def _rank_with_bound(blocks: torch.Tensor, motifs: torch.Tensor, weights: torch.Tensor | None,
                     max_distance_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest motif by a float64 matrix product, and which rows are uncertain.

    Each tile of scores is ``left @ right + bias`` (:func:`_plain_expansion`,
    :func:`_weighted_expansion`): the distance less a constant of the row, with a per-row
    bound ``margin`` such that a row whose runner-up scores more than ``margin`` above its
    best is certainly assigned as the float64 definition would.

    Returns:
        ``(m,)`` int64 indices and ``(m,)`` bool uncertain rows.
    """
    m = len(blocks)
    k = len(motifs)
    dtype = torch.float64
    cols = min(k, max(1, max_distance_bytes // (8 * _MIN_TILE_ROWS)))
    rows = max(1, min(m, max_distance_bytes // (8 * cols)))
    motifs = motifs.to(dtype)
    right, bias, row_terms = (_plain_expansion(motifs) if weights is None else _weighted_expansion(motifs))
    assignments = torch.empty(m, dtype=torch.long, device=blocks.device)
    uncertain = torch.empty(m, dtype=torch.bool, device=blocks.device)
    tile = torch.empty(rows * cols, dtype=dtype, device=blocks.device)  # reused: no page faults per tile
    for r0 in range(0, m, rows):
        block_tile = blocks[r0:r0 + rows].to(dtype)
        left, margin = row_terms(block_tile, None if weights is None else weights[r0:r0 + rows].to(dtype))
        best = best_index = doubt = None
        for c0 in range(0, k, cols):
            dist = tile[:len(block_tile) * len(bias[c0:c0 + cols])].view(len(block_tile), -1)
            torch.addmm(bias[c0:c0 + cols], left, right[:, c0:c0 + cols], out=dist)
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


_RowTerms = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


def _plain_expansion(motifs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, _RowTerms]:
    """Scores ``|z|^2 - 2 b.z`` for float64 ``motifs`` ``(k, s)``: ``right`` ``(s, k)``,
    ``bias`` ``(k,)``, and ``row_terms(block_tile, None) -> (left, margin)``.

    The scores' rounding is bounded by ``gamma_{2s+2} (|b| + max|z|)^2`` with
    ``gamma_n = n u / (1 - n u)``, ``u = 2^-53``, and so is that of the defining sums; the
    margin is four times that bound (two motifs, two computations each).
    """
    s = motifs.shape[1]
    unit = torch.finfo(torch.float64).eps / 2
    gamma = (2 * s + 2) * unit / (1 - (2 * s + 2) * unit)
    motif_sq = (motifs * motifs).sum(dim=1)
    largest = float(motif_sq.max().sqrt())

    def row_terms(block_tile, _):
        margin = 4 * gamma * (block_tile.norm(dim=1) + largest) ** 2 + torch.finfo(torch.float64).tiny
        return block_tile, margin
    return -2 * motifs.t(), motif_sq, row_terms


def _weighted_expansion(motifs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, _RowTerms]:
    """Weighted scores for float64 ``motifs`` ``(k, s)``, as :func:`_plain_expansion` returns
    them; ``row_terms(block_tile, weight_tile)``.

    The weighted distance is ``sum_c h b^2 + score(z)``: the first term is a constant of the
    row, and ``score(z) = (h*b).(-2 z) + h.(z*z)`` is one product of ``[h*b, h]`` ``(r, 2s)``
    with ``[-2 z, z*z]`` ``(2s, k)``.

    The margin bounds the rounding (``u = 2^-53``, ``gamma_n = n u / (1 - n u)``, norms
    ``|x|_h^2 = sum_c h_c x_c^2``, ``M_c = max_z z_c^2``, ``N = (|b|_h + sqrt(h.M))^2``;
    Minkowski gives ``sum_c h_c (|b_c| + |z_c|)^2 <= (|b|_h + |z|_h)^2 <= N`` for every motif):

    - the score: ``h*b`` and ``z*z`` are rounded once (``-2 z`` and ``h`` are exact), then a
      dot product of 2s terms is rounded by at most ``gamma_2s`` times the sum of the terms'
      magnitudes, in any order of summation (blocked, fused or not), so
      ``|score^ - score| <= gamma_{2s+1} sum_c h_c (2 |b_c z_c| + z_c^2) <= gamma_{2s+1} N``;
    - the defining sum: each non-negative term ``h (e e)`` carries four rounding factors
      (``e``'s twice, ``e e``'s, ``h (e e)``'s) and the left-to-right sum at most s - 1 more,
      so ``|d^ - d| <= gamma_{s+3} d <= gamma_{s+3} N``.

    The distances of two motifs differ as their scores do, so if another motif's computed
    score exceeds the best's by more than ``2 (gamma_{2s+1} + gamma_{s+3}) N <= 4 gamma_{2s+3} N``,
    its defining sum is strictly larger too, and the computed best is the definition's
    unique nearest motif. The margin is twice that, ``8 gamma_{2s+3} N``, to absorb the
    rounding of ``N``, of the margin and of the comparisons; ``tiny`` covers underflow (an
    operation then errs by at most 2^-1075 more).
    """
    s = motifs.shape[1]
    unit = torch.finfo(torch.float64).eps / 2
    gamma = (2 * s + 3) * unit / (1 - (2 * s + 3) * unit)
    square = motifs * motifs
    largest_square = square.max(dim=0).values

    def row_terms(block_tile, weight_tile):
        weighted = weight_tile * block_tile
        bound = ((weighted * block_tile).sum(dim=1).sqrt() + (weight_tile @ largest_square).sqrt()) ** 2
        margin = 8 * gamma * bound + torch.finfo(torch.float64).tiny
        return torch.cat([weighted, weight_tile], dim=1), margin
    return torch.cat([-2 * motifs, square], dim=1).t(), motifs.new_zeros(len(motifs)), row_terms


def _rank_exactly(blocks: torch.Tensor, motifs: torch.Tensor, weights: torch.Tensor | None,
                  max_distance_bytes: int) -> torch.Tensor:
    """Nearest motif by the float64 definition (:func:`squared_distances`), in tiles."""
    m, k = len(blocks), len(motifs)
    # the distances and two temporaries of one coordinate, all float64
    cols = min(k, max(1, max_distance_bytes // (24 * _MIN_TILE_ROWS)))
    rows = max(1, min(m, max_distance_bytes // (24 * cols)))
    assignments = torch.empty(m, dtype=torch.long, device=blocks.device)
    for r0 in range(0, m, rows):
        block_tile = blocks[r0:r0 + rows]
        weight_tile = None if weights is None else weights[r0:r0 + rows, None]
        best = best_index = None
        for c0 in range(0, k, cols):
            value, index = squared_distances(block_tile[:, None], motifs[None, c0:c0 + cols],
                                             weight_tile).min(dim=1)
            if best is None:
                best, best_index = value, index
                continue
            # strictly smaller only, so ties keep the earlier (lower) motif index
            better = value < best
            best = torch.where(better, value, best)
            best_index = torch.where(better, index + c0, best_index)
        assignments[r0:r0 + len(block_tile)] = best_index
    return assignments
