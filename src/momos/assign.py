"""Exact nearest-motif search: every block to its closest motif, in bounded memory.

Squared Euclidean distance ``|b - z|^2 = |b|^2 - 2 b.z + |z|^2``; the ``|b|^2`` term is the
same for every motif of a block, so the search ranks ``|z|^2 - 2 b.z``. Distances are
computed tile by tile (blocks x motifs) and reduced at once, so the full distance matrix
never exists and each tile stays small enough to live in cache.
"""

from __future__ import annotations

import torch

DEFAULT_MAX_DISTANCE_BYTES = 4 * 2**20
# A tile keeps at least this many blocks, so that a very large codebook is split along
# the motif axis rather than shrinking tiles to single rows.
_MIN_TILE_ROWS = 64


def nearest_motif(blocks: torch.Tensor, motifs: torch.Tensor, *,
                  max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES) -> torch.Tensor:
    """Index of the nearest motif of each block.

    Args:
        blocks: ``(m, s)``.
        motifs: ``(k, s)``, same dtype and device.
        max_distance_bytes: upper bound on the distance tile held at once.

    Returns:
        ``(m,)`` int64; ties go to the lowest motif index.
    """
    m, s = blocks.shape
    k = motifs.shape[0]
    if motifs.shape[1] != s:
        raise ValueError(f"blocks have {s} values, motifs have {motifs.shape[1]}")
    if k == 0:
        raise ValueError("no motifs to assign to")
    assignments = torch.empty(m, dtype=torch.long, device=blocks.device)
    if m == 0:
        return assignments

    # float32 products are exact in float64, so the expansion ranks motifs that differ from a
    # block by one float32 ulp correctly; in float32 its rounding error (~1e-7 |z|^2) would not.
    dtype = torch.promote_types(blocks.dtype, torch.float64)
    elem = torch.finfo(dtype).bits // 8
    cols = min(k, max(1, max_distance_bytes // (elem * _MIN_TILE_ROWS)))
    rows = max(1, min(m, max_distance_bytes // (elem * cols)))
    motifs = motifs.to(dtype)
    motif_sq = (motifs * motifs).sum(dim=1)
    motifs_t = motifs.t()
    tile = torch.empty(rows * cols, dtype=dtype, device=blocks.device)

    for r0 in range(0, m, rows):
        block_tile = blocks[r0:r0 + rows].to(dtype)
        n = block_tile.shape[0]
        best_val = best_idx = None
        for c0 in range(0, k, cols):
            c1 = min(k, c0 + cols)
            dist = tile[: n * (c1 - c0)].view(n, c1 - c0)
            torch.addmm(motif_sq[c0:c1], block_tile, motifs_t[:, c0:c1], alpha=-2, out=dist)
            val, idx = dist.min(dim=1)
            if best_val is None:
                best_val, best_idx = val, idx
            else:
                # Strictly smaller only, so that ties keep the earlier (lower) motif index.
                better = val < best_val
                best_val = torch.where(better, val, best_val)
                best_idx = torch.where(better, idx + c0, best_idx)
        assignments[r0:r0 + n] = best_idx
    return assignments


def nearest_motif_ignoring_padding(blocks: torch.Tensor, motifs: torch.Tensor,
                                   padding_patterns: list[tuple[torch.Tensor, torch.Tensor]], *,
                                   max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES
                                   ) -> torch.Tensor:
    """Like :func:`nearest_motif`, but a block holding padding is compared on its real values only.

    Padding is dropped when blocks go back into tensors, so the motif that is truly nearest
    for a block with padding is the one nearest on its real columns.

    Args:
        padding_patterns: ``(real_columns, block_indices)`` pairs of int64 tensors, as from
            ``BlockLayout.padding_patterns``.
    """
    assignments = nearest_motif(blocks, motifs, max_distance_bytes=max_distance_bytes)
    for columns, rows in padding_patterns:
        columns, rows = columns.to(blocks.device), rows.to(blocks.device)
        assignments[rows] = nearest_motif(blocks[rows][:, columns], motifs[:, columns].contiguous(),
                                          max_distance_bytes=max_distance_bytes)
    return assignments
