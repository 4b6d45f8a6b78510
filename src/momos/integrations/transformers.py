"""A Hugging Face ``transformers.Trainer`` callback that keeps the model a mosaic of motifs.

    import momos
    from transformers import Trainer, TrainingArguments
    from momos.integrations.transformers import MoMosCallback

    cfg = momos.MoMosConfig(block_size=4, capacity=0.01, parameters="matrices")   # norms stay free
    trainer = Trainer(model=model, train_dataset=train, eval_dataset=val, callbacks=[MoMosCallback(cfg)],
                      args=TrainingArguments(output_dir="out", eval_strategy="epoch", save_strategy="epoch"))
    trainer.train()                                   # ends as an exact mosaic
    momos.save(trainer.model, "model.momos", cfg)

When it projects. For every optimizer step and at every epoch end, the Trainer (transformers
5.24, ``Trainer._run_epoch``) calls the callbacks first, then logs, evaluates and saves::

    optimizer.step -> on_optimizer_step -> on_step_end  -> log -> evaluate -> save checkpoint -> on_save
    (last batch of the epoch)          -> on_epoch_end -> log -> evaluate -> save checkpoint -> on_save
    after the last epoch: log train metrics -> load_best_model_at_end -> on_train_end
    (trainer.save_model() in the user's script comes after train() returns)

So projecting in ``on_epoch_end`` (the default, the paper's schedule) or in ``on_step_end``
(``every_n_steps``) happens before the evaluation and the checkpoint of that epoch or step:
both see the mosaic. A checkpoint taken between projections (``save_strategy="steps"`` with
epoch projections) holds the trained, not yet projected, weights. ``on_train_end`` makes the
model an exact mosaic once more (nothing changes when the last projection still holds).

Logging. The Trainer copies a log into ``state.log_history`` before it calls ``on_log``, and
it registers the ``report_to`` integrations (TensorBoard, W&B, ...) before the callbacks given
to it. The callback therefore asks for a log at each projection, adds the ``momos/*``
statistics to that log's dict (seen by every callback after it, the progress bar included) and
to the entry just written to ``state.log_history`` (saved in every checkpoint's
``trainer_state.json``). For the integrations to see them too, put the callback first:
``trainer.callback_handler.callbacks.insert(0, callback)`` instead of ``callbacks=[...]``.
When the Trainer had already logged that step, the statistics join its next log entry (an
evaluation at the same step, or a later one).

BatchNorm. For a model with BatchNorm layers (a ResNet), ``MoMosCallback(cfg, reestimate_bn=40)``
re-estimates their running statistics (``momos.batchnorm``) after every epoch that projected
(before that epoch's evaluation and checkpoint) and after the final projection, on the first 40
batches of the Trainer's training loader. It reads that loader's underlying ``DataLoader``:
accelerate's wrapper records each pass in the accelerator's state, and a pass left after 40
batches would stay open there.

Distributed. Under the Trainer's DDP every rank projects its own (unwrapped) model and
:class:`momos.Projector` broadcasts rank 0's result, so all ranks keep the same mosaic. The
re-estimated BatchNorm statistics (each rank's from its own shard) are rank 0's too.
DeepSpeed ZeRO-3 and FSDP shard the parameters and are not supported.

Resuming. The counters, the history and the motif generator's state are saved in the
checkpoint's ``trainer_state.json`` and restored with ``TrainingArguments(
restore_callback_states_from_checkpoint=True)``; the Trainer then replaces the callback given
to it by a new instance (find it in ``trainer.callback_handler.callbacks``). The last codebook
is not saved (it may be large), so after a resume ``motif_method="persistent"`` starts from a fresh
draw. Without restoring, the schedule still follows the Trainer's step and epoch counters, but
the motifs are drawn anew from ``config.seed``.
"""

from __future__ import annotations

import base64
import math
import warnings

import torch
from torch import nn
from transformers import TrainerCallback, trainer_callback

from ..batchnorm import require_batchnorm
from ..complexity.description import default_bits, description_length_from_stats
from ..config import MoMosConfig
from ..project import ProjectionStats
from ..projector import Projector
from . import check_reestimate_bn, reestimate_bn_on_all_ranks

# transformers < 4.41 has no stateful callbacks; the callback then simply is not saved.
ExportableState = getattr(trainer_callback, "ExportableState", object)

# Projector options that survive the JSON of trainer_state.json (calibration inputs do not).
_JSON_OPTIONS = ("warmup_epochs", "anneal_from", "anneal_epochs")


