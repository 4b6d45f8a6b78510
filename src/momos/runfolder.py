"""The folder of a ``momos train`` run: its files, how they are written, and how a run is read back.

    runs/007/
        results.json               config, one entry per epoch, summary
        state.safetensors          everything ``--resume`` needs (:mod:`momos.runstate`, no pickle)
        init.safetensors           the untrained model
        best.safetensors           the model of the best validation accuracy so far
        final.safetensors          the model at the end
        motif_counts.safetensors   the motifs of the latest projection and their usage (MoMos runs)
        metrics.csv                one row per epoch: the numbers of results.json's epoch entries
        tensorboard/               TensorBoard events (momos train --log tensorboard)

    model = load_model("runs/007", "best")

Every file is written atomically (:mod:`momos.io`), so a run killed at any moment leaves
complete files. Checkpoints hold the model's ``state_dict`` with plain parameter names; under
QAT they hold the latent full-precision weights (the ones MoMos projects), which
:func:`load_model` quantizes again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .data import INFOS
from .io import save_safetensors_atomic, write_bytes_atomic, write_json_atomic
from .models import model_for_dataset
from .project import ProjectionStats, select_parameters
from .qat import QATConfig, add_qat_, latent_state_dict, plain_name
from .runstate import load_state, save_state
from .scales import EXPONENT_RANGE, exponents_of, scales_of
from .trainconfig import TrainConfig

RESULTS, STATE = "results.json", "state.safetensors"
INIT, BEST, FINAL, MOTIF_COUNTS = "init.safetensors", "best.safetensors", "final.safetensors", \
    "motif_counts.safetensors"
METRICS, TENSORBOARD = "metrics.csv", "tensorboard"
RUN_FILES = (RESULTS, STATE, INIT, BEST, FINAL, MOTIF_COUNTS, METRICS)
SCALE_EXPONENTS = "scale_exponents"


# --- the folder --------------------------------------------------------------------------------

def next_run_dir(root: str | os.PathLike = "runs") -> Path:
    """``root/NNN``, one more than the highest numbered folder there."""
    root = Path(root)
    numbers = [int(p.name) for p in root.glob("[0-9]*") if p.name.isdigit()] if root.is_dir() else []
    return root / f"{max(numbers, default=0) + 1:03d}"


def check_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a folder")
    held = [name for name in (RESULTS, STATE) if (out_dir / name).exists()]
    if held and not overwrite:
        raise ValueError(f"{out_dir} already holds a run ({', '.join(held)}); "
                         f"choose another folder, --resume it or pass --overwrite")


def prepare_folder(out_dir: Path) -> None:
    """Create ``out_dir``, removing the files of a run it held (``overwrite`` was checked)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / TENSORBOARD, ignore_errors=True)


def remove_temporaries(out_dir: Path) -> None:
    """Delete the temporary files of atomic writes that a killed run left behind."""
    for name in RUN_FILES:
        for leftover in out_dir.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


# --- results and resume state ------------------------------------------------------------------

def write_results(out_dir: Path, results: dict) -> None:
    write_json_atomic(results, out_dir / RESULTS)


