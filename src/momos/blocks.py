"""Cutting tensors into blocks of ``s`` values and putting them back.

Two block shapes:

- **runs** (default, the paper's): each tensor is flattened, zero-padded to a multiple of
  ``s`` and cut into consecutive runs of ``s`` values;
- **tiles** ``(r, c)``: each tensor with two or more dimensions is zero-padded so its last two
  dimensions are multiples of ``r`` and ``c`` and cut into ``r x c`` tiles (e.g. the 3x3
  spatial tile of a conv kernel), read row by row into blocks of ``s = r * c`` values;
  tensors with fewer dimensions are cut into runs of ``s``.

With ``per_row`` (the layout of per-channel scales) a tensor of two or more dimensions that is
cut into runs is cut row by row: each slice along dim 0 is padded to a multiple of ``s`` on
its own, so a block never spans two output channels.

Blocks of all tensors are stacked into one ``(num_blocks, s)`` matrix; a block never spans
two tensors. Padding never counts: it is dropped on the way back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class BlockLayout:
    """Where each tensor's blocks sit in the stacked ``(num_blocks, s)`` matrix."""

    shapes: tuple[torch.Size, ...]
    block_size: int
    tile_shape: tuple[int, int] | None = None
    per_row: bool = False

    def __post_init__(self) -> None:
        if self.tile_shape is not None:
            r, c = self.tile_shape
            if r < 1 or c < 1 or r * c != self.block_size:
                raise ValueError(f"tile shape {self.tile_shape} does not hold block_size={self.block_size} values")
            if self.per_row and r > 1 and any(len(shape) == 2 for shape in self.shapes):
                raise ValueError(f"{r}x{c} tiles of a 2-D tensor span {r} rows; per-row blocks "
                                 "(normalize='channel') need tiles of one row on 2-D tensors")

    def is_tiled(self, index: int) -> bool:
        """True when tensor ``index`` is cut into 2-D tiles rather than runs."""
        return self.tile_shape is not None and len(self.shapes[index]) >= 2

    def row_count(self, index: int) -> int:
        """How many slices tensor ``index`` is cut in separately: its dim 0 when cut row by row, else 1."""
        shape = self.shapes[index]
        if self.per_row and len(shape) >= 2 and not self.is_tiled(index):
            return int(shape[0])
        return 1

    @cached_property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(shape).numel()) for shape in self.shapes)

    @cached_property
    def block_counts(self) -> tuple[int, ...]:
        counts = []
        for i, (shape, n) in enumerate(zip(self.shapes, self.numels)):
            if self.is_tiled(i):
                (r, c), (h, w) = self.tile_shape, shape[-2:]
                counts.append(n // (h * w) * -(-h // r) * -(-w // c) if n else 0)
            else:
                rows = self.row_count(i)
                counts.append(rows * -(-(n // rows) // self.block_size) if n else 0)
        return tuple(counts)

    @cached_property
    def block_offsets(self) -> tuple[int, ...]:
        """Index of each tensor's first block; one extra entry holds the total."""
        offsets = [0]
        for count in self.block_counts:
            offsets.append(offsets[-1] + count)
        return tuple(offsets)

    @property
    def num_blocks(self) -> int:
        return self.block_offsets[-1]

    @property
    def num_weights(self) -> int:
        return sum(self.numels)

    def valid_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(num_blocks, s)`` bool: True where a block holds a real value, False on padding."""
        ones = [torch.ones(shape, dtype=torch.bool, device=device) for shape in self.shapes]
        return _cut(ones, self, dtype=torch.bool, device=device)

    def padding_patterns(self, device: torch.device | str | None = None
                         ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The blocks that hold padding, grouped by which of their columns are real.

        Returns:
            ``(real_columns, block_indices)`` pairs of int64 tensors, one per distinct pattern.
        """
        mask = self.valid_mask(device)
        padded = (~mask).any(dim=1).nonzero().flatten()
        if len(padded) == 0:
            return []
        patterns, which = torch.unique(mask[padded], dim=0, return_inverse=True)
        return [(pattern.nonzero().flatten(), padded[which == i]) for i, pattern in enumerate(patterns)]


def codebook_groups(layout: BlockLayout, scope: str) -> list[tuple[int, int]]:
    """Tensor index ranges ``[first, last)`` that share one codebook: all tensors for
    ``scope="global"``, each tensor with blocks on its own for ``"per_tensor"``."""
    count = len(layout.shapes)
    if scope == "global":
        return [(0, count)]
    return [(i, i + 1) for i in range(count) if layout.block_counts[i] > 0]


def block_dtype(dtypes, at_least: torch.dtype | None = torch.float32) -> torch.dtype:
    """The dtype blocks of tensors of ``dtypes`` are held and compared in: their promoted dtype,
    at least ``at_least`` (float32 by default: half-precision weights are searched and decomposed
    in float32; None: the promoted dtype itself)."""
    dtypes = iter(dtypes)
    dtype = next(dtypes) if at_least is None else at_least
    for d in dtypes:
        dtype = torch.promote_types(dtype, d)
    return dtype


def layout_of(tensors: list[torch.Tensor], block_size: int,
              tile_shape: tuple[int, int] | None = None, per_row: bool = False) -> BlockLayout:
    return BlockLayout(shapes=tuple(t.shape for t in tensors), block_size=block_size,
                       tile_shape=None if tile_shape is None else tuple(tile_shape), per_row=per_row)


def to_blocks(tensors: list[torch.Tensor], block_size: int, dtype: torch.dtype | None = None,
              tile_shape: tuple[int, int] | None = None, per_row: bool = False
              ) -> tuple[torch.Tensor, BlockLayout]:
    """Stack tensors into a ``(num_blocks, block_size)`` matrix, zero-padding each tensor.

    The result lives on the first tensor's device, in ``dtype`` (default: the tensors'
    promoted dtype).
    """
    if not tensors:
        raise ValueError("no tensors to cut into blocks")
    layout = layout_of(tensors, block_size, tile_shape, per_row)
    if dtype is None:
        dtype = block_dtype((t.dtype for t in tensors), at_least=None)
    return _cut([t.detach() for t in tensors], layout, dtype=dtype, device=tensors[0].device), layout


def from_blocks(blocks: torch.Tensor, layout: BlockLayout) -> list[torch.Tensor]:
    """The inverse of :func:`to_blocks`: ``(num_blocks, s)`` -> tensors of ``layout.shapes``."""
    if blocks.shape != (layout.num_blocks, layout.block_size):
        raise ValueError(f"blocks have shape {tuple(blocks.shape)}, layout expects "
                         f"{(layout.num_blocks, layout.block_size)}")
    tensors = []
    for i, shape in enumerate(layout.shapes):
        own = blocks[layout.block_offsets[i]:layout.block_offsets[i + 1]]
        if layout.numels[i] == 0:
            tensors.append(blocks.new_zeros(shape))
        elif layout.is_tiled(i):
            (r, c), (h, w) = layout.tile_shape, shape[-2:]
            grid = own.reshape(-1, -(-h // r), -(-w // c), r, c).permute(0, 1, 3, 2, 4)
            padded = grid.reshape(-1, grid.shape[1] * r, grid.shape[3] * c)
            tensors.append(padded[:, :h, :w].reshape(shape))
        else:
            rows = layout.row_count(i)
            tensors.append(own.reshape(rows, -1)[:, :layout.numels[i] // rows].reshape(shape))
    return tensors


def gather_rows(motifs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``motifs[indices]``, bit for bit: ``(k, s)`` motifs and ``(m,)`` integer indices of any
    integer dtype -> ``(m, s)`` blocks.

    Each row moves as a few wide elements (:func:`as_row_elements`): copying one complex128 per
    row of four float32 is several times faster than four float32 (4.5 ms against 33 ms for a
    million rows), and a copy keeps every bit. Tracers (ONNX export, ``torch.compile``) get the
    plain ``index_select``.
    """
    indices = indices.long()   # uint8 would index as a mask
    if not motifs.is_contiguous() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return torch.index_select(motifs, 0, indices)
    rows = torch.index_select(as_row_elements(motifs), 0, indices)
    return rows.view(motifs.dtype).reshape(-1, motifs.shape[1])


def as_row_elements(motifs: torch.Tensor) -> torch.Tensor:
    """Contiguous ``(k, s)`` motifs viewed as ``(k, w)`` of the widest of complex128, int64,
    int32, int16 and uint8 whose size divides a row's bytes: the same bits in fewer, wider
    elements (``w = 1`` for four float32)."""
    row_bytes = motifs.shape[1] * motifs.element_size()
    return motifs.view(next(dtype for size, dtype in ROW_ELEMENTS.items() if row_bytes % size == 0))


ROW_ELEMENTS = {16: torch.complex128, 8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def _cut(tensors: list[torch.Tensor], layout: BlockLayout, *, dtype, device) -> torch.Tensor:
    """Tensors -> ``(num_blocks, s)``, zero (False) padded."""
    s = layout.block_size
    blocks = torch.zeros(layout.num_blocks, s, dtype=dtype, device=device)
    for i, t in enumerate(tensors):
        if t.numel() == 0:
            continue
        own = blocks[layout.block_offsets[i]:layout.block_offsets[i + 1]]
        t = t.to(device=device, dtype=dtype)
        if layout.is_tiled(i):
            (r, c), (h, w) = layout.tile_shape, t.shape[-2:]
            rows, cols = -(-h // r), -(-w // c)
            padded = t.new_zeros(t.numel() // (h * w), rows * r, cols * c)
            padded[:, :h, :w] = t.reshape(-1, h, w)
            own.copy_(padded.reshape(-1, rows, r, cols, c).permute(0, 1, 3, 2, 4).reshape(-1, s))
        else:
            rows = layout.row_count(i)
            own.view(rows, -1)[:, :t.numel() // rows] = t.reshape(rows, -1)
    return blocks
