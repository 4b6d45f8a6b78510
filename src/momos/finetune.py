"""Post-training MoMos: project a trained model, then fine-tune it by distillation from itself.

    result = momos.finetune(model, momos.MoMosConfig(block_size=4, capacity=0.01), loader, steps=500)
    result.stats          # the final projection: the model is now exactly a mosaic

A projection moves every weight a little; the network can learn to live with its mosaic if it
trains for a while under it. The original model is the teacher: its outputs on the same inputs
are the target (knowledge distillation), so no labels are needed. Two ways to train:

- ``tune="motifs"`` (default): every block keeps the motif it was projected onto and the
  motif table learns (:mod:`momos.motif_tuning`), together with the parameters outside the
  mosaic; the model is an exact mosaic at every step.
- ``tune="weights"``: the paper's project-while-training on a short budget: the weights train
  freely and a :class:`momos.Projector` projects them again every ``every_n_steps`` optimizer
  steps and at the end.

Losses, chosen by what the model returns:

- logits (a tensor, or an output with ``.logits``): KL divergence between the teacher's and the
  student's temperature-softened distributions, times ``T²`` (Hinton et al., 2015), mixed with
  cross-entropy on the labels when a batch has them and ``distill_weight < 1``;
- embeddings (an output with ``.last_hidden_state``): ``1 - cosine similarity`` per position.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from .batchnorm import reestimate_batchnorm_, require_batchnorm
from .calibration import Calibration
from .config import MoMosConfig
from .motif_tuning import MosaicParameters
from .project import ProjectionStats, project_
from .projector import Projector


TUNED = ("motifs", "weights")
DEFAULT_LR = {"motifs": 3e-3, "weights": 1e-4}


@dataclass(frozen=True)
class FinetuneConfig:
    """How a projected model is fine-tuned.

    Attributes:
        steps: optimizer steps of fine-tuning; 0 projects only.
        tune: ``"motifs"``: every block keeps its motif and the motif table trains (with the
            parameters left out of the mosaic), so the model stays an exact mosaic at every
            step; ``"weights"``: every weight trains freely and is projected again every
            ``every_n_steps`` steps and at the end (the paper's schedule, on a short budget).
        lr: AdamW's learning rate, decayed to 0 over the steps by a cosine (default: 3e-3 for
            ``tune="motifs"``, more accurate than 1e-3 in all 8 pairs of runs of experiments/COMPRESS.md;
            1e-4 for ``tune="weights"``, which moves every weight).
        weight_decay: AdamW's weight decay.
        every_n_steps: with ``tune="weights"``, project every N optimizer steps (and always at
            the end); None: only at the start and at the end.
        distill_temperature: T of the softened distributions of the logit distillation.
        distill_weight: share of the distillation loss; the rest is cross-entropy on the
            labels, for batches that have labels (1: distillation only).
        reestimate_bn: re-estimate the BatchNorm running statistics on this many batches right
            after the projection (compress: on training images cropped and flipped as the source
            trained) and again, on the fine-tuning batches, after the fine-tuning
            (``momos.batchnorm``); 0 keeps the running ones. Only for models with BatchNorm.
    """

    steps: int = 100
    tune: Literal["motifs", "weights"] = "motifs"
    lr: float | None = None
    weight_decay: float = 0.0
    every_n_steps: int | None = None
    distill_temperature: float = 2.0
    distill_weight: float = 1.0
    reestimate_bn: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "every_n_steps", "reestimate_bn"):
            value = getattr(self, name)
            if value is None and name == "every_n_steps":
                continue
            positive = name == "every_n_steps"
            if isinstance(value, bool) or not isinstance(value, int) or value < positive:
                raise ValueError(f"{name} must be a {'positive' if positive else 'non-negative'} "
                                 f"integer, got {value!r}")
        if self.tune not in TUNED:
            raise ValueError(f"tune must be one of {TUNED}, got {self.tune!r}")
        if self.tune == "motifs" and self.every_n_steps is not None:
            raise ValueError("every_n_steps projects freely trained weights again (tune='weights'); with "
                             "tune='motifs' the weights never leave the mosaic")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.tune])
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise ValueError(f"distill_temperature must be positive, got {self.distill_temperature}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")


@dataclass
class Output:
    """What a model returned: ``value`` (B, classes) / (B, T, classes) logits or (B, T, D) embeddings."""

    value: torch.Tensor
    is_logits: bool
    mask: torch.Tensor | None = None   # (B, T) positions that count (an attention mask)


@dataclass
class FinetuneResult:
    """``stats``: the final mosaic (``stats.codebook_motifs()`` and ``stats.scales`` are what
    ``momos.is_mosaic`` and ``momos.save`` need); ``losses``: the training loss of every step."""

    stats: ProjectionStats
    losses: list[float] = field(default_factory=list)


LossFn = Callable[[Output, Output, torch.Tensor | None], torch.Tensor]


def finetune(model: nn.Module, config: MoMosConfig, batches: Iterable, *, teacher: nn.Module | None = None,
             calibration: Calibration | None = None, loss_fn: LossFn | None = None,
             on_step: Callable[[int, float], None] | None = None,
             on_projection: Callable[[int, ProjectionStats], None] | None = None,
             bn_batches: Iterable | None = None, **options) -> FinetuneResult:
    """Project ``model`` onto a mosaic and fine-tune it under the projection (in place).

    Args:
        model: the trained model (its selected parameters are overwritten).
        config: the mosaic.
        batches: an iterable of batches, iterated again when exhausted: an input tensor, an
            ``(inputs, labels)`` pair, or a mapping of model keyword arguments (a ``"labels"``
            entry is taken as the labels, not passed to the model).
        teacher: the model to distill from; default: a frozen copy of ``model`` before projection.
        calibration: inputs that weigh the projection by input importance (see ``momos.project_``).
        loss_fn: ``loss_fn(student, teacher, labels) -> loss`` on :class:`Output` s, instead of
            the built-in distillation loss.
        on_step: called as ``on_step(step, loss)`` after every optimizer step (progress, logging).
        on_projection: called as ``on_projection(step, stats)`` after every projection; step 0
            is the first, before any training (e.g. to evaluate the model as projected).
        bn_batches: the batches ``reestimate_bn`` re-estimates BatchNorm on right after the
            projection (default ``batches``). Give them augmented as the model was trained: its
            weights expect the statistics of those inputs (on the full-data ResNet-20, plain
            training images instead of cropped and flipped ones cost the unprojected network 3.9
            points). After fine-tuning the weights expect those of ``batches``, which they
            were last trained on, and the statistics are re-estimated on those.
        **options: the fields of :class:`FinetuneConfig` (``steps``, ``lr``, ``tune``, ...).

    Returns:
        The final mosaic's statistics (its motifs, assignments and scales) and the losses. The
        model is an exact mosaic, in the train/eval mode it had.

    Raises:
        ValueError: bad options, no batches, or a non-finite loss (the error names the step;
            the model is put back to its state after the last projection, a mosaic).
    """
    options = FinetuneConfig(**options)
    if options.reestimate_bn:
        require_batchnorm(model, f"reestimate_bn: {type(model).__name__}")
    was_training = model.training
    if teacher is None and options.steps:
        teacher = copy.deepcopy(model)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    projector = Projector(model, config, every_n_steps=options.every_n_steps, calibration=calibration)
    stats = projector.project()
    reestimate_bn_on_batches(model, batches if bn_batches is None else bn_batches, options.reestimate_bn)
    if on_projection is not None:
        on_projection(0, stats)
    losses: list[float] = []
    if options.steps and options.tune == "motifs":
        stats = _tune_motifs(model, config, stats, teacher, batches, options, loss_fn, losses, on_step)
    elif options.steps:
        _tune_weights(model, projector, teacher, batches, options, loss_fn, losses, on_step, on_projection)
        final = projector.finalize()
        if final is not None and on_projection is not None:
            on_projection(options.steps, final)
        stats = final or projector.last
    if options.steps:
        reestimate_bn_on_batches(model, batches, options.reestimate_bn)
    model.train(was_training)
    return FinetuneResult(stats, losses)


def reestimate_bn_on_batches(model: nn.Module, batches: Iterable, count: int) -> None:
    """The BatchNorm statistics of ``model`` re-estimated (:func:`momos.reestimate_batchnorm_`)
    on the inputs of the first ``count`` batches (of as many passes as that takes), moved to the
    model's device; nothing if ``count`` is 0. ``batches``: as :func:`finetune` takes them,
    tensors, ``(inputs, labels)`` pairs or mappings (run as keyword arguments, without ``labels``)."""
    if count:
        device = next(model.parameters()).device
        inputs = (split_batch(to_device(batch, device))[0] for batch in itertools.islice(repeat(batches), count))
        reestimate_batchnorm_(model, inputs)


def _tune_motifs(model, config, stats, teacher, batches, options, loss_fn, losses, on_step) -> ProjectionStats:
    """Train the motif table and the free parameters; the assignments stay."""
    mosaic = MosaicParameters(model, config, stats)
    selected = {id(p) for p in mosaic.params}
    free = [p for p in model.parameters() if p.requires_grad and id(p) not in selected]
    _train(model, teacher, [mosaic.motifs, *free], batches, options, loss_fn, losses, on_step,
           route=mosaic.route_gradients_, after_step=lambda step: mosaic.write_())
    # The weights are exactly the trained motifs; re-assigning to them changes nothing and
    # records the final table, assignments and motif counts.
    return project_(model, config, motifs=mosaic.codebook_motifs(), scales=stats.scales,
                    warn_relative_error=None, keep_nonzero=False)


def _tune_weights(model, projector, teacher, batches, options, loss_fn, losses, on_step, on_projection) -> None:
    """Train every weight freely; the projector projects every ``every_n_steps`` steps."""
    def after_step(step: int) -> ProjectionStats | None:
        projected = projector.step()
        if projected is not None and on_projection is not None:
            on_projection(step, projected)
        return projected

    _train(model, teacher, [p for p in model.parameters() if p.requires_grad], batches, options, loss_fn,
           losses, on_step, after_step=after_step)


def _train(model, teacher, params, batches, options: FinetuneConfig, loss_fn, losses, on_step, *,
           after_step, route=None) -> None:
    """The distillation loop: AdamW with a cosine decay over ``options.steps`` on ``params``.

    ``route()`` runs between backward and the optimizer step; ``after_step(step)`` after it
    returns the projection it made, if any (the state to put back if the loss turns non-finite).
    """
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / options.steps)))
    loss_fn = loss_fn or (lambda s, t, y: distillation_loss(s, t, y, options))
    device = next(model.parameters()).device
    mosaic = _copy_state(model)   # the last projected state, put back if the training diverges
    model.train()
    for step, batch in zip(range(1, options.steps + 1), repeat(batches)):
        inputs, labels = split_batch(to_device(batch, device))
        with torch.no_grad():
            target = outputs(teacher, inputs)
        loss = loss_fn(outputs(model, inputs), target, labels)
        if not torch.isfinite(loss):
            model.load_state_dict(mosaic)
            raise ValueError(f"the fine-tuning loss is {loss.item()} at step {step}; try a lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if route is not None:
            route()
        optimizer.step()
        scheduler.step()
        if after_step(step) is not None:
            mosaic = _copy_state(model)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def distillation_loss(student: Output, teacher: Output, labels: torch.Tensor | None,
                      options: FinetuneConfig = FinetuneConfig()) -> torch.Tensor:
    """The built-in loss: see the module docstring."""
    if not student.is_logits:
        similarity = F.cosine_similarity(student.value, teacher.value, dim=-1)
        return _masked_mean(1 - similarity, student.mask)
    t = options.distill_temperature
    # KL per position, summed over classes; positions are rows of the flattened logits.
    s_log = F.log_softmax(student.value.flatten(0, -2) / t, dim=-1)
    t_log = F.log_softmax(teacher.value.flatten(0, -2) / t, dim=-1)
    kl = F.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1) * t * t
    loss = _masked_mean(kl.view(student.value.shape[:-1]), student.mask)
    if labels is None or options.distill_weight == 1.0:
        return loss
    task = F.cross_entropy(student.value.flatten(0, -2), labels.flatten(), ignore_index=-100)
    return options.distill_weight * loss + (1 - options.distill_weight) * task


def masked(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The entries of per-position ``values`` (B, T) that ``mask`` (an attention mask) keeps, flat:
    padding tokens are not the model's predictions. Without a mask of that shape, all of them."""
    if mask is None or mask.shape != values.shape:
        return values.reshape(-1)
    return values[mask.to(values.device).bool()]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    kept = masked(values, mask)
    return kept.sum() / max(kept.numel(), 1)


