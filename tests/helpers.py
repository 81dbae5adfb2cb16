"""Shared test helpers: one tiny LightningModule, its data, and one quiet Trainer factory.

Tests run on 2 CPU cores, so the model is tiny (conv -> fc1 -> fc2 on 1x6x6 inputs, 3 classes, ~2.3k weights)
and the Trainer runs without logger, checkpoints, progress bar, model summary or sanity check unless a test asks.
Import as ``from helpers import TinyNet, image_data, tiny_trainer`` (``tests/`` is on ``sys.path`` under pytest).
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class TinyNet(pl.LightningModule):
    """conv(1->4, 3x3) -> fc1(64->hidden) -> fc2(hidden->3): one Conv2d and two Linear layers to compress.

    Args:
        hidden: fc1's width.
        optimizer: ``sgd`` (momentum, weight decay), ``adam`` or ``adamw`` (at a tenth of ``lr``).
        lr, momentum, weight_decay: of the SGD optimizer.
        frozen: names of layers whose parameters get ``requires_grad=False``.
        only_trainable: give the optimizer only the parameters that require grad.
        poison: multiply the loss by NaN (non-finite gradients).
    """

    def __init__(self, hidden: int = 32, optimizer: str = "sgd", lr: float = 0.05, momentum: float = 0.9,
                 weight_decay: float = 1e-3, frozen: Sequence[str] = (), only_trainable: bool = False,
                 poison: bool = False) -> None:
        super().__init__()
        self.optimizer, self.lr, self.momentum, self.weight_decay = optimizer, lr, momentum, weight_decay
        self.only_trainable, self.poison = only_trainable, poison
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc1 = nn.Linear(4 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, 3)
        for name in frozen:
            getattr(self, name).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(next(self.parameters()).dtype)  # half/bfloat16 models take float inputs (conv may be factorized)
        return self.fc2(F.relu(self.fc1(F.relu(self.conv(x)).flatten(1))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x).float(), y)
        return loss * float("nan") if self.poison else loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())

    test_step = validation_step

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad] if self.only_trainable else self.parameters()
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr * 0.1)
        return torch.optim.AdamW(params, lr=self.lr * 0.1, weight_decay=0.05)


def image_data(n: int = 48, batch_size: int = 8, seed: int = 0, shuffle: bool = False) -> DataLoader:
    """``n`` random 1x6x6 images, three classes that TinyNet can learn (sign of the mean, one bright pixel)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


def tiny_trainer(callbacks: Sequence[pl.Callback] = (), max_epochs: int = 3, **overrides: Any) -> pl.Trainer:
    """A CPU Trainer with nothing but the fit: no logger, checkpoints, progress bar, summary or sanity check."""
    kwargs: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=list(callbacks),
                                  logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                  enable_model_summary=False, num_sanity_val_steps=0)
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


__all__ = ["TinyNet", "image_data", "tiny_trainer"]
