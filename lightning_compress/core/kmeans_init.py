"""Sorted-data helpers and the initial centroids of 1-D k-means (plain and weighted).

Everything here works on data sorted once: a centroid's Voronoi cell is a contiguous run of the sorted
values, so cell masses come from prefix sums. With ``ws`` (per-point weights, sorted with the data) every
count becomes a total weight and every sum a weighted sum; ``ws=None`` means unit weights.
"""

from __future__ import annotations

import sys
from typing import Literal

import numpy as np
import torch

from lightning_compress.core.kmeans_optimal import optimal_centroids_sorted

Init = Literal["linear", "density", "random", "kmeans++", "optimal"]
INITS: tuple[str, ...] = ("linear", "density", "random", "kmeans++", "optimal")


def prefix_sum(values: torch.Tensor) -> torch.Tensor:
    """``[0, v0, v0+v1, ...]`` (n+1 entries) accumulated in float64, without a float64 copy of ``values``."""
    out = values.new_zeros(values.numel() + 1, dtype=torch.float64)
    torch.cumsum(values, 0, dtype=torch.float64, out=out[1:])
    return out


def sort_values(flat: torch.Tensor) -> torch.Tensor:
    """Values sorted ascending. On CPU NumPy's sort is 2-3x faster than ``torch.sort`` (no indices needed)."""
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(flat.numpy()))
    return torch.sort(flat)[0]


def sort_pairs(flat: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values sorted ascending and their weights in the same order.

    float32 on a little-endian CPU: each (value, weight) pair is packed into one uint64 whose high half is an
    order-keeping code of the value and whose low half holds the weight's bits (or, for other weight dtypes,
    its position), then sorted by NumPy's vectorised sort, where an argsort plus gathers costs ~3x sorting the
    values. Packing and unpacking go through uint32 views in cache-sized chunks, and the sorted weights are
    compacted inside the sort's own buffer before their copy: no other temporary of the data's size (the fresh
    pages of a large array cost as much as a pass over it).
    """
    if flat.device.type == "cpu" and flat.dtype == torch.float32 and flat.numel() < 2**32 and _LITTLE_ENDIAN:
        fast = weights.dtype == torch.float32
        n = flat.numel()
        low = weights.numpy().view(np.uint32) if fast else np.arange(n, dtype=np.uint32)
        packed = np.empty(n, dtype=np.uint64)
        halves = packed.view(np.uint32).reshape(-1, 2)  # [:, 0] the low half, [:, 1] the high half
        bits = flat.numpy().view(np.uint32)
        for a, b in chunk_bounds(n):
            np.bitwise_xor(bits[a:b], float_order_mask(bits[a:b]), out=halves[a:b, 1])
            halves[a:b, 0] = low[a:b]
        packed.sort()
        values = np.empty(n, dtype=np.uint32)
        for a, b in chunk_bounds(n):
            np.bitwise_xor(halves[a:b, 1], float_order_mask(halves[a:b, 1], inverse=True), out=values[a:b])
        low = _compact_low_halves(packed).copy()  # its own array: the sort buffer is freed before the prefix sums
        del packed, halves
        ws = torch.from_numpy(low.view(np.float32)) if fast else weights.reshape(-1)[torch.from_numpy(low.astype(np.int64))]
        return torch.from_numpy(values.view(np.float32)), ws
    xs, order = torch.sort(flat)
    return xs, weights.reshape(-1)[order]


_LITTLE_ENDIAN = sys.byteorder == "little"
_CHUNK = 1 << 18


def chunk_bounds(n: int, size: int = _CHUNK):
    """``(a, b)`` for consecutive chunks [a, b) of [0, n): passes over large arrays with cache-sized temporaries."""
    return ((a, min(a + size, n)) for a in range(0, n, size))


def float_order_mask(bits: np.ndarray, inverse: bool = False) -> np.ndarray:
    """XOR mask that maps float32 bits (uint32) to codes whose unsigned order is the floats' order (and back).

    Negative floats (sign bit set) have every bit flipped, so larger magnitudes sort lower; non-negative ones get
    the sign bit set, so they sort above every negative. ``inverse``: the mask for a code (its top bit set means
    the float was non-negative).
    """
    mask = (bits >> np.uint32(31)).astype(np.int32)  # 1 where the top bit is set, else 0
    np.negative(mask, out=mask)  # -1 (all ones) or 0
    if inverse:
        np.invert(mask, out=mask)
    out = mask.view(np.uint32)
    out |= np.uint32(0x80000000)
    return out


def _compact_low_halves(packed: np.ndarray) -> np.ndarray:
    """The low uint32 half of every uint64, moved to the front of ``packed``'s own memory (returned as a view).

    Word i goes from position 2i to i; copying [s, e) with e <= 2s reads [2s, 2e), past everything written.
    """
    words = packed.view(np.uint32)
    n = packed.size
    start = 1
    while start < n:
        stop = min(n, 2 * start, start + _CHUNK)
        words[start:stop] = words[2 * start : 2 * stop : 2]
        start = stop
    return words[:n]


def generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def midpoints(centroids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Midpoints between neighbouring float64 centroids, in the data's ``dtype``, rounded *down*.

    For data of that dtype, ``v <= mid`` exactly when ``v <= rounded-down mid`` (no representable value lies
    strictly between them), so cells and labels come out as in float64 without a float64 copy of the data.
    """
    mid = (centroids[:-1] + centroids[1:]) * 0.5
    if dtype == torch.float64:
        return mid
    low = mid.to(dtype)
    return torch.where(low.double() > mid, torch.nextafter(low, low.new_tensor(float("-inf"))), low)


