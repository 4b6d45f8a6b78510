"""Training runs with a complete record: ``momos train`` as a library.

    results = train(TrainConfig(dataset="digits", model="mlp", method="momos", epochs=10), "runs/demo")
    results = resume("runs/demo")            # continues an interrupted run, bit for bit

One run, in order:

1. :func:`prepare` checks everything (names, combinations, data files, output folder) and
   builds the data, model, optimizer, scheduler and projector; nothing is written yet.
2. Epoch 0 evaluates the untrained model and writes ``init.safetensors``.
3. Every epoch: the optimizer steps over the shuffled training split, the Projector projects
   the weights after the last step (``momos`` methods) and, with ``reestimate_bn``, the
   BatchNorm statistics are re-estimated on a few training batches (:func:`reestimate_bn`);
   the scheduler steps, the projected model is validated; ``best.safetensors`` follows the
   best validation accuracy; ``results.json`` and ``state.safetensors`` (everything needed to
   resume) are rewritten.
4. The end: the final model is tested on the official test split and written to
   ``final.safetensors``, with ``motif_counts.safetensors`` for MoMos runs.

Every file is written atomically, so a run killed at any moment leaves complete files, and
:func:`resume` restarts from the last completed epoch with the same weights, optimizer,
scheduler, motif generator, RNG and data order as the uninterrupted run.

A NaN or infinite training loss (checked at every step) or weight (checked before every
projection and at every epoch end) stops the run with :class:`TrainingDiverged`: the run files
of the last completed epoch stay as they are, ``results.json`` is marked ``summary.stopped =
"diverged"``, and :func:`resume` (with a lower ``lr``) continues from that epoch.

Under ``torch.distributed`` (``torchrun ... -m momos train``) every rank draws the same
shuffled global batches and trains on its equal share of each through DistributedDataParallel,
so the gradients are those of the whole batch, as in one process; every rank projects and rank
0's mosaic is broadcast; rank 0 alone validates, measures, logs and writes.

Progress goes to the ``momos.train`` logger at INFO: a header (model and parameters, data and
split sizes, method with s and k, threads, device), ``resuming at epoch N of M`` on a resume,
one line per epoch and one for the test; while INFO shows and stderr is a terminal, a progress
bar over each epoch's steps (tqdm, on stderr). ``momos train`` prints the lines on stdout;
``--quiet`` raises the level to WARNING and prints the test line alone. ``metrics.csv`` repeats
the numbers of every epoch as a table, and ``fit(..., log="tensorboard")`` also writes them, with
every step's loss and learning rate, as TensorBoard events; the lines and events are
:mod:`momos.trainlog`'s.

Threads are the caller's: ``runtime.default_threads`` of :func:`work_per_step` is the rule
``momos train`` and the sweep follow when none are asked for. How the steps compute, never what
is trained, is also the caller's, per session (``fit``, ``train`` and ``resume`` take them as a
:class:`momos.runtime.Runtime`'s fields; ``results.json``'s ``runtime`` records the last
session's): ``precision="bf16"`` runs the forward pass and loss
under bfloat16 autocast while the weights, gradients, optimizer state, projection, evaluation
and checkpoints stay float32; ``channels_last`` holds the weights and batches of a convolutional
network in ``torch.channels_last``; ``compile`` trains through ``torch.compile`` of the model,
which shares its parameters with the model that the projector, evaluation and checkpoints use.

The files of a run folder, how they are written and how a run is read back (``load_model``)
are :mod:`momos.runfolder`'s.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import __version__, distributed, runfolder
from .batchnorm import reestimate_batchnorm_, require_batchnorm
from .config import MoMosConfig
from .data import INFOS, Dataset, ImageSplit, batches, load_dataset, num_batches, random_subset
from .models import check_model_name, model_for_dataset
from .project import ProjectionStats, select_parameters
from .projector import Projector
from .qat import QATConfig, add_qat_, plain_name
from .runfolder import BEST, FINAL, INIT, load_model_weights_, plain_state_dict
from .runtime import Runtime, check_precision, convolutional, multiply_adds, resolve_device
from .trainconfig import TrainConfig
from .trainlog import TensorBoard, check_log, epoch_line, final_line, header_line

EVAL_BATCH_SIZE = 1024

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A NaN or infinite training loss or weight; the run folder keeps its last completed epoch.

    ``epoch``, ``step``: where it happened (the epoch in progress, 1-based optimizer step in it);
    ``cause``: what was found.
    """

    def __init__(self, message: str, *, epoch: int, step: int, cause: str):
        super().__init__(message)
        self.epoch, self.step, self.cause = epoch, step, cause


