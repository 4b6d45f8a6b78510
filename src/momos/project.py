"""The model-level transform: ``project_(model, config)`` turns a model's weights into a mosaic.

Everything is computed before anything is written, so a projection that fails (bad
config, NaN weights, ...) leaves the model exactly as it was.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from . import cost
from .approximate import nearest_motif_approximate
from .assign import DEFAULT_MAX_DISTANCE_BYTES, nearest_motif_ignoring_padding
from .blocks import BlockLayout, block_dtype, codebook_groups, from_blocks, layout_of, to_blocks
from .calibration import Calibration, input_importance
from .config import MoMosConfig
from .motifs import refine_motifs_kmeans, sample_motifs
from .quantization import fake_quantize
from .scales import divide, given_exponents, multiply, scale_exponents, scales_of

# project_ warns about tensors whose relative error ||new - old|| / ||old|| exceeds this.
DEFAULT_WARN_RELATIVE_ERROR = 0.3


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
    ``assignments`` index into it, blocks in parameter order. With ``normalize``, motifs are in
    normalized units and ``scales`` holds each parameter's power-of-two scales (shape ``()``
    or ``(rows,)``): a weight is its scale times its motif value. ``relative_errors`` maps each
    parameter to ``||new - old|| / ||old||`` (``||new||`` for a tensor that was zero).
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
    relative_errors: dict[str, float]
    scales: tuple[torch.Tensor, ...] | None = None

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
            "max_relative_error": max(self.relative_errors.values()),
        }

    def worst_tensors(self, count: int = 3) -> list[tuple[str, float]]:
        """The ``count`` parameters with the largest relative errors, largest first."""
        return sorted(self.relative_errors.items(), key=lambda item: -item[1])[:count]


def select_parameters(model: nn.Module, config: MoMosConfig) -> list[tuple[str, nn.Parameter]]:
    """The parameters a projection acts on, in ``named_parameters()`` order.

    By default every parameter with ``requires_grad``. ``config.include`` (regular
    expressions searched in the parameter name) selects by name instead, frozen parameters
    too; ``config.exclude`` then removes names from the selection.
    ``config.parameters="matrices"`` keeps only parameters of two or more dimensions.

    Raises:
        ValueError: nothing is selected.
        TypeError: a selected parameter is not floating point.
    """
    selected = []
    for name, param in model.named_parameters():
        if config.parameters == "matrices" and param.dim() < 2:
            continue
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
        raise ValueError("the model has no parameters selected for projection (parameters="
                         f"{config.parameters!r}, include={config.include}, exclude={config.exclude})")
    return selected


def project_(model: nn.Module, config: MoMosConfig, *, generator: torch.Generator | None = None,
             motifs: torch.Tensor | list[torch.Tensor] | None = None,
             scales: list[torch.Tensor] | None = None,
             init_motifs: list[torch.Tensor] | None = None,
             importance: list[torch.Tensor] | None = None,
             calibration: Calibration | None = None,
             warn_relative_error: float | None = DEFAULT_WARN_RELATIVE_ERROR,
             keep_nonzero: bool = True,
             max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES) -> ProjectionStats:
    """Replace every block of the selected parameters by its nearest motif, in place.

    Args:
        model: any module; its selected parameters are overwritten.
        config: block size, number of motifs, scope, normalization, selection.
        generator: draws the motifs; default ``torch.Generator().manual_seed(config.seed)``,
            so a call without one always draws the same motifs for the same weights.
        motifs: reuse a codebook instead of drawing one: a ``(k, s)`` tensor for the global
            scope, or one tensor per parameter for ``scope="per_tensor"``
            (``ProjectionStats.codebook_motifs()``).
        scales: with ``config.normalize``, reuse these scales (``ProjectionStats.scales``)
            instead of measuring them; with ``motifs`` too, projecting a mosaic changes nothing.
        init_motifs: for ``config.motif_method="persistent"``, the codebooks to refine (one per
            codebook, as ``ProjectionStats.codebook_motifs()``); without them it samples.
        importance: one non-negative tensor per selected parameter (same shapes): blocks are
            assigned to the motif minimizing ``Σ_c h_c (b_c − z_c)²`` and k-means weighs its
            means the same way.
        calibration: measure ``importance`` on these inputs instead: an iterable of inputs
            (each run as ``model(x)``) or a callable ``fn(model)`` (see :mod:`momos.calibration`).
        warn_relative_error: warn (``UserWarning``, naming the worst tensors) when a tensor's
            ``||new − old|| / ||old||`` exceeds this; ``None``: never.
        keep_nonzero: refuse a projection that turns a non-zero tensor entirely into zeros
            (the usual sign of a codebook that cannot serve it). Training from scratch, where a
            small tensor may pass through zero and recover, turns this off (``Projector``).
        max_distance_bytes: the most memory the nearest-motif search holds for block-to-motif
            distances at once (a runtime knob: it never changes the result).

    Returns:
        The statistics of this projection.

    Raises:
        ValueError / TypeError: bad config, selection, weights, motifs, scales or calibration,
            or a projection that would turn a non-zero tensor into zeros. The model is untouched.
    """
    if calibration is not None:
        if importance is not None:
            raise ValueError("give importance or calibration, not both")
        names = [name for name, _ in select_parameters(model, config)]
        importance = input_importance(model, names, calibration)
    stats, new_values, params = _plan(model, config, generator=generator, motifs=motifs, scales=scales,
                                      init_motifs=init_motifs, importance=importance,
                                      keep_nonzero=keep_nonzero, max_distance_bytes=max_distance_bytes)
    with torch.no_grad():
        for (_, param), value in zip(params, new_values):
            param.copy_(value)
    if warn_relative_error is not None and max(stats.relative_errors.values()) > warn_relative_error:
        worst = ", ".join(f"{name!r} {error:.2f}" for name, error in stats.worst_tensors()
                          if error > warn_relative_error)
        remedies = "a higher capacity, or excluding those tensors"
        if config.normalize != "channel":
            remedies = "normalize='channel', " + remedies
        warnings.warn(f"the projection moved some tensors far from their values (relative error "
                      f"||new - old|| / ||old|| above {warn_relative_error}): {worst}. Consider {remedies}.",
                      UserWarning, stacklevel=2)
    return stats


def is_mosaic(model: nn.Module, config: MoMosConfig,
              motifs: torch.Tensor | list[torch.Tensor], scales: list[torch.Tensor] | None = None) -> bool:
    """True when every selected block already equals one of ``motifs`` (nothing is changed);
    with ``config.normalize``, at these ``scales`` (measured afresh when None)."""
    stats, _, _ = _plan(model, config, motifs=motifs, scales=scales)
    return stats.changed_weights == 0


def estimate_cost(model: nn.Module, config: MoMosConfig, *,
                  max_distance_bytes: int = DEFAULT_MAX_DISTANCE_BYTES) -> cost.CostEstimate:
    """What one projection of ``model`` will cost: pairs, memory, expected seconds.

    The first call in a process times the search in use on this machine (a fraction of a
    second, more on a busy machine).
    """
    sizes, device = _sizes_of(model, config)
    return cost.estimate(sizes, config, max_distance_bytes=max_distance_bytes, device=device)


def warn_if_slow(model: nn.Module, config: MoMosConfig, limit_seconds: float = 60.0) -> cost.CostEstimate | None:
    """Warn (``UserWarning``) when projecting ``model`` is expected to take more than
    ``limit_seconds`` on this machine; returns the estimate (None when clearly small, which
    skips measuring the machine). Call it before a projection; ``project_`` itself never times."""
    sizes, device = _sizes_of(model, config)
    return cost.warn_if_slow(sizes, config, limit_seconds, device=device)


def _sizes_of(model, config) -> tuple[list[tuple[int, int]], torch.device]:
    """``(num_blocks, num_motifs)`` of every codebook, and the parameters' device."""
    params = select_parameters(model, config)
    layout = layout_of([p for _, p in params], config.block_size, config.tile_shape,
                       per_row=config.normalize == "channel")
    return _codebook_sizes(layout, codebook_groups(layout, config.scope), config), params[0][1].device


