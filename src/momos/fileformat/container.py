"""The ``.momos`` container: a standard safetensors file with a JSON header and a SHA-256 checksum.

Layout (safetensors): 8 bytes little-endian length ``N``, ``N`` bytes of JSON (the tensor
table plus ``__metadata__``), then the tensor bytes. The metadata holds ``format = "momos"``
(the magic), ``version`` and ``sha256``: the digest of every tensor (name, dtype, shape,
bytes) in name order, so that no byte that matters can change without notice. The momos
header is JSON, zlib-compressed, in the uint8 tensor ``header`` (tensor names repeat the same
few words, so it shrinks about fivefold; decompression is bounded).

Versions: ``"1"`` (the first), ``"2"`` (adds normalized mosaics) and ``"3"`` (adds quantized,
QAT, mosaics) are read. Version 3 is written only for a file that holds a quantization, every
other file as version 2, so that version-2 readers keep reading every file they can.

The reader parses the container itself instead of calling the safetensors library, because it
must check every length and offset before it allocates anything and because it hashes the
exact bytes it decodes.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib

import torch

from .errors import FormatError

MAGIC = "momos"
HEADER = "header"
VERSION = 3           # the newest
VERSIONS = (1, 2, 3)  # the versions this reader knows
MAX_HEADER_BYTES = 64 * 2**20
MAX_DIMS = 16

# safetensors dtype names <-> torch dtypes (the types a state dict holds in practice).
DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def write_container(tensors: dict[str, torch.Tensor], header: dict, *, version: int = VERSION) -> bytes:
    """The file's bytes: ``tensors`` (CPU, contiguous, dtypes of :data:`DTYPES`) and ``header``,
    labelled with format ``version`` (the current one unless rewriting an older file)."""
    from safetensors.torch import save

    if version not in VERSIONS:
        raise ValueError(f"unknown .momos format version {version!r}")
    packed = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    tensors = {**tensors, HEADER: as_uint8_tensor(packed)}
    metadata = {"format": MAGIC, "version": str(version), "sha256": _digest(tensors)}
    return save({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, metadata=metadata)


def as_uint8_tensor(data: bytes) -> torch.Tensor:
    """``data`` as a 1-D uint8 tensor (a copy)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def read_container(data: bytes) -> tuple[dict, dict[str, torch.Tensor], int]:
    """The header, the tensors and the format version of a file's bytes.

    Raises:
        FormatError: anything wrong: size, JSON, magic, version, tensor table, checksum.
    """
    if len(data) < 8:
        raise FormatError(f"the file is {len(data)} bytes long; too short to be a .momos file")
    table_size = int.from_bytes(data[:8], "little")
    if not 2 <= table_size <= min(len(data) - 8, MAX_HEADER_BYTES):
        raise FormatError(f"the header claims {table_size} bytes, the file has {len(data) - 8} after the "
                          "length field (truncated, or not a .momos file)")
    table = _parse_json(data[8:8 + table_size], "safetensors header")
    if not isinstance(table, dict):
        raise FormatError("the safetensors header is not a JSON object")
    metadata = table.pop("__metadata__", None)
    version = _check_magic(metadata)
    buffer = memoryview(data)[8 + table_size:]
    spans = _check_table(table, len(buffer))
    tensors = {name: _tensor(buffer[start:end], dtype, shape) for name, (dtype, shape, start, end) in spans.items()}
    if metadata.get("sha256") != _digest(tensors):
        raise FormatError("checksum mismatch: the file is corrupt")
    packed = tensors.pop(HEADER, None)
    if packed is None or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise FormatError("the file holds no header")
    header = _parse_json(_inflate(packed.numpy().tobytes()), "momos header")
    if not isinstance(header, dict):
        raise FormatError("the momos header is not a JSON object")
    return header, tensors, version


def _inflate(packed: bytes) -> bytes:
    """zlib-decompress at most ``MAX_HEADER_BYTES``."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(packed, MAX_HEADER_BYTES)
    except zlib.error as error:
        raise FormatError(f"the header is not valid zlib data: {error}") from None
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise FormatError(f"the header is truncated, followed by junk, or larger than {MAX_HEADER_BYTES} bytes")
    return raw


def _parse_json(raw: bytes, what: str):
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FormatError(f"the {what} is not valid JSON: {error}") from None


def _check_magic(metadata) -> int:
    """The file's format version."""
    if not isinstance(metadata, dict) or metadata.get("format") != MAGIC:
        raise FormatError("not a .momos file (its metadata does not say format=momos)")
    version = metadata.get("version")
    known = {str(v): v for v in VERSIONS}
    if version not in known:
        raise FormatError(f"unsupported .momos format version {version!r}; this reader knows versions "
                          f"{', '.join(known)}")
    return known[version]


def _check_table(table: dict, buffer_size: int) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
    """Every entry's dtype, shape and byte span, checked to tile the buffer exactly."""
    spans = {}
    for name, entry in table.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"tensor {name!r}: malformed entry in the safetensors header")
        dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        shape, offsets = entry["shape"], entry["data_offsets"]
        if dtype is None:
            raise FormatError(f"tensor {name!r}: unsupported dtype {entry['dtype']!r}")
        if not _is_int_list(shape) or len(shape) > MAX_DIMS or not _is_int_list(offsets) or len(offsets) != 2:
            raise FormatError(f"tensor {name!r}: malformed shape or offsets")
        start, end = offsets
        nbytes = math.prod(shape) * dtype.itemsize
        if not 0 <= start <= end <= buffer_size or end - start != nbytes:
            raise FormatError(f"tensor {name!r}: shape {shape} of {entry['dtype']} needs {nbytes} bytes, "
                              f"offsets {offsets} are inconsistent with a {buffer_size}-byte buffer")
        spans[name] = (dtype, shape, start, end)
    position = 0
    for _, _, start, end in sorted(spans.values(), key=lambda span: (span[2], span[3])):
        if start != position:
            raise FormatError("the tensors overlap or leave gaps in the data buffer")
        position = end
    if position != buffer_size:
        raise FormatError(f"the data buffer has {buffer_size - position} bytes that belong to no tensor")
    return spans


def _is_int_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                           for v in value)


def _tensor(raw: memoryview, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    return as_uint8_tensor(raw).view(dtype).reshape(shape)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        _update(sha, name.encode())
        _update(sha, f"{DTYPE_NAMES[t.dtype]}{list(t.shape)}".encode())
        _update(sha, t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return sha.hexdigest()


def _update(sha, chunk: bytes) -> None:
    """Length-prefixed, so that moving bytes from one field to the next changes the digest."""
    sha.update(len(chunk).to_bytes(8, "little"))
    sha.update(chunk)
