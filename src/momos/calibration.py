"""How much each weight matters to its layer's output, measured on calibration inputs.

A change ``dw`` of a layer's weight row changes the row's output by ``dw . x``; averaged over
inputs its square is ``dwᵀ E[x xᵀ] dw`` (the layer's Gauss–Newton matrix). Its diagonal,
the mean square of each input feature ``E[x_c²]``, weighs each weight by how strongly its
input drives the output: a projection that minimizes ``Σ_c h_c (b_c − z_c)²`` instead of the
plain distance keeps the outputs, not just the weights, close.

Statistics come from forward hooks on ``Linear``, ``Conv1d/2d/3d`` (per input channel and
kernel position, matching how the weight is laid out) and ``Embedding`` (the frequency of
each token) layers whose weight is selected. Other parameters (biases, norms) weigh 1.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

# GPTQ-style damping: a feature never seen in calibration keeps a little weight, so its
# blocks are still assigned by their values rather than by ties.
DAMPING = 0.01

Calibration = Iterable | Callable[[nn.Module], object]


def input_importance(model: nn.Module, names: list[str], calibration: Calibration
                     ) -> list[torch.Tensor]:
    """One importance tensor per parameter in ``names`` (same shape, mean 1, float32).

    Args:
        model: runs the calibration in eval mode, without gradients; its parameters, buffers
            and train/eval modes are as before afterwards.
        names: parameter names (``model.named_parameters()``), e.g. the selected ones.
        calibration: an iterable of inputs, each run as ``model(x)`` (a tuple or list as
            ``model(*x)``, a mapping as ``model(**x)``), or a callable ``fn(model)`` that runs
            whatever forward passes it likes.

    Raises:
        ValueError: the calibration ran none of the measurable layers of ``names``.
    """
    params = dict(model.named_parameters())
    collectors = {}
    for prefix, module in model.named_modules():
        name = f"{prefix}.weight" if prefix else "weight"
        if name in names and getattr(module, "weight", None) is params.get(name):
            collector = _collector(module)
            if collector is not None:
                collectors[name] = collector
    _run(model, calibration, collectors)
    measured = {name: c.importance() for name, c in collectors.items() if c.count}
    if collectors and not measured:
        raise ValueError(f"the calibration ran none of the {len(collectors)} measurable layers "
                         f"(first: {next(iter(collectors))!r}); check that it calls the model")
    return [measured.get(name, torch.ones(params[name].shape)) for name in names]


def _run(model: nn.Module, calibration: Calibration, collectors: dict) -> None:
    modes = {module: module.training for module in model.modules()}
    handles = [c.module.register_forward_pre_hook(c.observe) for c in collectors.values()]
    try:
        model.eval()
        with torch.no_grad():
            if callable(calibration):
                calibration(model)
            else:
                for x in calibration:
                    if isinstance(x, Mapping):
                        model(**x)
                    elif isinstance(x, (tuple, list)):
                        model(*x)
                    else:
                        model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training


class _Collector:
    """Sums of squared inputs per input feature of one layer."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.sums: torch.Tensor | None = None
        self.count = 0

    def observe(self, module: nn.Module, args: tuple) -> None:
        sums, count = self.measure(args[0])
        self.sums = sums if self.sums is None else self.sums + sums
        self.count += count

    def measure(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def per_weight(self, mean: torch.Tensor) -> torch.Tensor:
        """The per-feature means, laid out like the weight."""
        raise NotImplementedError

    def importance(self) -> torch.Tensor:
        mean = (self.sums / self.count).cpu()
        mean = mean + DAMPING * mean.mean()
        h = self.per_weight(mean)
        total = h.mean()
        return (h / total if total > 0 else torch.ones_like(h)).float()


class _Linear(_Collector):
    def measure(self, x):
        x = x.detach().double().reshape(-1, x.shape[-1])
        return x.square().sum(dim=0), len(x)

    def per_weight(self, mean):
        return mean.expand(self.module.weight.shape)


class _Embedding(_Collector):
    def measure(self, x):
        x = x.detach().reshape(-1)
        return torch.bincount(x, minlength=self.module.num_embeddings).double(), len(x)

    def per_weight(self, mean):
        return mean[:, None].expand(self.module.weight.shape)


class _Conv(_Collector):
    """Per input channel and kernel position: the mean square of the input values that meet
    that kernel position, over all output positions of the batch."""

    def measure(self, x):
        conv = self.module
        dims = conv.weight.dim() - 2
        x2 = x.detach().double().square()
        if x2.dim() == dims + 1:  # unbatched input
            x2 = x2[None]
        x2 = F.pad(x2, _padding(conv, dims))
        kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
        outputs = [(x2.shape[2 + d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(dims)]
        sums = x2.new_zeros(x2.shape[1], *kernel)
        for offset in itertools.product(*(range(k) for k in kernel)):
            window = tuple(slice(o * dl, o * dl + (n - 1) * st + 1, st)
                           for o, dl, n, st in zip(offset, dilation, outputs, stride))
            sums[(slice(None), *offset)] = x2[(slice(None), slice(None), *window)].sum(
                dim=(0, *range(2, 2 + dims)))
        count = x2.shape[0]
        for n in outputs:
            count *= n
        return sums, count

    def per_weight(self, mean):
        conv = self.module
        out_channels, per_group = conv.weight.shape[:2]
        groups = mean.reshape(conv.groups, per_group, *mean.shape[1:])
        return groups.repeat_interleave(out_channels // conv.groups, dim=0)


def _padding(conv: nn.Module, dims: int) -> tuple[int, ...]:
    """The zero padding of ``F.pad`` (last dimension first) that the convolution applies.

    Non-zero padding modes pad with other values; their squares are approximated by zeros.
    """
    if conv.padding == "valid":
        return (0,) * (2 * dims)
    if conv.padding == "same":
        pads = []
        for d in reversed(range(dims)):
            total = conv.dilation[d] * (conv.kernel_size[d] - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    return tuple(p for d in reversed(range(dims)) for p in (conv.padding[d], conv.padding[d]))


_COLLECTORS = ((nn.Linear, _Linear), (nn.Embedding, _Embedding),
               ((nn.Conv1d, nn.Conv2d, nn.Conv3d), _Conv))


def _collector(module: nn.Module) -> _Collector | None:
    for kinds, collector in _COLLECTORS:
        if isinstance(module, kinds):
            return collector(module)
    return None
