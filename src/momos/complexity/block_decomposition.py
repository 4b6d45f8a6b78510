"""The Block Decomposition Method (BDM) through ``pybdm``, on 1-D symbol strings.

BDM cuts a string into blocks of 12 symbols, looks each distinct block up in a table of
Coding-Theorem-Method complexities, and sums ``CTM(block) + log2(count)`` over distinct
blocks (bits). pybdm ships tables for binary strings and for 4-, 5-, 6- and 9-symbol
strings of length 1 to 12.

Lengths that are not a multiple of 12: pybdm's default partition silently drops the last
``n mod 12`` symbols. We keep them by default (``tail="recursive"``): the leftover piece is
looked up in the CTM table of its own length (pybdm's ``PartitionRecursive`` with
``min_length=1``), so every symbol counts and appending symbols never lowers the value.
``tail="ignore"`` reproduces pybdm's default (and the paper authors' numbers).
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import math
import sys
import types
from functools import lru_cache

import numpy as np

BDM_ALPHABETS = (2, 4, 5, 6, 9)
BDM_BLOCK_LENGTH = 12
TAILS = ("recursive", "ignore")


def _import_pybdm():
    """Import pybdm, which needs ``pkg_resources.resource_stream`` to read its CTM tables.

    setuptools 81 stopped shipping ``pkg_resources``, and pybdm 0.1.0
    imports it unconditionally, and only for ``resource_stream(package, file)``. Pinning
    ``setuptools<81`` would hold back a build tool for every user of this package to serve
    one deprecated call; instead, when ``pkg_resources`` is missing, a stand-in module with
    that single function (same behaviour, via ``importlib.resources``) is visible in
    ``sys.modules`` only while pybdm is imported, so no other library ever sees it.
    """
    if importlib.util.find_spec("pkg_resources") is not None:
        return importlib.import_module("pybdm")
    shim = types.ModuleType("pkg_resources")
    shim.resource_stream = lambda package, name: (
        importlib.resources.files(package).joinpath(name).open("rb"))
    sys.modules["pkg_resources"] = shim
    try:
        return importlib.import_module("pybdm")
    finally:
        del sys.modules["pkg_resources"]


@lru_cache(maxsize=None)
def _bdm_engine(alphabet: int, tail: str):
    pybdm = _import_pybdm()
    partition = {"recursive": dict(partition=pybdm.PartitionRecursive, min_length=1),
                 "ignore": dict(partition=pybdm.PartitionIgnore)}[tail]
    # Blocks missing from the 4..9-symbol tables are imputed by pybdm (max CTM + 1 bit);
    # one warning per such block would flood the output.
    return pybdm.BDM(ndim=1, nsymbols=alphabet, warn_if_missing_ctm=False, **partition)


def bdm(symbols: np.ndarray, alphabet: int = 2, *, tail: str = "recursive",
        normalized: bool = False) -> float:
    """BDM complexity in bits of a 1-D string of symbols ``0 .. alphabet-1``.

    Args:
        symbols: ``(n,)`` integer array.
        alphabet: 2, 4, 5, 6 or 9.
        tail: ``"recursive"`` (count the last ``n mod 12`` symbols) or ``"ignore"`` (drop them).
        normalized: pybdm's normalized BDM instead: ``(BDM - min) / (max - min)`` over all
            strings of the same length and alphabet, in [0, 1] (0 for a constant string).

    Raises:
        ValueError: unsupported alphabet or tail, symbols out of range, an empty string or
            (``tail="ignore"``) one shorter than 12 symbols, or any failure inside pybdm.
    """
    if alphabet not in BDM_ALPHABETS:
        raise ValueError(f"pybdm has 1-D CTM tables for alphabets {BDM_ALPHABETS}, not {alphabet}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    symbols = np.ascontiguousarray(symbols).reshape(-1).astype(np.int64, copy=False)
    if symbols.size == 0:
        raise ValueError("BDM of an empty string is undefined")
    if tail == "ignore" and symbols.size < BDM_BLOCK_LENGTH:
        raise ValueError(f"tail='ignore' drops everything from a string shorter than "
                         f"{BDM_BLOCK_LENGTH} symbols (got {symbols.size})")
    if symbols.min() < 0 or symbols.max() >= alphabet:
        raise ValueError(f"symbols must lie in [0, {alphabet - 1}], "
                         f"got [{symbols.min()}, {symbols.max()}]")
    try:
        engine = _bdm_engine(alphabet, tail)
        value = engine.nbdm(symbols) if normalized else engine.bdm(symbols)
    except Exception as error:  # pybdm raises assorted types; never return nothing silently
        raise ValueError(f"pybdm failed on {symbols.size} symbols (alphabet {alphabet}): "
                         f"{type(error).__name__}: {error}") from error
    return float(value)


def bdm_per_bit(value: float, length: int, alphabet: int) -> float:
    """BDM divided by the string's raw size in bits (``length * log2(alphabet)``).

    It compares strings of similar length only: BDM charges each distinct 12-symbol block
    once plus ``log2`` of its count, so for a long random string it grows far more slowly
    than the length (binary: about 2.6 bits per bit at 5000 symbols, 0.15 at a million).
    The normalized BDM compares across lengths.
    """
    return value / (length * math.log2(alphabet))


def quantize_levels(values: np.ndarray, levels: int) -> np.ndarray:
    """``levels`` equal-width bins over ``[-max|w|, max|w|]``: ``(n,)`` floats -> ``(n,)`` int64.

    Symmetric around zero so that the sign survives, and for odd ``levels`` zero has its own
    bin. All-zero input maps to the middle bin.
    """
    scale = float(np.abs(values).max()) if values.size else 0.0
    if scale == 0.0:
        return np.full(values.shape, levels // 2, dtype=np.int64)
    position = (values.astype(np.float64) / scale + 1.0) / 2.0 * levels
    return np.clip(np.floor(position), 0, levels - 1).astype(np.int64)
