"""1-D k-means (core/kmeans) and the codebook math of weight sharing (core/sharing)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_compress.core.kmeans import INITS, init_centroids, kmeans_1d
from lightning_compress.core.sharing import (
    centroid_gradient,
    cluster_weight,
    decode,
    index_dtype,
    recenter,
    shared_gradient,
    sharing_rate,
)


def brute_force_lloyd(x: torch.Tensor, c: torch.Tensor, max_iter: int = 1000):
    """Textbook Lloyd: full distance matrix, argmin (ties -> lowest centroid); an empty cluster takes the
    point farthest from its centroid, which leaves its cluster (scikit-learn's rule)."""
    x = x.double().reshape(-1)
    c = c.double().clone()
    labels = None
    for _ in range(max_iter):
        d = (x[:, None] - c[None, :]) ** 2
        new_labels = d.argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels.clone()
        dist = d[torch.arange(x.numel()), labels]
        empties = [j for j in range(c.numel()) if not bool((labels == j).any())]
        far = torch.argsort(dist, descending=True, stable=True)[: len(empties)]
        for j, p in zip(empties, far.tolist()):
            labels[p] = j
        for j in range(c.numel()):
            members = x[labels == j]
            if members.numel():
                c[j] = members.mean()
        c = torch.sort(c)[0]
    labels = ((x[:, None] - c[None, :]) ** 2).argmin(1)
    return c, labels, float(((x - c[labels]) ** 2).sum())


def optimal_kmeans(x: torch.Tensor, k: int) -> tuple[float, torch.Tensor]:
    """Exhaustive optimum (inertia, centroids): in 1-D optimal clusters are contiguous runs of sorted data."""
    xs = torch.sort(x.double().reshape(-1))[0]
    n = xs.numel()
    best, best_c = math.inf, None
    for cuts in itertools.combinations(range(1, n), min(k, n) - 1):
        bounds = list(zip((0, *cuts), (*cuts, n)))
        total = sum(float(((xs[a:b] - xs[a:b].mean()) ** 2).sum()) for a, b in bounds)
        if total < best:
            best, best_c = total, torch.stack([xs[a:b].mean() for a, b in bounds])
    return best, best_c


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_lloyd_from_same_init(init, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(150, generator=g), 3 + 0.5 * torch.randn(50, generator=g)])
    k = 7
    c0 = init_centroids(x, k, init, seed=seed)
    res = kmeans_1d(x, k, init=init, seed=seed)
    ref_c, ref_labels, ref_inertia = brute_force_lloyd(x, c0)
    assert res.converged
    assert res.inertia == pytest.approx(ref_inertia, rel=1e-9, abs=1e-12)
    used = torch.unique(ref_labels)
    torch.testing.assert_close(res.centroids.double(), ref_c[used].to(torch.float32).double(), rtol=1e-6, atol=1e-6)
    # Same partition: labels agree up to the renumbering caused by dropping empty clusters.
    torch.testing.assert_close(res.centroids[res.labels].double(), ref_c[ref_labels].float().double())


@pytest.mark.parametrize("seed", range(6))
def test_never_below_exhaustive_optimum_on_tiny_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, generator=g)
    for k in (2, 3, 4):
        opt, opt_c = optimal_kmeans(x, k)
        results = [kmeans_1d(x, k, init=i, seed=s).inertia for i in INITS for s in range(3)]
        assert min(results) >= opt - 1e-9  # Lloyd is local: never better than the optimum
        # The optimum is a Lloyd fixed point: started there, the algorithm stays and reports its inertia.
        at_opt = kmeans_1d(x, k, init=opt_c)
        assert at_opt.inertia == pytest.approx(opt, rel=1e-9, abs=1e-12)
        torch.testing.assert_close(at_opt.centroids.double(), opt_c.float().double())


def test_well_separated_clusters_are_found_exactly():
    x = torch.tensor([0.0, 0.1, 0.2, 10.0, 10.1, 10.2, 20.0, 20.3])
    res = kmeans_1d(x, 3)
    torch.testing.assert_close(res.centroids, torch.tensor([0.1, 10.1, 20.15]))
    assert res.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_linear_init_is_evenly_spaced_over_min_max():
    x = torch.tensor([-2.0, 0.5, 0.7, 6.0])
    c = init_centroids(x, 5, "linear")
    torch.testing.assert_close(c, torch.tensor([-2.0, 0.0, 2.0, 4.0, 6.0], dtype=torch.float64))


