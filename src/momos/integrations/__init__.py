"""Adapters for training frameworks; each imports its framework lazily (optional dependencies).

The BatchNorm step that both callbacks take after a projection lives here, once.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .. import distributed
from ..finetune import reestimate_bn_on_batches


def check_reestimate_bn(count: int) -> int:
    """``count`` (a callback's ``reestimate_bn``) if it is a non-negative integer, else a ValueError."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"reestimate_bn must be a non-negative integer, got {count!r}")
    return count


def reestimate_bn_on_all_ranks(model: nn.Module, batches: Iterable, count: int) -> None:
    """The BatchNorm statistics of ``model`` re-estimated on ``count`` of ``batches``
    (:func:`momos.finetune.reestimate_bn_on_batches`), then rank 0's copied to every rank:
    under DDP each rank sees its own shard, and the ranks must evaluate and save one model.
    Nothing if ``count`` is 0."""
    if count:
        reestimate_bn_on_batches(model, batches, count)
        distributed.broadcast_parameters_(list(model.buffers()))
