"""Re-estimating BatchNorm's running statistics after a projection.

    reestimate_batchnorm_(model, (x for x, _ in itertools.islice(train_batches, 40)))

A projection moves the weights but not the running mean and variance of the BatchNorm layers
behind them, which still describe the activations of the weights before it. Evaluated with
those stale statistics, a projected convnet can lose far more accuracy than its mosaic costs
(ResNet-20 on CIFAR-10: experiments/README.md). A pass over a few training batches with the
BatchNorm layers in train mode, no gradients and a cumulative average (momentum ``None``)
replaces them by the statistics of the weights as they are.

This is ``torch.optim.swa_utils.update_bn`` with two differences that the training loop and
post-training compression need: a failed or empty pass leaves the statistics as they were (not
reset), and only the BatchNorm layers run in train mode, so dropout stays off and the layers
see the activations they will see at evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def require_batchnorm(model: nn.Module, what: str) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model``; a ValueError that names ``what`` (the model, as the
    caller knows it) when it has none to re-estimate."""
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(f"{what} has no BatchNorm layer with running statistics to re-estimate")
    return layers


@torch.no_grad()
def reestimate_batchnorm_(model: nn.Module, inputs: Iterable) -> int:
    """Replace the running statistics of every BatchNorm layer of ``model`` by their average over
    ``inputs``; returns the number of batches.

    Args:
        model: changed in place; its train/eval modes and the layers' momenta are as before.
        inputs: model inputs on the model's device, each run as ``model(x)`` (a mapping as
            ``model(**x)``): e.g. a few augmented training batches.

    Raises:
        ValueError: ``model`` has no BatchNorm layer, or ``inputs`` is empty. On any error the
            statistics are as before.
    """
    layers = require_batchnorm(model, type(model).__name__)
    saved = [{name: buffer.clone() for name, buffer in layer.named_buffers(recurse=False)} for layer in layers]
    modes = {module: module.training for module in model.modules()}
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None   # a cumulative average over the batches
            layer.train()
        for x in inputs:
            model(**x) if isinstance(x, Mapping) else model(x)
            count += 1
        if count == 0:
            raise ValueError("no batches to re-estimate the BatchNorm statistics on")
    except BaseException:
        for layer, buffers in zip(layers, saved):
            for name, value in buffers.items():
                getattr(layer, name).copy_(value)
        raise
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return count
