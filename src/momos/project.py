"""The model-level transform: ``project_(model, config)`` turns a model's weights into a mosaic.

Everything is computed before anything is written, so a projection that fails (bad
config, NaN weights, ...) leaves the model exactly as it was.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from . import cost
from .approximate import nearest_motif_approximate
from .assign import nearest_motif_ignoring_padding
from .blocks import BlockLayout, from_blocks, layout_of, to_blocks
from .config import MoMosConfig
from .motifs import refine_motifs_kmeans, sample_motifs
from .quantization import fake_quantize


@dataclass(frozen=True)
class Codebook:
    """One codebook's share of the model: which tensors, which blocks, which motifs."""

    parameter_names: tuple[str, ...]
    block_start: int
    block_end: int
    motif_start: int
    motif_end: int

    @property
    def num_motifs(self) -> int:
        return self.motif_end - self.motif_start


@dataclass
class ProjectionStats:
    """What one projection did.

    ``motifs`` stacks every codebook's motifs (one codebook for ``scope="global"``);
    ``assignments`` index into it, blocks in parameter order.
    """

    parameter_names: tuple[str, ...]
    num_weights: int
    num_blocks: int
    num_motifs: int
    block_size: int
    distortion: float
    changed_weights: int
    seconds: float
    motifs: torch.Tensor         # (k, s)
    assignments: torch.Tensor    # (num_blocks,) int64
    motif_counts: torch.Tensor   # (k,) int64
    codebooks: tuple[Codebook, ...]

    def codebook_motifs(self) -> list[torch.Tensor]:
        """Each codebook's ``(k_i, s)`` motifs, to project again with the same codebooks."""
        return [self.motifs[c.motif_start:c.motif_end] for c in self.codebooks]

    def summary(self) -> dict:
        """The scalar statistics, ready for JSON."""
        return {
            "num_weights": self.num_weights,
            "num_blocks": self.num_blocks,
            "num_motifs": self.num_motifs,
            "block_size": self.block_size,
            "distortion": self.distortion,
            "changed_weights": self.changed_weights,
            "seconds": self.seconds,
            "motifs_used": int((self.motif_counts > 0).sum()),
        }


def select_parameters(model: nn.Module, config: MoMosConfig) -> list[tuple[str, nn.Parameter]]:
    """The parameters a projection acts on, in ``named_parameters()`` order.

    By default every parameter with ``requires_grad``. ``config.include`` (regular
    expressions searched in the parameter name) selects by name instead, frozen parameters
    too; ``config.exclude`` then removes names from the selection.

    Raises:
        ValueError: nothing is selected.
        TypeError: a selected parameter is not floating point.
    """
    selected = []
    for name, param in model.named_parameters():
        if config.include is None:
            if not param.requires_grad:
                continue
        elif not any(re.search(p, name) for p in config.include):
            continue
        if any(re.search(p, name) for p in config.exclude):
            continue
        if not param.is_floating_point():
            raise TypeError(f"parameter {name!r} has dtype {param.dtype}; MoMos needs floating point")
        selected.append((name, param))
    if not selected:
        raise ValueError("the model has no parameters selected for projection "
                         f"(include={config.include}, exclude={config.exclude})")
    return selected


def project_(model: nn.Module, config: MoMosConfig, *, generator: torch.Generator | None = None,
             motifs: torch.Tensor | list[torch.Tensor] | None = None,
             init_motifs: list[torch.Tensor] | None = None,
             importance: list[torch.Tensor] | None = None) -> ProjectionStats:
    """Replace every block of the selected parameters by its nearest motif, in place.

    Args:
        model: any module; its selected parameters are overwritten.
        config: block size, number of motifs, scope, selection.
        generator: draws the motifs; default ``torch.Generator().manual_seed(config.seed)``,
            so a call without one always draws the same motifs for the same weights.
        motifs: reuse a codebook instead of drawing one: a ``(k, s)`` tensor for the global
            scope, or one tensor per parameter for ``scope="per_tensor"``
            (``ProjectionStats.codebook_motifs()``).
        init_motifs: for ``config.motifs="persistent"``, the codebooks to refine (one per
            codebook, as ``ProjectionStats.codebook_motifs()``); without them it samples.
        importance: one non-negative tensor per selected parameter (same shapes), weighting
            each weight in the k-means means of ``"kmeans"`` and ``"persistent"``.

    Returns:
        The statistics of this projection.

    Raises:
        ValueError / TypeError: bad config, selection, weights or motifs. The model is untouched.
    """
    stats, new_values, params = _plan(model, config, generator=generator, motifs=motifs,
                                      init_motifs=init_motifs, importance=importance)
    with torch.no_grad():
        for (_, param), value in zip(params, new_values):
            param.copy_(value)
    return stats


