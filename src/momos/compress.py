"""Post-training compression with a complete record: ``momos compress`` as a library.

    results = compress(CompressConfig(source="runs/007", momos=MoMosConfig(block_size=4, capacity=0.01),
                                      finetune=FinetuneConfig(steps=300)), "runs/007-compressed")

One run, in stages, each recorded in ``results.json`` as soon as it is done:

1. ``original``: the source model evaluated on the evaluation data (accuracy where there are
   labels; it is also the reference the later stages are compared to).
2. ``projected`` and ``finetuned``: :func:`momos.finetune` projects the model (evaluated and
   written to ``projected.safetensors`` right then), fine-tunes it by distillation from the
   original, projects it at the end (evaluated, ``final.safetensors``).
3. ``file``: the mosaic written as ``model.momos``, with its bits per weight.

Every file is written atomically. A run that was interrupted starts again at its first
unfinished stage when it is run again with the same configuration (an interrupted fine-tune
starts over from the projection). Nothing is written before the source, the data and the
configuration have been checked.

Evaluation compares every stage with the original: top-1 agreement of the predictions for
classifiers (and accuracy against the labels), mean cosine similarity of the outputs for
embedding models; padding tokens of texts count in neither.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .batchnorm import require_batchnorm
from .config import MoMosConfig
from .data import DATASETS, batches, load_dataset, num_batches
from .finetune import FinetuneConfig, Output, finetune, masked, outputs, split_batch, to_device
from .io import write_json_atomic
from .project import warn_if_slow
from .runfolder import FINAL, RESULTS, checkpoint_scales, load_model_weights_, save_projection
from .sources import Source, load_source

PROJECTED, MOSAIC_FILE = "projected.safetensors", "model.momos"   # besides momos train's results.json, final
EVAL_BATCH_SIZE = 256
TEXT_MAX_LENGTH = 128
TEXT_EVAL_FRACTION = 0.1


@dataclass(frozen=True)
class CompressConfig:
    """What to compress, with what data, into what mosaic.

    Attributes:
        source: a run folder, a ``.safetensors`` file (with ``model``), ``hf:PATH``,
            ``timm:NAME`` or ``torchvision:NAME`` (with ``weights``); see ``momos.sources``.
        model: the ``momos train`` model name of a bare ``.safetensors`` source.
        weights: the weight file of a ``timm:`` or ``torchvision:`` source.
        checkpoint: the checkpoint of a run folder (init, best or final).
        num_classes: classes of a timm or torchvision model's head (default: the library's).
        image_size: resize images to this size for the model (default: its native size).
        dataset: the image data set to fine-tune and evaluate on (default: a run's own).
        text_file: for a Hugging Face text model: one text per line, or ``label<TAB>text``;
            the last tenth is held out for evaluation.
        data_dir: where data sets are read from (default ``$MOMOS_DATA``).
        batch_size: fine-tuning batch size.
        epochs: fine-tune for this many passes over the training data (may be fractional)
            instead of ``finetune.steps``.
        calibration: weigh the projection by input importance measured on this many
            training inputs (see ``momos.project_``); None: plain distances.
        seed: seeds the data order.
        momos: the mosaic.
        finetune: the fine-tuning (``steps: 0`` projects only).
    """

    source: str
    model: str | None = None
    weights: str | None = None
    checkpoint: str = "final"
    num_classes: int | None = None
    image_size: int | None = None
    dataset: str | None = None
    text_file: str | None = None
    data_dir: str | None = None
    batch_size: int = 64
    epochs: float | None = None
    calibration: int | None = None
    seed: int = 0
    momos: MoMosConfig = field(default_factory=lambda: MoMosConfig(block_size=4, capacity=0.01))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.dataset is not None and self.text_file is not None:
            raise ValueError("give a dataset (images) or a text_file (text), not both")
        for name in ("batch_size", "calibration", "num_classes", "image_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be positive, got {self.epochs}")

    def to_dict(self) -> dict:
        return {**asdict(self), "momos": self.momos.to_dict(), "finetune": asdict(self.finetune)}

    @classmethod
    def from_dict(cls, d: dict) -> "CompressConfig":
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        return cls(**{**d, "momos": MoMosConfig.from_dict(d["momos"]), "finetune": FinetuneConfig(**d["finetune"])})


@dataclass
class Data:
    """Fine-tuning batches (re-iterable), evaluation batches, batches per pass, and the
    (re-iterable) batches that BatchNorm statistics are re-estimated on."""

    train: object
    eval: list
    batches_per_epoch: int
    description: str
    batchnorm: object


def compress(config: CompressConfig, out_dir: str | os.PathLike, *, overwrite: bool = False,
             device: str | torch.device = "cpu", log: Callable[[str], None] = print) -> dict:
    """Run (or finish) the compression of ``config`` in ``out_dir``; returns ``results.json``.

    ``log`` receives one line per stage (``print`` by default).

    Raises:
        ValueError (``SourceError``, ``DatasetError`` included): a bad source, data or
            configuration, or an ``out_dir`` holding another run without ``overwrite``;
            nothing is written then.
    """
    out_dir = Path(out_dir)
    results = _previous_results(out_dir, config, overwrite)
    source = load_source(config.source, model_name=config.model, weights=config.weights, dataset=config.dataset,
                         checkpoint=config.checkpoint, num_classes=config.num_classes,
                         image_size=config.image_size)
    if config.finetune.reestimate_bn:
        require_batchnorm(source.model, f"reestimate_bn: {config.source}")
    source.model.to(device)
    data = load_data(config, source)
    steps = finetune_steps(config, data)
    model = source.model
    if overwrite:   # only now: bad input must leave the old run as it was
        for name in (RESULTS, PROJECTED, FINAL, MOSAIC_FILE):
            (out_dir / name).unlink(missing_ok=True)
    results = results or {"version": __version__, "config": config.to_dict(), "data": data.description,
                          "parameters": sum(p.numel() for p in model.parameters()), "complete": False}
    out_dir.mkdir(parents=True, exist_ok=True)

    def record(stage: str, value: dict) -> None:
        results[stage] = value
        write_json_atomic(results, out_dir / RESULTS)
        log(f"{stage:<10} " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in value.items() if k != "projection"))

    if "finetuned" in results:
        scales = _load_final(source, out_dir)
    else:
        teacher = copy.deepcopy(model).requires_grad_(False)
        reference = predictions(teacher, data.eval)
        if "original" not in results:
            record("original", scores(reference, data.eval, reference))
        scales = _project_and_finetune(config, source, teacher, data, steps, reference, record, out_dir)
    if "file" not in results:
        record("file", export(model, config.momos, scales, out_dir / MOSAIC_FILE, config.source))
    results["complete"] = True
    write_json_atomic(results, out_dir / RESULTS)
    return results


def _project_and_finetune(config, source: Source, teacher, data: Data, steps: int, reference, record, out_dir):
    model = source.model
    start = time.perf_counter()
    projected = {}

    def after_projection(step: int, stats) -> None:
        if step == 0:
            save_projection(out_dir / PROJECTED, model, stats)
            projected.update(evaluate(model, data.eval, reference))
            record("projected", {**projected, "seconds": time.perf_counter() - start, "projection": stats.summary()})

    calibration = None
    if config.calibration is not None:
        calibration = list(_first_inputs(data.train, config.calibration))
    warn_if_slow(model, config.momos)
    result = finetune(model, config.momos, data.train, teacher=teacher, calibration=calibration,
                      on_projection=after_projection, bn_batches=data.batchnorm,
                      **{**asdict(config.finetune), "steps": steps})
    save_projection(out_dir / FINAL, model, result.stats)
    losses = result.losses
    # without fine-tuning, the model is the projected one that was just evaluated
    record("finetuned", {**(evaluate(model, data.eval, reference) if steps else projected), "steps": steps,
                         "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                         "seconds": time.perf_counter() - start, "projection": result.stats.summary()})
    return result.stats.scales


def _load_final(source: Source, out_dir: Path):
    """Resume after the fine-tune: the final weights and their scales back into the model."""
    from safetensors.torch import load_file

    load_model_weights_(source.model, load_file(out_dir / FINAL))
    return checkpoint_scales(out_dir / FINAL)


def export(model: nn.Module, config: MoMosConfig, scales, path: Path, source: str) -> dict:
    """Write the mosaic as a ``.momos`` file; its size in bytes and bits per weight."""
    from .fileformat import save

    info = save(model, path, config, scales=scales, metadata={"source": source})
    return {"bytes": info.file_bytes, "bits_per_weight": info.bits_per_weight,
            "mosaic_bits_per_weight": info.mosaic_bits_per_weight}


# --- data ----------------------------------------------------------------------------------------

def load_data(config: CompressConfig, source: Source) -> Data:
    """The fine-tuning and evaluation batches for ``source``: images, or lines of a text file."""
    if config.text_file is not None:
        return _text_data(config, source)
    name = config.dataset or source.dataset
    if name is None:
        raise ValueError(f"{config.source} needs data: give a dataset (images) or a text_file (text)")
    data = load_dataset(name, config.data_dir, download=False)
    adapt = source.inputs

    def image_pass(generator: torch.Generator, augment: bool = False):
        for x, y in batches(data.train, data.info, config.batch_size, generator=generator, augment=augment,
                            drop_last=True):
            yield adapt(x), y

    # Fine-tuning: one generator for all passes, so every pass has its own order.
    generator = torch.Generator().manual_seed(config.seed)
    # BatchNorm statistics from images cropped and flipped as the source trained (a run folder
    # says whether; else the data set's usual recipe): the weights expect those, not plain images.
    # RandAugment is left out: it draws from the global RNG, which compress does not seed.
    # A fresh generator per pass: each re-estimation sees the same batches.
    augment = source.train_config.augment if source.train_config is not None else data.info.augment
    evaluation = [(adapt(x), y) for x, y in batches(data.test, data.info, EVAL_BATCH_SIZE)]
    return Data(Passes(lambda: image_pass(generator)), evaluation,
                num_batches(data.train, config.batch_size, drop_last=True),
                f"{name}: {len(data.train)} training images ({data.source}), {len(data.test)} test images",
                Passes(lambda: image_pass(torch.Generator().manual_seed(config.seed), augment)))


def _text_data(config: CompressConfig, source: Source) -> Data:
    if source.tokenizer is None:
        raise ValueError(f"text_file needs a model with a tokenizer; {config.source} has none")
    path = Path(config.text_file)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the text file {path}: {error}") from None
    if len(lines) < 2:
        raise ValueError(f"{path} holds {len(lines)} texts; fine-tuning and evaluation need at least 2")
    labels, texts = _split_labels(lines, path)
    held_out = max(1, round(len(texts) * TEXT_EVAL_FRACTION))
    generator = torch.Generator().manual_seed(config.seed)

    def encode(index) -> tuple[dict, torch.Tensor | None]:
        inputs = dict(source.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                       max_length=TEXT_MAX_LENGTH, return_tensors="pt"))
        return inputs, (torch.tensor([labels[i] for i in index]) if labels is not None else None)

    train_count = len(texts) - held_out

    def shuffled_pass():
        order = torch.randperm(train_count, generator=generator).tolist()
        for start in range(0, train_count, config.batch_size):
            inputs, y = encode(order[start:start + config.batch_size])
            yield inputs if y is None else {**inputs, "labels": y}

    evaluation = [encode(range(start, min(start + EVAL_BATCH_SIZE, len(texts))))
                  for start in range(train_count, len(texts), EVAL_BATCH_SIZE)]
    train = Passes(shuffled_pass)
    return Data(train, evaluation, math.ceil(train_count / config.batch_size),
                f"{path.name}: {train_count} training texts, {held_out} held out", train)


class Passes:
    """Re-iterable batches: every ``iter()`` starts a new pass, ``make_pass()`` (finetune repeats them)."""

    def __init__(self, make_pass: Callable) -> None:
        self.make_pass = make_pass

    def __iter__(self):
        return self.make_pass()


def _split_labels(lines: list[str], path: Path) -> tuple[list[int] | None, list[str]]:
    """``label<TAB>text`` lines give labels (all or none of them must); plain lines give none."""
    parts = [line.split("\t", 1) for line in lines]
    labelled = [len(p) == 2 and p[0].strip().lstrip("-").isdigit() for p in parts]
    if not any(labelled):
        return None, lines
    if not all(labelled):
        raise ValueError(f"{path}: line {labelled.index(False) + 1} has no integer label; "
                         "label every line (label<TAB>text) or none")
    return [int(p[0]) for p in parts], [p[1] for p in parts]


def _first_inputs(train, count: int):
    """The inputs of the first training batches, ``count`` inputs or a little more."""
    taken = 0
    for batch in train:
        inputs, _ = split_batch(batch)
        yield inputs
        taken += len(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs)
        if taken >= count:
            return


def finetune_steps(config: CompressConfig, data: Data) -> int:
    if config.epochs is None:
        return config.finetune.steps
    return max(1, round(config.epochs * data.batches_per_epoch))


# --- evaluation ----------------------------------------------------------------------------------

def evaluate(model: nn.Module, evaluation: list, reference: list[Output]) -> dict:
    """``model``'s :func:`scores` on the evaluation batches."""
    return scores(predictions(model, evaluation), evaluation, reference)


@torch.no_grad()
def predictions(model: nn.Module, evaluation: list) -> list[Output]:
    """``model``'s outputs on every evaluation batch, in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return [outputs(model, to_device(inputs, device)) for inputs, _ in evaluation]
    finally:
        model.train(was_training)


def scores(predicted: list[Output], evaluation: list, reference: list[Output]) -> dict:
    """Agreement with the original's outputs (``reference``) and accuracy where labels exist;
    mean cosine similarity to the original for embeddings."""
    counts = {"agreement": 0, "accuracy": 0, "cosine": 0.0, "n": 0}
    for out, (_, labels), original in zip(predicted, evaluation, reference):
        if out.is_logits:
            predicted_class = out.value.argmax(-1).cpu()
            counts["agreement"] += int(masked(predicted_class == original.value.argmax(-1).cpu(), out.mask).sum())
            if labels is not None:
                counts["accuracy"] += int(masked(predicted_class == labels, out.mask).sum())
            counts["n"] += masked(predicted_class, out.mask).numel()
        else:
            similarity = masked(torch.nn.functional.cosine_similarity(out.value, original.value, dim=-1).cpu(),
                                out.mask)
            counts["cosine"] += float(similarity.sum())
            counts["n"] += similarity.numel()
    n = max(counts["n"], 1)
    if reference and reference[0].is_logits:
        result = {"agreement": counts["agreement"] / n}
        if evaluation[0][1] is not None:
            result["accuracy"] = counts["accuracy"] / n
        return result
    return {"cosine": counts["cosine"] / n}


# --- the run folder ------------------------------------------------------------------------------

def _previous_results(out_dir: Path, config: CompressConfig, overwrite: bool) -> dict | None:
    """The results of an unfinished run of the same configuration in ``out_dir``, to continue."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a folder")
    path = out_dir / RESULTS
    if not path.is_file():
        return None
    if overwrite:
        return None
    try:
        previous = json.loads(path.read_text())
        same = CompressConfig.from_dict(previous["config"]) == config
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a compress run's record ({error}); choose another folder "
                         "or pass overwrite") from None
    if not same:
        raise ValueError(f"{out_dir} holds a compress run of another configuration; choose another folder "
                         "or pass overwrite")
    if previous.get("complete"):
        raise ValueError(f"{out_dir} holds a complete compress run of this configuration; nothing to do "
                         "(pass overwrite to run it again)")
    return previous
