"""A PyTorch Lightning callback that projects at the end of every training epoch, before validation.

    trainer = lightning.Trainer(callbacks=[MoMosCallback(momos.MoMosConfig(block_size=4, capacity=0.01))])

Lightning runs the end-of-epoch validation before ``on_train_epoch_end``, so the callback
projects after the epoch's last training batch instead: validation and checkpoints then
see the projected model. Works with Lightning's DDP strategy (see ``momos.distributed``).
"""

from __future__ import annotations

from lightning.pytorch import Callback

from ..config import MoMosConfig
from ..projector import Projector


class MoMosCallback(Callback):
    """Projects the LightningModule's parameters with a :class:`momos.Projector`.

    Args:
        config: the projection config.
        **projector_options: passed to :class:`momos.Projector` (``every_n_steps``,
            ``warmup_epochs``, ``anneal_from``, ``anneal_epochs``).
    """

    def __init__(self, config: MoMosConfig, **projector_options) -> None:
        config.validate()
        self.config = config
        self.projector_options = projector_options
        self.projector: Projector | None = None
        self._pending_state: dict | None = None
        self._last_global_step = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.projector is None:
            self.projector = Projector(pl_module, self.config, **self.projector_options)
            if self._pending_state is not None:
                self.projector.load_state_dict(self._pending_state)
                self._pending_state = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # One projector step per optimizer step (gradient accumulation makes batches != steps).
        while self._last_global_step < trainer.global_step:
            self._last_global_step += 1
            self.projector.step()
        if batch_idx + 1 == trainer.num_training_batches:
            self.projector.epoch_end()

    def on_train_end(self, trainer, pl_module) -> None:
        self.projector.finalize()

    def state_dict(self) -> dict:
        state = self.projector.state_dict() if self.projector is not None else self._pending_state
        return {"projector": state, "last_global_step": self._last_global_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._last_global_step = state_dict["last_global_step"]
        if self.projector is not None:
            self.projector.load_state_dict(state_dict["projector"])
        else:
            self._pending_state = state_dict["projector"]
