"""MoMos with PyTorch Lightning: the training loop of ``training_loop.py``, as a LightningModule.

The MoMos part is one callback, ``momos.integrations.lightning.MoMosCallback``. Lightning runs
an epoch's validation before ``on_train_epoch_end``, so the callback projects right after the
epoch's last training batch: validation and checkpoints see the projected model, and the
callback projects once more at the end of training, so the trained model is an exact mosaic
(checked with ``momos.is_mosaic``). Its state (counters, generator, codebook) is saved in
Lightning checkpoints, so resuming continues the motif schedule.

Needs Lightning: ``pip install -e ".[lightning]"``.
Run (about 15 s on one CPU thread, 10 of them importing Lightning):

    python examples/lightning_digits.py                    # outputs in a temporary folder
    python examples/lightning_digits.py --epochs 10 --out runs/lightning
    python examples/lightning_digits.py --devices 2 --out runs/ddp     # DDP on 2 CPU processes

Several devices (DDP). Nothing MoMos-specific changes: every rank projects the same
DDP-synchronized weights with the same seeded generator, then rank 0's mosaic is broadcast, so
all ranks hold the identical mosaic. ``--devices N`` runs this script with ``strategy="ddp"``
on N CPU processes (Lightning starts the other N - 1 itself); on GPUs change the Trainer below to

    L.Trainer(accelerator="gpu", devices=4, strategy="ddp", ...)                # 4 GPUs, one machine
    L.Trainer(accelerator="gpu", devices=8, num_nodes=2, strategy="ddp", ...)   # 2 machines, each launched
    # with: torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:PORT \
    #       examples/lightning_digits.py

With ``strategy="ddp"`` every process runs the whole script, the checks after ``fit`` included;
only rank 0 (``trainer.is_global_zero``) prints and saves. Give ``--out`` under DDP, so that
all processes agree on the folder.
"""

import argparse
import tempfile
from pathlib import Path

import lightning.pytorch as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

import momos
from momos.integrations.lightning import MoMosCallback


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=4, help="s: weights per block")
    parser.add_argument("--capacity", type=float, default=0.05, help="motifs per block (k = capacity x blocks)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--devices", type=int, default=1, help="CPU processes; more than 1: DDP")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def digits_loaders(batch_size: int, seed: int):
    """Digits as tensors in [0, 1]: 1,500 images to train on, the other 297 to validate on."""
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y))
    train, val = random_split(data, [1500, len(data) - 1500], generator=torch.Generator().manual_seed(seed))
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
            DataLoader(val, batch_size=512))


class DigitsClassifier(L.LightningModule):
    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)   # averaged over ranks
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class PrintEpochs(L.Callback):
    """One line per epoch: the validation accuracy (of the projected model) and the projection."""

    def __init__(self, momos_callback: MoMosCallback):
        self.momos_callback = momos_callback

    def on_train_epoch_end(self, trainer, pl_module):   # runs after the epoch's validation
        if not trainer.is_global_zero:
            return
        stats = self.momos_callback.projector.last
        print(f"epoch {trainer.current_epoch + 1:2d}: train loss {trainer.callback_metrics['train_loss']:.4f}, "
              f"val accuracy {trainer.callback_metrics['val_acc']:.4f}, {stats.num_motifs} motifs, "
              f"distortion {stats.distortion:.3g}")


def main():
    args = parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="momos-lightning-"))
    L.seed_everything(args.seed, verbose=False)

    train_loader, val_loader = digits_loaders(batch_size=64, seed=args.seed)
    model = DigitsClassifier(args.lr)
    cfg = momos.MoMosConfig(block_size=args.block_size, capacity=args.capacity, force_zero=True, seed=args.seed)
    momos_callback = MoMosCallback(cfg)        # Projector options too: MoMosCallback(cfg, warmup_epochs=1)

    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=args.devices,   # DDP: see the module docstring
        strategy="ddp" if args.devices > 1 else "auto",
        callbacks=[momos_callback, PrintEpochs(momos_callback)],
        default_root_dir=out, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0)
    trainer.fit(model, train_loader, val_loader)     # checkpoints go to OUT/checkpoints/

    projector = momos_callback.projector           # the callback's momos.Projector
    mosaic = momos.is_mosaic(model, cfg, projector.codebook_motifs, projector.scales)
    accuracy = trainer.validate(model, val_loader, verbose=False)[0]["val_acc"]
    if trainer.is_global_zero:
        print(f"final val accuracy {accuracy:.4f}")
        print(f"is mosaic: {mosaic} ({len(projector.history)} projections, {projector.last.num_motifs} motifs)")
        info = momos.save(model, out / "digits.momos", cfg)
        print(f"wrote {out / 'digits.momos'} ({info.file_bytes:,} bytes) and checkpoints in {out / 'checkpoints'}")
    if not mosaic:
        raise SystemExit("the trained model is not a mosaic")


if __name__ == "__main__":
    main()