@dataclass
class Run:
    """A run ready to train: its config, folder, data, model and training state."""

    config: TrainConfig
    out_dir: Path
    data: Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    projector: Projector | None
    data_generator: torch.Generator      # shuffles and augments the training split
    device: torch.device = torch.device("cpu")
    epoch: int = 0                       # epochs completed (0: not started)
    epochs_log: list[dict] = field(default_factory=list)
    best: dict | None = None             # {"epoch", "val_acc"} of best.safetensors
    elapsed: float = 0.0                 # seconds spent in earlier sessions of this run
    lr_changes: list[dict] = field(default_factory=list)   # {"epoch", "lr"}: --lr given to a resume
    warned: set[str] = field(default_factory=set)   # warnings already shown
    runtime: Runtime = Runtime()         # this session's, set by fit


# --- setting up --------------------------------------------------------------------------------

def prepare(config: TrainConfig, out_dir: str | os.PathLike | None = None, *, overwrite: bool = False,
            device: str | torch.device = "cpu") -> Run:
    """Check everything and build the run; writes nothing.

    Args:
        out_dir: the run folder; ``None`` picks the next free ``runs/NNN``.
        overwrite: replace the run files of another run in ``out_dir``.
        device: where the model trains (``cpu``, ``cuda``, ``cuda:1``); under torch.distributed
            ``cuda`` means this process's GPU, ``cuda:$LOCAL_RANK``. Not part of the config:
            a run may resume on another device.

    Raises:
        ValueError (``data.DatasetError`` included): bad names, combinations or values, missing
            or corrupt data, unknown metrics, an ``out_dir`` that holds a run without ``overwrite``.
    """
    device = resolve_device(device)
    out_dir = Path(out_dir) if out_dir is not None else runfolder.next_run_dir()
    runfolder.check_out_dir(out_dir, overwrite=overwrite)
    check_model_name(config.model)
    check_metric_names(config.metrics, config.momos)
    data = load_dataset(config.dataset, config.data_dir, val_fraction=config.val_fraction,
                        split_seed=config.split_seed, download=config.download)
    if config.train_subset is not None:
        data.train = random_subset(data.train, config.train_subset, seed=config.split_seed)
    torch.manual_seed(config.seed)
    model = model_for_dataset(config.model, data.info)
    if config.init_from is not None:
        init_weights_(model, config)
    model.to(device)
    if config.qat_bits is not None:
        add_qat_(model, QATConfig(bits=config.qat_bits))
    projector = None
    if config.momos is not None:
        projector = Projector(model, config.momos, every_n_steps=config.every_n_steps,
                              warmup_epochs=config.warmup_epochs,
                              anneal_from=config.anneal_from, anneal_epochs=config.anneal_epochs)
        select_parameters(model, config.momos)   # fails now, not after an epoch, when nothing is selected
    check_reestimate_bn(config, model, data)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    run = Run(config, out_dir, data, model, optimizer, scheduler, projector,
              torch.Generator().manual_seed(config.seed), device)
    check_process_split(run)
    return run


