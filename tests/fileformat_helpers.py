"""Helpers the .momos file tests share: load from bytes, edit a file behind the checksum, compare states."""

from __future__ import annotations

from momos.fileformat import load
from momos.fileformat.container import read_container, write_container
from momos.fileformat.tables import same_bits


def assert_same_state(got, expected, *, ordered=True):
    assert list(got) == list(expected) if ordered else sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert same_bits(got[name], tensor.detach()), name


def resign(data, edit):
    """A file whose header or tensors were changed by ``edit(header, tensors)`` and whose
    checksum was recomputed: only the loader's consistency checks can catch it."""
    header, tensors, version = read_container(data)
    edit(header, tensors)
    return write_container(tensors, header, version=version)


def load_bytes(data, tmp_path, **limits):
    path = tmp_path / "f.momos"
    path.write_bytes(data)
    return load(path, **limits)
