"""MoMos in your own PyTorch training loop.

A small MLP learns scikit-learn's handwritten digits (1,797 8x8 images, bundled with
scikit-learn: no download) in an ordinary PyTorch loop: model, DataLoader, loss, optimizer and
a validate function. The only MoMos additions are three calls of a ``momos.Projector``:

    projector = momos.Projector(model, cfg)   # once, before training
    projector.epoch_end()                     # after each epoch's last optimizer step
    projector.finalize()                      # once, after training: the model is a mosaic

Each projection replaces every block of ``block_size`` consecutive weights by the nearest of a
few shared motifs (``capacity`` x the number of blocks), so validation sees the projected model.
At the end the script checks that the weights are exactly a mosaic (``momos.is_mosaic``) and
writes the final weights and the projection history to ``--out``.

Run (about 10 s on one CPU thread, half of it importing torch):

    python examples/training_loop.py                        # outputs in a temporary folder
    python examples/training_loop.py --epochs 20 --capacity 0.01 --out runs/loop
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import momos


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=4, help="s: weights per block")
    parser.add_argument("--capacity", type=float, default=0.05, help="motifs per block (k = capacity x blocks)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def digits_loaders(batch_size: int, seed: int):
    """Digits as tensors in [0, 1]: 1,500 images to train on, the other 297 to validate on."""
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y))
    train, val = random_split(data, [1500, len(data) - 1500], generator=torch.Generator().manual_seed(seed))
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
            DataLoader(val, batch_size=512))


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy on ``loader``."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train()
    return correct / total


def main():
    args = parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="momos-training-loop-"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    train_loader, val_loader = digits_loaders(batch_size=64, seed=args.seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

    # What a mosaic is: blocks of s weights, k = capacity x blocks motifs (motif 0 all zeros).
    cfg = momos.MoMosConfig(block_size=args.block_size, capacity=args.capacity, force_zero=True, seed=args.seed)
    projector = momos.Projector(model, cfg)   # owns the motif generator and the projection history

    for epoch in range(1, args.epochs + 1):
        total_loss = 0.0
        for x, y in train_loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            projector.step()                   # counts optimizer steps; projects only with every_n_steps=N
            total_loss += loss.item() * len(y)
        stats = projector.epoch_end()          # project after the epoch's last step (the paper's schedule)
        accuracy = validate(model, val_loader)  # validation sees the projected model
        print(f"epoch {epoch:2d}: train loss {total_loss / len(train_loader.dataset):.4f}, "
              f"val accuracy {accuracy:.4f}, {stats.num_motifs} motifs, distortion {stats.distortion:.3g}")

    projector.finalize()                       # projects again only if the weights left the mosaic
    mosaic = momos.is_mosaic(model, cfg, projector.codebook_motifs, projector.scales)
    last = projector.last
    print(f"final val accuracy {validate(model, val_loader):.4f}")
    print(f"is mosaic: {mosaic} ({last.num_weights} weights in {last.num_blocks} blocks of {last.block_size}, "
          f"{last.num_motifs} motifs)")
    if not mosaic:
        raise SystemExit("the trained model is not a mosaic")

    save_file(model.state_dict(), out / "final.safetensors")
    (out / "history.json").write_text(json.dumps(projector.history, indent=2))
    print(f"wrote {out / 'final.safetensors'} and {out / 'history.json'}")


if __name__ == "__main__":
    main()