def _plan(model, config, *, generator=None, motifs=None, scales=None, init_motifs=None, importance=None,
          keep_nonzero=False, max_distance_bytes=DEFAULT_MAX_DISTANCE_BYTES):
    """The projection, computed but not written: (stats, new tensor values, parameters)."""
    start = time.perf_counter()
    params, names, tensors = _select_and_check(model, config)
    cut = _normalize_and_cut(tensors, names, config, scales)
    codebooks, motif_table, assignments = _choose_and_assign(
        cut, tensors, names, config, generator=generator, motifs=motifs, init_motifs=init_motifs,
        importance=importance, max_distance_bytes=max_distance_bytes)
    new_values = _new_values(motif_table[assignments], cut, tensors)
    if keep_nonzero:
        _refuse_zeroed_tensors(new_values, tensors, names)
    stats = _statistics(names, tensors, new_values, cut, config, codebooks, motif_table, assignments, start)
    return stats, new_values, params


class _Cut(NamedTuple):
    """The selected tensors as blocks: normalized by their scale exponents when ``config.normalize``."""

    blocks: torch.Tensor                    # (num_blocks, s), in ``dtype``
    layout: BlockLayout
    dtype: torch.dtype                      # block_dtype of the tensors
    exponents: list[torch.Tensor] | None    # each tensor's scale exponents; None without normalization


