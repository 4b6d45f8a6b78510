"""Storing each codebook's motif indices: bit-packed or rANS-coded, whichever is smaller.

``{"coding": "packed", "bits": b}``: ``ceil(log2 k)`` bits per index (:mod:`.bitpack`).
``{"coding": "rans", "frequency_bits": f}``: the ``k`` frequencies minus one, packed at
``f`` bits, then the ``W = rans.lanes_for(m)`` final states (uint32 little-endian), then the
16-bit words (little-endian) of :mod:`.rans`.
"""

from __future__ import annotations

import numpy as np

from . import rans
from .bitpack import bits_for, pack_bits, packed_size, unpack_bits
from .errors import FormatError

CODINGS = ("auto", "packed", "rans")


def encode_stream(indices: np.ndarray, k: int, coding: str = "auto") -> tuple[bytes, dict]:
    """Bytes and header entry for ``indices`` ``(m,)`` in ``[0, k)``."""
    if coding not in CODINGS:
        raise ValueError(f"index coding must be one of {CODINGS}, got {coding!r}")
    candidates = []
    if coding in ("auto", "packed"):
        bits = bits_for(k)
        candidates.append((pack_bits(indices, bits), {"coding": "packed", "bits": bits}))
    if coding == "rans" or (coding == "auto" and 1 < k <= rans.MAX_SYMBOLS and len(indices)):
        if k > rans.MAX_SYMBOLS:
            raise ValueError(f"rANS coding supports at most {rans.MAX_SYMBOLS} motifs per codebook, got {k}")
        candidates.append(_rans_stream(indices, k))
    return min(candidates, key=lambda c: len(c[0]))


def _rans_stream(indices: np.ndarray, k: int) -> tuple[bytes, dict]:
    counts = np.maximum(np.bincount(indices, minlength=k), 1)
    freqs = rans.quantize_frequencies(counts)
    states, words = rans.encode(indices, freqs)
    frequency_bits = bits_for(int(freqs.max()))
    data = (pack_bits(freqs - 1, frequency_bits) + states.astype("<u4").tobytes()
            + words.astype("<u2").tobytes())
    return data, {"coding": "rans", "frequency_bits": frequency_bits}


def decode_stream(data: bytes, desc, k: int, count: int) -> np.ndarray:
    """``(count,)`` int64 indices in ``[0, k)``.

    Raises:
        FormatError: a malformed description, a stream of the wrong length, an index out of
            range, or an entropy-coded stream that does not decode cleanly.
    """
    if not isinstance(desc, dict):
        raise FormatError("malformed index coding in the header")
    if desc.get("coding") == "packed" and set(desc) == {"coding", "bits"}:
        bits = _small_int(desc["bits"], 32, "index bits")
        if bits != bits_for(k):
            raise FormatError(f"{k} motifs need {bits_for(k)}-bit indices, the header says {bits}")
        indices = unpack_bits(data, count, bits)
        if count and int(indices.max()) >= k:
            raise FormatError(f"a motif index is out of range (>= {k})")
        return indices.astype(np.int64)
    if desc.get("coding") == "rans" and set(desc) == {"coding", "frequency_bits"}:
        lanes = rans.lanes_for(count)
        frequency_bits = _small_int(desc["frequency_bits"], rans.PRECISION, "frequency bits")
        if k > rans.MAX_SYMBOLS:
            raise FormatError(f"an entropy-coded codebook has at most {rans.MAX_SYMBOLS} motifs, got {k}")
        table_bytes = packed_size(k, frequency_bits)
        words_bytes = len(data) - table_bytes - 4 * lanes
        if words_bytes < 0 or words_bytes % 2:
            raise FormatError("the entropy-coded index stream has an impossible length")
        freqs = unpack_bits(data[:table_bytes], k, frequency_bits).astype(np.int64) + 1
        states = np.frombuffer(data, dtype="<u4", count=lanes, offset=table_bytes)
        words = np.frombuffer(data, dtype="<u2", offset=table_bytes + 4 * lanes)
        return rans.decode(states, words, freqs, count)
    raise FormatError(f"unknown index coding {desc!r}")


def _small_int(value, maximum: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise FormatError(f"{what} must be an int in [0, {maximum}], got {value!r}")
    return value
