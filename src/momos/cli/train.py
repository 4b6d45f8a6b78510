"""``momos train``: train a model with or without MoMos / QAT and record the run in a folder."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import contextmanager

from momos.cli.common import add_projection_arguments

DESCRIPTION = """\
Train a model and record the run: results.json (config, one entry per epoch, summary),
init/best/final checkpoints (safetensors), the motif counts of the last projection and the
state needed by --resume. Every file is written atomically.

Without arguments: MoMos (s=4, capacity 0.01, force-zero) on an MLP, on scikit-learn's bundled
8x8 digits, 30 epochs of batch 32, AdamW lr 3e-4 with a cosine schedule; offline, seconds.

Optimizer defaults follow the paper: SGD lr 0.1, momentum 0.9, weight decay 1e-4 for ResNets;
AdamW lr 3e-4, weight decay 1e-2 otherwise; cosine schedule; batch 128 and 10 epochs except on
digits. Data sets other than digits are read from --data-dir or $MOMOS_DATA (default
~/.cache/momos/data) and downloaded there when missing, unless --no-download.

Exit codes: 0 the run is complete; 2 bad input (one line, nothing written); 3 the training
diverged (a NaN or infinite loss or weight): one line names the epoch and step, results.json
says summary.stopped "diverged", and the other run files keep the last completed epoch;
continue with a lower learning rate: momos train --resume DIR --lr X."""

# The exit code of a diverged run (2 is bad input).
EXIT_DIVERGED = 3


def register(subparsers) -> None:
    from momos.data import DATASETS
    from momos.models import MODELS
    from momos.trainconfig import METHODS, OPTIMIZERS, SCHEDULES

    parser = subparsers.add_parser("train", help="train a model (baseline, qat, momos, momos+qat) and record the run",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to train")
    what.add_argument("--dataset", default="digits", metavar="NAME",
                      help=f"{', '.join(DATASETS)} (default digits)")
    what.add_argument("--model", default="mlp", metavar="NAME",
                      help=f"{', '.join(MODELS)} or a timm model name, e.g. vit_tiny_patch16_224 (default mlp)")
    what.add_argument("--method", default="momos", metavar="NAME", help=f"{', '.join(METHODS)} (default momos)")
    what.add_argument("--init-from", metavar="SOURCE",
                      help="start from the weights of a run folder or a .safetensors state dict of the same "
                           "model and data set, or timm:NAME with --init-weights FILE (NAME = --model) "
                           "(default: random initialization)")
    what.add_argument("--init-weights", metavar="FILE", help="the weight file of a timm: --init-from")
    what.add_argument("--metrics", type=_names, default=(), metavar="NAME,...",
                      help="complexity metrics logged at epoch 0 and after every epoch")

    how = parser.add_argument_group("optimization")
    how.add_argument("--epochs", type=int, help="number of epochs (default 10; 30 on digits)")
    how.add_argument("--batch-size", type=int, help="batch size (default 128; 32 on digits)")
    how.add_argument("--optimizer", metavar="NAME", help=f"{', '.join(OPTIMIZERS)} (default: by model)")
    how.add_argument("--lr", type=float, help="learning rate (default: by optimizer)")
    how.add_argument("--weight-decay", type=float, help="weight decay (default: by optimizer)")
    how.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    how.add_argument("--schedule", default="cosine", metavar="NAME", help=f"{', '.join(SCHEDULES)} (default cosine)")

    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", help="folder of the data sets (default $MOMOS_DATA, else ~/.cache/momos/data)")
    data.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                      help="download a missing data set through torchvision (default: on)")
    data.add_argument("--val-fraction", type=float, default=0.05,
                      help="share of the training split held out for validation (default 0.05)")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the validation split (default 0)")
    data.add_argument("--train-subset", type=int, metavar="N",
                      help="train on N images drawn at random (with --split-seed) from the training split")
    data.add_argument("--augment", action=argparse.BooleanOptionalAction,
                      help="random crop (padding 4) and horizontal flip (default: on for cifar10 only)")
    data.add_argument("--randaugment", action="store_true", help="add RandAugment(2, 9)")

    qat = parser.add_argument_group("quantization-aware training (methods qat, momos+qat)")
    qat.add_argument("--q", type=int, help="bits of the fake-quantized weights (default 8)")

    momos = parser.add_argument_group("MoMos (methods momos, momos+qat; default s=4, capacity 0.01, force-zero)")
    add_projection_arguments(momos, seed_help="seed of the model initialization, data order and motifs (default 0)")
    momos.add_argument("--every-n-steps", type=int, metavar="N",
                       help="project every N optimizer steps instead of at every epoch end")
    momos.add_argument("--warmup-epochs", type=int, default=0, help="epochs before the first projection")
    momos.add_argument("--anneal-from", type=float,
                       help="start at this capacity and shrink geometrically to --capacity")
    momos.add_argument("--anneal-epochs", type=int, default=0, help="epochs of capacity annealing")

    run = parser.add_argument_group("run folder")
    run.add_argument("--out", help="run folder (default: the next runs/NNN)")
    run.add_argument("--overwrite", action="store_true", help="replace the run held in --out")
    run.add_argument("--resume", metavar="DIR",
                     help="continue the interrupted run in DIR (no other options but --lr, which sets a new "
                          "base learning rate from there on)")
    run.add_argument("--device", default="cpu",
                     help="cpu (default) or cuda (under torchrun: each process's own GPU, nccl), cuda:N")
    run.add_argument("--threads", type=int,
                     help=f"CPU threads for torch per process (default: all {os.cpu_count()} cores, "
                          f"shared among the processes of this machine under torchrun)")
    run.add_argument("--quiet", action="store_true", help="no progress bar and no epoch lines")
    run.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run_command, parser=parser, projection_dests=_dests(momos))


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _dests(group) -> tuple[str, ...]:
    return tuple(action.dest for action in group._group_actions)


# Namespace entries that are not options, and the options --resume accepts.
_NOT_OPTIONS = ("handler", "parser", "projection_dests", "command")
_RESUME_OPTIONS = ("resume", "quiet", "threads", "device", "data_dir", "stop_after_epoch", "lr")


def run_command(args) -> int:
    import torch

    from momos import distributed, train
    from momos.cli import UsageError

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be a positive integer, got {args.threads}")
    threads = args.threads or max(1, os.cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        # Started by torchrun: its environment variables give the rank, world size and rendezvous.
        on_gpu = args.device.startswith("cuda") and torch.cuda.is_available()
        if on_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.distributed.init_process_group(backend="nccl" if on_gpu else "gloo")
    given = [name for name in vars(args) if name not in _NOT_OPTIONS
             and getattr(args, name) != args.parser.get_default(name)]
    if args.resume:
        conflicting = [f"--{n.replace('_', '-')}" for n in given if n not in _RESUME_OPTIONS]
        if conflicting:
            raise UsageError("--resume continues a run with its own configuration; drop " + ", ".join(conflicting))
        run = train.prepare_resume(args.resume, device=args.device, data_dir=args.data_dir, lr=args.lr)
    else:
        run = train.prepare(config_from_args(args, given), args.out, overwrite=args.overwrite, device=args.device)
    torch.set_num_threads(threads)
    try:
        with _progress_on_stdout(quiet=args.quiet):
            train.fit(run, stop_after_epoch=args.stop_after_epoch)
    except train.TrainingDiverged as error:
        if distributed.rank() == 0:   # every rank stops; one line is enough
            print(f"momos train: error: {error}", file=sys.stderr, flush=True)
        distributed.barrier()   # the line is out before any rank exits and torchrun stops the others
        return EXIT_DIVERGED
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


@contextmanager
def _progress_on_stdout(*, quiet: bool):
    """The ``momos.train`` logger's lines on stdout, or (``quiet``) none and no progress bar.
    Undone afterwards, so that every call of ``cli.main`` in one process starts afresh."""
    log = logging.getLogger("momos.train")
    handler, level = logging.StreamHandler(sys.stdout), log.level
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def config_from_args(args, given: list[str]):
    """The TrainConfig of the command line; MoMos options with a method without MoMos are an error."""
    from momos.cli import UsageError
    from momos.cli.common import projection_config
    from momos.trainconfig import TrainConfig

    projection_given = [n for n in given if n in args.projection_dests and n != "seed"]
    uses_momos = "momos" in args.method
    if projection_given and not uses_momos:
        raise UsageError(f"--{projection_given[0].replace('_', '-')} is a MoMos option; "
                         f"method {args.method} does not project (use momos or momos+qat)")
    momos = projection_config(args) if uses_momos else None
    return TrainConfig(
        dataset=args.dataset, model=args.model, method=args.method, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, schedule=args.schedule, val_fraction=args.val_fraction,
        split_seed=args.split_seed, train_subset=args.train_subset, augment=args.augment,
        randaugment=args.randaugment, seed=args.seed, qat_bits=args.q, momos=momos,
        every_n_steps=args.every_n_steps, warmup_epochs=args.warmup_epochs, anneal_from=args.anneal_from,
        anneal_epochs=args.anneal_epochs, metrics=args.metrics, data_dir=args.data_dir,
        download=args.download, init_from=args.init_from, init_weights=args.init_weights)
