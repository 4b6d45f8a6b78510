"""Compact modules: a mosaic held as what it is, shared motif tables plus block indices.

    momos.project_(model, cfg)                   # or momos.load("model.momos", model)
    momos.compact_(model, cfg, scales=stats.scales)
    model(x)                                     # bit for bit the dense mosaic's output
    momos.dense_(model)                          # plain dense parameters again

Each mosaic tensor is parametrized (``torch.nn.utils.parametrize``) by a :class:`MosaicWeight`:
its block indices in the bits the codebook's ``k`` needs (:mod:`momos.packing`: uint8 for
``k <= 256``, 18 bits for ``k = 251,781``), its power-of-two scale exponents when normalized, and the codebook's
:class:`MotifTable`, one module shared by every tensor of the codebook (like tied weights: one
tensor in memory, one key per tensor in ``state_dict()``). The parametrization's ``original`` is
a zero-size tensor that keeps the weight's dtype and device, so the dense weight exists only
while a forward pass computes it: ``motifs[indices]``, un-blocked by :func:`momos.from_blocks`,
times ``2**e``.

``state_dict()`` of a compact model holds the compact tensors (``...parametrizations.weight.0.indices``,
``...0.high_indices`` where the indices have bits above their low byte(s), ``...0.table.motifs``,
``...0.exponents``, a zero-size ``...original``); it loads into any compact
model of the same architecture and config, since a table holds ``config.motifs_for(num_blocks)``
rows whatever number of them the mosaic uses (unused rows are zero).

A fake-quantized weight (``momos.add_qat_``) whose latent value is the mosaic keeps its fake
quantization after the rebuild: the forward pass quantizes the rebuilt weight, as it did the
latent one.

Outputs are the dense mosaic's bit for bit in eager mode, with or without gradients: the rebuilt
weight requires grad exactly when its parameter did, because PyTorch's matmul chooses its kernel
by that flag (a Linear on a non-contiguous batched input). Under ``torch.inference_mode`` a
rebuilt weight cannot require grad, so there the outputs are identical when the parameters do not
either (``model.requires_grad_(False)``, the usual for deployment); ``torch.compile`` traces its
own kernels, like compiling the dense model.

``compact_(..., lookup=True)`` trades that bit-identity for speed at small batches: a Linear whose
rows hold their own blocks then computes its output from the motifs (:func:`momos.lookup.linear`)
without rebuilding the weight, where :func:`lookup_pays` says so (no gradients, CPU with numba,
``B x k <= 2 x out`` for a batch of ``B`` rows); its outputs equal the dense mosaic's up to the
order of the float summation (see :mod:`momos.lookup`), and it keeps a chunk-major copy of its
indices (as many bytes again, not counted by :func:`resident_bytes`).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import lookup as lookup_product
from . import packing
from .blocks import BlockLayout, from_blocks
from .config import MoMosConfig
from .fileformat.decompose import Mosaic, NotAMosaicError, decompose
from .project import select_parameters
from .qat import latent_names
from .scales import Scales, multiply


# lookup_pays: the lookup computes a table of B x k values per chunk where the rebuild writes out
# values per chunk. Against the compiled rebuild of momos.packing, bench/lookup.py measured it
# faster (0.33-0.85x the time) with B x k up to about out / 2, and from about out on slower
# (1.04-1.4x at B x k = 1 to 4 x out; before that rebuild, it paid up to 2 x out).
LOOKUP_TABLE_RATIO = 0.5


class MotifTable(nn.Module):
    """One codebook's ``(k, s)`` motifs (a buffer), shared by all the tensors it serves."""

    def __init__(self, motifs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("motifs", motifs)

    def extra_repr(self) -> str:
        return f"k={self.motifs.shape[0]}, s={self.motifs.shape[1]}, dtype={self.motifs.dtype}"


class MosaicWeight(nn.Module):
    """Parametrization ``original (0,) -> weight``: ``table.motifs[indices]`` un-blocked to the
    weight's shape (``layout.shapes[0]``), times ``2**exponents`` when normalized, in
    ``original``'s dtype.

    Args:
        table: the codebook's motifs.
        indices: ``(num_blocks,)`` integer block indices, held packed
            (:func:`momos.packing.pack`: buffers ``indices``, the low part, and ``high_indices``,
            or None; after :meth:`unpack_`, ``indices`` plain).
        layout: the weight's block layout (one tensor).
        exponents: int16 of shape ``()`` or ``(rows,)``, or None.
    """

    def __init__(self, table: MotifTable, indices: torch.Tensor, layout: BlockLayout,
                 exponents: torch.Tensor | None = None) -> None:
        super().__init__()
        # (computing num_blocks here also caches the layout's offsets, which torch.compile cannot
        # compute in a traced forward: a cached_property takes a lock)
        if len(indices) != layout.num_blocks:
            raise ValueError(f"{len(indices)} block indices for a weight of {layout.num_blocks} blocks")
        self.table = table
        self.layout = layout
        low, high = packing.pack(indices, len(table.motifs))
        self.register_buffer("indices", low)
        self.register_buffer("high_indices", high)
        self.register_buffer("exponents", exponents)

    def block_indices(self) -> torch.Tensor:
        """The ``(num_blocks,)`` int64 block indices, unpacked."""
        return packing.unpack(self.indices, self.high_indices, len(self.table.motifs))

    def unpack_(self) -> "MosaicWeight":
        """Hold the indices unpacked, as plain integers of :func:`momos.packing.index_dtype`
        (``high_indices`` None), for exporters without unsigned 16-bit or bitwise types."""
        self.indices = self.block_indices().to(packing.index_dtype(len(self.table.motifs)))
        self.high_indices = None
        return self

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        blocks = packing.gather(self.table.motifs, self.indices, self.high_indices)
        weight = from_blocks(blocks, self.layout)[0]
        if self.exponents is not None:
            weight = multiply(weight, self.exponents)
        weight = weight.to(original.dtype).contiguous()
        if not torch.compiler.is_compiling():
            # eager matmul picks its kernel by whether the weight requires grad (it folds batched
            # inputs when it does): reporting the parameter's flag keeps the outputs bit for bit
            weight.requires_grad_(original.requires_grad)
        return weight

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """What parametrize stores as ``original`` when the weight is registered or assigned: a
        zero-size tensor for the mosaic's own value (or for a tied twin, already zero-size)."""
        if weight.numel() and not torch.equal(weight, self(weight.new_empty(0))):
            raise ValueError("a compact weight holds its mosaic and nothing else; "
                             "call momos.dense_(model) before changing it")
        return weight.new_empty(0)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.layout.shapes[0])}, index_bits={packing.index_format(len(self.table.motifs)).bits}"


