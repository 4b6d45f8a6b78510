"""How tests/data/format_v4_plain.momos (and its .expected.safetensors) were made.

Run once from the repository root with the version-4 writer; the files are committed as they
came out, so that later readers are checked against a file this writer wrote. Version 4 adds
plain (non-mosaic) tensors stored as coded byte planes: here LayerNorm-like weights near 1 in
each float dtype, with signed zeros, NaN, infinities and subnormals among them; the int64
buffer is too small to pay for coding and stays as it is.
"""
import torch
import momos
from momos.fileformat import save
from momos.io import save_safetensors_atomic

g = torch.Generator().manual_seed(0)
state = {"fc.weight": torch.tensor([[0.5, -1.0, 0.5, -1.0], [0.25, 0.25, 0.5, -1.0]])}
special = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40])
for name, dtype in (("half", torch.float16), ("brain", torch.bfloat16), ("single", torch.float32),
                    ("double", torch.float64)):
    values = (1 + 0.05 * torch.randn(512, generator=g)).to(dtype)
    values[:len(special)] = special.to(dtype)
    state[f"norm_{name}.weight"] = values
state["steps"] = torch.tensor([3, 1, 4])
cfg = momos.MoMosConfig(block_size=2, num_motifs=3, include=("fc",), force_zero=False)
info = save(state, "tests/data/format_v4_plain.momos", cfg, metadata={"fixture": "version 4"})
save_safetensors_atomic(state, "tests/data/format_v4_plain.expected.safetensors")
print("plain", info.version, info.file_bytes, info.other_bytes)
