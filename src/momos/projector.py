"""A small stateful helper that projects at the right moments of a training loop.

    projector = momos.Projector(model, momos.MoMosConfig(block_size=4, capacity=0.01))
    for epoch in range(epochs):
        for x, y in loader:
            ...; optimizer.step()
            projector.step()          # counts steps; projects here only with every_n_steps
        projector.epoch_end()         # projects here by default (the paper's schedule)
    projector.finalize()              # the model is now exactly a mosaic of the configured capacity
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .calibration import Calibration
from .config import MoMosConfig
from .distributed import broadcast_parameters_
from .project import ProjectionStats, is_mosaic, project_, select_parameters


class Projector:
    """Owns the motif generator and the projection history of one training run.

    Under ``torch.distributed`` every rank projects, then rank 0's result is broadcast, so all
    ranks hold the same mosaic. Give it the bare model (``ddp_model.module``).

    Args:
        model: the model to project (its selected parameters are overwritten in place).
        config: the projection config; ``config.seed`` seeds the generator.
        every_n_steps: project every N calls of :meth:`step` instead of at epoch ends.
        warmup_epochs: no projection before this many epochs have ended.
        anneal_from: start at this capacity and shrink geometrically to ``config.capacity``
            over the first ``anneal_epochs`` epochs (a gentler start for low capacities).
        anneal_epochs: length of the annealing, in epochs.
        calibration: calibration inputs for every projection (see ``momos.project_``); the
            input statistics are measured again each time, since the weights before them change.
    """

    def __init__(self, model: nn.Module, config: MoMosConfig, *,
                 every_n_steps: int | None = None, warmup_epochs: int = 0,
                 anneal_from: float | None = None, anneal_epochs: int = 0,
                 calibration: Calibration | None = None) -> None:
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be a positive int or None, got {every_n_steps!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if anneal_from is not None:
            if config.capacity is None:
                raise ValueError("capacity annealing needs a config with capacity, not num_motifs")
            if not config.capacity <= anneal_from <= 1:
                raise ValueError(f"anneal_from must be in [capacity, 1] = [{config.capacity}, 1], "
                                 f"got {anneal_from}")
            if anneal_epochs < 1:
                raise ValueError(f"anneal_epochs must be >= 1 with anneal_from, got {anneal_epochs}")
        elif anneal_epochs:
            raise ValueError(f"anneal_epochs ({anneal_epochs}) needs anneal_from, the capacity to anneal from")
        config.validate()
        self.anneal_from = anneal_from
        self.anneal_epochs = anneal_epochs
        self.model = model
        self.config = config
        self.every_n_steps = every_n_steps
        self.warmup_epochs = warmup_epochs
        self.calibration = calibration
        self.generator = torch.Generator().manual_seed(config.seed)
        self.steps = 0
        self.epochs = 0  # epochs ended so far; the epoch in progress is number epochs + 1
        self.history: list[dict] = []
        self.last: ProjectionStats | None = None
        self.codebook_motifs: list[torch.Tensor] | None = None   # each codebook's motifs, last projection
        self.scales: tuple[torch.Tensor, ...] | None = None  # of the last projection, with normalize

    @property
    def warmed_up(self) -> bool:
        """True once the warm-up epochs have all ended."""
        return self.epochs >= self.warmup_epochs

    @property
    def projects_at_next_step(self) -> bool:
        """True when the next call of :meth:`step` projects (a caller may check the weights first)."""
        return bool(self.every_n_steps) and self.warmed_up and (self.steps + 1) % self.every_n_steps == 0

    def step(self) -> ProjectionStats | None:
        """Call after each optimizer step."""
        projects = self.projects_at_next_step
        self.steps += 1
        return self.project() if projects else None

    def epoch_end(self) -> ProjectionStats | None:
        """Call after an epoch's last optimizer step, before validation."""
        # Warm-up counts whole epochs: with W warm-up epochs the first projection ends epoch W + 1.
        stats = self.project() if self.every_n_steps is None and self.warmed_up else None
        self.epochs += 1
        return stats

    def current_config(self) -> MoMosConfig:
        """The config of the next projection: ``config``, with the annealed capacity if annealing."""
        if self.anneal_from is None or self.epochs >= self.anneal_epochs:
            return self.config
        progress = self.epochs / self.anneal_epochs
        capacity = self.anneal_from * (self.config.capacity / self.anneal_from) ** progress
        return replace(self.config, capacity=capacity)

    def project(self, config: MoMosConfig | None = None) -> ProjectionStats:
        """Project now (a new codebook; refined from the last one when ``motif_method="persistent"``),
        under ``config`` if given, else :meth:`current_config`."""
        config = self.current_config() if config is None else config
        stats = project_(self.model, config, generator=self.generator, init_motifs=self.codebook_motifs,
                         calibration=self.calibration, warn_relative_error=None, keep_nonzero=False)
        broadcast_parameters_([p for _, p in select_parameters(self.model, config)])
        self.last = stats
        self.codebook_motifs = stats.codebook_motifs()
        self.scales = stats.scales
        self.history.append({"epoch": self.epochs + 1, "step": self.steps, "capacity": config.capacity,
                             **stats.summary()})
        return stats

    def finalize(self) -> ProjectionStats | None:
        """Make sure the model is exactly a mosaic at ``config``'s capacity; projects again
        (at that capacity) only if it is not already: after steps that followed the last
        projection, or when training ended before the annealing did.

        Returns the new projection's statistics, or None when nothing had to change.
        """
        last = self.history[-1] if self.history else {}
        # histories saved before 0.2 record no capacity: their last projection counts as final
        at_capacity = last.get("capacity", self.config.capacity) == self.config.capacity
        if (self.codebook_motifs is not None and at_capacity
                and is_mosaic(self.model, self.config, self.codebook_motifs, self.scales)):
            return None
        return self.project(self.config)

    def state_dict(self) -> dict:
        """Everything needed to resume: counters, history, generator state, last codebook."""
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "history": list(self.history),
            "generator_state": self.generator.get_state(),
            "codebook_motifs": self.codebook_motifs,
            "scales": self.scales,
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.epochs = int(state["epochs"])
        self.history = list(state["history"])
        self.generator.set_state(state["generator_state"])
        # states written before 0.2 name them "codebooks"
        self.codebook_motifs = state.get("codebook_motifs", state.get("codebooks"))
        self.scales = state.get("scales")
