"""How tests/data/format_v1_*.momos (and their .expected.safetensors) were made.

Run once from the repository root with the version-1 writer, before version 2 existed; the
files are committed as they came out. Running it now would write version-2 files, so don't:
the point of the fixtures is to be files an older momos wrote.
"""
import copy, torch
from torch import nn
import momos
from momos.fileformat import save
from momos.io import save_safetensors_atomic

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(12, 5)
        self.register_buffer("steps", torch.tensor([3, 1, 4], dtype=torch.int32))

torch.manual_seed(0)
m = Tiny()
with torch.no_grad():
    m.bn.running_mean.normal_()
for name, cfg in {
    "global": momos.MoMosConfig(block_size=4, capacity=0.1, exclude=("bn",)),
    "per_tensor_grid": momos.MoMosConfig(block_size=9, capacity=0.3, tile_shape=(3, 3), scope="per_tensor",
                                         motif_bits=4, force_zero=False),
}.items():
    model = copy.deepcopy(m)
    momos.project_(model, cfg, warn_relative_error=None)
    path = f"tests/data/format_v1_{name}.momos"
    info = save(model, path, cfg, metadata={"fixture": "version 1"})
    save_safetensors_atomic(model.state_dict(), f"tests/data/format_v1_{name}.expected.safetensors")
    print(name, info.version, info.file_bytes, info.motif_storage, [c.coding for c in info.codebooks])
