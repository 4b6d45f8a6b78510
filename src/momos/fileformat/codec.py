"""A state dict plus the names of its mosaic tensors <-> the bytes of a ``.momos`` file.

Header (JSON, in the container's ``header`` tensor)::

    {"block_size": s, "tile_shape": null | [r, c], "scope": "global" | "per_tensor",
     "normalize": "none" | "tensor" | "channel",                         # from version 2
     "padding": "zero",
     "tensors": [{"name", "shape", "dtype", "mosaic": bool}, ...],      # state-dict order
     "codebooks": [{"tensors": [first, last], "motifs": k, "bytes": [start, end],
                    "indices": <see streams.py>}, ...],                  # over the mosaic tensors
     "motif_storage": <see tables.py>,
     "config": <MoMosConfig.to_dict()> | null, "metadata": {str: str},
     "quantization": null | {"scheme": "symmetric_per_tensor",           # from version 3
                             "tensors": {name: q, ...}},
     "plain": {dtype: <byte planes, see plain.py>, ...}}                 # version 4

Tensors: the motif table (``motifs``, or ``motif_levels`` + ``motif_scales``), ``indices``
(every codebook's stream, back to back; ``bytes`` locates each), with ``normalize`` other than
``"none"`` the int8 tensor ``scales``: the exponents ``e`` of every mosaic tensor's scales
``2**e`` in header order (one per tensor, or one per dim-0 row of a tensor of two or more
dimensions under ``"channel"``; each in ``scales.EXPONENT_RANGE``), and, for the tensors that
are not mosaics, ``plain/<dtype>``: their values flattened and concatenated in header order,
one tensor per dtype, as they are or (version 4) as coded byte planes; see :mod:`.plain`.

A normalized mosaic tensor is ``2**e x`` its motif values, blocks cut as
:class:`momos.blocks.BlockLayout` with ``per_row`` under ``"channel"``.

A quantized tensor (one ``quantization`` names: a weight a QAT model fake-quantizes) is
stored as its latent values, a mosaic or plain tensor like any other, and the file's model
holds those values fake-quantized to ``q`` bits; see :mod:`.quantized`.

Version 1 (no ``normalize`` key, no ``scales``) is read as ``"none"``; versions 1 and 2 have no
``quantization`` key (no quantized tensors); versions 1 to 3 have no ``plain`` key (every plain
tensor as it is) and no ``split`` index streams. The writer writes the lowest version that
holds the file: 4 when a plain dtype is coded or a codebook's indices are split, else 3 with
quantization, else 2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch

from .. import scales as scaling
from ..blocks import BlockLayout, block_dtype
from ..config import NORMALIZATIONS, SCOPES, MoMosConfig
from .container import DTYPE_NAMES, DTYPES, as_uint8_tensor, read_container, write_container
from ..scales import Scales, scale_shape
from .decompose import Mosaic, NotAMosaicError, decompose, rebuild
from . import plain, quantized
from .errors import FormatError
from .streams import decode_stream, encode_stream, span_end
from .tables import decode_tables, encode_tables

MOTIF_ENTRIES = ("motifs", "motif_levels", "motif_scales")
SCALES = "scales"
HEADER_KEYS = {"block_size", "tile_shape", "scope", "padding", "tensors", "codebooks", "motif_storage",
               "config", "metadata"}
HEADER_KEYS_BY_VERSION = {1: HEADER_KEYS, 2: HEADER_KEYS | {"normalize"},
                          3: HEADER_KEYS | {"normalize", "quantization"},
                          4: HEADER_KEYS | {"normalize", "quantization", "plain"}}
MAX_BLOCK_SIZE = 1 << 16
DEFAULT_MAX_WEIGHTS = 1 << 28
FLOAT_DTYPES = tuple(name for name, dtype in DTYPES.items() if dtype.is_floating_point)


@dataclass(frozen=True)
class CodebookInfo:
    tensors: tuple[str, ...]
    num_motifs: int
    num_blocks: int
    coding: str
    index_bytes: int


@dataclass(frozen=True)
class FileInfo:
    """What a ``.momos`` file holds and where its bytes go."""

    version: int
    block_size: int
    tile_shape: tuple[int, int] | None
    scope: str
    num_tensors: int
    num_values: int           # every value of every tensor in the file
    mosaic_weights: int       # values described by motifs
    num_blocks: int
    num_motifs: int           # stored (= used) motifs, all codebooks
    motif_storage: str        # "float32", "float16", ..., or "8-bit grid"
    codebooks: tuple[CodebookInfo, ...]
    file_bytes: int
    motif_bytes: int
    index_bytes: int
    other_bytes: int          # the plain tensors
    normalize: str = "none"   # "none", "tensor" or "channel"
    scale_bytes: int = 0      # the scale exponents, one byte each
    config: dict | None = None
    metadata: dict = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)   # quantized tensor name -> q (QAT)

    @property
    def num_scales(self) -> int:
        return self.scale_bytes

    @property
    def header_bytes(self) -> int:
        """Everything that is not tensor data: the JSON header, names, shapes, checksum."""
        return self.file_bytes - self.motif_bytes - self.index_bytes - self.scale_bytes - self.other_bytes

    @property
    def bits_per_weight(self) -> float:
        """File bits per value stored in it (headers and scales included)."""
        return 8 * self.file_bytes / max(1, self.num_values)

    @property
    def mosaic_bits_per_weight(self) -> float:
        """Motif, index and scale bits per mosaic weight: the mosaic's own cost, without headers."""
        return 8 * (self.motif_bytes + self.index_bytes + self.scale_bytes) / max(1, self.mosaic_weights)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(header_bytes=self.header_bytes, num_scales=self.num_scales, bits_per_weight=self.bits_per_weight,
                 mosaic_bits_per_weight=self.mosaic_bits_per_weight)
        return d


