"""Time every complexity metric on the paper's models, freshly initialized and as a mosaic.

    python bench/complexity.py [--runs 3] [--models mlp,resnet20,mlp3072]

Models: the MLP 784-256-256-256-256-10 (0.40M weights), ResNet-20 for CIFAR-10 (0.27M) and
the paper's MLP on 32x32x3 inputs (0.99M), each at initialization and after one projection
at s=2, capacity 0.05 (the paper's headline setting). Per metric, the script prints the least
wall-clock seconds (one torch thread) over ``--runs`` runs of ``measure(model, [metric])`` (``mosaic``
with the config). The first BDM call on an alphabet loads pybdm's CTM table; that one-time
cost is printed apart. Then the compressors at their fast settings, with the ratio change,
and the default metric set plus mosaic in one call."""

from __future__ import annotations

import argparse
import warnings
import time

import numpy as np
import torch

import momos
from momos.complexity import BDM_ALPHABETS, COMPRESSOR_METRICS, DEFAULT_METRICS, METRICS, bdm, measure
from momos.models import build_model

MODELS = {
    "mlp": ("MLP 784-256x4-10", dict(name="mlp", channels=1, image_size=28, num_classes=10)),
    "resnet20": ("ResNet-20", dict(name="resnet20", channels=3, image_size=32, num_classes=10)),
    "mlp3072": ("MLP 3072-256x4-10", dict(name="mlp", channels=3, image_size=32, num_classes=10)),
}
CONFIG = momos.MoMosConfig(block_size=2, capacity=0.05)


def seconds(fn, runs: int) -> tuple[float, object]:
    """The fastest wall time of ``runs`` calls (other processes only ever add time), and the result."""
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def table_loads() -> dict[int, float]:
    """Seconds of the first BDM call per alphabet: loading pybdm's CTM table."""
    loads = {}
    for alphabet in BDM_ALPHABETS:
        start = time.perf_counter()
        bdm(np.zeros(24, dtype=np.int64), alphabet)
        loads[alphabet] = time.perf_counter() - start
    return loads


def models(names: list[str]) -> list[tuple[str, torch.nn.Module]]:
    """Each model at initialization and projected, both from seed 0."""
    out = []
    for key in names:
        label, spec = MODELS[key]
        torch.manual_seed(0)
        init = build_model(**spec)
        mosaic = build_model(**spec)
        mosaic.load_state_dict(init.state_dict())
        momos.project_(mosaic, CONFIG)
        out += [(f"{label} init", init), (f"{label} mosaic", mosaic)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default="mlp,resnet20,mlp3072")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the gzip window warning on mosaics, once per call

    loads = table_loads()
    print("one-time CTM table load (s): " + ", ".join(f"{a} symbols {t:.2f}" for a, t in loads.items()))
    columns = models(args.models.split(","))
    print("\nweights: " + ", ".join(f"{label} {sum(p.numel() for p in m.parameters())}"
                                    for label, m in columns[::2]))

    print("\n| metric | " + " | ".join(label for label, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for metric in METRICS:
        # Only mosaic needs the config; with one, measure also reads the motif table once per
        # call for the window warning, which costs about the mosaic row.
        config = CONFIG if metric == "mosaic" else None
        row = [seconds(lambda m=m: measure(m, [metric], config), args.runs)[0] for _, m in columns]
        print(f"| {metric} | " + " | ".join(f"{t:.3f}" for t in row) + " |")
    defaults = list(DEFAULT_METRICS) + ["mosaic"]
    row = [seconds(lambda m=m: measure(m, defaults, CONFIG), args.runs)[0] for _, m in columns]
    print("| **default set + mosaic, one call** | " + " | ".join(f"{t:.2f}" for t in row) + " |")

    print("\nfast compressor settings: seconds (ratio fast / default)\n")
    print("| metric | " + " | ".join(label for label, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for metric in COMPRESSOR_METRICS:
        cells = []
        for _, m in columns:
            t, fast = seconds(lambda m=m: measure(m, [metric], fast=True), args.runs)
            default = measure(m, [metric])
            cells.append(f"{t:.3f} ({fast[metric] / default[metric]:.3f})")
        print(f"| {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
