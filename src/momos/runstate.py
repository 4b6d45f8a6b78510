"""Nested training state (optimizer, scheduler, RNG, counters) stored without pickle.

A state is a tree of dicts, lists, tuples, tensors and JSON scalars. :func:`save_state`
puts its tensors into one safetensors file and the rest of the tree, as JSON, into that
file's metadata, so one atomic write stores all of it; :func:`load_state` rebuilds the tree
exactly (dict keys keep their type, tuples stay tuples, floats round-trip bit for bit).
"""

from __future__ import annotations

import json
import os

import torch

from .io import save_safetensors_atomic

_SCALARS = (bool, int, float, str, type(None))


def split_tensors(tree, tensors: dict[str, torch.Tensor], path: str = "s"):
    """The JSON skeleton of ``tree``; its tensors are added to ``tensors`` under unique names."""
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree
        return {"tensor": path}
    if isinstance(tree, dict):
        return {"dict": [[key, split_tensors(value, tensors, f"{path}/{i}")]
                         for i, (key, value) in enumerate(tree.items())]}
    if isinstance(tree, (list, tuple)):
        kind = "list" if isinstance(tree, list) else "tuple"
        return {kind: [split_tensors(value, tensors, f"{path}/{i}") for i, value in enumerate(tree)]}
    if isinstance(tree, _SCALARS):
        return {"value": tree}
    raise TypeError(f"cannot store a {type(tree).__name__} at {path} without pickle")


def join_tensors(skeleton, tensors: dict[str, torch.Tensor]):
    """Inverse of :func:`split_tensors`."""
    (kind, content), = skeleton.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {_key(key): join_tensors(value, tensors) for key, value in content}
    if kind == "list":
        return [join_tensors(value, tensors) for value in content]
    if kind == "tuple":
        return tuple(join_tensors(value, tensors) for value in content)
    return content


def _key(key):
    # JSON has no tuples; dict keys that were tuples come back as lists.
    return tuple(key) if isinstance(key, list) else key


def save_state(state: dict, path: str | os.PathLike) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, tensors)
    save_safetensors_atomic(tensors, path, metadata={"state": json.dumps(skeleton)})


def load_state(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        skeleton = json.loads(f.metadata()["state"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return join_tensors(skeleton, tensors)