def encode(state: dict[str, torch.Tensor], mosaic_names: list[str], config: MoMosConfig, *,
           scales: Scales | None = None, motif_storage: str = "auto", index_coding: str = "auto",
           metadata: dict[str, str] | None = None,
           quantization: dict[str, int] | None = None) -> tuple[bytes, FileInfo]:
    """The file's bytes for ``state``, whose ``mosaic_names`` tensors form a mosaic under ``config``.

    Args:
        scales: with ``config.normalize``, the mosaic tensors' power-of-two scales: one tensor
            per name of ``mosaic_names`` (in that order), or a mapping from names to them.
        quantization: tensor name -> q of the tensors that the model fake-quantizes; ``state``
            holds their latent values. A file with them is version 3 (or 4), without them
            version 2 (or 4: when a plain dtype is stored as coded byte planes).

    Raises:
        NotAMosaicError (a ValueError): a codebook needs more than ``config``'s k motifs, or
            a tensor is not ``scale x motif`` values at its scales (``tensor`` indexes
            ``mosaic_names``).
        TypeError / ValueError: unsupported dtypes, unknown names or options, missing or
            malformed scales.
    """
    _check_state(state, mosaic_names, metadata)
    quantization = quantized.header_field(dict(quantization or {}), state)
    if scales is not None and not isinstance(scales, Mapping):
        scales = list(scales)
        if len(scales) != len(mosaic_names):
            raise ValueError(f"{len(scales)} scale tensors given for {len(mosaic_names)} mosaic tensors")
        scales = dict(zip(mosaic_names, scales))
    # The file lists tensors in state order, mosaic tensors too: decompose them in that order.
    chosen = set(mosaic_names)
    ordered = [name for name in state if name in chosen]
    try:
        mosaic = decompose([state[name] for name in ordered], config, scales, names=ordered)
    except NotAMosaicError as error:
        raise NotAMosaicError(str(error), list(mosaic_names).index(ordered[error.tensor])) from None
    motif_tensors, storage = encode_tables(list(mosaic.motifs), motif_storage)
    streams, codebooks, position = [], [], 0
    for (first, last), table, index in zip(mosaic.groups, mosaic.motifs, mosaic.indices):
        data, desc = encode_stream(index.numpy(), len(table), index_coding)
        streams.append(data)
        codebooks.append({"tensors": [first, last], "motifs": len(table),
                          "bytes": [position, position + len(data)], "indices": desc})
        position += len(data)
    header = {
        "block_size": config.block_size,
        "tile_shape": list(config.tile_shape) if config.tile_shape else None,
        "scope": config.scope,
        "normalize": config.normalize,
        "padding": "zero",
        "tensors": [{"name": name, "shape": list(t.shape), "dtype": DTYPE_NAMES[t.dtype],
                     "mosaic": name in chosen} for name, t in state.items()],
        "codebooks": codebooks,
        "motif_storage": storage,
        "config": config.to_dict(),
        "metadata": dict(metadata or {}),
    }
    plain_tensors, plain_coding = plain.join([t for name, t in state.items() if name not in chosen])
    # The lowest version that holds the file, so that older readers keep reading what they can.
    split = any(c["indices"]["coding"] == "split" for c in codebooks)
    version = 4 if plain_coding or split else 3 if quantization is not None else 2
    if version >= 3:
        header["quantization"] = quantization
    if version == 4:
        header["plain"] = plain_coding
    tensors = {**motif_tensors, "indices": as_uint8_tensor(b"".join(streams))}
    if mosaic.exponents is not None:
        tensors[SCALES] = torch.cat([e.reshape(-1) for e in mosaic.exponents]).to(torch.int8)
    tensors.update(plain_tensors)
    data = write_container(tensors, header, version=version)
    return data, _info(header, tensors, mosaic.layout, len(data), version)


