"""What several sub-commands share: the MoMos options, and reading checkpoints and run folders."""

from __future__ import annotations

import argparse
from pathlib import Path


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


def projection_config(args, default_block_size: int | None = None):
    """The MoMosConfig of the parsed options of :func:`add_projection_arguments` (``--block-size``
    unset: ``default_block_size``); the config validates itself (a ValueError is bad input)."""
    from momos import MoMosConfig
    from momos.cli import UsageError

    block_size = args.block_size if args.block_size is not None else default_block_size
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
    return MoMosConfig(block_size=block_size, capacity=capacity, num_motifs=args.num_motifs,
                       force_zero=args.force_zero, scope=args.scope, exclude=tuple(args.exclude),
                       include=tuple(args.include) if args.include else None,
                       normalize=args.normalize, parameters=args.parameters,
                       motif_bits=args.motif_bits, seed=args.seed, motifs=args.motifs,
                       kmeans_iterations=args.kmeans_iterations, tile_shape=tile_shape,
                       assignment=args.assignment, **optional)


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


def load_checkpoint(path: Path, args):
    """(module or tensors, MoMosConfig or None) for a run folder or a safetensors file."""
    from momos.cli import UsageError

    if path.is_dir():
        return _run_model_and_config(path, args.checkpoint, args)
    if not path.is_file():
        raise UsageError(f"{path} does not exist")
    if path.suffix == ".safetensors" and path.stem in ("init", "best", "final") \
            and (path.parent / "results.json").is_file():
        return _run_model_and_config(path.parent, path.stem, args)
    return state_dict_module(path), projection_config(args) if args.block_size else None


def checkpoint_path(path: Path, args) -> Path:
    """The safetensors file a path names: a run folder's chosen checkpoint, or the file itself."""
    return path / f"{args.checkpoint}.safetensors" if path.is_dir() else path


def recorded_scales(path: Path, args):
    """The scales recorded in the checkpoint that ``path`` names (a run folder: its
    ``--checkpoint``), by plain parameter name; None when it records none."""
    from momos.runfolder import checkpoint_scales

    file = checkpoint_path(path, args)
    if not file.is_file():
        return None
    return checkpoint_scales(file)


def _run_model_and_config(run_dir: Path, checkpoint: str, args):
    from momos.cli import UsageError
    from momos.runfolder import RESULTS, load_model, read_config

    if not (run_dir / RESULTS).is_file():
        raise UsageError(f"{run_dir} is not a run folder (no {RESULTS})")
    if not (run_dir / f"{checkpoint}.safetensors").is_file():
        raise UsageError(f"{run_dir} has no {checkpoint}.safetensors (the run may be unfinished; "
                         "try --checkpoint best or init)")
    try:
        model = load_model(run_dir, checkpoint)
        own = read_config(run_dir).momos
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise UsageError(f"cannot load the run in {run_dir}: {error}") from None
    config = projection_config(args) if args.block_size else own
    return model, config
