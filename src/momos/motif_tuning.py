"""Training a mosaic's motifs: the blocks keep their motifs, the motifs themselves learn.

After a projection every selected weight is ``scale x motifs[index]``. Holding the indices
fixed, the loss is a function of the ``(k, s)`` motif table, and its gradient with respect
to motif ``j`` is the sum, over the blocks that use ``j``, of the weight gradient of the
block times its scale (the chain rule through ``w = scale x motif``). Training the table
this way keeps the model an exact mosaic at every step, so there is no final projection to
undo the fine-tuning (Stock et al., 2020, "And the Bit Goes Down", fine-tune their
codebooks the same way).

    mosaic = MosaicParameters(model, config, stats)     # stats: the projection's ProjectionStats
    loss.backward()
    mosaic.route_gradients_()                            # weight gradients -> mosaic.motifs.grad
    optimizer.step()                                     # the optimizer holds mosaic.motifs
    mosaic.write_()                                      # weights = scale x motifs[index] again
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import from_blocks, to_blocks
from .config import MoMosConfig
from .project import ProjectionStats, select_parameters
from .scales import exponents_of, multiply


class MosaicParameters:
    """The selected parameters of a projected model as functions of one trainable motif table.

    Args:
        model: the model as ``stats``'s projection left it.
        config: the projection's config.
        stats: the projection (its motifs, assignments and scales).

    Attributes:
        motifs: ``(k, s)`` float32 parameter, every codebook's motifs stacked (train it).
    """

    def __init__(self, model: nn.Module, config: MoMosConfig, stats: ProjectionStats) -> None:
        if config.quantizes_motifs:
            raise ValueError(f"motif_bits={config.motif_bits}: trained motifs would leave their "
                             f"{config.motif_bits}-bit grid; fine-tune the weights instead")
        self.params = [p for _, p in select_parameters(model, config)]
        if tuple(name for name, _ in select_parameters(model, config)) != stats.parameter_names:
            raise ValueError("the projection statistics are of other parameters than the config selects")
        self.config = config
        self.stats = stats
        self.motifs = nn.Parameter(stats.motifs.detach().clone().float())
        self.exponents = None if stats.scales is None else [exponents_of(s) for s in stats.scales]
        # force_zero's motif 0 of each codebook stays the zero block: zero weights stay free of charge.
        self.frozen_rows = [c.motif_start for c in stats.codebooks] if config.force_zero else []

    def route_gradients_(self) -> None:
        """Move the selected parameters' gradients onto ``motifs.grad`` (and clear theirs)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.exponents is not None:
            grads = [multiply(g, e) for g, e in zip(grads, self.exponents)]
        blocks, _ = self._blocks(grads)
        grad = torch.zeros_like(self.motifs).index_add_(0, self.stats.assignments.to(blocks.device), blocks)
        grad[self.frozen_rows] = 0
        self.motifs.grad = grad if self.motifs.grad is None else self.motifs.grad + grad
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def write_(self) -> None:
        """Set every selected weight to ``scale x motifs[index]``."""
        _, layout = self._blocks([p.detach() for p in self.params])
        values = from_blocks(self.motifs.detach()[self.stats.assignments], layout)
        if self.exponents is not None:
            values = [multiply(v, e) for v, e in zip(values, self.exponents)]
        for p, v in zip(self.params, values):
            p.copy_(v.to(p.dtype))

    def codebook_motifs(self) -> list[torch.Tensor]:
        """Each codebook's current motifs (as ``ProjectionStats.codebook_motifs()``)."""
        table = self.motifs.detach()
        return [table[c.motif_start:c.motif_end].clone() for c in self.stats.codebooks]

    def _blocks(self, tensors: list[torch.Tensor]):
        return to_blocks(tensors, self.config.block_size, dtype=torch.float32, tile_shape=self.config.tile_shape,
                         per_row=self.config.normalize == "channel")