def compact_(model: nn.Module, config: MoMosConfig, scales: Scales | None = None, *,
             lookup: bool = False) -> nn.Module:
    """Hold the mosaic tensors of ``model`` as motif tables plus block indices, in place.

    Args:
        model: an exact mosaic under ``config`` (after ``project_``, a ``momos+qat`` run, or
            ``momos.load``), checked bit for bit as ``momos.save`` checks it; fake quantization
            may be attached. Tied parameters are compacted under every name they have.
        config: the mosaic's block size, tile shape, scope, normalization, selection and ``k``.
        scales: with ``config.normalize``, the mosaic's power-of-two scales, as ``momos.save``
            takes them (``ProjectionStats.scales``, or by name, e.g. ``momos.fileformat.read_scales``).
        lookup: let Linear layers compute from the motifs where :func:`lookup_pays`; their
            outputs are then the dense mosaic's up to float summation order, not bit for bit.

    Returns:
        ``model``, whose forward pass gives the dense mosaic's outputs bit for bit (see the
        module's notes on ``inference_mode``; not with ``lookup``); its ``state_dict()`` holds
        the compact tensors.

    Raises:
        ValueError: the model is already compact, a selected tensor is not a mosaic (named),
            scales are missing or do not fit, or a parametrization other than fake quantization
            is attached. The model is untouched then.
        TypeError: a selected parameter is not floating point.
    """
    if any(isinstance(m, MosaicWeight) for m in model.modules()):
        raise ValueError("the model is already compact; call momos.dense_(model) first")
    config.validate()
    selected = select_parameters(model, config)
    plain = latent_names(model)
    names = [plain.get(name, name) for name, _ in selected]
    if isinstance(scales, Mapping):
        scales = {plain.get(name, name): table for name, table in scales.items()}
    try:
        mosaic = decompose([p for _, p in selected], config, scales, names=names)
    except NotAMosaicError as error:
        raise ValueError(f"parameter {names[error.tensor]!r} is not a mosaic under this configuration: {error}; "
                         "project the model first (momos.project_) or give the configuration (and scales) "
                         "it was made with") from None
    hold_mosaic_(model, [p for _, p in selected], mosaic, config)
    if lookup:
        for owner in model.modules():
            if isinstance(owner, nn.Linear) and _lookup_weight(owner) is not None:
                owner.forward = types.MethodType(_lookup_forward, owner)
    return model


