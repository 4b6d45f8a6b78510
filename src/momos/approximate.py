"""Approximate nearest-motif search for huge codebooks: an inverted file.

The exact search compares every block with every motif, ``m * k`` pairs, which grows with
the square of the model size. The inverted file clusters the motifs by k-means into about
``sqrt(k)`` cells and compares each block only with the motifs of the ``nprobe`` cells whose
centroids are nearest to it: about ``m * (cells + nprobe * k / cells)`` pairs. ``nprobe``
trades speed for exactness; probing every cell searches every motif and gives exactly the
exact search's answer.

Within the searched motifs the rule is the exact search's (float64 distances, ties to the
lowest motif index), so the only approximation is which motifs are searched. With importance
weights, both the probed cells (by weighted distance to their centroids) and the motifs in
them are chosen by the weighted distance; the cells themselves depend on the motifs only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import kernels
from .assign import DEFAULT_MAX_DISTANCE_BYTES, check_weights, nearest_motif, squared_distances
from .motifs import refine_motifs_kmeans, sample_motifs

# Blocks handled at once; bounds the memory of the (block, probed cell) pairs.
_CHUNK_ROWS = 2**18
_BYTES_PER_PAIR = 64
DEFAULT_KMEANS_ITERATIONS = 10


@dataclass(frozen=True)
class InvertedFile:
    """Motifs grouped by k-means cell.

    Attributes:
        centroids: ``(cells, s)``, only cells that hold motifs.
        motif_order: ``(k,)`` motif indices grouped by cell, ascending within a cell.
        cell_starts: ``(cells + 1,)`` offsets of each cell's run in ``motif_order``.
    """

    centroids: torch.Tensor
    motif_order: torch.Tensor
    cell_starts: torch.Tensor

    @property
    def num_cells(self) -> int:
        return len(self.centroids)


def working_bytes(nprobe: int) -> int:
    """About the most memory the search holds at once, beyond its inputs and output."""
    return _CHUNK_ROWS * nprobe * _BYTES_PER_PAIR


def default_num_cells(num_motifs: int) -> int:
    """About ``sqrt(k)`` cells."""
    return max(1, round(math.sqrt(num_motifs)))


def build_inverted_file(motifs: torch.Tensor, num_cells: int | None = None, *,
                        iterations: int = DEFAULT_KMEANS_ITERATIONS, seed: int = 0,
                        max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES) -> InvertedFile:
    """Cluster ``motifs`` ``(k, s)`` into ``num_cells`` cells (default about ``sqrt(k)``).

    The k-means starts from ``num_cells`` motifs drawn with a generator seeded by ``seed``,
    so the same motifs always give the same cells and the global RNG is not touched.
    """
    k = len(motifs)
    cells = min(k, num_cells if num_cells is not None else default_num_cells(k))
    if cells < 1:
        raise ValueError(f"num_cells must be >= 1, got {num_cells}")
    generator = torch.Generator().manual_seed(seed)
    start = sample_motifs(motifs, cells, generator, force_zero=False)
    centroids = refine_motifs_kmeans(motifs, start, iterations, max_distance_bytes=max_distance_bytes)
    cell_of = nearest_motif(motifs, centroids, max_distance_bytes=max_distance_bytes)
    motif_order = torch.sort(cell_of, stable=True).indices
    counts = torch.bincount(cell_of, minlength=cells)
    used = counts > 0
    cell_starts = torch.zeros(int(used.sum()) + 1, dtype=torch.long, device=motifs.device)
    cell_starts[1:] = counts[used].cumsum(0)
    return InvertedFile(centroids[used], motif_order, cell_starts)


def nearest_motif_approximate(blocks: torch.Tensor, motifs: torch.Tensor, *, nprobe: int,
                              weights: torch.Tensor | None = None,
                              num_cells: int | None = None,
                              inverted_file: InvertedFile | None = None,
                              max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES) -> torch.Tensor:
    """Index of a near (usually the nearest) motif of each block.

    Args:
        blocks: ``(m, s)``; motifs: ``(k, s)``.
        nprobe: cells searched per block; ``>= the number of cells`` is exact.
        weights: ``(m, s)`` importance of each block value, as for
            :func:`momos.assign.nearest_motif`, or None.
        num_cells: cells of the inverted file built here (default about ``sqrt(k)``).
        inverted_file: reuse one built by :func:`build_inverted_file` for these motifs.

    Returns:
        ``(m,)`` int64.
    """
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    if weights is not None:
        check_weights(weights, blocks)
    if inverted_file is None:
        inverted_file = build_inverted_file(motifs, num_cells, max_distance_bytes=max_distance_bytes)
    nprobe = min(nprobe, inverted_file.num_cells)
    assignments = torch.empty(len(blocks), dtype=torch.long, device=blocks.device)
    for r0 in range(0, len(blocks), _CHUNK_ROWS):
        chunk = blocks[r0:r0 + _CHUNK_ROWS]
        chunk_weights = None if weights is None else weights[r0:r0 + _CHUNK_ROWS]
        assignments[r0:r0 + len(chunk)] = _search_chunk(chunk, chunk_weights, motifs, inverted_file,
                                                        nprobe, max_distance_bytes)
    return assignments


def _search_chunk(blocks, weights, motifs, ivf: InvertedFile, nprobe: int, max_distance_bytes: int):
    """Search ``blocks`` ``(n, s)`` (weights ``(n, s)`` or None) in their ``nprobe`` nearest
    cells; ``(n,)`` int64."""
    probes = _nearest_cells(blocks, weights, ivf.centroids, nprobe, max_distance_bytes)
    if kernels.usable(blocks):
        position, distance = kernels.nearest_in_cells(blocks, motifs[ivf.motif_order], ivf.cell_starts,
                                                      probes, weights)
        candidate = ivf.motif_order[position]
    else:
        candidate = _nearest_in_cells_torch(blocks, weights, motifs, ivf, probes, max_distance_bytes)
        distance = squared_distances(blocks[:, None], motifs[candidate],
                                     None if weights is None else weights[:, None])
    # each block: its nearest candidate, ties to the lowest motif index
    best = distance.min(dim=1, keepdim=True).values
    return torch.where(distance == best, candidate, len(motifs)).min(dim=1).values


def _nearest_in_cells_torch(blocks, weights, motifs, ivf: InvertedFile, probes, max_distance_bytes):
    """``(n, nprobe)``: each probed cell's nearest motif, one exact search per cell."""
    n, nprobe = probes.shape
    cell = probes.flatten()
    order = torch.sort(cell, stable=True).indices
    pair_starts = torch.zeros(ivf.num_cells + 1, dtype=torch.long)
    pair_starts[1:] = torch.bincount(cell, minlength=ivf.num_cells).cumsum(0).cpu()
    motif_starts = ivf.cell_starts.cpu()
    candidate = torch.empty_like(cell)
    for c in range(ivf.num_cells):
        pairs = order[int(pair_starts[c]):int(pair_starts[c + 1])]
        if len(pairs):
            members = ivf.motif_order[int(motif_starts[c]):int(motif_starts[c + 1])]
            rows = pairs // nprobe
            local = nearest_motif(blocks[rows], motifs[members], max_distance_bytes=max_distance_bytes,
                                  weights=None if weights is None else weights[rows])
            candidate[pairs] = members[local]
    return candidate.view(n, nprobe)


def _nearest_cells(blocks, weights, centroids, count: int, max_distance_bytes: int) -> torch.Tensor:
    """``(n, count)`` int64: the ``count`` cells whose centroids are nearest to each block.

    Nearest first by the float64 (weighted) distance, equal distances in cell order, on
    every backend.
    """
    if kernels.usable(blocks):
        return kernels.nearest_few(blocks, centroids, count, weights)
    # the distances and two temporaries of one coordinate, all float64
    rows = max(1, max_distance_bytes // (24 * len(centroids)))
    return torch.cat([
        torch.sort(squared_distances(blocks[r0:r0 + rows, None], centroids[None],
                                     None if weights is None else weights[r0:r0 + rows, None]),
                   dim=1, stable=True).indices[:, :count]
        for r0 in range(0, len(blocks), rows)])
