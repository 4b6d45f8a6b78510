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


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_bytes_atomic(save(contiguous, metadata=metadata), path)
