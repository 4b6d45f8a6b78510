"""The exact description length of a mosaic, and the algorithmic simplification factor.

A mosaic of ``n`` weights in ``m`` blocks of ``s`` values, built from ``k`` motifs, is fully
described by its motif table and one motif index per block. Four honest codes for it
(all in bits, the paper's ``O(1)`` dropped):

- ``bound``: the paper's bound ``k·s·q + m·⌈log2 k⌉``: every motif value at ``q`` bits,
  every index at a fixed ``⌈log2 k⌉`` bits.
- ``entropy_coded``: the indices entropy-coded with their empirical distribution,
  ``k·s·q + m·H(usage) + k·⌈log2(m+1)⌉`` (the last term stores the usage counts, so a
  decoder can rebuild the code); needs the usage counts.
- ``needed_table``: the motif table at the bits it really needs, ``V·q + k·s·⌈log2 V⌉`` for the
  ``V`` distinct values in the table (a dictionary of values plus an index per value), or
  ``k·s·q`` when that is smaller; indices as in the bound. Needs the motifs.
- ``combined``: the needed table plus entropy-coded indices.

A normalized mosaic (``config.normalize``) also stores its power-of-two scales, one signed
byte each (the ``.momos`` file's precision): every variant adds ``8·(number of scales)`` bits.
A quantized (QAT) mosaic, whose model is its tensors fake-quantized to ``q`` bits each (the
mosaic is on the latent weights), also states each quantized tensor's ``q``, one byte: every
variant adds ``8·(number of quantized tensors)`` bits. The quantization steps cost nothing:
they follow from the weights (as in the ``.momos`` file).

The simplification factor of each is ``n·q / bits``: the trivial description of the
unconstrained weights (``n`` values at ``q`` bits) over the mosaic's.
With several codebooks (``scope="per_tensor"``) every term is summed over codebooks.

The motifs of weights are found by :func:`momos.fileformat.decompose.decompose`, the
decomposition the ``.momos`` file stores: blocks compared bit for bit, normalized first.

Signed zeros: blocks are compared by their bits, so a block holding ``-0.0`` and one holding
``0.0`` at the same place are two motifs, as in the file (which must give back every weight bit
for bit); ``k``, the indices and the usage are exactly the file's. The ``needed_table``
dictionary of values, though, counts distinct values by ``==`` (``torch.unique``), so ``-0.0``
and ``0.0`` are one value there (as in the ``entropy`` metric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..blocks import BlockLayout, codebook_groups, layout_of
from ..config import MoMosConfig
from ..fileformat.bitpack import bits_for
from ..fileformat.decompose import decompose
from ..project import ProjectionStats, select_parameters
from ..qat import fake_quantized, latent_name
from ..scales import Scales, num_scales, scale_exponents, scales_of

SCALE_BITS = 8
"""Bits per stored scale: the exponent ``e`` of ``2**e``, a signed byte as in the ``.momos`` file."""

QUANTIZATION_BITS = 8
"""Bits per quantized (QAT) tensor: its ``q``, a byte; its step follows from its weights."""


@dataclass(frozen=True)
class CodebookUsage:
    """One codebook: ``num_blocks`` blocks drawn from ``num_motifs`` motifs.

    ``motif_counts``: ``(k,)`` blocks per motif, or None when unknown (a configuration).
    ``motifs``: ``(k, s)`` motif values, or None when unknown.
    """

    num_blocks: int
    num_motifs: int
    motif_counts: torch.Tensor | None = None
    motifs: torch.Tensor | None = None


@dataclass(frozen=True)
class DescriptionLength:
    """How many bits describe a mosaic, four ways (see the module docstring).

    ``entropy_index_bits`` is None without usage counts and ``needed_table_bits`` is None
    without the motif values; the variants built on them are None then too.
    """

    num_weights: int
    num_blocks: int
    num_motifs: int
    block_size: int
    bits_per_value: int
    table_bits: int                      # k·s·q
    index_bits: int                      # m·⌈log2 k⌉
    entropy_index_bits: float | None     # m·H(usage) + usage table
    needed_table_bits: int | None        # V·q + k·s·⌈log2 V⌉, at most k·s·q
    num_scales: int = 0                  # power-of-two scales of a normalized mosaic
    num_quantized: int = 0               # tensors fake-quantized by QAT

    @property
    def scale_bits(self) -> int:
        """The scales at their stored precision, :data:`SCALE_BITS` each; in every variant."""
        return self.num_scales * SCALE_BITS

    @property
    def quantization_bits(self) -> int:
        """Each quantized tensor's ``q``, :data:`QUANTIZATION_BITS` each; in every variant."""
        return self.num_quantized * QUANTIZATION_BITS

    @property
    def extra_bits(self) -> int:
        """What every variant adds to its motifs and indices: scales and quantization."""
        return self.scale_bits + self.quantization_bits

    @property
    def raw_bits(self) -> int:
        """``n·q``: the unconstrained weights at ``q`` bits each."""
        return self.num_weights * self.bits_per_value

    @property
    def bound_bits(self) -> int:
        return self.table_bits + self.index_bits + self.extra_bits

    @property
    def entropy_coded_bits(self) -> float | None:
        if self.entropy_index_bits is None:
            return None
        return self.table_bits + self.entropy_index_bits + self.extra_bits

    @property
    def needed_table_total_bits(self) -> int | None:
        if self.needed_table_bits is None:
            return None
        return self.needed_table_bits + self.index_bits + self.extra_bits

    @property
    def combined_bits(self) -> float | None:
        if self.needed_table_bits is None or self.entropy_index_bits is None:
            return None
        return self.needed_table_bits + self.entropy_index_bits + self.extra_bits

    @property
    def simplification_factor(self) -> float:
        """The paper's ``n·q / (k·s·q + m·⌈log2 k⌉)``, plus ``8`` bits per scale when normalized
        and per quantized tensor under QAT."""
        return self.raw_bits / self.bound_bits

    def factor(self, bits: float | None) -> float | None:
        return None if bits is None else self.raw_bits / bits

    def as_dict(self) -> dict[str, float | int | None]:
        """Counts, every variant's bits, bits per weight and factor; ready for JSON."""
        out: dict[str, float | int | None] = {
            "num_weights": self.num_weights, "num_blocks": self.num_blocks,
            "num_motifs": self.num_motifs, "block_size": self.block_size,
            "bits_per_value": self.bits_per_value, "raw_bits": self.raw_bits,
            "num_scales": self.num_scales, "scale_bits": self.scale_bits,
            "num_quantized": self.num_quantized, "quantization_bits": self.quantization_bits,
        }
        for name, bits in (("bound", self.bound_bits), ("entropy_coded", self.entropy_coded_bits),
                           ("needed_table", self.needed_table_total_bits),
                           ("combined", self.combined_bits)):
            out[f"{name}_bits"] = bits
            out[f"{name}_bits_per_weight"] = None if bits is None else bits / self.num_weights
            out[f"{name}_factor"] = self.factor(bits)
        out["simplification_factor"] = out.pop("bound_factor")
        return out


