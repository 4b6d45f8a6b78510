"""``momos project``: project a safetensors checkpoint onto a mosaic and report the statistics."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "project", help="project the weights of a safetensors checkpoint onto a mosaic",
        description="Load a safetensors state dict, project every floating tensor onto a mosaic "
                    "and write the result to another safetensors file.")
    parser.add_argument("checkpoint", help="input .safetensors file")
    parser.add_argument("-o", "--out", required=True, help="output .safetensors file")
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
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def config_from_args(args):
    """A validated MoMosConfig from parsed arguments; bad values become a UsageError."""
    from momos import MoMosConfig
    from momos.cli import UsageError

    capacity = args.capacity
    if capacity is None and args.num_motifs is None:
        capacity = 0.01
    tile_shape = None
    if args.tile_shape is not None:
        try:
            tile_shape = tuple(int(size) for size in args.tile_shape.lower().split("x"))
        except ValueError:
            raise UsageError(f"--tile-shape must look like 3x3, got {args.tile_shape!r}") from None
    try:
        return MoMosConfig(block_size=args.block_size, capacity=capacity, num_motifs=args.num_motifs,
                           force_zero=args.force_zero, scope=args.scope, exclude=tuple(args.exclude),
                           motif_bits=args.motif_bits, seed=args.seed, motifs=args.motifs,
                           kmeans_iterations=args.kmeans_iterations, tile_shape=tile_shape,
                           assignment=args.assignment)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def run(args) -> int:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from momos import project_
    from momos.fileformat import module_of_state_dict
    from momos.cli import UsageError
    from momos.io import save_safetensors_atomic

    config = config_from_args(args)
    try:
        state = load_file(args.checkpoint)
    except (OSError, SafetensorError) as error:
        raise UsageError(f"cannot read {args.checkpoint}: {error}") from None
    # Real names, so that --exclude patterns match the checkpoint's tensor names.
    module = module_of_state_dict(state)
    try:
        stats = project_(module, config)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    projected = {name: module.state_dict()[name] for name in state}
    save_safetensors_atomic(projected, args.out)
    print(json.dumps(stats.summary(), indent=2))
    return 0
