"""Choosing a codebook of motifs from the blocks of a model."""

from __future__ import annotations

import torch


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