def epoch_row(entry: dict) -> dict[str, float | int | None]:
    """The numbers of one epoch entry of ``results.json``, flat: ``epoch``, ``lr``, the
    training and validation loss and accuracy, the projection's statistics as
    ``projection.<name>`` and the complexity metrics as ``metrics.<name>`` (when the entry has
    them), then ``seconds``."""
    row = {name: entry[name] for name in ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")}
    for group in ("projection", "metrics"):
        # lists (the ranks' checksums of a distributed projection) are no column
        row.update({f"{group}.{name}": value for name, value in (entry.get(group) or {}).items()
                    if not isinstance(value, (list, dict))})
    row["seconds"] = entry["seconds"]
    return row


def write_metrics(out_dir: Path, epochs: list[dict]) -> None:
    """``metrics.csv``: one :func:`epoch_row` per entry of ``epochs`` (results.json's), the
    columns of every row, empty where a row has none (epoch 0 has no training or projection)."""
    rows = [epoch_row(entry) for entry in epochs]
    columns = list(dict.fromkeys(name for row in rows for name in row))
    columns.sort(key=_column_place)
    text = io.StringIO()
    table = csv.DictWriter(text, columns, lineterminator="\n")
    table.writeheader()
    table.writerows(rows)
    write_bytes_atomic(text.getvalue().encode(), out_dir / METRICS)


def _column_place(column: str) -> int:
    """The plain columns first, then the projection's, the metrics and ``seconds`` (a stable sort
    keeps their order within each)."""
    later = ("projection.", "metrics.", "seconds")
    return next((place for place, prefix in enumerate(later, 1) if column.startswith(prefix)), 0)


def read_results(run_dir: str | os.PathLike) -> dict:
    return json.loads((Path(run_dir) / RESULTS).read_text())


def read_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The config the run in ``run_dir`` was started with."""
    return TrainConfig.from_dict(read_results(run_dir)["config"])


def write_state(out_dir: Path, state: dict) -> None:
    save_state(state, out_dir / STATE)


def read_state(out_dir: Path) -> dict:
    """The resume state of the run in ``out_dir``.

    Raises:
        ValueError: ``out_dir`` holds no run (no state and results), or an unreadable state.
    """
    if not (out_dir / STATE).is_file() or not (out_dir / RESULTS).is_file():
        raise ValueError(f"{out_dir} holds no run to resume (no {STATE} and {RESULTS})")
    try:
        return load_state(out_dir / STATE)
    except Exception as error:  # noqa: BLE001 - any unreadable state means "cannot resume"
        raise ValueError(f"cannot read {out_dir / STATE}: {error}") from None


# --- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(path: Path, model: nn.Module, config: TrainConfig, *, epoch: int,
                    scales: tuple[torch.Tensor, ...] | None = None) -> None:
    """Write the model's plain state dict, with the run's description in the metadata.

    ``scales``: those of the last projection of a normalized MoMos run (``normalize`` other
    than ``"none"``), which the weights alone do not tell. They are recorded as metadata
    ``scale_exponents``, JSON ``{plain parameter name: [e, ...]}``: the integer exponents of the
    scales ``2**e`` (one per tensor, or one per dim-0 row under ``"channel"``); see
    :func:`checkpoint_scales`.
    """
    metadata = {"format": "momos-checkpoint", "epoch": str(epoch), "model": config.model,
                "dataset": config.dataset, "method": config.method, "qat_bits": str(config.qat_bits or "")}
    if scales is not None:
        names = [n for n, _ in select_parameters(model, config.momos)]
        metadata.update(scale_metadata(names, scales))
    save_safetensors_atomic(plain_state_dict(model), path, metadata=metadata)


def save_projection(path: Path, model: nn.Module, stats: ProjectionStats) -> dict[str, torch.Tensor]:
    """Write the model's plain state dict as the projection ``stats`` left it, recording its
    scales as :func:`save_checkpoint` does when it was normalized; returns the state dict."""
    metadata = None if stats.scales is None else scale_metadata(list(stats.parameter_names), stats.scales)
    state = plain_state_dict(model)
    save_safetensors_atomic(state, path, metadata=metadata)
    return state


def save_motif_counts(out_dir: Path, stats: ProjectionStats) -> None:
    """The usage count and value of every motif of the projection ``stats``."""
    save_safetensors_atomic({"motif_counts": stats.motif_counts, "motifs": stats.motifs}, out_dir / MOTIF_COUNTS)


def scale_metadata(names: list[str], scales) -> dict[str, str]:
    """``{"scale_exponents": JSON}``: the record of :func:`save_checkpoint` for parameters
    ``names`` (plain names are used for parametrized ones) and their power-of-two ``scales``."""
    if len(names) != len(scales):
        raise ValueError(f"{len(scales)} scale tensors for {len(names)} parameters")
    record = {plain_name(n): [int(e) for e in exponents_of(table).reshape(-1)]
              for n, table in zip(names, scales)}
    return {SCALE_EXPONENTS: json.dumps(record, separators=(",", ":"))}


def checkpoint_scales(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The scales a checkpoint of a normalized run records (see :func:`save_checkpoint`):
    parameter name -> its scales ``2**e`` as a flat float32 tensor (``momos.save`` takes them
    by name, reshaped); None when the checkpoint records none.

    Raises:
        ValueError: the file is unreadable or its record is malformed.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (OSError, SafetensorError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    raw = metadata.get(SCALE_EXPONENTS)
    if raw is None:
        return None
    try:
        table = json.loads(raw)
    except ValueError:
        table = None
    low, high = EXPONENT_RANGE
    if not isinstance(table, dict) or not all(
            isinstance(name, str) and isinstance(values, list)
            and all(isinstance(e, int) and not isinstance(e, bool) and low <= e <= high for e in values)
            for name, values in table.items()):
        raise ValueError(f"{path}: malformed {SCALE_EXPONENTS} metadata (expected JSON {{name: [int "
                         f"exponents in [{low}, {high}]]}})")
    return {name: scales_of(torch.tensor(values, dtype=torch.int16)) for name, values in table.items()}


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with parametrized (QAT) weights under their plain names, latent values."""
    return latent_state_dict(model)[0]


def load_model_weights_(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load a :func:`plain_state_dict` into ``model``, parametrized or not."""
    names = {plain_name(name): name for name in model.state_dict()}
    missing = sorted(set(names) - set(tensors))
    unexpected = sorted(set(tensors) - set(names))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict({names[key]: value for key, value in tensors.items()})


def load_model(run_dir: str | os.PathLike, checkpoint: str = "final") -> nn.Module:
    """The model of a run with the weights of ``init``, ``best`` or ``final``, in eval mode."""
    from safetensors.torch import load_file

    config = read_config(run_dir)
    model = model_for_dataset(config.model, INFOS[config.dataset])
    if config.qat_bits is not None:
        add_qat_(model, QATConfig(bits=config.qat_bits))
    load_model_weights_(model, load_file(Path(run_dir) / f"{checkpoint}.safetensors"))
    return model.eval()
