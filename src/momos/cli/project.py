"""``momos project``: project a safetensors checkpoint onto a mosaic and report the statistics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Tensor names of BatchNorm's running statistics: state, not weights, though as floating as them.
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")

DESCRIPTION = """\
momos project CHECKPOINT.safetensors -o OUT.safetensors   every floating tensor of a state dict but
                                                          BatchNorm's running statistics
momos project RUN_DIR -o OUT.safetensors                  the parameters of a `momos train` run's
                                                          model (--checkpoint final by default)

Projects the weights onto a mosaic (post-training) and prints the statistics as JSON; one line
on stderr says what was projected and which tensors were left out as buffers (running_mean,
running_var, num_batches_tracked: a checkpoint's are projected only when --include names them);
a UserWarning names the tensors the projection moved far (relative error above 0.3).
--calibration N (run folders only) weighs every weight by how strongly its input drives the
layer's output, measured on N training images of the run's data set."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "project", help="project the weights of a checkpoint or run onto a mosaic",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="CHECKPOINT_OR_RUN_DIR", help="a .safetensors file or a run folder")
    parser.add_argument("-o", "--out", required=True, help="output .safetensors file")
    parser.add_argument("--checkpoint", choices=("init", "best", "final"), default="final",
                        help="which checkpoint of a run folder (default final)")
    parser.add_argument("--calibration", type=int, metavar="N",
                        help="calibrate the assignment on N training images (run folders only)")
    parser.add_argument("--data-dir", help="folder of the data sets, for --calibration "
                                           "(default: the run's, else $MOMOS_DATA)")
    add_projection_arguments(parser)
    parser.set_defaults(handler=run)


def add_projection_arguments(parser: argparse.ArgumentParser, *,
                             seed_help: str = "seed of the motif generator") -> None:
    """The MoMosConfig options, shared by every sub-command that projects (a parser or an argument group)."""
    parser.add_argument("--block-size", type=int, default=4, help="values per block, s (default 4)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--capacity", type=float, help="k / number of blocks, in (0, 1]")
    group.add_argument("--num-motifs", type=int, help="k, the number of motifs")
    parser.add_argument("--force-zero", action=argparse.BooleanOptionalAction, default=True,
                        help="make motif 0 the zero block (default: on)")
    parser.add_argument("--scope", choices=("global", "per_tensor"), default="global",
                        help="one codebook for the model, or one per tensor")
    parser.add_argument("--normalize", choices=("none", "tensor", "channel"), default="none",
                        help="divide each tensor (or output channel) by a power-of-two scale before "
                             "it meets the shared codebook (default none, the paper's)")
    parser.add_argument("--parameters", choices=("all", "matrices"), default="all",
                        help="project every trainable parameter (default), or only those of 2+ dimensions")
    parser.add_argument("--include", action="append", metavar="REGEX",
                        help="project exactly the parameters whose name matches (repeatable; frozen ones and "
                             "a checkpoint's running statistics too); --exclude then removes names")
    parser.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                        help="leave parameters whose name matches free (repeatable)")
    parser.add_argument("--motif-bits", type=int, help="quantize the motifs to this many bits")
    parser.add_argument("--motifs", choices=("sample", "kmeans", "persistent"), default="sample",
                        help="random blocks (the paper's), k-means refined, or a persistent refined codebook")
    parser.add_argument("--kmeans-iterations", type=int, default=5,
                        help="Lloyd iterations for --motifs kmeans/persistent (default 5)")
    parser.add_argument("--tile-shape", metavar="RxC",
                        help="cut tensors of 2+ dimensions into RxC tiles (R*C = block size), e.g. 3x3")
    parser.add_argument("--assignment", choices=("exact", "approximate"), default="exact",
                        help="nearest-motif search: exact, or an inverted file for huge codebooks")
    parser.add_argument("--nprobe", type=int, metavar="N",
                        help="cells of the inverted file searched per block by --assignment approximate; more "
                             "is slower and closer to exact (default 4)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def config_from_args(args):
    """A validated MoMosConfig from parsed arguments; bad values become a UsageError."""
    from momos import MoMosConfig
    from momos.cli import UsageError

    capacity = args.capacity
    if capacity is None and args.num_motifs is None:
        capacity = 0.01
    if args.nprobe is not None and args.assignment != "approximate":
        raise UsageError("--nprobe tunes --assignment approximate; add it or drop --nprobe")
    # Unset options keep MoMosConfig's defaults.
    optional = {"nprobe": args.nprobe} if args.nprobe is not None else {}
    tile_shape = None
    if args.tile_shape is not None:
        try:
            tile_shape = tuple(int(size) for size in args.tile_shape.lower().split("x"))
        except ValueError:
            raise UsageError(f"--tile-shape must look like 3x3, got {args.tile_shape!r}") from None
    return MoMosConfig(block_size=args.block_size, capacity=capacity, num_motifs=args.num_motifs,
                       force_zero=args.force_zero, scope=args.scope, exclude=tuple(args.exclude),
                       include=tuple(args.include) if args.include else None,
                       normalize=args.normalize, parameters=args.parameters,
                       motif_bits=args.motif_bits, seed=args.seed, motifs=args.motifs,
                       kmeans_iterations=args.kmeans_iterations, tile_shape=tile_shape,
                       assignment=args.assignment, **optional)


def run(args) -> int:
    from momos import project_, warn_if_slow
    from momos.cli import UsageError
    from momos.io import save_safetensors_atomic
    from momos.train import plain_state_dict, scale_metadata

    config = config_from_args(args)
    path = Path(args.source)
    if args.calibration is not None and args.calibration < 1:
        raise UsageError(f"--calibration must be a positive number of images, got {args.calibration}")
    if path.is_dir():
        module, calibration = _run_model(path, args)
    else:
        if args.calibration is not None:
            raise UsageError("--calibration needs a run folder: the model has to run on the images")
        module, calibration = _checkpoint_module(path), None
    warn_if_slow(module, config)
    stats = project_(module, config, calibration=calibration)
    # the scales of a normalized mosaic are not in its weights: recorded as a checkpoint records them
    metadata = None if stats.scales is None else scale_metadata(list(stats.parameter_names), stats.scales)
    state = plain_state_dict(module)
    save_safetensors_atomic(state, args.out, metadata=metadata)
    print(selection_line(state, stats), file=sys.stderr)
    print(json.dumps(stats.summary(), indent=2))
    return 0


def selection_line(state: dict, stats) -> str:
    """What the projection selected: tensors and values, and the buffers it left out."""
    buffers = [name for name in state if _is_buffer(name) and name not in stats.parameter_names]
    line = (f"momos project: projected {len(stats.parameter_names)} of {len(state)} tensors "
            f"({stats.num_weights:,} values)")
    if buffers:
        shown = ", ".join(buffers[:3]) + (", ..." if len(buffers) > 3 else "")
        plural = "s" if len(buffers) > 1 else ""
        line += f"; left out {len(buffers)} buffer{plural} ({shown}; --include REGEX selects running statistics)"
    return line


def _is_buffer(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in BUFFER_NAMES


def _run_model(run_dir: Path, args):
    """The run's model with the chosen checkpoint's weights, and its calibration batches (or None)."""
    from momos.cli import UsageError
    from momos.cli.complexity import load_source

    model, _ = load_source(run_dir, argparse.Namespace(**{**vars(args), "block_size": None}))
    if args.calibration is None:
        return model, None
    from momos.data import DatasetError, batches, load_dataset, random_subset
    from momos.train import TrainConfig

    config = TrainConfig.from_dict(json.loads((run_dir / "results.json").read_text())["config"])
    try:
        data = load_dataset(config.dataset, args.data_dir or config.data_dir, val_fraction=config.val_fraction,
                            split_seed=config.split_seed, download=False)
        images = random_subset(data.train, args.calibration, seed=config.split_seed)
    except (DatasetError, ValueError) as error:
        raise UsageError(f"--calibration: {error}") from None
    return model, [x for x, _ in batches(images, data.info, 64)]


def state_dict_module(path: Path):
    """Every tensor of a safetensors file (floating ones as parameters), names kept, so that
    --include/--exclude patterns match the checkpoint's tensor names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from momos.cli import UsageError
    from momos.fileformat import module_of_state_dict

    try:
        return module_of_state_dict(load_file(path))
    except (OSError, SafetensorError) as error:
        raise UsageError(f"cannot read {path} as safetensors: {error}") from None


def _checkpoint_module(path: Path):
    """A checkpoint as a module whose BatchNorm running statistics are frozen (not selected)."""
    module = state_dict_module(path)
    # Running statistics become parameters like every floating tensor; frozen, only --include
    # (which selects by name, frozen parameters too) projects them.
    for name, param in module.named_parameters():
        if _is_buffer(name):
            param.requires_grad_(False)
    return module