def _select_and_check(model, config) -> tuple[list[tuple[str, nn.Parameter]], list[str], list[torch.Tensor]]:
    """The validated config's parameters, their names and detached values; refuses NaN and Inf."""
    config.validate()
    params = select_parameters(model, config)
    for name, param in params:
        if not torch.isfinite(param.detach()).all():
            raise ValueError(f"parameter {name!r} holds NaN or Inf values; refusing to project")
    return params, [name for name, _ in params], [param.detach() for _, param in params]


def _normalize_and_cut(tensors, names, config, scales) -> _Cut:
    """Divide the tensors by their (measured or given) scales and cut them into blocks."""
    dtype = block_dtype(t.dtype for t in tensors)
    exponents = _scale_exponents(tensors, names, config, scales)
    normalized = tensors if exponents is None else [divide(t.to(dtype), e) for t, e in zip(tensors, exponents)]
    blocks, layout = to_blocks(normalized, config.block_size, dtype=dtype, tile_shape=config.tile_shape,
                               per_row=config.normalize == "channel")
    return _Cut(blocks, layout, dtype, exponents)


def _choose_and_assign(cut, tensors, names, config, *, generator, motifs, init_motifs, importance,
                       max_distance_bytes) -> tuple[tuple[Codebook, ...], torch.Tensor, torch.Tensor]:
    """Each codebook's motifs (given, or chosen from its blocks) and each block's nearest motif.

    Returns the codebooks, their stacked motif table and the assignments into it.
    """
    blocks, layout = cut.blocks, cut.layout
    groups = codebook_groups(layout, config.scope)
    given = _given_motifs(motifs, groups, config, blocks)
    if given is None:
        _refuse_zero_codebooks(_codebook_sizes(layout, groups, config), groups, tensors, names, config)
    init = _given_motifs(init_motifs, groups, config, blocks) if config.motif_method == "persistent" else None
    valid = layout.valid_mask(blocks.device)
    patterns = layout.padding_patterns(blocks.device)
    weights = _importance_blocks(importance, tensors, config, blocks, layout)
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)
    search = None if config.assignment == "exact" else partial(
        nearest_motif_approximate, nprobe=config.nprobe, max_distance_bytes=max_distance_bytes)

    codebooks, all_motifs, all_assignments = [], [], []
    motif_start = 0
    for g, (first, last) in enumerate(groups):
        b0, b1 = layout.block_offsets[first], layout.block_offsets[last]
        group_blocks = blocks[b0:b1]
        group_weights = None if weights is None else weights[b0:b1]
        if given is not None:
            group_motifs = given[g]
        else:
            group_motifs = _choose_motifs(
                group_blocks, config, generator, init=None if init is None else init[g],
                valid_mask=valid[b0:b1], importance=group_weights, search=search,
                max_distance_bytes=max_distance_bytes)
        padded = [(columns, rows[(rows >= b0) & (rows < b1)] - b0) for columns, rows in patterns]
        assignments = nearest_motif_ignoring_padding(
            group_blocks, group_motifs, padded, weights=group_weights,
            max_distance_bytes=max_distance_bytes, search=search)
        all_motifs.append(group_motifs)
        all_assignments.append(assignments + motif_start)
        codebooks.append(Codebook(tuple(names[first:last]), b0, b1,
                                  motif_start, motif_start + len(group_motifs)))
        motif_start += len(group_motifs)
    return tuple(codebooks), torch.cat(all_motifs), torch.cat(all_assignments)


