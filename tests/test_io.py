"""Atomic writes and safetensors files whose bytes depend only on their content."""

import json

import pytest
import torch
from safetensors import safe_open

from momos.io import save_safetensors_atomic, safetensors_bytes, write_bytes_atomic

METADATA = {key: key * 3 for key in "qwertyuiop"} | {"path": "runs/é 1"}


def test_safetensors_bytes_depend_only_on_the_content():
    tensors = {"b": torch.ones(3, dtype=torch.int64), "a": torch.arange(5.0).reshape(5, 1)[:, 0]}
    files = {safetensors_bytes(tensors, METADATA) for _ in range(5)}
    assert len(files) == 1
    (data,) = files
    length = int.from_bytes(data[:8], "little")
    assert length % 8 == 0 and list(json.loads(data[8:8 + length])["__metadata__"]) == sorted(METADATA)


def test_saved_safetensors_read_back(tmp_path):
    tensors = {"b": torch.ones(3, dtype=torch.int64), "a": torch.randn(4, 2), "empty": torch.zeros(0)}
    save_safetensors_atomic(tensors, tmp_path / "x.safetensors", metadata=METADATA)
    save_safetensors_atomic(tensors, tmp_path / "plain.safetensors")
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert f.metadata() == METADATA
        assert all(torch.equal(f.get_tensor(name), t) for name, t in tensors.items())
    with safe_open(tmp_path / "plain.safetensors", "pt") as f:
        assert f.metadata() is None and torch.equal(f.get_tensor("a"), tensors["a"])


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    write_bytes_atomic(b"old", path)
    monkeypatch.setattr("os.replace", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(b"new", path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_folder_as_the_target_is_refused_by_name(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="it is a folder"):
        write_bytes_atomic(b"x", tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not any((tmp_path / "out").iterdir())
