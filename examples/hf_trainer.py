"""MoMos with the Hugging Face Trainer: a tiny BERT trained as a mosaic, saved as ``.momos``.

A small random ``BertForSequenceClassification`` (built from a config: nothing is downloaded)
learns a synthetic task: are most of a sequence's random token ids below 50, or from 50 up? The MoMos part is
one callback, ``momos.integrations.transformers.MoMosCallback``: it projects at each epoch end,
before that epoch's evaluation and checkpoint (so both see the mosaic), puts each projection's
``momos/*`` statistics into the Trainer's logs, and projects once more at the end of training,
so the trained model is an exact mosaic, which ``momos.save`` stores as a compact file.

Needs transformers and accelerate: ``pip install -e ".[transformers]"``.
Run (about 12 s on one CPU thread, most of it importing torch and transformers):

    python examples/hf_trainer.py                     # outputs in a temporary folder
    python examples/hf_trainer.py --epochs 5 --out runs/bert

Every N optimizer steps instead of every epoch: ``MoMosCallback(cfg, every_n_steps=N)``. Under
the Trainer's DDP (``torchrun --nproc_per_node G examples/hf_trainer.py``, without ``use_cpu``)
every rank projects and rank 0's mosaic is broadcast; DeepSpeed ZeRO-3 and FSDP are not
supported.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

import momos
from momos.integrations.transformers import MoMosCallback


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=4, help="s: weights per block")
    parser.add_argument("--capacity", type=float, default=0.05, help="motifs per block (k = capacity x blocks)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


class Tokens(torch.utils.data.Dataset):
    """Random token ids, each from the label's half of the vocabulary (label 0: 1..49, label 1:
    50..98) with probability 0.7, else from the other half: the majority tells the label."""

    def __init__(self, size: int, seed: int, length: int = 9):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (size,), generator=generator)
        upper = (torch.rand(size, length, generator=generator) < 0.7) == self.labels[:, None].bool()
        self.ids = torch.randint(1, 50, (size, length), generator=generator) + 49 * upper

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def tiny_bert(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=2))


def accuracy(eval_prediction) -> dict:
    logits, labels = eval_prediction
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def main():
    args = parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="momos-hf-"))
    model = tiny_bert(args.seed)

    # parameters="matrices": only the weight matrices (and embeddings) become the mosaic. Projected
    # with them onto one codebook of small raw values, LayerNorm's gains (1.0) would collapse to
    # about 0.03 and the model would stay at chance; biases and norms stay free this way.
    cfg = momos.MoMosConfig(block_size=args.block_size, capacity=args.capacity, parameters="matrices",
                            seed=args.seed)
    callback = MoMosCallback(cfg)                       # MoMosCallback(cfg, every_n_steps=N): every N steps
    trainer = Trainer(
        model=model, train_dataset=Tokens(512, seed=args.seed), eval_dataset=Tokens(128, seed=args.seed + 1),
        compute_metrics=accuracy, callbacks=[callback],
        args=TrainingArguments(output_dir=str(out / "trainer"), num_train_epochs=args.epochs, learning_rate=3e-3,
                               per_device_train_batch_size=32, eval_strategy="epoch", save_strategy="no",
                               logging_strategy="epoch", report_to=[], use_cpu=True, disable_tqdm=True,
                               seed=args.seed))
    trainer.remove_callback(PrinterCallback)            # the Trainer's raw log dicts; a summary follows
    trainer.train()                                     # projects at each epoch end, before evaluation

    # Each projection's statistics joined the Trainer's log history.
    for log in trainer.state.log_history:
        if "momos/distortion" in log:
            print(f"epoch {log['epoch']:.0f}: projection {log['momos/projections']}, "
                  f"{log['momos/motifs_used']} motifs used, {log['momos/bits_per_weight']:.2f} bits per weight "
                  f"(bound), train loss {log['loss']:.4f}")
        if "eval_accuracy" in log:
            print(f"epoch {log['epoch']:.0f}: eval accuracy {log['eval_accuracy']:.4f}")

    projector = callback.projector
    mosaic = momos.is_mosaic(trainer.model, cfg, projector.codebook_motifs, projector.scales)
    print(f"final eval accuracy {trainer.evaluate()['eval_accuracy']:.4f}")
    print(f"is mosaic: {mosaic}")

    path = out / "bert.momos"
    info = momos.save(trainer.model, path, cfg)          # refuses a model that is not an exact mosaic
    fresh = momos.load(path, tiny_bert(args.seed + 1))   # back into a freshly built BERT
    same = all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(), fresh.state_dict().values()))
    print(f"saved {path}: {info.file_bytes:,} bytes, {info.bits_per_weight:.2f} bits per weight "
          f"({4 * info.num_values:,} bytes as float32); loaded back identical: {same}")
    if not (mosaic and same):
        raise SystemExit("the trained model is not an exact mosaic, or did not load back")


if __name__ == "__main__":
    main()