def test_density_init_takes_cdf_quantiles():
    x = torch.arange(100, dtype=torch.float32)
    c = init_centroids(x, 4, "density")
    # quantiles 1/8, 3/8, 5/8, 7/8 of 0..99 -> round(q*99)
    assert c.tolist() == [12.0, 37.0, 62.0, 87.0]


@pytest.mark.parametrize("init", ["random", "kmeans++"])
def test_sampled_inits_pick_data_points_and_are_deterministic_per_seed(init):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    a = init_centroids(x, 16, init, seed=5)
    b = init_centroids(x, 16, init, seed=5)
    c = init_centroids(x, 16, init, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.numel() == 16 and torch.isin(a.float(), x).all()
    assert torch.all(a[1:] > a[:-1])  # sorted, distinct


def test_kmeanspp_spreads_over_separated_groups():
    # Four tight groups far apart: D^2 sampling must put one centre in each of them (probability ~1).
    g = torch.Generator().manual_seed(0)
    x = torch.cat([m + 0.01 * torch.randn(500, generator=g) for m in (-30.0, -10.0, 10.0, 30.0)])
    for seed in range(5):
        c = init_centroids(x, 4, "kmeans++", seed=seed)
        assert torch.round(c / 10).tolist() == [-3.0, -1.0, 1.0, 3.0]


def test_unknown_init_and_bad_k_are_errors():
    with pytest.raises(ValueError, match="init"):
        kmeans_1d(torch.randn(10), 3, init="nope")
    with pytest.raises(ValueError, match="k must"):
        kmeans_1d(torch.randn(10), 0)
    with pytest.raises(ValueError, match="empty"):
        kmeans_1d(torch.zeros(0), 3)


@pytest.mark.parametrize("init", INITS)
def test_constant_layer(init):
    res = kmeans_1d(torch.full((50,), 0.25), 8, init=init)
    assert res.centroids.tolist() == [0.25]
    assert res.inertia == 0.0 and torch.all(res.labels == 0)


@pytest.mark.parametrize("init", INITS)
def test_fewer_distinct_values_than_k(init):
    x = torch.tensor([1.0, -1.0, 1.0, 3.0, 3.0, -1.0])
    res = kmeans_1d(x, 16, init=init)
    assert res.centroids.tolist() == [-1.0, 1.0, 3.0]
    assert torch.equal(res.centroids[res.labels], x)
    assert res.inertia == 0.0


def test_empty_clusters_are_relocated_like_the_reference():
    # Linear init over [0, 100] with an outlier leaves six middle centroids without members at first.
    x = torch.cat([torch.linspace(0, 1, 200), torch.tensor([100.0])])
    c0 = init_centroids(x, 8, "linear")
    assert int((torch.bincount(((x[:, None].double() - c0) ** 2).argmin(1), minlength=8) == 0).sum()) == 6
    res = kmeans_1d(x, 8, init="linear")
    assert torch.isfinite(res.centroids).all() and res.centroids.numel() == 8
    assert torch.all(torch.bincount(res.labels, minlength=8) > 0)
    assert res.centroids[-1] == 100.0
    _, _, ref_inertia = brute_force_lloyd(x, c0)
    assert res.inertia == pytest.approx(ref_inertia, rel=1e-9)


def test_clusters_left_empty_at_the_end_are_dropped():
    # One iteration only: the relocated points make non-empty clusters, nothing NaN, labels index centroids.
    x = torch.cat([torch.zeros(50), torch.ones(50), torch.tensor([0.5, 100.0])])
    res = kmeans_1d(x, 6, init="linear", max_iter=1)
    assert torch.isfinite(res.centroids).all() and res.centroids.numel() <= 6
    assert torch.all(torch.bincount(res.labels, minlength=res.centroids.numel()) > 0)


def assert_lloyd_fixed_point(x: torch.Tensor, res, k: int) -> None:
    """Converged, sorted distinct centroids, nearest-centroid labels, every centroid its members' mean."""
    c = res.centroids.double()
    assert res.converged and torch.isfinite(c).all()
    assert c.numel() <= k and torch.all(c[1:] > c[:-1])
    x64 = x.double()
    # every point sits with a nearest centroid (labels are exact in float64; the returned centroids are
    # rounded to float32, which may make a point on a midpoint look up to one rounding step closer to the other)
    d = (x64[:, None] - c[None, :]).abs()
    slack = 1e-9 + 1e-6 * c.abs().max()
    assert torch.all(d[torch.arange(x.numel()), res.labels] <= d.min(1).values + slack)
    # ... and every centroid is the mean of its members (up to float32 rounding of the output)
    for j in range(c.numel()):
        members = x64[res.labels == j]
        assert members.numel() > 0
        assert float(c[j]) == pytest.approx(float(members.mean()), rel=1e-6, abs=1e-6)


@settings(deadline=None)  # example count from the Hypothesis profile (tests/conftest.py)
@given(
    st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=60),
    st.integers(1, 10),
    st.sampled_from(INITS),
)
def test_converged_result_is_a_lloyd_fixed_point(values, k, init):
    x = torch.tensor(values, dtype=torch.float32)
    assert_lloyd_fixed_point(x, kmeans_1d(x, k, init=init, max_iter=10_000), k)


