"""``momos project``: project a safetensors checkpoint onto a mosaic and report the statistics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from momos.cli.common import add_projection_arguments, projection_config, state_dict_module

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


def run(args) -> int:
    from momos import project_, warn_if_slow
    from momos.cli import UsageError
    from momos.runfolder import save_projection

    config = projection_config(args)
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
    state = save_projection(Path(args.out), module, stats)
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
    from momos.cli.common import load_checkpoint

    model, _ = load_checkpoint(run_dir, argparse.Namespace(**{**vars(args), "block_size": None}))
    if args.calibration is None:
        return model, None
    from momos.data import DatasetError, batches, load_dataset, random_subset
    from momos.runfolder import read_config

    config = read_config(run_dir)
    try:
        data = load_dataset(config.dataset, args.data_dir or config.data_dir, val_fraction=config.val_fraction,
                            split_seed=config.split_seed, download=False)
        images = random_subset(data.train, args.calibration, seed=config.split_seed)
    except (DatasetError, ValueError) as error:
        raise UsageError(f"--calibration: {error}") from None
    return model, [x for x, _ in batches(images, data.info, 64)]


def _checkpoint_module(path: Path):
    """A checkpoint as a module whose BatchNorm running statistics are frozen (not selected)."""
    module = state_dict_module(path)
    # Running statistics become parameters like every floating tensor; frozen, only --include
    # (which selects by name, frozen parameters too) projects them.
    for name, param in module.named_parameters():
        if _is_buffer(name):
            param.requires_grad_(False)
    return module
