"""How much each weight matters to the loss: the empirical Fisher diagonal.

Sensitivity-weighted clustering (SqueezeLLM, Kim et al. 2023; Apple's SKM palettizer) minimises
sum_i F_i (w_i - c_{a_i})^2, where F_i approximates the curvature of the loss in weight i. A second-order
Taylor expansion of the loss around trained weights has no first-order term at a minimum, so the loss
change from quantizing is about 1/2 sum_i H_ii dw_i^2; the empirical Fisher diagonal, the mean squared
gradient, is the cheap stand-in for H_ii.

Pure torch, no Lightning: used by the post-training ``share_weights`` and by the sharing callback.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def fisher_diagonal(
    model: nn.Module,
    params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    batches: Iterable[Any],
    loss_fn: LossFn,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor] | list[torch.Tensor]:
    """Mean over batches of the squared gradient ``(dL/dw)^2`` of each tensor in ``params``.

    ``params``: a name -> tensor mapping (returns a dict with the same keys) or a sequence of tensors
    (returns a list), each a leaf tensor of ``model``. ``loss_fn(model, batch)`` returns the scalar loss of a
    batch (it moves the batch to the model's device itself). At most ``max_batches`` batches are used (None:
    all). The model runs in its current mode (call ``model.eval()`` first to drop dropout noise); ``.grad``
    fields, ``requires_grad`` flags and the weights themselves are left as they were. Results are float32 on
    each tensor's device; a tensor shared under two names gets the same estimate under both.
    """
    if max_batches is not None and (isinstance(max_batches, bool) or int(max_batches) != max_batches or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    names = list(params.keys()) if isinstance(params, Mapping) else None
    tensors = list(params.values()) if isinstance(params, Mapping) else list(params)
    unique: dict[int, torch.Tensor] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_leaf:
            raise ValueError("params must hold leaf tensors of the model (its parameters)")
        unique.setdefault(id(t), t)
    leaves = list(unique.values())
    sums = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in leaves]
    flags = [t.requires_grad for t in leaves]
    seen = 0
    try:
        for t in leaves:
            t.requires_grad_(True)
        for batch in batches:
            if max_batches is not None and seen >= max_batches:
                break
            _accumulate(model, batch, loss_fn, leaves, sums)
            seen += 1
    finally:
        for t, flag in zip(leaves, flags):
            t.requires_grad_(flag)
    if seen == 0:
        raise ValueError("batches yielded no batch: the Fisher diagonal needs at least one")
    by_id = {id(t): s.div_(seen) for t, s in zip(leaves, sums)}
    out = [by_id[id(t)] for t in tensors]
    return dict(zip(names, out)) if names is not None else out


def _accumulate(model: nn.Module, batch: Any, loss_fn: LossFn, leaves: list[torch.Tensor], sums: list[torch.Tensor]) -> None:
    """Add one batch's squared gradients to ``sums`` (``torch.autograd.grad``: no ``.grad`` is touched)."""
    with torch.enable_grad():
        loss = loss_fn(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
        grads = torch.autograd.grad(loss.reshape(()), leaves, allow_unused=True)
    for s, g in zip(sums, grads):
        if g is not None:  # a tensor the loss does not use has zero gradient
            s.add_(g.detach().float().square())


__all__ = ["LossFn", "fisher_diagonal"]