class MoMosCallback(TrainerCallback, ExportableState):
    """Projects the Trainer's model with one :class:`momos.Projector` per ``train()`` call.

    Args:
        cfg: the projection config (or its ``to_dict()``, as the Trainer passes when it restores
            the callback from a checkpoint).
        every_n_steps: project every N optimizer steps instead of at every epoch end.
        reestimate_bn: re-estimate the BatchNorm statistics on this many training batches after
            every epoch that projected and after the final projection; 0 (the default, the
            paper) keeps the running ones.
        **projector_options: passed to :class:`momos.Projector` (``warmup_epochs``,
            ``anneal_from``, ``anneal_epochs``, ``calibration``).

    After training, ``projector.history`` lists every projection's statistics.
    """

    def __init__(self, cfg: MoMosConfig | dict, every_n_steps: int | None = None, reestimate_bn: int = 0,
                 **projector_options) -> None:
        self.config = MoMosConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        self.config.validate()
        self.every_n_steps = every_n_steps
        self.reestimate_bn = check_reestimate_bn(reestimate_bn)
        self._projections_before_epoch = 0
        self.projector_options = projector_options
        self.projector: Projector | None = None
        self._pending_logs: dict[str, float] = {}
        # Set by the Trainer when it restores the callback (see state()).
        self._restored_projector: dict | None = None
        self._lost_options: list[str] = []

    # ---- training events ----

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.reestimate_bn:
            require_batchnorm(_unwrap(model), f"reestimate_bn: {type(_unwrap(model)).__name__}")
        self.projector = Projector(_unwrap(model), self.config, every_n_steps=self.every_n_steps,
                                   **self.projector_options)
        # Follow the Trainer's counters, so a resumed run keeps the schedule even without restoring.
        self.projector.steps = state.global_step
        self.projector.epochs = math.floor(state.epoch or 0)
        if self._restored_projector is not None:
            self.projector.load_state_dict(_projector_state_from_json(self._restored_projector))
            self._restored_projector = None
        for name in self._lost_options:
            if name not in self.projector_options:
                warnings.warn(f"the restored MoMosCallback has no {name!r} (it cannot be saved in "
                              "trainer_state.json); resume without restore_callback_states_from_checkpoint "
                              "to keep it", UserWarning, stacklevel=2)

    def on_step_end(self, args, state, control, **kwargs):
        # One call per optimizer step: the Trainer calls on_substep_end for accumulation steps.
        self._after_projection(self.projector.step(), control)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._projections_before_epoch = len(self.projector.history)

    def on_epoch_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self._after_projection(self.projector.epoch_end(), control)
        # with every_n_steps the epoch's projections came during it: re-estimate once, at its end
        if len(self.projector.history) > self._projections_before_epoch:
            self._reestimate_bn(model, train_dataloader)

    def on_train_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        # After the Trainer's last log: a projection here is in projector.history only.
        if self.projector.finalize() is not None:
            self._reestimate_bn(model, train_dataloader)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending_logs or logs is None:
            return
        entry = state.log_history[-1] if state.log_history else None
        # Trainer.log appended {**logs, "step": ...} just before on_log; mirror the statistics there.
        if entry is not None and entry.get("step") == state.global_step and set(entry) - {"step"} <= set(logs):
            entry.update(self._pending_logs)
        logs.update(self._pending_logs)
        self._pending_logs = {}

    def _reestimate_bn(self, model: nn.Module, train_dataloader) -> None:
        # accelerate wraps the loader; a partial pass of the wrapper would stay open in its state
        reestimate_bn_on_all_ranks(_unwrap(model), getattr(train_dataloader, "base_dataloader", train_dataloader),
                                   self.reestimate_bn)

    def _after_projection(self, stats: ProjectionStats | None, control) -> None:
        if stats is None:
            return
        self._pending_logs = log_values(stats, self.config, projections=len(self.projector.history))
        control.should_log = True  # so the statistics are logged at this step when possible

    # ---- ExportableState: saved in trainer_state.json, hence JSON only ----

    def state(self) -> dict:
        options = {k: v for k, v in self.projector_options.items() if k in _JSON_OPTIONS}
        projector = (_projector_state_to_json(self.projector.state_dict()) if self.projector is not None
                     else self._restored_projector)
        return {
            "args": {"cfg": self.config.to_dict(), "every_n_steps": self.every_n_steps,
                     "reestimate_bn": self.reestimate_bn, **options},
            "attributes": {"_restored_projector": projector,
                           "_lost_options": sorted(set(self.projector_options) - set(_JSON_OPTIONS))},
        }


def log_values(stats: ProjectionStats, config: MoMosConfig, projections: int) -> dict[str, float]:
    """The ``momos/*`` log entries of one projection.

    ``bits_per_weight`` is the paper's bound ``(k·s·q + m·⌈log2 k⌉)`` over ``n`` (q: the motif
    bits, else 32; unused motifs not counted; 8 bits per scale with ``normalize``).
    """
    summary = stats.summary()
    length = description_length_from_stats(stats, q=default_bits(config))
    return {
        "momos/distortion": summary["distortion"],
        "momos/motifs_used": summary["motifs_used"],
        "momos/num_motifs": summary["num_motifs"],
        "momos/max_relative_error": summary["max_relative_error"],
        "momos/bits_per_weight": length.bound_bits / length.num_weights,
        "momos/simplification_factor": length.simplification_factor,
        "momos/projections": projections,
    }


def _unwrap(model: nn.Module) -> nn.Module:
    # The Trainer passes its unwrapped model; unwrap anyway for a callback driven by hand.
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _projector_state_to_json(state: dict) -> dict:
    # The codebooks and scales are left out: they can be large, and JSON holds no tensors.
    generator = base64.b64encode(state["generator_state"].numpy().tobytes()).decode("ascii")
    return {"steps": state["steps"], "epochs": state["epochs"], "history": state["history"],
            "generator_state": generator}


def _projector_state_from_json(state: dict) -> dict:
    generator = torch.frombuffer(bytearray(base64.b64decode(state["generator_state"])), dtype=torch.uint8)
    return {**state, "generator_state": generator, "codebook_motifs": None, "scales": None}