def cell_bounds(xs: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Start/end offsets in sorted ``xs`` (float32 or float64) of each centroid's cell: ``bounds[j]:bounds[j+1]``."""
    mid = midpoints(centroids, xs.dtype)
    if xs.device.type == "cpu":  # k queries: NumPy's searchsorted has ~100x less per-call overhead on CPU
        inner = torch.from_numpy(np.searchsorted(xs.numpy(), mid.numpy(), side="right"))
    else:
        inner = torch.searchsorted(xs, mid, right=True)
    return torch.cat([inner.new_zeros(1), inner, inner.new_tensor([xs.numel()])])


def _kmeanspp(xs: torch.Tensor, ws: torch.Tensor | None, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ (D^2 sampling, weighted by ``ws``) on sorted data without an O(n k) distance matrix.

    A new centre only changes the distances inside its Voronoi cell, a contiguous run of ``xs``; the mass of
    every cell comes from prefix sums, so each draw picks a cell by mass (O(k)) and then a point inside it.
    """
    n = xs.numel()
    x64 = xs.double()
    w64 = None if ws is None else ws.double()
    wx = x64 if w64 is None else w64 * x64
    sw = None if w64 is None else prefix_sum(w64)
    s1, s2 = prefix_sum(wx), prefix_sum(wx * x64)
    first = torch.randint(n, (1,), generator=gen) if w64 is None else torch.multinomial(w64, 1, generator=gen)
    centres = x64[first]
    while centres.numel() < k:
        b = cell_bounds(x64, centres)
        lo, hi = b[:-1], b[1:]
        cnt = (hi - lo).double() if sw is None else sw[hi] - sw[lo]
        mass = ((s2[hi] - s2[lo]) - 2 * centres * (s1[hi] - s1[lo]) + centres * centres * cnt).clamp_min(0)
        if float(mass.sum()) <= 0:
            break
        j = int(torch.multinomial(mass, 1, generator=gen))
        seg = (x64[lo[j] : hi[j]] - centres[j]) ** 2
        if w64 is not None:
            seg = seg * w64[lo[j] : hi[j]]
        cum = seg.cumsum(0)
        u = torch.rand((), generator=gen, dtype=torch.float64) * cum[-1]
        pick = int(torch.searchsorted(cum, u.reshape(1), right=True).clamp_max(seg.numel() - 1))
        centres, _ = torch.sort(torch.cat([centres, x64[lo[j] + pick].reshape(1)]))
    return centres


def _weighted_quantile_index(ws: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Index of the (weighted) q-quantile, equal to ``round(q * (n - 1))`` for unit weights.

    Point j sits at position ``P_j = W_{<j} - w_0 + (w_0 + w_j) / 2`` (j for unit weights); a target
    position is rounded to a point by interpolating between the two points around it.
    """
    w64 = ws.double()
    before = prefix_sum(w64)[:-1]
    pos = before + (w64 - w64[0]) * 0.5
    t = q * pos[-1]
    j0 = (torch.searchsorted(pos, t, right=True) - 1).clamp(0, ws.numel() - 1)
    j1 = (j0 + 1).clamp_max(ws.numel() - 1)
    gap = (pos[j1] - pos[j0]).clamp_min(torch.finfo(torch.float64).tiny)
    frac = torch.where(j1 > j0, (t - pos[j0]) / gap, torch.zeros_like(t))
    return (j0.double() + frac).round().long().clamp(0, ws.numel() - 1)


def init_sorted(xs: torch.Tensor, k: int, init: str, seed: int | None, ws: torch.Tensor | None = None):
    """Initial centroids (float64, sorted) from sorted data ``xs`` (weights ``ws`` sorted alongside)."""
    if ws is not None and init != "optimal":  # zero-weight points count for nothing, not even as a candidate
        positive = ws > 0  # (the programme gives them no pull by itself)
        if init == "linear":  # only the extreme positive-weight values matter: no copies
            first = int(torch.argmax(positive.to(torch.uint8)))
            last = xs.numel() - 1 - int(torch.argmax(positive.flip(0).to(torch.uint8)))
            xs = xs[first : last + 1]
        elif not bool(positive.all()):  # the copies cost a pass over the data: only when needed
            xs, ws = xs[positive], ws[positive]
    n = xs.numel()
    if init == "linear":
        c = torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64)
    elif init == "density":
        q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        index = (q * (n - 1)).round().long() if ws is None else _weighted_quantile_index(ws, q)
        c = xs[index].double()
    elif init == "random":
        gen = generator(seed)
        if ws is None:
            picks = torch.randperm(n, generator=gen)[: min(k, n)]
        else:  # k distinct positions, each draw proportional to weight
            picks = torch.multinomial(ws.double(), min(k, n), replacement=False, generator=gen)
        c = xs[picks].double()
    elif init == "kmeans++":
        c = _kmeanspp(xs, ws, k, generator(seed))
    elif init == "optimal":  # the dynamic programme's optimum: Lloyd then only confirms (or refines) it
        c = optimal_centroids_sorted(xs, k, ws)
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return torch.sort(c)[0]


__all__ = [
    "INITS", "Init", "cell_bounds", "chunk_bounds", "float_order_mask", "generator", "init_sorted", "midpoints", "prefix_sum", "sort_pairs",
    "sort_values",
]
