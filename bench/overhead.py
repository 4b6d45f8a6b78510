"""The cost of MoMos in a training run: epoch time with and without the projection.

    MOMOS_DATA=/path/to/data python bench/overhead.py [--epochs 2] [--dataset fashion-mnist] [--threads N]

One process trains the MLP (784-256-256-256-256-10) on Fashion-MNIST as ``baseline`` and as
``momos`` (s=4, capacity 0.01, force-zero), same seed and data order, alternating epoch by
epoch between the two runs so that both see the same machine load. Per epoch it measures the
wall time and the process CPU time (all threads) of training, projection and validation, and
prints the ratio MoMos / baseline of the summed times, and the projection's own seconds. CPU
time is the steadier figure on a shared machine, and ``--threads 1`` steadier still (idle
threads spin while waiting for a busy core). The runs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from momos.train import TrainConfig, fit, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data-dir", help="default: $MOMOS_DATA")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = dict(dataset=args.dataset, model="mlp", epochs=args.epochs, data_dir=args.data_dir, download=False)
    methods = ("baseline", "momos")
    wall = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as root:
        runs = {m: prepare(TrainConfig(method=m, **common), f"{root}/{m}") for m in methods}
        for epoch in range(1, args.epochs + 1):
            for method, run in runs.items():
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                results = fit(run, stop_after_epoch=epoch)
                wall[method].append(time.perf_counter() - wall_start)
                cpu[method].append(time.process_time() - cpu_start)
    projection = [e["projection"]["seconds"] for e in results["epochs"] if e["projection"]]
    print(f"MLP on {args.dataset}, {args.epochs} epochs per run, {torch.get_num_threads()} threads")
    for method in methods:
        print(f"{method:9s} epochs: wall {', '.join(f'{s:.2f}' for s in wall[method])} s; "
              f"CPU {', '.join(f'{s:.2f}' for s in cpu[method])} s")
    print(f"projection: {', '.join(f'{s:.3f}' for s in projection)} s per epoch")
    print(f"ratio momos / baseline: wall {sum(wall['momos']) / sum(wall['baseline']):.3f}, "
          f"CPU {sum(cpu['momos']) / sum(cpu['baseline']):.3f}")


if __name__ == "__main__":
    main()