def decode(data: bytes, *, max_weights: int = DEFAULT_MAX_WEIGHTS) -> tuple[dict[str, torch.Tensor], FileInfo]:
    """The state dict of the file's model (quantized tensors fake-quantized), and the file's description.

    Raises:
        FormatError: the file is damaged, lies, or would decode to more than ``max_weights``
            values (counting block padding).
    """
    stored, info, _ = decode_stored(data, max_weights=max_weights)
    return quantized.apply(stored, info.quantization), info


@dataclass(frozen=True)
class DecodedFile:
    """A ``.momos`` file's tensors as it stores them: the plain ones by name (a quantized tensor:
    its latent values), the mosaic tensors ``mosaic_names`` still as motif tables plus indices,
    and ``names``, every tensor in the file's order."""

    plain: dict[str, torch.Tensor]
    mosaic: Mosaic | None
    mosaic_names: tuple[str, ...]
    names: tuple[str, ...]
    info: FileInfo

    @property
    def scales(self) -> dict[str, torch.Tensor] | None:
        """Each mosaic tensor's scales ``2**e`` (float32, shape ``()`` or ``(rows,)``) by name;
        None for a mosaic without normalization."""
        if self.mosaic is None or self.mosaic.scales is None:
            return None
        return dict(zip(self.mosaic_names, self.mosaic.scales))


def decode_stored(data: bytes, *, max_weights: int = DEFAULT_MAX_WEIGHTS
                  ) -> tuple[dict[str, torch.Tensor], FileInfo, dict[str, torch.Tensor] | None]:
    """:func:`decode`, but the tensors as stored (a quantized tensor: its latent values), plus
    each mosaic tensor's scales ``2**e`` (float32, shape ``()`` or ``(rows,)``) by name; None
    for a mosaic without normalization."""
    parts = decode_parts(data, max_weights=max_weights)
    return stored_tensors(parts), parts.info, parts.scales


def stored_tensors(parts: DecodedFile) -> dict[str, torch.Tensor]:
    """Every tensor of a decoded file by name, in the file's order, the mosaic rebuilt into
    dense tensors."""
    state = dict(parts.plain)
    if parts.mosaic is not None:
        state.update(zip(parts.mosaic_names, rebuild(parts.mosaic)))
    return {name: state[name] for name in parts.names}


