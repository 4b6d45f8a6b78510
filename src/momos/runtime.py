"""How training steps compute, never what is trained: device, precision, memory layout, threads.

A run's config says what is trained; these are the caller's, per session, and a resume may
choose otherwise (the results are the same up to rounding). :class:`Runtime` holds a session's
choices; :func:`resolve_device` and :func:`check_precision` refuse what cannot run here;
:func:`convolutional` says whether channels-last pays off for a model; :func:`default_threads`
is the rule ``momos train`` and ``momos sweep`` follow when no threads are asked for, from the
work of a step measured in multiply-adds (:func:`multiply_adds`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Runtime:
    """How a session's training steps compute; not the run's config: a resume may choose
    otherwise, and the results are the same up to rounding."""

    precision: str = "fp32"          # of the forward pass and loss: fp32, or bf16 autocast
    channels_last: bool = False      # weights and batches in torch.channels_last
    compile: bool = False            # the steps call torch.compile(model)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` checked; ``cuda`` without an index is this process's GPU (``LOCAL_RANK``)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} is not available: torch sees no CUDA GPU")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} is not available: torch sees {torch.cuda.device_count()} GPUs")
    elif device.type != "cpu":
        raise ValueError(f"device {device} is not supported; use cpu or cuda")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it (Ampere and
    later), a CPU with AVX512-BF16 or AMX (what oneDNN reports); elsewhere torch emulates it,
    slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an unknown ``precision``, and bf16 where it would be emulated."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "bf16" and not native_bf16(device):
        where = (f"GPU {torch.cuda.get_device_name(device)} has no native bfloat16" if device.type == "cuda" else
                 "this CPU has no native bfloat16 (AVX512-BF16 or AMX; torch.ops.mkldnn._is_mkldnn_bf16_supported() "
                 "is False), so it would be emulated, slower than float32")
        raise ValueError(f"--precision bf16 needs native bfloat16 arithmetic, and {where}; "
                         f"train with --precision fp32 (the default), or on a GPU with bfloat16 (--device cuda)")


# the layers whose multiply-adds measure a forward pass
COUNTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def multiply_adds(model: nn.Module, shape: tuple[int, ...],
                  kinds: tuple[type[nn.Module], ...] = COUNTED_LAYERS) -> int:
    """Multiply-adds of the linear and convolution layers (``kinds``: those of these types) of
    ``model`` on one blank image of ``shape`` (the bulk of its forward pass); ``model``'s mode
    and state stay as they were."""
    return sum(count for layer, count in layer_multiply_adds(model, shape).items() if isinstance(layer, kinds))


def layer_multiply_adds(model: nn.Module, shape: tuple[int, ...]) -> dict[nn.Module, int]:
    """Each linear and convolution layer's multiply-adds on one blank image of ``shape``, from one
    forward pass in eval mode (BatchNorm statistics stay); ``model``'s mode stays as it was."""
    counts: dict[nn.Module, int] = {}

    def count(module: nn.Module, inputs, output: torch.Tensor) -> None:
        # every output: one row of the weight
        counts[module] = counts.get(module, 0) + output.numel() * module.weight[0].numel()

    layers = [m for m in model.modules() if isinstance(m, COUNTED_LAYERS)]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    training = model.training
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape, device=device))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return counts


def convolutional(model: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether 2-d convolutions do most of ``model``'s :func:`multiply_adds`: channels-last pays
    off only then (the ViT's patch embedding, a convolution, is 1% of its work)."""
    counts = layer_multiply_adds(model, shape)   # one forward pass for both sums
    return 2 * sum(n for layer, n in counts.items() if isinstance(layer, nn.Conv2d)) > sum(counts.values())


# The work of one optimizer step (multiply-adds of the forward pass of one process's share of a
# batch) below which a run takes one torch thread. Such steps are made of small operations, which
# gain little from more threads on an idle machine, while on a busy one threads waiting for each
# other spin on cores others need: on a loaded 2-core machine bench/threads.py measured 2 threads
# 5-8x slower than 1 for the digits MLP (7e6 multiply-adds per step) and 17-19x for the MNIST MLP
# (5e7). Above it (ResNet-20 on CIFAR-10: 5e9) the operations are large enough to share out, and
# a run takes the cores; on a busy machine, ask for --threads 1 (2.3-2.7x faster there for ResNet-20).
ONE_THREAD_BELOW = 500_000_000


def default_threads(work_per_step: int, *, sharing: int = 1) -> int:
    """The torch threads for one process whose optimizer steps each do ``work_per_step``
    multiply-adds, when none are asked for: one below :data:`ONE_THREAD_BELOW`, else this
    machine's cores shared among ``sharing`` processes (those of a torchrun on this machine,
    the jobs of a sweep)."""
    if work_per_step < ONE_THREAD_BELOW:
        return 1
    return max(1, (os.cpu_count() or 1) // sharing)
