"""Complexity metrics of a model's weights, one function per metric, and ``measure`` over many.

The weights are the selected parameters (default: every parameter with ``requires_grad``, in
``named_parameters()`` order, as a projection selects them) flattened and concatenated.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..config import MoMosConfig
from ..project import select_parameters
from .block_decomposition import bdm, bdm_per_bit, quantize_levels
from .compressors import COMPRESSORS, compressed_sizes, compressor_table, window_warning
from ..scales import Scales, num_scales
from .description import (CodebookUsage, description_length_of_codebooks, default_bits, mosaic_codebooks,
                          num_quantized)

PAYLOADS = {"": "float32", "_bin": "bin", "_bits": "bits"}   # metric-name suffix -> payload
PAYLOAD_DESCRIPTIONS = {"float32": "float32", "bin": "binarized byte-per-weight",
                        "bits": "binarized bit-packed"}
COMPRESSOR_METRICS = tuple(f"{name}{suffix}" for suffix in PAYLOADS for name in COMPRESSORS)
BDM_METRICS = ("bdm", "bdm4", "bdm5", "bdm6", "bdm9")
METRICS = COMPRESSOR_METRICS + BDM_METRICS + ("sparsity", "l2", "entropy", "mosaic")
"""Valid metric names. ``gzip``/``bz2``/``lzma``/``zstd``: compression ratio of the float32
weights; ``*_bin``: of the binarized weights ``w > 0`` at one byte per weight; ``*_bits``: of
the binarized weights bit-packed. ``bdm``: BDM of the binarized weights; ``bdmL``: BDM of the
weights quantized to ``L`` levels. ``sparsity``, ``l2``, ``entropy``: exact-zero fraction, L2
norm, empirical entropy in bits per weight. ``mosaic``: the description lengths of the
weights as a mosaic (needs a config)."""

DEFAULT_METRICS = ("gzip", "bz2", "lzma", "zstd", "bdm", "sparsity", "l2", "entropy")

# Selection without a config: every parameter with requires_grad (k is irrelevant here).
_TRAINABLE = MoMosConfig(num_motifs=1)


class CompressorWindowWarning(UserWarning):
    """A compressor's window is smaller than the structure it should find."""


def measure(model_or_tensor: nn.Module | torch.Tensor | Sequence[torch.Tensor],
            metrics: Iterable[str] | str = DEFAULT_METRICS, config: MoMosConfig | None = None, *,
            fast: bool = False, bdm_tail: str = "recursive", q: int | None = None,
            scales: Scales | None = None) -> dict[str, float | int]:
    """Measure the complexity of a model's weights.

    Args:
        model_or_tensor: a module, a tensor or a sequence of tensors.
        metrics: names from :data:`METRICS` (a list, or one comma-separated string).
        config: selects the parameters (``include``/``exclude``) and gives the block size and
            scope for ``mosaic`` and for the compressor-window warning.
        fast: faster compressor settings (``compressors.FAST_SETTINGS``).
        bdm_tail: how BDM treats the last ``n mod 12`` symbols (``"recursive"`` or ``"ignore"``).
        q: bits per value for ``mosaic`` (default: the config's motif bits, else 32).
        scales: with ``config.normalize``, the mosaic's power-of-two scales for ``mosaic``: one
            tensor per measured tensor (``ProjectionStats.scales``, ``Projector.scales``) or,
            for a module, a mapping from parameter names to them. Without them they are
            measured from the weights (see ``description.mosaic_codebooks``).
            A module with fake quantization attached (QAT) is measured on its latent weights,
            the mosaic, and ``mosaic`` counts the quantization (``q`` per quantized tensor).

    Returns:
        ``num_weights`` and, per metric: compressors ``NAME`` (ratio raw/compressed),
        ``NAME_raw_bytes``, ``NAME_compressed_bytes``; ``bdm*`` (bits), ``bdm*_per_bit`` and
        ``bdm*_normalized``;
        ``sparsity``, ``l2``, ``entropy``; ``mosaic_*`` (see ``DescriptionLength.as_dict``).

    Warns:
        CompressorWindowWarning: with a config, for each compressor whose window is smaller
            than the motif table in its payload.

    Raises:
        ValueError: unknown metric names (the valid ones are listed), no weights, NaN or Inf
            weights, ``mosaic`` without a config, or a failure inside a metric.
        TypeError: an input that is neither a module nor tensors, or non-floating weights.
    """
    names = check_metrics(metrics, config)
    tensors = measured_tensors(model_or_tensor, config)
    tensor_names = None
    if isinstance(scales, Mapping):
        if not isinstance(model_or_tensor, nn.Module):
            raise TypeError("scales by parameter name need a module; give a list for tensors")
        tensor_names = [name for name, _ in select_parameters(model_or_tensor, config or _TRAINABLE)]
    weights = torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in tensors]).numpy()
    results: dict[str, float | int] = {"num_weights": int(weights.size)}
    codebooks = None
    if config is not None and ("mosaic" in names or set(names) & set(COMPRESSOR_METRICS)):
        codebooks = mosaic_codebooks(tensors, config, scales, names=tensor_names)
    for name in names:
        if name in COMPRESSOR_METRICS:
            compressor, payload = _split_compressor_metric(name)
            results.update(compression(weights, compressor, payload, fast=fast, prefix=name))
            if codebooks is not None:
                _warn_window(compressor, payload, codebooks)
        elif name in BDM_METRICS:
            alphabet = int(name[3:] or 2)
            value = bdm_of_weights(weights, alphabet, tail=bdm_tail)
            results[name] = value
            results[f"{name}_per_bit"] = bdm_per_bit(value, weights.size, alphabet)
            results[f"{name}_normalized"] = bdm_of_weights(weights, alphabet, tail=bdm_tail, normalized=True)
        elif name == "mosaic":
            quantized = num_quantized(model_or_tensor, config) if isinstance(model_or_tensor, nn.Module) else 0
            length = description_length_of_codebooks(
                int(weights.size), config.block_size, default_bits(config) if q is None else q, codebooks,
                num_scales=num_scales([t.shape for t in tensors], config.normalize), num_quantized=quantized)
            results.update({f"mosaic_{key}": value for key, value in length.as_dict().items()
                            if key != "num_weights"})
        else:
            results[name] = _SIMPLE_METRICS[name](weights)
    return results


