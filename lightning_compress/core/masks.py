"""Pruning masks: which weights are zero. Pure torch.

A mask is a ``bool`` tensor shaped like its weight, ``True`` = kept (1 byte per weight). Every function
takes the current mask and returns one that is a subset of it: **masks only grow** (a pruned weight never
revives), and weights already pruned count toward the target, so a target is an *absolute* sparsity.

Ties are broken deterministically (lowest flat index pruned first, layers in the order given), so every
DDP rank holding the same weights computes bit-identical masks without communicating.

* :func:`magnitude_mask` — layer-wise: prune exactly ``round(sparsity * numel)`` weights of least |w|.
* :func:`global_magnitude_masks` — one threshold over many layers, found from histograms of the float bit
  patterns, chunk by chunk, so it never materialises a copy of the weights (memory = the new masks + chunks).
* :func:`nm_mask` — N:M structured sparsity (keep N of every M consecutive input weights, e.g. 2:4).
* :func:`threshold_mask` — Han et al. (2015): prune |w| < q * std(w).
* :func:`pack_mask` / :func:`unpack_mask` — 8 mask entries per byte, for checkpoints (1/8 byte per weight).

Usage::

    mask = magnitude_mask(layer.weight, 0.9)
    layer.weight.data.mul_(mask)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from lightning_compress.core.distributed import Parts

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


def magnitude_mask(weight: torch.Tensor, sparsity: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Layer-wise magnitude mask with exactly ``round(sparsity * numel)`` pruned entries.

    If the current mask already prunes more than that, it is returned unchanged (never revive). The global
    rule over one layer: the same histogram select (no sort, no copy of the layer), ties in flat order.
    """
    return global_magnitude_masks([weight], sparsity, [_check_mask(weight, mask)])[0]


#: Entries per chunk of the global threshold's passes: its scratch memory is a few of these, never a layer.
_CHUNK = 1 << 20
_TOP_BINS, _LOW_BINS = 1 << 15, 1 << 16
#: Top 16 bits of +inf's pattern: that bin and those above hold only +inf and NaN.
_INF_TOP = 0x7F80


def _abs_bit_chunks(weight: torch.Tensor, mask: torch.Tensor):
    """``(start, |w| as int32 bit patterns, mask)`` over the flattened layer, ``_CHUNK`` entries at a time.

    For non-negative floats the bit patterns order like the values (NaN above +inf), so integer histograms
    of the patterns rank magnitudes exactly; clearing the sign bit is the absolute value.
    """
    flat, flat_mask = weight.detach().reshape(-1), mask.reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        part = flat[start:start + _CHUNK]
        if part.dtype != torch.float32:
            part = part.float()
        yield start, part.view(torch.int32) & 0x7FFFFFFF, flat_mask[start:start + _CHUNK]


def _count(hist: torch.Tensor, values: torch.Tensor, bins: int) -> None:
    hist += torch.bincount(values, minlength=bins).to(hist.device)


def _top_histogram(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], dead: int,
                   parts: Parts) -> torch.Tensor:
    """Counts of alive entries by the top 16 bits of |w|'s pattern (dead ones counted as 0 and taken out)."""
    top = torch.zeros(_TOP_BINS, dtype=torch.int64, device=weights[0].device)
    for w, m in zip(weights, masks):
        for _, bits, alive in _abs_bit_chunks(w, m):
            _count(top, bits.mul_(alive).bitwise_right_shift_(16), _TOP_BINS)
    top = parts.sum(top)  # FSDP2 parts: every rank's histogram, summed
    top[0] -= dead
    return top


def _kth_alive_bits(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], rank: int,
                    top: torch.Tensor, parts: Parts) -> tuple[int, int]:
    """Bit pattern of the ``rank``-th smallest (1-based) alive |w| over all layers, and how many alive lie below.

    ``top`` (:func:`_top_histogram`) says which top-16-bit bin holds the rank; one more pass histograms the low
    16 bits of the alive entries in that bin. Scratch memory is a few chunks, never a copy of the weights.
    """
    device = top.device
    cum = torch.cumsum(top, 0)
    prefix = int(torch.searchsorted(cum, torch.tensor(rank, device=device)))  # first bin with cum >= rank
    below = int(cum[prefix - 1]) if prefix else 0
    low = torch.zeros(_LOW_BINS, dtype=torch.int64, device=device)
    for w, m in zip(weights, masks):
        for _, bits, alive in _abs_bit_chunks(w, m):
            _count(low, bits[((bits >> 16) == prefix) & alive] & 0xFFFF, _LOW_BINS)
    cum = torch.cumsum(parts.sum(low), 0)
    digit = int(torch.searchsorted(cum, torch.tensor(rank - below, device=device)))
    below += int(cum[digit - 1]) if digit else 0
    return (prefix << 16) | digit, below