def check_reestimate_bn(config: TrainConfig, model: nn.Module, data: Dataset) -> None:
    """``reestimate_bn`` needs BatchNorm layers and at most a pass of training batches."""
    if not config.reestimate_bn:
        return
    require_batchnorm(model, f"reestimate_bn: model {config.model}")
    available = num_batches(data.train, config.batch_size, drop_last=True)
    if config.reestimate_bn > available:
        raise ValueError(f"reestimate_bn {config.reestimate_bn} is more than the {available} training batches "
                         f"of {config.batch_size}")


def init_weights_(model: nn.Module, config: TrainConfig) -> None:
    """Fill ``model`` with the weights of ``config.init_from`` (see the field's documentation)."""
    from .models import Resized
    from .sources import load_source

    kind = config.init_from.partition(":")[0]
    if kind in ("hf", "torchvision"):
        raise ValueError(f"init_from {config.init_from}: momos train builds its models by name ({config.model}); "
                         f"compress {kind} models with momos compress")
    if kind == "timm" and config.init_from.partition(":")[2] != config.model:
        raise ValueError(f"init_from {config.init_from} is another model than --model {config.model}")
    source = load_source(config.init_from, model_name=config.model, dataset=config.dataset,
                         weights=config.init_weights, num_classes=INFOS[config.dataset].num_classes,
                         channels=INFOS[config.dataset].shape[0])
    if isinstance(model, Resized):   # a timm model wrapped to take the data set's resolution
        model = model.model
    try:
        load_model_weights_(model, plain_state_dict(source.model))
    except (RuntimeError, ValueError) as error:   # load_state_dict raises RuntimeError on shapes
        raise ValueError(f"init_from {config.init_from} does not fit model {config.model} on {config.dataset}: "
                         f"{error}") from None


