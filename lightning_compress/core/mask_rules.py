"""The four ways a pruning callback turns a scheduled level into masks, behind one interface. Pure torch.

A rule answers ``rule(weights, masks, levels) -> (new_masks, targets)`` and ``rule.asked(levels)`` (the
targets alone, without weights; ``None`` where they depend on the weights): ``levels[i]`` is what the schedule
asks of layer ``i`` at this update point (a sparsity, or Han's ``q`` for :class:`StdThreshold`), ``masks``
the current masks (masks only grow), and ``targets`` the sparsity each layer was asked to reach (what the
callback logs as ``target_sparsity``). The callback picks a rule once, from its arguments, and only calls it;
the math lives in :mod:`lightning_compress.core.masks`.

Usage::

    rule = LayerMagnitude()
    masks, targets = rule([fc1.weight, fc2.weight], [m1, m2], [0.9, 0.5])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from lightning_compress.core import masks as mask_ops

Masks = list[torch.Tensor]


class MaskRule(Protocol):
    """``(weights, masks, levels) -> (new masks, target sparsity per layer)``."""

    def __call__(
        self, weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], levels: Sequence[float]
    ) -> tuple[Masks, list[float]]: ...

    def asked(self, levels: Sequence[float]) -> list[float] | None: ...


@dataclass(frozen=True)
class LayerMagnitude:
    """Each layer reaches its own sparsity: exactly ``round(level * numel)`` weights of least |w| pruned."""

    def __call__(self, weights, masks, levels):
        new = [mask_ops.magnitude_mask(w, level, m) for w, m, level in zip(weights, masks, levels)]
        return new, self.asked(levels)

    def asked(self, levels):
        return [float(level) for level in levels]


@dataclass(frozen=True)
class GlobalMagnitude:
    """One threshold over all layers: the (single) level is met in total, layers differ."""

    def __call__(self, weights, masks, levels):
        level = float(levels[0]) if levels else 0.0
        return mask_ops.global_magnitude_masks(list(weights), level, list(masks)), self.asked(levels)

    def asked(self, levels):
        return [float(levels[0])] * len(levels) if levels else []


@dataclass(frozen=True)
class NMStructured:
    """Keep ``kept_per_group`` of every ``group`` consecutive input weights; the ramp goes from M to N kept."""

    kept_per_group: int
    group: int

    def kept_at(self, level: float) -> int:
        """Weights kept per group at sparsity ``level`` (never fewer than the final N)."""
        return max(self.kept_per_group, self.group - int(round(level * self.group)))

    def __call__(self, weights, masks, levels):
        new, targets = [], []
        for w, m, level in zip(weights, masks, levels):
            kept = self.kept_at(level)
            new.append(mask_ops.nm_mask(w, kept, self.group, m))
            targets.append(1.0 - kept / self.group)
        return new, targets

    def asked(self, levels):
        return [1.0 - self.kept_at(level) / self.group for level in levels]


@dataclass(frozen=True)
class StdThreshold:
    """Han et al. (2015): prune ``|w| < level * std(w)``; the level is ``q`` times the schedule's ramp."""

    def __call__(self, weights, masks, levels):
        new = [mask_ops.threshold_mask(w, level, m) for w, m, level in zip(weights, masks, levels)]
        return new, [mask_ops.sparsity(m) for m in new]

    def asked(self, levels):
        return None  # a threshold, not a count: the sparsity depends on the weights


def choose_rule(scope: str, criterion: str, structure: tuple[int, int] | None) -> MaskRule:
    """The rule for a pruning configuration (arguments already validated by the caller)."""
    if criterion == "std":
        return StdThreshold()
    if structure is not None:
        return NMStructured(*structure)
    return GlobalMagnitude() if scope == "global" else LayerMagnitude()


__all__ = ["GlobalMagnitude", "LayerMagnitude", "MaskRule", "NMStructured", "StdThreshold", "choose_rule"]
