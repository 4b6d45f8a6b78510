"""Choosing a codebook of motifs from the blocks of a model."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from .assign import DEFAULT_MAX_DISTANCE_BYTES, nearest_motif


def sample_motifs(blocks: torch.Tensor, num_motifs: int, generator: torch.Generator, *,
                  force_zero: bool = True) -> torch.Tensor:
    """The paper's codebook: ``num_motifs`` distinct blocks drawn uniformly at random.

    Args:
        blocks: ``(m, s)``.
        num_motifs: ``k``, at most ``m``.
        generator: a CPU generator; the only source of randomness.
        force_zero: motif 0 is the zero block and ``k - 1`` blocks are drawn.

    Returns:
        ``(k, s)``, a new tensor.
    """
    m, s = blocks.shape
    if not 1 <= num_motifs <= m:
        raise ValueError(f"cannot draw {num_motifs} motifs from {m} blocks")
    drawn = num_motifs - 1 if force_zero else num_motifs
    picks = torch.randperm(m, generator=generator)[:drawn].to(blocks.device)
    motifs = blocks[picks]
    if force_zero:
        motifs = torch.cat([blocks.new_zeros(1, s), motifs])
    return motifs


def refine_motifs_kmeans(blocks: torch.Tensor, motifs: torch.Tensor, iterations: int, *,
                         valid_mask: torch.Tensor | None = None,
                         importance: torch.Tensor | None = None,
                         fixed_zero: bool = False,
                         max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES,
                         search: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Lloyd iterations: move each motif to the (weighted) mean of the blocks assigned to it.

    Args:
        blocks: ``(m, s)``.
        motifs: ``(k, s)`` starting codebook (not modified).
        iterations: number of assign-then-update rounds.
        valid_mask: ``(m, s)`` bool; padding (False) has no weight in the means.
        importance: ``(m, s)`` non-negative per-weight importance ``h`` (e.g. squared
            gradients). Both steps then minimize ``sum h (b - z)^2``: blocks go to the
            nearest motif by weighted distance (padding weighing 0), and motifs move to the
            importance-weighted mean, per coordinate.
        fixed_zero: motif 0 stays the zero block.
        search: the assignment step, ``search(blocks, motifs, weights=...) -> (m,)`` int64,
            e.g. the approximate search; ``weights`` is None without ``importance``.
            Default: the exact :func:`momos.assign.nearest_motif`.

    Returns:
        ``(k, s)`` refined motifs. A motif that loses all its blocks is re-seeded with the
        block that is currently worst served, so no motif is wasted.
    """
    weight = torch.ones_like(blocks) if importance is None else importance.to(blocks.dtype)
    if valid_mask is not None:
        weight = weight * valid_mask
    # without importance the search stays unweighted, padding included, as it always was
    search_weights = None if importance is None else weight
    if search is None:
        search = partial(nearest_motif, max_distance_bytes=max_distance_bytes)
    motifs = motifs.clone()
    k = motifs.shape[0]
    for _ in range(iterations):
        assignments = search(blocks, motifs, weights=search_weights)
        sums = torch.zeros_like(motifs).index_add_(0, assignments, blocks * weight)
        totals = torch.zeros_like(motifs).index_add_(0, assignments, weight)
        updated = torch.where(totals > 0, sums / totals.clamp_min(torch.finfo(blocks.dtype).tiny), motifs)
        empty = (torch.bincount(assignments, minlength=k) == 0).nonzero().flatten()
        if fixed_zero:
            updated[0] = 0
            empty = empty[empty != 0]
        if len(empty):
            error = ((blocks - motifs[assignments]).square() * weight).sum(1)
            worst = error.topk(min(len(empty), len(error))).indices
            updated[empty[:len(worst)]] = blocks[worst]
        motifs = updated
    return motifs