def check_metrics(metrics: Iterable[str] | str, config: MoMosConfig | None = None) -> list[str]:
    """The metric names, validated and deduplicated in order.

    Raises:
        ValueError: no names, unknown names (listing the valid ones), or ``mosaic`` without a config.
    """
    if isinstance(metrics, str):
        metrics = [name.strip() for name in metrics.split(",") if name.strip()]
    names = list(dict.fromkeys(metrics))
    if not names:
        raise ValueError(f"no metrics asked for; valid metrics: {', '.join(METRICS)}")
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; "
                         f"valid metrics: {', '.join(METRICS)}")
    if "mosaic" in names and config is None:
        raise ValueError("metric 'mosaic' needs a config (its block size and scope)")
    return names


def measured_tensors(model_or_tensor, config: MoMosConfig | None = None) -> list[torch.Tensor]:
    """The tensors to measure, checked: floating point, finite, not all empty.

    Raises:
        TypeError: unsupported input or a non-floating tensor.
        ValueError: no weights at all, or NaN / Inf (naming the tensor).
    """
    if isinstance(model_or_tensor, nn.Module):
        if next(model_or_tensor.parameters(), None) is None:
            raise ValueError("nothing to measure: the model has no parameters")
        try:
            named = [(f"parameter {name!r}", p)
                     for name, p in select_parameters(model_or_tensor, config or _TRAINABLE)]
        except ValueError as error:
            raise ValueError(f"nothing to measure: {error}") from None
    elif isinstance(model_or_tensor, torch.Tensor):
        named = [("the tensor", model_or_tensor)]
    elif isinstance(model_or_tensor, (list, tuple)) and all(
            isinstance(t, torch.Tensor) for t in model_or_tensor):
        named = [(f"tensor {i}", t) for i, t in enumerate(model_or_tensor)]
    else:
        raise TypeError("measure takes an nn.Module, a tensor or a list of tensors, "
                        f"got {type(model_or_tensor).__name__}")
    for name, tensor in named:
        if not tensor.is_floating_point():
            raise TypeError(f"{name} has dtype {tensor.dtype}; weights must be floating point")
        if not torch.isfinite(tensor.detach()).all():
            raise ValueError(f"{name} holds NaN or Inf values; refusing to measure")
    if not named or sum(t.numel() for _, t in named) == 0:
        raise ValueError("nothing to measure: 0 weights")
    return [t for _, t in named]