def test_subnormal_next_to_larger_values_keeps_its_own_exact_centroid():
    # Regression (issue 17): prefix sums absorbed the subnormal (-1 + 1.4e-45 == -1), so its one-point cluster
    # got centroid 0 beside the cluster of the zeros: [-1, 0, 0, 1, 2.5], duplicate centroids.
    x = torch.tensor([0, 0, 1, 2, 3, 1.4013e-45, -1.0])
    res = kmeans_1d(x, 5, init="density")
    assert res.centroids.tolist() == [-1.0, 0.0, float(x[5]), 1.0, 2.5]
    assert_lloyd_fixed_point(x, res, 5)


@pytest.mark.parametrize("init", INITS)
def test_tiny_values_beside_a_large_prefix_get_exact_means(init):
    # A cluster of values 1e-30 after a run summing to 1e6: prefix-sum differences would give 0 or noise.
    x = torch.cat([torch.full((1000,), 1000.0), torch.tensor([1e-30, 2e-30, 3e-30]), torch.full((1000,), -5.0)])
    res = kmeans_1d(x, 3, init=init, max_iter=10_000)
    assert_lloyd_fixed_point(x, res, 3)
    assert float(res.centroids[1]) == pytest.approx(2e-30, rel=1e-6, abs=0)


def test_tolerance_stops_early_like_scikit_learn():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    strict = kmeans_1d(x, 16, tol=0.0, max_iter=2000)
    loose = kmeans_1d(x, 16, tol=1e-2)
    assert loose.n_iter < strict.n_iter
    assert loose.inertia >= strict.inertia * (1 - 1e-12)


# ---- codebook math (core/sharing) ----


def test_cluster_weight_keeps_zeros_out_of_the_codebook():
    w = torch.tensor([[0.0, 1.0, 1.1, 0.0], [5.0, 5.2, 0.0, 9.0]])
    sw = cluster_weight(w, 3)
    assert sw.k == 3 and 0.0 not in sw.centroids.tolist()
    assert sw.assignment.dtype == torch.uint8 and sw.assignment.shape == w.shape
    assert sw.assignment[w == 0].tolist() == [3, 3, 3]  # reserved code k
    decoded = sw.decode()
    assert torch.equal(decoded == 0, w == 0)
    assert torch.unique(decoded[w != 0]).numel() == 3


def test_index_dtype_is_compact():
    assert index_dtype(256) == torch.uint8
    assert index_dtype(257) == torch.int16
    x = torch.linspace(0.5, 1.5, 4000)  # uniform: linear init leaves no cluster empty
    assert cluster_weight(x, 256).k == 256
    assert cluster_weight(x, 256).assignment.dtype == torch.uint8  # 256 codes, nothing pruned
    x[::2] = 0
    assert cluster_weight(x, 256).k == 256
    assert cluster_weight(x, 256).assignment.dtype == torch.int16  # 256 codes + the pruned code
    assert cluster_weight(x, 255).assignment.dtype == torch.uint8


def test_all_zero_layer():
    sw = cluster_weight(torch.zeros(3, 4), 4)
    assert sw.k == 0 and torch.equal(sw.decode(), torch.zeros(3, 4))


def test_centroid_gradient_sum_and_mean():
    assignment = torch.tensor([[0, 1, 2], [1, 1, 3]], dtype=torch.uint8)  # 3 = pruned when k = 3
    grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 100.0]])
    assert centroid_gradient(grad, assignment, 3, "sum").tolist() == [1.0, 12.0, 3.0]
    assert centroid_gradient(grad, assignment, 3, "mean").tolist() == [1.0, 4.0, 3.0]
    g = shared_gradient(grad, assignment, 3)
    assert g.tolist() == [[1.0, 12.0, 3.0], [12.0, 12.0, 0.0]]
    with pytest.raises(ValueError, match="reduction"):
        centroid_gradient(grad, assignment, 3, "max")


