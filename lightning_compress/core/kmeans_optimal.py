"""Globally optimal 1-D (weighted) k-means for many small problems at once: a dynamic programme.

Lloyd's algorithm stops at a local optimum that depends on its start. In one dimension the optimum itself is
computable: the clusters of an optimal solution are contiguous runs of the sorted data, so with
``D[j][i]`` = least cost of splitting the first ``i`` sorted points into ``j`` runs,

    D[j][i] = min_{t <= i} D[j-1][t] + cost(t, i),   cost(t, i) = sum w x^2 - (sum w x)^2 / sum w  over [t, i)

(Wang & Song 2011, "Ckmeans.1d.dp"; Grønlund et al. 2017). ``cost`` obeys the quadrangle inequality, so the
best ``t`` never decreases as ``i`` grows, and each row of the table is found by divide and conquer in
O(n log n) instead of O(n^2): O(k n log n) in all (the best ``t`` of row j-1 also bounds row j's from below,
which narrows the ranges further). Weights (the Fisher diagonal) enter only through the
prefix sums of w, w x and w x^2, so the weighted problem costs the same as the unweighted one.

Per-channel and per-group codebooks are thousands of independent problems of the same size. They are solved
*together*: the divide-and-conquer tree depends only on the problem size, so every tree level is a handful of
tensor operations over all problems at once (ragged candidate ranges flattened, argmin per segment), and the
Python loop runs k x log2(n) times whatever the number of groups. Problems with fewer points are padded with
zero-weight points at the end, which change no cost.

Each problem is centred and scaled before its prefix sums are taken (cancellation then stays at the scale
of the data, not of its offset). The optimal runs give the centroids (weighted means); points are then
labelled by their nearest centroid and every centroid recomputed as the weighted mean of its points — a
Lloyd step, which cannot raise an optimal cost, so the result is an optimal Lloyd fixed point.
"""

from __future__ import annotations

import torch

#: Rows up to this many values are solved exactly; longer ones over this many runs of sorted values, then
#: refined by Lloyd. At 12,288-value rows, 1024 runs cost about what one Lloyd run per row costs and left the
#: squared error within 0.01% of 4096 runs (which cost 3.5-4x more): ``docs/results.md``.
EXACT_POINTS = 1024
#: A single codebook (one per tensor) is solved once, so it affords more runs.
TENSOR_POINTS = 4096
#: Runs are used only when there are at least this many per cluster: with fewer, a run pairs values that the
#: optimum keeps apart (the sparse tails, where large k gives single values their own cluster), which cost 3x.
RUNS_PER_CLUSTER = 16
#: The back-pointer table holds k x groups x (n + 1) int32 entries; problems are solved in chunks under this.
TABLE_ENTRIES = 1 << 23


