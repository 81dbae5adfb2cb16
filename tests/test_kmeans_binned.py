"""Weighted k-means over value bins (core/kmeans_binned): the same Lloyd fixed points as the sorted path, no
paired sort. ``MIN_POINTS`` is lowered so that small problems take the binned path."""

from __future__ import annotations

import pytest
import torch

from lightning_compress.core import kmeans as kmeans_module
from lightning_compress.core import kmeans_binned
from lightning_compress.core.kmeans import kmeans_1d
from lightning_compress.core.kmeans_optimal import optimal_kmeans_rows


@pytest.fixture
def binned(monkeypatch):
    """Small problems take the binned path; returns a list that records whether each call used it."""
    monkeypatch.setattr(kmeans_binned, "MIN_POINTS", 1000)
    used: list[bool] = []
    solve = kmeans_binned.weighted_lloyd

    def spy(*args, **kwargs):
        found = solve(*args, **kwargs)
        used.append(found is not None)
        return found

    monkeypatch.setattr(kmeans_module, "weighted_lloyd", spy)
    return used


def _sorted_path(monkeypatch, *args, **kwargs):
    monkeypatch.setattr(kmeans_binned, "MIN_POINTS", 1 << 62)
    return kmeans_1d(*args, **kwargs)


def _assert_weighted_fixed_point(x: torch.Tensor, w: torch.Tensor, res, k: int) -> None:
    """Every value at its nearest centroid, every centroid the weighted mean of its values, inertia exact."""
    c, x64, w64 = res.centroids.double(), x.double(), w.double()
    assert res.converged and 1 <= c.numel() <= k and bool(torch.all(c[1:] > c[:-1]))
    d = (x64[:, None] - c[None, :]).abs()
    assert bool(torch.all(d[torch.arange(x.numel()), res.labels] <= d.min(1).values + 1e-9 + 1e-6 * c.abs().max()))
    for j in range(c.numel()):
        members = res.labels == j
        total = float(w64[members].sum())
        assert total > 0
        mean = float((w64[members] * x64[members]).sum()) / total
        assert c[j].item() == pytest.approx(mean, rel=1e-6, abs=1e-12)
    inertia = float((w64 * (x64 - c[res.labels]) ** 2).sum())
    assert res.inertia == pytest.approx(inertia, rel=1e-6, abs=1e-12)