def decode_parts(data: bytes, *, max_weights: int = DEFAULT_MAX_WEIGHTS) -> DecodedFile:
    """The file's tensors as it stores them, its mosaic not rebuilt into weights (see
    :func:`decode` for the errors)."""
    header, tensors, version = read_container(data)
    _expect_keys(header, HEADER_KEYS_BY_VERSION[version], "header")
    normalize = header.get("normalize", "none")
    block_size = _int(header["block_size"], "block_size", 1, MAX_BLOCK_SIZE)
    tile_shape = _tile_shape(header["tile_shape"], block_size)
    if header["scope"] not in SCOPES or header["padding"] != "zero" or normalize not in NORMALIZATIONS:
        raise FormatError(f"unknown scope {header['scope']!r}, padding {header['padding']!r} or "
                          f"normalize {normalize!r}")
    if header["config"] is not None and not isinstance(header["config"], dict):
        raise FormatError("the header's config must be an object or null")
    if not isinstance(header["metadata"], dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in header["metadata"].items()):
        raise FormatError("the header's metadata must map strings to strings")
    entries = _tensor_entries(header["tensors"])
    quantized.read_field(header.get("quantization"), entries)
    mosaic_entries = [e for e in entries if e["mosaic"]]
    plain_entries = [e for e in entries if not e["mosaic"]]
    plain_coding = header.get("plain", {})
    coded = plain.coded_values(plain_coding, plain_entries)
    try:
        layout = BlockLayout(tuple(torch.Size(e["shape"]) for e in mosaic_entries), block_size, tile_shape,
                             per_row=normalize == "channel")
    except ValueError as error:
        raise FormatError(f"impossible block layout: {error}") from None
    # Raw plain values lie in the file; mosaic and coded plain values can be far more than its bytes.
    if layout.num_blocks * block_size + coded > max_weights:
        raise FormatError(f"the file would decode to {layout.num_blocks * block_size} mosaic and {coded} coded "
                          f"plain values, more than max_weights={max_weights}")
    _expect_keys(tensors, _expected_tensors(header, entries, normalize), "file's tensors")
    state = plain.split(plain_entries, tensors, plain_coding)
    exponents = _scale_exponents(tensors, mosaic_entries, normalize)
    mosaic = _decode_mosaic(header, tensors, layout, [DTYPES[e["dtype"]] for e in mosaic_entries],
                            normalize, exponents, version)
    return DecodedFile(state, mosaic, tuple(e["name"] for e in mosaic_entries), tuple(e["name"] for e in entries),
                       _info(header, tensors, layout, len(data), version))


def _scale_exponents(tensors, mosaic_entries, normalize: str) -> list[torch.Tensor] | None:
    """Each mosaic tensor's exponents from the ``scales`` tensor, checked: count and range."""
    if normalize == "none" or not mosaic_entries:
        return None
    stored = tensors[SCALES]
    shapes = [scale_shape(e["shape"], normalize) for e in mosaic_entries]
    count = sum(math.prod(shape) for shape in shapes)
    if stored.dtype != torch.int8 or tuple(stored.shape) != (count,):
        raise FormatError(f"the scales must be an int8 tensor of shape ({count},) for normalize="
                          f"{normalize!r}, found {DTYPE_NAMES[stored.dtype]}{list(stored.shape)}")
    low, high = scaling.EXPONENT_RANGE
    if count and not (low <= int(stored.min()) and int(stored.max()) <= high):
        raise FormatError(f"a scale exponent lies outside [{low}, {high}]")
    return [part.reshape(shape).to(torch.int16)
            for part, shape in zip(stored.split([math.prod(shape) for shape in shapes]), shapes)]


