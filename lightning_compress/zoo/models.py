"""Reference models of the Deep Compression paper as LightningModules.

They log ``train_loss``, ``val_loss``/``val_acc`` and ``test_loss``/``test_acc`` (torchmetrics) so the
callbacks and the monitor have an accuracy to watch. Optimizer and learning-rate schedule are plain
constructor arguments, which LightningCLI exposes in YAML.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F

from lightning_compress.validation import check_int, check_number, fail

OptimizerName = Literal["sgd", "adam", "adamw"]
SchedulerName = Literal["none", "cosine", "step", "exponential"]


def make_optimizers(module: pl.LightningModule, hp) -> Any:
    """The optimizer (and epoch-wise LR scheduler) named by ``hp`` for ``module``: shared by every zoo model."""
    params = [p for p in module.parameters() if p.requires_grad]
    if hp.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    elif hp.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    elif hp.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
    else:
        fail(type(module).__name__, f"optimizer must be one of ['sgd', 'adam', 'adamw'], got {hp.optimizer!r}")
    if hp.lr_scheduler == "none":
        return opt
    if hp.lr_scheduler == "cosine":
        max_epochs = module.trainer.max_epochs if module._trainer is not None and module.trainer.max_epochs else 10
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs))
    elif hp.lr_scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=hp.gamma)
    elif hp.lr_scheduler == "exponential":
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=hp.gamma)
    else:
        fail(type(module).__name__, "lr_scheduler must be one of ['none', 'cosine', 'step', 'exponential'], "
                                    f"got {hp.lr_scheduler!r}")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class ImageClassifier(pl.LightningModule):
    """Base class: cross-entropy classification of ``(x, y)`` batches with configurable optimization."""

    def __init__(
        self,
        num_classes: int = 10,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        lr_scheduler: SchedulerName = "cosine",
        step_size: int = 10,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_int(owner, "num_classes", num_classes, low=2)
        check_number(owner, "lr", lr, low=0, low_open=True)
        check_number(owner, "momentum", momentum, low=0)
        check_number(owner, "weight_decay", weight_decay, low=0)
        self.save_hyperparameters()
        self.train_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro")

    def _shared_step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric = getattr(self, f"{stage}_acc")
        metric(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test", on_step=on_step, on_epoch=True)
        self.log(f"{stage}_acc", metric, prog_bar=stage != "train", on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def configure_optimizers(self):
        return make_optimizers(self, self.hparams)


class LeNet300100(ImageClassifier):
    """LeNet-300-100: 784-300-100-10 fully connected, 266,200 weights (+410 biases)."""

    def __init__(self, in_features: int = 784, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, self.hparams.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(ImageClassifier):
    """LeNet-5, Caffe variant used by Deep Compression: conv 20@5x5, conv 50@5x5, fc 500, fc 10.

    430,500 weights (+580 biases) on 28x28 single-channel inputs.
    """

    def __init__(self, in_channels: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, self.hparams.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


__all__ = ["ImageClassifier", "LeNet300100", "LeNet5", "make_optimizers"]
