"""``momos export``: write a run's (or a checkpoint's) mosaic as a compact ``.momos`` file, an ONNX file or both."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from momos.cli.common import add_projection_arguments, state_dict_module
from momos.data import INFOS

DESCRIPTION = """\
momos export RUN_DIR -o model.momos          the final checkpoint of a `momos train` run, cut into
                                             blocks as the run's own MoMos configuration says
momos export CHECKPOINT.safetensors -o ...   any safetensors state dict; give --block-size and
                                             --capacity/--num-motifs (every floating tensor is a
                                             candidate: --exclude running_ for BatchNorm statistics)
momos export RUN_DIR --onnx model.onnx       an ONNX file that holds the mosaic as motif tables plus
                                             indices, each weight rebuilt (Gather) before its use;
                                             a state dict also needs --model and --dataset (-o as well
                                             writes the .momos file too)

The selected parameters must already be an exact mosaic (a trained MoMos model is); --project
projects them first. The projection options override a run's own configuration.

A normalized mosaic (--normalize tensor/channel) is made of scale x motif values, and the
scales are not in the weights: a checkpoint of a normalized `momos train` run records them
(safetensors metadata scale_exponents) and export uses them. A checkpoint without them
needs --project (which measures fresh scales).

A `momos+qat` run is exported as the model its forward pass computes with: the latent
weights (the mosaic) plus its fake quantization (which weights, how many bits), so that
momos.load gives back the quantized weights bit for bit (format version 3)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a MoMos run or checkpoint as a compact .momos file",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT", help="run folder or .safetensors checkpoint")
    parser.add_argument("-o", "--out", help="output .momos file")
    parser.add_argument("--onnx", metavar="FILE", help="output .onnx file (needs momos[onnx])")
    parser.add_argument("--model", help="with --onnx and a state dict: its architecture (mlp, resnet20, vit, a timm name)")
    parser.add_argument("--dataset", choices=tuple(INFOS),
                        help="with --onnx and a state dict: the data set that fixes its input shape and classes")
    parser.add_argument("--checkpoint", choices=("init", "best", "final"), default="final",
                        help="which checkpoint of a run folder (default final)")
    parser.add_argument("--project", action="store_true",
                        help="project the parameters onto a mosaic before saving")
    parser.add_argument("--motif-storage", choices=("auto", "float16", "bfloat16", "float32", "float64"),
                        default="auto", help="auto: the smallest lossless form (default); a dtype casts")
    parser.add_argument("--index-coding", choices=("auto", "packed", "rans"), default="auto",
                        help="auto: the smaller of bit-packed and entropy-coded, per codebook (default)")
    projection = parser.add_argument_group("mosaic (default for a run: its own MoMos configuration)")
    add_projection_arguments(projection)
    # None means "not given", so that a run's own configuration applies.
    parser.set_defaults(handler=run, block_size=None)


def run(args) -> int:
    from momos.cli import UsageError

    if not (args.out or args.onnx):
        raise UsageError("nothing to write: give -o FILE.momos, --onnx FILE.onnx or both")
    path = Path(args.path)
    model, config, metadata = load_model_and_config(path, args)
    if config is None:
        raise UsageError("no MoMos configuration: give --block-size and --capacity or --num-motifs")
    scales = export_scales(model, config, path, args)
    network = onnx_network(path, args, model) if args.onnx else None   # bad options refused before any work
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "model.momos"
        info = save_momos(model, out, config, scales, metadata, args)
        if args.out:
            from momos.cli.inspect import print_summary

            print(f"wrote {args.out}")
            print_summary(info)
        if args.onnx:
            export_onnx_file(out, *network, args.onnx)
    return 0


def save_momos(model, out, config, scales, metadata, args):
    from momos.cli import UsageError
    from momos.fileformat import save

    try:
        return save(model, out, config, scales=scales, project=args.project,
                    motif_storage=args.motif_storage, index_coding=args.index_coding, metadata=metadata)
    except (TypeError, ValueError) as error:
        raise UsageError(cli_hint(str(error))) from None


