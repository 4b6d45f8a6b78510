"""Training throughput of ``momos train``'s runtime choices, and the share of an epoch spent on data.

    MOMOS_DATA=/path/to/data python bench/train_throughput.py [--quick] [--threads N] [--repeats 5] [--steps 5]
        [--models ResNet-20,ViT] [--qat Q]

Models: ResNet-20 and the ViT of ``momos.models`` on CIFAR-10-shaped batches of 128 random
images. Configurations: the float32 default, channels-last, compile, channels-last + compile,
bf16 (autocast) and bf16 + channels-last + compile (the bf16 ones only where this CPU has native
bfloat16, else "unsupported here"). Each has its
own copy of the model (same initial weights) and the paper's optimizer (SGD for ResNet-20, AdamW
for the ViT); a step is ``momos.train``'s: forward and loss, backward, optimizer step. ``--qat Q``
attaches Q-bit fake quantization to every copy, as ``momos+qat`` runs train. After one
warm-up step each (compile compiles there: minutes on a busy CPU, not counted), the
configurations take turns, repeat by repeat, so that all see the same machine load; a repeat
times ``--steps`` steps. The tables give the median images per second of each and its ratio to
the default (above 1: faster). ``momos train`` applies channels-last to convolutional networks
only: the ViT's row shows what it would do there (its one convolution is the patch embedding).

Data: ``data.batches`` over CIFAR-10's training split with ``augment`` (random crop and flip,
then normalization), as ``momos train`` draws its batches, in the same rotation; its share of an
epoch is (data time per batch) / (data + step time per batch). Skipped with a message when
CIFAR-10 is not in ``--data-dir`` / ``$MOMOS_DATA``.

Machine: the float32 (and bf16, where native) GFLOP/s of a 1024 x 1024 ``torch.mm``, and the
GFLOP/s each default step reaches (3 x 2 x the forward pass's multiply-adds per image: forward
plus a backward of about twice its work), the basis of a GPU estimate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.nn import functional as F

from momos.data import DatasetError, batches, load_dataset
from momos.models import build_model
from momos.qat import QATConfig, add_qat_
from momos.runtime import multiply_adds, native_bf16
from momos.train import TrainConfig, make_optimizer

SHAPE, BATCH, CLASSES = (3, 32, 32), 128, 10
MODELS = {"ResNet-20": "resnet20", "ViT": "vit"}
# name: (channels_last, compile, precision)
CONFIGURATIONS = {"default": (False, False, "fp32"), "channels-last": (True, False, "fp32"),
                  "compile": (False, True, "fp32"), "channels-last+compile": (True, True, "fp32"),
                  "bf16": (False, False, "bf16"), "bf16+channels-last+compile": (True, True, "bf16")}


def trainer(model_name: str, channels_last: bool, compile: bool, precision: str, qat_bits: int | None = None):
    """A function of no arguments that makes one training step of a fresh copy of the model
    (with ``qat_bits``-bit fake quantization attached when given)."""
    torch.manual_seed(0)
    model = build_model(model_name, channels=SHAPE[0], image_size=SHAPE[1], num_classes=CLASSES)
    if qat_bits is not None:
        add_qat_(model, QATConfig(bits=qat_bits))
    optimizer = make_optimizer(model, TrainConfig(dataset="cifar10", model=model_name))
    layout = torch.channels_last if channels_last else torch.preserve_format
    model.to(memory_format=layout)
    trained = torch.compile(model) if compile else model
    x = torch.randn(BATCH, *SHAPE).to(memory_format=layout)
    y = torch.randint(0, CLASSES, (BATCH,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(trained(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def data_source(data_dir: str | None):
    """A function of no arguments that draws the next augmented training batch, or None without CIFAR-10."""
    try:
        start = time.perf_counter()
        data = load_dataset("cifar10", data_dir, download=False)
    except DatasetError as error:
        print(f"data: skipped: {error}")
        return None
    print(f"data: CIFAR-10 read in {time.perf_counter() - start:.0f} s ({len(data.train):,} training images)")
    generator = torch.Generator().manual_seed(0)

    def epochs():
        while True:
            yield from batches(data.train, data.info, BATCH, generator=generator, augment=True, drop_last=True)

    draws = epochs()
    return lambda: next(draws)


def seconds_per_call(work, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - start) / calls


def matmul_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    return 2 * n ** 3 / statistics.median(seconds_per_call(lambda: torch.mm(a, b), 3) for _ in range(repeats)) / 1e9


def measure(works: dict, repeats: int, steps: int) -> dict[str, float]:
    """{name: median seconds per call}; one warm-up call each, then the works take turns."""
    for work in works.values():
        work()
    times = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            times[name].append(seconds_per_call(work, steps))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats of 2 steps (compiling still takes minutes)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps (and data batches) timed per repeat")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--data-dir", help="default: $MOMOS_DATA")
    parser.add_argument("--qat", type=int, metavar="Q", help="attach Q-bit fake quantization (momos+qat's steps)")
    args = parser.parse_args()
    repeats, steps = (3, 2) if args.quick else (args.repeats, args.steps)
    torch.set_num_threads(args.threads)
    bf16 = native_bf16(torch.device("cpu"))
    print(f"{os.cpu_count()} cores, {args.threads} torch threads, load average {os.getloadavg()[0]:.1f}; "
          f"batch {BATCH} of {'x'.join(map(str, SHAPE))}; median of {repeats} repeats of {steps} steps"
          + (f"; {args.qat}-bit fake quantization" if args.qat else ""))
    fp32 = matmul_gflops(torch.float32)
    print(f"torch.mm 1024x1024: float32 {fp32:.0f} GFLOP/s"
          + (f", bf16 {matmul_gflops(torch.bfloat16):.0f} GFLOP/s" if bf16 else "; bf16: unsupported here"))
    draw = data_source(args.data_dir)
    for label in args.models.split(","):
        name = MODELS[label]
        works = {config: trainer(name, *options, qat_bits=args.qat) for config, options in CONFIGURATIONS.items()
                 if options[2] != "bf16" or bf16}
        if draw is not None:
            works["data"] = draw
        seconds = measure(works, repeats, steps)
        default = seconds["default"]
        flops = 6 * multiply_adds(build_model(name, channels=3, image_size=32, num_classes=CLASSES), SHAPE)
        print(f"\n{label} (load average {os.getloadavg()[0]:.1f}): {flops / 1e6:.0f} MFLOP per training image, "
              f"default step {default * 1e3:.0f} ms = {flops * BATCH / default / 1e9:.1f} GFLOP/s "
              f"({flops * BATCH / default / 1e9 / fp32:.0%} of float32 torch.mm)")
        print(f"  {'configuration':27s} {'images/s':>9s} {'vs default':>10s}")
        for config in CONFIGURATIONS:
            if config not in seconds:
                print(f"  {config:27s} unsupported here")
                continue
            print(f"  {config:27s} {BATCH / seconds[config]:9.1f} {default / seconds[config]:10.2f}")
        if draw is not None:
            data = seconds["data"]
            fastest = min(seconds[c] for c in CONFIGURATIONS if c in seconds)
            print(f"  data (batches + augment): {data * 1e3:.1f} ms per batch = {data / (data + default):.1%} of "
                  f"an epoch's data + steps at the default, {data / (data + fastest):.1%} at the fastest")


if __name__ == "__main__":
    main()