def _new_values(new_blocks, cut, tensors) -> list[torch.Tensor]:
    """The blocks put back into tensors, multiplied by their scales, each in its own dtype."""
    new_values = from_blocks(new_blocks, cut.layout)
    if cut.exponents is not None:
        new_values = [multiply(v, e) for v, e in zip(new_values, cut.exponents)]
    return [v.to(t.dtype) for v, t in zip(new_values, tensors)]


def _statistics(names, tensors, new_values, cut, config, codebooks, motif_table, assignments,
                start) -> ProjectionStats:
    """What the projection did: errors (in the block dtype, summed in float64), counts, timing."""
    dtype = cut.dtype
    squared_errors = [float((v.to(dtype) - t.to(dtype)).double().square().sum()) for v, t in zip(new_values, tensors)]
    norms = [float(t.double().norm()) for t in tensors]
    return ProjectionStats(
        parameter_names=tuple(names),
        num_weights=cut.layout.num_weights,
        num_blocks=cut.layout.num_blocks,
        num_motifs=len(motif_table),
        block_size=config.block_size,
        distortion=sum(squared_errors),
        changed_weights=int(sum(int((v != t).sum()) for v, t in zip(new_values, tensors))),
        seconds=time.perf_counter() - start,
        motifs=motif_table,
        assignments=assignments,
        motif_counts=torch.bincount(assignments, minlength=len(motif_table)),
        codebooks=codebooks,
        relative_errors={name: error ** 0.5 / norm if norm > 0 else error ** 0.5
                         for name, error, norm in zip(names, squared_errors, norms)},
        scales=None if cut.exponents is None else tuple(scales_of(e) for e in cut.exponents),
    )


def _scale_exponents(tensors, names, config, given) -> list[torch.Tensor] | None:
    """Each tensor's scale exponents, measured or from ``given`` scales; None without normalization."""
    if config.normalize != "none" and given is None:
        return [scale_exponents(t, config.normalize) for t in tensors]
    return given_exponents(tensors, config.normalize, given, names=names)


def _refuse_zero_codebooks(sizes, groups, tensors, names, config) -> None:
    """A codebook of one motif that ``force_zero`` makes the zero motif would erase its tensors."""
    if not config.force_zero:
        return
    for (m, k), (first, last) in zip(sizes, groups):
        if k == 1 and any(bool((t != 0).any()) for t in tensors[first:last]):
            which = f"parameter {names[first]!r}" if last - first == 1 else f"the {last - first} parameters"
            raise ValueError(
                f"the codebook of {which} ({m} blocks) gets k = 1 motif, and force_zero makes it the zero "
                "motif: every weight would become 0. Raise capacity (or num_motifs), exclude the "
                "tensor, or use scope='global'")


def _refuse_zeroed_tensors(new_values, tensors, names) -> None:
    for name, new, old in zip(names, new_values, tensors):
        if old.numel() and bool((new == 0).all()) and bool((old != 0).any()):
            raise ValueError(f"the projection would turn parameter {name!r} entirely into zeros. "
                             "Raise capacity, exclude the tensor, or use normalize='tensor' or 'channel'")


def _choose_motifs(blocks, config, generator, *, init, valid_mask, importance, search,
                   max_distance_bytes) -> torch.Tensor:
    """One codebook for ``blocks`` ``(m, s)``, as ``config.motif_method`` says."""
    k = config.motifs_for(len(blocks))
    if init is not None and len(init) == k:
        motifs = init
    else:  # the first projection, or k changed (capacity annealing): start from a fresh draw
        motifs = sample_motifs(blocks, k, generator, force_zero=config.force_zero)
    if config.motif_method in ("kmeans", "persistent"):
        motifs = refine_motifs_kmeans(blocks, motifs, config.kmeans_iterations, valid_mask=valid_mask,
                                      importance=importance, fixed_zero=config.force_zero,
                                      max_distance_bytes=max_distance_bytes, search=search)
    if config.quantizes_motifs:
        motifs = fake_quantize(motifs, config.motif_bits)
    return motifs


def _importance_blocks(importance, tensors, config, blocks, layout) -> torch.Tensor | None:
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
    weight_blocks, _ = to_blocks([w.to(blocks.device) for w in importance], config.block_size,
                                 dtype=blocks.dtype, tile_shape=config.tile_shape, per_row=layout.per_row)
    return weight_blocks


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