def test_recenter_projects_onto_cluster_means():
    assignment = torch.tensor([0, 0, 1, 2], dtype=torch.uint8)
    w = torch.tensor([1.0, 3.0, 5.0, 7.0])
    assert recenter(w, assignment, 2).tolist() == [2.0, 5.0]
    assert decode(torch.tensor([2.0, 5.0]), assignment).tolist() == [2.0, 2.0, 5.0, 0.0]


def test_sgd_step_on_shared_gradient_is_the_paper_update():
    w0 = torch.tensor([0.1, 0.1, -0.4, -0.4, 0.0])
    sw = cluster_weight(w0, 2)
    grad = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0])
    lr = 0.01
    w1 = w0 - lr * shared_gradient(grad, sw.assignment, sw.k)
    # C_k <- C_k - lr * sum of member gradients; the pruned weight stays zero
    assert torch.allclose(w1, torch.tensor([0.1 - 0.03, 0.1 - 0.03, -0.4 - 0.08, -0.4 - 0.08, 0.0]))
    assert w1[4] == 0.0


def test_sharing_rate_formula():
    # Deep Compression's example: 16 weights, 4 clusters, 32-bit -> 16*32 / (16*2 + 4*32) = 3.2
    assert sharing_rate(16, 4) == pytest.approx(3.2)
    assert sharing_rate(1_000_000, 32) == pytest.approx(32e6 / (5e6 + 1024))


# ---- weighted k-means (issue 18: sensitivity-weighted clustering) ----


def brute_force_weighted_lloyd(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, max_iter: int = 1000):
    """Textbook weighted Lloyd: argmin assignment, weighted means; returns (centroids, labels, inertia)."""
    x, w, c = x.double().reshape(-1), w.double().reshape(-1), c.double().clone()
    labels = None
    for _ in range(max_iter):
        new_labels = ((x[:, None] - c[None, :]) ** 2).argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        for j in range(c.numel()):
            wj = w[labels == j]
            if float(wj.sum()) > 0:
                c[j] = (wj * x[labels == j]).sum() / wj.sum()
        c = torch.sort(c)[0]
    labels = ((x[:, None] - c[None, :]) ** 2).argmin(1)
    return c, labels, float((w * (x - c[labels]) ** 2).sum())


def optimal_weighted(x: torch.Tensor, w: torch.Tensor, k: int) -> tuple[float, torch.Tensor]:
    """Exhaustive weighted optimum over contiguous runs of sorted data (all weights > 0)."""
    order = torch.argsort(x.double())
    xs, ws = x.double()[order], w.double()[order]
    best, best_c = math.inf, None
    for cuts in itertools.combinations(range(1, xs.numel()), k - 1):
        runs = list(zip((0, *cuts), (*cuts, xs.numel())))
        means = [float((ws[a:b] * xs[a:b]).sum() / ws[a:b].sum()) for a, b in runs]
        total = sum(float((ws[a:b] * (xs[a:b] - m) ** 2).sum()) for (a, b), m in zip(runs, means))
        if total < best:
            best, best_c = total, torch.tensor(means, dtype=torch.float64)
    return best, best_c


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("init", ["linear", "density", "tensor"])
def test_unit_weights_equal_unweighted_exactly(seed, init):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(300, generator=g), 4 + torch.randn(40, generator=g), torch.zeros(5)])
    start = init_centroids(x, 9, "kmeans++", seed=seed) if init == "tensor" else init
    plain = kmeans_1d(x, 9, init=start)
    weighted = kmeans_1d(x, 9, init=start, weights=torch.ones_like(x))
    assert torch.equal(plain.centroids, weighted.centroids)
    assert torch.equal(plain.labels, weighted.labels)
    assert plain.inertia == weighted.inertia and plain.n_iter == weighted.n_iter
    if init != "tensor":
        assert torch.equal(init_centroids(x, 9, init), init_centroids(x, 9, init, weights=torch.ones_like(x)))


