"""The tensors outside the mosaic (``plain/<dtype>``): as they are, or as coded byte planes.

The tensors of each dtype are flattened and concatenated in header order into one tensor
``plain/<dtype>`` (one entry per tensor would cost more header than a small tensor holds).
That tensor holds the values as they are, or, from version 4, when the header's ``plain``
names the dtype, their byte planes coded as streams, exactly as a motif table's
(:func:`.tables.encode_planes`; a uint8 tensor)::

    "plain": {"<dtype>": [{"bytes": [a, b], "stream": <see streams.py>}, ...], ...}

The writer codes a dtype only when that is smaller than its values, header entry included;
a file that codes none has no ``plain`` key and keeps the version an older reader reads.
The values of a trained network's norms and biases span few exponents, so the sign and
exponent planes shrink, while the low mantissa planes stay about 8 bits a byte (such a
stream falls back to bit-packing at 8 bits: the bytes as they are).
"""

from __future__ import annotations

import json
import math

import torch

from .container import DTYPE_NAMES, DTYPES, as_uint8_tensor
from .errors import FormatError
from .tables import decode_planes, encode_planes, tensor_bytes

PREFIX = "plain/"


def join(plain: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """``plain/<dtype>`` per dtype of the ``plain`` tensors (in header order), and the header's
    ``plain``: the planes of the dtypes stored coded (empty when none is)."""
    by_dtype: dict[str, list[torch.Tensor]] = {}
    for t in plain:
        by_dtype.setdefault(DTYPE_NAMES[t.dtype], []).append(t.detach().cpu().reshape(-1))
    tensors, coding = {}, {}
    for dtype, parts in by_dtype.items():
        values = torch.cat(parts)
        blob, planes = encode_planes(values)
        # The header grows by at most the entry's JSON (zlib shrinks it): count that too.
        if len(blob) + len(json.dumps(planes, separators=(",", ":"))) < values.numel() * values.element_size():
            tensors[PREFIX + dtype], coding[dtype] = as_uint8_tensor(blob), planes
        else:
            tensors[PREFIX + dtype] = values
    return tensors, coding


def coded_values(coding, entries: list[dict]) -> int:
    """How many values the coded dtypes of the header's ``plain`` (``coding``) decode to;
    checks that it names only dtypes of plain tensors.

    Raises:
        FormatError: ``coding`` is not an object, or names a dtype no plain tensor has.
    """
    sizes = _sizes(entries)
    if not isinstance(coding, dict) or not set(coding) <= set(sizes):
        raise FormatError(f"the header's plain must map dtypes of plain tensors ({sorted(sizes)}) to byte "
                          f"planes, got {coding!r:.200}")
    return sum(sizes[dtype] for dtype in coding)


def split(entries: list[dict], tensors: dict[str, torch.Tensor], coding: dict) -> dict[str, torch.Tensor]:
    """The inverse of :func:`join` for the plain tensor ``entries`` of the header (checked by
    :func:`coded_values`), checked against their shapes and dtypes.

    Raises:
        FormatError: a ``plain/<dtype>`` tensor does not hold the header's values.
    """
    sizes = _sizes(entries)
    joined = {}
    for dtype, size in sizes.items():
        name = PREFIX + dtype
        t = decode_planes(tensor_bytes(tensors, name), coding[dtype], DTYPES[dtype], size) \
            if dtype in coding else tensors[name]
        if DTYPE_NAMES[t.dtype] != dtype or tuple(t.shape) != (size,):
            raise FormatError(f"{name} must hold {size} {dtype} values, holds {DTYPE_NAMES[t.dtype]}{list(t.shape)}")
        joined[dtype] = t
    state, position = {}, dict.fromkeys(sizes, 0)
    for e in entries:
        start, n = position[e["dtype"]], math.prod(e["shape"])
        state[e["name"]] = joined[e["dtype"]][start:start + n].reshape(e["shape"]).clone()
        position[e["dtype"]] = start + n
    return state


def _sizes(entries: list[dict]) -> dict[str, int]:
    """Values per dtype of the plain tensor ``entries``."""
    sizes: dict[str, int] = {}
    for e in entries:
        sizes[e["dtype"]] = sizes.get(e["dtype"], 0) + math.prod(e["shape"])
    return sizes
