"""Storing motif tables: as floats, or as the q-bit integers of a symmetric grid plus a scale.

The stored form is chosen per file, over all codebooks (``K`` motifs of ``s`` values stacked):

- ``{"dtype": "float32"}`` (any of :data:`MOTIF_DTYPES`): the ``(K, s)`` tensor ``motifs``.
- ``{"dtype": "float32", "planes": [{"bytes": [a, b], "stream": ...}, ...]}``: the same values
  cut into byte planes (plane ``j``: byte ``j`` of every little-endian value, in order), each
  plane a stream of :mod:`.streams` over 256 symbols at ``motifs[a:b]`` (uint8). The sign and
  exponent byte of weights takes few values, so it codes to a few bits. Plain tensors use the
  same planes (:mod:`.plain`).
- ``{"bits": q, "levels": ...}``: ``level + 2^(q-1) - 1`` of every value, a stream over
  ``2^q - 1`` symbols in ``motif_levels`` (uint8), and one float32 scale per codebook in
  ``motif_scales``; a value is ``float32(level) * scale`` (see :mod:`momos.quantization`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..quantization import quantize_symmetric
from .bitpack import bits_for
from .container import as_uint8_tensor
from .errors import FormatError
from .streams import decode_stream, encode_stream, span_end

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
        candidates = _float_forms(stacked.to(MOTIF_DTYPES[storage]), storage)
    else:
        name = next(name for name, dtype in MOTIF_DTYPES.items()
                    if same_bits(stacked.to(dtype).to(stacked.dtype), stacked))
        candidates = _float_forms(stacked.to(MOTIF_DTYPES[name]), name)
        grid = _smallest_grid(tables)
        if grid is not None:
            candidates.append(_grid_form(*grid))
    return min(candidates, key=lambda c: sum(t.numel() * t.element_size() for t in c[0].values()))


def _float_forms(values: torch.Tensor, name: str) -> list[tuple[dict, dict]]:
    """The raw tensor, and its byte planes coded as streams (:func:`encode_planes`)."""
    blob, descs = encode_planes(values)
    return [({"motifs": values}, {"dtype": name}),
            ({"motifs": as_uint8_tensor(blob)}, {"dtype": name, "planes": descs})]


def encode_planes(values: torch.Tensor) -> tuple[bytes, list[dict]]:
    """The byte planes of ``values`` (plane ``j``: byte ``j`` of every little-endian value), each
    coded as a stream over 256 symbols, back to back, and their entries ``{"bytes", "stream"}``."""
    flat = values.contiguous().reshape(-1)
    planes = flat.view(torch.uint8).reshape(flat.numel(), flat.element_size()).numpy()
    streams, descs, position = [], [], 0
    for j in range(planes.shape[1]):
        data, desc = encode_stream(planes[:, j], 256)
        descs.append({"bytes": [position, position + len(data)], "stream": desc})
        streams.append(data)
        position += len(data)
    return b"".join(streams), descs


def _grid_form(bits: int, levels: torch.Tensor, scales: torch.Tensor) -> tuple[dict, dict]:
    limit = 2 ** (bits - 1) - 1
    data, desc = encode_stream((levels.reshape(-1) + limit).numpy(), 2 * limit + 1)
    return {"motif_levels": as_uint8_tensor(data), "motif_scales": scales}, {"bits": bits, "levels": desc}


def _smallest_grid(tables: list[torch.Tensor]) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """``(q, levels, scales)`` for the fewest bits ``q`` whose symmetric grid (one scale per
    table) reproduces every table exactly, or None."""
    as_float32 = [t.to(torch.float32) for t in tables]
    if not all(same_bits(t32.to(t.dtype), t) for t32, t in zip(as_float32, tables)):
        return None
    # A q-bit grid has 2^q - 1 values: fewer bits cannot hold the distinct values of a table.
    distinct = max(int(torch.unique(t).numel()) for t in as_float32)
    for bits in range(max(2, bits_for(distinct + 1)), MAX_GRID_BITS + 1):
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
    count = sum(ks) * block_size
    if not isinstance(storage, dict):
        raise FormatError("malformed motif storage in the header")
    if set(storage) in ({"dtype"}, {"dtype", "planes"}):
        dtype = MOTIF_DTYPES.get(storage["dtype"]) if isinstance(storage["dtype"], str) else None
        if dtype is None:
            raise FormatError(f"unknown motif dtype {storage['dtype']!r}")
        values = (decode_planes(tensor_bytes(tensors, "motifs"), storage["planes"], dtype, count)
                  if "planes" in storage else tensors.get("motifs"))
        if values is None or values.dtype != dtype or values.numel() != count:
            raise FormatError(f"the motif table must hold {count} {storage['dtype']} values")
        return list(values.reshape(-1, block_size).split(ks))
    if set(storage) == {"bits", "levels"}:
        return _grid_tables(storage, tensors, ks, block_size)
    raise FormatError(f"unknown motif storage {sorted(map(str, storage))}")


def decode_planes(blob: bytes, descs, dtype: torch.dtype, count: int) -> torch.Tensor:
    """The inverse of :func:`encode_planes`: ``(count,)`` values of ``dtype``.

    Raises:
        FormatError: the entries do not describe ``dtype.itemsize`` planes tiling ``blob``.
    """
    if not isinstance(descs, list) or len(descs) != dtype.itemsize:
        raise FormatError(f"{dtype} values need {dtype.itemsize} byte planes")
    planes, position = np.empty((count, dtype.itemsize), dtype=np.uint8), 0
    for j, desc in enumerate(descs):
        if not isinstance(desc, dict) or set(desc) != {"bytes", "stream"}:
            raise FormatError("malformed byte plane entry")
        end = span_end(desc["bytes"], position, len(blob), "byte plane")
        planes[:, j] = decode_stream(blob[position:end], desc["stream"], 256, count)
        position = end
    if position != len(blob):
        raise FormatError("byte planes leave bytes that belong to no plane")
    return torch.from_numpy(planes).reshape(-1).view(dtype)


def _grid_tables(storage, tensors, ks: list[int], block_size: int) -> list[torch.Tensor]:
    bits = storage["bits"]
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= MAX_GRID_BITS:
        raise FormatError(f"motif grid bits must be an int in [2, {MAX_GRID_BITS}], got {bits!r}")
    scales = tensors.get("motif_scales")
    if scales is None or scales.dtype != torch.float32 or tuple(scales.shape) != (len(ks),):
        raise FormatError(f"the motif scales must be a float32 tensor of shape ({len(ks)},)")
    if not torch.isfinite(scales).all() or (scales < 0).any():
        raise FormatError("a motif scale is negative, NaN or infinite")
    limit = 2 ** (bits - 1) - 1
    stored = decode_stream(tensor_bytes(tensors, "motif_levels"), storage["levels"], 2 * limit + 1,
                           sum(ks) * block_size)
    levels = torch.from_numpy(stored - limit).reshape(-1, block_size)
    return [_grid_values(level, scale) for level, scale in zip(levels.split(ks), scales)]


def tensor_bytes(tensors, name: str) -> bytes:
    """The bytes of the 1-D uint8 tensor ``name``."""
    blob = tensors.get(name)
    if blob is None or blob.dtype != torch.uint8 or blob.dim() != 1:
        raise FormatError(f"{name} must be a 1-D uint8 tensor")
    return blob.numpy().tobytes()
