"""core/distributed.py under a real 2-process gloo group (DTensor on a CPU DeviceMesh, FSDP2 parameters).

One spawned group runs every check (start-up dominates the cost) and returns what each rank saw; the tests
assert on it. Shapes cover uneven splits (33 rows: 17 + 16), a rank with no rows (1 row on 2 ranks), 1-D and
3-D tensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_helpers as FH  # noqa: E402

from lightning_compress.core import distributed as D  # noqa: E402

SHAPES = [(33, 16), (4, 33), (1, 5), (3,), (2, 3, 3), (0, 4)]


def _full(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def _checks(rank: int, world: int) -> dict:
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = FH.cpu_mesh(world)
    out: dict = {"tensors": {}}
    for shape in SHAPES:
        full = _full(shape)
        dt = distribute_tensor(full, mesh, [Shard(0)])
        mask = full > 0
        local = dt.to_local()
        out["tensors"][shape] = {
            "is_sharded": D.is_sharded(dt),
            "local": local.clone(),
            "slices": D.local_slices(dt),
            "shard_like": D.shard_like(full, dt),
            "mask_shard": D.shard_like(mask, dt),
            "full_tensor": D.full_tensor(dt),
            "full_like_mask": D.full_like(mask[D.local_slices(dt)], dt),
            "full_like_int": D.full_like(torch.arange(full.numel()).view(shape)[D.local_slices(dt)], dt),
            "count": D.shard_count(int((local > 0).sum()), dt),
            "prefix": D.shard_prefix(local.numel(), dt),
            "flat_range": D.flat_range(dt),
            "sum": D.shard_sum(local.abs().sum().reshape(1).clone(), dt),
        }
    # a real FSDP2 parameter: the part torch gives this rank is the one shard_like cuts
    torch.manual_seed(0)
    layer = nn.Linear(16, 33)
    before = layer.weight.detach().clone()
    fully_shard(layer, mesh=mesh)
    p = layer.weight
    out["fsdp"] = {
        "is_sharded": D.is_sharded(p),
        "matches": torch.equal(D.shard_like(before, p), p.to_local()),
        "full": torch.equal(D.full_tensor(p), before),
    }
    with torch.no_grad():  # in-place edits of local_tensor reach the parameter
        D.local_tensor(p).masked_fill_(D.shard_like(before < 0, p), 0)
    out["fsdp"]["inplace"] = torch.equal(D.full_tensor(p), before.masked_fill(before < 0, 0))
    out["whole"] = _whole_checks(mesh)
    plain = torch.ones(3)  # ordinary tensors are whole on every rank: nothing is summed or cut
    out["plain"] = {"sum": D.shard_sum(plain.clone(), plain), "prefix": D.shard_prefix(5, plain),
                    "count": D.shard_count(5, plain), "sharded": D.is_sharded(plain)}
    flag = torch.tensor([rank == 0, rank == 1])
    out["broadcast_bool"] = D.broadcast_(flag.clone(), src=1)
    out["broadcast_float"] = D.broadcast_(torch.full((2,), float(rank)), src=0)
    out["all_reduce"] = D.all_reduce_sum(torch.tensor([rank + 1.0]))
    return out


def _whole_checks(mesh) -> dict:
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    from lightning_compress.core.masks import magnitude_mask

    full = _full((33, 16), seed=1)
    old = _full((33, 16), seed=2) > -1  # an earlier mask: about 16% already pruned
    dt = distribute_tensor(full, mesh, [Shard(0)])
    mask = D.on_whole(lambda w, m: magnitude_mask(w, 0.5, m), dt, D.shard_like(old, dt))
    parts = D.Parts(dt)
    two = D.Parts([dt, distribute_tensor(_full((5, 3)), mesh, [Shard(0)])])
    try:
        D.Parts([dt, full])
        mixed = "accepted"
    except ValueError as err:
        mixed = str(err)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3))
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    gathered = D.GatheredStateDict(model.state_dict())
    streamed = {k: v.clone() for k, v in gathered.items()}  # each value dropped before the next is read
    held = D.GatheredStateDict(model.state_dict())
    kept = list(held.values())
    return {"mask": mask, "expected": D.shard_like(magnitude_mask(full, 0.5, old), dt),
            "count": parts.count(int(mask.sum())), "sum": parts.sum(mask.sum().reshape(1)),
            "before": parts.before(mask.numel()), "before2": two.before(3 * D.local_tensor(two.likes[1]).shape[0], 1),
            "mixed": mixed, "streamed_equal": streamed.keys() == reference.keys()
            and all(torch.equal(streamed[k], reference[k]) for k in reference),
            "peak_streamed": gathered.peak_live, "peak_held": held.peak_live, "held": len(kept)}


@pytest.fixture(scope="module")
def ranks():
    return FH.spawned_checks("test_fsdp_distributed")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parts_are_dtensor_parts_and_gather_back(ranks, shape):
    full, mask = _full(shape), _full(shape) > 0
    parts = [r["tensors"][shape] for r in ranks]
    for part in parts:
        assert torch.equal(part["shard_like"], part["local"])  # cut exactly as DTensor/FSDP2 cuts dim 0
        assert part["mask_shard"].dtype == torch.bool and part["mask_shard"].shape == part["local"].shape
        assert torch.equal(part["full_tensor"], full)
        assert torch.equal(part["full_like_mask"], mask) and part["full_like_mask"].dtype == torch.bool
        assert torch.equal(part["full_like_int"], torch.arange(full.numel()).view(shape))
        assert part["count"] == int((full > 0).sum())
        assert torch.allclose(part["sum"], full.abs().sum().reshape(1))
    rows = [p["local"].shape[0] for p in parts]
    assert sum(rows) == shape[0] and rows == [len(t) for t in torch.chunk(torch.empty(shape[0]), 2)] + [0] * (
        2 - len(torch.chunk(torch.empty(shape[0]), 2)))
    # ranks' flat ranges tile the tensor in order, and the prefix is the count before each part
    assert [p["flat_range"][0] for p in parts] == [p["prefix"] for p in parts]
    assert parts[0]["flat_range"][0] == 0 and parts[-1]["flat_range"][1] == full.numel()
    assert parts[0]["flat_range"][1] == parts[1]["flat_range"][0]


def test_uneven_and_empty_parts_are_covered(ranks):
    assert [r["tensors"][(33, 16)]["local"].shape[0] for r in ranks] == [17, 16]
    assert [r["tensors"][(1, 5)]["local"].shape[0] for r in ranks] == [1, 0]
    assert all(r["tensors"][(33, 16)]["is_sharded"] for r in ranks)


def test_fsdp2_parameters(ranks):
    for r in ranks:
        assert r["fsdp"] == {"is_sharded": True, "matches": True, "full": True, "inplace": True}


def test_plain_tensors_and_collectives(ranks):
    for r in ranks:
        assert torch.equal(r["plain"]["sum"], torch.ones(3))  # not summed: each rank holds all of it
        assert (r["plain"]["prefix"], r["plain"]["count"], r["plain"]["sharded"]) == (0, 5, False)
        assert torch.equal(r["broadcast_bool"], torch.tensor([False, True]))
        assert torch.equal(r["broadcast_float"], torch.zeros(2))
        assert torch.equal(r["all_reduce"], torch.tensor([3.0]))


def test_whole_layer_rules_and_sums_over_parts(ranks):
    full, old = _full((33, 16), seed=1), _full((33, 16), seed=2) > -1
    from lightning_compress.core.masks import magnitude_mask

    want = magnitude_mask(full, 0.5, old)
    for rank, r in enumerate(ranks):
        w = r["whole"]
        assert torch.equal(w["mask"], w["expected"])  # each rank's part of the one-process mask
        assert w["count"] == int(want.sum()) and int(w["sum"]) == int(want.sum())
        assert w["before"] == (0 if rank == 0 else 17 * 16)
        assert w["before2"] == (0 if rank == 0 else 9)  # 5 rows of 3: 3 + 2 rows
        assert "shard all of them" in w["mixed"]


def test_gathered_state_dict_holds_one_layer_at_a_time(ranks):
    for r in ranks:
        w = r["whole"]
        assert w["streamed_equal"]
        # a for-loop reader: the tensor of the last iteration is still bound while the next is gathered
        assert w["peak_streamed"] == 2
        assert w["peak_held"] == w["held"] == 4  # and the count notices a reader that keeps them all


def test_single_process_is_a_no_op():
    t = torch.randn(5, 3, requires_grad=True)
    assert not D.is_distributed() and not D.is_sharded(t) and not D.is_dtensor(t)
    assert torch.equal(D.local_tensor(t), t) and not D.local_tensor(t).requires_grad
    assert torch.equal(D.full_tensor(t), t)
    assert D.shard_like(t, t) is t and D.full_like(t, t) is t
    assert D.local_slices(t) == (slice(0, 5), slice(0, 3)) and D.flat_range(t) == (0, 15)
    x = torch.ones(2)
    assert D.all_reduce_sum(x) is x and torch.equal(x, torch.ones(2)) and D.broadcast_(x) is x
    assert torch.equal(D.on_whole(lambda w: w > 0, t), t > 0)
    parts = D.Parts([t, t])
    assert parts.count(7) == 7 and parts.before(7, 1) == 0 and parts.sum(x) is x and not parts.sharded
    assert dict(D.GatheredStateDict({"a": t})) == {"a": t}
    with pytest.raises(ValueError, match="full tensor shaped"):
        D.shard_like(torch.zeros(4, 3), t)
