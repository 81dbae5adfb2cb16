"""core/lowrank: SVD and Tucker-2 math, rank rules, plans (pure torch, no Trainer)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_compress.core import lowrank as lr
from lightning_compress.core.targets import find_targets


def _seeded_linear(m=12, n=20, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n, m, bias=bias).double()


@pytest.mark.parametrize("rank", [1, 3, 7, 12])
def test_svd_reconstruction_error_equals_discarded_energy(rank):
    lin = _seeded_linear()
    w = lin.weight.detach()
    s = torch.linalg.svdvals(w)
    fac = lr.factorize_linear(lin, rank)
    err = (w - fac.dense_weight().detach()).pow(2).sum()
    torch.testing.assert_close(err, s[rank:].pow(2).sum(), atol=1e-10, rtol=1e-8)
    # the singular values are split as sqrt: both factors carry the same per-component norm
    torch.testing.assert_close(fac.first.weight.norm(dim=1), fac.second.weight.norm(dim=0))
    assert fac.second.bias is not None and fac.first.bias is None
    assert lr.kept_energy(s, rank) == pytest.approx(1 - float(err / w.pow(2).sum()), abs=1e-9)


def test_full_rank_linear_reproduces_outputs():
    lin = nn.Linear(20, 12)
    fac = lr.factorize_linear(lin, 12)
    x = torch.randn(5, 3, 20)
    torch.testing.assert_close(fac(x), lin(x), atol=1e-5, rtol=1e-5)
    assert [n for n, _ in fac.named_parameters()] == ["first.weight", "second.weight", "second.bias"]


def test_energy_rank_rule():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert lr.energy_rank(s, 16 / 22) == 1
    assert lr.energy_rank(s, 16 / 22 + 1e-6) == 2
    assert lr.energy_rank(s, 20 / 22) == 2
    assert lr.energy_rank(s, 0.95) == 3
    assert lr.energy_rank(s, 1.0) == 4
    assert lr.energy_rank(torch.tensor([3.0, 0.0, 0.0]), 1.0) == 1  # rank-1 matrix: nothing more to keep


def test_ratio_rank_linear_is_largest_within_budget():
    m, n = 300, 784
    for ratio in (0.05, 0.1, 0.25, 0.5):
        d = lr.ratio_rank_linear(m, n, ratio)
        assert lr.linear_params(m, n, d) <= ratio * m * n < lr.linear_params(m, n, d + 1)


def test_ratio_ranks_tucker2_within_budget():
    c_out, c_in, k = 50, 20, 25
    for ratio in (0.1, 0.3, 0.6):
        r = lr.ratio_ranks_tucker2(c_out, c_in, k, ratio)
        assert lr.tucker2_params(c_out, c_in, k, r) <= ratio * c_out * c_in * k
        assert r[0] >= 1 and r[1] >= 1


def test_plan_layer_rules_and_no_saving():
    torch.manual_seed(0)
    lin = nn.Linear(100, 300)
    p = lr.plan_layer("fc", lin, lr.RankRule("rank", 10))
    assert p.ranks == (10,) and p.applied and p.params_after == 10 * 400 and p.params_before == 30000
    p = lr.plan_layer("fc", lin, lr.RankRule("ratio", 0.2))
    assert p.params_after <= 0.2 * 30000 and p.applied
    p = lr.plan_layer("fc", lin, lr.RankRule("energy", 1.0))  # full rank 100: 100*400 > 30000 -> left alone
    assert p.ranks == (100,) and not p.applied and "no parameter saving" in p.reason
    s = torch.linalg.svdvals(lin.weight.detach().double())
    p = lr.plan_layer("fc", lin, lr.RankRule("energy", 0.5))
    assert p.ranks == (lr.energy_rank(s, 0.5),) and p.energy >= 0.5
    assert lr.kept_energy(s, p.ranks[0] - 1) < 0.5


def test_rank_rule_validation():
    for kind, value in [("energy", 0.0), ("energy", 1.5), ("rank", 0), ("rank", 2.5), ("ratio", 1.0), ("ratio", 0)]:
        with pytest.raises(ValueError):
            lr.RankRule(kind, value)
    with pytest.raises(ValueError, match="unknown rank rule"):
        lr.RankRule("bogus", 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=5, stride=2, padding=2, dilation=1),
        dict(kernel_size=(3, 5), stride=(2, 1), padding=(2, 1), dilation=2),
        dict(kernel_size=3, padding=1, padding_mode="reflect", bias=False),
        dict(kernel_size=3, padding=1, padding_mode="circular"),
    ],
)
def test_tucker2_full_rank_reproduces_conv_outputs(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, **kwargs).double()
    fac = lr.factorize_conv2d(conv, (6, 8))
    x = torch.randn(2, 6, 11, 13, dtype=torch.double)
    torch.testing.assert_close(fac(x), conv(x), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(fac.dense_weight(), conv.weight.detach())


def test_tucker2_error_equals_discarded_core_energy_and_hooi_does_not_hurt():
    torch.manual_seed(1)
    w = torch.randn(16, 12, 3, 3, dtype=torch.double)
    norm2 = float(w.pow(2).sum())
    errs = []
    for iters in (0, 5):
        u_in, core, u_out, energy = lr.tucker2_factors(w, (5, 6), iters)
        assert core.shape == (6, 5, 3, 3)
        torch.testing.assert_close(u_in.T @ u_in, torch.eye(5, dtype=torch.double))
        w_hat = torch.einsum("or,rskl,si->oikl", u_out, core, u_in.T)
        err = float((w - w_hat).pow(2).sum())
        assert err == pytest.approx(norm2 * (1 - energy), rel=1e-9)
        errs.append(err)
    assert errs[1] <= errs[0] + 1e-9


def test_tucker2_energy_rule_per_mode():
    torch.manual_seed(2)
    # low multilinear rank kernel: 3 input-channel directions, 4 output-channel directions
    core = torch.randn(4, 3, 3, 3)
    w = torch.einsum("or,rskl,is->oikl", torch.randn(10, 4), core, torch.randn(8, 3))
    conv = nn.Conv2d(8, 10, 3)
    with torch.no_grad():
        conv.weight.copy_(w)
    p = lr.plan_layer("c", conv, lr.RankRule("energy", 0.999999))
    assert p.kind == "tucker2" and p.ranks == (3, 4) and p.applied
    assert p.energy == pytest.approx(1.0, abs=1e-6)


def test_grouped_conv_is_skipped():
    p = lr.plan_layer("g", nn.Conv2d(8, 8, 3, groups=2), lr.RankRule("rank", 2))
    assert not p.applied and "groups=2" in p.reason


def test_compressed_layer_detection():
    w = torch.randn(40, 40)
    assert lr.layer_looks_compressed(w) == ""
    pruned = w.clone()
    pruned[:, :10] = 0
    assert "pruned" in lr.layer_looks_compressed(pruned)
    shared = torch.tensor([-0.5, -0.1, 0.2, 0.7])[torch.randint(0, 4, (40, 40))]
    assert "shared" in lr.layer_looks_compressed(shared)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 16, 3))
        self.head = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def test_plan_apply_infer_roundtrip_and_factors_are_targets():
    torch.manual_seed(0)
    net = _Net()
    plan = [
        lr.plan_layer("features.2", net.features[2], lr.RankRule("rank", (4, 5))),
        lr.plan_layer("head", net.head, lr.RankRule("rank", 3)),
    ]
    for rec in plan:
        lr.replace_module(net, rec.name, lr.factorize_module(net.get_submodule(rec.name), rec))
    sd = net.state_dict()
    assert {"features.2.first.weight", "features.2.core.weight", "features.2.last.bias", "head.first.weight"} <= set(sd)

    plain = _Net()
    inferred = lr.infer_factorization_plan(sd, plain)
    assert [(r.name, r.kind, r.ranks) for r in inferred] == [("features.2", "tucker2", (4, 5)), ("head", "svd", (3,))]
    lr.apply_factorization_plan(plain, [r.as_dict() for r in plan])
    plain.load_state_dict(sd)  # strict
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(plain(x), net(x))
    lr.apply_factorization_plan(plain, plan)  # idempotent
    with pytest.raises(ValueError, match="already factorized"):
        lr.apply_factorization_plan(plain, [lr.FactorizedLayer("head", "svd", (2,), 1.0, 1, 1)])

    # pruning/sharing can select the factors: they are ordinary Linear/Conv2d
    names = [t.name for t in find_targets(net)]
    assert "head.first.weight" in names and "features.2.core.weight" in names
    assert lr.inside_factorized(net, "head.first") and not lr.inside_factorized(net, "features.0")


def test_macs():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    rec = lr.plan_layer("c", conv, lr.RankRule("rank", (2, 3)))
    assert lr.dense_macs(conv, (4, 8, 8), (6, 4, 4)) == 16 * 6 * 4 * 9
    assert lr.factorized_macs(rec, conv, (4, 8, 8), (6, 4, 4)) == 64 * 4 * 2 + 16 * (2 * 3 * 9 + 3 * 6)
    lin = nn.Linear(10, 7)
    rec = lr.plan_layer("l", lin, lr.RankRule("rank", 2))
    assert lr.dense_macs(lin, (10,), (7,)) == 70 and lr.factorized_macs(rec, lin, (10,), (7,)) == 34
    assert "total" in lr.plan_table([rec])
    assert math.isfinite(rec.energy)
