"""Power-of-two scales that let one codebook serve tensors of very different magnitudes.

A normalized mosaic holds every weight as ``scale x motif value``, with one scale per tensor
(``normalize="tensor"``) or per output channel, dim 0 (``"channel"``; 1-D tensors get one).
A scale is ``2**e`` with ``e`` the root-mean-square of the tensor's (or channel's) values,
in binary logarithm, rounded to the nearest integer. Powers of two make the normalization
exact: multiplying or dividing a float by ``2**e`` only shifts its exponent, so the weights
written into the model divided by their scales give back the motifs bit for bit (what
``momos.save`` relies on), and a scale costs one signed byte in a file.

Pure functions on tensors; a tensor's scales have shape ``()`` or ``(rows,)``.
"""

from __future__ import annotations

import torch

# Far inside float32's normal range, so that scaling a value of a normalized magnitude (or a
# motif) by 2**e never overflows or loses bits to subnormals; fits a signed byte.
EXPONENT_RANGE = (-96, 96)


def scale_exponents(tensor: torch.Tensor, normalize: str) -> torch.Tensor:
    """The exponents ``e`` of a tensor's scales ``2**e``: int16, shape ``()`` or ``(rows,)``.

    A tensor (or channel) of zeros gets ``e = 0``.
    """
    values = tensor.detach().double()
    if normalize == "channel" and values.dim() >= 2:
        square = values.flatten(1).square().mean(dim=1)
    elif normalize in ("tensor", "channel"):
        square = values.square().mean() if values.numel() else values.new_zeros(())
    else:
        raise ValueError(f"no scales for normalize={normalize!r}")
    # log2 of the RMS is half the log2 of the mean square
    exponent = torch.where(square > 0, torch.log2(square) / 2, torch.zeros_like(square)).round()
    return exponent.clamp(*EXPONENT_RANGE).to(torch.int16)


def divide(tensor: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``tensor / 2**e``, each row of ``tensor`` by its own exponent when ``exponents`` is 1-D."""
    return torch.ldexp(tensor, -_broadcastable(exponents, tensor))


def multiply(tensor: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``tensor * 2**e``, the inverse of :func:`divide`."""
    return torch.ldexp(tensor, _broadcastable(exponents, tensor))


def exponents_of(scales: torch.Tensor, name: str = "scales") -> torch.Tensor:
    """The exponents of scales that must be powers of two within :data:`EXPONENT_RANGE`.

    Raises:
        ValueError: a scale is not such a power of two.
    """
    scales = scales.detach().double().cpu()
    mantissa, exponent = torch.frexp(scales)
    if not bool((mantissa == 0.5).all()):
        raise ValueError(f"{name} must be powers of two")
    exponent = exponent - 1
    low, high = EXPONENT_RANGE
    if len(exponent.flatten()) and not (low <= int(exponent.min()) and int(exponent.max()) <= high):
        raise ValueError(f"{name} must lie in [2**{low}, 2**{high}]")
    return exponent.to(torch.int16)


def scales_of(exponents: torch.Tensor) -> torch.Tensor:
    """``2**e`` as float32."""
    return torch.ldexp(torch.ones(exponents.shape), exponents.to(torch.float32))


def _broadcastable(exponents: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    exponents = exponents.to(device=tensor.device, dtype=tensor.dtype)
    return exponents.reshape(exponents.shape + (1,) * (tensor.dim() - exponents.dim()))
