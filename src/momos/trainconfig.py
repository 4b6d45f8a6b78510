"""What defines a training run: :class:`TrainConfig` and the paper's defaults it fills in.

A config is complete once built (every ``None`` field takes its default), so the one stored in
a run folder's ``results.json`` rebuilds the same run; :mod:`momos.train` trains it and
:mod:`momos.runfolder` records it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .config import MoMosConfig
from .data import DATASETS, INFOS
from .models import optimizer_profile
from .qat import QATConfig

METHODS = ("baseline", "qat", "momos", "momos+qat")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
# The paper's optimizer settings per family: (lr, weight decay, momentum).
PROFILES = {"sgd": (0.1, 1e-4, 0.9), "adamw": (3e-4, 1e-2, None)}
# Epochs and batch size: a quick look at the paper's data sets; digits is tiny, so smaller batches.
DATASET_DEFAULTS = {None: {"epochs": 10, "batch_size": 128}, "digits": {"epochs": 30, "batch_size": 32}}
DEFAULT_QAT_BITS = 8
DEFAULT_MOMOS = MoMosConfig(block_size=4, capacity=0.01, force_zero=True)
# The options that only some methods use, by the part of the method ("momos" in "momos+qat")
# that uses them, with the error for a method without it ({option}: the field, or the command
# line's flag). The one rule behind TrainConfig's check, the sweep's dropping of keys and
# momos train's errors.
METHOD_OPTIONS = {
    "momos": (("momos", "every_n_steps", "warmup_epochs", "anneal_from", "anneal_epochs", "reestimate_bn"),
              "{option} is a MoMos option; method {method} does not project (use momos or momos+qat)"),
    "qat": (("qat_bits",), "{option}: quantization bits need method qat or momos+qat, not {method}"),
}
# The MoMosConfig fields that are MoMos options of a run (its seed is the run's seed).
MOMOS_OPTIONS = tuple(f.name for f in fields(MoMosConfig) if f.name != "seed")


def option_applies(name: str, method: str) -> bool:
    """Whether setting ``name`` (a TrainConfig field, or one of :data:`MOMOS_OPTIONS`) changes
    a run of ``method``."""
    if name in MOMOS_OPTIONS:
        name = "momos"
    for part, (names, _) in METHOD_OPTIONS.items():
        if name in names:
            return part in method
    return True


class UnusedOptionError(ValueError):
    """An option set for a method that does not use it: ``option`` names it (a TrainConfig
    field, or the MoMosConfig field that differs from the default projection)."""

    def __init__(self, option: str, method: str, template: str):
        self.option, self.method, self.template = option, method, template
        super().__init__(self.message(option))

    def message(self, option: str) -> str:
        """The error with ``option`` in place of the field name (e.g. the flag that set it)."""
        return self.template.format(option=option, method=self.method)

    def __reduce__(self):
        return type(self), (self.option, self.method, self.template)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. ``None`` fields take the paper's default for the model,
    method or data set when the config is built, so a stored config is always complete.

    Attributes:
        dataset: ``digits``, ``mnist``, ``fashion-mnist`` or ``cifar10`` (``data.DATASETS``).
        model: ``mlp``, ``resnet20``, ``vit`` or a timm model name, e.g. ``vit_tiny_patch16_224``.
        method: ``baseline``, ``qat``, ``momos`` or ``momos+qat`` (``METHODS``).
        epochs: the number of epochs, positive (default 10; 30 for the 1,366 training images of
            ``digits``).
        batch_size: the batch size, positive (default the paper's 128; 32 on ``digits``).
        optimizer: ``sgd`` or ``adamw`` (default: SGD for ResNets, AdamW otherwise).
        lr: the learning rate (default from the optimizer: SGD 0.1, AdamW 3e-4).
        weight_decay: the weight decay (default from the optimizer: SGD 1e-4, AdamW 1e-2).
        momentum: SGD's momentum (default 0.9); AdamW has none.
        schedule: ``cosine`` (annealed to 0 over the epochs, stepped per epoch) or ``constant``.
        label_smoothing: the label smoothing of the training loss, in [0, 1) (validation and
            test losses stay plain cross-entropy).
        val_fraction: the share of the training split held out for validation.
        split_seed: seeds the validation split.
        train_subset: keep only this many images of the training split (after the validation
            split is held out), drawn at random with ``split_seed``; for quick studies.
        augment: random crop with padding 4 + horizontal flip (default: on for CIFAR-10 only).
        randaugment: RandAugment(2, 9) before the crop and flip.
        seed: seeds the model initialization, the data order and augmentation.
        qat_bits: q, the bits of the fake-quantized weights of the ``qat`` methods (default 8).
        momos: the projection for the ``momos`` methods (default s=4, capacity 0.01,
            force-zero, seed = ``seed``).
        every_n_steps: project every N optimizer steps instead of at every epoch end.
        warmup_epochs: epochs of training before the first projection.
        anneal_from: start at this capacity and shrink it geometrically to the projection's.
        anneal_epochs: epochs of capacity annealing, fewer than ``epochs``.
        reestimate_bn: after every projection, before validation and checkpoints, re-estimate
            the BatchNorm running statistics on this many augmented training batches, the same
            ones every time (drawn with ``seed``; see ``momos.batchnorm``); 0 keeps the running
            ones (the paper). Only for models with BatchNorm, such as ResNet-20.
        metrics: complexity metrics (``momos.complexity.METRICS``) logged at epoch 0 and after
            every epoch.
        data_dir: the folder of the data sets (default ``$MOMOS_DATA``, else ``~/.cache/momos/data``).
        download: fetch a missing data set through torchvision.
        init_from: start from the weights of a run folder or a ``.safetensors`` state dict of
            the same model and data set, or of ``timm:NAME`` (``NAME`` = ``model``, with
            ``init_weights``; head and input channels must fit the data set), instead of a
            random initialization (see ``momos.sources``).
        init_weights: the weight file of a ``timm:`` ``init_from``.

    Only the ``momos`` methods use ``momos`` and the projection schedule, only the ``qat`` ones
    ``qat_bits`` (:data:`METHOD_OPTIONS`); setting one for another method is an
    :class:`UnusedOptionError`.
    """

    dataset: str = "digits"
    model: str = "mlp"
    method: str = "momos"
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    val_fraction: float = 0.05
    split_seed: int = 0
    train_subset: int | None = None
    augment: bool | None = None
    randaugment: bool = False
    seed: int = 0
    qat_bits: int | None = None
    momos: MoMosConfig | None = None
    every_n_steps: int | None = None
    warmup_epochs: int = 0
    anneal_from: float | None = None
    anneal_epochs: int = 0
    reestimate_bn: int = 0
    metrics: tuple[str, ...] = field(default_factory=tuple)
    data_dir: str | None = None
    download: bool = True
    init_from: str | None = None
    init_weights: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        for name, value in DATASET_DEFAULTS.get(self.dataset, DATASET_DEFAULTS[None]).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        self._check()
        uses_momos, uses_qat = option_applies("momos", self.method), option_applies("qat_bits", self.method)
        optimizer = self.optimizer or optimizer_profile(self.model)
        lr, weight_decay, momentum = PROFILES[optimizer]
        defaults = {
            "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay,
            "momentum": momentum, "augment": INFOS[self.dataset].augment,
            "qat_bits": DEFAULT_QAT_BITS if uses_qat else None,
            "momos": replace(DEFAULT_MOMOS, seed=self.seed) if uses_momos else None,
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def _check(self) -> None:
        """Names, ranges and combinations; raises ValueError naming the problem."""
        choices = {"method": METHODS, "schedule": SCHEDULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size", "train_subset", "every_n_steps"):
            value = getattr(self, name)
            if value is None and name in ("train_subset", "every_n_steps"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("weight_decay", "momentum"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be non-negative, got {value}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("seed", "split_seed", "warmup_epochs", "anneal_epochs", "reestimate_bn"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self._check_method_options()
        if self.qat_bits is not None:
            QATConfig(bits=self.qat_bits)
        if option_applies("warmup_epochs", self.method) and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        if self.anneal_from is not None and self.anneal_epochs >= self.epochs:
            raise ValueError(f"anneal_epochs ({self.anneal_epochs}) must be smaller than epochs ({self.epochs}), "
                             "so that the last epoch trains and projects at the configured capacity")
        if self.init_weights is not None and not (self.init_from or "").startswith("timm:"):
            raise ValueError("init_weights is the weight file of a timm: init_from; give init_from timm:NAME")
        if self.momentum is not None and (self.optimizer or optimizer_profile(self.model)) != "sgd":
            raise ValueError("momentum is an SGD option; AdamW has none")

    def _check_method_options(self) -> None:
        """Options only other methods use are an :class:`UnusedOptionError`."""
        defaults = {f.name: f.default for f in fields(self)}
        for names, template in METHOD_OPTIONS.values():
            for name in names:
                if getattr(self, name) != defaults[name] and not option_applies(name, self.method):
                    option = _changed_momos_option(self.momos, self.seed) if name == "momos" else name
                    raise UnusedOptionError(option, self.method, template)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["momos"] = self.momos.to_dict() if self.momos is not None else None
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if d.get("momos") is not None:
            d["momos"] = MoMosConfig.from_dict(d["momos"])
        return cls(**d)


def _changed_momos_option(config: MoMosConfig, seed: int) -> str:
    """The first MoMos option in which ``config`` differs from the default projection of a run
    seeded ``seed`` (``num_motifs`` rather than the capacity it replaces); ``momos`` if none."""
    default = replace(DEFAULT_MOMOS, seed=seed)
    changed = [name for name in MOMOS_OPTIONS if getattr(config, name) != getattr(default, name)]
    if "num_motifs" in changed:
        changed.remove("capacity")
    return changed[0] if changed else "momos"
