"""The approximate (inverted-file) assignment on a large model: time, exactness, distortion.

    python bench/approximate.py [--params 100e6] [--nprobe 4 8 16] [--sample 100000] [--model NAME]

Builds a synthetic stack of 2048x2048 linear layers with about ``--params`` parameters
(or ``--model``: any name ``momos.models.build_model`` knows, e.g. a timm model), and
projects it at s=4, capacity=0.01 with ``assignment="approximate"`` for each ``nprobe``,
from the same weights and the same motifs. Exact search of every block would take
``m * k`` pairs (the script prints its estimate), so exactness is measured on a random
sample of blocks: the share that got their exact nearest motif, and the distortion
(squared error) of the approximate assignments relative to the exact ones on that sample.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import momos
from momos.assign import nearest_motif, squared_distances
from momos.blocks import to_blocks
from momos.models import build_model

WIDTH = 2048
BLOCK_SIZE = 4
CAPACITY = 0.01


def synthetic_stack(params: float) -> nn.Module:
    """Linear ``WIDTH x WIDTH`` layers (default init) with about ``params`` parameters."""
    layers = max(1, round(params / (WIDTH * WIDTH + WIDTH)))
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(layers)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=100e6)
    parser.add_argument("--model", default=None, help="a model name instead of the synthetic stack")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--sample", type=int, default=100_000, help="blocks checked against exact search")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = (build_model(args.model, channels=3, image_size=224, num_classes=1000) if args.model
             else synthetic_stack(args.params))
    original = [p.detach().clone() for p in model.parameters()]
    blocks, _ = to_blocks(original, BLOCK_SIZE)
    base = momos.MoMosConfig(block_size=BLOCK_SIZE, capacity=CAPACITY, force_zero=True, seed=0)
    m, k = len(blocks), base.motifs_for(len(blocks))
    exact_estimate = momos.estimate_cost(model, base)
    print(f"{sum(p.numel() for p in original) / 1e6:.1f}M parameters, m={m} blocks, k={k} motifs, "
          f"{torch.get_num_threads()} threads")
    print(f"exact search: {exact_estimate.pairs:.3g} pairs, estimated {exact_estimate.seconds:.0f} s "
          f"on this machine ({exact_estimate.pairs / exact_estimate.seconds / 1e9:.1f} G pairs/s)")

    sample = torch.randperm(m, generator=torch.Generator().manual_seed(1))[:args.sample]
    motifs = None
    for nprobe in args.nprobe:
        with torch.no_grad():
            for p, value in zip(model.parameters(), original):
                p.copy_(value)
        cfg = momos.MoMosConfig(**{**base.to_dict(), "assignment": "approximate", "nprobe": nprobe})
        start = time.perf_counter()
        stats = momos.project_(model, cfg)
        seconds = time.perf_counter() - start
        if motifs is None:
            motifs = stats.motifs
            start = time.perf_counter()
            exact = nearest_motif(blocks[sample], motifs)
            exact_seconds = time.perf_counter() - start
            exact_error = squared_distances(blocks[sample], motifs[exact]).sum()
            print(f"exact search of the {len(sample)} sampled blocks: {exact_seconds:.1f} s")
        assert torch.equal(stats.motifs, motifs)
        got = stats.assignments[sample]
        error = squared_distances(blocks[sample], motifs[got]).sum()
        print(f"nprobe={nprobe:3d}: projection {seconds:6.1f} s, exact nearest motif for "
              f"{(got == exact).double().mean():.2%} of sampled blocks, distortion "
              f"+{float(error / exact_error - 1):.2%} vs exact (sample); whole-model distortion "
              f"{stats.distortion:.4g}")


if __name__ == "__main__":
    main()