def onnx_network(path: Path, args, model):
    """``(module, example input)`` for --onnx: a run's own model and data set, or the
    architecture that --model and --dataset name for a state dict (which has no forward pass)."""
    import torch

    from momos.cli import UsageError
    from momos.models import model_for_dataset
    from momos.runfolder import read_config

    if path.is_dir() or _is_run_checkpoint(path):
        if args.model or args.dataset:
            raise UsageError("--model and --dataset are for a state dict: a run folder knows its own")
        dataset = read_config(path if path.is_dir() else path.parent).dataset
    elif not (args.model and args.dataset):
        raise UsageError("--onnx of a state dict needs its architecture: give --model NAME and --dataset NAME")
    else:
        dataset = args.dataset
        model = model_for_dataset(args.model, INFOS[dataset])
    return model, torch.zeros(1, *INFOS[dataset].shape)


def export_onnx_file(momos_file, network, example, onnx_path) -> None:
    """The .momos file's mosaic loaded compact into ``network``, written as ONNX: the file's
    configuration, scales and quantization are what the ONNX graph rebuilds."""
    from momos.fileformat import load
    from momos.onnx import export_onnx

    size = export_onnx(load(momos_file, network, compact=True), example, onnx_path)
    print(f"wrote {onnx_path} ({size:,} bytes: motif tables and indices, batch dimension dynamic)")


# momos.save's advice for a model that is not a mosaic names the Python API; this is the CLI's.
_API_HINT = "; project the model first (momos.project_"
_CLI_HINT = ("; add --project to project it first, or give the MoMos options (and a checkpoint with the "
             "scales) it was trained with")


def cli_hint(message: str) -> str:
    """``message`` with the Python API's fix replaced by the command line's."""
    head, found, _ = message.partition(_API_HINT)
    return head + _CLI_HINT if found else message


def load_model_and_config(path: Path, args):
    """``(module, MoMosConfig or None, metadata)`` for a run folder, a run's checkpoint or a state dict.

    A run's model keeps its fake quantization (QAT): momos.save records it in the file.
    """
    from momos.cli.common import load_checkpoint, projection_config

    if path.is_file() and not _is_run_checkpoint(path):
        config = projection_config(args) if args.block_size else None
        return state_dict_module(path), config, {"source": path.name}
    model, config = load_checkpoint(path, args)
    return model, config, {"source": path.resolve().name}


def export_scales(model, config, path: Path, args):
    """The scales to save a normalized mosaic with: those the checkpoint records (by name).

    With --project they are the scales to project at when they fit the configuration; else
    the projection measures its own. Without --project a normalized export needs them.
    """
    from momos.cli import UsageError
    from momos.cli.common import checkpoint_path, recorded_scales
    from momos.project import select_parameters
    from momos.qat import latent_names
    from momos.scales import given_exponents

    if config.normalize == "none":
        return None
    recorded = recorded_scales(path, args)
    if recorded is None:
        if args.project:
            return None
        raise UsageError(f"normalize={config.normalize!r}: {checkpoint_path(path, args)} records no scales, and a "
                         "normalized mosaic cannot be read from its weights alone (a checkpoint of a normalized "
                         "momos train run records them once it has projected); use --project to project it")
    try:
        selected = select_parameters(model, config)
        plain = latent_names(model)  # the checkpoint records a fake-quantized weight by its plain name
        given_exponents([p for _, p in selected], config.normalize, recorded,
                        names=[plain.get(n, n) for n, _ in selected])
    except (TypeError, ValueError) as error:
        if args.project:
            return None
        raise UsageError(f"the scales recorded in {checkpoint_path(path, args)} do not fit this configuration: "
                         f"{error}") from None
    return recorded


def _is_run_checkpoint(path: Path) -> bool:
    return path.stem in ("init", "best", "final") and (path.parent / "results.json").is_file()