def payload_bytes(weights: np.ndarray, payload: str) -> bytes:
    """``(n,)`` float32 weights as bytes: ``"float32"`` (little-endian), ``"bin"`` (``w > 0``,
    one byte per weight, as the paper's code) or ``"bits"`` (``w > 0`` bit-packed, MSB first)."""
    if payload == "float32":
        return weights.astype("<f4", copy=False).tobytes()
    if payload == "bin":
        return (weights > 0).astype(np.uint8).tobytes()
    if payload == "bits":
        return np.packbits(weights > 0).tobytes()
    raise ValueError(f"payload must be 'float32', 'bin' or 'bits', got {payload!r}")


def generic_sizes(state, *, fast: bool = False) -> tuple[int, dict[str, int]]:
    """The float32 bytes of every floating tensor of the state dict ``state`` (in order), and
    their size under each generic compressor (what a ``.momos`` file is compared with)."""
    floats = [t.detach().reshape(-1).to(torch.float32).numpy() for t in state.values() if t.is_floating_point()]
    payload = payload_bytes(np.concatenate(floats) if floats else np.zeros(0, np.float32), "float32")
    return len(payload), compressed_sizes(payload, fast=fast)


def compression(weights: np.ndarray, compressor: str, payload: str = "float32", *,
                fast: bool = False, prefix: str | None = None) -> dict[str, float | int]:
    """Compression ratio (raw / compressed bytes, higher = simpler) and both byte counts."""
    table = compressor_table(fast)
    if compressor not in table:
        raise ValueError(f"unknown compressor {compressor!r}; valid: {list(table)}")
    data = payload_bytes(weights, payload)
    compressed = len(table[compressor](data))
    prefix = prefix or f"{compressor}_{payload}"
    return {prefix: len(data) / compressed, f"{prefix}_raw_bytes": len(data),
            f"{prefix}_compressed_bytes": compressed}


def bdm_of_weights(weights: np.ndarray, alphabet: int = 2, *, tail: str = "recursive",
                   normalized: bool = False) -> float:
    """BDM in bits (or normalized) of the binarized weights ``w > 0`` (alphabet 2) or of the
    weights in ``alphabet`` equal-width levels (4, 5, 6, 9; see ``quantize_levels``)."""
    symbols = (weights > 0).astype(np.int64) if alphabet == 2 else quantize_levels(weights, alphabet)
    return bdm(symbols, alphabet, tail=tail, normalized=normalized)


def sparsity(weights: np.ndarray) -> float:
    """Fraction of weights that are exactly zero (padding never counts)."""
    return float(np.count_nonzero(weights == 0) / weights.size)


def l2_norm(weights: np.ndarray) -> float:
    return float(np.sqrt(np.square(weights, dtype=np.float64).sum()))


def empirical_entropy(weights: np.ndarray) -> float:
    """Entropy in bits per weight of the distribution of the distinct weight values."""
    _, counts = np.unique(weights, return_counts=True)
    p = counts / weights.size
    return float(-(p * np.log2(p)).sum())


_SIMPLE_METRICS = {"sparsity": sparsity, "l2": l2_norm, "entropy": empirical_entropy}


def _split_compressor_metric(name: str) -> tuple[str, str]:
    compressor, sep, suffix = name.partition("_")
    return compressor, PAYLOADS[sep + suffix]


def _warn_window(compressor: str, payload: str, codebooks: list[CodebookUsage]) -> None:
    """Warn when the largest motif table, in ``payload``'s bytes, exceeds the compressor's window.

    Only weights that repeat blocks (at most half as many distinct blocks as blocks, as in
    any mosaic) have such a structure; freshly initialized weights do not.
    """
    if any(2 * book.num_motifs > book.num_blocks for book in codebooks):
        return
    s = codebooks[0].motifs.shape[1]
    if payload == "float32":
        table_bytes = max(book.num_motifs for book in codebooks) * s * 4
    else:  # the binarized payloads repeat the distinct sign patterns of the motifs
        patterns = max(len(torch.unique(book.motifs > 0, dim=0)) for book in codebooks)
        table_bytes = patterns * s if payload == "bin" else -(-patterns * s // 8)
    message = window_warning(compressor, table_bytes, PAYLOAD_DESCRIPTIONS[payload])
    if message:
        warnings.warn(message, CompressorWindowWarning, stacklevel=3)
