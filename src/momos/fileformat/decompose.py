"""A model's weights as motif tables plus one motif index per block, and back.

Pure functions on tensors. Blocks are compared by their bit patterns, so the decomposition
is exact (``-0.0`` and ``0.0`` are different values here, as they are in the file), and a
block that holds padding only has to match a motif on its real values.

With ``config.normalize`` the tensors are first divided by their power-of-two scales (exact:
only the exponents move) and blocks are cut per output channel under ``"channel"``; the motifs
are in normalized units and :func:`rebuild` multiplies back. The same decomposition serves the
file format and the description lengths of :mod:`momos.complexity`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .. import scales as scaling
from ..scales import Scales, given_exponents
from ..blocks import BlockLayout, block_dtype, codebook_groups, from_blocks, gather_rows, to_blocks
from ..config import MoMosConfig
from .tables import same_bits

_BIT_VIEWS = {torch.float32: np.int32, torch.float64: np.int64}

@dataclass(frozen=True)
class Mosaic:
    """Tensors as codebooks: codebook ``i`` covers tensors ``groups[i] = [first, last)`` and
    holds ``motifs[i]`` ``(k_i, s)`` and ``indices[i]`` ``(m_i,)`` int64 (one per block).

    ``exponents``: with ``normalize`` other than ``"none"``, each tensor's scale exponents
    ``e`` (int16, shape :func:`momos.scales.scale_shape`): the tensor is ``2**e`` times its motif values.
    """

    layout: BlockLayout
    dtypes: tuple[torch.dtype, ...]
    groups: tuple[tuple[int, int], ...]
    motifs: tuple[torch.Tensor, ...]
    indices: tuple[torch.Tensor, ...]
    normalize: str = "none"
    exponents: tuple[torch.Tensor, ...] | None = None

    @property
    def num_motifs(self) -> int:
        return sum(len(table) for table in self.motifs)

    @property
    def scales(self) -> tuple[torch.Tensor, ...] | None:
        """Each tensor's scales ``2**e`` (float32), as ``ProjectionStats.scales``; None without normalization."""
        return None if self.exponents is None else tuple(scaling.scales_of(e) for e in self.exponents)


class NotAMosaicError(ValueError):
    """The tensors need more motifs than allowed, or are not ``scale x motif`` values at the
    given scales; ``tensor`` is the index of the worst offender."""

    def __init__(self, message: str, tensor: int) -> None:
        super().__init__(message)
        self.tensor = tensor


def decompose(tensors: list[torch.Tensor], config: MoMosConfig, scales: Scales | None = None, *,
              names: Sequence[str] | None = None, bounded: bool = True) -> Mosaic:
    """Cut ``tensors`` into blocks as ``config`` says and find the motifs they are made of.

    Each codebook (one for ``scope="global"``, one per tensor for ``"per_tensor"``) gets the
    distinct blocks it actually uses, at most ``config.motifs_for(num_blocks)`` of them
    (any number with ``bounded=False``). With ``config.normalize``, the blocks are those of
    the tensors divided by their ``scales`` (required; see :func:`momos.scales.given_exponents`, which
    also explains ``names``), cut per output channel under ``"channel"``.

    The result is checked: :func:`rebuild` gives back every tensor bit for bit.

    Raises:
        NotAMosaicError: a codebook needs more motifs than allowed, or a tensor does not
            come back exactly from its normalized values (not ``scale x motif`` values).
        ValueError: missing or malformed scales (see :func:`momos.scales.given_exponents`).
        TypeError: a tensor is not floating point.
    """
    for t in tensors:
        if not t.is_floating_point():
            raise TypeError(f"a mosaic tensor must be floating point, got {t.dtype}")
    tensors = [t.detach().cpu() for t in tensors]
    exponents = given_exponents(tensors, config.normalize, scales, names=names)
    dtypes = tuple(t.dtype for t in tensors)
    dtype = block_dtype(dtypes)
    normalized = tensors if exponents is None else [scaling.divide(t.to(dtype), e) for t, e in zip(tensors, exponents)]
    blocks, layout = to_blocks(normalized, config.block_size, dtype=dtype, tile_shape=config.tile_shape,
                               per_row=config.normalize == "channel")
    bits = blocks.numpy().view(_BIT_VIEWS[dtype])
    valid = layout.valid_mask().numpy()
    groups = tuple(codebook_groups(layout, config.scope))
    motifs, indices = [], []
    for first, last in groups:
        b0, b1 = layout.block_offsets[first], layout.block_offsets[last]
        limit = config.motifs_for(b1 - b0) if bounded else b1 - b0
        try:
            table, index = _codebook(bits[b0:b1], valid[b0:b1], limit)
        except _TooManyMotifs as error:
            owners = np.searchsorted(layout.block_offsets, b0 + error.blocks, side="right") - 1
            raise NotAMosaicError(
                f"{error.needed} distinct blocks found where the configuration allows k = {limit} motifs",
                int(np.bincount(owners).argmax())) from None
        motifs.append(torch.from_numpy(table.view(blocks.numpy().dtype)))
        indices.append(torch.from_numpy(index))
    mosaic = Mosaic(layout, dtypes, groups, tuple(motifs), tuple(indices), config.normalize,
                    None if exponents is None else tuple(exponents))
    for i, (again, tensor) in enumerate(zip(rebuild(mosaic), tensors)):
        if not same_bits(again, tensor):
            raise NotAMosaicError(
                "its values do not come back bit for bit from scale x motif values: dividing by its "
                "scales and multiplying back changes them (values too small or too large for their "
                "scales)" if exponents is not None else "its values do not survive the block dtype", i)
    return mosaic


