"""Cutting tensors into blocks of ``s`` values and putting them back.

Each tensor is flattened, zero-padded to a multiple of ``s`` and cut into rows of a
``(num_blocks, s)`` matrix; a block never spans two tensors. Only the last block of a
tensor can hold padding, and padding never counts: it is dropped on the way back.
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

    @cached_property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(shape).numel()) for shape in self.shapes)

    @cached_property
    def block_counts(self) -> tuple[int, ...]:
        s = self.block_size
        return tuple(-(-n // s) for n in self.numels)

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

    @cached_property
    def tail_lengths(self) -> tuple[int, ...]:
        """Number of real (unpadded) values in each tensor's last block."""
        s = self.block_size
        return tuple(n - (count - 1) * s if count else 0
                     for n, count in zip(self.numels, self.block_counts))

    def valid_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(num_blocks, s)`` bool: True where a block holds a real value, False on padding."""
        mask = torch.ones(self.num_blocks, self.block_size, dtype=torch.bool, device=device)
        for end, tail in zip(self.block_offsets[1:], self.tail_lengths):
            if tail:
                mask[end - 1, tail:] = False
        return mask

    def padded_blocks(self) -> list[tuple[int, int]]:
        """``(block_index, real_length)`` for every block that holds padding."""
        return [(end - 1, tail) for end, tail in zip(self.block_offsets[1:], self.tail_lengths)
                if tail and tail < self.block_size]


def layout_of(tensors: list[torch.Tensor], block_size: int) -> BlockLayout:
    return BlockLayout(shapes=tuple(t.shape for t in tensors), block_size=block_size)


def to_blocks(tensors: list[torch.Tensor], block_size: int,
              dtype: torch.dtype | None = None) -> tuple[torch.Tensor, BlockLayout]:
    """Stack tensors into a ``(num_blocks, block_size)`` matrix, zero-padding each tensor.

    The result lives on the first tensor's device, in ``dtype`` (default: the tensors'
    promoted dtype).
    """
    if not tensors:
        raise ValueError("no tensors to cut into blocks")
    layout = layout_of(tensors, block_size)
    if dtype is None:
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
    device = tensors[0].device
    blocks = torch.zeros(layout.num_blocks * block_size, dtype=dtype, device=device)
    start = 0
    for t, n, count in zip(tensors, layout.numels, layout.block_counts):
        blocks[start:start + n] = t.detach().reshape(-1).to(device=device, dtype=dtype)
        start += count * block_size
    return blocks.view(layout.num_blocks, block_size), layout


def from_blocks(blocks: torch.Tensor, layout: BlockLayout) -> list[torch.Tensor]:
    """The inverse of :func:`to_blocks`: ``(num_blocks, s)`` -> tensors of ``layout.shapes``."""
    if blocks.shape != (layout.num_blocks, layout.block_size):
        raise ValueError(f"blocks have shape {tuple(blocks.shape)}, layout expects "
                         f"{(layout.num_blocks, layout.block_size)}")
    flat = blocks.reshape(-1)
    s = layout.block_size
    return [flat[offset * s: offset * s + n].reshape(shape)
            for offset, n, shape in zip(layout.block_offsets, layout.numels, layout.shapes)]
