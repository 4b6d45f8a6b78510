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


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. ``None`` fields take the paper's default for the model,
    method or data set when the config is built, so a stored config is always complete.

    Attributes:
        dataset: one of ``data.DATASETS``.
        model: ``mlp``, ``resnet20``, ``vit`` or a timm model name.
        method: one of ``METHODS``.
        epochs, batch_size: positive ints (default 10 and the paper's 128; 30 and 32 for the
            1,366 training images of ``digits``).
        optimizer: ``sgd`` or ``adamw`` (default: SGD for ResNets, AdamW otherwise).
        lr, weight_decay, momentum: default from the optimizer (SGD 0.1 / 1e-4 / 0.9; AdamW
            3e-4 / 1e-2); momentum is for SGD only.
        schedule: ``cosine`` (annealed to 0 over the epochs, stepped per epoch) or ``constant``.
        val_fraction, split_seed: the validation split held out from the training split.
        train_subset: keep only this many images of the training split (after the validation
            split is held out), drawn at random with ``split_seed``; for quick studies.
        augment: random crop with padding 4 + horizontal flip (default: on for CIFAR-10 only).
        randaugment: RandAugment(2, 9) before the crop and flip.
        seed: seeds the model initialization, the data order and augmentation.
        qat_bits: q for the ``qat`` methods (default 8).
        momos: the projection for the ``momos`` methods (default s=4, capacity 0.01,
            force-zero, seed = ``seed``).
        every_n_steps: project every N optimizer steps instead of at every epoch end.
        warmup_epochs, anneal_from, anneal_epochs: the Projector's schedule options.
        metrics: complexity metrics (``momos.complexity.METRICS``) logged at every epoch.
        data_dir, download: where data sets are read from, and whether missing ones are fetched.
        init_from: start from the weights of a run folder or a ``.safetensors`` state dict of
            the same model and data set, or of ``timm:NAME`` (``NAME`` = ``model``, with
            ``init_weights``; head and input channels must fit the data set), instead of a
            random initialization (see ``momos.sources``).
        init_weights: the weight file of a ``timm:`` ``init_from``.
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
        uses_momos, uses_qat = "momos" in self.method, "qat" in self.method
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
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("seed", "split_seed", "warmup_epochs", "anneal_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        uses_momos, uses_qat = "momos" in self.method, "qat" in self.method
        if self.qat_bits is not None and not uses_qat:
            raise ValueError(f"quantization bits need method qat or momos+qat, not {self.method}")
        if self.qat_bits is not None:
            QATConfig(bits=self.qat_bits)
        if self.momos is not None and not uses_momos:
            raise ValueError(f"MoMos options need method momos or momos+qat, not {self.method}")
        if uses_momos and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        if not uses_momos and (self.warmup_epochs or self.anneal_from is not None or self.anneal_epochs
                               or self.every_n_steps is not None):
            raise ValueError(f"projection schedule options need method momos or momos+qat, not {self.method}")
        if self.init_weights is not None and not (self.init_from or "").startswith("timm:"):
            raise ValueError("init_weights is the weight file of a timm: init_from; give init_from timm:NAME")
        if self.momentum is not None and (self.optimizer or optimizer_profile(self.model)) != "sgd":
            raise ValueError("momentum is an SGD option; AdamW has none")

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
