"""Pruning masks: which weights are zero. Pure torch.

A mask is a ``bool`` tensor shaped like its weight, ``True`` = kept (1 byte per weight). Every function
takes the current mask and returns one that is a subset of it: **masks only grow** (a pruned weight never
revives), and weights already pruned count toward the target, so a target is an *absolute* sparsity.

Ties are broken deterministically (lowest flat index pruned first, layers in the order given), so every
DDP rank holding the same weights computes bit-identical masks without communicating.

* :func:`magnitude_mask` — layer-wise: prune exactly ``round(sparsity * numel)`` weights of least |w|.
* :func:`global_magnitude_masks` — one threshold over many layers, found by a radix select on the float
  bit pattern, so it never materialises a copy of all weights (memory = one layer's scratch).
* :func:`nm_mask` — N:M structured sparsity (keep N of every M consecutive input weights, e.g. 2:4).
* :func:`threshold_mask` — Han et al. (2015): prune |w| < q * std(w).

Usage::

    mask = magnitude_mask(layer.weight, 0.9)
    layer.weight.data.mul_(mask)
"""

from __future__ import annotations

from typing import Sequence

import torch

#: Bit pattern of +inf as int32; non-negative floats order like their bit patterns.
_INF_BITS = 0x7F800000


def _keep_all(weight: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(weight, dtype=torch.bool)


def _check_mask(weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return _keep_all(weight)
    if mask.shape != weight.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(weight.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    return mask


def num_to_prune(numel: int, sparsity: float) -> int:
    """Element count for a sparsity, rounded to nearest (the only rounding achieved sparsity suffers)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return min(numel, int(round(sparsity * numel)))


def sparsity(mask: torch.Tensor) -> float:
    """Fraction of pruned entries of a mask."""
    return 1.0 - int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def _scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()


def _prune_ties(score: torch.Tensor, alive: torch.Tensor, value: float, count: int) -> torch.Tensor:
    """Bool mask of the first ``count`` alive entries equal to ``value``, in flat (row-major) order."""
    out = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    if count <= 0:
        return out
    flat = torch.nonzero(((score == value) & alive).reshape(-1)).view(-1)
    out.view(-1)[flat[:count]] = True
    return out


def magnitude_mask(weight: torch.Tensor, sparsity: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Layer-wise magnitude mask with exactly ``round(sparsity * numel)`` pruned entries.

    If the current mask already prunes more than that, it is returned unchanged (never revive).
    """
    mask = _check_mask(weight, mask)
    k = num_to_prune(weight.numel(), sparsity)
    already = weight.numel() - int(mask.sum())
    need = k - already
    if need <= 0:
        return mask.clone()
    score = _scores(weight)
    alive_scores = score[mask]
    # need-th smallest alive score: everything strictly below goes, ties fill the rest in flat order.
    value = float(torch.kthvalue(alive_scores, need).values)
    below = (score < value) & mask
    prune = below | _prune_ties(score, mask, value, need - int(below.sum()))
    return mask & ~prune


def _score_bits(weight: torch.Tensor) -> torch.Tensor:
    """|w| as float32 viewed as int32: for non-negative floats the bit patterns sort like the values."""
    return _scores(weight).view(torch.int32)


def _kth_alive_bits(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], rank: int) -> int:
    """Bit pattern of the ``rank``-th smallest (1-based) alive finite |w| over all layers, by radix select.

    Four passes over the weights, one 8-bit digit each (most significant first); each pass histograms one
    layer at a time the entries whose higher digits match the prefix found so far. Scratch memory is that of
    one layer (its |w| and the selected entries), never a concatenation of all weights.
    """
    prefix = 0
    for shift in (24, 16, 8, 0):
        hist = torch.zeros(256, dtype=torch.int64)
        for w, m in zip(weights, masks):
            bits = _score_bits(w)
            sel = m & (bits <= _INF_BITS)  # NaN is never pruned
            if shift < 24:
                sel &= (bits >> (shift + 8)) == (prefix >> (shift + 8))
            digits = bits[sel]  # in place from here: one int32 copy of the selected entries
            digits.bitwise_right_shift_(shift).bitwise_and_(0xFF)
            hist += torch.bincount(digits, minlength=256).cpu()
            del bits, sel, digits
        cum = torch.cumsum(hist, 0)
        digit = int(torch.searchsorted(cum, torch.tensor(rank)))  # first digit with cum >= rank
        if digit > 255:
            raise ValueError(f"rank {rank} exceeds the {int(cum[-1])} alive finite weights")
        rank -= int(cum[digit - 1]) if digit else 0
        prefix |= digit << shift
    return prefix


def global_magnitude_masks(
    weights: Sequence[torch.Tensor], sparsity: float, masks: Sequence[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """One magnitude threshold across all ``weights``: exactly ``round(sparsity * total)`` pruned in all.

    The threshold is the ``need``-th smallest alive |w|, found by a radix select over the int32 bit patterns
    of non-negative floats (four histogram passes, each one layer at a time). Unlike ``torch.kthvalue`` over
    ``torch.cat`` (or a list of every layer's |w|), it never holds a second copy of all weights: extra memory
    is one layer's scratch plus the new bool masks. Ties go in layer order, then flat index.
    """
    masks = [_check_mask(w, m) for w, m in zip(weights, masks or [None] * len(weights))]
    total = sum(w.numel() for w in weights)
    k = num_to_prune(total, sparsity)
    need = k - sum(m.numel() - int(m.sum()) for m in masks)
    if need <= 0:
        return [m.clone() for m in masks]
    candidates = sum(int((m & (_score_bits(w) <= _INF_BITS)).sum()) for w, m in zip(weights, masks))
    need = min(need, candidates)  # NaN weights are never pruned
    if need <= 0:
        return [m.clone() for m in masks]
    value = torch.tensor(_kth_alive_bits(weights, masks, need), dtype=torch.int32).view(torch.float32).item()
    out, left = [], need - sum(int(((_scores(w) < value) & m).sum()) for w, m in zip(weights, masks))
    for w, m in zip(weights, masks):
        s = _scores(w)
        ties = _prune_ties(s, m, value, left)
        left -= int(ties.sum())
        out.append(m & ~((s < value) | ties))
        del s, ties
    return out


def _groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View as (rows, groups, m) along the input dimension (dim 1 for Linear/Conv, flattened with the kernel)."""
    if weight.dim() < 2:
        raise ValueError(f"N:M sparsity needs a weight with >= 2 dims, got shape {tuple(weight.shape)}")
    rows = weight.shape[0]
    cols = weight.numel() // rows
    if cols % m:
        raise ValueError(f"N:M sparsity: input size {cols} of a weight shaped {tuple(weight.shape)} is not a multiple of m={m}")
    return weight.reshape(rows, cols // m, m)


def nm_mask(weight: torch.Tensor, n: int, m: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``n`` largest |w| in every group of ``m`` consecutive input weights (2:4 for sparse tensor cores).

    Weights are grouped along the flattened input dimension (``in_features``; ``in_channels * kh * kw`` for a
    conv, contiguous in memory). Already-pruned weights are dropped first; ties go to the lower index.
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 <= n <= m and m > 0):
        raise ValueError(f"N:M sparsity needs integers 0 <= n <= m, m > 0; got n={n}, m={m}")
    mask = _check_mask(weight, mask)
    score = _groups(_scores(weight), m).clone()
    alive = _groups(mask, m)
    score[~alive] = -1.0
    # stable descending sort: among equal scores the lower index comes first and is kept
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(alive)
    keep.scatter_(-1, order[..., :n], True)
    return mask & keep.reshape(weight.shape)


def threshold_mask(weight: torch.Tensor, q: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Han et al. (2015): prune |w| < q * std(w), std over the whole layer (pruned zeros included).

    Applied repeatedly between retraining rounds, the std shrinks as zeros accumulate, which is what makes
    the rounds iterative, as in the paper's Caffe implementation and Distiller's ``SensitivityPruner``.
    """
    if q < 0:
        raise ValueError(f"q must be >= 0, got {q}")
    mask = _check_mask(weight, mask)
    w = weight.detach().float()
    threshold = float(q) * float(w.std()) if w.numel() > 1 else 0.0
    return mask & (w.abs() >= threshold)


def apply_mask_(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero pruned entries in place: exact +0.0 whatever the dtype.

    ``masked_fill_`` rather than ``mul_``: a negative weight times 0 is -0.0, a different bit pattern,
    which would make an exported file's round trip differ from the trained tensor.
    """
    with torch.no_grad():
        weight.masked_fill_(~mask.bool(), 0)
    return weight


__all__ = [
    "apply_mask_",
    "global_magnitude_masks",
    "magnitude_mask",
    "nm_mask",
    "num_to_prune",
    "sparsity",
    "threshold_mask",
]
