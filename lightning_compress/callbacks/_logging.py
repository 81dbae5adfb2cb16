"""One place for how callbacks write to the Trainer's loggers (tag names: :mod:`lightning_compress.tags`).

Callbacks log from hooks where ``LightningModule.log`` is not allowed (``on_fit_start``, ``on_fit_end``),
so this writes to ``trainer.loggers`` directly, on rank zero only.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_compress.tags import PREFIX, tag  # noqa: F401 - the callbacks import tag from here


def log_scalars(trainer: Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Write scalars to every logger of ``trainer`` at ``step`` (default: the global step)."""
    if not trainer.is_global_zero or not metrics:
        return
    step = trainer.global_step if step is None else step
    clean = {k: float(v) for k, v in metrics.items()}
    for logger in trainer.loggers:
        logger.log_metrics(clean, step=step)


def tensorboard_writers(trainer: Trainer) -> Iterator:
    """The ``SummaryWriter`` of each TensorBoard logger (rank zero only; empty elsewhere)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            yield logger.experiment


def log_text(trainer: Trainer, name: str, text: str, step: int | None = None) -> None:
    step = trainer.global_step if step is None else step
    for writer in tensorboard_writers(trainer):
        writer.add_text(name, text, global_step=step)


def log_histogram(trainer: Trainer, name: str, values: torch.Tensor, step: int | None = None) -> None:
    step = trainer.global_step if step is None else step
    for writer in tensorboard_writers(trainer):
        writer.add_histogram(name, values.detach().float().cpu(), global_step=step)
