"""Block indices in as few bits as their codebook needs, and the motif rows they select.

A codebook of ``k`` motifs needs ``b = ceil(log2 k)`` bits per index. An index is held in two
parts: its low 8 or 16 bits in a uint8 or uint16 tensor, and the
bits above them, rounded up to 1, 2, 4 or 8, packed ``8 // h`` to a byte (lowest bits and first
block first) in a uint8 tensor. Where the rounding reaches a whole byte the index is one integer
instead, and above 24 bits an int32 (or int64):

====================  ===========  =========  ==============
k                     low part     high bits  bits per index
====================  ===========  =========  ==============
up to 256             uint8        --         8
257 .. 4,096          uint8        1, 2, 4    9, 10, 12
4,097 .. 65,536       uint16       --         16
65,537 .. 2^24        uint16       1, 2, 4, 8 17, 18, 20, 24
above 2^24            int32/int64  --         32/64
====================  ===========  =========  ==============

so the 251,781 motifs of a 100M-parameter model's global codebook at capacity 0.01 cost 18 bits
(2.25 bytes) per block where an int32 costs 4. Splitting at a byte keeps both parts aligned: the
high bits unpack with one shift and mask per block, no index straddles a word.

:func:`gather` selects the motif rows: on CPU with numba (``momos[fast]``) one compiled pass
unpacks each index and copies its row as a few wide elements, 4x to 5x faster than PyTorch's
indexing of the same rows (``bench/inference.py`` notes); elsewhere, and under tracing or
``torch.compile``, PyTorch unpacks (:func:`unpack`) and indexes
(:func:`momos.blocks.gather_rows`). Both copy the motif values, so the rows are bit for bit
``motifs[indices]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .blocks import as_row_elements, gather_rows

try:
    import numba
except ImportError:  # numba is optional; the PyTorch path serves without it
    numba = None

HIGH_BITS = (1, 2, 4, 8)


@dataclass(frozen=True)
class IndexFormat:
    """How the indices of a ``k``-motif codebook are held: ``dtype`` of the low part (the whole
    index when ``high_bits`` is 0) and the bits per index packed above it."""

    dtype: torch.dtype
    high_bits: int

    @property
    def bits(self) -> int:
        """Bits per index."""
        return torch.iinfo(self.dtype).bits + self.high_bits


def index_format(k: int) -> IndexFormat:
    """The :class:`IndexFormat` of a codebook of ``k >= 1`` motifs (the module's table)."""
    if k < 1:
        raise ValueError(f"a codebook holds at least one motif, not {k}")
    bits = max(1, (k - 1).bit_length())
    if bits <= 8:
        return IndexFormat(torch.uint8, 0)
    if bits <= 12:
        return IndexFormat(torch.uint8, _rounded_up(bits - 8))
    if bits <= 16:
        return IndexFormat(torch.uint16, 0)
    if bits <= 24:
        return IndexFormat(torch.uint16, _rounded_up(bits - 16))
    return IndexFormat(torch.int32 if bits <= 31 else torch.int64, 0)


def pack(indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(m,)`` integer indices in ``0 .. k-1`` -> their low part ``(m,)`` and packed high bits
    ``(ceil(m * high_bits / 8),)`` uint8, or None when the format has none."""
    fmt = index_format(k)
    indices = indices.long()
    if fmt.high_bits == 0:
        return indices.to(fmt.dtype), None
    low_bits = torch.iinfo(fmt.dtype).bits
    per_byte = 8 // fmt.high_bits
    high = indices >> low_bits
    high = torch.cat([high, high.new_zeros(-len(high) % per_byte)]).view(-1, per_byte)
    shifts = torch.arange(0, 8, fmt.high_bits, device=indices.device)
    return (indices & ((1 << low_bits) - 1)).to(fmt.dtype), (high << shifts).sum(1).to(torch.uint8)


def unpack(low: torch.Tensor, high: torch.Tensor | None, k: int) -> torch.Tensor:
    """The ``(m,)`` int64 indices that :func:`pack` split into ``low`` and ``high`` (or plain
    indices, ``high`` None, of any integer dtype).

    Integer arithmetic only (no bitwise operators), so an ONNX export traces it into ops that
    every runtime has (``Mod``, ``Div``, ``Mul``, ``Add``).
    """
    indices = low.long()
    if high is None:
        return indices
    high_bits = index_format(k).high_bits
    places = 2 ** torch.arange(0, 8, high_bits, device=high.device)
    parts = high.long().unsqueeze(1).div(places, rounding_mode="floor").remainder(1 << high_bits)
    return indices + parts.reshape(-1)[:len(low)] * (1 << torch.iinfo(low.dtype).bits)


def gather(motifs: torch.Tensor, low: torch.Tensor, high: torch.Tensor | None) -> torch.Tensor:
    """The motif rows of the packed indices: ``(k, s)`` motifs -> ``(m, s)`` blocks, bit for bit
    ``motifs[unpack(low, high, k)]``."""
    if (numba is None or motifs.device.type != "cpu" or not motifs.is_contiguous() or motifs.numel() == 0
            or torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return gather_rows(motifs, unpack(low, high, len(motifs)))
    table = as_row_elements(motifs).numpy()   # a row moves as a few wide elements, as in gather_rows
    # numpy asks for transparent huge pages for large arrays (madvise), torch.empty does not: a
    # fresh 64 MB weight is then written in about a third of the time, page faults included
    rows = np.empty((len(low), table.shape[1]), dtype=table.dtype)
    high_bits = 0 if high is None else index_format(len(motifs)).high_bits
    arguments = (low.numpy(), None if high is None else high.numpy(), 8 * low.element_size(), high_bits,
                 (8 // max(1, high_bits)).bit_length() - 1)
    if table.shape[1] == 1:   # one element per row: the simpler loop is twice as fast
        _gather_kernel(table.reshape(-1), *arguments, rows.reshape(-1))
    else:
        _gather_kernel(table, *arguments, rows)
    return torch.from_numpy(rows).view(motifs.dtype).reshape(-1, motifs.shape[1])


def index_dtype(k: int) -> torch.dtype:
    """The smallest integer dtype whose values hold indices ``0 .. k-1`` unpacked (for kernels
    and runtimes that read plain indices)."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if k - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def _rounded_up(bits: int) -> int:
    return next(h for h in HIGH_BITS if h >= bits)


if numba is not None:
    # One thread: the copy is bound by memory; a parallel kernel (numba prange) took 2x the time
    # for 65,536 rows and saved nothing for a million, on one thread or two of this 2-core machine.
    @numba.njit(nogil=True, cache=True)
    def _gather_kernel(table, low, high, low_bits, high_bits, per_byte_log2, out):
        """``out[i] = table[index i]`` for 1-D ``table`` and ``out`` (one element per row), or
        row by row for 2-D ones. Index ``i`` is ``low[i]`` plus, above its ``low_bits``, its
        ``high_bits`` bits of ``high``, which holds ``2**per_byte_log2`` indices' bits per byte
        (``high`` None: ``low[i]`` alone)."""
        mask = (1 << high_bits) - 1
        for i in range(low.shape[0]):
            index = np.int64(low[i])
            if high is not None:
                byte = np.int64(high[i >> per_byte_log2])
                place = (i & ((1 << per_byte_log2) - 1)) * high_bits
                index |= ((byte >> place) & mask) << low_bits
            if table.ndim == 1:
                out[i] = table[index]
            else:
                for c in range(table.shape[1]):
                    out[i, c] = table[index, c]
