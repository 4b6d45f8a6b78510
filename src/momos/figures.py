"""The idea of MoMos in one picture: a small weight matrix cut into blocks, the motifs, the index
of each block's motif, and the mosaic they make.

    figure = plot_mosaic(torch.randn(8, 16), MoMosConfig(block_size=4, num_motifs=4))
    figure.savefig("mosaic.png")

``docs/make_figures.py`` draws the README's figure with it.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .config import MoMosConfig
from .project import project_

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WEIGHT_COLORS = "RdBu_r"      # diverging: zero is white, as the forced zero motif should look
INDEX_COLORS = "tab10"        # one colour per motif, shared by the index map and the motif table


def plot_mosaic(weight: torch.Tensor, config: MoMosConfig) -> Figure:
    """Four panels, left to right: ``weight`` with its block boundaries, the motif table, the
    index map (one cell per block, labelled with its motif) and the mosaic (each block replaced
    by its motif).

    ``weight``: ``(rows, cols)``, ``cols`` a multiple of ``config.block_size``. A copy is
    projected as the weight of an ``nn.Linear`` by :func:`momos.project_`; ``weight`` is unchanged.

    Raises:
        ValueError: ``weight`` is not a matrix of whole rows of blocks, or ``config`` cuts tiles
            (``tile_shape``) or normalizes, which these panels do not draw.
    """
    _check_drawable(weight, config)
    weight = weight.detach().cpu()
    rows, cols = weight.shape
    layer = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "moved far from their values": a toy codebook is coarse on purpose
        stats = project_(layer, config)
    s, k, m = config.block_size, stats.num_motifs, stats.num_blocks
    limit = weight.abs().max().item()    # one colour scale for weights and motifs alike
    colors = {"vmin": -limit, "vmax": limit, "cmap": WEIGHT_COLORS}

    figure = _empty_figure([cols, s, cols // s, cols])
    original, motifs, index_map, mosaic = figure.axes
    original.imshow(weight.numpy(), **colors)
    _draw_blocks(original, rows, cols, s)
    original.set_title(f"weight {rows}×{cols}: {m} blocks of s={s}")
    motifs.imshow(stats.motifs.numpy(), **colors)
    _draw_blocks(motifs, k, s, s)
    _label_motifs(motifs, k)
    motifs.set_title(f"k={k} motifs" + ("\n(0: all zero)" if config.force_zero else ""))
    _draw_indices(index_map, stats.assignments.reshape(rows, cols // s))   # runs of s values, row by row
    index_map.set_title("motif of each block")
    mosaic.imshow(layer.weight.detach().numpy(), **colors)
    _draw_blocks(mosaic, rows, cols, s)
    mosaic.set_title("mosaic: each block its motif")
    bits = max(1, math.ceil(math.log2(k)))
    figure.suptitle(f"{rows * cols} weights become {k}×{s} motif values and {m} indices of {bits} bit"
                    + ("s" if bits > 1 else ""))
    return figure


def _check_drawable(weight: torch.Tensor, config: MoMosConfig) -> None:
    if weight.dim() != 2 or weight.shape[1] % config.block_size:
        raise ValueError(f"weight must be (rows, cols) with cols a multiple of block_size "
                         f"{config.block_size}, got shape {tuple(weight.shape)}")
    if config.tile_shape is not None or config.normalize != "none":
        raise ValueError("plot_mosaic draws runs of raw values: tile_shape=None, normalize='none'")


def _empty_figure(widths: list[int]) -> Figure:
    """One row of axes without ticks, each as wide as its number of cells."""
    from matplotlib.figure import Figure   # not pyplot: no global figure to close, any backend

    figure = Figure(figsize=(11, 3), layout="constrained")
    for ax in figure.subplots(1, len(widths), gridspec_kw={"width_ratios": widths}):
        ax.set_xticks([])
        ax.set_yticks([])
    return figure


def _draw_blocks(ax: Axes, rows: int, columns: int, step: int) -> None:
    """Lines around every ``step`` cells of each row: the blocks of an image of ``(rows, columns)`` cells."""
    for row in range(rows + 1):
        ax.axhline(row - 0.5, color="black", linewidth=1.2)
    for column in range(0, columns + 1, step):
        ax.axvline(column - 0.5, color="black", linewidth=1.2)


def _draw_indices(ax: Axes, indices: torch.Tensor) -> None:
    """``indices`` ``(rows, blocks per row)`` as cells labelled with their motif, coloured as in
    the motif table (colours repeat after ten motifs; the numbers do not)."""
    ax.imshow(indices.numpy() % 10, cmap=INDEX_COLORS, vmin=-0.5, vmax=9.5, alpha=0.5)
    _draw_blocks(ax, *indices.shape, 1)
    for (row, column), index in np.ndenumerate(indices.numpy()):
        ax.text(column, row, str(index), ha="center", va="center", fontsize=8)


def _label_motifs(ax: Axes, k: int) -> None:
    """Each motif's index left of its row, in the colour its blocks have in the index map."""
    from matplotlib import colormaps

    ax.set_yticks(range(k), [str(i) for i in range(k)])
    for index, label in enumerate(ax.get_yticklabels()):
        label.set_color(colormaps[INDEX_COLORS](index % 10))
        label.set_fontweight("bold")
