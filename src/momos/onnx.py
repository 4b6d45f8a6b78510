"""ONNX export of a mosaic that stays a mosaic: motif tables and block indices in the file.

    momos.export_onnx(model, torch.randn(1, 3, 32, 32), "model.onnx", cfg, scales=stats.scales)

The model is exported compact (:func:`momos.compact_`): each mosaic tensor is stored as its
codebook's motif table (float) and its block indices, unpacked to the smallest integer type
that holds them (uint8 / int16 / int32: the exporter has no uint16, and unpacking packed bits
in the graph cost more bytes of graph than it saved on small models), and the graph rebuilds
the weight before the MatMul / Gemm / Conv that uses it: ``Cast`` of the indices to int64
(``Gather`` takes no smaller integers), ``Gather`` of the motif rows, ``Slice`` / ``Reshape`` / ``Transpose`` back to the weight's shape, and for a
normalized mosaic ``Mul`` by ``2**exponents`` (int16 exponents in the file). Any ONNX runtime
runs it; the file holds what the compact model holds in memory, plus a few KB of graph per tensor
(the rebuild's shape arithmetic).

The export uses PyTorch's TorchScript-based exporter without constant folding: folding would
replace every rebuild by its dense result, and the file would be as large as a dense export.
A runtime may still fold it when it loads the file (onnxruntime does at its default graph
optimization level): the file stays small, the session then holds dense weights.
"""

from __future__ import annotations

import copy
import io
import os
import warnings

import torch
from torch import nn

from .compact import MosaicWeight, compact_
from .config import MoMosConfig
from .io import write_bytes_atomic
from .scales import Scales

OPSET = 17          # LayerNormalization is one node from 17 on
LDEXP = "aten::ldexp"
# TorchScript's scalar type names -> ONNX TensorProto data types, for the floats a mosaic can hold
FLOAT_TYPES = {"Float": 1, "Double": 11, "Half": 10, "BFloat16": 16}


def export_onnx(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...],
                path: str | os.PathLike, config: MoMosConfig | None = None,
                scales: Scales | None = None) -> int:
    """Write ``model`` as an ONNX file (atomically) whose mosaic tensors are motif tables plus indices.

    Args:
        model: an exact mosaic under ``config`` (after ``project_``, a ``momos+qat`` run or
            ``momos.load``); a copy of it is compacted, ``model`` itself is not changed. Without
            ``config``, a compact model (``momos.compact_``, ``momos.load(..., compact=True)``),
            exported as it is.
        example_input: one input tensor, or a tuple of them, to trace the forward pass with.
            Dimension 0 of every input and output is dynamic (named ``batch``), unless the model
            reads its batch size as a Python int (``len(x)``): the trace then keeps the example's.
            Inputs are named ``input`` (``input0``, ``input1``, ... for several), outputs likewise
            ``output``.
        path: the ``.onnx`` file to write.
        config: the mosaic's configuration, as :func:`momos.compact_` takes it.
        scales: with ``config.normalize``, the mosaic's power-of-two scales, as
            :func:`momos.compact_` takes them.

    Returns:
        The size of the written file in bytes.

    Raises:
        ValueError: no ``config`` for a model that is not compact, a ``config`` for one that is,
            or what :func:`momos.compact_` refuses (a tensor that is not a mosaic, bad scales).
            Nothing is written then.
        ModuleNotFoundError: the ``onnx`` package is not installed (``pip install 'momos[onnx]'``).
    """
    import onnx   # torch's exporter needs it; imported first, a missing install names itself

    model = _compact_copy(model, config, scales)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    input_names, output_names = _names("input", len(inputs)), _names("output", _output_count(model, inputs))
    buffer = io.BytesIO()
    # the exporter lacks torch.ldexp (the scales of a normalized mosaic); the rule stays registered,
    # as torch's unregistering leaves the exporter unable to look the operator up at all
    torch.onnx.register_custom_op_symbolic(LDEXP, _ldexp, OPSET)
    with warnings.catch_warnings():
        # the legacy exporter is chosen on purpose (see the module notes), and the rebuild's
        # shape checks are constants of the traced model: neither warning is news to the caller
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=OPSET, do_constant_folding=False,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes={name: {0: "batch"} for name in input_names + output_names})
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    write_bytes_atomic(data, path)
    return len(data)


def _compact_copy(model: nn.Module, config: MoMosConfig | None, scales: Scales | None) -> nn.Module:
    """A compact copy of ``model`` under ``config`` (or of ``model``, compact already), its
    indices unpacked."""
    compact = any(isinstance(m, MosaicWeight) for m in model.modules())
    if config is None and not compact:
        raise ValueError("the model is not compact: give the MoMosConfig (and scales) of its mosaic, "
                         "or compact it first (momos.compact_, momos.load(path, model, compact=True))")
    if config is not None and compact:
        raise ValueError("the model is already compact: export it without a config")
    model = copy.deepcopy(model)
    if config is not None:
        compact_(model, config, scales)
    for weight in model.modules():
        if isinstance(weight, MosaicWeight):
            weight.unpack_()
    return model


def _output_count(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """How many outputs ``model`` gives, from a forward pass in eval mode, as the export traces it
    (so that batch statistics and the caller's model stay as they are)."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(*inputs)
    finally:
        model.train(training)
    return len(outputs) if isinstance(outputs, tuple) else 1


def _names(stem: str, count: int) -> list[str]:
    return [stem] if count == 1 else [f"{stem}{i}" for i in range(count)]


def _ldexp(g, x, exponents):
    """``x * 2**e``, as ``torch.ldexp``: momos' exponents lie well within the float range, so
    ``2**e`` is a float exactly and so is the product (when ``x * 2**e`` is a normal float)."""
    # Cast, not CastLike: onnxruntime runs CastLike as a function, with a warning per node
    to = FLOAT_TYPES[x.type().scalarType()]
    two = g.op("Constant", value_t=torch.tensor(2.0, dtype=torch.float64))
    return g.op("Mul", x, g.op("Pow", g.op("Cast", two, to_i=to), g.op("Cast", exponents, to_i=to)))
