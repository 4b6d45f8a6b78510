"""How small a ``.momos`` file is, against generic compressors and the description length.

    python bench/fileformat.py [--fast] [--quick] [--models mlp,resnet20,transformer] [--repeats 3]

For the MLP (784-256-256-256-256-10) and ResNet-20 (CIFAR, 3x32x32), randomly initialized
(seed 0; ResNet-20's BatchNorm statistics from one training-mode forward pass of random
inputs, so that they are not just zeros and ones), projected once with MoMos at
``s in {2, 4, 8}`` x ``capacity in {0.001, 0.01, 0.05}`` (force-zero, global codebook), it
prints one Markdown row per point:

- the file's size and its ratio to the best of gzip -9, bz2 -9, lzma -9 and zstd at its maximum
  level applied to the float32 bytes of the same state dict (every floating tensor, in order);
- bits per weight: the whole file per value, the motifs + indices per mosaic weight, and the
  description lengths of ``momos.complexity`` per weight (the paper's bound
  ``k·s·32 + m·⌈log2 k⌉`` and its entropy-coded variant ``k·s·32 + m·H(usage) + k·⌈log2(m+1)⌉``).

The transformer stands in for a pretrained one: 6 ``nn.TransformerEncoderLayer`` (d_model 512,
feed-forward 2048, 8 heads) on a 10k x 512 embedding, 24.0M parameters, drawn as a trained net's
would differ (seed 0): every tensor normal with its own standard deviation, log-uniform in
[1e-3, 1], LayerNorm weights 1 + N(0, 0.05²). It is projected as pretrained networks are, with
norms and biases left out of the mosaic (``parameters="matrices"``, ``normalize="channel"``,
approximate assignment for its huge global codebooks), at ``s in {2, 4}`` x ``capacity in
{0.05, 0.01}``; the norms and biases go to the file as plain tensors. A point takes about half an
hour on a busy 2-core machine (projection 11 min, lzma -9 of 96 MB most of the rest); ``--quick``
uses a 2.1M-parameter one (2 layers, d_model 256, feed-forward 1024, a 2k-token embedding).

Then the save and load times (median of ``--repeats``) of a 1.07M-parameter MLP
(784-1024-256-10, s=4, capacity 0.01).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import momos
from momos.complexity import generic_sizes
from momos.complexity import description_length_of_weights
from momos.models import build_model

MODELS = {"mlp": dict(channels=1, image_size=28), "resnet20": dict(channels=3, image_size=32)}
BLOCK_SIZES = (2, 4, 8)
CAPACITIES = (0.001, 0.01, 0.05)
TRANSFORMER_POINTS = ((2, 0.05), (2, 0.01), (4, 0.05), (4, 0.01))
TRANSFORMER = dict(vocab=10_000, d_model=512, feedforward=2048, layers=6)
QUICK_TRANSFORMER = dict(vocab=2_000, d_model=256, feedforward=1024, layers=2)


class Transformer(nn.Module):
    def __init__(self, vocab: int, d_model: int, feedforward: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 8, feedforward, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)


def pretrained_like_transformer(quick: bool) -> nn.Module:
    """Weights at the differing scales of a trained network (a fresh one's are all alike)."""
    model = Transformer(**(QUICK_TRANSFORMER if quick else TRANSFORMER))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.05 * torch.randn(p.shape, generator=generator))
            else:
                std = 10 ** (-3 + 3 * torch.rand((), generator=generator))
                p.copy_(std * torch.randn(p.shape, generator=generator))
    return model


def fresh_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **MODELS[name])
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        with torch.no_grad():
            model.train()(torch.randn(64, MODELS[name]["channels"], MODELS[name]["image_size"],
                                      MODELS[name]["image_size"]))
    return model


def row(name: str, model: nn.Module, cfg: momos.MoMosConfig, folder: Path, fast: bool) -> str:
    scales = momos.project_(model, cfg, warn_relative_error=None).scales
    info = momos.save(model, folder / "model.momos", cfg, scales=scales)
    _, compressed = generic_sizes(model.state_dict(), fast=fast)
    best = min(compressed, key=compressed.get)
    tensors = [p.detach() for _, p in momos.select_parameters(model, cfg)]
    length = description_length_of_weights(tensors, cfg, scales=scales)
    n = length.num_weights
    return (f"| {name} | {cfg.block_size} | {cfg.capacity} | {info.num_motifs} | {info.file_bytes:,} | "
            f"{best} {compressed[best]:,} | **{info.file_bytes / compressed[best]:.3f}** | "
            f"{info.bits_per_weight:.3f} | {info.mosaic_bits_per_weight:.3f} | "
            f"{length.entropy_coded_bits / n:.3f} | {length.bound_bits / n:.3f} |")


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,resnet20,transformer",
                        help="comma-separated: mlp, resnet20, transformer")
    parser.add_argument("--quick", action="store_true", help="a 2.1M-parameter transformer instead of 24.0M")
    parser.add_argument("--fast", action="store_true", help="fast compressor settings (not the paper's)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    args = parser.parse_args()
    print("| model | s | capacity | k used | file bytes | best generic (bytes) | file / best | "
          "bits/value (file) | bits/weight (motifs+indices) | entropy-coded DL | bound DL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root)
        for name in args.models.split(","):
            if name == "transformer":
                for s, capacity in TRANSFORMER_POINTS:
                    cfg = momos.MoMosConfig(block_size=s, capacity=capacity, normalize="channel",
                                            parameters="matrices", assignment="approximate")
                    print(row(name, pretrained_like_transformer(args.quick), cfg, folder, args.fast), flush=True)
                continue
            for s in BLOCK_SIZES:
                for capacity in CAPACITIES:
                    cfg = momos.MoMosConfig(block_size=s, capacity=capacity)
                    print(row(name, fresh_model(name), cfg, folder, args.fast), flush=True)
        torch.manual_seed(0)
        big = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10))
        cfg = momos.MoMosConfig(block_size=4, capacity=0.01)
        momos.project_(big, cfg)
        path = folder / "big.momos"
        save = median_seconds(lambda: momos.save(big, path, cfg), args.repeats)
        load = median_seconds(lambda: momos.load(path), args.repeats)
        count = sum(p.numel() for p in big.parameters())
        print(f"\n{count:,}-parameter MLP, s=4, capacity 0.01: {path.stat().st_size:,} bytes; "
              f"save {save:.3f} s, load {load:.3f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
