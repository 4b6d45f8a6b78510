"""Time a compact Linear's lookup-table product against dense and materialize-then-matmul.

    python bench/lookup.py [--runs 5] [--batches 1,8,64] [--max-table-mib 512] [--model-runs 25] [--models-only]

For each layer set, block size s in (4, 8) and capacity in (0.001, 0.01, 0.05), a mosaic of
random motifs and random indices (the timings do not depend on the values) is multiplied by a
random batch three ways, alternating in one process:

- ``dense``: ``F.linear`` with the dense float32 weight (what a plain model does);
- ``materialize``: the compact module's path, the weight rebuilt from motifs and indices by
  ``MosaicWeight``, then ``F.linear``;
- ``lookup``: ``momos.lookup.linear`` (numba when installed), its chunk-major indices prepared
  once as the compact module caches them; ``torch``: the same without numba (embedding_bag).

Layer sets: one 4096x4096 Linear (``k = capacity x 4096*4096/s``), and the five Linear layers of
``momos.models`` ``mlp`` at 28x28x1 (784-256-256-256-256-10, one global codebook over all
parameters, ``k = capacity x blocks``), timed as the sum of the layers at one batch. Printed:
median milliseconds and medians of the per-run ratios lookup/dense and lookup/materialize
(below 1: the lookup is faster). Combinations whose table ``B x in/s x k`` floats exceeds
``--max-table-mib`` are skipped.

Then the whole ``mlp``, projected, under ``torch.no_grad``: ``compact_(..., lookup=True)`` (each
Linear takes the lookup where ``momos.compact.lookup_pays``) against ``compact_`` and the dense
projected model, with the number of Linear layers that took the lookup. On a shared machine a
run of a few milliseconds is often preempted once; the ratio of the best runs shows the cost
without that.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

import momos
from momos import lookup
from momos.blocks import layout_of
from momos.compact import MosaicWeight, MotifTable, lookup_pays
from momos.models import build_model
from momos.packing import index_dtype

BLOCK_SIZES = (4, 8)
CAPACITIES = (0.001, 0.01, 0.05)


def layer_sets() -> dict[str, tuple[list[tuple[int, int]], int]]:
    """name -> (the Linear shapes (out, in), the number of blocks the codebook serves at s=1)."""
    mlp = build_model("mlp", channels=1, image_size=28, num_classes=10)
    linears = [(m.out_features, m.in_features) for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    return {"4096x4096": ([(4096, 4096)], 4096 * 4096),
            "mlp 784-256x4-10": (linears, sum(p.numel() for p in mlp.parameters()))}


def mosaic_layer(shape: tuple[int, int], table: MotifTable, generator: torch.Generator):
    """(the compact parametrization, its dense weight, its chunk-major indices, a bias)."""
    s = table.motifs.shape[1]
    k = len(table.motifs)
    out, inp = shape
    indices = torch.randint(0, k, (out * inp // s,), generator=generator).to(index_dtype(k))
    weight = MosaicWeight(table, indices, layout_of([torch.empty(shape)], s))
    dense = weight(torch.empty(0))
    columns = lookup.row_indices(indices, weight.layout).T.contiguous()
    return weight, dense, columns, torch.randn(out, generator=generator)


def time_once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, shapes: list[tuple[int, int]], values: int, s: int, capacity: float, batch: int,
            runs: int, max_table_mib: float) -> None:
    k = max(1, int(capacity * (values // s)))
    table_mib = batch * sum(-(-inp // s) for _, inp in shapes) * k * 4 / 2**20
    label = f"{name:17s} s={s} cap={capacity:<5} k={k:<6d} B={batch:<3d}"
    if table_mib > max_table_mib:
        print(f"{label} skipped: table {table_mib:.0f} MiB")
        return
    generator = torch.Generator().manual_seed(0)
    motifs = MotifTable(torch.randn(k, s, generator=generator))
    layers = [mosaic_layer(shape, motifs, generator) for shape in shapes]
    inputs = [torch.randn(batch, inp, generator=generator) for _, inp in shapes]
    numba = lookup.numba

    def torch_path():
        lookup.numba = None
        try:
            return [lookup.linear(x, motifs.motifs, c, None, b) for (_, _, c, b), x in zip(layers, inputs)]
        finally:
            lookup.numba = numba

    paths = {
        "dense": lambda: [F.linear(x, d, b) for (_, d, _, b), x in zip(layers, inputs)],
        "materialize": lambda: [F.linear(x, w(d.new_empty(0)), b) for (w, d, _, b), x in zip(layers, inputs)],
        "lookup": lambda: [lookup.linear(x, motifs.motifs, c, None, b) for (_, _, c, b), x in zip(layers, inputs)],
        "torch": torch_path,
    }
    times = {path: [] for path in paths}
    with torch.no_grad():
        for run in range(runs + 1):   # the first round warms up (numba's compile cache, allocator)
            for path, fn in paths.items():
                elapsed = time_once(fn)
                if run:
                    times[path].append(elapsed)
    med = statistics.median

    def ratio(a: str, b: str) -> float:
        return med(x / y for x, y in zip(times[a], times[b]))

    print(f"{label} dense {med(times['dense']) * 1e3:8.2f} ms  materialize {med(times['materialize']) * 1e3:8.2f} ms"
          f"  lookup {med(times['lookup']) * 1e3:8.2f} ms  torch {med(times['torch']) * 1e3:8.2f} ms"
          f"  lookup/dense {ratio('lookup', 'dense'):6.2f}  lookup/materialize {ratio('lookup', 'materialize'):6.3f}"
          f"  torch/dense {ratio('torch', 'dense'):6.2f}")


def compare_models(s: int, capacity: float, batches: list[int], runs: int) -> None:
    """The projected mlp: dense, compact and compact with the lookup, at each batch size."""
    config = momos.MoMosConfig(block_size=s, capacity=capacity, seed=0)
    torch.manual_seed(0)
    dense = build_model("mlp", channels=1, image_size=28, num_classes=10).eval()
    stats = momos.project_(dense, config, warn_relative_error=None)
    models = {"dense": dense}
    for name, on in (("compact", False), ("lookup", True)):
        models[name] = build_model("mlp", channels=1, image_size=28, num_classes=10).eval()
        models[name].load_state_dict(dense.state_dict())
        momos.compact_(models[name], config, scales=stats.scales, lookup=on)
    k = len(next(m for m in models["compact"].modules() if isinstance(m, MotifTable)).motifs)
    for batch in batches:
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        times = {name: [] for name in models}
        with torch.no_grad():
            used = sum(lookup_pays(m.parametrizations.weight[0], torch.empty(batch, m.in_features))
                       for m in models["lookup"].modules() if isinstance(m, torch.nn.Linear))
            for run in range(runs + 1):
                for name, model in models.items():
                    elapsed = time_once(lambda: model(x))
                    if run:
                        times[name].append(elapsed)
        med = statistics.median
        print(f"mlp model         s={s} cap={capacity:<5} k={k:<6d} B={batch:<3d} "
              + "  ".join(f"{name} {med(t) * 1e3:7.2f} ms" for name, t in times.items())
              + f"  lookup layers {used}/5  lookup/compact "
              f"{med(a / b for a, b in zip(times['lookup'], times['compact'])):6.3f} "
              f"(of bests {min(times['lookup']) / min(times['compact']):6.3f})  lookup/dense "
              f"{med(a / b for a, b in zip(times['lookup'], times['dense'])):6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--max-table-mib", type=float, default=512)
    parser.add_argument("--model-runs", type=int, default=25, help="runs of the whole mlp (milliseconds each)")
    parser.add_argument("--models-only", action="store_true", help="only the whole projected mlp")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} torch threads, numba {'on' if lookup.numba else 'off'}; "
          f"medians of {args.runs} alternating runs per layer set, {args.model_runs} per model")
    batches = [int(b) for b in args.batches.split(",")]
    for name, (shapes, values) in ({} if args.models_only else layer_sets()).items():
        for s in BLOCK_SIZES:
            for capacity in CAPACITIES:
                for batch in batches:
                    compare(name, shapes, values, s, capacity, batch, args.runs, args.max_table_mib)
    for s in BLOCK_SIZES:
        for capacity in CAPACITIES:
            compare_models(s, capacity, batches, args.model_runs)


if __name__ == "__main__":
    main()
