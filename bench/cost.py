"""The projection's cost estimate against the measured projection, and across processes.

    python bench/cost.py [--quick] [--scale 1.0] [--threads N] [--processes 3]

For each configuration (exact search at s=2, 4, 8; a larger capacity; k-means; the
approximate search with a large codebook, alone and with k-means) it builds a random stack
of 1024x1024 Linear layers and, in this process, estimates the projection
(``momos.estimate_cost``, which measures the machine the first time it meets a shape of
problem) and then times ``momos.project_``: the ratio estimate / measured should lie within
[1/1.5, 1.5]. It then recomputes every estimate in ``--processes`` fresh Python processes:
their largest / smallest should stay within 1.5x. The "cpu" column is the projection's CPU
time over its wall time and thread count: well below 100%, other processes were taking the
cores, and the measured time says as much about them as about the estimate. ``--quick``
projects models a quarter of the size (a sixteenth of the exact search's pairs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from torch import nn

import momos

WIDTH = 512
# (name, parameters, MoMosConfig fields)
CONFIGS = [
    ("exact s=2", 1e6, dict(block_size=2, capacity=0.01)),
    ("exact s=4", 2e6, dict(block_size=4, capacity=0.01)),
    ("exact s=8", 4e6, dict(block_size=8, capacity=0.01)),
    ("exact s=4 c=0.05", 1e6, dict(block_size=4, capacity=0.05)),
    ("kmeans s=4", 1e6, dict(block_size=4, capacity=0.01, motif_method="kmeans")),
    ("approx s=4 c=0.05", 4e6, dict(block_size=4, capacity=0.05, assignment="approximate", nprobe=8)),
    ("approx s=8", 16e6, dict(block_size=8, capacity=0.01, assignment="approximate", nprobe=4)),
    ("approx+kmeans s=4", 1e6, dict(block_size=4, capacity=0.05, assignment="approximate", nprobe=8,
                                    motif_method="kmeans")),
]


def linear_stack(params: float) -> nn.Module:
    """``WIDTH x WIDTH`` Linear layers (default init, seed 0) with about ``params`` parameters."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(max(1, round(params / (WIDTH * WIDTH + WIDTH))))])


def estimates(scale: float) -> list[float]:
    """Every configuration's estimated seconds, in this process."""
    return [momos.estimate_cost(linear_stack(params * scale), momos.MoMosConfig(**fields)).seconds
            for _, params, fields in CONFIGS]


def fresh_estimates(args, processes: int) -> list[list[float]]:
    """``estimates`` in ``processes`` new interpreters, one after another."""
    command = [sys.executable, __file__, "--estimates-only", "--scale", str(args.scale), "--threads", str(args.threads)]
    return [json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            for _ in range(processes)]


def measure(name: str, params: float, fields: dict) -> dict:
    """Estimate, then project, in this process."""
    model, config = linear_stack(params), momos.MoMosConfig(**fields)
    start = time.perf_counter()
    estimate = momos.estimate_cost(model, config)
    estimating = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    stats = momos.project_(model, config, warn_relative_error=None)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return dict(name=name, params=sum(p.numel() for p in model.parameters()), m=stats.num_blocks,
                k=stats.num_motifs, pairs=estimate.pairs, estimate=estimate.seconds, estimating=estimating,
                measured=seconds, cpu=cpu / seconds / torch.get_num_threads())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="models a quarter of the size")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every model's parameters")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--processes", type=int, default=3, help="fresh processes that estimate again")
    parser.add_argument("--estimates-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.scale *= 0.25
    torch.set_num_threads(args.threads)
    if args.estimates_only:
        print(json.dumps(estimates(args.scale)))
        return

    print(f"{args.threads} threads; estimate (seconds it took to make, calibration included), measured "
          "project_ wall time, their ratio (target [0.67, 1.5]); estimates of fresh processes and "
          "their spread (target <= 1.5)")
    rows = [measure(name, params * args.scale, fields) for name, params, fields in CONFIGS]
    fresh = list(zip(*fresh_estimates(args, args.processes)))
    print(f"{'configuration':20s} {'params':>7s} {'m':>8s} {'k':>7s} {'pairs':>8s} {'estimate':>15s} "
          f"{'measured':>9s} {'ratio':>6s} {'cpu':>5s}  fresh estimates        spread")
    for row, others in zip(rows, fresh):
        print(f"{row['name']:20s} {row['params'] / 1e6:6.1f}M {row['m']:8d} {row['k']:7d} {row['pairs']:8.2e} "
              f"{row['estimate']:7.1f} s ({row['estimating']:3.1f}) {row['measured']:7.1f} s "
              f"{row['estimate'] / row['measured']:6.2f} {row['cpu']:5.0%}  "
              f"{' '.join(f'{s:6.1f}' for s in others)}  {max(others) / min(others):6.2f}")


if __name__ == "__main__":
    main()