def outputs(model: nn.Module, inputs) -> Output:
    """Run ``model`` on ``inputs`` (a tensor, or a mapping of keyword arguments) and name what came out."""
    result = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if isinstance(result, torch.Tensor):
        return Output(result, True)
    if getattr(result, "logits", None) is not None:
        return Output(result.logits, True, mask)
    if getattr(result, "last_hidden_state", None) is not None:
        return Output(result.last_hidden_state, False, mask)
    raise TypeError(f"cannot tell logits or embeddings in a {type(result).__name__}; pass loss_fn")


def split_batch(batch) -> tuple[object, torch.Tensor | None]:
    """``(inputs, labels or None)`` of a batch: a tensor, an ``(inputs, labels)`` pair or a mapping."""
    if isinstance(batch, Mapping):
        inputs = dict(batch)
        return inputs, inputs.pop("labels", None)
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"a batch tuple must be (inputs, labels), got {len(batch)} items")
        return batch[0], batch[1]
    return batch, None


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def repeat(batches: Iterable):
    """The batches over and over (a new pass of ``iter(batches)`` each time)."""
    passes = 0
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("batches is empty: fine-tuning needs at least one batch" if not passes else
                             "batches ran out after one pass: give a re-iterable (a list, a DataLoader), "
                             "not an iterator, or fewer steps")
        passes += 1
