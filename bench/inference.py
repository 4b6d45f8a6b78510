"""Inference with a mosaic: what compact modules cost and save against dense weights.

    python bench/inference.py [--quick] [--project] [--threads 1] [--repeats 3]

Part 1 (loading): a stack of ``--layers`` Linear ``--width`` x ``--width`` layers (default
24 x 2048^2, about 100M parameters, as bench/approximate.py) made a mosaic at s=4, capacity 0.01
and saved as a .momos file in a temporary folder, once per codebook scope (global, as the paper;
per_tensor). The mosaic is random motifs at random block indices, made at once; ``--project``
projects the stack instead (``assignment="approximate"``, as bench/approximate.py: minutes on a
busy machine). Each file is then loaded in its own subprocess, dense (``momos.load(path,
model)``) and compact (``momos.load(path, model, compact=True)``), and each reports:

- weights: resident memory (RSS, /proc/self/statm) after loading and one forward pass, minus
  the RSS measured after importing torch and momos and running the compiled gather of
  ``momos.packing`` once (numba's runtime and compiled code: program, not weights; their own
  RSS is the "runtime MB" line); the dense model's float32 weights are in it, or the compact
  model's motif tables and indices;
- tensors: the bytes of the model's parameters and buffers (``momos.compact.resident_bytes``);
- peak: the peak resident memory (VmHWM; ``resource.getrusage(...).ru_maxrss`` would include
  the parent's, which Linux carries over into a spawned process) minus the same baseline. The
  model is built on the meta device, so no weights are allocated before the file's: dense, the
  peak holds the decoded weights; compact, the file's motifs and indices, decoded straight
  into compact modules;
- the median forward latency at batch 1, 8 and 64 (``inference_mode``, parameters frozen).

Target: compact weights <= 1/6 of dense float32, latency at batch 64 within 1.5x of dense.

Part 2 (layers): the time of a compact layer's forward pass (the weight rebuilt from motifs
and indices, then the matmul) over dense ``torch.nn.functional.linear``, at batch 1, 8, 64, on
one 4096 x 4096 Linear and on the paper's MLP (784-256-256-256-256-10), at s=4 and s=8 and
capacities 0.001, 0.01, 0.05. Their mosaics are made directly (random motifs at random block
indices), as projecting would take long and the time does not depend on which motifs they are.
Runs alternate between the two in one process; a sample is as many calls as take about 20 ms,
and the ratios are of the medians of ``--repeats`` samples.

The numbers are one run's on whatever else the machine is doing: ratios measured side by side
are fairer than the absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import momos
from momos import packing
from momos.compact import resident_bytes
from momos.models import build_model

BLOCK_SIZE = 4
CAPACITY = 0.01
BATCHES = (1, 8, 64)
LAYER_BLOCK_SIZES = (4, 8)
LAYER_CAPACITIES = (0.001, 0.01, 0.05)
MB = 2**20


# --- part 1: loading a ~100M-parameter mosaic, dense and compact, each in its own process -------

def stack(layers: int, width: int) -> nn.Sequential:
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])


def save_mosaic(path: Path, layers: int, width: int, scope: str, project: bool) -> momos.MoMosConfig:
    """A fresh stack made a mosaic (projected with the approximate assignment, as
    bench/approximate.py, or made directly), saved as ``path``."""
    torch.manual_seed(0)
    model = stack(layers, width)
    # no forced zero motif: a small bias's own codebook (per_tensor, --quick) may have k = 1
    config = momos.MoMosConfig(block_size=BLOCK_SIZE, capacity=CAPACITY, scope=scope, force_zero=False, seed=0,
                               assignment="approximate")
    if project:
        momos.project_(model, config, warn_relative_error=None)
    else:
        make_mosaic_(model, config, torch.Generator().manual_seed(0))
    momos.save(model, path, config)
    return config


def resident_mb() -> float:
    """The process's resident memory now (Linux: /proc/self/statm), MiB, after handing freed heap
    memory back to the OS (glibc keeps freed tensors of a few MB in its heap otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MB


def peak_mb() -> float:
    """The process's peak resident memory, MiB: VmHWM, not ``ru_maxrss``, which on Linux keeps
    the peak of the process that spawned this one (the parent's, with its projected model)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def child(mode: str, path: str, layers: int, width: int, repeats: int) -> None:
    """One load of ``path`` (``mode`` dense or compact) and its latencies, as one JSON line."""
    before = resident_mb()
    warm_up_gather()
    baseline = resident_mb()
    with torch.device("meta"):
        empty = stack(layers, width)
    model = momos.load(path, empty, compact=mode == "compact").requires_grad_(False)
    latency = {}
    with torch.inference_mode():
        for batch in BATCHES:
            x = torch.randn(batch, width)
            calls = _calls(lambda: model(x))
            latency[batch] = statistics.median(_timed(lambda: model(x), calls) for _ in range(repeats))
    print(json.dumps({"weights_mb": resident_mb() - baseline, "peak_mb": peak_mb() - baseline,
                      "runtime_mb": baseline - before,
                      "tensor_mb": resident_bytes(model) / MB, "latency": latency}))


def warm_up_gather() -> None:
    """Load the compiled gather of every index format (from numba's cache) on a small table."""
    for k in (2, 300, 5000, 70_000):
        packing.gather(torch.zeros(k, BLOCK_SIZE), *packing.pack(torch.zeros(8, dtype=torch.long), k))
    for dtype in (torch.int32, torch.int64):
        packing.gather(torch.zeros(2, BLOCK_SIZE), torch.zeros(8, dtype=dtype), None)


def _timed(fn, calls: int = 1) -> float:
    """Seconds per call of ``fn``, over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _calls(fn, sample_seconds: float = 0.02) -> int:
    """How many calls of ``fn`` make a sample of about ``sample_seconds`` (after one warm-up call)."""
    return max(1, round(sample_seconds / _timed(fn)))


def run_child(mode: str, path: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(path), "--layers", str(args.layers),
               "--width", str(args.width), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def loading(args) -> None:
    params = args.layers * (args.width**2 + args.width)
    made = "projected with the approximate assignment" if args.project else "random motifs at random indices"
    print(f"Part 1: {args.layers} x Linear {args.width}x{args.width} ({params / 1e6:.1f}M parameters), "
          f"s={BLOCK_SIZE}, capacity {CAPACITY}, {made}; {args.threads} thread(s) for the forward passes\n")
    print("| scope | k | .momos MB | mode | weights MB | tensors MB | peak MB | "
          + " | ".join(f"batch {b} ms" for b in BATCHES) + " |")
    print("|---|---:|---:|---|---:|---:|---:|" + "---:|" * len(BATCHES))
    summaries, results = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for scope in ("global", "per_tensor"):
            path = Path(folder) / f"{scope}.momos"
            start = time.perf_counter()
            config = save_mosaic(path, args.layers, args.width, scope, args.project)
            seconds = time.perf_counter() - start
            # a weight's codebook: the whole stack's (global) or its own (per_tensor)
            k = config.motifs_for((params if scope == "global" else args.width**2) // BLOCK_SIZE)
            results = {mode: run_child(mode, path, args) for mode in ("dense", "compact")}
            for mode, r in results.items():
                print(f"| {scope} | {k} | {path.stat().st_size / MB:.1f} | {mode} | {r['weights_mb']:.0f} | "
                      f"{r['tensor_mb']:.0f} | {r['peak_mb']:.0f} | "
                      + " | ".join(f"{1e3 * r['latency'][str(b)]:.1f}" for b in BATCHES) + " |")
            dense, compact = results["dense"], results["compact"]
            ratios = ", ".join(f"batch {b} {compact['latency'][str(b)] / dense['latency'][str(b)]:.2f}x"
                               for b in BATCHES)
            summaries.append(f"{scope}: compact / dense weights 1/{dense['weights_mb'] / compact['weights_mb']:.1f}, "
                             f"latency {ratios} ({'projected' if args.project else 'made'} and saved in {seconds:.0f} s)")
    print("\n" + "\n".join(summaries))
    print(f"runtime MB (numba and the compiled gather, in every process, not in weights MB): "
          f"{results['compact']['runtime_mb']:.0f}")


# --- part 2: one compact layer against F.linear --------------------------------------------------

def make_mosaic_(model: nn.Module, config: momos.MoMosConfig, generator: torch.Generator) -> None:
    """Write random motifs at random block indices into every parameter, one codebook per
    ``config.scope``: an exact mosaic, made at once (the memory and time of a compact model
    do not depend on which motifs it holds; a .momos file's size does, a little)."""
    params = list(model.parameters())
    for group in [params] if config.scope == "global" else [[p] for p in params]:
        blocks, layout = momos.to_blocks([p.detach() for p in group], config.block_size)
        k = config.motifs_for(len(blocks))
        motifs = torch.randn(k, config.block_size, generator=generator) * 0.05
        indices = torch.randint(k, (len(blocks),), generator=generator)
        with torch.no_grad():
            for p, value in zip(group, momos.from_blocks(motifs[indices], layout)):
                p.copy_(value)


def layer_ratios(model: nn.Module, width: int, config: momos.MoMosConfig, repeats: int) -> list[float]:
    """Median time of the compact model over the dense one, per batch size (alternating runs)."""
    make_mosaic_(model, config, torch.Generator().manual_seed(0))
    compact = momos.compact_(copy.deepcopy(model), config).requires_grad_(False)
    dense = model.requires_grad_(False)
    ratios = []
    with torch.inference_mode():
        for batch in BATCHES:
            x = torch.randn(batch, width)
            calls = {"dense": _calls(lambda: dense(x)), "compact": _calls(lambda: compact(x))}
            times = {"dense": [], "compact": []}
            for _ in range(repeats):
                times["dense"].append(_timed(lambda: dense(x), calls["dense"]))
                times["compact"].append(_timed(lambda: compact(x), calls["compact"]))
            ratios.append(statistics.median(times["compact"]) / statistics.median(times["dense"]))
    return ratios


class DenseLinear(nn.Module):
    """The dense reference: ``F.linear`` of a plain weight and bias."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n))
        self.bias = nn.Parameter(torch.empty(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def layers(args) -> None:
    print(f"\nPart 2: time of a compact model's forward pass / dense F.linear, median of {args.repeats} "
          f"alternating runs; {args.threads} thread(s)\n")
    print("| model | s | capacity | k | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(BATCHES))
    cases = [(f"Linear {args.layer_width}x{args.layer_width}", lambda: DenseLinear(args.layer_width),
              args.layer_width),
             ("MLP 784-256x4-10", lambda: build_model("mlp", channels=1, image_size=28, num_classes=10), 784)]
    for name, build, width in cases:
        for s in LAYER_BLOCK_SIZES:
            for capacity in args.capacities:
                torch.manual_seed(0)
                model = build()
                config = momos.MoMosConfig(block_size=s, capacity=capacity, seed=0)
                k = config.motifs_for(-(-sum(p.numel() for p in model.parameters()) // s))
                ratios = layer_ratios(model, width, config, args.repeats)
                print(f"| {name} | {s} | {capacity} | {k} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small version: 4 x 512^2 stack, a 1024^2 layer, capacity 0.01 only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--repeats", type=int, default=3, help="timed samples per measurement (median)")
    parser.add_argument("--project", action="store_true",
                        help="part 1: project the stack (approximate assignment; minutes) instead of making its mosaic")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)   # relative-error warnings of random weights: no news here
    if args.child:
        child(*args.child, args.layers, args.width, args.repeats)
        return
    args.layer_width, args.capacities = 4096, LAYER_CAPACITIES
    if args.quick:
        args.layers, args.width, args.layer_width, args.capacities = 4, 512, 1024, (0.01,)
    loading(args)
    layers(args)


if __name__ == "__main__":
    main()