@pytest.mark.parametrize("seed", range(5))
def test_weighted_matches_brute_force_and_sklearn_from_same_init(seed):
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(120, generator=g), 2.5 + 0.4 * torch.randn(60, generator=g)])
    w = torch.rand(x.numel(), generator=g) ** 3  # heavy spread of importances, like a Fisher diagonal
    c0 = init_centroids(x, 6, "kmeans++", seed=seed, weights=w)
    res = kmeans_1d(x, 6, init=c0, weights=w)
    ref_c, ref_labels, ref_inertia = brute_force_weighted_lloyd(x, w, c0)
    assert res.converged
    assert res.inertia == pytest.approx(ref_inertia, rel=1e-9)
    torch.testing.assert_close(res.centroids[res.labels].double(), ref_c[ref_labels].float().double())
    km = KMeans(6, init=c0.numpy()[:, None], n_init=1, max_iter=1000, tol=0.0, algorithm="lloyd")
    km.fit(x.double().numpy()[:, None], sample_weight=w.double().numpy())
    assert res.inertia == pytest.approx(float(km.inertia_), rel=1e-9)
    torch.testing.assert_close(res.centroids.double(), torch.from_numpy(km.cluster_centers_[:, 0]).sort()[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_weighted_never_below_exhaustive_optimum_and_optimum_is_fixed(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(9, generator=g)
    w = torch.rand(9, generator=g) + 0.05
    for k in (2, 3):
        opt, opt_c = optimal_weighted(x, w, k)
        found = [kmeans_1d(x, k, init=i, seed=s, weights=w).inertia for i in INITS for s in range(3)]
        assert min(found) >= opt - 1e-12
        assert min(found) == pytest.approx(opt, rel=1e-9)  # tiny input: some start finds the optimum
        at_opt = kmeans_1d(x, k, init=opt_c, weights=w)
        assert at_opt.inertia == pytest.approx(opt, rel=1e-9, abs=1e-15)
        torch.testing.assert_close(at_opt.centroids.double(), opt_c.float().double())


def test_heavy_weight_pulls_its_centroid():
    x = torch.tensor([0.0, 1.0, 10.0, 11.0])
    plain = kmeans_1d(x, 2, weights=None)
    heavy = kmeans_1d(x, 2, weights=torch.tensor([1.0, 9.0, 1.0, 1.0]))
    assert plain.centroids.tolist() == [0.5, 10.5]
    assert torch.equal(heavy.centroids, torch.tensor([0.9, 10.5]))
    assert heavy.inertia == pytest.approx(0.81 * 1 + 0.01 * 9 + 0.25 * 2)


@pytest.mark.parametrize("init", INITS)
def test_zero_weight_points_pull_on_nothing(init):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=g)
    w = torch.rand(400, generator=g)
    w[::3] = 0
    res = kmeans_1d(x, 5, init=init, weights=w, max_iter=10_000)
    sub = kmeans_1d(x[w > 0], 5, init=init, weights=w[w > 0], max_iter=10_000)
    if init in ("linear", "density"):  # same start over the positive-weight points: same clustering
        torch.testing.assert_close(res.centroids, sub.centroids)
        assert res.inertia == pytest.approx(sub.inertia, rel=1e-9)
    assert_lloyd_fixed_point_weighted(x, w, res, 5)
    # zero-weight points are labelled with their nearest centroid all the same
    d = (x.double()[:, None] - res.centroids.double()[None, :]).abs()
    assert torch.all(d[torch.arange(400), res.labels] <= d.min(1).values + 1e-6)


def test_zero_weight_values_are_not_kept_as_centroids():
    x = torch.tensor([0.0, 0.1, 5.0, 5.3, 100.0])
    res = kmeans_1d(x, 3, weights=torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]))
    assert torch.equal(res.centroids, torch.tensor([0.05, 5.0, 5.3]))  # 100 has no weight: no centroid
    assert res.labels.tolist() == [0, 0, 1, 2, 2] and res.inertia == pytest.approx(0.005, rel=1e-5)


