"""``momos complexity``: complexity metrics of a checkpoint or run, or the simplification
factor a configuration would give a model."""

from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path

from momos.cli.common import add_projection_arguments, load_checkpoint, projection_config, recorded_scales

DESCRIPTION = """\
momos complexity PATH          metrics of a checkpoint: a run folder (its final checkpoint and
                               MoMos config), one of its init/best/final .safetensors, or any
                               safetensors state dict (every floating tensor; --exclude to drop
                               some, e.g. --exclude running_ for BatchNorm statistics)
momos complexity --model NAME  the description length and simplification factor that
                               --block-size/--capacity would give the model, without training

Metrics (--metrics, comma-separated): gzip, bz2, lzma, zstd (float32 weights); the same with
_bin (w > 0, a byte per weight) or _bits (w > 0, bit-packed); bdm (binarized weights), bdm4,
bdm5, bdm6, bdm9 (weights in that many levels); sparsity, l2, entropy; mosaic (description
lengths; needs a block size: a MoMos run's own, or --block-size). A normalized mosaic's
description uses the scales its checkpoint records (a normalized `momos train` run records
them), else scales measured from the weights."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "complexity", help="measure the complexity of a checkpoint, or a configuration's simplification factor",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", help="run folder or .safetensors checkpoint")
    parser.add_argument("--metrics", metavar="NAME,...",
                        help="metrics to compute (default: gzip,bz2,lzma,zstd,bdm,sparsity,l2,entropy, "
                             "plus mosaic when a block size is known)")
    parser.add_argument("--checkpoint", choices=("init", "best", "final"), default="final",
                        help="which checkpoint of a run folder (default final)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--fast", action="store_true",
                        help="faster compressor settings (gzip 6, lzma preset 1, zstd 15): a few "
                             "percent lower ratios, not comparable with the paper's")
    parser.add_argument("--bdm-tail", choices=("recursive", "ignore"), default="recursive",
                        help="BDM on a length that is not a multiple of 12: look the leftover up in "
                             "the CTM table of its length (default), or drop it as pybdm does")
    parser.add_argument("--q", type=int, help="bits per value in the description length "
                                              "(default: --motif-bits, else 32)")
    model = parser.add_argument_group("configuration only (no PATH)")
    model.add_argument("--model", metavar="NAME", help="mlp, resnet20, vit or a timm model name")
    model.add_argument("--channels", type=int, default=3, help="input channels (default 3)")
    model.add_argument("--image-size", type=int, default=32, help="input height and width (default 32)")
    model.add_argument("--num-classes", type=int, default=10, help="classes (default 10)")
    projection = parser.add_argument_group(
        "mosaic (default for PATH: a MoMos run's own config; for --model: s=4, capacity 0.01)")
    add_projection_arguments(projection)
    # None means "not given", so that a run's own configuration applies.
    parser.set_defaults(handler=run, block_size=None)


def run(args) -> int:
    from momos.cli import UsageError

    if args.path is None and args.model is None:
        raise UsageError("nothing to measure: give PATH (a run folder or .safetensors checkpoint) "
                         "or --model NAME (a configuration's simplification factor)")
    if args.path is not None and args.model is not None:
        raise UsageError("give either PATH (a run folder or checkpoint) or --model NAME, not both")
    if args.q is not None and args.q < 1:
        raise UsageError(f"--q must be a positive integer, got {args.q}")
    report = configuration_report(args) if args.model else checkpoint_report(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_text(report)
    return 0


def configuration_report(args) -> dict:
    """The bound and factor of ``--model`` under the projection options."""
    import torch

    from momos.cli import UsageError
    from momos.complexity import description_length_from_config
    from momos.models import build_model, is_known_model

    if args.metrics:
        raise UsageError("--metrics needs PATH; --model reports the description length only")
    if not is_known_model(args.model):
        raise UsageError(f"unknown model {args.model!r}: not mlp, resnet20, vit or a timm model name")
    config = projection_config(args, default_block_size=4)
    with torch.random.fork_rng():  # the weights do not matter, only their shapes
        torch.manual_seed(0)
        try:
            model = build_model(args.model, channels=args.channels, image_size=args.image_size,
                                num_classes=args.num_classes)
        except (TypeError, ValueError, RuntimeError) as error:
            raise UsageError(f"cannot build {args.model}: {error}") from None
    length = description_length_from_config(model, config, q=args.q)
    return {"model": args.model, "config": config.to_dict(),
            "description_length": {k: v for k, v in length.as_dict().items() if v is not None},
            "warnings": []}


def checkpoint_report(args) -> dict:
    """The metrics of the model or tensors at ``args.path``."""
    from momos.cli import UsageError
    from momos.complexity import DEFAULT_METRICS, CompressorWindowWarning, measure

    source, config = load_checkpoint(Path(args.path), args)
    # Excluded parameters are frozen, so that --exclude applies with or without a block size.
    for name, parameter in source.named_parameters():
        if any(re.search(pattern, name) for pattern in args.exclude):
            parameter.requires_grad_(False)
    metrics = args.metrics or ",".join(DEFAULT_METRICS + (("mosaic",) if config else ()))
    if config is None and "mosaic" in metrics.split(","):
        raise UsageError("metric mosaic needs a block size: give --block-size (a MoMos run has its own)")
    scales = None
    if config is not None and config.normalize != "none":
        from momos.qat import latent_names

        recorded = recorded_scales(Path(args.path), args)
        if recorded is not None:  # by the model's own names (QAT parametrizes them)
            plain = latent_names(source)
            scales = {name: recorded[plain.get(name, name)] for name, _ in source.named_parameters()
                      if plain.get(name, name) in recorded}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = measure(source, metrics, config, fast=args.fast, bdm_tail=args.bdm_tail, q=args.q,
                         scales=scales)
    notes = [str(w.message) for w in caught if issubclass(w.category, CompressorWindowWarning)]
    return {"path": str(args.path), "config": config.to_dict() if config else None,
            "metrics": values, "warnings": list(dict.fromkeys(notes))}


def print_text(report: dict) -> None:
    values = report.get("metrics") or report.get("description_length")
    width = max(len(name) for name in values)
    for name, value in values.items():
        if value is None:
            continue
        shown = str(value)
        if isinstance(value, float):
            shown = f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
        print(f"{name:<{width}}  {shown}")
    for note in report["warnings"]:
        print(f"warning: {note}")
