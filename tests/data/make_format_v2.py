"""How tests/data/format_v2_*.momos (and their .expected.safetensors) were made.

Run once from the repository root with the version-2 writer, before version 3 existed; the
files are committed as they came out. Version 3 only adds quantized (QAT) mosaics, and the
writer still writes files without quantization as version 2, so running it now gives the
same kind of file; the point of the fixtures is still to be files an older momos wrote.
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
cfg = momos.MoMosConfig(block_size=4, capacity=0.2, scope="per_tensor", normalize="channel",
                        exclude=("bn",), force_zero=False)
model = copy.deepcopy(m)
stats = momos.project_(model, cfg, warn_relative_error=None)
info = save(model, "tests/data/format_v2_channel.momos", cfg, scales=stats.scales, metadata={"fixture": "version 2"})
save_safetensors_atomic(model.state_dict(), "tests/data/format_v2_channel.expected.safetensors")
print("channel", info.version, info.file_bytes, info.motif_storage, info.scale_bytes, [c.coding for c in info.codebooks])