def prepare_resume(out_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                   data_dir: str | os.PathLike | None = None, lr: float | None = None) -> Run:
    """The run in ``out_dir`` rebuilt at its last completed epoch, on ``device``; writes nothing.

    ``data_dir``: read the data set from here instead of where the run first read it.
    ``lr``: a new base learning rate from here on (e.g. after the run diverged); the schedule
    goes on from where it is, scaled to it, and ``summary.lr_changes`` records the change.

    Raises:
        ValueError: ``out_dir`` holds no resumable run, its data set is no longer readable, or
            ``lr`` is not positive.
    """
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be positive, got {lr}")
    out_dir = Path(out_dir)
    state = runfolder.read_state(out_dir)
    config = TrainConfig.from_dict(json.loads(state["config"]))
    if data_dir is not None:
        config = replace(config, data_dir=str(data_dir))
    if runfolder.read_results(out_dir)["summary"]["complete"]:
        raise ValueError(f"the run in {out_dir} is complete ({config.epochs} epochs); nothing to resume")
    run = prepare(config, out_dir, overwrite=True, device=device)
    load_model_weights_(run.model, state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.projector is not None:
        run.projector.load_state_dict(state["projector"])
    run.data_generator.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    run.epoch = state["epoch"]
    run.epochs_log = json.loads(state["epochs_log"])
    run.best = json.loads(state["best"])
    run.elapsed = state["elapsed"]
    run.lr_changes = json.loads(state.get("lr_changes", "[]"))   # absent from states of older versions
    if lr is not None:
        set_base_lr_(run, lr)
    return run


def set_base_lr_(run: Run, lr: float) -> None:
    """Make ``lr`` the base learning rate of the optimizer and the scheduler from the current
    epoch on: every current rate is scaled by ``lr / base``, so the schedule keeps its shape."""
    scheduler = run.scheduler
    for group, base in zip(run.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] *= lr / base
        group["initial_lr"] = lr
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    scheduler._last_lr = [group["lr"] for group in run.optimizer.param_groups]   # what get_last_lr() reports
    run.lr_changes.append({"epoch": run.epoch, "lr": lr})


def work_per_step(run: Run) -> int:
    """The multiply-adds of the images one process takes of each batch: what
    ``runtime.default_threads`` measures a step by."""
    return multiply_adds(run.model, run.data.info.shape) * (run.config.batch_size // distributed.world_size())


def check_metric_names(names: tuple[str, ...], momos: MoMosConfig | None) -> None:
    if not names:
        return
    try:
        from .complexity import check_metrics
    except ImportError as error:
        raise ValueError(f"complexity metrics are not available: {error}") from None
    check_metrics(names, momos)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)


# --- training ----------------------------------------------------------------------------------

def train(config: TrainConfig, out_dir: str | os.PathLike | None = None, *, overwrite: bool = False,
          device: str | torch.device = "cpu", log: str | None = None, precision: str = "fp32",
          channels_last: bool = False, compile: bool = False) -> dict:
    """Train one run from scratch; returns the content of ``results.json``. ``log``,
    ``precision``, ``channels_last``, ``compile``: see :func:`fit`."""
    return fit(prepare(config, out_dir, overwrite=overwrite, device=device), log=log, precision=precision,
               channels_last=channels_last, compile=compile)


def resume(out_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
           data_dir: str | os.PathLike | None = None, lr: float | None = None, log: str | None = None,
           precision: str = "fp32", channels_last: bool = False, compile: bool = False) -> dict:
    """Continue the run in ``out_dir`` from its last completed epoch (with the base learning rate
    ``lr`` from there on, when given); returns ``results.json``. ``log``, ``precision``,
    ``channels_last``, ``compile``: see :func:`fit` (the interrupted session's need not be repeated)."""
    return fit(prepare_resume(out_dir, device=device, data_dir=data_dir, lr=lr), log=log, precision=precision,
               channels_last=channels_last, compile=compile)


def fit(run: Run, *, stop_after_epoch: int | None = None, log: str | None = None, precision: str = "fp32",
        channels_last: bool = False, compile: bool = False) -> dict | None:
    """Train ``run`` from its current epoch to the end, writing the run files as it goes.

    Returns the content of ``results.json`` (None on ranks other than 0 under torch.distributed).

    ``stop_after_epoch``: return after that epoch as if the process had been killed there.
    ``log``: ``"tensorboard"`` also writes TensorBoard events to ``<run>/tensorboard/``
    (:class:`TensorBoard`; needs the ``tensorboard`` package).

    How the training steps compute (:class:`Runtime`, recorded as ``results.json``'s ``runtime``):

    ``precision``: ``"fp32"``, or ``"bf16"``: the forward pass and loss of the training steps
    under ``torch.autocast`` to bfloat16; weights, gradients, optimizer state, projections,
    validation, test and checkpoints stay float32. Only where bfloat16 is native (see
    ``runtime.native_bf16``).
    ``channels_last``: the model and its training batches in ``torch.channels_last``, the layout
    oneDNN and cuDNN convolutions prefer; no effect (a note in the log) on a model that is not
    mostly convolutions (:func:`convolutional`), such as the MLP and the ViT.
    ``compile``: the training steps call ``torch.compile`` of the model (compiled in the first
    step of each call, which takes a while); it shares the model's parameters, so the
    projector, evaluation, checkpoints and the resume state see the trained weights.

    Raises:
        ValueError: an unknown ``log`` or ``precision``; bf16 where it is not native.
        ModuleNotFoundError: ``log="tensorboard"`` without the ``tensorboard`` package; nothing
            is written then.
        TrainingDiverged: a NaN or infinite loss or weight (on every rank at the same step);
            ``results.json`` is marked, the other run files keep the last completed epoch.
    """
    check_log(log)
    check_precision(precision, run.device)
    effective = channels_last and convolutional(run.model, run.data.info.shape)
    if effective:
        run.model.to(memory_format=torch.channels_last)   # in place: the optimizer's parameters stay
    run.runtime = Runtime(precision, effective, compile)
    start = time.perf_counter() - run.elapsed
    writer = distributed.rank() == 0   # validates, writes and logs; the other ranks train and project
    distributed.barrier()   # every rank has read the run folder before rank 0 changes it
    if writer:
        logger.info(header_line(run.config, run.data, run.model, run.device, run.runtime))
        if channels_last and not effective:
            logger.info(f"channels-last: no effect on {run.config.model}, whose work is not mostly convolutions")
        if run.epoch > 0:
            logger.info(f"resuming at epoch {run.epoch + 1} of {run.config.epochs}")
        runfolder.remove_temporaries(run.out_dir)
        if run.epoch == 0:
            runfolder.prepare_folder(run.out_dir)
    board = None
    if writer and log == "tensorboard":
        board = TensorBoard(run.out_dir, num_batches(run.data.train, run.config.batch_size, drop_last=True), run.epoch)
    try:
        return run_epochs(run, start, board, stop_after_epoch)
    finally:
        if board is not None:
            board.close()


def run_epochs(run: Run, start: float, board: TensorBoard | None, stop_after_epoch: int | None) -> dict | None:
    """:func:`fit` once the run folder is ready: epoch 0 (a new run), the epochs, the test."""
    writer = distributed.rank() == 0
    if writer and run.epoch == 0:
        run.epochs_log = [validate(run, time.perf_counter())]
        save_checkpoint(run, INIT)
        if board is not None:
            board.epoch(run.epochs_log[0], None)
        save_progress(run, start)
    trained = training_module(run)
    for epoch in range(run.epoch + 1, run.config.epochs + 1):
        epoch_start, lr = time.perf_counter(), run.optimizer.param_groups[0]["lr"]
        try:
            train_stats, projection = train_one_epoch(run, trained, epoch, board)
        except TrainingDiverged as error:
            save_divergence(run, start, error)
            raise
        if run.projector is not None:
            projection = run.projector.epoch_end() or projection
        checksums = after_projection(run, projection)
        run.scheduler.step()
        run.epoch = epoch
        if writer:
            if projection is not None:
                runfolder.save_motif_counts(run.out_dir, projection)
            entry = validate(run, epoch_start, lr, train_stats, projection, checksums)
            run.epochs_log.append(entry)
            if run.best is None or entry["val_acc"] > run.best["val_acc"]:
                run.best = {"epoch": epoch, "val_acc": entry["val_acc"]}
                save_checkpoint(run, BEST)
            if board is not None:   # before the state: a resume from it rewrites these events
                board.epoch(entry, projection)
            save_progress(run, start)
            logger.info(epoch_line(entry, run.config))
        if stop_after_epoch == epoch and epoch < run.config.epochs:
            return results_of(run, start) if writer else None

    # with every_n_steps the last steps may follow the last projection: end on an exact mosaic
    final_projection = run.projector.finalize() if run.projector is not None else None
    after_projection(run, final_projection)
    if not writer:
        return None
    if final_projection is not None:
        runfolder.save_motif_counts(run.out_dir, final_projection)
    save_checkpoint(run, FINAL)
    test = evaluate(run.model, run.data.test, run.data)
    results = results_of(run, start, test=test, final_projection=final_projection)
    runfolder.write_results(run.out_dir, results)
    logger.info(final_line(results, run.out_dir))
    return results


def check_process_split(run: Run) -> None:
    """Every process needs an equal, non-empty share of every training batch."""
    processes = distributed.world_size()
    batch_size, images = run.config.batch_size, len(run.data.train)
    if batch_size % processes or images < batch_size:
        raise ValueError(f"{processes} processes need a batch size divisible by {processes} and at least "
                         f"one full batch of training images; got batch size {batch_size}, {images} images")


def training_module(run: Run) -> nn.Module:
    """What the training steps call: ``run.model``, wrapped in DistributedDataParallel under
    torch.distributed, compiled with ``runtime.compile``. Every wrapper holds ``run.model``'s
    own parameters, so what the steps change is what the projector projects and the run saves."""
    trained = _data_parallel(run.model, run.device)
    return torch.compile(trained) if run.runtime.compile else trained


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torch.distributed, else itself."""
    if not distributed.is_distributed():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def after_projection(run: Run, projection: ProjectionStats | None) -> list[list[float]] | None:
    """After a projection (nothing when ``projection`` is None): the BatchNorm statistics
    re-estimated for the projected weights (:func:`reestimate_bn`) and, under torch.distributed,
    every rank's fingerprint of all parameters, which must be identical (a mismatch is a broken
    run, not a tolerance)."""
    if projection is None:
        return None
    reestimate_bn(run.model, run.data, run.config, channels_last=run.runtime.channels_last)
    if distributed.world_size() == 1:
        return None
    checksums = distributed.checksums_of_ranks(list(run.model.parameters()))
    if any(checksum != checksums[0] for checksum in checksums):
        raise RuntimeError(f"the ranks' parameters differ after the projection of epoch {run.epoch + 1}: "
                           f"checksums {checksums}")
    return checksums


def reestimate_bn(model: nn.Module, data: Dataset, config: TrainConfig, *, count: int | None = None,
                  channels_last: bool = False) -> None:
    """Re-estimate the BatchNorm statistics of ``model`` on the first ``count`` (default
    ``config.reestimate_bn``) augmented training batches of a pass drawn with ``config.seed``
    (the same batches every time, so a resumed run repeats them); nothing if it is 0.

    Called with the plain model (not its compiled or DDP wrapper), in float32, on every rank
    with the same batches, so that the ranks keep identical statistics of the weights the
    projection wrote, whatever the runtime. ``channels_last``: the batches in that layout, as
    the training's. ``count``: for a run trained without, after the fact.
    """
    count = config.reestimate_bn if count is None else count
    if not count:
        return
    device = next(model.parameters()).device
    layout = torch.channels_last if channels_last else torch.preserve_format
    generator = torch.Generator().manual_seed(config.seed)
    # RandAugment draws from the global RNG, which the training's data order must not see
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        passes = batches(data.train, data.info, config.batch_size, generator=generator,
                         augment=config.augment, randaugment=config.randaugment, drop_last=True)
        inputs = (x.to(device, memory_format=layout) for x, _ in itertools.islice(passes, count))
        reestimate_batchnorm_(model, inputs)


def train_one_epoch(run: Run, trained: nn.Module, epoch: int,
                    board: TensorBoard | None = None) -> tuple[tuple[float, float], ProjectionStats | None]:
    """One pass over the shuffled training split: the mean loss and accuracy of its batches over
    all processes, and the last projection made during the epoch (``every_n_steps`` only).

    ``trained``: ``run.model`` or its wrappers (:func:`training_module`). ``board``: receives every
    step's loss and learning rate. The progress bar shows on rank 0 while the ``momos.train``
    logger shows INFO and stderr is a terminal (in a log file, the epoch lines are enough).
    """
    from tqdm import tqdm

    config = run.config
    processes, rank = distributed.world_size(), distributed.rank()
    layout = torch.channels_last if run.runtime.channels_last else torch.preserve_format
    bf16 = run.runtime.precision == "bf16"
    trained.train()
    loss_sum, correct, seen = 0.0, 0, 0
    projection = None
    shown = rank == 0 and logger.isEnabledFor(logging.INFO) and sys.stderr.isatty()
    steps = num_batches(run.data.train, config.batch_size, drop_last=True)
    progress = tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                    disable=not shown, dynamic_ncols=True)
    step = 0
    # ``with``: a divergence closes the bar, so that its one-line message stands alone
    with progress:
        for x, y in batches(run.data.train, run.data.info, config.batch_size, generator=run.data_generator,
                            augment=config.augment, randaugment=config.randaugment, drop_last=True):
            # this process's share
            x = x.chunk(processes)[rank].to(run.device, memory_format=layout)
            y = y.chunk(processes)[rank].to(run.device)
            step += 1
            # autocast: the forward pass in bfloat16 from the float32 weights, whose gradients stay float32
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = trained(x)
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            loss_value = loss.item()
            check_finite_loss(run, loss_value, step)
            if board is not None:
                board.step((epoch - 1) * steps + step, loss_value, run.optimizer.param_groups[0]["lr"])
            if run.projector is not None and config.every_n_steps:
                if run.projector.projects_at_next_step:
                    check_finite_weights(run, step)
                projection = run.projector.step() or projection
            loss_sum += loss_value * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            progress.update(1)
            progress.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    check_finite_weights(run, step)   # before the epoch-end projection, validation and checkpoints
    loss_sum, correct, seen = distributed.sum_over_ranks([loss_sum, correct, seen])
    return (loss_sum / seen, correct / seen), projection


def check_finite_loss(run: Run, loss: float, step: int) -> None:
    """Raise :class:`TrainingDiverged` when the training loss of ``step`` is NaN or infinite on
    any process (all of them stop at the same step, so none waits for the others forever)."""
    bad = not math.isfinite(loss)
    if distributed.sum_over_ranks([float(bad)])[0]:
        raise diverged(run, step, f"training loss {loss}" if bad else "non-finite training loss on another process")


def check_finite_weights(run: Run, step: int) -> None:
    """Raise :class:`TrainingDiverged` when a parameter holds NaN or Inf (under DDP the ranks'
    parameters are identical, so they agree). One synchronization for all parameters."""
    params = list(run.model.named_parameters())
    if torch.stack([torch.isfinite(p.detach()).all() for _, p in params]).all():
        return
    name = next(name for name, p in params if not torch.isfinite(p.detach()).all())
    raise diverged(run, step, f"parameter {plain_name(name)!r} holds NaN or Inf values")


def diverged(run: Run, step: int, cause: str) -> TrainingDiverged:
    """The error of a divergence at ``step`` of the epoch in progress: what, where, and the fix."""
    epoch, lr = run.epoch + 1, run.scheduler.base_lrs[0]
    return TrainingDiverged(
        f"training diverged at epoch {epoch}, step {step} ({cause}); {run.out_dir} keeps epoch "
        f"{run.epoch}: lower the learning rate, e.g. momos train --resume {run.out_dir} --lr {lr / 10:.3g}",
        epoch=epoch, step=step, cause=cause)


def save_divergence(run: Run, start: float, error: TrainingDiverged) -> None:
    """Mark ``results.json`` as stopped by ``error`` (rank 0); the other run files stay at the last
    completed epoch."""
    if distributed.rank() == 0:
        stopped = {"epoch": error.epoch, "step": error.step, "cause": error.cause}
        runfolder.write_results(run.out_dir, results_of(run, start, stopped=stopped))
    distributed.barrier()   # no rank exits (torchrun then stops the others) before rank 0 has written


@torch.no_grad()
def evaluate(model: nn.Module, split: ImageSplit, data: Dataset) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode on ``split``."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct = 0.0, 0
    for x, y in batches(split, data.info, EVAL_BATCH_SIZE):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(split), correct / len(split)


def validate(run: Run, epoch_start: float, lr: float | None = None,
             train_stats: tuple[float, float] | None = None, projection: ProjectionStats | None = None,
             checksums: list[list[float]] | None = None) -> dict:
    """Validate the model of epoch ``run.epoch``; its ``results.json`` entry (epoch 0: the
    untrained model, no training stats). ``checksums``: the ranks' after the projection."""
    val_loss, val_acc = evaluate(run.model, run.data.val, run.data)
    entry = {
        "epoch": run.epoch,
        "lr": lr if lr is not None else run.optimizer.param_groups[0]["lr"],
        "train_loss": train_stats[0] if train_stats else None,
        "train_acc": train_stats[1] if train_stats else None,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "seconds": time.perf_counter() - epoch_start,
        "projection": projection_record(projection, run.config) if projection is not None else None,
    }
    if checksums is not None:
        entry["projection"]["rank_checksums"] = checksums
    if run.config.metrics:
        entry["metrics"] = measure_complexity(run)
    return entry


