"""``momos train``: train a model with or without MoMos / QAT and record the run in a folder."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict

from momos.cli.common import add_projection_arguments, add_step_arguments, check_positive, step_runtime
from momos.cli.options import add_dataclass_arguments, dataclass_from_args, option_flag

DESCRIPTION = """\
Train a model and record the run: results.json (config, one entry per epoch, summary),
metrics.csv (one row per epoch), init/best/final checkpoints (safetensors), the motif counts of
the last projection and the state needed by --resume. Every file is written atomically.

Prints a header (model, data, method, threads, device), one line per epoch and the final test
line; a progress bar per epoch only on a terminal; --quiet prints the final line alone.

Without arguments: MoMos (s=4, capacity 0.01, force-zero) on an MLP, on scikit-learn's bundled
8x8 digits, 30 epochs of batch 32, AdamW lr 3e-4 with a cosine schedule; offline, seconds.

Optimizer defaults follow the paper: SGD lr 0.1, momentum 0.9, weight decay 1e-4 for ResNets;
AdamW lr 3e-4, weight decay 1e-2 otherwise; cosine schedule; batch 128 and 10 epochs except on
digits. Data sets other than digits are read from --data-dir or $MOMOS_DATA (default
~/.cache/momos/data) and downloaded there when missing, unless --no-download.

Faster on a CPU, for convolutional networks (ResNet-20): --channels-last --compile, 1.3-1.4x
the images per second in bench/train_throughput.py after minutes of compiling; the MLP and ViT
gain nothing from them. --precision bf16 needs native bfloat16 (a GPU since Ampere, a CPU with
AVX512-BF16 or AMX).

