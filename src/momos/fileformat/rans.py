"""Interleaved rANS entropy coding of motif indices, vectorized over lanes.

The format is fully specified here (nothing depends on a library's internals):

- Frequencies: every symbol ``i < k`` has an integer frequency ``f_i >= 0`` with
  ``sum f_i = 2**PRECISION``; the file stores them. Symbol ``i`` owns the slots
  ``[c_i, c_i + f_i)`` with ``c_i = f_0 + ... + f_{i-1}``.
- State: 32 bits, kept in ``[LOW, LOW << 16)``, renormalized 16 bits at a time.
- Lanes: ``W = lanes_for(n)`` for ``n`` symbols (so a decoder's work is bounded by ``n``);
  symbol ``j`` of the sequence is coded by lane ``j % W`` at step ``j // W``. The
  encoder starts every lane at ``LOW``; the file stores the ``W`` final encoder states and
  one stream of 16-bit words. The decoder starts from the stored states, and after step
  ``t`` each lane whose state fell below ``LOW`` reads the next word, lanes in increasing
  order. Decoding ends with every lane back at ``LOW`` and every word read, which checks
  the whole stream.

Each step is a handful of array operations over ``W`` lanes, so coding costs
``ceil(n / W)`` vectorized steps instead of ``n`` scalar ones.
"""

from __future__ import annotations

import numpy as np

from .errors import FormatError

PRECISION = 16
TOTAL = 1 << PRECISION
LOW = 1 << 16
WORD_BITS = 16
MAX_LANES = 4096


def lanes_for(count: int) -> int:
    """Lanes for ``count`` symbols: enough to keep the steps few, few enough that the
    stored states (4 bytes each) stay a negligible share of the stream."""
    return max(1, min(MAX_LANES, count // 1024))


def quantize_frequencies(counts: np.ndarray) -> np.ndarray:
    """Integer frequencies summing to ``TOTAL``, close to ``counts`` in proportion: ``>= 1``
    where a count is positive, 0 where it is 0.

    Args:
        counts: ``(k,)`` non-negative symbol counts, at most ``TOTAL`` of them positive.

    Returns:
        ``(k,)`` int64.
    """
    counts = np.asarray(counts, dtype=np.int64)
    present = counts > 0
    if (counts < 0).any() or not 1 <= int(present.sum()) <= TOTAL:
        raise ValueError(f"need 1 to {TOTAL} positive counts and no negative ones")
    exact = counts * (TOTAL / counts.sum())
    freqs = np.where(present, np.maximum(1, np.floor(exact).astype(np.int64)), 0)
    missing = TOTAL - int(freqs.sum())
    if missing > 0:
        # Hand the missing slots to the symbols that rounding shortchanged most.
        freqs[np.argsort(freqs - exact, kind="stable")[:missing]] += 1
    if missing < 0:
        # Raising rare symbols to 1 overshot: take the excess from the most frequent ones.
        order = np.argsort(-freqs, kind="stable")
        spare = np.maximum(freqs[order] - 1, 0)
        taken_before = np.cumsum(spare) - spare
        freqs[order] -= np.clip(-missing - taken_before, 0, spare)
    return freqs


def encode(symbols: np.ndarray, freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rANS-code ``symbols``.

    Args:
        symbols: ``(n,)`` integers in ``[0, k)``.
        freqs: ``(k,)`` from :func:`quantize_frequencies`; every symbol in ``symbols`` needs ``f >= 1``.

    Returns:
        ``(lanes_for(n),)`` uint32 final states and ``(num_words,)`` uint16 words.
    """
    symbols = np.asarray(symbols, dtype=np.int64)
    lanes = lanes_for(len(symbols))
    freqs = np.asarray(freqs, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    state = np.full(lanes, LOW, dtype=np.int64)
    chunks = []
    n = len(symbols)
    for step in reversed(range(-(-n // lanes))):
        chunk = symbols[step * lanes:(step + 1) * lanes]
        active = len(chunk)
        f, c = freqs[chunk], starts[chunk]
        x = state[:active]
        emit = x >= ((LOW >> PRECISION) << WORD_BITS) * f
        chunks.append((x[emit] & 0xFFFF).astype(np.uint16))
        x = np.where(emit, x >> WORD_BITS, x)
        state[:active] = ((x // f) << PRECISION) + x % f + c
    words = np.concatenate(chunks[::-1]) if chunks else np.zeros(0, dtype=np.uint16)
    return state.astype(np.uint32), words


def decode(states: np.ndarray, words: np.ndarray, freqs: np.ndarray, count: int) -> np.ndarray:
    """The inverse of :func:`encode`: ``(count,)`` int64 symbols.

    Raises:
        FormatError: the frequencies are invalid, or the stream does not decode to exactly
            ``count`` symbols with every lane back at its initial state and every word read.
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    lanes = lanes_for(count)
    if len(freqs) == 0 or (freqs < 0).any() or int(freqs.sum()) != TOTAL:
        raise FormatError(f"symbol frequencies must be >= 0 and sum to {TOTAL}")
    if len(states) != lanes:
        raise FormatError(f"{count} symbols are coded in {lanes} lanes, the stream has {len(states)} states")
    state = np.asarray(states, dtype=np.int64).copy()
    if ((state < LOW) | (state >= LOW << WORD_BITS)).any():
        raise FormatError("an entropy coder state is out of range")
    words = np.asarray(words, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(freqs)[:-1]])
    slot_symbol = np.repeat(np.arange(len(freqs)), freqs)
    out = np.empty(count, dtype=np.int64)
    read = 0
    for step in range(-(-count // lanes)):
        active = min(lanes, count - step * lanes)
        x = state[:active]
        slot = x & (TOTAL - 1)
        symbol = slot_symbol[slot]
        out[step * lanes:step * lanes + active] = symbol
        x = freqs[symbol] * (x >> PRECISION) + slot - starts[symbol]
        refill = x < LOW
        needed = int(refill.sum())
        if read + needed > len(words):
            raise FormatError("the entropy-coded stream ends too early")
        x[refill] = (x[refill] << WORD_BITS) | words[read:read + needed]
        read += needed
        state[:active] = x
    if read != len(words) or (state != LOW).any():
        raise FormatError("the entropy-coded stream does not decode cleanly (corrupt indices)")
    return out
