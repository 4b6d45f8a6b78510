"""The ``.momos`` file: a mosaic stored as what it is, motif tables plus one index per block.

    momos.save(model, "model.momos", cfg)            # refuses a model that is not a mosaic
    momos.save(model, "model.momos", cfg, project=True)   # projects a copy first
    momos.save(model, "model.momos", cfg, scales=stats.scales)   # a normalized mosaic: its scales
    state = momos.load("model.momos")                # a state dict, bit-exact
    momos.load("model.momos", model)                 # or straight into a model

A model with fake quantization attached (``momos.add_qat_``, a ``momos+qat`` run) is saved as
what its forward pass computes with: its latent weights, which form the mosaic, plus which
weights are quantized to how many bits (format version 3). ``load`` returns the quantized
weights, bit for bit those of the forward pass; loaded into a model with the same fake
quantization attached, the latent weights go back into the parametrizations (training can go
on, and the forward pass quantizes them to the same weights).

The file is a standard safetensors file (no pickle; loading never runs code). Its layout is
described in :mod:`.codec`, :mod:`.container`, :mod:`.tables`, :mod:`.streams` and
:mod:`.quantized`.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..config import MoMosConfig
from ..io import write_bytes_atomic
from ..project import project_, select_parameters
from ..qat import fake_quantized, latent_name, latent_names, latent_state_dict
from ..scales import scales_of
from .codec import (DEFAULT_MAX_WEIGHTS, CodebookInfo, DecodedFile, FileInfo, decode, decode_parts, encode,
                    stored_tensors)
from ..scales import Scales, given_exponents
from .decompose import NotAMosaicError
from .errors import FormatError
from .quantized import apply as apply_quantization

DEFAULT_MAX_BYTES = 1 << 32

__all__ = ["CodebookInfo", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_WEIGHTS", "FileInfo", "FormatError",
           "load", "module_of_state_dict", "read", "read_scales", "save"]


def save(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike, config: MoMosConfig, *,
         scales: Scales | None = None, project: bool = False, motif_storage: str = "auto",
         index_coding: str = "auto", metadata: dict[str, str] | None = None) -> FileInfo:
    """Write ``model`` as a ``.momos`` file (atomically).

    Args:
        model: a module, or a state dict (its floating tensors are the candidate parameters).
            A module with fake quantization attached (``momos.add_qat_``) is saved with it: its
            latent weights must form the mosaic (they do after ``project_`` or a ``momos+qat``
            run), and the file records which weights are quantized to how many bits, so that
            :func:`load` gives back the quantized weights its forward pass uses.
        config: the mosaic's block size, tile shape, scope, normalization, selection and ``k``;
            the parameters it selects must be an exact mosaic: each codebook may hold at most
            ``config.motifs_for(num_blocks)`` distinct blocks (a block holding padding only
            has to match on its real values); normalized, at ``scales``.
        scales: with ``config.normalize``, the power-of-two scales the mosaic was made with
            (the weights alone do not tell them): ``ProjectionStats.scales`` or
            ``Projector.scales`` (one tensor per selected parameter, in selection order), or a
            mapping from parameter names to them (e.g. :func:`read_scales`; a fake-quantized
            weight by its plain or its latent parameter name). With ``project``
            they are the scales to project at (default: measured, as ``project_`` does).
        project: project a copy of the model with ``config`` first (the model is not changed);
            the file then holds that projection, at its scales.
        motif_storage: ``"auto"`` (the smallest lossless form: a q-bit grid when the motifs
            lie on one, else float16/bfloat16/float32/float64), or a float dtype name to cast
            the motifs to (lossy when they do not fit; the file then holds the cast model).
        index_coding: ``"auto"`` (per codebook, the smaller of the two), ``"packed"``
            (``ceil(log2 k)`` bits per block) or ``"rans"`` (entropy-coded).
        metadata: strings stored in the header (e.g. provenance).

    Returns:
        The description of the written file.

    Raises:
        ValueError: the selected parameters are not a mosaic (the message names the worst
            tensor), a normalized configuration without ``scales`` and ``project``, scales that
            do not fit, a parametrization other than fake quantization, or bad options.
            TypeError: unsupported dtypes. Nothing is written then.
    """
    module = module_of_state_dict(model) if isinstance(model, Mapping) else model
    if config.normalize != "none" and scales is None and not project:
        raise ValueError(f"normalize={config.normalize!r}: saving a normalized mosaic needs the scales it was "
                         "made with, which the weights alone do not tell: pass scales=ProjectionStats.scales "
                         "(or projector.scales), or use project=True to project a copy and save it with "
                         "that projection's scales")
    # Selected as a projection selects them; a fake-quantized weight by its plain name, as in the file.
    selected = select_parameters(module, config)
    plain = latent_names(module)
    names = [plain.get(name, name) for name, _ in selected]
    if scales is not None:  # checked (and shaped) now, before anything is projected; refused without normalize
        if isinstance(scales, Mapping):
            scales = {plain.get(name, name): table for name, table in scales.items()}
        exponents = given_exponents([p for _, p in selected], config.normalize, scales, names=names)
        scales = [scales_of(e) for e in exponents]
    if project:
        module = copy.deepcopy(module)
        scales = project_(module, config, scales=scales).scales
    state, bits = latent_state_dict(module)
    if isinstance(model, Mapping):
        state = {name: state[name] for name in model}
    try:
        data, info = encode(state, names, config, scales=scales, motif_storage=motif_storage,
                            index_coding=index_coding, metadata=metadata, quantization=bits)
    except NotAMosaicError as error:
        at = " at the given scales" if config.normalize != "none" else ""
        raise ValueError(f"parameter {names[error.tensor]!r} is not a mosaic under this configuration{at}: "
                         f"{error}; project the model first (momos.project_, or save(..., project=True)) "
                         "or save with the configuration (and scales) it was trained with") from None
    write_bytes_atomic(data, path)
    return info


def read(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
         max_weights: int = DEFAULT_MAX_WEIGHTS) -> tuple[dict[str, torch.Tensor], FileInfo]:
    """The state dict of the model in a ``.momos`` file (quantized weights as the forward pass
    uses them) and the file's description (``FileInfo.quantization``: which, at how many bits).

    Args:
        max_bytes: refuse larger files without reading them.
        max_weights: refuse files that would decode to more mosaic and coded plain values
            than this (a tiny file can legitimately describe a huge all-zero model; this bounds
            the memory).

    Raises:
        FormatError: the file is missing, empty, truncated, corrupt, of another format or
            version, inconsistent, or too large.
    """
    return decode(_read_bytes(path, max_bytes), max_weights=max_weights)


def _read_bytes(path: str | os.PathLike, max_bytes: int) -> bytes:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FormatError(f"{path} is {size} bytes, more than max_bytes={max_bytes}")
        data = path.read_bytes()
    except OSError as error:
        raise FormatError(f"cannot read {path}: {error}") from None
    if len(data) > max_bytes:
        raise FormatError(f"{path} is larger than max_bytes={max_bytes}")
    return data


def read_scales(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
                max_weights: int = DEFAULT_MAX_WEIGHTS) -> dict[str, torch.Tensor] | None:
    """The scales of a normalized mosaic file: mosaic tensor name -> its scales ``2**e``
    (float32, shape ``()`` or ``(rows,)``), ready for ``save(..., scales=...)``; None when the
    file is not normalized. The whole file is read and checked, as :func:`read` does.

    Raises:
        FormatError: a bad file (see :func:`read`).
    """
    return decode_parts(_read_bytes(path, max_bytes), max_weights=max_weights).scales   # no dense rebuild


def load(path: str | os.PathLike, model: nn.Module | None = None, *, compact: bool = False,
         max_bytes: int = DEFAULT_MAX_BYTES, max_weights: int = DEFAULT_MAX_WEIGHTS):
    """The state dict of a ``.momos`` file, bit-exact to what was saved (quantized weights as
    the forward pass used them); with ``model``, load it into the model (``strict``: same
    names and shapes) and return the model.

    ``compact=True`` (with ``model``) then holds the file's mosaic tensors as motif tables plus
    indices (:func:`momos.compact_`, with the file's configuration and scales), so the model
    costs at inference about what the file does. They are built from the file's motifs and
    indices, never as dense tensors. A quantized file's mosaic is of its latent weights, so its
    compact load needs the file's fake quantization attached to the model (``momos.add_qat_``).

    ``model`` may be built on the meta device (``with torch.device("meta"): model = Net()``):
    the file's tensors are then assigned (on the CPU) instead of copied, so its dense weights
    never take memory at all. Tensors that are not in the file (non-persistent buffers) stay
    on the meta device.

    Into a model with fake quantization attached, the file's quantization must be the same
    (weights and bits) and the latent weights are loaded: the forward pass then quantizes
    them to the file's weights, bit for bit, and training can go on from where it was (the
    quantized values as latent weights would lose the latent state). A model without fake
    quantization gets the quantized weights.

    Raises:
        FormatError: a bad file (see :func:`read`, which also explains the limits).
        ValueError: the file does not fit ``model``, the model's fake quantization is not
            the file's, or ``compact`` of a quantized file into a model without fake
            quantization (the model is not changed).
    """
    parts = decode_parts(_read_bytes(path, max_bytes), max_weights=max_weights)
    if model is None:
        if compact:
            raise ValueError("compact=True needs the model to hold the mosaic: momos.load(path, model, compact=True)")
        return apply_quantization(stored_tensors(parts), parts.info.quantization)
    if compact:
        return _load_compact(model, parts)
    state = _state_for(model, stored_tensors(parts), parts.info.quantization)
    _check_fits(model, {name: t.shape for name, t in state.items()})
    model.load_state_dict(state, assign=_on_meta(model))
    return model


def _load_compact(model: nn.Module, parts: DecodedFile) -> nn.Module:
    """Load a file into ``model`` (with the file's fake quantization, if any) with its mosaic
    tensors compact, built from the file's motifs and indices (the dense tensors are never
    built: the peak memory is about the compact model's, plus the model's own tensors unless it
    is on the meta device). Fake-quantized tensors load as latent weights, as :func:`_state_for`
    explains."""
    bits = parts.info.quantization
    # a quantized file's mosaic is of its latent weights, which only fake quantization turns into the file's weights
    _check_quantization(fake_quantized(model), bits, compact=True)
    config = _config_as_stored(parts.info)
    in_model = {name: _name_in_model(name, bits) for name in [*parts.plain, *parts.mosaic_names]}
    mosaic_shapes = () if parts.mosaic is None else parts.mosaic.layout.shapes
    shapes = {**{name: t.shape for name, t in parts.plain.items()}, **dict(zip(parts.mosaic_names, mosaic_shapes))}
    _check_fits(model, {in_model[name]: shape for name, shape in shapes.items()})
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = [name for name in parts.mosaic_names if in_model[name] not in params]
    if buffers:
        raise ValueError(f"the file's mosaic tensors {buffers[:5]} are not parameters of the model")
    from ..compact import hold_mosaic_   # momos.compact imports this package's decompose

    model.load_state_dict({in_model[name]: t for name, t in parts.plain.items()},
                          strict=False, assign=_on_meta(model))
    if parts.mosaic is not None:
        hold_mosaic_(model, [params[in_model[name]] for name in parts.mosaic_names], parts.mosaic, config)
    return model


def _check_fits(model: nn.Module, shapes: Mapping[str, torch.Size]) -> None:
    """Refuse a file whose tensors (``shapes`` by name) are not the model's state dict: the same
    names and shapes."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = [name for name in expected if name in shapes and expected[name].shape != shapes[name]]
    if missing or unexpected or wrong:
        raise ValueError(f"the file does not fit the model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, different shapes {wrong[:5]}")