def _decode_mosaic(header, tensors, layout: BlockLayout, dtypes, normalize: str,
                   exponents: list[torch.Tensor] | None, version: int) -> Mosaic | None:
    if not isinstance(header["codebooks"], list):
        raise FormatError("the header's codebooks must be a list")
    if not layout.shapes:
        if header["codebooks"]:
            raise FormatError("codebooks given for a file without mosaic tensors")
        return None
    index_bytes = tensors["indices"]
    if index_bytes.dtype != torch.uint8 or index_bytes.dim() != 1:
        raise FormatError("the indices must be a 1-D uint8 tensor")
    codebooks = _codebooks(header["codebooks"], layout, len(index_bytes), version)
    tables = decode_tables(header["motif_storage"], tensors, [k for _, k, _, _ in codebooks], layout.block_size)
    raw = memoryview(index_bytes.numpy())   # slices of it copy nothing
    indices = []
    for (first, last), k, (start, end), desc in codebooks:
        count = layout.block_offsets[last] - layout.block_offsets[first]
        indices.append(torch.from_numpy(decode_stream(raw[start:end], desc, k, count)))
    dtype = block_dtype(dtypes)
    return Mosaic(layout, tuple(dtypes), tuple(group for group, _, _, _ in codebooks),
                  tuple(t.to(dtype) for t in tables), tuple(indices), normalize,
                  None if exponents is None else tuple(exponents))


def _codebooks(entries: list, layout: BlockLayout, index_bytes: int, version: int) -> list[tuple]:
    """``((first, last), k, (start, end), coding)`` per codebook, checked to cover every block
    of the mosaic tensors in order and every index byte (split streams from version 4)."""
    checked, covered, position = [], 0, 0
    for c in entries:
        if not isinstance(c, dict):
            raise FormatError("malformed codebook entry")
        _expect_keys(c, {"tensors", "motifs", "bytes", "indices"}, "codebook")
        first, last = _int_pair(c["tensors"], "codebook tensors", len(layout.shapes))
        end = span_end(c["bytes"], position, index_bytes, "codebook")
        if first < covered or last <= first:
            raise FormatError("codebooks must cover the mosaic tensors in order")
        if any(layout.block_counts[covered:first]):
            raise FormatError(f"tensor {first - 1} has blocks but no codebook")
        blocks = layout.block_offsets[last] - layout.block_offsets[first]
        if blocks == 0:
            raise FormatError("a codebook covers no blocks")
        k = _int(c["motifs"], "number of motifs", 1, blocks)
        if version < 4 and isinstance(c["indices"], dict) and c["indices"].get("coding") == "split":
            raise FormatError(f"split index streams need format version 4, the file is version {version}")
        checked.append(((first, last), k, (position, end), c["indices"]))
        covered, position = last, end
    if any(layout.block_counts[covered:]) or position != index_bytes:
        raise FormatError("the codebooks leave blocks or index bytes unaccounted for")
    return checked


def _check_state(state, mosaic_names, metadata) -> None:
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"the state dict must map names to tensors, got {name!r}: {type(t).__name__}")
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which the format does not store")
    missing = [name for name in mosaic_names if name not in state]
    if missing:
        raise ValueError(f"mosaic tensors {missing} are not in the state dict")
    if not mosaic_names:
        raise ValueError("no tensor is selected as a mosaic")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata must map strings to strings")


def _tensor_entries(value) -> list[dict]:
    if not isinstance(value, list):
        raise FormatError("the header's tensors must be a list")
    names = set()
    for e in value:
        if not isinstance(e, dict):
            raise FormatError("malformed tensor entry")
        _expect_keys(e, {"name", "shape", "dtype", "mosaic"}, "tensor entry")
        if not isinstance(e["name"], str) or e["name"] in names:
            raise FormatError(f"tensor names must be unique strings, got {e['name']!r}")
        names.add(e["name"])
        allowed = FLOAT_DTYPES if e["mosaic"] else tuple(DTYPES)
        if not isinstance(e["mosaic"], bool) or not isinstance(e["dtype"], str) or e["dtype"] not in allowed:
            raise FormatError(f"tensor {e['name']!r}: bad dtype {e['dtype']!r} or mosaic flag")
        if not isinstance(e["shape"], list) or len(e["shape"]) > 16:
            raise FormatError(f"tensor {e['name']!r}: malformed shape")
        for size in e["shape"]:
            _int(size, f"a dimension of {e['name']!r}", 0, 1 << 62)
        if math.prod(e["shape"]) >= 1 << 62:
            raise FormatError(f"tensor {e['name']!r}: shape {e['shape']} is absurdly large")
    return value


