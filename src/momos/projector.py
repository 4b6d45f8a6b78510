"""A small stateful helper that projects at the right moments of a training loop.

    projector = momos.Projector(model, momos.MoMosConfig(block_size=4, capacity=0.01))
    for epoch in range(epochs):
        for x, y in loader:
            ...; optimizer.step()
            projector.step()          # counts steps; projects here only with every_n_steps
        projector.epoch_end()         # projects here by default (the paper's schedule)
    projector.finalize()              # the model is now exactly a mosaic
"""

from __future__ import annotations

import torch
from torch import nn

from .config import MoMosConfig
from .project import ProjectionStats, is_mosaic, project_


class Projector:
    """Owns the motif generator and the projection history of one training run.

    Args:
        model: the model to project (its selected parameters are overwritten in place).
        config: the projection config; ``config.seed`` seeds the generator.
        every_n_steps: project every N calls of :meth:`step` instead of at epoch ends.
        warmup_epochs: no projection before this many epochs have ended.
    """

    def __init__(self, model: nn.Module, config: MoMosConfig, *,
                 every_n_steps: int | None = None, warmup_epochs: int = 0) -> None:
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be a positive int or None, got {every_n_steps!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        config.validate()
        self.model = model
        self.config = config
        self.every_n_steps = every_n_steps
        self.warmup_epochs = warmup_epochs
        self.generator = torch.Generator().manual_seed(config.seed)
        self.steps = 0
        self.epochs = 0
        self.history: list[dict] = []
        self.last: ProjectionStats | None = None
        self.codebooks: list[torch.Tensor] | None = None

    @property
    def warmed_up(self) -> bool:
        """True once the warm-up epochs have all ended."""
        return self.epochs >= self.warmup_epochs

    def step(self) -> ProjectionStats | None:
        """Call after each optimizer step."""
        self.steps += 1
        if self.every_n_steps and self.warmed_up and self.steps % self.every_n_steps == 0:
            return self.project()
        return None

    def epoch_end(self) -> ProjectionStats | None:
        """Call after an epoch's last optimizer step, before validation."""
        # Warm-up counts whole epochs: with W warm-up epochs the first projection ends epoch W + 1.
        due = self.every_n_steps is None and self.warmed_up
        self.epochs += 1
        return self.project() if due else None

    def project(self) -> ProjectionStats:
        """Project now, drawing a new codebook."""
        stats = project_(self.model, self.config, generator=self.generator)
        self.last = stats
        self.codebooks = stats.codebook_motifs()
        self.history.append({"epoch": self.epochs, "step": self.steps, **stats.summary()})
        return stats

    def finalize(self) -> ProjectionStats | None:
        """Make sure the model is exactly a mosaic; projects again only if it is not already.

        Returns the new projection's statistics, or None when nothing had to change.
        """
        if self.codebooks is not None and is_mosaic(self.model, self.config, self.codebooks):
            return None
        return self.project()

    def state_dict(self) -> dict:
        """Everything needed to resume: counters, history, generator state, last codebook."""
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "history": list(self.history),
            "generator_state": self.generator.get_state(),
            "codebooks": self.codebooks,
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.epochs = int(state["epochs"])
        self.history = list(state["history"])
        self.generator.set_state(state["generator_state"])
        self.codebooks = state.get("codebooks")
