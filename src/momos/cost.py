"""What a projection will cost before it runs: distance evaluations, memory, seconds.

The search dominates: the exact one compares every block with every motif of its codebook,
``m * k`` pairs, which grows with the square of the model size. The expected time comes
from the pairs and this machine's search rate, measured once per process (a few
milliseconds) on random data of the same block size and device.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch

from .approximate import DEFAULT_KMEANS_ITERATIONS, default_num_cells, working_bytes
from .assign import DEFAULT_MAX_DISTANCE_BYTES, nearest_motif
from .config import MoMosConfig

# A projection of fewer than limit x this many pairs stays under the limit even on a slow
# machine, so small models skip the calibration.
_SLOWEST_PAIRS_PER_SECOND = 1e7
_CALIBRATION_BLOCKS = 2**16
_CALIBRATION_MOTIFS = 2**11
_rates: dict[tuple[str, int], float] = {}


@dataclass(frozen=True)
class CostEstimate:
    """The expected cost of one projection.

    Attributes:
        pairs: block-to-motif (and block-to-centroid) distances the search evaluates.
        bytes: memory the projection allocates next to the model's parameters (approximate).
        seconds: expected wall time of the search on this machine.
    """

    pairs: int
    bytes: int
    seconds: float


def search_pairs(num_blocks: int, num_motifs: int, config: MoMosConfig) -> int:
    """Distances evaluated to assign ``num_blocks`` blocks to one codebook of ``num_motifs``.

    Counts the Lloyd iterations of ``motif_method="kmeans"``/``"persistent"`` and, for the
    approximate assignment, the clustering of the motifs and the probing of the cells.
    """
    lloyd = config.kmeans_iterations if config.motif_method in ("kmeans", "persistent") else 0
    if config.assignment == "exact":
        return num_blocks * num_motifs * (1 + lloyd)
    cells = default_num_cells(num_motifs)
    per_block = cells + min(config.nprobe, cells) * math.ceil(num_motifs / cells)
    clustering = (DEFAULT_KMEANS_ITERATIONS + 1) * num_motifs * cells
    return num_blocks * per_block + clustering + num_blocks * num_motifs * lloyd


def estimate(codebooks: list[tuple[int, int]], config: MoMosConfig, *,
             max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES,
             device: torch.device | str = "cpu", calibrate: bool = True) -> CostEstimate:
    """The cost of projecting codebooks of ``(num_blocks, num_motifs)``.

    Args:
        max_distance_bytes: the exact search's distance memory (``project_``'s argument).
        calibrate: measure this machine's rate if not yet done in this process; when False
            and not measured, ``seconds`` is NaN.
    """
    s = config.block_size
    blocks = sum(m for m, _ in codebooks)
    motifs = sum(k for _, k in codebooks)
    pairs = sum(search_pairs(m, k, config) for m, k in codebooks)
    # float32 blocks, their mask, the new blocks and their float64 errors; the assignments;
    # the motifs; the search's own working memory
    memory = blocks * s * (4 + 1 + 4 + 8) + 8 * blocks + 4 * s * motifs
    memory += max_distance_bytes if config.assignment == "exact" else working_bytes(config.nprobe)
    rate = pairs_per_second(s, device) if calibrate else _rates.get(_key(s, device), math.nan)
    return CostEstimate(pairs=pairs, bytes=memory, seconds=pairs / rate)


def pairs_per_second(block_size: int, device: torch.device | str = "cpu") -> float:
    """This machine's exact-search rate for ``block_size``, measured once per process."""
    key = _key(block_size, device)
    if key not in _rates:
        generator = torch.Generator().manual_seed(0)
        blocks = torch.randn(_CALIBRATION_BLOCKS, block_size, generator=generator).to(device)
        motifs = blocks[:_CALIBRATION_MOTIFS].clone()
        nearest_motif(blocks[:1], motifs)  # compiles or loads the kernel; not timed
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            nearest_motif(blocks, motifs).cpu()
            best = min(best, time.perf_counter() - start)
        _rates[key] = _CALIBRATION_BLOCKS * _CALIBRATION_MOTIFS / best
    return _rates[key]


def warn_if_slow(codebooks: list[tuple[int, int]], config: MoMosConfig, limit: float, *,
                 device: torch.device | str = "cpu") -> CostEstimate | None:
    """Warn when projecting these codebooks is expected to take more than ``limit`` seconds.

    Returns:
        The estimate, or None when the projection is clearly small (nothing is measured then).
    """
    if not limit > 0:
        raise ValueError(f"the time limit must be > 0 seconds, got {limit}")
    pairs = sum(search_pairs(m, k, config) for m, k in codebooks)
    if pairs < limit * _SLOWEST_PAIRS_PER_SECOND:
        return None
    cost = estimate(codebooks, config, device=device)
    if cost.seconds > limit:
        hint = (" Consider assignment='approximate'." if config.assignment == "exact"
                else " Consider a smaller nprobe.")
        warnings.warn(f"this projection is expected to take about {cost.seconds:.0f} s "
                      f"({cost.pairs:.3g} block-motif distances, about {cost.bytes / 2**30:.1f} GiB), "
                      f"more than the limit of {limit} s.{hint}", stacklevel=3)
    return cost


def _key(block_size: int, device: torch.device | str) -> tuple[str, int]:
    return torch.device(device).type, block_size
