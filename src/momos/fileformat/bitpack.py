"""Fixed-width bit packing of unsigned integers.

Layout: value ``i`` occupies bits ``[i*b, (i+1)*b)`` of the byte string, least significant
bit first, and bit ``j`` of the string is bit ``j % 8`` of byte ``j // 8``; the last byte is
zero-filled. A width of 0 stores nothing (every value is 0).
"""

from __future__ import annotations

import numpy as np

from .errors import FormatError

MAX_BITS = 32
# Values per chunk: a multiple of 8, so every chunk ends on a byte boundary; bounds the
# temporary one-byte-per-bit matrix to CHUNK * bits bytes.
_CHUNK = 1 << 16


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` values of ``bits`` bits occupy."""
    return -(-count * bits // 8)


def bits_for(num_values: int) -> int:
    """``ceil(log2 num_values)``: the width that can tell ``num_values`` values apart (0 for one)."""
    if num_values < 1:
        raise ValueError(f"need at least one value, got {num_values}")
    return (num_values - 1).bit_length()


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """``values`` ``(n,)`` non-negative integers below ``2**bits`` -> ``packed_size(n, bits)`` bytes."""
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"bit width must be in [0, {MAX_BITS}], got {bits}")
    values = np.asarray(values).reshape(-1)
    if len(values) and (values.min() < 0 or int(values.max()) >> bits):
        raise ValueError(f"a value does not fit in {bits} unsigned bits")
    if bits == 0:
        return b""
    shifts = np.arange(bits, dtype=np.uint64)
    chunks = []
    for start in range(0, len(values), _CHUNK):
        part = values[start:start + _CHUNK].astype(np.uint64)
        bit_matrix = ((part[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        chunks.append(np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes())
    return b"".join(chunks)


def unpack_bits(data: bytes | memoryview, count: int, bits: int) -> np.ndarray:
    """The inverse of :func:`pack_bits`: ``(count,)`` uint64.

    Raises:
        FormatError: ``data`` is not exactly ``packed_size(count, bits)`` bytes, or the
            zero fill of the last byte is not zero.
    """
    if not 0 <= bits <= MAX_BITS:
        raise FormatError(f"bit width must be in [0, {MAX_BITS}], got {bits}")
    expected = packed_size(count, bits)
    if len(data) != expected:
        raise FormatError(f"{count} values of {bits} bits need {expected} bytes, found {len(data)}")
    values = np.zeros(count, dtype=np.uint64)
    if bits == 0:
        return values
    raw = np.frombuffer(data, dtype=np.uint8)
    tail = count * bits % 8
    if tail and raw[-1] >> tail:
        raise FormatError("the padding bits after the last packed value are not zero")
    chunk_bytes = _CHUNK * bits // 8
    for start in range(0, count, _CHUNK):
        part = raw[start // _CHUNK * chunk_bytes:][:chunk_bytes]
        n = min(_CHUNK, count - start)
        bit_matrix = np.unpackbits(part, bitorder="little", count=n * bits).reshape(n, bits)
        out = values[start:start + n]
        for j in range(bits):
            out |= bit_matrix[:, j].astype(np.uint64) << np.uint64(j)
    return values
