"""Round-to-nearest (RTN) quantization, the baseline MoMos is compared with in PRETRAINED.md.

Symmetric ``b``-bit RTN: a tensor is divided by a scale, rounded to the nearest integer and
clamped to the ``2**(b-1) - 1`` levels on either side of zero, ``-(2**(b-1)-1) ... 2**(b-1)-1``
(int2 is ternary, int8 has 255 levels). The scale is ``absmax / (2**(b-1) - 1)``, one per tensor
or one per output channel (dim 0; a 1-D tensor always gets one). A tensor or channel of zeros
gets scale 1 (its codes are 0 whatever the scale).

Its size is counted as an entropy coder would store it: ``n`` codes at the empirical entropy of
their histogram, plus the histogram itself (``2**b`` counts of 32 bits, what a decoder needs to
rebuild the code) and the scales at 32 bits each.

Pure functions on tensors; nothing here knows about models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

COUNT_BITS = 32      # one entry of a code-frequency table
SCALE_BITS = 32      # one float32 scale


def max_level(bits: int) -> int:
    """The largest code, ``2**(bits-1) - 1``: codes lie in ``[-max_level, max_level]``."""
    if bits < 2:
        raise ValueError(f"symmetric RTN needs at least 2 bits, got {bits}")
    return 2 ** (bits - 1) - 1


def rtn_scales(tensor: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """``absmax / max_level(bits)``: shape ``()`` per tensor, ``(rows,)`` per output channel.

    A 1-D (or 0-D) tensor gets one scale even ``per_channel``; an all-zero tensor or row gets 1.
    """
    values = tensor.detach().float()
    if per_channel and values.dim() >= 2:
        absmax = values.reshape(len(values), -1).abs().amax(dim=1)
    else:
        absmax = values.abs().max() if values.numel() else values.new_zeros(())
    scale = absmax / max_level(bits)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize(tensor: torch.Tensor, bits: int, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales)``: int64 codes of ``tensor``'s shape in ``[-max_level, max_level]`` and
    the scales of :func:`rtn_scales`."""
    scales = rtn_scales(tensor, bits, per_channel)
    level = max_level(bits)
    codes = torch.round(tensor.detach().float() / _broadcast(scales, tensor)).clamp(-level, level)
    return codes.to(torch.int64), scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``codes * scale``, each row by its own scale when ``scales`` is 1-D."""
    return (codes.float() * _broadcast(scales, codes)).to(dtype)


def rtn(tensor: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """The RTN approximation of ``tensor``, same shape and dtype."""
    codes, scales = quantize(tensor, bits, per_channel)
    return dequantize(codes, scales, tensor.dtype)


def entropy(codes: torch.Tensor) -> float:
    """The empirical entropy of the code histogram, in bits per code (0 for one distinct code)."""
    counts = torch.unique(codes.flatten(), return_counts=True)[1].double()
    if not len(counts):
        return 0.0
    p = counts / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def coded_bits(codes: torch.Tensor, scales: torch.Tensor, bits: int) -> float:
    """The stored size of one quantized tensor in bits: ``n x entropy`` of its codes, its
    ``2**bits``-entry frequency table and its scales."""
    return codes.numel() * entropy(codes) + 2 ** bits * COUNT_BITS + scales.numel() * SCALE_BITS


def value_bits(tensor: torch.Tensor) -> int:
    """A tensor stored as it is: every value at its dtype's width."""
    return tensor.numel() * tensor.element_size() * 8


def bits_per_weight(state: Mapping[str, torch.Tensor], quantized_bits: Mapping[str, float],
                    num_parameters: int) -> float:
    """The whole model's stored bits per parameter value: the tensors of ``quantized_bits`` at
    their coded size, every other entry of ``state`` (free parameters, buffers) as it is."""
    unknown = set(quantized_bits) - set(state)
    if unknown:
        raise KeyError(f"quantized tensors not in the state dict: {sorted(unknown)[:3]}")
    total = sum(quantized_bits.values())
    total += sum(value_bits(t) for name, t in state.items() if name not in quantized_bits)
    return total / num_parameters


def quantize_all(tensors: Iterable[tuple[str, torch.Tensor]], bits: int, per_channel: bool
                 ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """RTN of each named tensor: ``(new values, coded bits)``, both keyed by name."""
    values, sizes = {}, {}
    for name, tensor in tensors:
        codes, scales = quantize(tensor, bits, per_channel)
        values[name] = dequantize(codes, scales, tensor.dtype)
        sizes[name] = coded_bits(codes, scales, bits)
    return values, sizes


def _broadcast(scales: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scales.reshape(scales.shape + (1,) * (like.dim() - scales.dim())) if scales.dim() else scales