def is_mosaic(model: nn.Module, config: MoMosConfig,
              motifs: torch.Tensor | list[torch.Tensor]) -> bool:
    """True when every selected block already equals one of ``motifs`` (nothing is changed)."""
    stats, _, _ = _plan(model, config, motifs=motifs)
    return stats.changed_weights == 0


def estimate_cost(model: nn.Module, config: MoMosConfig) -> cost.CostEstimate:
    """What one projection of ``model`` will cost: pairs, memory, expected seconds.

    The first call in a process measures this machine's search rate (milliseconds).
    """
    params = select_parameters(model, config)
    layout = layout_of([p for _, p in params], config.block_size, config.tile_shape)
    sizes = _codebook_sizes(layout, codebook_groups(layout, config), config)
    return cost.estimate(sizes, config, device=params[0][1].device)


def _plan(model, config, *, generator=None, motifs=None, init_motifs=None, importance=None):
    """The projection, computed but not written: (stats, new tensor values, parameters)."""
    start = time.perf_counter()
    config.validate()
    params = select_parameters(model, config)
    for name, param in params:
        if not torch.isfinite(param.detach()).all():
            raise ValueError(f"parameter {name!r} holds NaN or Inf values; refusing to project")
    tensors = [param.detach() for _, param in params]
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    dtype = torch.promote_types(dtype, torch.float32)
    blocks, layout = to_blocks(tensors, config.block_size, dtype=dtype, tile_shape=config.tile_shape)

    groups = codebook_groups(layout, config)
    cost.warn_if_slow(_codebook_sizes(layout, groups, config), config, device=blocks.device)
    given = _given_motifs(motifs, groups, config, blocks)
    init = _given_motifs(init_motifs, groups, config, blocks) if config.motifs == "persistent" else None
    valid = layout.valid_mask(blocks.device)
    patterns = layout.padding_patterns(blocks.device)
    weights = _importance_blocks(importance, tensors, config, blocks)
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)

    search = None if config.assignment == "exact" else partial(
        nearest_motif_approximate, nprobe=config.nprobe, max_distance_bytes=config.max_distance_bytes)
    codebooks, all_motifs, all_assignments = [], [], []
    motif_start = 0
    names = [name for name, _ in params]
    for g, (first, last) in enumerate(groups):
        b0, b1 = layout.block_offsets[first], layout.block_offsets[last]
        group_blocks = blocks[b0:b1]
        if given is not None:
            group_motifs = given[g]
        else:
            group_motifs = _choose_motifs(
                group_blocks, config, generator, init=None if init is None else init[g],
                valid_mask=valid[b0:b1], importance=None if weights is None else weights[b0:b1])
        padded = [(columns, rows[(rows >= b0) & (rows < b1)] - b0) for columns, rows in patterns]
        assignments = nearest_motif_ignoring_padding(
            group_blocks, group_motifs, padded, max_distance_bytes=config.max_distance_bytes,
            search=search)
        all_motifs.append(group_motifs)
        all_assignments.append(assignments + motif_start)
        codebooks.append(Codebook(tuple(names[first:last]), b0, b1,
                                  motif_start, motif_start + len(group_motifs)))
        motif_start += len(group_motifs)

    motif_table = torch.cat(all_motifs)
    assignments = torch.cat(all_assignments)
    new_blocks = motif_table[assignments]
    diff = (new_blocks - blocks)[valid]
    new_values = [v.to(t.dtype) for v, t in zip(from_blocks(new_blocks, layout), tensors)]
    stats = ProjectionStats(
        parameter_names=tuple(names),
        num_weights=layout.num_weights,
        num_blocks=layout.num_blocks,
        num_motifs=len(motif_table),
        block_size=config.block_size,
        distortion=float(diff.double().square().sum()),
        changed_weights=int(sum(int((v != t).sum()) for v, t in zip(new_values, tensors))),
        seconds=time.perf_counter() - start,
        motifs=motif_table,
        assignments=assignments,
        motif_counts=torch.bincount(assignments, minlength=len(motif_table)),
        codebooks=tuple(codebooks),
    )
    return stats, new_values, params


