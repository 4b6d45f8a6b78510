"""The ``quantization`` of a ``.momos`` file (version 3): the tensors a QAT model fake-quantizes.

Header field::

    "quantization": null | {"scheme": "symmetric_per_tensor", "tensors": {name: q, ...}}

Each named tensor is stored as its latent (full-precision) values, a mosaic or plain tensor
like any other, and the file's model holds ``fake_quantize(latent, q)``
(:func:`momos.quantization.fake_quantize`, what ``momos.qat.FakeQuantize`` computes in the
forward pass): with the per-tensor step ``max|x| / (2**(q-1) - 1)`` (0 for an all-zero
tensor), every value becomes ``clamp(round_half_even(x / step), ±(2**(q-1) - 1)) · step``.
For float32 (and float64) latent weights each of these is one IEEE-754 operation, correctly
rounded, so every reader, on every device, computes the same bits. The step is derived from
the latent values, not stored: it costs no bytes and cannot disagree with the weights.
"""

from __future__ import annotations

import torch

from ..quantization import fake_quantize
from .container import DTYPES
from .errors import FormatError

SCHEME = "symmetric_per_tensor"
BITS = (2, 31)      # QAT's range: 32 bits and more mean no quantization (momos.qat.QATConfig)


def header_field(bits: dict[str, int], state: dict[str, torch.Tensor]) -> dict | None:
    """The header's ``quantization`` for tensors ``name -> q`` of ``state`` (None for none),
    in ``state``'s order.

    Raises:
        ValueError: an unknown or non-floating tensor, or ``q`` outside :data:`BITS`.
    """
    for name, q in bits.items():
        if name not in state or not state[name].is_floating_point():
            raise ValueError(f"quantized tensor {name!r} is not a floating tensor of the state dict")
        if not _valid_bits(q):
            raise ValueError(f"tensor {name!r}: quantization bits must be an int in {list(BITS)}, got {q!r}")
    if not bits:
        return None
    return {"scheme": SCHEME, "tensors": {name: bits[name] for name in state if name in bits}}


def read_field(value, entries: list[dict]) -> dict[str, int]:
    """Tensor name -> q from a header's ``quantization``, checked against its tensor ``entries``.

    Raises:
        FormatError: a malformed field, an unknown scheme, a name that is not a floating
            tensor of the file, or ``q`` outside :data:`BITS`.
    """
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) != {"scheme", "tensors"}:
        raise FormatError("the header's quantization must be null or an object with scheme and tensors")
    if value["scheme"] != SCHEME:
        raise FormatError(f"unknown quantization scheme {value['scheme']!r}; this reader knows {SCHEME!r}")
    tensors = value["tensors"]
    if not isinstance(tensors, dict) or not tensors:
        raise FormatError("the quantization's tensors must be a non-empty object {name: bits}")
    floating = {e["name"] for e in entries if DTYPES[e["dtype"]].is_floating_point}
    for name, q in tensors.items():
        if name not in floating or not _valid_bits(q):
            raise FormatError(f"quantized tensor {name!r}: not a floating tensor of the file, or bits {q!r} "
                              f"outside {list(BITS)}")
    return dict(tensors)


def apply(state: dict[str, torch.Tensor], bits: dict[str, int]) -> dict[str, torch.Tensor]:
    """``state`` with each tensor of ``bits`` fake-quantized to its ``q``: the model's weights."""
    return {name: fake_quantize(t, bits[name]) if name in bits else t for name, t in state.items()}


def _valid_bits(q) -> bool:
    return isinstance(q, int) and not isinstance(q, bool) and BITS[0] <= q <= BITS[1]
