"""``momos compress``: project a pretrained model, fine-tune it by distillation, evaluate, export."""

from __future__ import annotations

import argparse

from momos.cli.options import add_dataclass_arguments, dataclass_from_args
from momos.cli.common import add_projection_arguments

DESCRIPTION = """\
momos compress SOURCE -o OUT_DIR [options]

SOURCE is a `momos train` run folder, a .safetensors state dict (with --model and --dataset),
hf:PATH (a local Hugging Face model folder), timm:NAME or torchvision:NAME (with --weights FILE).
Nothing is downloaded.

The model is projected onto a mosaic (every MoMos option, --calibration N for input-weighted
assignment), fine-tuned for --steps N (or --epochs E) by distillation from the original (KL of
temperature-softened logits, mixed with cross-entropy on labels by --distill-weight; cosine
similarity of the outputs for embedding models), projected every --every-n-steps M and at the
end, evaluated after each stage, and exported. OUT_DIR receives results.json (accuracy and
agreement with the original after each stage, bits per weight, times), projected.safetensors,
final.safetensors and model.momos. Run the same command again to finish an interrupted run.

Data: images of --dataset (default: a run's own data set; fine-tuned on its training split,
evaluated on its test split), or --text-file FILE for a Hugging Face text model (one text per
line, or label<TAB>text; the last tenth is held out for evaluation).

Exit codes: 0 done; 2 bad input (one line, nothing written)."""


def register(subparsers) -> None:
    from momos.compress import CompressConfig
    from momos.finetune import FinetuneConfig

    parser = subparsers.add_parser(
        "compress", help="project a pretrained model, fine-tune it by distillation, export it",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", metavar="SOURCE", help="run folder, .safetensors, hf:PATH, timm:NAME, torchvision:NAME")
    parser.add_argument("-o", "--out", required=True, help="the run folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace the run held in --out")
    source = parser.add_argument_group("source")
    add_dataclass_arguments(source, CompressConfig, only=("model", "weights", "checkpoint", "num_classes", "image_size"))
    data = parser.add_argument_group("data")
    add_dataclass_arguments(data, CompressConfig, only=("dataset", "text_file", "data_dir", "batch_size", "epochs",
                                                        "calibration"))
    mosaic = parser.add_argument_group("mosaic (default s=4, capacity 0.01, force-zero)")
    add_projection_arguments(mosaic, seed_help="seed of the motifs and the data order")
    tuning = parser.add_argument_group("fine-tuning")
    add_dataclass_arguments(tuning, FinetuneConfig, metavars={"reestimate_bn": "N"})
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    runtime.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    runtime.add_argument("--quiet", action="store_true", help="no stage lines; only the final summary")
    parser.set_defaults(handler=run, steps=None)


def run(args) -> int:
    import json

    import torch

    from momos.cli import UsageError
    from momos.cli.common import check_positive, projection_config
    from momos.compress import CompressConfig, compress
    from momos.finetune import FinetuneConfig
    from momos.runtime import resolve_device

    if args.steps is not None and args.epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    check_positive(args, "threads")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    finetune = dataclass_from_args(FinetuneConfig, args)   # --steps unset: the field's default
    config = dataclass_from_args(CompressConfig, args, source=args.source, seed=args.seed,
                                 momos=projection_config(args), finetune=finetune)
    results = compress(config, args.out, overwrite=args.overwrite, device=resolve_device(args.device),
                       log=(lambda line: None) if args.quiet else _log)
    summary = {stage: {k: v for k, v in results[stage].items() if k != "projection"}
               for stage in ("original", "projected", "finetuned", "file")}
    print(json.dumps({"out": args.out, **summary}, indent=2))
    return 0


def _log(line: str) -> None:
    import sys

    print(f"momos compress: {line}", file=sys.stderr, flush=True)