def _choose_motifs(blocks, config, generator, *, init, valid_mask, importance) -> torch.Tensor:
    """One codebook for ``blocks`` ``(m, s)``, as ``config.motifs`` says."""
    k = config.motifs_for(len(blocks))
    if init is not None and len(init) == k:
        motifs = init
    else:  # the first projection, or k changed (capacity annealing): start from a fresh draw
        motifs = sample_motifs(blocks, k, generator, force_zero=config.force_zero)
    if config.motifs in ("kmeans", "persistent"):
        motifs = refine_motifs_kmeans(blocks, motifs, config.kmeans_iterations, valid_mask=valid_mask,
                                      importance=importance, fixed_zero=config.force_zero,
                                      max_distance_bytes=config.max_distance_bytes)
    if config.quantizes_motifs:
        motifs = fake_quantize(motifs, config.motif_bits)
    return motifs


def _importance_blocks(importance, tensors, config, blocks) -> torch.Tensor | None:
    if importance is None:
        return None
    if len(importance) != len(tensors):
        raise ValueError(f"{len(importance)} importance tensors given for {len(tensors)} parameters")
    for weight, tensor in zip(importance, tensors):
        if weight.shape != tensor.shape:
            raise ValueError(f"importance of shape {tuple(weight.shape)} for a parameter of shape "
                             f"{tuple(tensor.shape)}")
        if not torch.isfinite(weight).all() or (weight < 0).any():
            raise ValueError("importance must be finite and non-negative")
    weight_blocks, _ = to_blocks(list(importance), config.block_size, dtype=blocks.dtype,
                                 tile_shape=config.tile_shape)
    return weight_blocks.to(blocks.device)


def codebook_groups(layout: BlockLayout, config: MoMosConfig) -> list[tuple[int, int]]:
    """Tensor index ranges ``[first, last)`` that share one codebook."""
    count = len(layout.shapes)
    if config.scope == "global":
        return [(0, count)]
    return [(i, i + 1) for i in range(count) if layout.block_counts[i] > 0]


def _codebook_sizes(layout: BlockLayout, groups, config: MoMosConfig) -> list[tuple[int, int]]:
    """``(num_blocks, num_motifs)`` of each codebook."""
    sizes = []
    for first, last in groups:
        m = layout.block_offsets[last] - layout.block_offsets[first]
        sizes.append((m, config.motifs_for(m)))
    return sizes


def _given_motifs(motifs, groups, config, blocks) -> list[torch.Tensor] | None:
    if motifs is None:
        return None
    if isinstance(motifs, torch.Tensor):
        motifs = [motifs]
    if len(motifs) != len(groups):
        raise ValueError(f"{len(motifs)} codebooks given, the {config.scope} scope needs {len(groups)}")
    checked = []
    for table in motifs:
        if table.dim() != 2 or table.shape[1] != config.block_size or table.shape[0] < 1:
            raise ValueError(f"motifs must have shape (k, {config.block_size}) with k >= 1, "
                             f"got {tuple(table.shape)}")
        if not torch.isfinite(table).all():
            raise ValueError("the given motifs hold NaN or Inf values")
        checked.append(table.to(device=blocks.device, dtype=blocks.dtype))
    return checked
