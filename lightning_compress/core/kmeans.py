"""Exact Lloyd k-means in one dimension, fast because the data are scalars.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Init = Literal["linear", "density", "random", "kmeans++"]
INITS: tuple[str, ...] = ("linear", "density", "random", "kmeans++")


@dataclass
class KMeansResult:
    """``centroids`` sorted ascending (k' <= k, no empty cluster); ``labels[i]`` indexes ``centroids``."""

    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: float
    n_iter: int
    converged: bool


def _prefix_sum(values: torch.Tensor) -> torch.Tensor:
    """``[0, v0, v0+v1, ...]`` (n+1 entries) without an extra copy."""
    out = values.new_zeros(values.numel() + 1)
    torch.cumsum(values, 0, out=out[1:])
    return out


def _sorted(flat: torch.Tensor) -> torch.Tensor:
    """Values sorted ascending. On CPU NumPy's sort is 2-3x faster than ``torch.sort`` (no indices needed)."""
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(flat.numpy()))
    return torch.sort(flat)[0]


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def _cell_bounds(xs: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Start/end offsets in sorted float64 ``xs`` of each centroid's cell: ``bounds[j]:bounds[j+1]``."""
    mid = (centroids[:-1] + centroids[1:]) * 0.5
    if xs.device.type == "cpu":  # k queries: NumPy's searchsorted has ~100x less per-call overhead on CPU
        inner = torch.from_numpy(np.searchsorted(xs.numpy(), mid.numpy(), side="right"))
    else:
        inner = torch.searchsorted(xs, mid, right=True)
    return torch.cat([inner.new_zeros(1), inner, inner.new_tensor([xs.numel()])])


def _kmeanspp(xs: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ (D^2 sampling) on sorted data without an O(n k) distance matrix.

    A new centre only changes the distances inside its Voronoi cell, a contiguous run of ``xs``; the mass of
    every cell comes from prefix sums, so each draw picks a cell by mass (O(k)) and then a point inside it.
    """
    n = xs.numel()
    x64 = xs.double()
    s1 = torch.cat([x64.new_zeros(1), x64.cumsum(0)])
    s2 = torch.cat([x64.new_zeros(1), (x64 * x64).cumsum(0)])
    centres = xs[torch.randint(n, (1,), generator=gen)].double()
    while centres.numel() < k:
        b = _cell_bounds(x64, centres)
        lo, hi = b[:-1], b[1:]
        cnt = (hi - lo).double()
        mass = (s2[hi] - s2[lo]) - 2 * centres * (s1[hi] - s1[lo]) + centres * centres * cnt
        mass = mass.clamp_min(0)
        if float(mass.sum()) <= 0:
            break
        j = int(torch.multinomial(mass, 1, generator=gen))
        seg = (x64[lo[j] : hi[j]] - centres[j]) ** 2
        cum = seg.cumsum(0)
        u = torch.rand((), generator=gen, dtype=torch.float64) * cum[-1]
        pick = int(torch.searchsorted(cum, u.reshape(1), right=True).clamp_max(seg.numel() - 1))
        new = x64[lo[j] + pick]
        centres, _ = torch.sort(torch.cat([centres, new.reshape(1)]))
    return centres


def init_centroids(x: torch.Tensor, k: int, init: Init = "linear", seed: int | None = 0) -> torch.Tensor:
    """Initial centroids (float64, sorted) for 1-D data ``x`` — the four inits of Deep Compression's study.

    ``linear``: evenly spaced over [min, max] (the paper's best; keeps the rare large weights represented).
    ``density``: the (i + 1/2)/k quantiles, i.e. evenly spaced on the CDF. ``random`` (Forgy): k distinct
    data points (distinct positions) drawn uniformly. ``kmeans++``: D^2 sampling. Deterministic for a given ``seed``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    xs = x.detach().reshape(-1)
    if xs.numel() == 0:
        raise ValueError("cannot initialise k-means on an empty tensor")
    xs = _sorted(xs)
    return _init_sorted(xs, k, init, seed)


def _init_sorted(xs: torch.Tensor, k: int, init: str, seed: int | None) -> torch.Tensor:
    n = xs.numel()
    if init == "linear":
        c = torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64)
    elif init == "density":
        q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        c = xs[(q * (n - 1)).round().long()].double()
    elif init == "random":
        gen = _generator(seed)
        c = xs[torch.randperm(n, generator=gen)[: min(k, n)]].double()
    elif init == "kmeans++":
        c = _kmeanspp(xs, k, _generator(seed))
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return torch.sort(c)[0]


def _relocate_empty(
    x64: torch.Tensor, c: torch.Tensor, bounds: torch.Tensor, sums: torch.Tensor, cnt: torch.Tensor
) -> None:
    """Give each empty cluster one of the points farthest from their centroid (in place on sums/cnt).

    Same rule as scikit-learn's Lloyd: distances to the centroids used for this assignment, the m farthest
    points for m empty clusters, each point removed from its old cluster's sum. In 1-D the points of a cell
    farthest from its centroid sit at the cell's two ends, so only the m outermost points on each side of
    each cell are candidates: O(k m) work instead of a pass over all n points.
    """
    empty = torch.nonzero(cnt == 0).reshape(-1)
    m = empty.numel()
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
    dist = (x64[cand] - c[owner]) ** 2
    order = torch.argsort(dist, descending=True, stable=True)[:m]
    picks, owners = cand[order], owner[order]
    empty = empty[: picks.numel()]
    taken = torch.bincount(owners, minlength=cnt.numel()).to(cnt.dtype)
    if bool((cnt[owners] > taken[owners]).all()):  # the usual case: no cluster gives away its last point
        sums.index_add_(0, owners, -x64[picks])
        cnt.sub_(taken)
        sums[empty] = x64[picks]
        cnt[empty] = 1
        return
    for e, p, j in zip(empty.tolist(), picks.tolist(), owners.tolist()):
        if cnt[j] <= 1:  # never empty a cluster to fill another
            continue
        sums[j] -= x64[p]
        cnt[j] -= 1
        sums[e] = x64[p]
        cnt[e] = 1


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
) -> KMeansResult:
    """Cluster the scalars of ``x`` into at most ``k`` groups with Lloyd's algorithm.

    ``init`` is an init name or a tensor of initial centroids. Iterations stop when the assignment no longer
    changes, or when the summed squared centroid shift is <= ``tol * var(x)`` (scikit-learn's criterion), or
    after ``max_iter`` iterations. Centroids are returned in ``x``'s dtype; arithmetic is in float64.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    flat = x.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("cannot cluster an empty tensor")
    out_dtype = flat.dtype if flat.is_floating_point() else torch.float32
    xs = _sorted(flat)

    distinct = torch.unique_consecutive(xs)
    if distinct.numel() <= k:  # every distinct value its own centroid: zero inertia, optimal
        labels = torch.searchsorted(distinct, flat)
        return KMeansResult(distinct.to(out_dtype), labels, 0.0, 0, True)

    if isinstance(init, torch.Tensor):
        c = torch.sort(init.detach().reshape(-1).double().cpu())[0].to(xs.device)
        if c.numel() < 1:
            raise ValueError("init tensor must hold at least one centroid")
    else:
        c = _init_sorted(xs, k, init, seed).to(xs.device)

    x64 = xs.double()
    del xs
    s1, s2 = _prefix_sum(x64), _prefix_sum(x64 * x64)
    n = x64.numel()
    tol_abs = tol * max(0.0, float(s2[n] / n - (s1[n] / n) ** 2)) if tol > 0 else 0.0  # tol * variance
    c, n_iter, converged = _lloyd(x64, s1, c, max_iter, tol_abs)
    c, bounds = _drop_empty(x64, c)
    lo, hi = bounds[:-1], bounds[1:]
    labels = torch.searchsorted((c[:-1] + c[1:]) * 0.5, flat.double(), right=False)
    # Inertia from prefix sums: sum over cells of S2 - 2 c S1 + c^2 n (float64, no pass over the data).
    inertia = float(((s2[hi] - s2[lo]) - 2 * c * (s1[hi] - s1[lo]) + c * c * (hi - lo)).sum().clamp_min(0))
    out, labels = _cast_distinct(c, labels, out_dtype)
    return KMeansResult(out, labels, inertia, n_iter, converged)


def _segment_sums(x64: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Sum of each cell ``bounds[j]:bounds[j+1]`` added up inside the cell (empty cells give 0).

    Prefix-sum differences cancel catastrophically for a cell of tiny values after a long run of large ones
    (a subnormal next to -1 sums to exactly -1); summing each cell on its own has no such error.
    """
    lo, hi = bounds[:-1], bounds[1:]
    nonempty = hi > lo
    out = x64.new_zeros(lo.numel())
    if x64.device.type == "cpu":  # the non-empty cells tile [0, n): one reduceat pass
        out[nonempty] = torch.from_numpy(np.add.reduceat(x64.numpy(), lo[nonempty].numpy()))
    else:
        out[nonempty] = torch.segment_reduce(x64, "sum", lengths=(hi - lo)[nonempty])
    return out


def _lloyd(x64: torch.Tensor, s1: torch.Tensor, c: torch.Tensor, max_iter: int, tol_abs: float):
    """Lloyd iterations on sorted data; returns (centroids, iterations, converged).

    Cell sums come from prefix sums (O(k) per iteration) until the assignment stops changing or repeats
    (a cycle); from then on they are summed inside each cell (O(n), usually one iteration). Prefix-sum
    differences cancel catastrophically for a cell of tiny values after a long run of large ones (a subnormal
    after -1 sums to exactly -1), which can leave a centroid off its cell's mean, two clusters on one value,
    or an assignment that never settles; the exact iterations make the result a true Lloyd fixed point.
    """
    n = x64.numel()
    bounds, exact, seen = None, False, set()
    for it in range(1, max_iter + 1):
        new_bounds = _cell_bounds(x64, c)
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
        cnt = (hi - lo).double()
        sums = _segment_sums(x64, bounds) if exact else s1[hi] - s1[lo]
        filled = cnt > 0
        if not bool(filled.all()):
            _relocate_empty(x64, c, bounds, sums, cnt)
        means = sums / cnt.clamp_min(1)
        # a cell's mean lies within its data range; clamping there removes rounding that would cross it
        inside = torch.minimum(torch.maximum(means, x64[lo.clamp_max(n - 1)]), x64[(hi - 1).clamp_min(0)])
        new_c = torch.where(cnt > 0, torch.where(filled, inside, means), c)
        shift = float(((new_c - c) ** 2).sum())
        c = torch.sort(new_c)[0]
        if tol_abs > 0 and shift <= tol_abs:
            return c, it, True
    return c, max_iter, False


def _drop_empty(x64: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids without members removed, and the cells of the rest (an empty cell holds no point, so
    removing its centroid moves no point to another cell)."""
    bounds = _cell_bounds(x64, c)
    keep = bounds[1:] > bounds[:-1]
    if bool(keep.all()):
        return c, bounds
    c = c[keep]
    return c, _cell_bounds(x64, c)


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


__all__ = ["INITS", "KMeansResult", "inertia", "init_centroids", "kmeans_1d"]
