"""Which statistic sets the power-of-two scales of ``normalize="channel"``: RMS or absmax?

Projects a pretrained run's model (post-training, no fine-tuning) with per-channel scales
taken from either statistic, at a few (s, capacity) points and both parameter sets, and
prints test accuracy and the worst tensor's relative error as a Markdown table. momos uses
RMS (``momos.scales.scale_exponents``); the absmax scales are passed to ``project_`` as given
scales, so both go through the same projection.

    python experiments/pretrained/scale_statistic.py runs/pretrained/mlp-fashion-mnist --data-dir DIR
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import momos
from momos.data import batches, load_dataset
from momos.runfolder import load_model
from momos.scales import EXPONENT_RANGE, scale_exponents, scales_of
from momos.train import TrainConfig

POINTS = ((2, 0.001), (4, 0.001), (4, 0.01), (8, 0.01))


def absmax_exponents(tensor: torch.Tensor) -> torch.Tensor:
    """Per-channel (dim 0) exponents of the largest magnitude, rounded in binary logarithm."""
    values = tensor.detach().double()
    peak = values.flatten(1).abs().amax(dim=1) if values.dim() >= 2 else values.abs().max()
    exponent = torch.where(peak > 0, torch.log2(peak), torch.zeros_like(peak)).round()
    return exponent.clamp(*EXPONENT_RANGE).to(torch.int16)


STATISTICS = {"rms": lambda t: scale_exponents(t, "channel"), "absmax": absmax_exponents}


def accuracy(model, data) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in batches(data.test, data.info, 500):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(data.test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `momos train` run folder")
    parser.add_argument("--data-dir", help="folder of the data sets (default $MOMOS_DATA)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.run, "final")
    config = TrainConfig.from_dict(json.loads((args.run / "results.json").read_text())["config"])
    data = load_dataset(config.dataset, args.data_dir or config.data_dir, val_fraction=config.val_fraction,
                        split_seed=config.split_seed, download=False)
    print(f"pretrained: test accuracy {accuracy(model, data):.4f}\n")
    print("| statistic | s | capacity | parameters | test accuracy | worst relative error |")
    print("|---|---|---|---|---|---|")
    for name, statistic in STATISTICS.items():
        for s, capacity in POINTS:
            for parameters in ("all", "matrices"):
                cfg = momos.MoMosConfig(block_size=s, capacity=capacity, normalize="channel", parameters=parameters)
                projected = copy.deepcopy(model)
                given = [scales_of(statistic(p)) for _, p in momos.select_parameters(projected, cfg)]
                stats = momos.project_(projected, cfg, scales=given, warn_relative_error=None, keep_nonzero=False)
                print(f"| {name} | {s} | {capacity} | {parameters} | {accuracy(projected, data):.4f} "
                      f"| {max(stats.relative_errors.values()):.3f} |")


if __name__ == "__main__":
    main()