def description_length(num_weights: int, num_blocks: int, num_motifs: int, block_size: int,
                       q: int = 32, *, motif_counts: torch.Tensor | None = None,
                       motifs: torch.Tensor | None = None, num_scales: int = 0,
                       num_quantized: int = 0) -> DescriptionLength:
    """The description length of one mosaic with a single codebook.

    Args:
        num_weights: ``n``. num_blocks: ``m``. num_motifs: ``k``. block_size: ``s``.
        q: bits per motif value (and per weight of the unconstrained model).
        motif_counts: ``(k,)`` blocks per motif, for the entropy-coded variant.
        motifs: ``(k, s)`` motif values, for the needed-table variant.
        num_scales: the power-of-two scales of a normalized mosaic (8 bits each).
        num_quantized: the tensors QAT quantizes (8 bits each: their ``q``).

    Raises:
        ValueError: non-positive sizes, ``k > m``, ``n > m·s`` or ``n < m`` (every block holds
            at least one weight), or counts / motifs that do not match ``k``, ``s`` and ``m``.
    """
    for name, value in (("num_blocks", num_blocks), ("num_motifs", num_motifs)):
        _check_positive(name, value)
    if not num_blocks <= num_weights <= num_blocks * block_size:
        raise ValueError(f"{num_weights} weights cannot fill {num_blocks} blocks of {block_size} "
                         f"(needs m <= n <= m·s)")
    usage = CodebookUsage(num_blocks, num_motifs, motif_counts, motifs)
    return description_length_of_codebooks(num_weights, block_size, q, [usage], num_scales=num_scales,
                                           num_quantized=num_quantized)