def rebuild(mosaic: Mosaic) -> list[torch.Tensor]:
    """The tensors a mosaic describes, each in its own dtype (``scale x motif`` when normalized)."""
    layout = mosaic.layout
    dtype = mosaic.motifs[0].dtype if mosaic.motifs else block_dtype(mosaic.dtypes)
    blocks = torch.zeros(layout.num_blocks, layout.block_size, dtype=dtype)
    for (first, last), table, index in zip(mosaic.groups, mosaic.motifs, mosaic.indices):
        blocks[layout.block_offsets[first]:layout.block_offsets[last]] = gather_rows(table.to(dtype), index)
    values = from_blocks(blocks, layout)
    if mosaic.exponents is not None:
        values = [scaling.multiply(v, e) for v, e in zip(values, mosaic.exponents)]
    return [t.to(d) for t, d in zip(values, mosaic.dtypes)]


class _TooManyMotifs(Exception):
    """``blocks``: the blocks (of the codebook) that the allowed motifs cannot describe."""

    def __init__(self, needed: int, blocks: np.ndarray) -> None:
        self.needed, self.blocks = needed, blocks


def _rows_as_keys(rows: np.ndarray) -> np.ndarray:
    """``(n, c)`` integers -> ``(n,)`` opaque keys that are equal exactly when the rows are."""
    rows = np.ascontiguousarray(rows)
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).reshape(-1)


def _codebook(bits: np.ndarray, valid: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The motifs of one codebook and each block's motif.

    Args:
        bits: ``(m, s)`` blocks as integer bit patterns.
        valid: ``(m, s)`` bool, False on padding.
        limit: the most motifs allowed.

    Returns:
        ``(k, s)`` motif bit patterns (unused positions zero) and ``(m,)`` int64 indices.
    """
    full = valid.all(axis=1)
    full_rows = np.flatnonzero(full)
    keys, first, inverse, counts = np.unique(_rows_as_keys(bits[full_rows]), return_index=True,
                                             return_inverse=True, return_counts=True)
    if len(keys) > limit:
        raise _TooManyMotifs(len(keys), _blocks_beyond(full_rows, inverse.reshape(-1), counts, limit))
    table = bits[full_rows[first]]
    indices = np.zeros(len(bits), dtype=np.int64)
    indices[full_rows] = inverse.reshape(-1)
    padded_rows = np.flatnonzero(~full)
    if len(padded_rows) == 0:
        return table, indices
    patterns, which = np.unique(valid[padded_rows], axis=0, return_inverse=True)
    which = which.reshape(-1)
    # Patterns with more real values first: they pin down more of the motifs added for them.
    partial = _PartialMotifs(bits.shape[1], bits.dtype)
    for p in np.argsort(-patterns.sum(axis=1), kind="stable"):
        columns, rows = patterns[p], padded_rows[which == p]
        found = _match_on_columns(bits[rows][:, columns], table[:, columns])
        indices[rows[found >= 0]] = found[found >= 0]
        unmatched = rows[found < 0]
        _, first, inverse = np.unique(_rows_as_keys(bits[unmatched][:, columns]), return_index=True,
                                      return_inverse=True)
        placed = np.empty(len(first), dtype=np.int64)
        for i, row in enumerate(unmatched[first]):
            placed[i] = len(table) + partial.place(bits[row], columns)
            if len(table) + len(partial) > limit:
                raise _TooManyMotifs(len(table) + len(partial), np.array([row]))
        indices[unmatched] = placed[inverse.reshape(-1)]
    return np.concatenate([table, partial.values()]), indices


def _match_on_columns(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """For each row of ``keys`` ``(n, c)``, the lowest index of an equal row of ``table``
    ``(k, c)``, or -1."""
    k = len(table)
    _, inverse = np.unique(_rows_as_keys(np.concatenate([table, keys])), return_inverse=True)
    inverse = inverse.reshape(-1)
    owner = np.full(k + len(keys), -1, dtype=np.int64)
    owner[inverse[:k][::-1]] = np.arange(k)[::-1]
    return owner[inverse[k:]]


class _PartialMotifs:
    """Motifs added for padded blocks that match no full block; a position stays free until a
    block pins it, so blocks with different padding can share one motif."""

    def __init__(self, size: int, dtype) -> None:
        self._values = np.zeros((0, size), dtype=dtype)
        self._known = np.zeros((0, size), dtype=bool)

    def __len__(self) -> int:
        return len(self._values)

    def place(self, block: np.ndarray, columns: np.ndarray) -> int:
        """Index of a motif that agrees with ``block`` on ``columns``, made if needed."""
        agrees = ((self._values == block) | ~self._known | ~columns).all(axis=1)
        hits = np.flatnonzero(agrees)
        if len(hits):
            i = int(hits[0])
            self._values[i, columns] = block[columns]
            self._known[i] |= columns
            return i
        self._values = np.concatenate([self._values, np.where(columns, block, 0)[None]])
        self._known = np.concatenate([self._known, columns[None]])
        return len(self._values) - 1

    def values(self) -> np.ndarray:
        return self._values


def _blocks_beyond(rows: np.ndarray, inverse: np.ndarray, counts: np.ndarray, limit: int) -> np.ndarray:
    """The blocks whose motif is not among the ``limit`` most used ones."""
    rank = np.empty(len(counts), dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
    return rows[rank[inverse] >= limit]
