"""Mask rules on FSDP2-sharded parameters: the same masks as one process computes from the same weights.

:func:`apply_rule` runs a :class:`~lightning_compress.core.mask_rules.MaskRule` on parameters that may be
``DTensor`` parts (:mod:`lightning_compress.core.distributed`), with masks kept per rank (shaped like the
rank's part). Not sharded: the rule itself, unchanged. Sharded:

* layer rules (magnitude, N:M, std) gather one layer and its mask at a time, compute the whole-layer mask,
  and keep this rank's rows (memory: one layer);
* the global rule never gathers: :func:`~lightning_compress.core.masks.global_magnitude_masks` runs on the
  local parts with counts and histograms summed over the ranks (:class:`~lightning_compress.core.distributed.Parts`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from lightning_compress.core import distributed as dist_ops
from lightning_compress.core import masks as mask_ops
from lightning_compress.core.mask_rules import GlobalMagnitude, MaskRule


def apply_rule(
    rule: MaskRule, params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], levels: Sequence[float]
) -> tuple[list[torch.Tensor], list[float]]:
    """``rule(params, masks, levels)`` where ``params`` may be sharded and ``masks`` are this rank's parts."""
    parts = dist_ops.Parts(list(params))
    if not parts.sharded:
        return rule(list(params), list(masks), list(levels))
    if isinstance(rule, GlobalMagnitude):
        level = float(levels[0]) if levels else 0.0
        local = [dist_ops.local_tensor(p) for p in params]
        return mask_ops.global_magnitude_masks(local, level, list(masks), parts=parts), rule.asked(levels)
    new, targets = [], []
    for p, m, level in zip(params, masks, levels):  # one whole layer at a time
        whole, asked = rule([dist_ops.full_tensor(p)], [dist_ops.full_like(m, p)], [level])
        new.append(dist_ops.shard_like(whole[0], p))
        targets.extend(asked)
        del whole
    return new, targets


def local_masks(masks: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole-layer masks (made before FSDP2 sharded the parameters, or read from a checkpoint) cut to this
    rank's rows; masks already shaped like the rank's part, and those of unsharded parameters, unchanged."""
    out = dict(masks)
    for name, p in params.items():
        if name in out and tuple(out[name].shape) != tuple(dist_ops.local_tensor(p).shape):
            out[name] = dist_ops.shard_like(out[name], p)
    return out


def whole_masks(masks: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's masks gathered into whole-layer masks, one layer at a time (collective under FSDP2)."""
    return {name: dist_ops.full_like(m, params[name]) if name in params else m for name, m in masks.items()}


def non_finite(param: torch.Tensor) -> int:
    """NaN/inf entries of the whole tensor (counted on each rank's part, summed); cheap when there is none."""
    local = dist_ops.local_tensor(param)
    finite = not local.numel() or all(math.isfinite(v) for v in map(float, torch.aminmax(local)))
    return dist_ops.shard_count(0 if finite else int((~torch.isfinite(local)).sum()), param)


__all__ = ["apply_rule", "local_masks", "non_finite", "whole_masks"]
