"""Grouped codebooks (core/sharing): per tensor, per output channel, per group of rows; all vectorised."""

from __future__ import annotations

import pytest
import torch

from lightning_compress.core.sharing import (
    SharedWeight,
    cluster_weight,
    codebook_size,
    decode,
    rows_per_group,
    sharing_rate,
)


def _weight(rows=10, cols=12, seed=0, pruned=0.3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.linspace(0.1, 3.0, rows)[:, None]  # rows of different scale
    w[torch.rand(rows, cols, generator=g) < pruned] = 0.0
    return w


def _distinct_per_row_group(w, rpg):
    return [torch.unique(w[i : i + rpg][w[i : i + rpg] != 0]).numel() for i in range(0, w.shape[0], rpg)]


def test_codebook_size_rule():
    assert codebook_size(4, has_pruned=False) == 16
    assert codebook_size(4, has_pruned=True) == 15
    assert codebook_size(8, has_pruned=True) == 255
    with pytest.raises(ValueError, match="bits"):
        codebook_size(0, False)


def test_rows_per_group():
    assert rows_per_group((10, 12), "tensor") == 10
    assert rows_per_group((10, 12), "channel") == 1
    assert rows_per_group((10, 12), 3) == 3
    assert rows_per_group((10, 12), 64) == 10
    with pytest.raises(ValueError, match="granularity"):
        rows_per_group((10, 12), "row")


@pytest.mark.parametrize("granularity,rpg,groups", [("tensor", 10, 1), ("channel", 1, 10), (3, 3, 4), (4, 4, 3)])
def test_cluster_weight_groups_hold_at_most_k_values_and_keep_zeros(granularity, rpg, groups):
    w = _weight()
    shared = cluster_weight(w, 3, granularity=granularity)
    assert shared.centroids.shape == (groups, 3) and shared.rows_per_group == (rpg if groups > 1 else 10)
    assert shared.assignment.dtype == torch.uint8 and shared.assignment.shape == w.shape
    assert torch.equal(shared.assignment == 3, w == 0)  # pruned positions carry code k
    decoded = shared.decode()
    assert torch.equal(decoded == 0, w == 0)
    counts = _distinct_per_row_group(decoded, rpg)
    assert max(counts) == 3 and len(counts) == groups
    # each group's centroids are the means of its members (a k-means fixed point per group)
    for g in range(groups):
        block, codes = w[g * rpg : (g + 1) * rpg], shared.assignment[g * rpg : (g + 1) * rpg].long()
        for j in range(3):
            members = block[codes == j]
            if members.numel():
                assert float(shared.centroids[g, j]) == pytest.approx(float(members.double().mean()), abs=1e-6)


def test_finer_groups_lower_the_error():
    w = _weight(pruned=0.0)
    err = {g: float(((cluster_weight(w, 4, granularity=g).decode() - w) ** 2).sum()) for g in ("tensor", 5, "channel")}
    assert err["channel"] < err[5] < err["tensor"]


def test_group_with_fewer_distinct_values_pads_its_codebook():
    w = torch.tensor([[1.0, 1.0, 2.0, 0.0], [3.0, 4.0, 5.0, 6.0]])
    shared = cluster_weight(w, 4, granularity="channel")
    assert shared.k == 4 and shared.centroids[0].tolist() == [1.0, 2.0, 2.0, 2.0]
    assert shared.used_codes().tolist() == [2, 4]
    assert torch.equal(shared.decode(), w)


def test_old_one_dimensional_codebook_still_reads():
    assignment = torch.tensor([[0, 1, 2], [1, 1, 2]], dtype=torch.uint8)
    shared = SharedWeight(torch.tensor([0.5, 1.5]), assignment)
    assert shared.centroids.shape == (1, 2) and shared.groups == 1
    assert shared.decode().tolist() == [[0.5, 1.5, 0.0], [1.5, 1.5, 0.0]]
    assert decode(torch.tensor([0.5, 1.5]), assignment).tolist() == [[0.5, 1.5, 0.0], [1.5, 1.5, 0.0]]


def test_centroid_gradient_per_group_equals_a_loop_over_groups():
    w = _weight()
    shared = cluster_weight(w, 4, granularity=3)
    grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
    g = shared.centroid_gradient(grad)
    gm = shared.centroid_gradient(grad, "mean")
    for grp in range(shared.groups):
        block, codes = grad[grp * 3 : (grp + 1) * 3], shared.assignment[grp * 3 : (grp + 1) * 3].long()
        for j in range(shared.k):
            members = block[codes == j]
            assert float(g[grp, j]) == pytest.approx(float(members.sum()), abs=1e-5)
            if members.numel():
                assert float(gm[grp, j]) == pytest.approx(float(members.mean()), abs=1e-5)
    shared_grad = grad.clone()
    shared.share_gradient(shared_grad)
    assert torch.equal(shared_grad, shared.decode(g)) and torch.all(shared_grad[w == 0] == 0)


def test_projection_mean_and_representative():
    w = _weight()
    shared = cluster_weight(w, 4, granularity="channel")
    moved = shared.decode() + 0.01 * (shared.decode() != 0)  # every member moved identically
    assert torch.allclose(shared.recenter(moved, "representative"), shared.recenter(moved, "mean"), atol=1e-6)
    noisy = shared.decode() + torch.randn(w.shape) * (w != 0)
    shared.project(noisy)
    assert torch.equal(noisy, shared.decode())
    assert max(_distinct_per_row_group(noisy, 1)) <= 4 and torch.all(noisy[w == 0] == 0)


def test_absorb_zeros_makes_new_zeros_pruned_positions():
    w = _weight(pruned=0.0)
    shared = cluster_weight(w, 4, granularity=5)
    before = shared.kept()
    w2 = shared.decode()
    w2[:, :2] = 0.0
    assert shared.absorb_zeros(w2) == 20 and shared.absorb_zeros(w2) == 0
    assert shared.kept() == before - 20 and torch.all(shared.assignment[:, :2] == shared.k)
    assert torch.equal(shared.decode(), w2)


def test_bit_accounting_counts_every_codebook():
    w = _weight(rows=8, cols=32, pruned=0.5)
    per_tensor = cluster_weight(w, 8)
    per_channel = cluster_weight(w, 8, granularity="channel")
    n = int((w != 0).sum())
    assert per_tensor.stored_bits() == n * 3 + 8 * 32
    assert per_channel.stored_bits() == n * 3 + 8 * 8 * 32
    assert per_tensor.state_bytes() == w.numel() + 8 * 4  # one byte per weight
    assert sharing_rate(n, 8, groups=8) == pytest.approx(n * 32 / (n * 3 + 8 * 8 * 32))


def test_importance_argument_is_checked():
    w = _weight()
    with pytest.raises(ValueError, match="importance"):
        cluster_weight(w, 4, importance=torch.ones(3))
