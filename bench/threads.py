"""How the number of torch threads changes the epoch time of ``momos.train``.

    MOMOS_DATA=/path/to/data python bench/threads.py [--epochs 2] [--threads 1,2,16]

Three MoMos runs (s=4, capacity 0.01, force-zero, the default method) of growing work per step:
the MLP on digits (batch 32), the MLP on an MNIST subset (batch 128) and ResNet-20 on a CIFAR-10
subset (batch 128); the last two need their data sets in ``--data-dir`` / ``$MOMOS_DATA`` and are
skipped with a message when they are absent. Every run is prepared once per thread count, and
the epochs alternate between the thread counts (epoch 1 at every count, then epoch 2, ...), so
that all counts see the same machine load. An epoch's time is its ``results.json`` entry's
``seconds``: training, the epoch-end projection and the validation. The table gives the median
epoch time at 1 thread and the ratio (median time at T threads) / (median time at 1 thread):
below 1, the threads help; above 1, they cost. The runs go to a temporary folder.

"MACs/step" is the work of one step as the default thread rule measures it (``momos.train.
work_per_step``: the multiply-adds of the linear and convolution layers' forward pass over a
batch), and "rule" the threads that rule (``momos.runtime.default_threads``) picks on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from momos.data import DatasetError
from momos.runtime import default_threads
from momos.train import TrainConfig, fit, prepare, work_per_step


def workloads(args) -> dict[str, TrainConfig]:
    common = dict(method="momos", data_dir=args.data_dir, download=False, epochs=args.epochs + 1)
    return {
        "digits MLP": TrainConfig(dataset="digits", model="mlp", **common),
        f"MNIST MLP ({args.mnist_subset:,} images)": TrainConfig(
            dataset="mnist", model="mlp", train_subset=args.mnist_subset, **common),
        # a small validation split: the epoch time is mostly training
        f"ResNet-20 CIFAR-10 ({args.cifar_subset:,} images)": TrainConfig(
            dataset="cifar10", model="resnet20", train_subset=args.cifar_subset, val_fraction=0.01, **common),
    }


def epoch_times(config: TrainConfig, thread_counts: list[int], epochs: int, root: str):
    """{threads: [seconds of epoch 1, 2, ...]} and one of the runs; the epochs alternate between the counts."""
    runs = {t: prepare(config, f"{root}/{t}") for t in thread_counts}
    for epoch in range(1, epochs + 1):
        for threads, run in runs.items():
            torch.set_num_threads(threads)
            fit(run, stop_after_epoch=epoch)   # config.epochs is one more: fit never ends the run
    return {t: [entry["seconds"] for entry in run.epochs_log[1:]] for t, run in runs.items()}, runs[thread_counts[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs per thread count")
    parser.add_argument("--threads", default=f"1,2,{os.cpu_count()}",
                        help="comma-separated thread counts (default 1, 2 and all cores)")
    parser.add_argument("--mnist-subset", type=int, default=10_000)
    parser.add_argument("--cifar-subset", type=int, default=1_000)
    parser.add_argument("--data-dir", help="default: $MOMOS_DATA")
    args = parser.parse_args()
    thread_counts = sorted({int(t) for t in args.threads.split(",")} | {1})
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {args.epochs} epochs per thread count")
    print(f"{'run':38s} {'MACs/step':>10s} {'rule':>4s} {'1 thread':>9s}  "
          + "  ".join(f"{t:>2d} thr" for t in thread_counts[1:]))
    with tempfile.TemporaryDirectory() as root:
        for name, config in workloads(args).items():
            try:
                times, run = epoch_times(config, thread_counts, args.epochs, f"{root}/{len(name)}")
            except DatasetError as error:
                print(f"{name:38s} skipped: {error}")
                continue
            one = statistics.median(times[1])
            ratios = "  ".join(f"{statistics.median(times[t]) / one:6.2f}" for t in thread_counts[1:])
            work = work_per_step(run)   # a forward pass of the model
            print(f"{name:38s} {work:10.2e} {default_threads(work):4d} {one:8.2f}s  {ratios}", flush=True)


if __name__ == "__main__":
    main()
