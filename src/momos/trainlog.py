"""What a training run tells as it goes: its console lines and its TensorBoard events.

:func:`header_line` says what is about to train, :func:`epoch_line` closes every epoch,
:func:`final_line` reports the test; :class:`TensorBoard` writes the same numbers, and every
step's loss and learning rate, as TensorBoard events. Text and events only: what is logged
where, and when, is :mod:`momos.train`'s.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import distributed, runfolder
from .data import Dataset
from .project import ProjectionStats
from .runtime import Runtime
from .trainconfig import TrainConfig

LOGS = ("tensorboard",)


def check_log(log: str | None) -> None:
    """Refuse an unknown ``log``, and (by importing it) a missing ``tensorboard`` package."""
    if log is not None and log not in LOGS:
        raise ValueError(f"unknown log {log!r}; choose {', '.join(LOGS)}")
    if log == "tensorboard":
        import torch.utils.tensorboard  # noqa: F401 - ModuleNotFoundError 'tensorboard' when missing


def header_line(config: TrainConfig, data: Dataset, model: nn.Module, device: torch.device,
                runtime: Runtime) -> str:
    """What is about to train, e.g. ``mlp (216,586 parameters) · digits (sklearn.datasets.load_digits):
    train 1,366 / val 72 / test 359 · momos s=4 k=541 · 1 thread · cpu``; the device is followed
    by the runtime choices other than the default, e.g. ``cuda:0 bf16 channels-last compiled``."""
    parameters = sum(p.numel() for p in model.parameters())
    sizes = f"train {len(data.train):,} / val {len(data.val):,} / test {len(data.test):,}"
    threads, processes = torch.get_num_threads(), distributed.world_size()
    return " · ".join([
        f"{config.model} ({parameters:,} parameters)",
        f"{config.dataset} ({data.source}): {sizes}",
        method_summary(config, model),
        (f"{processes} processes × " if processes > 1 else "") + f"{threads} thread{'s' * (threads > 1)}",
        " ".join([str(device)] + [name for name, chosen in (
            (runtime.precision, runtime.precision != "fp32"),
            ("channels-last", runtime.channels_last), ("compiled", runtime.compile)) if chosen]),
    ])


def method_summary(config: TrainConfig, model: nn.Module) -> str:
    """The method and its sizes: ``momos+qat s=4 k=541 q=8``; ``k`` summed over codebooks; the
    BatchNorm re-estimation, if any."""
    from .complexity.description import description_length_from_config

    parts = [config.method]
    if config.momos is not None:
        k = description_length_from_config(model, config.momos).num_motifs
        parts += [f"s={config.momos.block_size}", f"k={k}"]
    if config.qat_bits is not None:
        parts.append(f"q={config.qat_bits}")
    if config.reestimate_bn:
        parts.append(f"(BatchNorm re-estimated on {config.reestimate_bn} batches)")
    return " ".join(parts)


def epoch_line(entry: dict, config: TrainConfig) -> str:
    """The end-of-epoch summary line of ``entry``, an epoch of ``results.json``."""
    line = (f"epoch {entry['epoch']}/{config.epochs}  lr {entry['lr']:.2e}  "
            f"train loss {entry['train_loss']:.4f} acc {entry['train_acc']:.4f}  "
            f"val loss {entry['val_loss']:.4f} acc {entry['val_acc']:.4f}")
    if entry["projection"]:
        p = entry["projection"]
        line += f"  k {p['num_motifs']} used {p['motifs_used']}"
    metrics = entry.get("metrics", {})
    for name in config.metrics:
        if name in metrics:
            line += f"  {name} {metrics[name]:.4g}"
    return line + f"  {entry['seconds']:.1f} s"


def final_line(results: dict, out_dir: Path) -> str:
    """The last line of a complete run: its test loss and accuracy, time and folder."""
    summary = results["summary"]
    return (f"test loss {summary['test_loss']:.4f} acc {summary['test_acc']:.4f}  "
            f"({summary['wall_seconds']:.1f} s)  -> {out_dir}")


class TensorBoard:
    """The TensorBoard events of a run, in ``<out_dir>/tensorboard/`` (rank 0 writes them).

    Steps count optimizer steps from the start of the run: every step's ``step/train_loss`` (of
    rank 0's share of the batch) and ``step/lr``; at the last step of every epoch (step 0 for
    epoch 0) the numbers of its ``results.json`` entry, as ``metrics.csv`` has them:
    ``epoch/val_acc``, ``projection/distortion``, ``projection/motifs_used``,
    ``projection/bits_per_weight``, ``metrics/<name>`` ..., and the histogram
    ``projection/motif_usage`` of the motifs' usage counts. A run resumed after ``epochs_done``
    epochs hides the events that an interrupted session wrote after that epoch.
    """

    def __init__(self, out_dir: Path, steps_per_epoch: int, epochs_done: int):
        from torch.utils.tensorboard import SummaryWriter

        self.steps_per_epoch = steps_per_epoch
        resumed_at = epochs_done * steps_per_epoch + 1 if epochs_done > 0 else None
        self.writer = SummaryWriter(out_dir / runfolder.TENSORBOARD, purge_step=resumed_at)

    def step(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/lr", lr, step)

    def epoch(self, entry: dict, projection: ProjectionStats | None) -> None:
        step = entry["epoch"] * self.steps_per_epoch
        for column, value in runfolder.epoch_row(entry).items():
            if column != "epoch" and value is not None:
                tag = column.replace(".", "/") if "." in column else f"epoch/{column}"
                self.writer.add_scalar(tag, value, step)
        if projection is not None:
            self.writer.add_histogram("projection/motif_usage", projection.motif_counts.float(), step)
        self.writer.flush()   # a run killed later keeps the events of its completed epochs

    def close(self) -> None:
        self.writer.close()
