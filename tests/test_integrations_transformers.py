"""The Hugging Face Trainer callback, on a tiny random BERT and a synthetic token task."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import momos

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from momos.integrations.transformers import MoMosCallback  # noqa: E402

CFG = momos.MoMosConfig(block_size=4, capacity=0.05)
STEPS_PER_EPOCH = 4  # 64 examples, batches of 16


class TokenTask(torch.utils.data.Dataset):
    """Random token ids; the label says whether most of them are below 50."""

    def __init__(self, size: int = 64, length: int = 9, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (size, length), generator=generator)
        self.labels = ((self.ids < 50).sum(1) > length // 2).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=2, max_position_embeddings=16))


class Recorder(TrainerCallback):
    """Registered after the MoMos callback: what later callbacks see in logs, and whether each
    evaluation ran on a mosaic."""

    def __init__(self, momos_callback):
        self.momos_callback = momos_callback
        self.logs = []
        self.evaluated_mosaics = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.evaluated_mosaics.append(momos.is_mosaic(model, CFG, self.momos_callback.projector.codebook_motifs))


def train(output_dir, callbacks, model=None, resume=None, task=TokenTask, **arguments):
    defaults = dict(output_dir=str(output_dir), num_train_epochs=2, per_device_train_batch_size=16,
                    learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", logging_steps=100,
                    disable_tqdm=True)
    trainer = Trainer(model=model or tiny_bert(), args=TrainingArguments(**{**defaults, **arguments}),
                      train_dataset=task(), eval_dataset=task(16, seed=1), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model trains several times faster on one thread than on contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def momos_entries(log_history):
    return [entry for entry in log_history if "momos/distortion" in entry]


@pytest.fixture(scope="module")
def epoch_run(tmp_path_factory):
    """Two epochs, projecting at each epoch end, with an evaluation and a checkpoint per epoch."""
    out = tmp_path_factory.mktemp("epochs")
    callback = MoMosCallback(CFG)
    recorder = Recorder(callback)
    trainer = train(out, [callback, recorder], eval_strategy="epoch", save_strategy="epoch", logging_steps=2)
    return out, trainer, callback, recorder


def test_projects_at_each_epoch_end_before_evaluation_and_ends_as_exact_mosaic(epoch_run, tmp_path):
    out, trainer, callback, recorder = epoch_run
    assert [entry["step"] for entry in callback.projector.history] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert recorder.evaluated_mosaics == [True, True]
    assert momos.is_mosaic(trainer.model, CFG, callback.projector.codebook_motifs)
    info = momos.save(trainer.model, tmp_path / "bert.momos", CFG)
    assert info.bits_per_weight < 32
    state = momos.load(tmp_path / "bert.momos")
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(state[name], tensor), name


def test_checkpoint_saved_at_epoch_end_holds_the_projected_weights(epoch_run, tmp_path):
    out, trainer, callback, _ = epoch_run
    for epoch in (1, 2):
        checkpoint = out / f"checkpoint-{epoch * STEPS_PER_EPOCH}"
        model = tiny_bert()
        model.load_state_dict(load_file(checkpoint / "model.safetensors"))
        momos.save(model, tmp_path / f"epoch{epoch}.momos", CFG)   # refuses weights that are not a mosaic
        # the projection's log entry is already in the checkpoint's trainer state
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        assert len(momos_entries(saved["log_history"])) == epoch
    final = load_file(out / f"checkpoint-{2 * STEPS_PER_EPOCH}" / "model.safetensors")
    for name, tensor in trainer.model.state_dict().items():
        if name in final:
            assert torch.equal(final[name], tensor), name


def test_statistics_are_logged_in_log_history_and_seen_by_later_callbacks(epoch_run):
    _, trainer, callback, recorder = epoch_run
    entries = momos_entries(trainer.state.log_history)
    # step 4 was logged before the epoch ended, so each epoch's statistics join its evaluation entry
    assert [(entry["step"], "eval_loss" in entry) for entry in entries] == [(4, True), (8, True)]
    for entry, projection in zip(entries, callback.projector.history):
        assert entry["momos/distortion"] == projection["distortion"]
        assert entry["momos/motifs_used"] == projection["motifs_used"] <= entry["momos/num_motifs"]
        assert 0 < entry["momos/bits_per_weight"] < 32
        assert entry["momos/simplification_factor"] == pytest.approx(32 / entry["momos/bits_per_weight"])
    assert [entry["momos/projections"] for entry in entries] == [1, 2]
    assert len(momos_entries(recorder.logs)) == 2


def test_every_n_steps_projects_every_n_optimizer_steps_and_once_more_at_train_end(tmp_path):
    callback = MoMosCallback(CFG, every_n_steps=3)
    trainer = train(tmp_path, [callback], gradient_accumulation_steps=2, per_device_train_batch_size=8,
                    save_strategy="steps", save_steps=3)
    # 8 optimizer steps (16 batches of 8, 2 per step): projections at steps 3 and 6, and at train end
    # because steps 7 and 8 moved the weights off the mosaic
    assert [entry["step"] for entry in callback.projector.history] == [3, 6, 8]
    # the callback asks for a log at each projection (logging_steps=100 would log none)
    assert [entry["step"] for entry in momos_entries(trainer.state.log_history)] == [3, 6]
    assert momos.is_mosaic(trainer.model, CFG, callback.projector.codebook_motifs)
    model = tiny_bert()
    model.load_state_dict(load_file(tmp_path / "checkpoint-6" / "model.safetensors"))
    momos.save(model, tmp_path / "step6.momos", CFG)


def test_resume_restores_counters_history_and_motif_generator(tmp_path):
    whole = MoMosCallback(CFG)
    train(tmp_path / "whole", [whole], save_strategy="epoch", restore_callback_states_from_checkpoint=True)
    given = MoMosCallback(CFG)
    resumed = train(tmp_path / "whole", [given], resume=str(tmp_path / "whole" / f"checkpoint-{STEPS_PER_EPOCH}"),
                    save_strategy="no", restore_callback_states_from_checkpoint=True)
    # the Trainer replaced the given callback by one built from the checkpoint
    restored = next(cb for cb in resumed.callback_handler.callbacks if isinstance(cb, MoMosCallback))
    assert restored is not given and restored.config == CFG
    assert (restored.projector.steps, restored.projector.epochs) == (2 * STEPS_PER_EPOCH, 2)
    assert [entry["step"] for entry in restored.projector.history] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert restored.projector.history[0] == whole.projector.history[0]
    assert torch.equal(restored.projector.generator.get_state(), whole.projector.generator.get_state())
    assert momos.is_mosaic(resumed.model, CFG, restored.projector.codebook_motifs)


class ImageTask(torch.utils.data.Dataset):
    """Random 3x16x16 images; the label says whether the first channel is brighter than the second."""

    def __init__(self, size: int = 64, seed: int = 0):
        self.images = torch.randn(size, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        self.labels = (self.images[:, 0].mean((1, 2)) > self.images[:, 1].mean((1, 2))).long()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def tiny_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=2))


def has_fresh_batchnorm(model) -> bool:
    """Whether the BatchNorm statistics of ``model`` are those of its weights as they are, estimated
    on the first two training batches of 8."""
    expected = copy.deepcopy(model)
    momos.reestimate_batchnorm_(expected, [{"pixel_values": ImageTask().images[i:i + 8]} for i in (0, 8)])
    return all(torch.allclose(a, b) for a, b in zip(model.buffers(), expected.buffers()))


class BatchNormChecks(TrainerCallback):
    """Registered after the MoMos callback: :func:`has_fresh_batchnorm` at each evaluation."""

    def __init__(self):
        self.fresh = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.fresh.append(has_fresh_batchnorm(model))


@pytest.mark.parametrize("every_n_steps", [None, 3])
def test_reestimate_bn_refreshes_the_batchnorm_statistics_before_each_evaluation(tmp_path, every_n_steps):
    callback, checks = MoMosCallback(CFG, every_n_steps=every_n_steps, reestimate_bn=2), BatchNormChecks()
    trainer = train(tmp_path, [callback, checks], model=tiny_resnet(), task=ImageTask, per_device_train_batch_size=8,
                    train_sampling_strategy="sequential", eval_strategy="epoch")
    assert checks.fresh == [True, True]
    assert has_fresh_batchnorm(trainer.model)   # with every_n_steps=3, after the final projection at step 16
    assert momos.is_mosaic(trainer.model, CFG, callback.projector.codebook_motifs)
    assert callback.state()["args"]["reestimate_bn"] == 2


def test_reestimate_bn_needs_batchnorm_and_a_count(tmp_path):
    with pytest.raises(ValueError, match="reestimate_bn must be a non-negative integer"):
        MoMosCallback(CFG, reestimate_bn=-1)
    with pytest.raises(ValueError, match="reestimate_bn: BertForSequenceClassification has no BatchNorm"):
        train(tmp_path, [MoMosCallback(CFG, reestimate_bn=2)])


def test_importing_momos_does_not_import_transformers():
    code = "import sys, momos, momos.integrations; assert 'transformers' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


DDP_SCRIPT = """
import json, sys
import torch
sys.path.insert(0, {tests!r})
import momos
from momos.distributed import checksums_of_ranks, rank, world_size
from test_integrations_transformers import CFG, ImageTask, MoMosCallback, TrainerCallback, TokenTask, tiny_bert, tiny_resnet, train