def test_all_zero_weights_fall_back_to_unit_weights_and_bad_weights_are_errors():
    x = torch.randn(50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(kmeans_1d(x, 4, weights=torch.zeros(50)).centroids, kmeans_1d(x, 4).centroids)
    with pytest.raises(ValueError, match="weights"):
        kmeans_1d(x, 4, weights=-torch.ones(50))
    with pytest.raises(ValueError, match="weights"):
        kmeans_1d(x, 4, weights=torch.full((50,), float("nan")))
    with pytest.raises(ValueError, match="weights"):
        kmeans_1d(x, 4, weights=torch.ones(49))


def test_scaling_all_weights_changes_nothing_but_inertia():
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(500, generator=g), torch.rand(500, generator=g)
    a, b = kmeans_1d(x, 8, weights=w), kmeans_1d(x, 8, weights=w * 1e-6)
    torch.testing.assert_close(a.centroids, b.centroids)
    assert torch.equal(a.labels, b.labels) and b.inertia == pytest.approx(a.inertia * 1e-6, rel=1e-6)


def test_sort_pairs_keeps_each_weight_with_its_value():
    from lightning_compress.core.kmeans_init import sort_pairs

    x = torch.tensor([3.0, -0.0, 0.0, -2.5, 1.4013e-45, -1.4013e-45, float("inf"), -float("inf"), 7.0])
    w = torch.arange(9, dtype=torch.float32) * 0.5
    for weights in (w, w.double()):  # float32 weights ride in the sort key; others are gathered by position
        xs, ws = sort_pairs(x, weights)
        assert torch.equal(xs, torch.sort(x)[0]) and ws.dtype == weights.dtype
        assert sorted(zip(xs.tolist(), ws.tolist())) == sorted(zip(x.tolist(), weights.tolist()))


def test_sort_pairs_across_chunks_matches_an_argsort():
    """Past one packing chunk (2^18 values) and through the in-place compaction of the sorted weights."""
    from lightning_compress.core.kmeans_init import sort_pairs

    g = torch.Generator().manual_seed(12)
    x = torch.randn(2 * 2**18 + 3, generator=g).round(decimals=2)  # many ties
    w = torch.rand(x.numel(), generator=g)
    xs, ws = sort_pairs(x, w)
    order = torch.sort(x, stable=True)[1]
    assert torch.equal(xs, x[order])
    for value in (-1.0, 0.0, 0.37):  # a tie group's weights are the same multiset
        assert torch.equal(torch.sort(ws[xs == value])[0], torch.sort(w[x == value])[0])
    assert torch.equal(torch.sort(ws)[0], torch.sort(w)[0])


def assert_lloyd_fixed_point_weighted(x: torch.Tensor, w: torch.Tensor, res, k: int) -> None:
    c = res.centroids.double()
    assert res.converged and c.numel() <= k and torch.all(c[1:] > c[:-1])
    x64, w64 = x.double(), w.double()
    d = (x64[:, None] - c[None, :]).abs()
    slack = 1e-9 + 1e-6 * c.abs().max()
    assert torch.all(d[torch.arange(x.numel()), res.labels] <= d.min(1).values + slack)
    for j in range(c.numel()):
        members = res.labels == j
        assert float(w64[members].sum()) > 0  # no cluster without weight survives
        mean = float((w64[members] * x64[members]).sum() / w64[members].sum())
        assert float(c[j]) == pytest.approx(mean, rel=1e-6, abs=1e-6)


@settings(deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-100, 100, allow_nan=False, width=32), st.sampled_from([0.0, 1e-30, 0.5, 1.0, 3.0, 1e6])),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 10),
    st.sampled_from(INITS),
)
def test_weighted_converged_result_is_a_weighted_lloyd_fixed_point(pairs, k, init):
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
    w = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
    res = kmeans_1d(x, k, init=init, max_iter=10_000, weights=w)
    if not bool((w > 0).any()):
        w = torch.ones_like(w)
    assert_lloyd_fixed_point_weighted(x, w, res, k)


def test_float32_midpoints_rounded_down_decide_exactly_like_float64():
    from lightning_compress.core.kmeans_init import midpoints

    g = torch.Generator().manual_seed(0)
    c = torch.sort(torch.randn(200, generator=g, dtype=torch.float64))[0]
    mid64 = (c[:-1] + c[1:]) * 0.5
    mid32 = midpoints(c, torch.float32)
    # float32 neighbours of every midpoint: the values where rounding could flip a decision
    near = mid64.float()
    v = torch.cat([near, torch.nextafter(near, torch.tensor(-1e9)), torch.nextafter(near, torch.tensor(1e9))])
    assert torch.equal(v[:, None].double() <= mid64[None, :], v[:, None] <= mid32[None, :])
    x = torch.cat([v, torch.randn(1000, generator=g)])
    res = kmeans_1d(x, 7, max_iter=0)  # labels only: nearest of the initial centroids
    d = (x.double()[:, None] - res.centroids.double()[None, :]).abs()
    assert torch.equal(res.labels, d.argmin(1))
