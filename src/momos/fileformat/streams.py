"""Storing a stream of symbols from an alphabet of ``k``: bit-packed or rANS-coded, whichever
is smaller. Motif indices are such a stream (``k`` motifs), and so are the bytes of a motif
table and the levels of a quantized one.

``{"coding": "packed", "bits": b}``: ``b = ceil(log2 k)`` bits per symbol (:mod:`.bitpack`).

``{"coding": "rans", "frequency_bits": f, "sparse": bool}``: the frequency table, then the
``W = rans.lanes_for(n)`` final states (uint32 little-endian), then the 16-bit words
(little-endian) of :mod:`.rans`. The frequency table is ``f - 1`` for every symbol packed at
``f`` bits, or, when ``sparse``, a ``k``-bit presence map (bit ``i`` set when symbol ``i``
occurs) followed by ``f - 1`` of the present symbols only.

``{"coding": "split", "low_bits": b, "high": <stream>}`` (version 4), for ``k`` above
:data:`MAX_RANS_ALPHABET`: with ``b = ceil(log2 k) - 16``, the high part ``symbol >> b`` of
every symbol as a stream over ``ceil(k / 2^b)`` symbols (rANS-coded when that is smaller),
then the low ``b`` bits of every symbol bit-packed. Motifs are stored in value order, so the
high part, which says where a motif lies among them, carries most of what the usage of a
huge codebook has to say: on the bench's 24.0M-parameter transformer at s=2, capacity 0.05
(k = 599,859) the indices take 28,830,023 bytes instead of 29,992,960 bit-packed, where their
order-0 entropy is 28,473,600.
"""

from __future__ import annotations

import numpy as np

from . import rans
from .bitpack import bits_for, pack_bits, packed_size, unpack_bits
from .errors import FormatError

CODINGS = ("auto", "packed", "rans")
MAX_RANS_ALPHABET = 1 << 16
RANS_BITS = bits_for(MAX_RANS_ALPHABET)   # 16: split streams rANS-code this many high bits


def encode_stream(symbols: np.ndarray, k: int, coding: str = "auto") -> tuple[bytes, dict]:
    """Bytes and header entry for ``symbols`` ``(n,)`` in ``[0, k)``; ``"rans"`` means
    entropy-coded: split for ``k`` above :data:`MAX_RANS_ALPHABET`."""
    if coding not in CODINGS:
        raise ValueError(f"coding must be one of {CODINGS}, got {coding!r}")
    candidates = []
    if coding in ("auto", "packed"):
        bits = bits_for(k)
        candidates.append((pack_bits(symbols, bits), {"coding": "packed", "bits": bits}))
    if coding == "rans" or (coding == "auto" and 1 < k and len(symbols)):
        candidates.append(_rans_stream(symbols, k) if k <= MAX_RANS_ALPHABET else _split_stream(symbols, k))
    return min(candidates, key=lambda c: len(c[0]))


def _split_stream(symbols: np.ndarray, k: int) -> tuple[bytes, dict]:
    low_bits = bits_for(k) - RANS_BITS
    high, desc = encode_stream(symbols >> low_bits, -(-k >> low_bits))
    low = pack_bits(symbols & ((1 << low_bits) - 1), low_bits)
    return high + low, {"coding": "split", "low_bits": low_bits, "high": desc}


def _rans_stream(symbols: np.ndarray, k: int) -> tuple[bytes, dict]:
    freqs = rans.quantize_frequencies(np.bincount(symbols, minlength=k) if len(symbols) else np.ones(k))
    states, words = rans.encode(symbols, freqs)
    present = freqs > 0
    frequency_bits = bits_for(int(freqs.max()))
    dense = pack_bits(freqs - 1, frequency_bits) if present.all() else None
    sparse = pack_bits(present, 1) + pack_bits(freqs[present] - 1, frequency_bits)
    table = dense if dense is not None and len(dense) <= len(sparse) else sparse
    data = table + states.astype("<u4").tobytes() + words.astype("<u2").tobytes()
    return data, {"coding": "rans", "frequency_bits": frequency_bits, "sparse": table is sparse}