def hold_mosaic_(model: nn.Module, params: list[nn.Parameter], mosaic: Mosaic, config: MoMosConfig) -> nn.Module:
    """Parametrize ``params`` (parameters of ``model``, in the order of ``mosaic``'s tensors) by
    ``mosaic``, in place, whatever they hold: what :func:`compact_` does once it has checked that
    they hold the mosaic, and what ``momos.load(..., compact=True)`` does with a file's mosaic,
    whose dense tensors it never builds.

    The parameters keep their dtype and device, but for a parameter on the meta device (a model
    built under ``torch.device("meta")``), whose compact tensors go to the CPU. Their values are
    dropped (zero-size ``original``); tied parameters are compacted under every name they have.
    ``config`` gives each codebook's ``k`` (:meth:`MoMosConfig.motifs_for`).
    """
    owners = _owners(model, latent_names(model))
    done = set()
    for param, weight in zip(params, _parametrizations(mosaic, config, params)):
        if weight is None or id(param) in done:   # a tied parameter given twice: its first tensor serves
            continue
        done.add(id(param))
        names = owners[id(param)]
        if param.is_meta:   # .data cannot leave the meta device: a new parameter under every name
            empty = nn.Parameter(torch.empty(0, dtype=param.dtype), requires_grad=param.requires_grad)
            for name in names:
                owner_name, _, tensor = name.rpartition(".")
                model.get_submodule(owner_name)._parameters[tensor] = empty
        else:
            param.data = param.new_empty(0)   # its values go; the object stays, for optimizers and tied twins
        for name in names:
            _attach(model, name, weight)
    return model


def dense_(model: nn.Module) -> nn.Module:
    """Undo :func:`compact_`, in place: every compact tensor becomes a plain dense parameter again
    (the same ``nn.Parameter`` object, holding the mosaic); fake quantization stays attached."""
    for owner in list(model.modules()):
        if getattr(owner.__dict__.get("forward"), "__func__", None) is _lookup_forward:
            del owner.forward
        for tensor in list(getattr(owner, "parametrizations", {})):
            chain = owner.parametrizations[tensor]
            if isinstance(chain[0], MosaicWeight):
                with torch.no_grad():
                    value = chain[0](chain.original)
                rest = _detach(owner, tensor)[1:]
                with torch.no_grad():   # in place, so optimizers and tied twins keep the parameter
                    getattr(owner, tensor).set_(value)
                for later in rest:
                    parametrize.register_parametrization(owner, tensor, later)
        # the parameters in their order before compact_, so selections (and positional scales) still fit
        for name in owner.__dict__.pop("_momos_order", ()):
            if name in owner._parameters:
                owner._parameters[name] = owner._parameters.pop(name)
    return model


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``model``, each tensor counted once (a shared
    motif table, a tied weight); a compact model's dense weights are not resident."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def lookup_pays(weight: MosaicWeight, x: torch.Tensor) -> bool:
    """True when a Linear of the mosaic ``weight`` (rows holding their own blocks) should multiply
    ``x`` ``(..., in)`` by :func:`momos.lookup.linear` rather than rebuild its weight: no gradient
    is recorded, nothing traces the call, the compiled kernel serves ``x`` in the motifs' dtype,
    and the table is small: ``B x k <= LOOKUP_TABLE_RATIO x out`` for the ``B`` rows of ``x``."""
    out, k = weight.layout.shapes[0][0], len(weight.table.motifs)
    batch = x.numel() // max(1, x.shape[-1])
    return (not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
            and lookup_product.usable(x) and x.dtype == weight.table.motifs.dtype
            and batch * k <= LOOKUP_TABLE_RATIO * out)


