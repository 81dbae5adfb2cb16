"""Post-training weight sharing (palettization) without a Trainer: ``share_weights(model, bits, ...)``.

The same core code as the ``WeightSharing`` callback, in one call: select tensors (``core.targets``), measure
the empirical Fisher diagonal on a few calibration batches when asked (``core.importance``), choose bits per
layer from a budget when asked (``core.bit_allocation``), cluster each tensor into grouped codebooks
(``core.sharing.cluster_weight``) and write the decoded weights back in place. Afterwards every selected tensor
holds at most k distinct non-zero values per codebook (k = 2^bits, or 2^bits - 1 on a tensor with pruned
zeros) and every zero stays zero. There are no centroid fine-tuning steps here: that is the callback's job.

Example::

    import lightning_compress as lc
    lc.share_weights(model, bits=3, granularity="channel", weighting="fisher",
                     dataloader=val_loader, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_compress.core.bit_allocation import (
    BIT_CHOICES,
    allocate_bits,
    budget_for_average,
    measure_layer,
    total_size_bits,
)
from lightning_compress.core.bits import FLOAT_BITS
from lightning_compress.core.importance import fisher_diagonal
from lightning_compress.core.sharing import GRANULARITIES, SHARING_INITS, cluster_weight, codebook_size
from lightning_compress.core.targets import Target, find_targets, per_target_value
from lightning_compress.validation import (
    as_config_error,
    check_choice,
    check_int,
    check_number,
    check_per_layer,
    fail,
    is_int,
)

OWNER = "share_weights"
MAX_BITS = 16
WEIGHTINGS = (None, "fisher")
LossFn = Callable[[nn.Module, Any], torch.Tensor]


def share_weights(
    model: nn.Module,
    bits: int | Mapping[str, int] | str = 4,
    granularity: str | int = "tensor",
    weighting: str | None = None,
    dataloader: Iterable[Any] | None = None,
    loss_fn: LossFn | None = None,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    types: Sequence[str] | None = None,
    calibration_batches: int = 16,
    target_bits: float | None = None,
    target_bytes: int | None = None,
    init: str = "auto",
    seed: int | None = 0,
    max_iter: int = 300,
    tol: float = 0.0,
) -> nn.Module:
    """Cluster the selected weight tensors of ``model`` into shared values, in place; returns ``model``.

    Args:
        bits: bits per weight index: an int, a ``{glob or type alias: int}`` mapping, or ``"auto"`` (per-layer
            2..8 bits chosen by measured, importance-weighted error under ``target_bits`` or ``target_bytes``).
        granularity: ``"tensor"`` (one codebook per tensor), ``"channel"`` (one per output channel) or an int G
            (one per G output channels).
        weighting: ``None`` (every weight counts the same) or ``"fisher"``: clustering minimises
            ``sum F_i (w_i - c)^2`` with F the mean squared gradient of ``loss_fn`` over ``calibration_batches``
            batches of ``dataloader`` (both required). ``loss_fn(model, batch)`` returns a scalar loss and
            moves the batch to the model's device. Calibration runs in eval mode (the mode is restored).
        include, exclude, types: layer selection, as for the callbacks.
        target_bits: with ``bits="auto"``, the average bits per non-zero weight, codebooks included.
        target_bytes: with ``bits="auto"``, a size budget for the selected tensors' codes and codebooks plus
            every other parameter and buffer at 32 bits (an estimate of the file: no entropy coding).
        init: ``"auto"`` (default: Lloyd from the linear start for one unweighted codebook per tensor and above
            4 bits, ``"optimal"`` for per-channel, per-group and Fisher-weighted ones up to 4 bits), ``"optimal"``
            (the globally optimal codebooks by dynamic programming, ``core.kmeans_optimal``) or a Lloyd start
            (``linear``, ``density``, ``random``, ``kmeans++``).
        seed, max_iter, tol: Lloyd settings (``core.kmeans.kmeans_1d``).
    """
    _check_arguments(model, bits, granularity, weighting, dataloader, loss_fn, calibration_batches, target_bits,
                     target_bytes, init, seed, max_iter, tol)
    with as_config_error(OWNER):
        targets = find_targets(model, include=include, exclude=exclude, types=types, owner=OWNER)
    importance = _importance(model, targets, dataloader, loss_fn, calibration_batches) if weighting else {}
    cluster = {"init": init, "seed": seed, "max_iter": max_iter, "tol": tol}
    if bits == "auto":
        per_layer = _plan_bits(model, targets, importance, granularity, target_bits, target_bytes, cluster)
    else:
        try:
            per_layer = per_target_value(bits, targets, owner=OWNER, what="bits")
        except ValueError as err:
            fail(OWNER, str(err).removeprefix(f"{OWNER}: "))
    with torch.no_grad():
        for t in targets:
            weight = t.param
            k = codebook_size(per_layer[t.name], has_pruned=bool((weight == 0).any()))
            shared = cluster_weight(weight, k, granularity=granularity, importance=importance.get(t.name), **cluster)
            weight.copy_(shared.decode().to(weight.device, weight.dtype))
    return model


def _importance(
    model: nn.Module, targets: list[Target], dataloader: Iterable[Any], loss_fn: LossFn, batches: int
) -> dict[str, torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        return fisher_diagonal(model, {t.name: t.param for t in targets}, dataloader, loss_fn, max_batches=batches)
    except ValueError as err:
        fail(OWNER, f"weighting='fisher': {err}")
    finally:
        model.train(was_training)


def _plan_bits(
    model: nn.Module,
    targets: list[Target],
    importance: Mapping[str, torch.Tensor],
    granularity: str | int,
    target_bits: float | None,
    target_bytes: int | None,
    cluster: Mapping[str, Any],
) -> dict[str, int]:
    """Bits per selected tensor (2..8) minimising the summed importance-weighted error under the budget."""
    costs = [
        measure_layer(t.name, t.param, importance.get(t.name), granularity, BIT_CHOICES, **cluster) for t in targets
    ]
    if target_bits is not None:
        budget, what = budget_for_average(costs, target_bits), f"target_bits={target_bits!r}"
    else:
        selected = {id(t.param) for t in targets}
        others = sum(p.numel() for p in model.parameters() if id(p) not in selected)
        others += sum(b.numel() for b in model.buffers())
        budget, what = 8 * target_bytes - FLOAT_BITS * others, f"target_bytes={target_bytes!r}"
    try:
        chosen = allocate_bits(costs, budget)
    except ValueError:
        smallest = total_size_bits(costs, {c.name: min(BIT_CHOICES) for c in costs})
        fail(OWNER, f"{what} is below the smallest size at {min(BIT_CHOICES)} bits everywhere "
                    f"({smallest / max(1, sum(c.kept for c in costs)):.3f} bits per weight with codebooks)")
    rank_zero_info(f"{OWNER}: bits per layer " + ", ".join(f"{n}={b}" for n, b in chosen.items())
                   + f" ({total_size_bits(costs, chosen) / max(1, sum(c.kept for c in costs)):.3f} bits per weight)")
    return chosen


def _check_arguments(model: Any, bits: Any, granularity: Any, weighting: Any, dataloader: Any, loss_fn: Any,
                     calibration_batches: Any, target_bits: Any, target_bytes: Any, init: Any, seed: Any,
                     max_iter: Any, tol: Any) -> None:
    if not isinstance(model, nn.Module):
        fail(OWNER, f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(bits, Mapping):
        check_per_layer(OWNER, "bits", bits, lambda o, n, v: check_int(o, n, v, low=1, high=MAX_BITS))
    elif isinstance(bits, str):
        if bits != "auto":
            fail(OWNER, f"bits must be an int in [1, {MAX_BITS}], a {{layer glob: bits}} mapping or 'auto', got {bits!r}")
    else:
        check_int(OWNER, "bits", bits, low=1, high=MAX_BITS)
    if isinstance(granularity, str):
        check_choice(OWNER, "granularity", granularity, GRANULARITIES)
    elif not is_int(granularity) or granularity < 1:
        fail(OWNER, f"granularity must be 'tensor', 'channel' or an int >= 1 (output channels per codebook), "
                    f"got {granularity!r}")
    check_choice(OWNER, "weighting", weighting, WEIGHTINGS)
    if weighting == "fisher" and (dataloader is None or loss_fn is None):
        fail(OWNER, "weighting='fisher' needs dataloader and loss_fn (loss_fn(model, batch) -> scalar loss), got "
                    f"dataloader={type(dataloader).__name__}, loss_fn={type(loss_fn).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        fail(OWNER, f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
    check_int(OWNER, "calibration_batches", calibration_batches, low=1)
    check_number(OWNER, "target_bits", target_bits, low=0, low_open=True, allow_none=True)
    check_int(OWNER, "target_bytes", target_bytes, low=1, allow_none=True)
    if bits == "auto" and (target_bits is None) == (target_bytes is None):
        fail(OWNER, "bits='auto' needs exactly one budget: target_bits (average bits per weight) or target_bytes, "
                    f"got target_bits={target_bits!r}, target_bytes={target_bytes!r}")
    if bits != "auto" and (target_bits is not None or target_bytes is not None):
        fail(OWNER, f"target_bits/target_bytes only apply to bits='auto', got bits={bits!r}")
    check_choice(OWNER, "init", init, SHARING_INITS)
    check_int(OWNER, "seed", seed, allow_none=True)
    check_int(OWNER, "max_iter", max_iter, low=1)
    check_number(OWNER, "tol", tol, low=0)


__all__ = ["share_weights"]
