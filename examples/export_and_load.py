"""Export a mosaic as a compact ``.momos`` file and load it back, bit for bit.

A small MLP is trained briefly on scikit-learn's digits (no MoMos during training), projected
once onto a mosaic with ``momos.project_``, saved with ``momos.save`` and loaded with
``momos.load`` into a freshly built model. The script checks that the loaded model's weights
and outputs are identical to the projected model's, and compares the file with the float32
state dict (a plain ``.safetensors`` file of the same model).

The projection normalizes each output channel by a power-of-two scale (``normalize="channel"``,
which suits a model trained without MoMos); the scales cannot be read back from the weights,
so ``momos.save`` takes them from the projection: ``scales=stats.scales``. With the paper's
default ``normalize="none"`` no scales are needed.

Run (about 10 s on one CPU thread, half of it importing torch):

    python examples/export_and_load.py                     # outputs in a temporary folder
    python examples/export_and_load.py --capacity 0.01 --out runs/export   # smaller, less accurate
    momos inspect OUT/digits.momos                         # the file's breakdown, from the command line
"""

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

import momos


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    parser.add_argument("--steps", type=int, default=150, help="full-batch training steps before projecting")
    parser.add_argument("--block-size", type=int, default=4, help="s: weights per block")
    parser.add_argument("--capacity", type=float, default=0.05, help="motifs per block (k = capacity x blocks)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def main():
    args = parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="momos-export-"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    # 1. A briefly trained model: full-batch AdamW on 1,500 digits, 297 held out.
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    x_train, y_train, x_val, y_val = x[order[:1500]], y[order[:1500]], x[order[1500:]], y[order[1500:]]
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(args.steps):
        loss = nn.functional.cross_entropy(model(x_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"trained:   val accuracy {accuracy(model, x_val, y_val):.4f}")

    # 2. Project once, in place. The weight matrices become the mosaic (biases stay free), each
    #    output channel divided by a power-of-two scale first; k-means fits the motifs to the blocks.
    cfg = momos.MoMosConfig(block_size=args.block_size, capacity=args.capacity, normalize="channel",
                            parameters="matrices", motif_method="kmeans", seed=args.seed)
    stats = momos.project_(model, cfg)
    print(f"projected: val accuracy {accuracy(model, x_val, y_val):.4f} "
          f"({stats.num_blocks} blocks of {stats.block_size}, {stats.num_motifs} motifs)")

    # 3. Save: the motif table, one index per block, the scales, and the biases as they are.
    path = out / "digits.momos"
    info = momos.save(model, path, cfg, scales=stats.scales)   # refuses a model that is not a mosaic
    plain = out / "digits.safetensors"                          # the same model as float32, for comparison
    save_file(model.state_dict(), plain)

    # 4. Load into a fresh model (same architecture, other random weights) and compare.
    fresh = make_model()
    momos.load(path, fresh)                                     # or: state = momos.load(path)
    same_weights = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    with torch.no_grad():
        same_outputs = torch.equal(model(x_val), fresh(x_val))
    print(f"loaded:    val accuracy {accuracy(fresh, x_val, y_val):.4f}, identical weights: {same_weights}, "
          f"identical outputs: {same_outputs}")

    float32_bytes = plain.stat().st_size
    print(f"file size: {info.file_bytes:,} bytes (.momos) vs {float32_bytes:,} bytes (float32 safetensors), "
          f"{float32_bytes / info.file_bytes:.1f}x smaller")
    print(f"bits per weight: {info.bits_per_weight:.2f} (whole file, {info.num_values:,} values); "
          f"mosaic alone {info.mosaic_bits_per_weight:.2f} (motifs {info.motif_bytes:,} B + indices "
          f"{info.index_bytes:,} B + scales {info.scale_bytes:,} B for {info.mosaic_weights:,} weights)")
    print(f"wrote {path} and {plain}")
    if not (same_weights and same_outputs):
        raise SystemExit("the loaded model differs from the saved one")


if __name__ == "__main__":
    main()
