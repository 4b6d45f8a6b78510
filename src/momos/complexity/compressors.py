"""Generic compressors at fixed settings, and what their windows can see.

Every compressor is deterministic: the same bytes in give the same bytes out (gzip's
header timestamp is fixed to 0). ``COMPRESSORS`` holds the paper's settings (gzip -9,
bz2 -9, xz/lzma preset 9) plus zstd at its maximum level; ``FAST_COMPRESSORS`` trades a
few percent of ratio for speed (see :data:`FAST_SETTINGS`).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from typing import Callable, Iterable

import zstandard

Compressor = Callable[[bytes], bytes]

_ZSTD_MAX = zstandard.MAX_COMPRESSION_LEVEL


def _gzip(level: int) -> Compressor:
    return lambda data: gzip.compress(data, compresslevel=level, mtime=0)


def _bz2(level: int) -> Compressor:
    return lambda data: bz2.compress(data, compresslevel=level)


def _lzma(preset: int) -> Compressor:
    return lambda data: lzma.compress(data, preset=preset)


def _zstd(level: int) -> Compressor:
    # A fresh compressor per call: a ZstdCompressor is not thread safe, and one call is cheap to set up.
    return lambda data: zstandard.ZstdCompressor(level=level).compress(data)


COMPRESSORS: dict[str, Compressor] = {
    "gzip": _gzip(9),
    "bz2": _bz2(9),
    "lzma": _lzma(9),
    "zstd": _zstd(_ZSTD_MAX),
}

FAST_SETTINGS = {"gzip": "level 6", "bz2": "level 9", "lzma": "preset 1", "zstd": "level 15"}
"""The fast settings. gzip -9 spends seconds on the long runs of equal bytes of the binarized
payload for a ratio about 6% higher than -6 (the same on float32); lzma preset 1 and zstd 15
search for matches less hard: within about 3% of the full settings on float32 mosaics, about
20% lower on the binarized byte payload. bz2 -9 is already fast, and a lower level would
shrink its block (the structure it can see)."""

FAST_COMPRESSORS: dict[str, Compressor] = {
    "gzip": _gzip(6),
    "bz2": _bz2(9),
    "lzma": _lzma(1),
    "zstd": _zstd(15),
}

WINDOW_BYTES: dict[str, int] = {
    "gzip": 32 * 1024,                 # deflate's sliding window, at every level
    "bz2": 900_000,                    # -9: Burrows-Wheeler blocks of 900 kB, compressed independently
    "lzma": 64 * 2**20,                # preset 9: 64 MiB dictionary
    "zstd": 2 ** zstandard.ZstdCompressionParameters.from_level(_ZSTD_MAX).window_log,
}
"""How far back each compressor (at the settings of :data:`COMPRESSORS`) can find a repeat."""


def compressor_table(fast: bool = False) -> dict[str, Compressor]:
    return FAST_COMPRESSORS if fast else COMPRESSORS


def compressed_sizes(data: bytes, names: Iterable[str] | None = None, *,
                     fast: bool = False) -> dict[str, int]:
    """Compressed size in bytes of ``data`` under each named compressor (default: all four).

    Raises:
        ValueError: an unknown compressor name (the valid ones are listed).
        TypeError: ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    table = compressor_table(fast)
    names = list(table) if names is None else list(names)
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"unknown compressor(s) {unknown}; valid: {list(table)}")
    return {name: len(table[name](bytes(data))) for name in names}


def window_warning(name: str, structure_bytes: int, payload: str) -> str | None:
    """A sentence saying that ``name`` cannot see a structure of ``structure_bytes``, or None.

    A mosaic repeats each of its motifs; with ``k`` motifs used about equally, the same motif
    recurs about ``k`` blocks later, so a compressor whose window is smaller than the motif
    table (in the payload's bytes) mostly cannot find the repeats.
    """
    window = WINDOW_BYTES[name]
    if structure_bytes <= window:
        return None
    return (f"{name}: the motif table is {structure_bytes} bytes in the {payload} payload, larger "
            f"than {name}'s {window}-byte window, so {name} cannot see most repeats of a motif; "
            f"its ratio understates the mosaic's simplicity")
