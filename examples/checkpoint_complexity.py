"""How complex are the weights of a checkpoint? Compression ratios and description lengths.

Kolmogorov complexity cannot be computed, only bounded from above; ``momos.complexity``
gives the usual upper bounds of a ``.safetensors`` checkpoint's weights:

- compression ratios (raw float32 bytes / compressed bytes; higher = simpler) of gzip, bz2,
  lzma and zstd, and the empirical entropy of the weight values (bits per weight);
- the description length of the weights read as a mosaic of their distinct blocks of
  ``--block-size`` values (``mosaic``): the paper's bound ``k*s*q + m*ceil(log2 k)`` bits, its
  entropy-coded variant, and the algorithmic simplification factor ``n*q / bound``. For weights
  that are not a mosaic nearly every block is its own motif and the factor falls below 1.

Without a checkpoint the script makes two by training the same MLP briefly on scikit-learn's
digits, once plainly and once with MoMos (``momos.Projector``), saves both to ``--out`` and
compares them: the mosaic compresses several times better.

Run (about 10 s on one CPU thread without a checkpoint, half of it importing torch):

    python examples/checkpoint_complexity.py                         # train two, compare them
    python examples/checkpoint_complexity.py model.safetensors --block-size 4
    python examples/checkpoint_complexity.py model.safetensors --metrics gzip,lzma,bdm   # bdm: pip install pybdm

The same from the command line: ``momos complexity model.safetensors --block-size 4``.
"""

import argparse
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import momos
from momos.complexity import measure

DEFAULT_METRICS = "gzip,bz2,lzma,zstd,entropy,sparsity,mosaic"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?",
                        help="a .safetensors state dict (default: train two small ones to compare)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    parser.add_argument("--block-size", type=int, default=4, help="s for the mosaic description length")
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated (default {DEFAULT_METRICS})")
    parser.add_argument("--exclude", action="append", default=["running_"], metavar="REGEX",
                        help="leave out tensors whose name matches (default: running_, BatchNorm statistics)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def train_checkpoints(out: Path, seed: int) -> list[Path]:
    """The same MLP trained for 5 epochs on digits, without and with MoMos, saved as safetensors."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    paths = []
    for name in ("baseline", "momos"):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        projector = None
        if name == "momos":
            projector = momos.Projector(model, momos.MoMosConfig(block_size=4, capacity=0.01, seed=seed))
        for epoch in range(5):
            order = torch.randperm(1500, generator=torch.Generator().manual_seed(seed + epoch))
            for batch in order.split(64):
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if projector is not None:
                projector.epoch_end()
        if projector is not None:
            projector.finalize()
        with torch.no_grad():
            accuracy = (model(x[1500:]).argmax(1) == y[1500:]).float().mean().item()
        path = out / f"{name}.safetensors"
        save_file(model.state_dict(), path)
        print(f"trained {name}: held-out accuracy {accuracy:.4f}, saved {path}")
        paths.append(path)
    return paths


def weights_of(path: Path, exclude: list[str]) -> list[torch.Tensor]:
    """The floating tensors of a safetensors file, in the file's (name) order, minus excluded names."""
    state = load_file(path)
    return [tensor for name, tensor in state.items()
            if tensor.is_floating_point() and not any(re.search(pattern, name) for pattern in exclude)]


def main():
    args = parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="momos-complexity-"))
    out.mkdir(parents=True, exist_ok=True)
    paths = [args.checkpoint] if args.checkpoint else train_checkpoints(out, args.seed)

    # The config only tells how to cut blocks (s, scope) for the mosaic description; the number
    # of motifs is read from the weights (their distinct blocks), so the capacity is not used.
    cfg = momos.MoMosConfig(block_size=args.block_size, capacity=1.0)
    results = {path.stem: measure(weights_of(path, args.exclude), args.metrics, cfg) for path in paths}

    rows = [  # (label, key in measure's result, format)
        ("weights", "num_weights", "{:,}"),
        ("gzip ratio", "gzip", "{:.2f}"), ("bz2 ratio", "bz2", "{:.2f}"),
        ("lzma ratio", "lzma", "{:.2f}"), ("zstd ratio", "zstd", "{:.2f}"),
        ("bdm (bits)", "bdm", "{:,.0f}"), ("bdm per bit", "bdm_per_bit", "{:.3f}"),
        ("entropy (bits/weight)", "entropy", "{:.2f}"), ("sparsity", "sparsity", "{:.3f}"),
        (f"motifs (distinct blocks of {args.block_size})", "mosaic_num_motifs", "{:,}"),
        ("bound (bits/weight)", "mosaic_bound_bits_per_weight", "{:.2f}"),
        ("entropy-coded (bits/weight)", "mosaic_entropy_coded_bits_per_weight", "{:.2f}"),
        ("simplification factor", "mosaic_simplification_factor", "{:.2f}"),
    ]
    names = list(results)
    print(f"{'':32}" + "".join(f"{name:>14}" for name in names))
    for label, key, fmt in rows:
        if any(results[name].get(key) is not None for name in names):
            cells = [fmt.format(results[name][key]) if results[name].get(key) is not None else "-" for name in names]
            print(f"{label:32}" + "".join(f"{cell:>14}" for cell in cells))
    if len(names) == 2 and "lzma" in results[names[0]]:
        print(f"lzma compresses {names[1]} {results[names[1]]['lzma'] / results[names[0]]['lzma']:.1f}x "
              f"better than {names[0]}")


if __name__ == "__main__":
    main()
