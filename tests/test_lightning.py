import copy
import itertools

import pytest
import torch
from torch import nn

import momos

pl = pytest.importorskip("lightning.pytorch")
from momos.integrations.lightning import MoMosCallback  # noqa: E402


def digits_loaders():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y))
    train, val = torch.utils.data.random_split(data, [1500, 297], generator=torch.Generator().manual_seed(0))
    return (torch.utils.data.DataLoader(train, batch_size=100, shuffle=True),
            torch.utils.data.DataLoader(val, batch_size=300))


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.validated_mosaics = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        callback = next(c for c in self.trainer.callbacks if isinstance(c, MoMosCallback))
        projector = callback.projector
        if not self.trainer.sanity_checking:
            self.validated_mosaics.append(
                projector.codebook_motifs is not None and momos.is_mosaic(self, projector.config, projector.codebook_motifs))
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def test_callback_projects_before_validation_and_ends_as_mosaic():
    torch.manual_seed(0)
    model = Classifier()
    callback = MoMosCallback(momos.MoMosConfig(block_size=2, capacity=0.05))
    trainer = pl.Trainer(max_epochs=3, callbacks=[callback], accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=1)
    train, val = digits_loaders()
    trainer.fit(model, train, val)
    assert model.validated_mosaics == [True, True, True]
    assert len(callback.projector.history) == 3
    assert momos.is_mosaic(model, callback.config, callback.projector.codebook_motifs)
    assert trainer.callback_metrics["val_acc"] > 0.5
    state = callback.state_dict()
    fresh = MoMosCallback(momos.MoMosConfig(block_size=2, capacity=0.05))
    fresh.load_state_dict(state)
    fresh.setup(trainer, model, "fit")
    assert fresh.projector.epochs == 3


class BatchNormClassifier(Classifier):
    """With a BatchNorm layer, and a forward that the callback's re-estimation calls."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
        self.fresh_batchnorm = []

    def forward(self, x):
        return self.net(x)

    def has_fresh_batchnorm(self, inputs) -> bool:
        """Whether the BatchNorm statistics are those of the weights as they are, on ``inputs``."""
        expected = copy.deepcopy(self.net)
        momos.reestimate_batchnorm_(expected, inputs)
        return all(torch.allclose(a, b) for a, b in zip(self.net.buffers(), expected.buffers()))

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking and batch_idx == 0:
            self.fresh_batchnorm.append(self.has_fresh_batchnorm(first_inputs(self.trainer.train_dataloader, 2)))
        return super().validation_step(batch, batch_idx)


def first_inputs(loader, count: int) -> list[torch.Tensor]:
    return [x for x, _ in itertools.islice(loader, count)]


@pytest.mark.parametrize("every_n_steps", [None, 4])
def test_reestimate_bn_refreshes_the_batchnorm_statistics_before_validation(every_n_steps):
    torch.manual_seed(0)
    model = BatchNormClassifier()
    callback = MoMosCallback(momos.MoMosConfig(block_size=2, capacity=0.05), reestimate_bn=2,
                             **({"every_n_steps": every_n_steps} if every_n_steps else {}))
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    train, val = digits_loaders()
    train = torch.utils.data.DataLoader(train.dataset, batch_size=100)   # the same first batches every pass
    trainer.fit(model, train, val)
    assert model.fresh_batchnorm == [True, True]
    # with every_n_steps=4, the 15 steps of epoch 2 end with a final projection at train end
    assert model.has_fresh_batchnorm(first_inputs(train, 2))
    assert momos.is_mosaic(model, callback.config, callback.projector.codebook_motifs)


def test_reestimate_bn_needs_batchnorm_and_a_count():
    with pytest.raises(ValueError, match="reestimate_bn must be a non-negative integer"):
        MoMosCallback(momos.MoMosConfig(block_size=2, capacity=0.05), reestimate_bn=1.5)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         callbacks=[MoMosCallback(momos.MoMosConfig(block_size=2, capacity=0.05), reestimate_bn=2)])
    with pytest.raises(ValueError, match="reestimate_bn: Classifier has no BatchNorm"):
        trainer.fit(Classifier(), *digits_loaders())


class DistributedClassifier(BatchNormClassifier):
    def validation_step(self, batch, batch_idx):
        from momos.distributed import same_on_all_ranks

        if not self.trainer.sanity_checking:
            # collective calls: every rank runs the same number of validation steps. Each rank
            # re-estimated the BatchNorm statistics on its own shard, then took rank 0's.
            assert same_on_all_ranks(list(self.parameters()))
            assert same_on_all_ranks(list(self.buffers()))
            callback = next(c for c in self.trainer.callbacks if isinstance(c, MoMosCallback))
            assert momos.is_mosaic(self, callback.config, callback.projector.codebook_motifs)
        return Classifier.validation_step(self, batch, batch_idx)


def test_callback_under_ddp_keeps_ranks_identical():
    torch.manual_seed(0)
    model = DistributedClassifier()
    callback = MoMosCallback(momos.MoMosConfig(block_size=2, capacity=0.05), reestimate_bn=2)
    # without DDP's own buffer broadcast at every forward, only the callback's keeps the statistics equal
    strategy = pl.strategies.DDPStrategy(start_method="spawn", broadcast_buffers=False)
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], accelerator="cpu", devices=2, strategy=strategy,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    train, val = digits_loaders()
    trainer.fit(model, train, val)
    assert trainer.state.finished
