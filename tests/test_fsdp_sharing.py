"""Codebook operations on FSDP2 parts equal the whole-tensor ones (2 ranks, gloo).

``callbacks/_sharing_layers.local_part`` gives each rank its rows of the assignment and a ``Parts`` summing
per-cluster statistics over the ranks; grouped codebooks (4 rows per codebook) straddle the ranks' boundary
(33 rows: 17 + 16, so group 4 = rows 16-19 lies on both ranks). Every per-step operation - centroid gradient
(sum and mean), projection onto cluster means, averaging optimizer state, absorbing new zeros - must give each
rank its part of what one process computes on the whole tensor (sums in another order: float tolerance).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_helpers as FH  # noqa: E402

from lightning_compress.core import distributed as D  # noqa: E402
from lightning_compress.core.sharing import cluster_weight  # noqa: E402

SHAPE = (33, 16)
GRANULARITIES = ["tensor", "channel", 4]


def _data():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(SHAPE, generator=g)
    w[w.abs() < 0.2] = 0  # pruned positions
    grad, state = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    moved = w + 0.01 * torch.randn(SHAPE, generator=g)
    newly = (torch.rand(SHAPE, generator=g) < 0.05) & (w != 0)
    return w, grad, state, moved, newly


def _ops(shared, w, grad, state, moved, newly) -> dict:
    """The per-step operations, in the order a fit runs them; the tensors are edited in place."""
    out = {"sum": shared.centroid_gradient(grad, "sum"), "mean": shared.centroid_gradient(grad, "mean"),
           "kept": shared.kept(), "used": shared.used_codes()}
    shared.average_within_clusters(state)
    zeroed = moved.masked_fill(newly, 0)
    out["absorbed"] = shared.absorb_zeros(zeroed)
    shared.project(zeroed)  # cluster means, then W = C[assignment]
    out.update(state=state, weight=zeroed, centroids=shared.centroids.clone(), kept_after=shared.kept())
    out["gradient"] = shared.decode(out["sum"])
    return out


def _checks(rank: int, world: int) -> dict:
    from torch.distributed.tensor import Shard, distribute_tensor

    from lightning_compress.callbacks._sharing_layers import local_part

    mesh = FH.cpu_mesh(world)
    results = {}
    for granularity in GRANULARITIES:
        w, grad, state, moved, newly = _data()
        p = distribute_tensor(w, mesh, [Shard(0)])
        part = local_part(cluster_weight(w, 7, granularity=granularity), p)
        local = [D.shard_like(t, p).clone() for t in (w, grad, state, moved, newly)]
        out = _ops(part, *local)
        for key in ("state", "weight", "gradient"):
            out[key] = D.full_like(out[key], p)
        results[granularity] = out
    return results


@pytest.fixture(scope="module")
def ranks():
    return FH.spawned_checks("test_fsdp_sharing")


@pytest.mark.parametrize("granularity", GRANULARITIES, ids=str)
def test_operations_on_parts_equal_whole_tensor_operations(ranks, granularity):
    w, grad, state, moved, newly = _data()
    whole = _ops(cluster_weight(w, 7, granularity=granularity), w, grad, state, moved, newly)
    assert whole["absorbed"] > 0
    for r in ranks:
        got = r[granularity]
        assert (got["kept"], got["absorbed"], got["kept_after"]) == (whole["kept"], whole["absorbed"], whole["kept_after"])
        assert torch.equal(got["used"], whole["used"])
        for key in ("sum", "mean", "gradient"):
            assert torch.allclose(got[key], whole[key], atol=1e-5, rtol=1e-5), key
        for key in ("centroids", "weight", "state"):
            assert torch.allclose(got[key], whole[key], atol=1e-6, rtol=1e-6), key
        assert torch.equal(got["weight"] == 0, whole["weight"] == 0)  # the same pruned positions
    assert torch.equal(ranks[0][granularity]["centroids"], ranks[1][granularity]["centroids"])  # one codebook