def _parametrizations(mosaic: Mosaic, config: MoMosConfig, params: list[torch.Tensor]) -> list[MosaicWeight | None]:
    """One :class:`MosaicWeight` per tensor of ``mosaic`` (None for a tensor without values), on
    its tensor's device (the CPU for the meta device); tensors of one codebook share its
    :class:`MotifTable`, of ``config.motifs_for(num_blocks)`` rows."""
    layout = mosaic.layout
    weights: list[MosaicWeight | None] = [None] * len(params)
    for (first, last), motifs, indices in zip(mosaic.groups, mosaic.motifs, mosaic.indices):
        # every table of a config has k rows, so compact state dicts of one architecture fit each other
        k = max(len(motifs), config.motifs_for(layout.block_offsets[last] - layout.block_offsets[first]))
        table = MotifTable(torch.cat([motifs, motifs.new_zeros(k - len(motifs), motifs.shape[1])])
                           .to(_home(params[first])))
        for i in range(first, last):
            if layout.numels[i] == 0:
                continue
            start, end = (layout.block_offsets[j] - layout.block_offsets[first] for j in (i, i + 1))
            exponents = None if mosaic.exponents is None else mosaic.exponents[i].to(_home(params[i]))
            weights[i] = MosaicWeight(table, indices[start:end].to(_home(params[i])),
                                      replace(layout, shapes=(layout.shapes[i],)), exponents)
    return weights


def _home(param: torch.Tensor) -> torch.device:
    """Where a parameter's compact tensors live: its device, or the CPU for the meta device."""
    return torch.device("cpu") if param.is_meta else param.device


def _lookup_weight(linear: nn.Linear) -> MosaicWeight | None:
    """The Linear's mosaic weight when its rows hold their own blocks and nothing (fake
    quantization) follows it; else None."""
    chains = getattr(linear, "parametrizations", None)
    chain = chains["weight"] if chains is not None and "weight" in chains else ()
    if len(chain) != 1 or not isinstance(chain[0], MosaicWeight):
        return None
    weight = chain[0]
    return weight if lookup_product.row_indices(weight.indices, weight.layout) is not None else None


def _lookup_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``nn.Linear.forward``, from the motifs where :func:`lookup_pays`."""
    weight = _lookup_weight(self)
    if weight is None or not lookup_pays(weight, x):
        return nn.Linear.forward(self, x)
    return lookup_product.linear(x, weight.table.motifs, _columns(weight), weight.exponents, self.bias)


def _columns(weight: MosaicWeight) -> torch.Tensor:
    """The weight's ``(n, out)`` chunk-major indices, unpacked once and again only when the
    indices change (loaded into in place, replaced by a move)."""
    held = (weight.indices, weight.high_indices)
    versions = tuple(None if t is None else t._version for t in held)
    cached = weight.__dict__.get("_momos_columns")
    if cached is None or any(a is not b for a, b in zip(cached[0], held)) or cached[1] != versions:
        plain = weight.block_indices().to(packing.index_dtype(len(weight.table.motifs)))
        cached = (held, versions, lookup_product.row_indices(plain, weight.layout).T.contiguous())
        weight._momos_columns = cached
    return cached[2]


def _owners(model: nn.Module, plain: dict[str, str]) -> dict[int, list[str]]:
    """Every plain name under which each parameter of ``model`` is held (several for tied weights)."""
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(plain.get(name, name))
    return owners


def _attach(model: nn.Module, name: str, weight: MosaicWeight) -> None:
    """Parametrize the tensor ``name`` by ``weight``, before the fake quantization it may have."""
    owner_name, _, tensor = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if not hasattr(owner, "_momos_order"):   # parametrize moves a tensor it removes to the end
        owner._momos_order = tuple(owner._parameters)
    rest = _detach(owner, tensor)
    # the parameter is zero-size (hold_mosaic_ dropped its values): parametrize cannot compare shapes with it
    parametrize.register_parametrization(owner, tensor, weight, unsafe=True)
    for later in rest:
        parametrize.register_parametrization(owner, tensor, later)


def _detach(owner: nn.Module, tensor: str) -> list[nn.Module]:
    """Remove the parametrizations of ``owner.<tensor>``, leaving its original; returns them."""
    if not parametrize.is_parametrized(owner, tensor):
        return []
    chain = list(owner.parametrizations[tensor])
    parametrize.remove_parametrizations(owner, tensor, leave_parametrized=False)
    return chain