def _alive_finite(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> int:
    """Alive entries that are not NaN (NaN has no magnitude and is never pruned)."""
    return sum(int((m & ~torch.isnan(w)).sum()) for w, m in zip(weights, masks))


def global_magnitude_masks(
    weights: Sequence[torch.Tensor], sparsity: float, masks: Sequence[torch.Tensor] | None = None,
    parts: Parts | None = None,
) -> list[torch.Tensor]:
    """One magnitude threshold across all ``weights``: exactly ``round(sparsity * total)`` pruned in all.

    The threshold is the ``need``-th smallest alive |w|, found from integer histograms of the float32 bit
    patterns (two passes, chunk by chunk), then a third pass writes the masks. Unlike ``torch.kthvalue`` over
    ``torch.cat`` (or a list of every layer's |w|), it never holds a second copy of the weights: extra memory
    is the new bool masks plus a few chunks of scratch. Ties go in layer order, then flat index.

    ``parts``: ``weights`` and ``masks`` are this rank's parts of FSDP2-sharded layers
    (:class:`~lightning_compress.core.distributed.Parts`): counts and histograms are summed over the ranks and
    each rank takes the ties the ranks before it leave, so each gets its part of the one-process masks.
    """
    parts = parts or Parts()
    masks = [_check_mask(w, m) for w, m in zip(weights, masks or [None] * len(weights))]
    total = parts.count(sum(w.numel() for w in weights))
    alive = parts.count(sum(int(torch.count_nonzero(m)) for m in masks))
    need = num_to_prune(total, sparsity) - (total - alive)
    if need <= 0:
        return [m.clone() for m in masks]
    top = _top_histogram(weights, masks, total - alive, parts)
    if int(top[_INF_TOP:].sum()):  # +inf or NaN somewhere: NaN weights are never pruned
        need = min(need, parts.count(_alive_finite(weights, masks)))
        if need <= 0:
            return [m.clone() for m in masks]
    value, below = _kth_alive_bits(weights, masks, need, top, parts)
    ties = need - below  # alive entries equal to the threshold that go too, in layer then flat order
    out = []
    for i, (w, m) in enumerate(zip(weights, masks)):
        if parts.sharded:  # this rank's share of the ties: what the ranks before it in this layer leave
            mine = sum(int(((b == value) & k).sum()) for _, b, k in _abs_bit_chunks(w, m))
            ties, left_after = max(0, ties - parts.before(mine, i)), max(0, ties - parts.count(mine))
        new = torch.empty_like(m)
        flat_new = new.view(-1)
        for start, bits, keep in _abs_bit_chunks(w, m):
            part = flat_new[start:start + bits.numel()]
            torch.logical_and(keep, bits >= value, out=part)
            if ties > 0:
                hits = torch.nonzero((bits == value) & keep).view(-1)[:ties]
                part[hits] = False
                ties -= hits.numel()
        if parts.sharded:
            ties = left_after
        out.append(new)
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


def apply_mask_(weight: torch.Tensor, mask: torch.Tensor, as_uint8: torch.Tensor | None = None) -> torch.Tensor:
    """Zero pruned entries in place: exact +0.0 whatever the dtype.

    Never leaves ``-0.0`` (a negative weight times 0), a different bit pattern that would make an exported
    file's round trip differ from the trained tensor: ``masked_fill_``, or, given the mask's ``uint8`` view
    (faster, no inverted copy of the mask), a multiply followed by ``+ 0.0`` for finite weights.
    """
    with torch.no_grad():
        finite = as_uint8 is not None and weight.is_floating_point() and weight.numel() > 0 and all(
            math.isfinite(v) for v in map(float, torch.aminmax(weight.detach())))
        if finite:
            multiply_by_mask_(weight, as_uint8, positive_zero=True)
        else:
            weight.masked_fill_(~mask.bool(), 0)
    return weight


#: Entries per piece of :func:`multiply_by_mask_`: the float copy of a piece of mask stays in cache.
_MULTIPLY_CHUNK = 1 << 16


def multiply_by_mask_(tensor: torch.Tensor, mask_u8: torch.Tensor, positive_zero: bool = False) -> torch.Tensor:
    """``tensor *= mask`` in place (``mask_u8``: the mask's ``uint8`` view), piece by piece.

    PyTorch multiplies ``float * uint8`` (or ``* bool``) element by element through a dtype-promoting path that
    is several times slower than ``float * float``; converting a cache-sized piece of the mask to the tensor's
    dtype first keeps the 1-byte mask (no 4-byte copy held) and the fast kernel. ``positive_zero`` adds ``0.0``
    in the same pass, turning the ``-0.0`` of a negative weight times 0 into ``+0.0``.
    """
    if not (tensor.is_contiguous() and mask_u8.is_contiguous()):  # e.g. channels_last: let torch pair them up
        with torch.no_grad():
            tensor.mul_(mask_u8)
            return tensor.add_(0.0) if positive_zero else tensor
    flat, flat_mask = tensor.view(-1), mask_u8.view(-1)
    with torch.no_grad():
        for start in range(0, flat.numel(), _MULTIPLY_CHUNK):
            part = flat[start:start + _MULTIPLY_CHUNK]
            part.mul_(flat_mask[start:start + _MULTIPLY_CHUNK].to(part.dtype))
            if positive_zero:
                part.add_(0.0)
    return tensor


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as ``uint8`` bits, 8 entries per byte (``numpy.packbits`` order: first entry in the top bit).

    Checkpoints hold masks this way: 1/8 byte per weight instead of a bool's 1, for the same information.
    """
    flat = mask.detach().reshape(-1).to(device="cpu", dtype=torch.bool).numpy()
    return torch.from_numpy(np.packbits(flat))


def unpack_mask(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: the bool mask of ``shape`` (``ValueError`` if the byte count disagrees)."""
    numel = math.prod(int(size) for size in shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != -(-numel // 8):
        raise ValueError(f"packed mask for shape {tuple(shape)} must be {-(-numel // 8)} uint8 bytes, "
                         f"got {packed.dtype} {tuple(packed.shape)}")
    bits = np.unpackbits(packed.detach().cpu().numpy(), count=numel)
    return torch.from_numpy(bits.view(np.bool_)).reshape(tuple(int(size) for size in shape))


__all__ = [
    "apply_mask_",
    "global_magnitude_masks",
    "magnitude_mask",
    "multiply_by_mask_",
    "nm_mask",
    "num_to_prune",
    "pack_mask",
    "sparsity",
    "threshold_mask",
    "unpack_mask",
]
