"""The cost of MoMos in a training run: epoch time with and without the projection.

    MOMOS_DATA=/path/to/data python bench/overhead.py [--epochs 2] [--dataset fashion-mnist]

One process trains the MLP (784-256-256-256-256-10) on Fashion-MNIST as ``baseline`` and as
``momos`` (s=4, capacity 0.01, force-zero), same seed and data order, and prints the mean
epoch seconds of each (training, projection and validation; the untrained epoch 0 excluded),
the projection's own seconds, and the ratio MoMos / baseline. The runs are written to a
temporary folder and deleted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from momos.train import TrainConfig, fit, prepare


def epoch_seconds(config: TrainConfig, folder: str) -> tuple[list[float], list[float]]:
    """(seconds of each trained epoch, seconds of each projection)."""
    results = fit(prepare(config, folder), quiet=True)
    epochs = results["epochs"][1:]
    return [e["seconds"] for e in epochs], [e["projection"]["seconds"] for e in epochs if e["projection"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir", help="default: $MOMOS_DATA")
    args = parser.parse_args()
    common = dict(dataset=args.dataset, model="mlp", epochs=args.epochs, data_dir=args.data_dir, download=False)
    with tempfile.TemporaryDirectory() as root:
        base, _ = epoch_seconds(TrainConfig(method="baseline", **common), f"{root}/baseline")
        momos, projections = epoch_seconds(TrainConfig(method="momos", **common), f"{root}/momos")
    base_mean, momos_mean = statistics.mean(base), statistics.mean(momos)
    print(f"MLP on {args.dataset}, {args.epochs} epochs, {torch.get_num_threads()} threads")
    print(f"baseline epoch  {base_mean:.2f} s  ({', '.join(f'{s:.2f}' for s in base)})")
    print(f"momos epoch     {momos_mean:.2f} s  ({', '.join(f'{s:.2f}' for s in momos)}), "
          f"of which projection {statistics.mean(projections):.3f} s")
    print(f"ratio momos / baseline epoch time: {momos_mean / base_mean:.3f}")


if __name__ == "__main__":
    main()
