"""Weighted 1-D k-means on millions of values without sorting the (value, weight) pairs.

The sorted path (``core.kmeans``) sorts every value together with its weight: a 64-bit sort, 1.6x the 32-bit
sort of the values alone, which made a weighted codebook per tensor cost about twice an unweighted one. A Lloyd
iteration needs less: for each of the k - 1 midpoints, the total weight and weighted sum of the values on either
side. Here the float32 values are binned by the top 20 bits of an order-keeping code of their bits (2^20 bins,
each a contiguous range of values, the bins in value order): one pass of counts, weights and weighted sums per
bin. A midpoint then falls inside exactly one bin, and only the values of those bins are gathered (one pass for
all of them) and sorted; every cell's sums are exact (whole bins plus the split bins' own prefix sums).

Lloyd runs first on the bins as weighted points (their weighted means) until the bins' assignment settles, then
on the values themselves until their assignment is stable under exact means: a Lloyd fixed point, as the sorted
path returns. The optimal start is the dynamic programme over runs of bins cut by rank and value together, as
``core.kmeans_optimal`` cuts runs of sorted values. Whatever this path does not cover (non-finite values, fewer
weighted bins than k, a cluster left without weight) is handed back to the sorted path (``None``).
"""

from __future__ import annotations

import numpy as np
import torch

from lightning_compress.core.kmeans_init import chunk_bounds, float_order_mask, midpoints
from lightning_compress.core.kmeans_optimal import RUNS_PER_CLUSTER, TENSOR_POINTS, optimal_kmeans_rows

#: Binning pays off once the 64-bit paired sort is what dominates; below this the sorted path is used.
MIN_POINTS = 1 << 21
_SHIFT = 12  # the top 32 - 12 = 20 bits of the order code name the bin
_BINS = 1 << (32 - _SHIFT)
_CHUNK = 1 << 20


def binned_applies(flat: torch.Tensor, init: object, k: int) -> bool:
    """Whether ``weighted_lloyd`` handles this problem (it may still hand it back)."""
    return (
        flat.device.type == "cpu"
        and flat.dtype == torch.float32
        and flat.numel() >= MIN_POINTS
        and isinstance(init, str)
        and init in ("linear", "optimal")
        and TENSOR_POINTS >= RUNS_PER_CLUSTER * k
    )


def weighted_lloyd(flat: torch.Tensor, w: torch.Tensor, k: int, init: str, max_iter: int, tol: float):
    """Weighted Lloyd from the ``linear`` or ``optimal`` start over binned values.

    Returns ``(centroids float64 ascending, iterations, converged, inertia)``, or None when the sorted path
    must take the problem.
    """
    x = flat.numpy()
    w = w if w.dtype in (torch.float32, torch.float64) else w.float()  # NumPy has no bfloat16
    low, high = torch.aminmax(flat)
    if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
        return None
    bins = _Bins(x, w.numpy())
    positive = np.flatnonzero(bins.weight > 0)
    if positive.size <= k:  # few distinct weighted values: the sorted path returns them exactly
        return None
    c = bins.linear_start(positive, k) if init == "linear" else bins.optimal_start(positive, k)
    total = float(bins.weight.sum())
    mean = float(bins.wsum.sum()) / total
    tol_abs = tol * max(0.0, bins.sq / total - mean * mean) if tol > 0 else 0.0
    coarse = _lloyd_on_bins(bins, positive, c, max_iter, tol_abs)
    if coarse is None:
        return None
    c, used = coarse
    fine = _lloyd_on_values(bins, c, max_iter - used, tol_abs)
    if fine is None:
        return None
    c, iterations, converged, inertia = fine
    return c, used + iterations, converged, inertia


