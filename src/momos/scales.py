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

import math
from collections.abc import Mapping, Sequence

import torch

# Scales given by position (one tensor per mosaic tensor) or by parameter name.
Scales = Sequence[torch.Tensor] | Mapping[str, torch.Tensor]

# Far inside float32's normal range, so that scaling a value of a normalized magnitude (or a
# motif) by 2**e never overflows or loses bits to subnormals; fits a signed byte.
EXPONENT_RANGE = (-96, 96)


def scale_shape(shape, normalize: str) -> tuple[int, ...]:
    """The shape of a tensor's scales: ``(shape[0],)`` per output channel of a tensor of two or
    more dimensions under ``"channel"``, else ``()`` (one per tensor)."""
    if normalize not in ("tensor", "channel"):
        raise ValueError(f"no scales for normalize={normalize!r}")
    return (int(shape[0]),) if normalize == "channel" and len(shape) >= 2 else ()


def num_scales(shapes, normalize: str) -> int:
    """How many scales tensors of these shapes have (0 without normalization)."""
    if normalize == "none":
        return 0
    return sum(math.prod(scale_shape(shape, normalize)) for shape in shapes)


def scale_exponents(tensor: torch.Tensor, normalize: str) -> torch.Tensor:
    """The exponents ``e`` of a tensor's scales ``2**e`` (int16, shape :func:`scale_shape`),
    measured: the RMS of the tensor or channel, rounded in binary logarithm.

    A tensor (or channel) of zeros gets ``e = 0``.
    """
    values = tensor.detach().double()
    if scale_shape(values.shape, normalize):
        square = values.flatten(1).square().mean(dim=1)
    else:
        square = values.square().mean() if values.numel() else values.new_zeros(())
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


def given_exponents(tensors: list[torch.Tensor], normalize: str, scales: Scales | None, *,
                    names: Sequence[str] | None = None) -> list[torch.Tensor] | None:
    """The int16 exponents of given scales, one tensor of shape :func:`scale_shape` per tensor;
    None when ``normalize == "none"``.

    Args:
        scales: one tensor of powers of two per tensor (``ProjectionStats.scales``,
            ``Projector.scales``), or a mapping from ``names`` to them. A tensor of the right
            number of values is reshaped (a checkpoint stores them flat).

    Raises:
        ValueError: scales missing under normalization, given without it, of the wrong number
            or size, or not powers of two in :data:`EXPONENT_RANGE`.
    """
    if normalize == "none":
        if scales is not None:
            raise ValueError("scales given, but the configuration has normalize='none'")
        return None
    if scales is None:
        raise ValueError(f"normalize={normalize!r} needs the scales of the mosaic: the weights "
                         "alone do not tell them (pass ProjectionStats.scales or Projector.scales)")
    labels = [repr(n) for n in names] if names is not None else [f"tensor {i}" for i in range(len(tensors))]
    if isinstance(scales, Mapping):
        if names is None:
            raise TypeError("scales given by name need the tensors' names")
        missing = [name for name in names if name not in scales]
        if missing:
            raise ValueError(f"no scales given for {missing[:5]}")
        scales = [scales[name] for name in names]
    scales = list(scales)
    if len(scales) != len(tensors):
        raise ValueError(f"{len(scales)} scale tensors given for {len(tensors)} tensors")
    exponents = []
    for label, tensor, table in zip(labels, tensors, scales):
        table = torch.as_tensor(table)
        shape = scale_shape(tensor.shape, normalize)
        if table.numel() != math.prod(shape):
            raise ValueError(f"the scales of {label} hold {table.numel()} values; under normalize="
                             f"{normalize!r} a tensor of shape {tuple(tensor.shape)} has {math.prod(shape)}")
        exponents.append(exponents_of(table.reshape(shape), f"the scales of {label}"))
    return exponents


def scales_of(exponents: torch.Tensor) -> torch.Tensor:
    """``2**e`` as float32."""
    return torch.ldexp(torch.ones(exponents.shape), exponents.to(torch.float32))


def _broadcastable(exponents: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    exponents = exponents.to(device=tensor.device, dtype=tensor.dtype)
    return exponents.reshape(exponents.shape + (1,) * (tensor.dim() - exponents.dim()))
