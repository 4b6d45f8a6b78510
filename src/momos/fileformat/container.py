"""The ``.momos`` container: a standard safetensors file with a JSON header and a SHA-256 checksum.

The metadata holds ``format = "momos"`` (the magic), ``version`` and ``sha256``: the digest of
every tensor (name, dtype, shape, bytes) in name order, so that no byte that matters can change
without notice. The momos header is JSON, zlib-compressed, in the uint8 tensor ``header``
(tensor names repeat the same few words, so it shrinks about fivefold; decompression is bounded).

Versions: ``"1"`` (the first), ``"2"`` (adds normalized mosaics), ``"3"`` (adds quantized,
QAT, mosaics) and ``"4"`` (adds coded plain tensors) are read. The writer writes the lowest
version that holds the file (see :mod:`.codec`), so that older readers keep reading every file
they can.

The safetensors library writes the file and reads it (:func:`safetensors.deserialize`): it
checks the length field, the JSON, every dtype, shape and offset, and that the tensors tile the
data buffer exactly, before it copies any tensor out of the file's bytes (so a file allocates at
most about its own size here; ``max_weights`` bounds what decoding it makes). The reader adds
momos's own checks: the magic, the version, the dtypes momos stores, the checksum, the header.
"""

from __future__ import annotations

import hashlib
import json
import zlib

import safetensors
import torch

from ..io import safetensors_bytes
from .errors import FormatError

MAGIC = "momos"
HEADER = "header"
VERSION = 4              # the newest
VERSIONS = (1, 2, 3, 4)  # the versions this reader knows
MAX_HEADER_BYTES = 64 * 2**20
MAX_DIMS = 16         # momos stores 1-D and 2-D tensors; safetensors and torch would take more

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
    if version not in VERSIONS:
        raise ValueError(f"unknown .momos format version {version!r}")
    packed = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    tensors = {**tensors, HEADER: as_uint8_tensor(packed)}
    metadata = {"format": MAGIC, "version": str(version), "sha256": _digest(tensors)}
    return safetensors_bytes(tensors, metadata)


def as_uint8_tensor(data: bytes) -> torch.Tensor:
    """``data`` as a 1-D uint8 tensor (a copy)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def read_container(data: bytes) -> tuple[dict, dict[str, torch.Tensor], int]:
    """The header, the tensors and the format version of a file's bytes.

    Raises:
        FormatError: anything wrong: not safetensors, magic, version, dtype, checksum, header.
    """
    try:
        entries = safetensors.deserialize(data)
    except safetensors.SafetensorError as error:
        raise FormatError(f"not a valid safetensors file (truncated, corrupt, or not a .momos file): "
                          f"{error}") from None
    # deserialize has checked the length field and the JSON object it frames, but does not return the metadata.
    table = _parse_json(data[8:8 + int.from_bytes(data[:8], "little")], "safetensors header")
    metadata = table.get("__metadata__") if isinstance(table, dict) else None
    version = _check_magic(metadata)
    tensors = {name: _tensor(name, entry) for name, entry in entries}
    if metadata.get("sha256") != _digest(tensors):
        raise FormatError("checksum mismatch: the file is corrupt")
    packed = tensors.pop(HEADER, None)
    if packed is None or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise FormatError("the file holds no header")
    header = _parse_json(_inflate(packed.numpy().tobytes()), "momos header")
    if not isinstance(header, dict):
        raise FormatError("the momos header is not a JSON object")
    return header, tensors, version


def _tensor(name: str, entry: dict) -> torch.Tensor:
    """A tensor from ``deserialize``'s entry, whose bytes the library has checked to fit its shape."""
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
        raise FormatError(f"tensor {name!r}: unsupported dtype {entry['dtype']!r}")
    if len(entry["shape"]) > MAX_DIMS:
        raise FormatError(f"tensor {name!r}: a shape of {len(entry['shape'])} dimensions, more than {MAX_DIMS}")
    raw = entry["data"] if isinstance(entry["data"], bytearray) else bytearray(entry["data"])  # older versions: bytes
    try:
        flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
        return flat.view(dtype).reshape(entry["shape"])
    except (RuntimeError, TypeError) as error:  # e.g. a dimension of 2**63 or more (of an empty tensor)
        raise FormatError(f"tensor {name!r}: shape {entry['shape']} is impossible: {error}") from None


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