def _expected_tensors(header, entries, normalize: str) -> set[str]:
    names = {plain.PREFIX + e["dtype"] for e in entries if not e["mosaic"]}
    if any(e["mosaic"] for e in entries):
        storage = header["motif_storage"]
        names |= {"indices"} | ({"motifs"} if isinstance(storage, dict) and "dtype" in storage
                                else {"motif_levels", "motif_scales"})
        if normalize != "none":
            names.add(SCALES)
    return names


def _expect_keys(d, keys: set[str], what: str) -> None:
    if set(d) != keys:
        raise FormatError(f"the {what} holds {sorted(map(str, d))}, expected {sorted(keys)}")


def _int(value, what: str, minimum: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise FormatError(f"{what} must be an int in [{minimum}, {maximum}], got {value!r}")
    return value


def _int_pair(value, what: str, maximum: int) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise FormatError(f"{what} must be a pair of ints")
    first, last = (_int(v, what, 0, maximum) for v in value)
    if first > last:
        raise FormatError(f"{what} {value} is not a range")
    return first, last


def _tile_shape(value, block_size: int) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise FormatError(f"tile_shape must be null or [rows, cols], got {value!r}")
    rows, cols = (_int(v, "a tile_shape entry", 1, block_size) for v in value)
    if rows * cols != block_size:
        raise FormatError(f"tile_shape {value} does not hold block_size={block_size} values")
    return rows, cols


def _storage_name(storage: dict) -> str:
    """E.g. ``"float32"``, ``"float32, byte planes entropy-coded"``, ``"8-bit grid"``."""
    if "bits" in storage:
        coded = storage["levels"]["coding"] == "rans"
        return f"{storage['bits']}-bit grid" + (", entropy-coded" if coded else "")
    coded = "planes" in storage and any(p["stream"]["coding"] == "rans" for p in storage["planes"])
    return storage["dtype"] + (", byte planes entropy-coded" if coded else "")


def _info(header: dict, tensors: dict[str, torch.Tensor], layout: BlockLayout, file_bytes: int,
          version: int) -> FileInfo:
    nbytes = {name: t.numel() * t.element_size() for name, t in tensors.items()}
    storage = header["motif_storage"]
    mosaic_names = [e["name"] for e in header["tensors"] if e["mosaic"]]
    codebooks = tuple(
        CodebookInfo(tuple(mosaic_names[c["tensors"][0]:c["tensors"][1]]), c["motifs"],
                     layout.block_offsets[c["tensors"][1]] - layout.block_offsets[c["tensors"][0]],
                     c["indices"]["coding"], c["bytes"][1] - c["bytes"][0])
        for c in header["codebooks"])
    return FileInfo(
        version=version, block_size=header["block_size"],
        tile_shape=tuple(header["tile_shape"]) if header["tile_shape"] else None,
        scope=header["scope"], num_tensors=len(header["tensors"]),
        num_values=sum(math.prod(e["shape"]) for e in header["tensors"]),
        mosaic_weights=layout.num_weights, num_blocks=layout.num_blocks,
        num_motifs=sum(c.num_motifs for c in codebooks),
        motif_storage=_storage_name(storage),
        codebooks=codebooks, file_bytes=file_bytes,
        motif_bytes=sum(nbytes.get(name, 0) for name in MOTIF_ENTRIES),
        index_bytes=nbytes.get("indices", 0),
        other_bytes=sum(n for name, n in nbytes.items() if name.startswith(plain.PREFIX)),
        normalize=header.get("normalize", "none"), scale_bytes=nbytes.get(SCALES, 0),
        config=header["config"], metadata=dict(header["metadata"]),
        quantization=dict((header.get("quantization") or {}).get("tensors", {})))