def _on_meta(model: nn.Module) -> bool:
    """Whether a model holds tensors on the meta device (built without memory): loading must
    assign the file's tensors rather than copy into them."""
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _config_as_stored(info: FileInfo) -> MoMosConfig:
    """The file's config, its selection replaced by the names of the tensors it stores as
    mosaics, since the model's ``requires_grad`` flags need not be what they were when it was
    saved."""
    if info.config is None:
        raise ValueError("the file holds no MoMosConfig; load it, then call momos.compact_(model, config)")
    names = [name for book in info.codebooks for name in book.tensors]
    return replace(MoMosConfig.from_dict(info.config), include=tuple(f"^{re.escape(n)}$" for n in names),
                   exclude=(), parameters="all")


def module_of_state_dict(state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A module whose ``state_dict()`` is a copy of ``state``, with the same names, order aside:
    floating tensors become parameters, the others buffers."""
    root = nn.Module()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        *path, leaf = name.split(".")
        owner = root
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, nn.Module())
            owner = owner._modules[part]
        value = tensor.detach().clone()
        if value.is_floating_point():
            owner.register_parameter(leaf, nn.Parameter(value))
        else:
            owner.register_buffer(leaf, value)
    return root


def _state_for(model: nn.Module, stored: dict[str, torch.Tensor], bits: dict[str, int]) -> dict[str, torch.Tensor]:
    """What ``model`` loads from a file's ``stored`` tensors, whose quantization is ``bits``:
    with fake quantization attached, the latent weights under their parametrized names; else
    the quantized weights."""
    attached = fake_quantized(model)
    _check_quantization(attached, bits, compact=False)
    if not attached:
        return apply_quantization(stored, bits)
    return {_name_in_model(name, bits): t for name, t in stored.items()}


def _name_in_model(name: str, bits: dict[str, int]) -> str:
    """Where a model with the file's fake quantization (``bits``) holds the file's tensor ``name``."""
    return latent_name(name) if name in bits else name


def _check_quantization(attached: dict[str, int], bits: dict[str, int], *, compact: bool) -> None:
    """Refuse a model whose fake quantization (``attached``) is not the file's (``bits``); a model
    with none gets the quantized weights, except for a compact load."""
    if attached == bits or not (attached or compact):
        return
    differ = [f"{name}: {attached.get(name, 'none')} vs {bits.get(name, 'none')}"
              for name in sorted(set(attached) | set(bits)) if attached.get(name) != bits.get(name)]
    fix = "or load it without compact=True" if compact else "or with none"
    raise ValueError(f"the model's fake quantization is not the file's (bits, model vs file: "
                     f"{', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}): load into a model "
                     f"with the file's quantization attached (momos.add_qat_) {fix}")