def projection_record(stats: ProjectionStats, config: TrainConfig) -> dict:
    """The scalar statistics of a projection, the paper's simplification factor
    ``n·q / (k·s·q + m·⌈log2 k⌉)`` (q: the QAT bits, else 32; unused motifs not counted) and
    its bits per weight, ``(k·s·q + m·⌈log2 k⌉) / n``."""
    from .complexity.description import description_length_from_stats

    length = description_length_from_stats(stats, q=config.qat_bits or 32)
    return {**stats.summary(), "simplification_factor": length.simplification_factor,
            "bits_per_weight": length.bound_bits / length.num_weights}


def measure_complexity(run: Run) -> dict:
    """The asked metrics; a warning is shown once per run, not at every epoch."""
    from .complexity import measure

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = measure(run.model, metrics=list(run.config.metrics), config=run.config.momos,
                         scales=run.projector.scales if run.projector is not None else None)
    for warning in caught:
        key = f"{warning.category.__name__}:{str(warning.message).split(':')[0]}"
        if key not in run.warned:
            run.warned.add(key)
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return values


# --- the record --------------------------------------------------------------------------------

def results_of(run: Run, start: float, test: tuple[float, float] | None = None,
               final_projection: ProjectionStats | None = None, stopped: dict | None = None) -> dict:
    """The content of ``results.json``: config, data, epochs and summary.

    ``final_projection``: a projection made after the last epoch to guarantee an exact mosaic
    (only when the last epoch did not project).
    ``stopped``: ``{"epoch", "step", "cause"}`` of a divergence that stopped the run.
    """
    trained = run.epochs_log[1:]
    final = trained[-1] if trained else None
    summary = {
        "complete": test is not None,
        "epochs_done": run.epoch,
        "best_epoch": run.best["epoch"] if run.best else None,
        "best_val_acc": run.best["val_acc"] if run.best else None,
        "final_val_acc": final["val_acc"] if final else None,
        "final_val_loss": final["val_loss"] if final else None,
        "test_acc": test[1] if test else None,
        "test_loss": test[0] if test else None,
        "final_projection": (projection_record(final_projection, run.config)
                             if final_projection is not None else None),
        "wall_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "processes": distributed.world_size(),
        "stopped": "diverged" if stopped is not None else None,
        "stopped_at": stopped,
        "lr_changes": run.lr_changes,
    }
    return {
        "config": {**run.config.to_dict(), "versions": versions()},
        "runtime": {"device": str(run.device), **asdict(run.runtime)},
        "data": {"source": run.data.source, "train": len(run.data.train), "val": len(run.data.val),
                 "test": len(run.data.test), "shape": list(run.data.info.shape)},
        "model": {"parameters": sum(p.numel() for p in run.model.parameters())},
        "epochs": run.epochs_log,
        "summary": summary,
    }


def versions() -> dict:
    import torchvision

    return {"momos": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def save_progress(run: Run, start: float) -> None:
    """Rewrite ``results.json``, ``metrics.csv`` and the resume state after a completed epoch."""
    runfolder.write_results(run.out_dir, results_of(run, start))
    runfolder.write_metrics(run.out_dir, run.epochs_log)
    state = {
        "config": json.dumps(run.config.to_dict()),
        "epoch": run.epoch,
        "epochs_log": json.dumps(run.epochs_log),
        "best": json.dumps(run.best),
        "elapsed": time.perf_counter() - start,
        "lr_changes": json.dumps(run.lr_changes),
        "model": plain_state_dict(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "projector": run.projector.state_dict() if run.projector is not None else None,
        "data_rng": run.data_generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    runfolder.write_state(run.out_dir, state)


def save_checkpoint(run: Run, name: str) -> None:
    """The model as it is now, at epoch ``run.epoch``, as run file ``name``."""
    runfolder.save_checkpoint(run.out_dir / name, run.model, run.config, epoch=run.epoch,
                              scales=run.projector.scales if run.projector is not None else None)