def _data(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(n, generator=g) * 0.02
    if kind == "heavy":  # a ratio of normals: Cauchy-like tails
        return torch.randn(n, generator=g) / torch.randn(n, generator=g).abs().add(1e-3)
    if kind == "tiny":  # subnormal-adjacent scale
        return torch.randn(n, generator=g) * 1e-30
    return torch.cat([torch.randn(n // 2, generator=g) - 5, torch.randn(n - n // 2, generator=g) + 5])  # two modes


@pytest.mark.parametrize("kind", ["normal", "heavy", "tiny", "modes"])
@pytest.mark.parametrize("init", ["linear", "optimal"])
def test_binned_lloyd_ends_at_a_weighted_fixed_point(binned, kind, init):
    g = torch.Generator().manual_seed(len(kind) * 10 + len(init))
    for trial in range(4):
        n = 3000 + 4000 * trial
        x = _data(kind, n, g)
        w = torch.rand(n, generator=g) ** 3
        if trial % 2:
            w[torch.rand(n, generator=g) < 0.5] = 0.0  # zero weights: counted nowhere, still labelled
            x[:7] = -0.0
        k = (4, 7, 16, 11)[trial]
        _assert_weighted_fixed_point(x, w, kmeans_1d(x, k, init=init, weights=w, max_iter=10_000), k)
    # from the optimal start no cluster empties; from the linear start on a heavy tail or two far modes some
    # centroids start where there is no weight, and such a problem is handed to the sorted path (which refills
    # empty clusters)
    assert all(binned) if init == "optimal" or kind in ("normal", "tiny") else any(binned)


def test_binned_optimal_start_stays_near_the_optimum_on_a_heavy_tail(binned, monkeypatch):
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(20000, generator=g) / torch.randn(20000, generator=g).abs().add(0.05)).double()
    w = torch.rand(20000, generator=g, dtype=torch.float64) ** 2
    exact, count = optimal_kmeans_rows(x[None], 16, w[None], exact_points=20000)
    c = exact[0, : int(count[0])]
    best = float((w * ((x[:, None] - c[None, :]) ** 2).min(1).values).sum())
    found = kmeans_1d(x.float(), 16, init="optimal", weights=w.float())
    assert binned == [True]
    # float32 values against the float64 optimum: compare with the sorted path on the same float32 data too
    assert found.inertia <= best * (1 + 1e-4)
    assert found.inertia <= _sorted_path(monkeypatch, x.float(), 16, init="optimal", weights=w.float()).inertia * (1 + 1e-6)


def test_binned_and_sorted_paths_agree_where_lloyd_has_one_answer(binned, monkeypatch):
    """Two well-separated groups per centroid: every Lloyd run from these starts ends at the same partition."""
    g = torch.Generator().manual_seed(5)
    centres = torch.tensor([-8.0, -3.0, 0.5, 4.0, 9.0])
    x = (centres[torch.randint(5, (6000,), generator=g)] + 0.1 * torch.randn(6000, generator=g)).float()
    w = torch.rand(6000, generator=g)
    for init in ("linear", "optimal"):
        fast = kmeans_1d(x, 5, init=init, weights=w)
        slow = _sorted_path(monkeypatch, x, 5, init=init, weights=w)
        monkeypatch.setattr(kmeans_binned, "MIN_POINTS", 1000)
        assert torch.equal(fast.labels, slow.labels)
        assert torch.allclose(fast.centroids, slow.centroids, rtol=1e-6, atol=0)
        assert fast.inertia == pytest.approx(slow.inertia, rel=1e-9)
    assert binned == [True, True]


def test_what_binning_does_not_cover_goes_to_the_sorted_path(binned, monkeypatch):
    g = torch.Generator().manual_seed(6)
    w = torch.rand(5000, generator=g)
    few = (torch.randint(3, (5000,), generator=g).float() - 1.0) * 0.5  # 3 distinct values < k
    with_inf = torch.randn(5000, generator=g)
    with_inf[3] = float("inf")
    for x in (few, with_inf):
        fast = kmeans_1d(x, 4, init="linear", weights=w)
        slow = _sorted_path(monkeypatch, x, 4, init="linear", weights=w)
        monkeypatch.setattr(kmeans_binned, "MIN_POINTS", 1000)
        assert torch.equal(fast.centroids, slow.centroids) and torch.equal(fast.labels, slow.labels)
    assert binned == [False, False]
    # other starts, float64 data, and unweighted problems never enter it
    x = torch.randn(5000, generator=g)
    kmeans_1d(x, 4, init="density", weights=w)
    kmeans_1d(x.double(), 4, init="linear", weights=w)
    kmeans_1d(x, 4, init="linear")
    kmeans_1d(x, 4, init=torch.tensor([-1.0, 0.0, 1.0, 2.0]), weights=w)
    assert binned == [False, False]


def test_half_precision_weights_are_accepted(binned):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6000, generator=g)
    w = torch.rand(6000, generator=g)
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        res = kmeans_1d(x, 8, init="optimal", weights=w.to(dtype))
        _assert_weighted_fixed_point(x, w.to(dtype).float(), res, 8)
    assert binned == [True, True, True]


def test_iteration_limits_and_tolerance_are_kept(binned):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8000, generator=g)
    w = torch.rand(8000, generator=g)
    capped = kmeans_1d(x, 16, init="linear", weights=w, max_iter=2)
    assert capped.n_iter <= 2 and not capped.converged
    loose = kmeans_1d(x, 16, init="linear", weights=w, tol=1e-2)
    tight = kmeans_1d(x, 16, init="linear", weights=w, max_iter=10_000)
    assert loose.converged and loose.n_iter < tight.n_iter
    assert tight.inertia <= loose.inertia * (1 + 1e-9)


def test_large_weighted_tensors_take_the_binned_path_by_default(monkeypatch):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(kmeans_binned.MIN_POINTS, generator=g) * 0.02
    w = torch.rand(kmeans_binned.MIN_POINTS, generator=g)
    assert kmeans_binned.binned_applies(x, "optimal", 16) and not kmeans_binned.binned_applies(x[:-1], "optimal", 16)
    answered: list[bool] = []
    solve = kmeans_binned.weighted_lloyd
    monkeypatch.setattr(kmeans_module, "weighted_lloyd", lambda *a: answered.append(solve(*a) is not None) or solve(*a))
    res = kmeans_1d(x, 16, init="optimal", weights=w, tol=1e-4)
    assert answered == [True]  # solved over bins, not handed back to the sorted path
    assert res.converged and res.centroids.numel() == 16 and res.labels.shape == x.shape
    centroids = res.centroids.double()
    assert res.inertia == pytest.approx(float((w.double() * (x.double() - centroids[res.labels]) ** 2).sum()), rel=1e-6)
