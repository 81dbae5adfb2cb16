"""Top-1 accuracy, written once: for the callbacks' before/after measurements and the sensitivity tool.

Only batches that are a classification count: logits ``(B, C)`` with ``C >= 2`` (or ``(B, ..., C)``) and
integer targets of the matching shape. Anything else (a regression output, a language model's dict) gives
``None`` rather than a meaningless number.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def is_classification(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether ``logits`` and ``target`` look like a classification (what top-1 accuracy needs)."""
    return (
        torch.is_tensor(logits)
        and torch.is_tensor(target)
        and logits.dim() >= 2
        and logits.shape[-1] >= 2
        and not target.is_floating_point()
        and not target.is_complex()
        and tuple(target.shape) == tuple(logits.shape[:-1])
    )


def correct_count(logits: torch.Tensor, target: torch.Tensor) -> tuple[int, int] | None:
    """``(correct, total)`` of top-1 predictions, or ``None`` when the pair is not a classification."""
    if not is_classification(logits, target):
        return None
    return int((logits.argmax(-1) == target).sum()), target.numel()


def top1_accuracy(model: nn.Module, batches: Iterable, max_batches: int | None = None) -> float | None:
    """Top-1 accuracy of ``model(x)`` over ``(x, y)`` batches (no grad, on the model's device).

    ``None`` when no batch was a classification; the caller decides whether that is an error.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = total = 0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                return None
            x, y = batch[0].to(device), batch[1].to(device)
            counts = correct_count(model(x), y)
            if counts is None:
                return None
            correct, total = correct + counts[0], total + counts[1]
    return correct / total if total else None


__all__ = ["correct_count", "is_classification", "top1_accuracy"]