Exit codes: 0 the run is complete; 2 bad input (one line, nothing written); 3 the training
diverged (a NaN or infinite loss or weight): one line names the epoch and step, results.json
says summary.stopped "diverged", and the other run files keep the last completed epoch;
continue with a lower learning rate: momos train --resume DIR --lr X."""

# The exit code of a diverged run (2 is bad input).
EXIT_DIVERGED = 3


def register(subparsers) -> None:
    from momos.runtime import ONE_THREAD_BELOW
    from momos.trainlog import LOGS
    from momos.trainconfig import TrainConfig

    parser = subparsers.add_parser("train", help="train a model (baseline, qat, momos, momos+qat) and record the run",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)

    def options(group, *names: str) -> None:
        add_dataclass_arguments(group, TrainConfig, only=names, **TRAIN_OPTIONS)

    options(parser.add_argument_group("what to train"),
            "dataset", "model", "method", "init_from", "init_weights", "metrics")
    options(parser.add_argument_group("optimization"),
            "epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule",
            "label_smoothing")
    options(parser.add_argument_group("data"),
            "data_dir", "download", "val_fraction", "split_seed", "train_subset", "augment", "randaugment")
    options(parser.add_argument_group("quantization-aware training (methods qat, momos+qat)"), "qat_bits")
    momos = parser.add_argument_group("MoMos (methods momos, momos+qat; default s=4, capacity 0.01, force-zero)")
    add_projection_arguments(momos, seed_help="seed of the model initialization, data order and motifs")
    options(momos, "every_n_steps", "warmup_epochs", "anneal_from", "anneal_epochs", "reestimate_bn")

    run = parser.add_argument_group("run folder")
    run.add_argument("--out", help="run folder (default: the next runs/NNN)")
    run.add_argument("--overwrite", action="store_true", help="replace the run held in --out")
    run.add_argument("--resume", metavar="DIR",
                     help="continue the interrupted run in DIR (no other options but the runtime ones, --data-dir, "
                          "--log, --quiet and --lr, which sets a new base learning rate from there on)")
    run.add_argument("--log", choices=LOGS,
                     help="also write TensorBoard events, to the run folder's tensorboard/ (pip install 'momos[tensorboard]')")
    run.add_argument("--quiet", action="store_true",
                     help="print only the final line (test accuracy, run folder): no header, epoch lines or bars")
    run.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)

    runtime = parser.add_argument_group("runtime (how the steps compute; results.json records it; --resume may "
                                        "choose anew)")
    runtime.add_argument("--device", default="cpu",
                         help="cpu (default) or cuda (under torchrun: each process's own GPU, nccl), cuda:N")
    runtime.add_argument("--threads", type=int,
                         help=f"CPU threads for torch per process (default: 1 below {ONE_THREAD_BELOW:.0e} "
                              f"multiply-adds per step and process; else all {os.cpu_count()} cores, shared among "
                              f"the processes of this machine under torchrun)")
    add_step_arguments(runtime)
    parser.set_defaults(handler=run_command, parser=parser)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


# How TrainConfig's fields read on the command line (the MoMos ones: cli.common).
TRAIN_OPTIONS = dict(
    flags={"qat_bits": "--q"},
    metavars={"dataset": "NAME", "model": "NAME", "method": "NAME", "init_from": "SOURCE", "init_weights": "FILE",
              "metrics": "NAME,...", "optimizer": "NAME", "schedule": "NAME", "train_subset": "N",
              "every_n_steps": "N", "qat_bits": "Q", "reestimate_bn": "N"},
    parse={"metrics": _names})

# Namespace entries that are not options, and the options --resume accepts.
_NOT_OPTIONS = ("handler", "parser", "command")
_RESUME_OPTIONS = ("resume", "quiet", "threads", "log", "device", "precision", "channels_last", "compile",
                   "data_dir", "stop_after_epoch", "lr")


def run_command(args) -> int:
    import torch

    from momos import distributed, train
    from momos.cli import UsageError
    from momos.runtime import default_threads
    from momos.trainlog import final_line

    check_positive(args, "threads")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        # Started by torchrun: its environment variables give the rank, world size and rendezvous.
        on_gpu = args.device.startswith("cuda") and torch.cuda.is_available()
        if on_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.distributed.init_process_group(backend="nccl" if on_gpu else "gloo")
    given = [name for name in vars(args) if name not in _NOT_OPTIONS
             and getattr(args, name) != args.parser.get_default(name)]
    if args.resume:
        conflicting = [option_flag(args.parser, n) for n in given if n not in _RESUME_OPTIONS]
        if conflicting:
            raise UsageError("--resume continues a run with its own configuration; drop " + ", ".join(conflicting))
        run = train.prepare_resume(args.resume, device=args.device, data_dir=args.data_dir, lr=args.lr)
    else:
        run = train.prepare(config_from_args(args, given), args.out, overwrite=args.overwrite, device=args.device)
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))   # of a torchrun on this machine
    torch.set_num_threads(args.threads or default_threads(train.work_per_step(run), sharing=processes_here))
    try:
        with _progress_on_stdout(quiet=args.quiet):
            results = train.fit(run, stop_after_epoch=args.stop_after_epoch, log=args.log,
                                **asdict(step_runtime(args)))
        if args.quiet and results is not None and results["summary"]["complete"]:
            print(final_line(results, run.out_dir))   # what the quiet logger held back
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
    """The ``momos.train`` logger's lines on stdout, or (``quiet``) none and no progress bar;
    the caller prints the final line then. Undone afterwards, so that every call of
    ``cli.main`` in one process starts afresh."""
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
    """The TrainConfig of the command line (``given``: the options set to other than their
    defaults). TrainConfig refuses options its method does not use; the error names the flag."""
    from momos.cli import UsageError
    from momos.cli.common import projection_config
    from momos.trainconfig import DEFAULT_MOMOS, MOMOS_OPTIONS, TrainConfig, UnusedOptionError

    momos_given = [name for name in given if name in MOMOS_OPTIONS]
    # Without MoMos options the config takes its method's default projection (if any).
    try:
        momos, invalid = projection_config(args) if momos_given else None, None
    except (UsageError, ValueError) as error:   # still, MoMos options for a method without come first
        momos, invalid = DEFAULT_MOMOS, error
    try:
        config = dataclass_from_args(TrainConfig, args, momos=momos)
    except UnusedOptionError as error:
        # The MoMos field TrainConfig names may be one the options left at its default.
        option = momos_given[0] if error.option == "momos" or error.option in MOMOS_OPTIONS and \
            error.option not in momos_given else error.option
        raise UsageError(error.message(option_flag(args.parser, option))) from None
    if invalid is not None:
        raise invalid
    return config