class _Bins:
    """Per-bin counts, weights and weighted sums (float64), and the sorted values of the bins gathered so far."""

    def __init__(self, x: np.ndarray, w: np.ndarray):
        self.x, self.w = x, w
        self.count = np.zeros(_BINS, dtype=np.int64)
        self.weight = np.zeros(_BINS)
        self.wsum = np.zeros(_BINS)
        self.sq = 0.0  # sum w x^2, for the tolerance and the inertia
        for a, b in chunk_bounds(x.size, _CHUNK):
            ids = _bin_ids(x[a:b])
            wc = w[a:b].astype(np.float64)
            wx = wc * x[a:b]
            self.count += np.bincount(ids, minlength=_BINS)
            self.weight += np.bincount(ids, wc, minlength=_BINS)
            self.wsum += np.bincount(ids, wx, minlength=_BINS)
            self.sq += float(np.dot(wx, x[a:b]))
        self.below = np.concatenate([[0], np.cumsum(self.count)])  # values in the bins before bin b
        self.sorted: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def gather(self, wanted) -> None:
        """Sort the values of every wanted bin not gathered yet (one pass over the data for all of them), and
        keep each bin's sorted values with prefix sums of weight and weighted value."""
        missing = sorted(set(int(b) for b in wanted) - self.sorted.keys())
        if not missing:
            return
        flag = np.zeros(_BINS, dtype=bool)
        flag[missing] = True
        parts = []
        for a, b in chunk_bounds(self.x.size, _CHUNK):
            ids = _bin_ids(self.x[a:b])
            pick = flag[ids]
            if pick.any():
                parts.append((ids[pick], self.x[a:b][pick], self.w[a:b][pick].astype(np.float64)))
        ids, xs, ws = (np.concatenate(p) for p in zip(*parts)) if parts else (np.zeros(0, np.intp),) * 3
        order = np.lexsort((xs, ids))
        ids, xs, ws = ids[order], xs[order], ws[order]
        starts = np.searchsorted(ids, missing, side="left")
        stops = np.searchsorted(ids, missing, side="right")
        for b, s, e in zip(missing, starts, stops):
            seg_w = ws[s:e]
            self.sorted[b] = (xs[s:e], _prefix(seg_w), _prefix(seg_w * xs[s:e]))

    def split(self, mids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Bin of each midpoint and (count, weight, weighted sum) of that bin's values <= the midpoint."""
        at = _bin_ids(mids)
        self.gather(at)
        count, weight, wsum = np.zeros(mids.size, np.int64), np.zeros(mids.size), np.zeros(mids.size)
        for j, (b, m) in enumerate(zip(at, mids)):
            xs, cw, cs = self.sorted[int(b)]
            i = int(np.searchsorted(xs, m, side="right"))
            count[j], weight[j], wsum[j] = i, cw[i], cs[i]
        return at, count, weight, wsum

    def bin_total(self, b: int) -> tuple[float, float]:
        _, cw, cs = self.sorted[b]
        return float(cw[-1]), float(cs[-1])

    def linear_start(self, positive: np.ndarray, k: int) -> np.ndarray:
        """k values evenly spaced over [min, max] of the positive-weight values."""
        first, last = int(positive[0]), int(positive[-1])
        self.gather([first, last])
        xs, cw, _ = self.sorted[first]
        lo = float(xs[np.flatnonzero(np.diff(cw) > 0)[0]])
        xs, cw, _ = self.sorted[last]
        hi = float(xs[np.flatnonzero(np.diff(cw) > 0)[-1]])
        return np.linspace(lo, hi, k)

    def optimal_start(self, positive: np.ndarray, k: int) -> np.ndarray:
        """The optimum over runs of bins (at most ``TENSOR_POINTS``), cut evenly in rank and value together."""
        weight, means = self.weight[positive], self.wsum[positive] / self.weight[positive]
        if positive.size > TENSOR_POINTS:
            rank = self.below[positive] / self.x.size
            span = means[-1] - means[0]
            blend = rank + (means - means[0]) / (span if span > 0 else 1.0)
            cuts = np.unique(np.searchsorted(blend, np.linspace(0.0, 2.0, TENSOR_POINTS + 1)[:-1]))
            cuts = cuts[cuts < positive.size]
            run_weight = np.add.reduceat(weight, cuts)
            means = np.add.reduceat(self.wsum[positive], cuts) / run_weight
            weight = run_weight
        c, count = optimal_kmeans_rows(
            torch.from_numpy(means)[None], k, torch.from_numpy(weight)[None], exact_points=TENSOR_POINTS
        )
        return c[0, : int(count[0])].numpy()


def _lloyd_on_bins(bins: _Bins, positive: np.ndarray, c: np.ndarray, max_iter: int, tol_abs: float):
    """Lloyd over the positive-weight bins as points at their weighted means, until their assignment settles.

    Returns (centroids, iterations) or None if a cluster is left without weight."""
    weight, wsum = bins.weight[positive], bins.wsum[positive]
    means = wsum / weight
    cuts = None
    for it in range(1, max_iter + 1):
        new_cuts = np.searchsorted(means, _mids(c), side="right")
        if cuts is not None and np.array_equal(new_cuts, cuts):
            return c, it - 1
        cuts = new_cuts
        bounds = np.concatenate([[0], cuts, [means.size]])
        if np.any(bounds[1:] <= bounds[:-1]):
            return None
        new_c = np.add.reduceat(wsum, bounds[:-1]) / np.add.reduceat(weight, bounds[:-1])
        shift = float(((new_c - c) ** 2).sum())
        c = np.sort(new_c)
        if tol_abs > 0 and shift <= tol_abs:
            return c, it
    return c, max_iter


def _lloyd_on_values(bins: _Bins, c: np.ndarray, max_iter: int, tol_abs: float):
    """Lloyd on the values with exact cell sums, until the assignment is stable under exact means.

    Returns (centroids, iterations, converged, inertia) or None if a cluster is left without weight."""
    seen = None
    for it in range(1, max(max_iter, 0) + 1):
        mids = _mids(c)
        at, count, weight, wsum = _cells(bins, mids)
        if weight is None:
            return None
        key = bins.below[at] + count  # values at or below each midpoint: the assignment
        if seen is not None and np.array_equal(key, seen):
            return c, it - 1, True, _inertia(bins, c, weight, wsum)
        seen = key
        new_c = wsum / weight
        shift = float(((new_c - c) ** 2).sum())
        c = np.sort(new_c)
        if tol_abs > 0 and shift <= tol_abs:
            return _finish(bins, c, it, True)
    return _finish(bins, c, max(max_iter, 0), False)


def _finish(bins: _Bins, c: np.ndarray, iterations: int, converged: bool):
    _, _, weight, wsum = _cells(bins, _mids(c))
    return None if weight is None else (c, iterations, converged, _inertia(bins, c, weight, wsum))


def _cells(bins: _Bins, mids: np.ndarray):
    """(bins of the midpoints, counts at or below them in their bins, weight and weighted sum of every cell);
    weight None when a cell has no weight. Whole bins are summed from the bin arrays, split bins from their
    own sorted values: no differences of long prefix sums."""
    at, count, lw, ls = bins.split(mids)
    k = mids.size + 1
    weight, wsum = np.zeros(k), np.zeros(k)
    for j in range(k):
        lo_bin = int(at[j - 1]) if j > 0 else -1
        hi_bin = int(at[j]) if j < k - 1 else _BINS
        if j > 0 and j < k - 1 and lo_bin == hi_bin:  # both midpoints split the same bin
            weight[j], wsum[j] = lw[j] - lw[j - 1], ls[j] - ls[j - 1]
            continue
        weight[j] = bins.weight[lo_bin + 1 : hi_bin].sum()
        wsum[j] = bins.wsum[lo_bin + 1 : hi_bin].sum()
        if j > 0:  # the part of the lower split bin above its midpoint
            tw, ts = bins.bin_total(lo_bin)
            weight[j] += tw - lw[j - 1]
            wsum[j] += ts - ls[j - 1]
        if j < k - 1:
            weight[j] += lw[j]
            wsum[j] += ls[j]
    return at, count, (weight if bool((weight > 0).all()) else None), wsum


def _inertia(bins: _Bins, c: np.ndarray, weight: np.ndarray, wsum: np.ndarray) -> float:
    """sum w (x - c)^2 = sum w x^2 - 2 sum_j c_j S_j + sum_j c_j^2 W_j."""
    return max(0.0, bins.sq - float((2 * c * wsum - c * c * weight).sum()))


def _mids(c: np.ndarray) -> np.ndarray:
    """Midpoints as the float32 cut values of ``midpoints`` (v <= cut exactly when v <= the true midpoint);
    -0.0 becomes +0.0, which bins above every -0.0 value as it compares equal to them."""
    return midpoints(torch.from_numpy(np.asarray(c, dtype=np.float64)), torch.float32).numpy() + np.float32(0.0)


def _bin_ids(values: np.ndarray) -> np.ndarray:
    bits = values.view(np.uint32)
    return ((bits ^ float_order_mask(bits)) >> np.uint32(_SHIFT)).astype(np.intp)


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.zeros(values.size + 1)
    np.cumsum(values, out=out[1:])
    return out


__all__ = ["MIN_POINTS", "binned_applies", "weighted_lloyd"]