def optimal_kmeans_rows(
    x: torch.Tensor,
    k: int,
    weights: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    exact_points: int = EXACT_POINTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal k-means of every row of ``x`` (G, n): returns ``(centroids (G, k) float64, counts (G,))``.

    Row ``g`` clusters its entries where ``valid`` (bool, same shape; None = all), weighted by ``weights``
    (>= 0, same shape; None = unit weights; a row whose weights are all zero is clustered unweighted).
    ``centroids[g, :counts[g]]`` are that row's distinct centroids in ascending order; the rest of the row
    repeats the last one. A row with at most k distinct (positive-weight) values gets exactly those values.
    A row with no points gets ``counts == 0`` and zeros. Rows longer than ``exact_points`` are solved over
    ``exact_points`` runs of consecutive sorted values and then refined by Lloyd on the values themselves
    (optimal up to where the cuts between runs fall, not exactly), if that leaves ``RUNS_PER_CLUSTER`` runs per
    cluster; otherwise exactly (O(k n log n): slow for large k).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if exact_points < 1:
        raise ValueError(f"exact_points must be >= 1, got {exact_points}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (groups, values), got shape {tuple(x.shape)}")
    groups, n = x.shape
    if valid is not None and (valid.shape != x.shape or valid.dtype != torch.bool):
        raise ValueError(f"valid must be a bool tensor of shape {tuple(x.shape)}")
    if weights is not None and weights.shape != x.shape:
        raise ValueError(f"weights must have the shape of x {tuple(x.shape)}, got {tuple(weights.shape)}")
    out_c = torch.zeros(groups, k, dtype=torch.float64)
    out_n = torch.zeros(groups, dtype=torch.long)
    if n == 0 or groups == 0:
        return out_c, out_n
    k_eff = min(k, n)
    # rows in chunks: the back-pointer table and the float64 copies stay bounded whatever the tensor's size
    chunk = max(1, min(TABLE_ENTRIES // (k_eff * (min(n, exact_points) + 1)), TABLE_ENTRIES // (4 * n)))
    for a in range(0, groups, chunk):
        rows = slice(a, a + chunk)
        x64 = x[rows].detach().to("cpu", torch.float64)
        ok = torch.ones_like(x64, dtype=torch.bool) if valid is None else valid[rows].cpu()
        if not bool(torch.isfinite(x64[ok]).all()):
            raise ValueError("x must be finite")
        w = _row_weights(None if weights is None else weights[rows], x64.shape, ok)
        c, cnt = _solve(*_sort_rows(x64, w, ok), k_eff, exact_points)
        out_c[rows, : c.shape[1]] = c
        out_c[rows, c.shape[1] :] = c[:, -1:]
        out_n[rows] = cnt
    return out_c, out_n


def optimal_centroids_sorted(xs: torch.Tensor, k: int, ws: torch.Tensor | None = None) -> torch.Tensor:
    """Optimal centroids (float64, ascending, at most k) of sorted 1-D data ``xs`` with weights ``ws``.

    Up to ``TENSOR_POINTS`` values: the exact optimum. Beyond: the optimum over ``TENSOR_POINTS`` runs of
    consecutive values (a start that Lloyd's algorithm then refines on all the values, in ``core.kmeans``).
    """
    x = xs.detach().reshape(1, -1)  # in its own dtype: the runs' sums are taken in float64 without a copy
    w = torch.ones_like(x) if ws is None else ws.detach().reshape(1, -1)
    if x.shape[1] > TENSOR_POINTS >= RUNS_PER_CLUSTER * k:
        x, w = _atoms(x, w, TENSOR_POINTS)
    c, count = optimal_kmeans_rows(x, k, w, exact_points=TENSOR_POINTS)
    return c[0, : int(count[0])]


def _row_weights(weights: torch.Tensor | None, shape: torch.Size, valid: torch.Tensor) -> torch.Tensor:
    """Per-point weights, zero at invalid entries; a row without any positive weight gets unit weights."""
    if weights is None:
        return valid.double()
    w = weights.detach().to("cpu", torch.float64)  # its shape was checked against x by the caller
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    w = torch.where(valid, w, torch.zeros_like(w))
    unweighted = ~(w > 0).any(dim=1)
    return torch.where(unweighted[:, None], valid.double(), w)


def _sort_rows(x: torch.Tensor, w: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row sorted ascending with its weights; padding (weight 0) moved to the end of its row."""
    key = torch.where(valid, x, torch.full_like(x, float("inf")))
    xs, order = torch.sort(key, dim=1, stable=True)
    ws = torch.gather(w, 1, order)
    # padding sits at +inf: give it the row's largest real value so no arithmetic sees inf (its weight is 0)
    last = torch.gather(xs, 1, (valid.sum(1, keepdim=True) - 1).clamp_min(0))
    return torch.where(torch.isinf(xs), torch.nan_to_num(last, posinf=0.0), xs), ws


def _distinct(xs: torch.Tensor, ws: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with at most k distinct positive-weight values, and those values (G, k; NaN after them).

    Their optimum is the values themselves; the programme would find it too, up to prefix-sum rounding
    that could merge two values a few ulps apart.
    """
    key = torch.sort(torch.where(ws > 0, xs, torch.full_like(xs, float("inf"))), dim=1)[0]
    new = torch.isfinite(key)
    new[:, 1:] &= key[:, 1:] != key[:, :-1]
    few = new.sum(1) <= k
    values = torch.sort(torch.where(new, key, torch.full_like(key, float("nan"))), dim=1)[0]
    width = min(k, values.shape[1])
    out = torch.full((xs.shape[0], k), float("nan"), dtype=xs.dtype)
    out[:, :width] = values[:, :width]
    return few, out


def _solve(xs: torch.Tensor, ws: torch.Tensor, k: int, exact_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted rows (G, n) and weights -> (centroids (G, k') ascending, distinct count per row)."""
    runs = xs.shape[1] > exact_points >= RUNS_PER_CLUSTER * k  # optimum over runs, then Lloyd on the points
    c = _programme_centroids(*(_atoms(xs, ws, exact_points) if runs else (xs, ws)), k)
    few, distinct = _distinct(xs, ws, c.shape[1])
    c = torch.where(few[:, None], distinct, c)
    if runs:
        c = _polish(xs, ws, c)
    c, _ = _lloyd_step(xs, ws, c)
    counts = (~torch.isnan(c)).sum(1)
    last = c.gather(1, (counts - 1).clamp_min(0)[:, None])
    return torch.where(torch.isnan(c), torch.nan_to_num(last), c), counts


def _programme_centroids(xs: torch.Tensor, ws: torch.Tensor, k: int) -> torch.Tensor:
    """Weighted means of the optimal runs (G, k), ascending, NaN for runs left empty."""
    total = ws.sum(1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    mean = (ws * xs).sum(1, keepdim=True) / safe
    scale = ((ws * (xs - mean) ** 2).sum(1, keepdim=True) / safe).sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    prefix = _Prefix(ws, (xs - mean) / scale)  # centred and scaled: the prefix sums stay well conditioned
    bounds = _backtrack(_dynamic_programme(prefix, k), xs.shape[1])
    weight, wsum = prefix.segment(bounds[:, :-1], bounds[:, 1:])
    c = torch.where(weight > 0, wsum / weight.clamp_min(1e-300), torch.nan)
    return _compact(c * scale + mean)


def _atoms(xs: torch.Tensor, ws: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sorted row cut into ``count`` runs of consecutive values: (weighted mean, total weight) per run.

    Clustering the runs' means with their weights is clustering the points with cuts allowed only between
    runs (a partition's cost is the fixed within-run error plus the runs' weighted error). The cuts are equally
    spaced in ``rank / n + (x - min) / (max - min)``, a blend of rank and value: where values are dense the runs
    hold equal counts, in sparse tails they span equal widths, so no run joins values far apart. Runs of equal
    count do: on a heavy tail they pair the isolated large values that the optimum keeps apart (on 20,000
    Student-t(2) values at k = 16, 3% to 170% more error after Lloyd; blended cuts: within 1e-4 of the optimum,
    ``tests/test_kmeans_optimal.py``).
    """
    groups, n = xs.shape
    positive = ws > 0
    # rank over each row's real points (padding, weight 0, sits at the end of a row)
    length = (n - torch.argmax(positive.flip(1).to(torch.uint8), dim=1)).where(positive.any(1), n)[:, None]
    cuts = _blend_cuts(xs, length, torch.linspace(0.0, 2.0, count + 1, dtype=torch.float64))
    cuts[:, 0], cuts[:, -1] = 0, n
    start, stop = cuts[:, :-1], cuts[:, 1:]
    weight = _run_sums(ws, start, stop)
    first = xs.gather(1, start.clamp_max(n - 1)).double()
    last = xs.gather(1, (stop - 1).clamp_min(0)).double()
    mean = _run_sums(xs.to(torch.float64, copy=True).mul_(ws), start, stop) / weight.clamp_min(1e-300)
    return torch.where(weight > 0, torch.minimum(torch.maximum(mean, first), last), first), weight


def _blend_cuts(xs: torch.Tensor, length: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """For every row and target t, the first i with ``i / (length - 1) + (x_i - x_0) / (x_last - x_0) >= t``.

    The blend is non-decreasing along a sorted row, so a bisection finds each cut from log2(n) lookups: no
    n-sized float64 arrays for a codebook of millions of values.
    """
    groups, n = xs.shape
    low, high = xs[:, :1].double(), xs.gather(1, length - 1).double()
    span = (high - low).where(high > low, torch.ones_like(high))
    rank_scale = (length - 1).clamp_min(1).double()
    target = targets[None, :].expand(groups, -1)
    lo = torch.zeros(target.shape, dtype=torch.long)
    hi = torch.full(target.shape, n, dtype=torch.long)
    for _ in range(n.bit_length()):
        active = lo < hi
        mid = (lo + hi) // 2
        below = mid / rank_scale + (xs.gather(1, mid.clamp_max(n - 1)).double() - low) / span < target
        lo = torch.where(active & below, mid + 1, lo)
        hi = torch.where(active & ~below, mid, hi)
    return lo


def _run_sums(values: torch.Tensor, start: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """Sum of ``values[g, start:stop]`` for every row g and run, from one float64 prefix sum per row."""
    prefix = values.new_zeros(values.shape[0], values.shape[1] + 1, dtype=torch.float64)
    torch.cumsum(values, 1, dtype=torch.float64, out=prefix[:, 1:])
    return prefix.gather(1, stop) - prefix.gather(1, start)


def _polish(xs: torch.Tensor, ws: torch.Tensor, c: torch.Tensor, max_iter: int = 100) -> torch.Tensor:
    """Lloyd steps on all rows at once until no label changes (or ``max_iter``)."""
    labels = None
    for _ in range(max_iter):
        c, new = _lloyd_step(xs, ws, c)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
    return c


class _Prefix:
    """Prefix sums of w, w z, w z^2 per row, stacked as one (G * (n+1), 3) table for single-gather lookups."""

    def __init__(self, ws: torch.Tensor, z: torch.Tensor):
        groups, n = ws.shape
        table = ws.new_zeros(groups, n + 1, 3)
        torch.cumsum(ws, 1, out=table[:, 1:, 0])
        torch.cumsum(ws * z, 1, out=table[:, 1:, 1])
        torch.cumsum(ws * z * z, 1, out=table[:, 1:, 2])
        self.groups, self.n1 = groups, n + 1
        self.table = table.reshape(-1, 3)

    def segment(self, t: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, weighted sum) of the runs [t, i) of every row (index tensors (G, m))."""
        base = torch.arange(self.groups)[:, None] * self.n1
        d = self.table[base + i] - self.table[base + t]
        return d[..., 0], d[..., 1]

    def first_row(self) -> torch.Tensor:
        """D[1][i]: the cost of one run [0, i) for every row and i."""
        t = self.table.reshape(self.groups, self.n1, 3)
        return _cost(t[..., 0], t[..., 1], t[..., 2])


def _cost(dw: torch.Tensor, ds: torch.Tensor, dq: torch.Tensor) -> torch.Tensor:
    """Weighted squared error of a run from its sums. A zero-weight run has ds == dq == 0 exactly (adding
    zero-weight terms leaves a prefix sum unchanged), so it costs 0."""
    return dq - ds * ds / dw.clamp_min(1e-300)


def _dynamic_programme(prefix: _Prefix, k: int) -> torch.Tensor:
    """Back pointers (k, G, n+1): ``back[j][g, i]`` = start of the last run when the first i points of row g
    form j+1 runs at least cost. Row j=0 is all zeros (one run starts at 0)."""
    best = prefix.first_row()
    back = torch.zeros(k, prefix.groups, prefix.n1, dtype=torch.int32)
    for j in range(1, k):
        best, back[j] = _next_row(prefix, best, back[j - 1])
    return back


def _next_row(prefix: _Prefix, prev: torch.Tensor, prev_arg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``D[j][i] = min_{t <= i} D[j-1][t] + cost(t, i)`` for every row and i, by level-wise divide and conquer.

    A node covers end points [lo, hi] (the same for every row) and, per row, candidate starts [olo, ohi].
    Its middle end point is solved by scanning its candidates; its halves inherit the narrowed ranges.
    """
    groups, n1 = prev.shape
    lookup = torch.cat([prefix.table, prev.reshape(-1, 1)], 1)  # (G * (n+1), 4): sums and D[j-1] per start
    out = torch.empty_like(prev)
    arg = torch.empty(groups, n1, dtype=torch.int32)
    lo, hi = torch.tensor([0]), torch.tensor([n1 - 1])
    olo = torch.zeros(groups, 1, dtype=torch.long)
    ohi = torch.full((groups, 1), n1 - 1, dtype=torch.long)
    while lo.numel():
        mid = (lo + hi) // 2
        stop = torch.minimum(ohi, mid[None, :])
        # with one run more, the last run starts no earlier (Knuth-Yao): narrows the range from below
        start = torch.minimum(torch.maximum(olo, prev_arg[:, mid].long()), stop)
        value, choice = _scan(lookup, n1, mid, start, stop)
        out[:, mid], arg[:, mid] = value, choice.int()
        left, right = lo <= mid - 1, mid + 1 <= hi
        lo = torch.cat([lo[left], (mid + 1)[right]])
        hi = torch.cat([(mid - 1)[left], hi[right]])
        olo, ohi = torch.cat([olo[:, left], choice[:, right]], 1), torch.cat([choice[:, left], ohi[:, right]], 1)
    return out, arg


def _scan(lookup: torch.Tensor, n1: int, mid: torch.Tensor, start: torch.Tensor, stop: torch.Tensor):
    """For every (row, node): min and first argmin over t in [start, stop] of D[j-1][t] + cost(t, mid).

    The ragged candidate ranges are laid end to end (segment ``s`` = one (row, node)); all lookups are
    flat row indices into ``lookup``.
    """
    groups, nodes = start.shape
    base = torch.arange(groups)[:, None] * n1
    lengths = (stop - start + 1).reshape(-1)
    seg = torch.repeat_interleave(torch.arange(groups * nodes), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    flat_t = torch.arange(seg.numel()) + (base + start).reshape(-1).sub(first)[seg]
    cand = lookup.index_select(0, flat_t)
    end = lookup.index_select(0, (base + mid[None, :]).reshape(-1)).index_select(0, seg)
    d = end[:, :3] - cand[:, :3]
    value = cand[:, 3] + _cost(d[:, 0], d[:, 1], d[:, 2])
    best = value.new_full((groups * nodes,), float("inf")).scatter_reduce_(0, seg, value, "amin")
    pos = torch.where(value <= best[seg], flat_t, flat_t.numel() + groups * n1)
    at = torch.full((groups * nodes,), groups * n1, dtype=torch.long).scatter_reduce_(0, seg, pos, "amin")
    return best.reshape(groups, nodes), (at.reshape(groups, nodes) - base)


def _backtrack(back: torch.Tensor, n: int) -> torch.Tensor:
    """Run boundaries (G, k+1) from the back pointers: row g's runs are [b[j], b[j+1])."""
    k, groups, _ = back.shape
    bounds = torch.empty(groups, k + 1, dtype=torch.long)
    bounds[:, k] = n
    rows = torch.arange(groups)
    for j in range(k - 1, -1, -1):
        bounds[:, j] = back[j][rows, bounds[:, j + 1]].long()
    return bounds


def _compact(c: torch.Tensor) -> torch.Tensor:
    """Centroids (NaN for empty runs) -> each row's distinct centroids first, ascending; NaN after them."""
    c = torch.sort(c, dim=1)[0]  # NaN sorts last
    repeat = torch.zeros_like(c, dtype=torch.bool)
    repeat[:, 1:] = c[:, 1:] == c[:, :-1]
    c = torch.where(repeat, torch.nan, c)
    return torch.sort(c, dim=1)[0]


def _lloyd_step(xs: torch.Tensor, ws: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Label every point by its nearest centroid (NaN = unused slot), move each centroid to its points'
    weighted mean (clamped into their range against rounding); returns (centroids, labels)."""
    mids = torch.nan_to_num((c[:, :-1] + c[:, 1:]) * 0.5, nan=float("inf"))  # no point goes past the last
    labels = torch.searchsorted(mids.contiguous(), xs.contiguous())
    weight = torch.zeros_like(c).scatter_add_(1, labels, ws)
    wsum = torch.zeros_like(c).scatter_add_(1, labels, ws * xs)
    means = wsum / weight.clamp_min(1e-300)
    lo = torch.full_like(c, float("inf")).scatter_reduce(1, labels, torch.where(ws > 0, xs, torch.inf), "amin")
    hi = torch.full_like(c, float("-inf")).scatter_reduce(1, labels, torch.where(ws > 0, xs, -torch.inf), "amax")
    return _compact(torch.where(weight > 0, torch.minimum(torch.maximum(means, lo), hi), torch.nan)), labels


__all__ = ["EXACT_POINTS", "TENSOR_POINTS", "optimal_centroids_sorted", "optimal_kmeans_rows"]
