"""Exact Lloyd k-means in one dimension, fast because the data are scalars.

Lloyd finds a local optimum that depends on its start. ``init="optimal"`` starts it from the global optimum
found by dynamic programming (``core.kmeans_optimal``), which Lloyd then only confirms (codebooks of up to
``kmeans_optimal.TENSOR_POINTS`` values) or refines (larger ones, solved over runs of sorted values).

Weight sharing clusters each layer's weights separately, so every problem is 1-D. In 1-D the clusters of
sorted centroids are *contiguous runs of the sorted data*, separated by the midpoints between neighbouring
centroids. So after sorting once (O(n log n)):

* the assignment step is ``searchsorted(sorted_data, midpoints)``: O(k log n) instead of O(n k);
* the update step reads cluster sums from prefix sums: O(k).

Each Lloyd iteration is therefore independent of n, and the result is the same as plain Lloyd started from
the same centroids (ties at a midpoint go to the lower centroid, as ``argmin`` does). Labels for the original
order are computed once at the end by ``searchsorted(midpoints, x)``: O(n log k).

Empty clusters are handled as scikit-learn does: each one is moved onto one of the points farthest from
their current centroid, which leaves its old cluster (an O(n) pass, only in iterations that have an empty
cluster). A cluster still empty at the end is dropped, so a layer may end with fewer than k centroids.
With at most k distinct values the distinct values themselves are the optimal codebook and are returned
directly (constant layers included).

Weighted k-means (``weights``: e.g. the Fisher diagonal, SqueezeLLM / Apple's SKM) minimises
sum_i w_i (x_i - c_{a_i})^2 with the same structure: prefix sums of w, w x and w x^2 replace counts, sums and
sums of squares, a cluster's centroid is its weighted mean, and a cluster of zero total weight counts as
empty. Zero-weight points still get the nearest centroid; they pull on none. Sorting values with their weights
costs a 64-bit sort; from ``kmeans_binned.MIN_POINTS`` float32 values on (linear or optimal start), the weighted
problem is solved over value bins instead (``core.kmeans_binned``), which sorts only the bins the midpoints
split.

Prefix-sum differences can cancel catastrophically (a subnormal after -1 sums to exactly -1), so once the
assignment settles (or cycles) the cell sums are recomputed inside each cell and Lloyd continues until the
assignment is stable under those exact means: the result is a true Lloyd fixed point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lightning_compress.core.kmeans_binned import binned_applies, weighted_lloyd
from lightning_compress.core.kmeans_init import (
    INITS,
    Init,
    cell_bounds,
    init_sorted,
    midpoints,
    prefix_sum,
    sort_pairs,
    sort_values,
)


@dataclass
class KMeansResult:
    """``centroids`` sorted ascending (k' <= k, no empty cluster); ``labels[i]`` indexes ``centroids``."""

    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: float
    n_iter: int
    converged: bool


def init_centroids(
    x: torch.Tensor, k: int, init: Init = "linear", seed: int | None = 0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Initial centroids (float64, sorted) for 1-D data ``x`` — the four inits of Deep Compression's study.

    ``linear``: evenly spaced over [min, max] (the paper's best; keeps the rare large weights represented).
    ``density``: the (i + 1/2)/k quantiles, i.e. evenly spaced on the CDF. ``random`` (Forgy): k distinct
    data points (distinct positions) drawn uniformly. ``kmeans++``: D^2 sampling. Deterministic for a given
    ``seed``. With ``weights``: over the positive-weight points, weighted quantiles, draws proportional to
    weight (``linear`` and ``density`` equal the unweighted inits for unit weights).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    flat = x.detach().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("cannot initialise k-means on an empty tensor")
    w = _check_weights(weights, flat)
    if w is None:
        return init_sorted(sort_values(flat), k, init, seed)
    xs, ws = sort_pairs(flat, w)
    return init_sorted(xs, k, init, seed, ws)


def _check_weights(weights: torch.Tensor | None, flat: torch.Tensor) -> torch.Tensor | None:
    """Flat weights, or None for unit weights (also when every weight is zero: nothing to prefer)."""
    if weights is None:
        return None
    w = weights.detach().reshape(-1).to(flat.device)
    if w.numel() != flat.numel():
        raise ValueError(f"weights must have one entry per value ({flat.numel()}), got {w.numel()}")
    if not w.is_floating_point():
        w = w.float()
    low, high = torch.aminmax(w)  # one pass; a NaN propagates into both
    if not bool(torch.isfinite(high)) or not bool(low >= 0):
        raise ValueError("weights must be finite and >= 0")
    return None if bool(high == 0) else w


class _Cells:
    """Sorted data, optional weights, and the prefix sums that give any cell's weight and weighted sum.

    ``x`` and ``w`` stay in their own dtypes (float32 or float64; no float64 copies of float32 data); sums are
    float64. ``w is None`` means unit weights (the weight of a cell is its size, no extra arrays). ``exact=True``
    sums inside each cell instead of differencing prefix sums (O(n) instead of O(k)).
    """

    def __init__(self, xs: torch.Tensor, w: torch.Tensor | None):
        if w is not None and w.dtype not in (torch.float32, torch.float64):
            w = w.double()
        self.x, self.w = xs, w
        self.sw = None if w is None else prefix_sum(w)
        self.swx = prefix_sum(xs if w is None else xs.to(torch.float64, copy=True).mul_(w))
        self.sq = _chunked(lambda a, b: float(self._wx(a, b).mul_(xs[a:b]).sum()), xs.numel())  # sum w x^2

    def _wx(self, a: int = 0, b: int | None = None) -> torch.Tensor:
        x = self.x[a:b].to(torch.float64, copy=True)  # a copy: callers multiply in place
        return x if self.w is None else x.mul_(self.w[a:b])

    def total_weight(self) -> float:
        return float(self.x.numel()) if self.sw is None else float(self.sw[-1])

    def sums(self, bounds: torch.Tensor, exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, weighted sum) of every cell ``bounds[j]:bounds[j+1]``."""
        lo, hi = bounds[:-1], bounds[1:]
        if self.w is None:
            weight = (hi - lo).double()
        else:
            weight = _segment_sums(self.w, bounds) if exact else self.sw[hi] - self.sw[lo]
        wsum = _segment_sums(self.x if self.w is None else self._wx(), bounds) if exact else self.swx[hi] - self.swx[lo]
        return weight, wsum

    def inertia(self, c: torch.Tensor, bounds: torch.Tensor) -> float:
        """sum w (x - c)^2 = sum w x^2 - 2 sum_j c_j S_j + sum_j c_j^2 W_j (float64, no pass over the data)."""
        lo, hi = bounds[:-1], bounds[1:]
        weight = (hi - lo).double() if self.sw is None else self.sw[hi] - self.sw[lo]
        wsum = self.swx[hi] - self.swx[lo]
        return max(0.0, self.sq - float((2 * c * wsum - c * c * weight).sum()))

    def relocate(self, c: torch.Tensor, bounds: torch.Tensor, weight: torch.Tensor, wsum: torch.Tensor) -> None:
        """Give each empty (zero-weight) cluster one of the points that cost most where they are (in place).

        Same rule as scikit-learn's Lloyd: the m costliest points for m empty clusters, each removed from its
        old cluster's sums, and no cluster gives away its last weight. Unit weights: in 1-D the points of a
        cell farthest from its centroid sit at the cell's two ends, so only the m outermost points on each
        side of each cell are candidates (O(k m)); weighted: one O(n) pass over w (x - c)^2.
        """
        empty = torch.nonzero(weight <= 0).reshape(-1)
        picks, owners = _farthest_ends(self.x, c, bounds, empty.numel()) if self.w is None else self._costliest(
            c, bounds, empty.numel()
        )
        xp = self.x[picks].double()
        wp = torch.ones_like(xp) if self.w is None else self.w[picks].double()
        _move_points(xp, wp, owners, empty[: picks.numel()], weight, wsum)

    def _costliest(self, c: torch.Tensor, bounds: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        owner = torch.repeat_interleave(torch.arange(c.numel(), device=c.device), bounds[1:] - bounds[:-1])
        cost = self.w * (self.x.double() - c[owner]) ** 2
        picks = torch.topk(cost, min(m, int((cost > 0).sum()))).indices
        return picks, owner[picks]


def _chunked(fn, n: int, size: int = 1 << 22) -> float:
    """``sum(fn(a, b))`` over chunks [a, b) of [0, n): float64 work without an n-sized temporary."""
    return sum(fn(a, min(a + size, n)) for a in range(0, n, size))


def _farthest_ends(x64: torch.Tensor, c: torch.Tensor, bounds: torch.Tensor, m: int):
    """The m points farthest from their centroid, and their cells, looking only at each cell's ends."""
    lo, hi = bounds[:-1], bounds[1:]
    nonempty = hi > lo
    lo, hi, cells = lo[nonempty], hi[nonempty], torch.nonzero(nonempty).reshape(-1)
    steps = torch.arange(m, device=x64.device)
    left = torch.minimum(lo[:, None] + steps, hi[:, None] - 1)
    right = torch.maximum(hi[:, None] - 1 - steps, lo[:, None])
    cand = torch.cat([left, right], 1)  # (cells, 2m) indices into the sorted data
    owner = cells[:, None].expand_as(cand)
    cand, first = _unique_with_first(cand.reshape(-1))
    owner = owner.reshape(-1)[first]
    dist = (x64[cand].double() - c[owner]) ** 2
    order = torch.argsort(dist, descending=True, stable=True)[:m]
    return cand[order], owner[order]


def _move_points(
    xp: torch.Tensor, wp: torch.Tensor, owners: torch.Tensor, empty: torch.Tensor, weight: torch.Tensor, wsum: torch.Tensor
) -> None:
    """Move points (values ``xp``, weights ``wp``) from their cells ``owners`` into the ``empty`` cells."""
    taken = torch.zeros_like(weight).index_add_(0, owners, wp)
    if bool((weight[owners] - taken[owners] > weight[owners] * 1e-9).all()):  # no cell gives its last weight
        wsum.index_add_(0, owners, -wp * xp)
        weight.sub_(taken)
        wsum[empty] = wp * xp
        weight[empty] = wp
        return
    for e, x, w, j in zip(empty.tolist(), xp.tolist(), wp.tolist(), owners.tolist()):
        if weight[j] - w <= weight[j] * 1e-9:  # never empty a cluster to fill another
            continue
        wsum[j] -= w * x
        weight[j] -= w
        wsum[e] = w * x
        weight[e] = w


def _unique_with_first(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique values and, for each, the position of one occurrence in ``values``."""
    uniq, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((uniq.numel(),), values.numel(), dtype=torch.long, device=values.device)
    first.scatter_reduce_(0, inverse, torch.arange(values.numel(), device=values.device), reduce="amin")
    return uniq, first


def kmeans_1d(
    x: torch.Tensor,
    k: int,
    init: Init | torch.Tensor = "linear",
    max_iter: int = 300,
    tol: float = 0.0,
    seed: int | None = 0,
    weights: torch.Tensor | None = None,
) -> KMeansResult:
    """Cluster the scalars of ``x`` into at most ``k`` groups with Lloyd's algorithm.

    ``init`` is an init name or a tensor of initial centroids. Iterations stop when the assignment no longer
    changes, or when the summed squared centroid shift is <= ``tol * var(x)`` (scikit-learn's criterion), or
    after ``max_iter`` iterations. Centroids are returned in ``x``'s dtype; arithmetic is in float64.
    ``weights`` (>= 0, one per value; None = all ones) makes it minimise sum_i w_i (x_i - c_{a_i})^2; all-zero
    weights count as unit weights. ``inertia`` is that (weighted) sum.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    flat = x.detach().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("cannot cluster an empty tensor")
    out_dtype = flat.dtype if flat.is_floating_point() else torch.float32
    w = _check_weights(weights, flat)
    if w is not None and binned_applies(flat, init, k):  # millions of weighted values: no paired sort
        found = weighted_lloyd(flat, w, k, init, max_iter, tol)
        if found is not None:
            c, n_iter, converged, inertia = found
            c = torch.from_numpy(c)
            out, labels = _cast_distinct(c, _labels(flat, c), out_dtype)
            return KMeansResult(out, labels, inertia, n_iter, converged)
    xs, ws = (sort_values(flat), None) if w is None else sort_pairs(flat, w)

    weighted_values = xs if ws is None or bool((ws > 0).all()) else xs[ws > 0]  # a copy only with zero weights
    distinct = torch.unique_consecutive(weighted_values)
    if distinct.numel() <= k:  # every distinct (weighted) value its own centroid: zero inertia, optimal
        labels = _labels(flat, distinct.double())
        return KMeansResult(distinct.to(out_dtype), labels, 0.0, 0, True)

    if isinstance(init, torch.Tensor):
        c = torch.sort(init.detach().reshape(-1).double().cpu())[0].to(xs.device)
        if c.numel() < 1:
            raise ValueError("init tensor must hold at least one centroid")
    else:
        c = init_sorted(xs, k, init, seed, ws).to(xs.device)

    cells = _Cells(xs if xs.dtype in (torch.float32, torch.float64) else xs.double(), ws)
    del xs, ws
    total = cells.total_weight()
    mean = float(cells.swx[-1]) / total
    tol_abs = tol * max(0.0, cells.sq / total - mean * mean) if tol > 0 else 0.0  # tol * variance
    c, n_iter, converged = _lloyd(cells, c, max_iter, tol_abs)
    c, bounds = _drop_empty(cells, c)
    labels = _labels(flat, c)
    inertia = cells.inertia(c, bounds)
    out, labels = _cast_distinct(c, labels, out_dtype)
    return KMeansResult(out, labels, inertia, n_iter, converged)


def _labels(flat: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted centroids ``c`` for every value (ties to the lower one)."""
    if flat.dtype in (torch.float32, torch.float64):
        return torch.searchsorted(midpoints(c, flat.dtype), flat, right=False)
    return torch.searchsorted((c[:-1] + c[1:]) * 0.5, flat.double(), right=False)


def _segment_sums(values: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Sum of each cell ``bounds[j]:bounds[j+1]`` added up inside the cell (empty cells give 0).

    Prefix-sum differences cancel catastrophically for a cell of tiny values after a long run of large ones
    (a subnormal next to -1 sums to exactly -1); summing each cell on its own has no such error.
    """
    lo, hi = bounds[:-1], bounds[1:]
    nonempty = hi > lo
    out = torch.zeros(lo.numel(), dtype=torch.float64, device=values.device)
    if values.device.type == "cpu":  # the non-empty cells tile [0, n): one reduceat pass, float64 sums
        out[nonempty] = torch.from_numpy(np.add.reduceat(values.numpy(), lo[nonempty].numpy(), dtype=np.float64))
    else:
        out[nonempty] = torch.segment_reduce(values.double(), "sum", lengths=(hi - lo)[nonempty])
    return out


def _lloyd(cells: _Cells, c: torch.Tensor, max_iter: int, tol_abs: float):
    """Lloyd iterations on sorted data; returns (centroids, iterations, converged).

    Cell sums come from prefix sums (O(k) per iteration) until the assignment stops changing or repeats
    (a cycle); from then on they are summed inside each cell (O(n), usually one iteration). Prefix-sum
    rounding can leave a centroid off its cell's mean, two clusters on one value, or an assignment that never
    settles; the exact iterations make the result a true Lloyd fixed point.
    """
    x64 = cells.x
    n = x64.numel()
    bounds, exact, seen = None, False, set()
    for it in range(1, max_iter + 1):
        new_bounds = cell_bounds(x64, c)
        if bounds is not None and torch.equal(new_bounds, bounds):
            if exact:
                return c, it - 1, True  # assignment unchanged under exact means: a fixed point
            exact = True  # settled under prefix sums: confirm with exact cell sums
        elif not exact:
            key = new_bounds.numpy().tobytes() if new_bounds.device.type == "cpu" else tuple(new_bounds.tolist())
            exact = key in seen  # a cycle: only exact sums can settle it
            seen.add(key)
        bounds = new_bounds
        lo, hi = bounds[:-1], bounds[1:]
        weight, wsum = cells.sums(bounds, exact)
        filled = weight > 0
        if not bool(filled.all()):
            cells.relocate(c, bounds, weight, wsum)
        means = wsum / torch.where(weight > 0, weight, torch.ones_like(weight))
        # a cell's mean lies within its data range; clamping there removes rounding that would cross it
        inside = torch.minimum(torch.maximum(means, x64[lo.clamp_max(n - 1)].double()), x64[(hi - 1).clamp_min(0)].double())
        new_c = torch.where(weight > 0, torch.where(filled, inside, means), c)
        shift = float(((new_c - c) ** 2).sum())
        c = torch.sort(new_c)[0]
        if tol_abs > 0 and shift <= tol_abs:
            return c, it, True
    return c, max_iter, False


def _drop_empty(cells: _Cells, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids of cells without weight removed, and the cells of the rest. An empty cell holds no point and
    a zero-weight cell only zero-weight points, so no cluster's (weighted) mean changes."""
    bounds = cell_bounds(cells.x, c)
    weight, _ = cells.sums(bounds, exact=cells.w is not None)
    keep = weight > 0
    if bool(keep.all()):
        return c, bounds
    c = c[keep]
    return c, cell_bounds(cells.x, c)


def _cast_distinct(c: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids in ``dtype``; centroids that round to one value are merged (labels remapped)."""
    out = c.to(dtype)
    uniq, inverse = torch.unique_consecutive(out, return_inverse=True)
    if uniq.numel() == out.numel():
        return out, labels
    return uniq, inverse[labels]


def inertia(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum of squared distances of ``x`` to its assigned centroids (float64)."""
    return float(((x.detach().reshape(-1).double() - centroids.double()[labels.reshape(-1)]) ** 2).sum())


__all__ = ["INITS", "Init", "KMeansResult", "inertia", "init_centroids", "kmeans_1d"]
