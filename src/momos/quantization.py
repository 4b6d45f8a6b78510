"""Symmetric uniform quantization: ``x -> round(x / scale) * scale``, ``scale = max|x| / (2^(q-1) - 1)``."""

from __future__ import annotations

import torch


def symmetric_scale(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The step of a ``bits``-bit symmetric grid covering ``[-max|x|, max|x|]`` (a 0-d tensor)."""
    if bits < 2:
        raise ValueError(f"quantization needs at least 2 bits, got {bits}")
    # Divide by a tensor on x's device, not by a Python number: CUDA divides by a number as a
    # multiplication by its reciprocal (an ulp off at times). The step must be the same on every
    # device, so that a .momos reader recomputes the very step the training forward used.
    return x.detach().abs().max() / x.new_full((), 2 ** (bits - 1) - 1)


def quantize_symmetric(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer levels in ``[-(2^(q-1) - 1), 2^(q-1) - 1]`` and the scale; an all-zero ``x`` gets scale 0
    (and levels 0)."""
    scale = symmetric_scale(x, bits)
    limit = 2 ** (bits - 1) - 1
    # No Python branch on the scale's value: torch.compile then traces a QAT model's forward
    # pass as one graph (a branch broke it at every weight). Dividing by 1 leaves zeros zero.
    divisor = torch.where(scale == 0, torch.ones_like(scale), scale)
    levels = torch.round(x.detach() / divisor).clamp_(-limit, limit).long()
    return levels, scale


def fake_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``x`` rounded to its ``bits``-bit symmetric grid, in ``x``'s dtype (no gradient path)."""
    levels, scale = quantize_symmetric(x, bits)
    return (levels.to(x.dtype) * scale).to(x.dtype)
