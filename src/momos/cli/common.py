"""What several sub-commands share: the MoMos options, the training steps' runtime options, and
reading checkpoints and run folders."""

from __future__ import annotations

import argparse
from pathlib import Path


def check_positive(args, *names: str) -> None:
    """Refuse an integer option (``--threads``, ``--jobs``) given as less than 1."""
    from momos.cli import UsageError

    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def add_step_arguments(group) -> None:
    """How the training steps compute (``momos.runtime.Runtime``): ``--precision``,
    ``--channels-last``, ``--compile``; shared by ``momos train`` and ``momos sweep``."""
    from momos.runtime import PRECISIONS

    group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="bf16: forward pass and loss under bfloat16 autocast, weights, optimizer and "
                            "projection in float32; only where bfloat16 is native (a GPU since Ampere, a CPU with "
                            "AVX512-BF16 or AMX; refused elsewhere)")
    group.add_argument("--channels-last", action="store_true",
                       help="weights and batches in channels-last memory format (convolutional networks such as "
                            "resnet20; no effect on the mlp and vit)")
    group.add_argument("--compile", action="store_true",
                       help="train through torch.compile of the model (compiling takes a while at the start of "
                            "each session)")


def step_runtime(args):
    """The ``momos.runtime.Runtime`` of :func:`add_step_arguments`' options."""
    from momos.runtime import Runtime

    return Runtime(precision=args.precision, channels_last=args.channels_last, compile=args.compile)


def add_projection_arguments(parser: argparse.ArgumentParser, *, seed_help: str | None = None) -> None:
    """The MoMosConfig options, shared by every sub-command that projects (a parser or an argument
    group), made from MoMosConfig's fields: names, types, choices, defaults and help in one place."""
    from momos.cli.options import add_dataclass_arguments
    from momos.config import MoMosConfig

    add_dataclass_arguments(parser, MoMosConfig, **PROJECTION_OPTIONS,
                            helps={"seed": seed_help} if seed_help else None)


# How MoMosConfig's fields read on the command line: ``--nprobe`` stays None unless given, so that
# it can be refused without ``--assignment approximate``; ``--capacity`` and ``--num-motifs``
# exclude each other (neither: capacity 0.01, see projection_config); --motifs is the former
# name of --motif-method.
PROJECTION_OPTIONS = dict(flags={"motif_method": ("--motif-method", "--motifs")},
                          metavars={"include": "REGEX", "exclude": "REGEX", "tile_shape": "RxC", "nprobe": "N"},
                          unset=("nprobe",), exclusive=(("capacity", "num_motifs"),))
DEFAULT_CAPACITY = 0.01


def projection_config(args, default_block_size: int | None = None):
    """The MoMosConfig of the parsed options of :func:`add_projection_arguments` (``--block-size``
    unset: ``default_block_size``; neither ``--capacity`` nor ``--num-motifs``: capacity 0.01);
    the config validates itself (a ValueError is bad input)."""
    from momos import MoMosConfig
    from momos.cli import UsageError
    from momos.cli.options import dataclass_from_args

    if args.nprobe is not None and args.assignment != "approximate":
        raise UsageError("--nprobe tunes --assignment approximate; add it or drop --nprobe")
    overrides = {}
    if args.block_size is None and default_block_size is not None:
        overrides["block_size"] = default_block_size
    if args.capacity is None and args.num_motifs is None:
        overrides["capacity"] = DEFAULT_CAPACITY
    return dataclass_from_args(MoMosConfig, args, **overrides)


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