def decode_stream(data: bytes, desc, k: int, count: int) -> np.ndarray:
    """``(count,)`` int64 symbols in ``[0, k)``.

    Raises:
        FormatError: a malformed description, a stream of the wrong length, a symbol out of
            range, or an entropy-coded stream that does not decode cleanly.
    """
    if not isinstance(desc, dict):
        raise FormatError("malformed stream coding in the header")
    if desc.get("coding") == "packed" and set(desc) == {"coding", "bits"}:
        if desc["bits"] != bits_for(k):
            raise FormatError(f"an alphabet of {k} needs {bits_for(k)}-bit symbols, the header says {desc['bits']!r}")
        symbols = unpack_bits(data, count, bits_for(k))
        if count and int(symbols.max()) >= k:
            raise FormatError(f"a stored index or level is out of range (>= {k})")
        return symbols.view(np.int64)   # values below k: the same bits, no copy
    if desc.get("coding") == "rans" and set(desc) == {"coding", "frequency_bits", "sparse"}:
        return _decode_rans(data, desc, k, count)
    if desc.get("coding") == "split" and set(desc) == {"coding", "low_bits", "high"}:
        return _decode_split(data, desc, k, count)
    raise FormatError(f"unknown stream coding {desc!r}")


def _decode_split(data: bytes, desc: dict, k: int, count: int) -> np.ndarray:
    low_bits = bits_for(k) - RANS_BITS
    if low_bits < 1 or desc["low_bits"] != low_bits:
        raise FormatError(f"an alphabet of {k} is split at {max(low_bits, 0)} low bits, the header says "
                          f"{desc['low_bits']!r}")
    low_start = len(data) - packed_size(count, low_bits)
    if low_start < 0:
        raise FormatError("the split stream is shorter than its low bits")
    symbols = decode_stream(data[:low_start], desc["high"], -(-k >> low_bits), count)
    symbols <<= low_bits   # in place: a large model's indices are hundreds of MB each time
    symbols |= unpack_bits(data[low_start:], count, low_bits).view(np.int64)
    if count and int(symbols.max()) >= k:
        raise FormatError(f"a stored index is out of range (>= {k})")
    return symbols


def _decode_rans(data: bytes, desc: dict, k: int, count: int) -> np.ndarray:
    frequency_bits, sparse = desc["frequency_bits"], desc["sparse"]
    if not isinstance(frequency_bits, int) or isinstance(frequency_bits, bool) \
            or not 0 <= frequency_bits <= rans.PRECISION or not isinstance(sparse, bool):
        raise FormatError(f"malformed rANS description {desc!r}")
    if k > MAX_RANS_ALPHABET:
        raise FormatError(f"an entropy-coded alphabet has at most {MAX_RANS_ALPHABET} symbols, got {k}")
    position = 0
    present = np.ones(k, dtype=bool)
    if sparse:
        position = packed_size(k, 1)
        present = unpack_bits(data[:position], k, 1).astype(bool)
    used = int(present.sum())
    table_end = position + packed_size(used, frequency_bits)
    lanes = rans.lanes_for(count)
    words_bytes = len(data) - table_end - 4 * lanes
    if words_bytes < 0 or words_bytes % 2:
        raise FormatError("the entropy-coded stream has an impossible length")
    freqs = np.zeros(k, dtype=np.int64)
    freqs[present] = unpack_bits(data[position:table_end], used, frequency_bits).astype(np.int64) + 1
    states = np.frombuffer(data, dtype="<u4", count=lanes, offset=table_end)
    words = np.frombuffer(data, dtype="<u2", offset=table_end + 4 * lanes)
    return rans.decode(states, words, freqs, count)


def span_end(span, start: int, limit: int, what: str) -> int:
    """The end of ``span`` = ``[start, end]`` with ``start <= end <= limit``: streams lie back to back."""
    if not isinstance(span, list) or len(span) != 2 or span[0] != start or not isinstance(span[1], int) \
            or isinstance(span[1], bool) or not start <= span[1] <= limit:
        raise FormatError(f"{what} bytes {span!r} do not continue at byte {start} within {limit} bytes")
    return span[1]
