"""The pruning callback's masks in a checkpoint: bit-packed on save, unpacked and checked on restore.

Masks are saved 8 per byte (:func:`~lightning_compress.core.masks.pack_mask`, 1/8 byte per weight) with their
shapes; checkpoints written before that hold ``bool`` masks and restore as they are. A checkpoint is data from
elsewhere: a missing layer, a shape that differs from the layer or a byte count that does not fit the shape is
a :class:`~lightning_compress.errors.CompressionConfigError` naming the layer.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from lightning_compress.core import masks as mask_ops
from lightning_compress.core.targets import Target
from lightning_compress.validation import fail


def packed_masks(owner: str, masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``{"masks": {name: uint8 bits}, "mask_shapes": {name: shape}}`` for ``state_dict``."""
    return {"masks": {name: mask_ops.pack_mask(m) for name, m in masks.items()},
            "mask_shapes": {name: list(m.shape) for name, m in masks.items()}}


def restored_masks(owner: str, state: Mapping[str, Any], targets: Sequence[Target]) -> dict[str, torch.Tensor]:
    """The bool mask of every target from a checkpoint state (packed or, from older versions, bool)."""
    saved, shapes = state.get("masks", {}), state.get("mask_shapes", {})
    missing = [t.name for t in targets if t.name not in saved]
    if missing:
        fail(owner, f"the checkpoint has no masks for {missing}; was it made with other layers?")
    out = {}
    for t in targets:
        mask = saved[t.name]
        shape = tuple(mask.shape) if mask.dtype == torch.bool else tuple(shapes.get(t.name, ()))
        if shape != tuple(t.param.shape):
            fail(owner, f"checkpoint mask for {t.name} has shape {shape}, the layer {tuple(t.param.shape)}")
        if mask.dtype != torch.bool:
            try:
                mask = mask_ops.unpack_mask(mask, shape)
            except ValueError as err:
                fail(owner, f"checkpoint mask for {t.name}: {err}")
        out[t.name] = mask.to(device=t.param.device, dtype=torch.bool)
    return out


__all__ = ["packed_masks", "restored_masks"]
