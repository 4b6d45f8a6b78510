"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A process killed at any moment leaves either the old file or the complete new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    path = Path(path)
    if path.is_dir():   # os.replace would fail only after the temporary file is written beside it
        raise ValueError(f"cannot write {path}: it is a folder; name a file in it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file owner-only; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    write_bytes_atomic((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), path)


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save(tensors, metadata)`` with its metadata in name order, so that equal
    tensors and metadata always give the same bytes: safetensors (0.8) writes the metadata from a
    hash map, in an order that changes from one save to the next. Only the JSON header is
    rewritten (the tensors' offsets count from the end of the header, so they stay valid)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)   # safetensors aligns the tensors' data to 8 bytes
    return len(text).to_bytes(8, "little") + text + data[8 + length:]


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    write_bytes_atomic(safetensors_bytes(tensors, metadata), path)