def description_length_of_codebooks(num_weights: int, block_size: int, q: int,
                                    codebooks: list[CodebookUsage], *, num_scales: int = 0,
                                    num_quantized: int = 0) -> DescriptionLength:
    """The description length of a mosaic with several codebooks: every term summed, plus
    :data:`SCALE_BITS` per scale of a normalized mosaic (``num_scales``) and
    :data:`QUANTIZATION_BITS` per tensor that QAT quantizes (``num_quantized``)."""
    for name, value in (("num_weights", num_weights), ("block_size", block_size), ("q", q)):
        _check_positive(name, value)
    for name, value in (("num_scales", num_scales), ("num_quantized", num_quantized)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if not codebooks:
        raise ValueError("a mosaic needs at least one codebook")
    for book in codebooks:
        _check_codebook(book, block_size)
    entropy = [_entropy_index_bits(b) for b in codebooks]
    needed = [_needed_table_bits(b, block_size, q) for b in codebooks]
    return DescriptionLength(
        num_weights=num_weights,
        num_blocks=sum(b.num_blocks for b in codebooks),
        num_motifs=sum(b.num_motifs for b in codebooks),
        block_size=block_size,
        bits_per_value=q,
        table_bits=sum(b.num_motifs for b in codebooks) * block_size * q,
        index_bits=sum(b.num_blocks * bits_for(b.num_motifs) for b in codebooks),
        entropy_index_bits=None if None in entropy else float(sum(entropy)),
        needed_table_bits=None if None in needed else sum(needed),
        num_scales=num_scales,
        num_quantized=num_quantized,
    )


def description_length_from_stats(stats: ProjectionStats, q: int = 32, *,
                                  num_quantized: int = 0) -> DescriptionLength:
    """The description length of a projected model, counting only the motifs actually used.

    An unused motif need not be stored, so each codebook's ``k`` is its number of used motifs.
    A normalized projection's scales (``stats.scales``) count 8 bits each, and so do the
    ``num_quantized`` tensors of a QAT model (:func:`num_quantized`; the statistics do not tell).
    """
    books = []
    for book in stats.codebooks:
        counts = stats.motif_counts[book.motif_start:book.motif_end].cpu()
        used = counts > 0
        books.append(CodebookUsage(book.block_end - book.block_start, int(used.sum()),
                                   counts[used], stats.motifs[book.motif_start:book.motif_end][used].cpu()))
    scales = 0 if stats.scales is None else sum(int(t.numel()) for t in stats.scales)
    return description_length_of_codebooks(stats.num_weights, stats.block_size, q, books, num_scales=scales,
                                           num_quantized=num_quantized)


def description_length_from_config(model: nn.Module, config: MoMosConfig,
                                   q: int | None = None) -> DescriptionLength:
    """The bound a projection with ``config`` would give ``model``, without projecting.

    Uses only the shapes of the selected parameters: ``m`` from the block layout, ``k`` from
    the capacity, per codebook, and with ``config.normalize`` the number of scales (which
    shapes alone tell; their values do not matter), and the tensors QAT quantizes
    (:func:`num_quantized`). ``q`` defaults to ``config.motif_bits`` when the motifs are
    quantized, else 32. The usage and the motif values are unknown, so only the bound (and its
    factor) is given.
    """
    tensors = [p for _, p in select_parameters(model, config)]
    layout = layout_of(tensors, config.block_size, config.tile_shape, per_row=config.normalize == "channel")
    books = [CodebookUsage(m, config.motifs_for(m)) for m in _codebook_block_counts(layout, config)]
    return description_length_of_codebooks(layout.num_weights, config.block_size,
                                           default_bits(config) if q is None else q, books,
                                           num_scales=num_scales(layout.shapes, config.normalize),
                                           num_quantized=num_quantized(model, config))


def num_quantized(model: nn.Module, config: MoMosConfig) -> int:
    """How many of the parameters ``config`` selects QAT fake-quantizes (their latent weights
    are selected, and the model's are those quantized)."""
    latent = {latent_name(name) for name in fake_quantized(model)}
    return sum(name in latent for name, _ in select_parameters(model, config))


def description_length_of_weights(tensors: list[torch.Tensor], config: MoMosConfig,
                                  q: int | None = None, *, scales: Scales | None = None) -> DescriptionLength:
    """The description length of ``tensors`` read as a mosaic of their distinct blocks.

    For a projected model the distinct blocks are the motifs actually used; for any other
    weights ``k`` is close to ``m`` and the factor falls below 1, which is the honest answer.
    With ``config.normalize``, pass the projection's ``scales`` (see :func:`mosaic_codebooks`).
    """
    return description_length_of_codebooks(sum(t.numel() for t in tensors), config.block_size,
                                           default_bits(config) if q is None else q,
                                           mosaic_codebooks(tensors, config, scales),
                                           num_scales=num_scales([t.shape for t in tensors], config.normalize))


def mosaic_codebooks(tensors: list[torch.Tensor], config: MoMosConfig,
                     scales: Scales | None = None, *, names: list[str] | None = None) -> list[CodebookUsage]:
    """Each codebook's distinct blocks (its motifs) with their counts, blocks as ``config`` cuts them.

    The decomposition of the ``.momos`` file (blocks compared bit for bit), without its limit
    on ``k``. A block that holds padding reuses a motif whose values on its real positions
    match. With ``config.normalize`` the blocks are those of the tensors divided by their
    ``scales`` (one tensor per tensor, or a mapping by ``names``; see
    :func:`momos.scales.given_exponents`); without them the scales are measured
    from the weights as a projection would (``scales.scale_exponents``), which describes a
    projected model exactly only when they are the ones it was projected with, so pass a
    projection's own scales (``ProjectionStats.scales``, ``Projector.scales``) for its mosaic.

    Raises:
        ValueError: malformed scales, or weights that do not come back from their normalized
            values (NotAMosaicError; see ``decompose``).
    """
    if config.normalize != "none" and scales is None:
        scales = [scales_of(scale_exponents(t.detach().cpu(), config.normalize)) for t in tensors]
    # The file's own decomposition, not a copy of it: blocks compared bit for bit, so -0.0 and
    # 0.0 make different motifs here exactly as they do in the .momos file.
    mosaic = decompose(list(tensors), config, scales, names=names, bounded=False)
    return [CodebookUsage(len(index), len(table), torch.bincount(index, minlength=len(table)), table)
            for table, index in zip(mosaic.motifs, mosaic.indices)]


def default_bits(config: MoMosConfig) -> int:
    """``q``: the motif precision when the config quantizes motifs, else float32's 32 bits."""
    return config.motif_bits if config.quantizes_motifs else 32


def _codebook_block_counts(layout: BlockLayout, config: MoMosConfig) -> list[int]:
    return [layout.block_offsets[last] - layout.block_offsets[first]
            for first, last in codebook_groups(layout, config.scope)]


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_codebook(book: CodebookUsage, block_size: int) -> None:
    if book.num_motifs < 1 or book.num_blocks < book.num_motifs:
        raise ValueError(f"a codebook needs 1 <= k <= m, got k={book.num_motifs}, m={book.num_blocks}")
    if book.motif_counts is not None:
        counts = book.motif_counts
        if counts.shape != (book.num_motifs,) or (counts < 0).any() or int(counts.sum()) != book.num_blocks:
            raise ValueError(f"motif_counts must be {book.num_motifs} non-negative counts summing to "
                             f"{book.num_blocks}, got shape {tuple(counts.shape)}, sum {int(counts.sum())}")
    if book.motifs is not None and book.motifs.shape != (book.num_motifs, block_size):
        raise ValueError(f"motifs must have shape {(book.num_motifs, block_size)}, "
                         f"got {tuple(book.motifs.shape)}")


def _entropy_index_bits(book: CodebookUsage) -> float | None:
    """``m·H(usage) + k·⌈log2(m+1)⌉``; a single motif needs no index at all."""
    if book.motif_counts is None:
        return None
    if book.num_motifs == 1:
        return 0.0
    counts = book.motif_counts.double().sort().values  # sorted: the same sum in any motif order
    p = counts[counts > 0] / book.num_blocks
    entropy = float(-(p * torch.log2(p)).sum())
    return book.num_blocks * entropy + book.num_motifs * math.ceil(math.log2(book.num_blocks + 1))


def _needed_table_bits(book: CodebookUsage, block_size: int, q: int) -> int | None:
    """The motif table as a dictionary of its distinct values, when cheaper than ``k·s·q``."""
    if book.motifs is None:
        return None
    num_values = book.num_motifs * block_size
    distinct = int(torch.unique(book.motifs).numel())   # by value: -0.0 and 0.0 count once
    return min(num_values * q, distinct * q + num_values * bits_for(distinct))
