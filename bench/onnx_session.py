"""What an onnxruntime session of a compact ONNX export holds in memory, and how fast it runs.

    python bench/onnx_session.py [--layers 8] [--width 2048]

A stack of ``--layers`` Linear ``--width`` x ``--width`` layers (default 8 x 2048^2, 33.6M
parameters) made a mosaic at once (random motifs at random indices, s=4, capacity 0.01, one
codebook per tensor) is exported twice: compact (``momos.export_onnx``: motif tables and indices,
each weight rebuilt by ``Gather`` before its ``Gemm``) and dense (``torch.onnx.export`` of the
same model). Each file is opened in its own process by onnxruntime on one thread, three ways:
its default graph optimizations (which fold constant subgraphs, the rebuilds among them),
without the ``ConstantFolding`` optimizer (``disabled_optimizers``), and with every optimization
off (``ORT_DISABLE_ALL``). Printed: the file's size, the session's resident memory after one
batch of 64 minus the level before the session was made, and the median time of a batch of 64.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

MODES = ("default", "no-constant-folding", "no-optimizations")
MB = 2**20


def child(path: str, mode: str, width: int) -> None:
    import numpy as np
    import onnxruntime as ort

    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / MB

    before = resident_mb()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    extra = {"disabled_optimizers": ["ConstantFolding"]} if mode == "no-constant-folding" else {}
    if mode == "no-optimizations":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, **extra)
    x = np.random.default_rng(0).standard_normal((64, width), dtype=np.float32)
    session.run(None, {"input": x})
    times = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - start)
    print(json.dumps({"memory_mb": resident_mb() - before, "ms": 1e3 * statistics.median(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.width)
        return

    import torch

    import momos
    from inference import make_mosaic_, stack

    warnings.simplefilter("ignore")   # relative-error warnings of random weights, exporter notes
    torch.manual_seed(0)
    model = stack(args.layers, args.width)
    config = momos.MoMosConfig(block_size=4, capacity=0.01, scope="per_tensor", force_zero=False, seed=0)
    make_mosaic_(model, config, torch.Generator().manual_seed(0))
    x = torch.randn(1, args.width)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.layers} x Linear {args.width}x{args.width} ({params / 1e6:.1f}M parameters, "
          f"{4 * params / MB:.0f} MB of float32), s=4, capacity 0.01, per-tensor codebooks; onnxruntime on one "
          f"thread\n")
    print("| export | file MB | session | memory MB | batch 64 ms |")
    print("|---|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        compact, dense = Path(folder) / "compact.onnx", Path(folder) / "dense.onnx"
        momos.export_onnx(model, x, compact, config)
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}})
        dense.write_bytes(buffer.getvalue())
        for name, path in (("compact", compact), ("dense", dense)):
            for mode in MODES:
                command = [sys.executable, __file__, "--child", str(path), mode, "--width", str(args.width)]
                result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True)
                                    .stdout.strip().splitlines()[-1])
                print(f"| {name} | {path.stat().st_size / MB:.1f} | {mode} | {result['memory_mb']:.0f} | "
                      f"{result['ms']:.1f} |")


if __name__ == "__main__":
    main()
