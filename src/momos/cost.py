"""What a projection will cost before it runs: distance evaluations, memory, seconds.

The search dominates: the exact one compares every block with every motif of its codebook,
``m * k`` pairs, which grows with the square of the model size, and k-means repeats the
search once per Lloyd iteration. The expected time is, for each search pass, its pairs
times this machine's time per pair of that search, plus per block the work around the
search (cutting, k-means updates, writing back, errors).

Both times are measured on random problems shaped like the largest codebook: the same
device, block size, thread count and search (exact, or the inverted file with the same
cells and ``nprobe``). Each is the median over several runs of the time that more blocks
add to a search (not what a call costs whatever its size), long enough to time the search
rather than the scheduler, measured once per process and shape (a fraction of a second on
an idle machine). The importance-weighted search (``calibration``) is timed as the plain one, though it costs
up to 1.5x more per pair.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .approximate import (DEFAULT_KMEANS_ITERATIONS, InvertedFile, default_num_cells,
                          nearest_motif_approximate, working_bytes)
from .assign import DEFAULT_MAX_DISTANCE_BYTES, nearest_motif
from .config import MoMosConfig
from .motifs import refine_motifs_kmeans

# A projection of fewer than limit x this many pairs stays under the limit even on a slow
# machine, so small models skip the calibration.
_SLOWEST_PAIRS_PER_SECOND = 1e7
# The blocks added to a timed run take at least this long; shorter runs time the scheduler.
_MIN_RUN_SECONDS = 0.02
_RUNS = 3
# Beyond a few thousand motifs the exact search's time per pair no longer depends on k (every
# tile of blocks meets the motifs one after another; PyTorch's tiles hold at most this many
# at the default max_distance_bytes), so larger codebooks are timed at this size.
_MAX_EXACT_MOTIFS = 2**13
# A very fast device may reach no _MIN_RUN_SECONDS; its runs stop growing here (memory).
_MAX_CALIBRATION_BLOCKS = 2**22
# seconds per block of each timed search, by (kind, device type, block size, threads, shape...)
_seconds: dict[tuple, float] = {}


@dataclass(frozen=True)
class CostEstimate:
    """The expected cost of one projection.

    Attributes:
        pairs: block-to-motif (and block-to-centroid) distances the search evaluates.
        bytes: memory the projection allocates next to the model's parameters (approximate).
        seconds: expected wall time of the projection on this machine.
    """

    pairs: int
    bytes: int
    seconds: float


def search_pairs(num_blocks: int, num_motifs: int, config: MoMosConfig) -> int:
    """Distances evaluated to assign ``num_blocks`` blocks to one codebook of ``num_motifs``.

    Counts every search pass: the assignment and, for ``motif_method="kmeans"``/``"persistent"``,
    one per Lloyd iteration; an approximate pass also clusters the motifs into cells.
    """
    return _search_passes(config) * _pass_pairs(num_blocks, num_motifs, config)


def _search_passes(config: MoMosConfig) -> int:
    """Searches of every block: one per Lloyd iteration, then the assignment."""
    return 1 + (config.kmeans_iterations if config.motif_method in ("kmeans", "persistent") else 0)


def estimate(codebooks: list[tuple[int, int]], config: MoMosConfig, *,
             max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES,
             device: torch.device | str = "cpu") -> CostEstimate:
    """The cost of projecting codebooks of ``(num_blocks, num_motifs)``; measures this
    machine on the first call for a new shape of problem.

    Args:
        max_distance_bytes: the exact search's distance memory (``project_``'s argument).
    """
    s = config.block_size
    blocks = sum(m for m, _ in codebooks)
    motifs = sum(k for _, k in codebooks)
    pairs = sum(search_pairs(m, k, config) for m, k in codebooks)
    # float32 blocks, their mask, the new blocks and their float64 errors; the assignments;
    # the motifs; the search's own working memory
    memory = blocks * s * (4 + 1 + 4 + 8) + 8 * blocks + 4 * s * motifs
    memory += max_distance_bytes if config.assignment == "exact" else working_bytes(config.nprobe)
    # the largest codebook takes nearly all the time, so its shape sets the time per pair
    _, largest = max(codebooks, key=lambda c: _pass_pairs(*c, config))
    per_pair = seconds_per_pair(largest, config, max_distance_bytes=max_distance_bytes, device=device)
    seconds = pairs * per_pair + _search_passes(config) * blocks * seconds_per_block(s, device)
    return CostEstimate(pairs=pairs, bytes=memory, seconds=seconds)


def seconds_per_pair(num_motifs: int, config: MoMosConfig, *,
                     max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES,
                     device: torch.device | str = "cpu") -> float:
    """This machine's time per pair of one search pass over a codebook of about ``num_motifs``
    with ``config``'s search, block size and torch's thread count; measured once per process."""
    s, device = config.block_size, torch.device(device)
    if config.assignment == "exact":
        k = _power_of_two(min(num_motifs, _MAX_EXACT_MOTIFS))
        key = ("exact", device.type, s, torch.get_num_threads(), k, max_distance_bytes)
        seconds = _measured(key, lambda: _exact_search(k, s, device, max_distance_bytes))
        return seconds / k
    k = _power_of_two(num_motifs)
    key = ("approximate", device.type, s, torch.get_num_threads(), k, config.nprobe, max_distance_bytes)
    seconds = _measured(key, lambda: _approximate_search(k, s, config.nprobe, device, max_distance_bytes))
    return seconds / _probe_pairs_per_block(k, config.nprobe)


def seconds_per_block(block_size: int, device: torch.device | str = "cpu") -> float:
    """This machine's time per block of the work around one search pass, measured once per
    process: a Lloyd update (means, counts) after a trivial search, which costs about what
    cutting blocks, writing them back and measuring errors do."""
    device = torch.device(device)
    key = ("blocks", device.type, block_size, torch.get_num_threads())
    return _measured(key, lambda: lambda blocks: refine_motifs_kmeans(blocks, blocks[:1], 1))


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


def _pass_pairs(num_blocks: int, num_motifs: int, config: MoMosConfig) -> int:
    """Distances of one search pass."""
    if config.assignment == "exact":
        return num_blocks * num_motifs
    cells = default_num_cells(num_motifs)
    clustering = (DEFAULT_KMEANS_ITERATIONS + 1) * num_motifs * cells
    return num_blocks * _probe_pairs_per_block(num_motifs, config.nprobe) + clustering


def _probe_pairs_per_block(num_motifs: int, nprobe: int) -> int:
    """An approximate search's distances per block: every centroid, then the probed cells' motifs."""
    cells = default_num_cells(num_motifs)
    return cells + min(nprobe, cells) * math.ceil(num_motifs / cells)


def _exact_search(k: int, block_size: int, device: torch.device,
                  max_distance_bytes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    motifs = _random(k, block_size, device, seed=1)
    return lambda blocks: nearest_motif(blocks, motifs, max_distance_bytes=max_distance_bytes)


def _approximate_search(k: int, block_size: int, nprobe: int, device: torch.device,
                        max_distance_bytes: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The search of an inverted file with the default cells, of equal size: it costs what a
    clustered codebook's does, without the clustering."""
    motifs = _random(k, block_size, device, seed=1)
    cells = default_num_cells(k)
    starts = torch.linspace(0, k, cells + 1, device=device).round().long()
    ivf = InvertedFile(motifs[starts[:-1]], torch.arange(k, device=device), starts)
    return lambda blocks: nearest_motif_approximate(blocks, motifs, nprobe=nprobe, inverted_file=ivf,
                                                    max_distance_bytes=max_distance_bytes)


