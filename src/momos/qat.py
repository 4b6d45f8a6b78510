"""Quantization-aware training: per-tensor symmetric fake quantization of module weights.

Attached with ``torch.nn.utils.parametrize``: the module keeps a full-precision latent
weight (``<module>.parametrizations.weight.original``), the forward pass sees it rounded
to ``q`` bits, and the rounding is skipped in the backward pass (straight-through
estimator). MoMos projects the latent weight.

A fake-quantized weight has two names: its plain name ``<module>.weight`` (without QAT, in a
run's checkpoints and in a ``.momos`` file) and the name of its latent parameter
(:func:`latent_name`), which ``named_parameters()`` and ``state_dict()`` show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .quantization import fake_quantize


@dataclass(frozen=True)
class QATConfig:
    """``bits``: q; ``>= 32`` means no quantization. ``exclude``: regular expressions searched
    in module names whose weights stay full precision (default: normalization layers)."""

    bits: int = 8
    exclude: tuple[str, ...] = ("bn", "norm")

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"bits must be an int, got {type(self.bits).__name__}")
        if self.bits < 2:
            raise ValueError(f"bits must be >= 2, got {self.bits}")

    @property
    def enabled(self) -> bool:
        return self.bits < 32


class FakeQuantize(nn.Module):
    """``w -> w + (quantize(w) - w).detach()``: quantized values forward, identity gradient."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (fake_quantize(weight, self.bits) - weight).detach()

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def quantized_modules(model: nn.Module, config: QATConfig) -> list[tuple[str, nn.Module]]:
    """Modules whose own floating-point ``weight`` parameter QAT quantizes."""
    chosen = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is None or not weight.is_floating_point():
            continue
        if any(re.search(pattern, name) for pattern in config.exclude):
            continue
        chosen.append((name, module))
    return chosen


def add_qat_(model: nn.Module, config: QATConfig) -> nn.Module:
    """Attach fake quantization to the weights of ``model`` (in place; once)."""
    if not config.enabled:
        return model
    if has_qat(model):
        raise ValueError("the model already has fake quantization attached; call remove_qat_ first")
    for _, module in quantized_modules(model, config):
        parametrize.register_parametrization(module, "weight", FakeQuantize(config.bits))
    return model


def has_qat(model: nn.Module) -> bool:
    return any(isinstance(m, FakeQuantize) for m in model.modules())


def remove_qat_(model: nn.Module, *, keep_quantized: bool = True) -> nn.Module:
    """Remove fake quantization; the weights become the quantized values (or the latent ones)."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, FakeQuantize) for p in module.parametrizations["weight"]):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=keep_quantized)
    return model


def fake_quantized(model: nn.Module) -> dict[str, int]:
    """``q`` of every weight whose one parametrization is fake quantization, by plain name."""
    bits = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            chain = module.parametrizations["weight"]
            if len(chain) == 1 and isinstance(chain[0], FakeQuantize):
                bits[_dotted(name, "weight")] = chain[0].bits
    return bits


def latent_name(plain: str) -> str:
    """``fc.weight`` -> ``fc.parametrizations.weight.original``: where QAT keeps the latent weight."""
    owner, _, tensor = plain.rpartition(".")
    return _dotted(owner, f"parametrizations.{tensor}.original")


def plain_name(name: str) -> str:
    """The inverse of :func:`latent_name`: ``fc.parametrizations.weight.original`` -> ``fc.weight``;
    other names are returned as they are."""
    owner, found, tensor = name.removesuffix(".original").rpartition("parametrizations.")
    if not found or not name.endswith(".original"):
        return name
    return f"{owner}{tensor}"


def latent_names(model: nn.Module) -> dict[str, str]:
    """Latent parameter name -> plain name, for every fake-quantized weight of ``model``.

    Raises:
        ValueError: a parametrization other than fake quantization alone, which plain names
            cannot express.
    """
    plain = {latent_name(name): name for name in fake_quantized(model)}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor in module.parametrizations:
                if latent_name(_dotted(name, tensor)) not in plain:
                    raise ValueError(f"{_dotted(name, tensor)!r} is parametrized by something other than "
                                     "fake quantization alone (momos.add_qat_); remove that parametrization first")
    return plain


def latent_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``model.state_dict()`` with every fake-quantized weight's latent value under its plain
    name, and the ``q`` of those names (:func:`fake_quantized`).

    Raises:
        ValueError: as :func:`latent_names`.
    """
    plain = latent_names(model)
    return {plain.get(name, name): t for name, t in model.state_dict().items()}, fake_quantized(model)


def _dotted(owner: str, name: str) -> str:
    return f"{owner}.{name}" if owner else name
