"""Storing motif tables: as floats, or as the q-bit integers of a symmetric grid plus a scale.

The stored form is chosen per file, over all codebooks: ``{"dtype": "float16"}`` (any of
:data:`MOTIF_DTYPES`) stores the ``(K, s)`` stacked tables as one tensor ``motifs``;
``{"bits": q}`` stores ``level + 2^(q-1) - 1`` of every motif value bit-packed in
``motif_levels`` and one float32 scale per codebook in ``motif_scales``; a value is
``float32(level) * scale`` (see :mod:`momos.quantization`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..quantization import quantize_symmetric
from .bitpack import pack_bits, packed_size, unpack_bits
from .errors import FormatError

MOTIF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}
MAX_GRID_BITS = 16
STORAGE_CHOICES = ("auto", *MOTIF_DTYPES)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` hold exactly the same values, bit for bit (NaNs and signed zeros too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


def encode_tables(tables: list[torch.Tensor], storage: str = "auto") -> tuple[dict[str, torch.Tensor], dict]:
    """The stored form of the motif tables ``[(k_i, s)]``: tensors for the file and the header entry.

    ``storage="auto"`` takes the smallest lossless form; a dtype name casts to it (lossy when
    the values do not fit).
    """
    if storage not in STORAGE_CHOICES:
        raise ValueError(f"motif storage must be one of {STORAGE_CHOICES}, got {storage!r}")
    stacked = torch.cat(tables)
    if storage != "auto":
        return {"motifs": stacked.to(MOTIF_DTYPES[storage])}, {"dtype": storage}
    for name, dtype in MOTIF_DTYPES.items():
        if same_bits(stacked.to(dtype).to(stacked.dtype), stacked):
            best = ({"motifs": stacked.to(dtype)}, {"dtype": name})
            break
    grid = _smallest_grid(tables)
    if grid is not None:
        bits, levels, scales = grid
        if packed_size(levels.numel(), bits) + 4 * len(scales) < best[0]["motifs"].numel() * best[0]["motifs"].element_size():
            limit = 2 ** (bits - 1) - 1
            packed = pack_bits((levels.reshape(-1) + limit).numpy(), bits)
            best = ({"motif_levels": torch.frombuffer(bytearray(packed), dtype=torch.uint8) if packed
                     else torch.zeros(0, dtype=torch.uint8),
                     "motif_scales": scales}, {"bits": bits})
    return best


def _smallest_grid(tables: list[torch.Tensor]) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """``(q, levels, scales)`` for the fewest bits ``q`` whose symmetric grid (one scale per
    table) reproduces every table exactly, or None."""
    as_float32 = [t.to(torch.float32) for t in tables]
    if not all(same_bits(t32.to(t.dtype), t) for t32, t in zip(as_float32, tables)):
        return None
    for bits in range(2, MAX_GRID_BITS + 1):
        levels, scales = [], []
        for table in as_float32:
            level, scale = quantize_symmetric(table, bits)
            if not same_bits(_grid_values(level, scale), table):
                break
            levels.append(level)
            scales.append(scale)
        else:
            return bits, torch.cat(levels), torch.stack(scales).to(torch.float32)
    return None


def _grid_values(levels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 values of grid levels; the one formula both writer and reader use."""
    return levels.to(torch.float32) * scale.to(torch.float32)


def decode_tables(storage, tensors: dict[str, torch.Tensor], ks: list[int], block_size: int) -> list[torch.Tensor]:
    """The motif tables ``[(k_i, s)]`` from the stored form.

    Raises:
        FormatError: the header entry or the tensors do not match each other or ``ks``.
    """
    total = sum(ks)
    if not isinstance(storage, dict) or len(storage) != 1:
        raise FormatError("malformed motif storage in the header")
    if "dtype" in storage:
        dtype = MOTIF_DTYPES.get(storage["dtype"]) if isinstance(storage["dtype"], str) else None
        if dtype is None:
            raise FormatError(f"unknown motif dtype {storage['dtype']!r}")
        stacked = tensors.get("motifs")
        if stacked is None or stacked.dtype != dtype or tuple(stacked.shape) != (total, block_size):
            raise FormatError(f"the motif table must be a {storage['dtype']} tensor of shape ({total}, {block_size})")
        return list(stacked.split(ks))
    bits = storage.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= MAX_GRID_BITS:
        raise FormatError(f"motif grid bits must be an int in [2, {MAX_GRID_BITS}], got {bits!r}")
    packed, scales = tensors.get("motif_levels"), tensors.get("motif_scales")
    if packed is None or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise FormatError("the motif levels must be a 1-D uint8 tensor")
    if scales is None or scales.dtype != torch.float32 or tuple(scales.shape) != (len(ks),):
        raise FormatError(f"the motif scales must be a float32 tensor of shape ({len(ks)},)")
    if not torch.isfinite(scales).all() or (scales < 0).any():
        raise FormatError("a motif scale is negative, NaN or infinite")
    stored = unpack_bits(packed.numpy().tobytes(), total * block_size, bits)
    limit = 2 ** (bits - 1) - 1
    if (stored > 2 * limit).any():
        raise FormatError(f"a motif level is outside the {bits}-bit grid")
    levels = torch.from_numpy(stored.astype(np.int64) - limit).reshape(total, block_size)
    return [_grid_values(level, scale) for level, scale in zip(levels.split(ks), scales)]
