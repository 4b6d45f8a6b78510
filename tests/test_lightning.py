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


class DistributedClassifier(Classifier):
    def validation_step(self, batch, batch_idx):
        from momos.distributed import same_on_all_ranks

        if not self.trainer.sanity_checking:
            # collective call: every rank runs the same number of validation steps
            assert same_on_all_ranks(list(self.parameters()))
            callback = next(c for c in self.trainer.callbacks if isinstance(c, MoMosCallback))
            assert momos.is_mosaic(self, callback.config, callback.projector.codebook_motifs)
        return super().validation_step(batch, batch_idx)


def test_callback_under_ddp_keeps_ranks_identical():
    torch.manual_seed(0)
    model = DistributedClassifier()
    callback = MoMosCallback(momos.MoMosConfig(block_size=2, capacity=0.05))
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], accelerator="cpu", devices=2, strategy="ddp_spawn",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    train, val = digits_loaders()
    trainer.fit(model, train, val)
    assert trainer.state.finished