def _measured(key: tuple, make_search: Callable[[], Callable[[torch.Tensor], torch.Tensor]]) -> float:
    """Median seconds per block of the search ``make_search()`` builds, for ``key`` =
    (kind, device type, block size, ...), measured once per process."""
    if key not in _seconds:
        _, device, block_size = key[:3]
        _seconds[key] = _median_seconds_per_block(make_search(), block_size, torch.device(device))
    return _seconds[key]


def _median_seconds_per_block(search, block_size: int, device: torch.device) -> float:
    """Median seconds that ``count`` more blocks add to a search of ``count`` blocks.

    The difference leaves out what a call costs whatever its size (starting threads: tens of
    milliseconds on a busy machine), which a projection pays once per search, not per block.
    The blocks double until the added ones take ``_MIN_RUN_SECONDS`` and twice that fixed
    cost, in the median of ``_RUNS`` runs too (a busy moment may have stretched the first).
    """
    search(_random(1, block_size, device, seed=0))  # compiles or loads kernels: not timed
    count = 64
    while True:
        small, large = _random(count, block_size, device, seed=0), _random(2 * count, block_size, device, seed=0)
        runs = [_added_seconds(search, small, large)]
        if _long_enough(runs):
            runs += [_added_seconds(search, small, large) for _ in range(_RUNS - 1)]
        if _long_enough(runs) or 2 * count >= _MAX_CALIBRATION_BLOCKS:
            return max(0.0, statistics.median(added for _, added in runs)) / count
        count *= 2


def _added_seconds(search, small: torch.Tensor, large: torch.Tensor) -> tuple[float, float]:
    """Seconds of a search of ``small``, and what the more blocks of ``large`` add to it."""
    seconds = _timed(search, small)
    return seconds, _timed(search, large) - seconds


def _long_enough(runs: list[tuple[float, float]]) -> bool:
    """The blocks added take _MIN_RUN_SECONDS, and twice the fixed cost of a call:
    ``added >= 2 (small - added)``."""
    small = statistics.median(s for s, _ in runs)
    added = statistics.median(a for _, a in runs)
    return added >= _MIN_RUN_SECONDS and 3 * added >= 2 * small


def _timed(search, blocks: torch.Tensor) -> float:
    start = time.perf_counter()
    search(blocks).cpu()  # waits for a GPU to finish
    return time.perf_counter() - start


def _random(count: int, block_size: int, device: torch.device, *, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, block_size, generator=generator).to(device)


def _power_of_two(n: int) -> int:
    return 2 ** round(math.log2(max(1, n)))
