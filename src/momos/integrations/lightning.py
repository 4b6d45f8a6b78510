"""A PyTorch Lightning callback that projects at the end of every training epoch, before validation.

    trainer = lightning.Trainer(callbacks=[MoMosCallback(momos.MoMosConfig(block_size=4, capacity=0.01))])

Lightning runs the end-of-epoch validation before ``on_train_epoch_end``, so the callback
projects after the epoch's last training batch instead: validation and checkpoints then
see the projected model. Works with Lightning's DDP strategy (see ``momos.distributed``).

For a convnet, ``MoMosCallback(config, reestimate_bn=40)`` also re-estimates the BatchNorm
statistics (``momos.batchnorm``) after the epoch's projection, on the first 40 batches of
``trainer.train_dataloader``, each an ``(inputs, labels)`` pair (or a mapping without
``"labels"``, or the inputs) whose inputs the LightningModule's ``forward`` takes. Under DDP
each rank sees its own shard, so rank 0's statistics are broadcast to all.
"""

from __future__ import annotations

from lightning.pytorch import Callback

from ..batchnorm import require_batchnorm
from ..config import MoMosConfig
from ..projector import Projector
from . import check_reestimate_bn, reestimate_bn_on_all_ranks


class MoMosCallback(Callback):
    """Projects the LightningModule's parameters with a :class:`momos.Projector`.

    Args:
        config: the projection config.
        reestimate_bn: re-estimate the BatchNorm statistics on this many training batches after
            every epoch that projected and after the final projection; 0 (the default, the paper)
            keeps the running ones.
        **projector_options: passed to :class:`momos.Projector` (``every_n_steps``,
            ``warmup_epochs``, ``anneal_from``, ``anneal_epochs``).
    """

    def __init__(self, config: MoMosConfig, reestimate_bn: int = 0, **projector_options) -> None:
        config.validate()
        self.config = config
        self.reestimate_bn = check_reestimate_bn(reestimate_bn)
        self.projector_options = projector_options
        self.projector: Projector | None = None
        self._pending_state: dict | None = None
        self._last_global_step = 0
        self._projections_before_epoch = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.reestimate_bn:
            require_batchnorm(pl_module, f"reestimate_bn: {type(pl_module).__name__}")
        if self.projector is None:
            self.projector = Projector(pl_module, self.config, **self.projector_options)
            if self._pending_state is not None:
                self.projector.load_state_dict(self._pending_state)
                self._pending_state = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._projections_before_epoch = len(self.projector.history)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # One projector step per optimizer step (gradient accumulation makes batches != steps).
        while self._last_global_step < trainer.global_step:
            self._last_global_step += 1
            self.projector.step()
        if batch_idx + 1 == trainer.num_training_batches:
            self.projector.epoch_end()
            # with every_n_steps the epoch's projections came during it: re-estimate once, at its end
            if len(self.projector.history) > self._projections_before_epoch:
                reestimate_bn_on_all_ranks(pl_module, trainer.train_dataloader, self.reestimate_bn)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.projector.finalize() is not None:
            reestimate_bn_on_all_ranks(pl_module, trainer.train_dataloader, self.reestimate_bn)

    def state_dict(self) -> dict:
        state = self.projector.state_dict() if self.projector is not None else self._pending_state
        return {"projector": state, "last_global_step": self._last_global_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._last_global_step = state_dict["last_global_step"]
        if self.projector is not None:
            self.projector.load_state_dict(state_dict["projector"])
        else:
            self._pending_state = state_dict["projector"]
