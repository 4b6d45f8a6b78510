"""The configuration of a MoMos projection: one small, validated dataclass."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

SCOPES = ("global", "per_tensor")
MOTIF_METHODS = ("sample", "kmeans", "persistent")
ASSIGNMENTS = ("exact", "approximate")
NORMALIZATIONS = ("none", "tensor", "channel")
PARAMETER_SETS = ("all", "matrices")


@dataclass(frozen=True)
class MoMosConfig:
    """How a model's weights are cut into blocks and replaced by motifs.

    Exactly one of ``capacity`` and ``num_motifs`` must be given.

    Attributes:
        block_size: ``s``, the number of values in a block.
        tile_shape: ``(r, c)`` with ``r * c == block_size`` to cut tensors of two or more
            dimensions into ``r x c`` tiles over their last two dimensions instead of runs of
            ``s`` consecutive values (e.g. ``(3, 3)`` for conv kernels); ``None``: runs.
        capacity: ``c`` in (0, 1]; the number of motifs is ``k = max(1, floor(c * m))``
            for ``m`` blocks (per tensor when ``scope="per_tensor"``).
        num_motifs: ``k`` given directly (clamped to the number of blocks).
        force_zero: motif 0 is the all-zero block; ``k - 1`` motifs are drawn.
        scope: ``"global"`` (one codebook for the whole model, as in the paper) or
            ``"per_tensor"`` (each tensor has its own codebook).
        motif_method: how motifs are chosen. ``"sample"``: ``k`` distinct blocks drawn uniformly
            at random at every projection (the paper's method). ``"kmeans"``: sampled, then
            refined by ``kmeans_iterations`` Lloyd iterations. ``"persistent"``: the previous
            projection's codebook refined by Lloyd iterations (sampled the first time), so
            the codebook drifts slowly instead of being redrawn.
        kmeans_iterations: Lloyd iterations for ``"kmeans"`` and ``"persistent"``.
        normalize: ``"none"`` (the paper: raw values), ``"tensor"`` (each tensor is divided by
            one power-of-two scale before its blocks meet the codebook) or ``"channel"`` (one scale
            per output channel, dim 0, of tensors with two or more dimensions; 1-D tensors get
            one; blocks never span two channels). The codebook stays shared, in normalized
            units, and every weight is ``scale x motif`` value.
        parameters: ``"all"`` (the paper) or ``"matrices"``: only parameters with two or more
            dimensions (Linear/Conv/Embedding/attention weights), leaving norms and biases
            free; applied before ``include``/``exclude``.
        include: regular expressions; when given, exactly the parameters whose name
            matches one of them (``re.search``) are projected, frozen ones too. By default
            every parameter with ``requires_grad`` is.
        exclude: regular expressions; parameters whose name matches one are left free.
        motif_bits: quantize the motifs to this many bits (symmetric, one scale per
            codebook) before assigning, so the model is exactly ``k`` q-bit motifs
            plus indices. ``None`` or ``>= 32`` keeps float motifs.
        seed: seeds the generator that draws motifs.
        assignment: ``"exact"`` (every block to its nearest motif) or ``"approximate"``
            (an inverted file over the motifs: each block searches the motifs of the
            ``nprobe`` nearest k-means cells; for huge codebooks).
        nprobe: cells searched per block by the approximate assignment; more is slower and
            closer to exact (as many as there are cells, about ``sqrt(k)``, is exact).

    Runtime knobs (memory, time limits) are not part of the mosaic and live elsewhere:
    ``project_(..., max_distance_bytes=...)``, ``momos.warn_if_slow(model, config, limit_seconds)``.
    """

    block_size: int = 4
    tile_shape: tuple[int, int] | None = None
    capacity: float | None = None
    num_motifs: int | None = None
    force_zero: bool = True
    scope: Literal["global", "per_tensor"] = "global"
    motif_method: Literal["sample", "kmeans", "persistent"] = "sample"
    kmeans_iterations: int = 5
    normalize: Literal["none", "tensor", "channel"] = "none"
    parameters: Literal["all", "matrices"] = "all"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = field(default_factory=tuple)
    motif_bits: int | None = None
    seed: int = 0
    assignment: Literal["exact", "approximate"] = "exact"
    nprobe: int = 4

    def __post_init__(self) -> None:
        # Lists are accepted for convenience but stored as tuples so the config stays hashable.
        if self.include is not None:
            object.__setattr__(self, "include", tuple(self.include))
        if self.tile_shape is not None:
            object.__setattr__(self, "tile_shape", tuple(self.tile_shape))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        self.validate()

    def validate(self) -> None:
        _check_int("block_size", self.block_size, minimum=1)
        if self.tile_shape is not None:
            if len(self.tile_shape) != 2:
                raise ValueError(f"tile_shape must be (rows, cols), got {self.tile_shape!r}")
            for size in self.tile_shape:
                _check_int("tile_shape entries", size, minimum=1)
            if self.tile_shape[0] * self.tile_shape[1] != self.block_size:
                raise ValueError(f"tile_shape {tuple(self.tile_shape)} holds "
                                 f"{self.tile_shape[0] * self.tile_shape[1]} values, "
                                 f"block_size is {self.block_size}")
        if (self.capacity is None) == (self.num_motifs is None):
            raise ValueError("give exactly one of capacity and num_motifs "
                             f"(got capacity={self.capacity!r}, num_motifs={self.num_motifs!r})")
        if self.capacity is not None:
            if isinstance(self.capacity, bool) or not isinstance(self.capacity, (int, float)):
                raise TypeError(f"capacity must be a number, got {type(self.capacity).__name__}")
            if not (0.0 < self.capacity <= 1.0) or math.isnan(self.capacity):
                raise ValueError(f"capacity must be in (0, 1], got {self.capacity}")
        if self.num_motifs is not None:
            _check_int("num_motifs", self.num_motifs, minimum=1)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.motif_method not in MOTIF_METHODS:
            raise ValueError(f"motif_method must be one of {MOTIF_METHODS}, got {self.motif_method!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.parameters not in PARAMETER_SETS:
            raise ValueError(f"parameters must be one of {PARAMETER_SETS}, got {self.parameters!r}")
        _check_int("kmeans_iterations", self.kmeans_iterations, minimum=0)
        if self.motif_bits is not None:
            _check_int("motif_bits", self.motif_bits, minimum=2)
        _check_int("seed", self.seed, minimum=0)
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {self.assignment!r}")
        _check_int("nprobe", self.nprobe, minimum=1)

    def motifs_for(self, num_blocks: int) -> int:
        """``k`` for a codebook shared by ``num_blocks`` blocks."""
        if self.num_motifs is not None:
            k = self.num_motifs
        else:
            k = math.floor(self.capacity * num_blocks)
        return max(1, min(k, num_blocks))

    @property
    def quantizes_motifs(self) -> bool:
        return self.motif_bits is not None and self.motif_bits < 32

    def to_dict(self) -> dict:
        d = asdict(self)
        d["include"] = list(self.include) if self.include is not None else None
        d["exclude"] = list(self.exclude)
        d["tile_shape"] = list(self.tile_shape) if self.tile_shape is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MoMosConfig":
        # Configs stored by versions before 0.2 also held these runtime knobs; they never
        # changed the mosaic, so they are dropped. They called motif_method "motifs".
        d = {FORMER_NAMES.get(k, k): v for k, v in d.items() if k not in _FORMER_RUNTIME_KNOBS}
        return cls(**d)


_FORMER_RUNTIME_KNOBS = ("max_distance_bytes", "max_projection_seconds")
FORMER_NAMES = {"motifs": "motif_method"}


def _check_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