torch.set_num_threads(1)


class RankChecks(TrainerCallback):
    def __init__(self):
        self.checksums = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        # collective: every rank; the buffers hold the BatchNorm statistics of the ResNet
        self.checksums.append(checksums_of_ranks([*model.parameters(), *model.buffers()]))


batchnorm = {batchnorm!r}
callback, checks = MoMosCallback(CFG, reestimate_bn=2 if batchnorm else 0), RankChecks()
trainer = train({out!r}, [callback, checks], eval_strategy="epoch", per_device_train_batch_size=8,
                model=tiny_resnet() if batchnorm else tiny_bert(), task=ImageTask if batchnorm else TokenTask,
                ddp_broadcast_buffers=False)   # so that only the callback's broadcast keeps the statistics equal
record = {{"world_size": world_size(), "checksums": checks.checksums,
           "final": checksums_of_ranks([*trainer.model.parameters(), *trainer.model.buffers()]),
           "mosaic": momos.is_mosaic(trainer.model, CFG, callback.projector.codebook_motifs),
           "projections": len(callback.projector.history),
           "wrapped": type(trainer.model_wrapped).__name__, "unwrapped": callback.projector.model is trainer.model}}
with open(f"{out}/rank{{rank()}}.json", "w") as f:
    json.dump(record, f)
"""


@pytest.mark.slow
@pytest.mark.parametrize("batchnorm", [False, True], ids=["bert", "resnet-reestimate-bn"])
def test_under_ddp_every_rank_holds_the_same_mosaic(tmp_path, batchnorm):
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path),
                                                       batchnorm=batchnorm))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(tmp_path / "ddp.py")]
    launched = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, launched.stderr[-3000:]
    for r in (0, 1):
        record = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert record["world_size"] == 2 and record["wrapped"] == "DistributedDataParallel" and record["unwrapped"]
        assert record["mosaic"] and record["projections"] == 2
        for checksums in [*record["checksums"], record["final"]]:
            assert checksums[0] == checksums[1]
        assert len(record["checksums"]) == 2
