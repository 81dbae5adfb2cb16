"""Validation accuracy measured by a callback itself (just before/after clustering or factorizing).

Both ``WeightSharing`` and ``LowRankFactorization`` report the accuracy drop their one-off change causes, at a
moment when Lightning runs no validation loop. This runs the model on the validation dataloader(s) in eval
mode, counts top-1 hits with :func:`lightning_compress.core.metrics.correct_count` and sums the counts over
ranks. Non-classification outputs give ``None`` with one info line, never a number that means nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_compress.core.metrics import correct_count


def validation_loaders(trainer: pl.Trainer, owner: str) -> list:
    """The fit's validation dataloaders, loaded now if the loop has not yet done so; ``[]`` without any."""
    if trainer.val_dataloaders is None:
        try:
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
        except Exception as err:  # noqa: BLE001 - no validation data is a normal configuration: say so, go on
            rank_zero_info(f"{owner}: no validation data to measure accuracy ({err})")
            return []
    loaders = trainer.val_dataloaders
    if loaders is None:
        return []
    if isinstance(loaders, Mapping):
        return list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def validation_accuracy(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    owner: str,
    max_batches: int | None = None,
    first_batch: Callable[[], list[Any]] | None = None,
) -> float | None:
    """Top-1 accuracy over up to ``max_batches`` batches of each validation loader, summed over ranks.

    ``first_batch()`` may return hook handles to keep for the first batch only (e.g. to record layer shapes).
    ``None`` when there is no validation data or its batches are not ``(x, y)`` classification pairs.
    """
    loaders = validation_loaders(trainer, owner)
    if not loaders:
        return None
    limits = list(trainer.num_val_batches) if trainer.num_val_batches else [math.inf] * len(loaders)
    was_training = pl_module.training
    pl_module.eval()
    correct = total = 0
    handles = first_batch() if first_batch is not None else []
    try:
        with torch.no_grad():
            for loader, limit in zip(loaders, limits + [math.inf] * (len(loaders) - len(limits))):
                cap = min(limit, max_batches if max_batches is not None else math.inf)
                for i, batch in enumerate(loader):
                    if i >= cap:
                        break
                    batch = trainer.strategy.batch_to_device(batch)
                    counts = None
                    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
                        counts = correct_count(pl_module(batch[0]), batch[1])
                    if counts is None:
                        rank_zero_info(f"{owner}: validation batches are not (x, y) classification pairs; "
                                       "accuracy not measured")
                        return None
                    correct, total = correct + counts[0], total + counts[1]
                    for h in handles:
                        h.remove()
                    handles = []
    finally:
        for h in handles:
            h.remove()
        pl_module.train(was_training)
    sums = torch.tensor([correct, total], dtype=torch.float64, device=pl_module.device)
    sums = trainer.strategy.reduce(sums, reduce_op="sum")
    return float(sums[0]) / float(sums[1]) if float(sums[1]) else None


__all__ = ["validation_accuracy", "validation_loaders"]
