"""Deep Compression of *your own* model with a plain ``Trainer(callbacks=[...])`` — no YAML, no zoo.

The model below stands for yours: any LightningModule whose layers are ``nn.Linear`` / ``nn.Conv*``.
Three callbacks do the work while it trains:

1. ``GradualMagnitudePruning`` zeroes the smallest weights on a cubic schedule (per-layer targets; the
   last layer, small and sensitive, is pruned less) and keeps them exactly zero;
2. ``WeightSharing`` clusters each layer's surviving weights into 2^bits - 1 shared non-zero values once
   pruning is over (a pruned layer gives one of its 2^bits codes to the exact zero; a dense layer gets 2^bits),
   then keeps training the shared values (the centroids);
3. ``ExportCompressed`` writes the Deep Compression file at the end of fit and reports its real size.

``CompressionMonitor`` logs sparsity, bits, size and accuracy to TensorBoard (``tensorboard --logdir runs``).
Data: scikit-learn's 8x8 digits (ships with scikit-learn, no download). About 1.5 CPU-minutes::

    python examples/compress_your_model.py
    python examples/compress_your_model.py --epochs 30 --sparsity 0.95 --bits 4
"""

from __future__ import annotations

import argparse
import os

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split

from lightning_compress import CompressionMonitor, GradualMagnitudePruning, WeightSharing, load_compressed
from lightning_compress.callbacks.export import ExportCompressed


class SmallConvNet(pl.LightningModule):
    """Your model: a small CNN for 8x8 digits (any LightningModule works the same way)."""

    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.conv = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.hidden = nn.Linear(16 * 4 * 4, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.head(F.relu(self.hidden(x.flatten(1))))

    def _step(self, batch, stage):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)
        return [opt], [sched]


def digits_loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train, val = random_split(TensorDataset(x, y), [1437, 360], generator=torch.Generator().manual_seed(0))
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=256)


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in loader)
    return correct / len(loader.dataset)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--sparsity", type=float, default=0.9, help="final sparsity of the hidden layers")
    ap.add_argument("--bits", type=int, default=5, help="bits per shared weight (at most 2^bits - 1 non-zero values per pruned layer)")
    ap.add_argument("--out", default="runs/compress_your_model")
    ap.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (smoke tests)")
    args = ap.parse_args(argv)
    if args.epochs < 4:
        ap.error("--epochs must be >= 4: prune, then share, then fine-tune")

    pl.seed_everything(0)
    train, val = digits_loaders()
    model = SmallConvNet()
    # Timeline in epochs: pruning ramps over the first half, sharing starts at 3/4, the rest fine-tunes centroids.
    prune_end = max(1, args.epochs // 2)
    share_at = max(prune_end + 1, (3 * args.epochs) // 4)
    pruning = GradualMagnitudePruning(
        final_sparsity={"*": args.sparsity, "conv.weight": min(args.sparsity, 0.5), "head.weight": min(args.sparsity, 0.7)},
        start_epoch=0, end_epoch=prune_end, update_every=0.5,
    )
    sharing = WeightSharing(bits=args.bits, start_epoch=share_at)
    export = ExportCompressed(os.path.join(args.out, "model.lcz"))
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[pruning, sharing, export, CompressionMonitor(print_summary=False)],
        logger=TensorBoardLogger(args.out, name="tb", default_hp_metric=False),
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
        log_every_n_steps=5,
    )
    trainer.fit(model, train, val)

    report = export.report
    print(report.table())
    restored = load_compressed(report.path, SmallConvNet())  # a fresh model, weights from the file only
    result = {"val_acc": accuracy(model, val), "val_acc_from_file": accuracy(restored, val),
              "file_bytes": report.file_bytes, "ratio": report.ratio}
    print(f"\nvalidation accuracy {result['val_acc']:.4f} (model loaded from the file: {result['val_acc_from_file']:.4f}); "
          f"{report.path}: {report.file_bytes:,} bytes, {report.ratio:.1f}x smaller than the float32 model")
    return result


if __name__ == "__main__":
    main()
