"""Post-training weight sharing: lightning_compress.share_weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_compress as lc
from lightning_compress.core.importance import fisher_diagonal
from lightning_compress.errors import CompressionConfigError


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))


def data(seed: int = 0, batches: int = 4):
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1, 1, 16)  # features of very different scales: very different sensitivities
    return [(torch.randn(32, 16, generator=g) * scale, torch.randint(0, 4, (32,), generator=g)) for _ in range(batches)]


def ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def distinct_nonzero_per_group(w: torch.Tensor, rows_per_group: int) -> list[int]:
    rows = w.reshape(w.shape[0], -1)
    out = []
    for g in range(math.ceil(rows.shape[0] / rows_per_group)):
        block = rows[g * rows_per_group : (g + 1) * rows_per_group]
        out.append(int(torch.unique(block[block != 0]).numel()))
    return out


@pytest.mark.parametrize("granularity,rpg", [("tensor", None), ("channel", 1), (8, 8), (5, 5)])
@pytest.mark.parametrize("bits", [2, 3])
def test_every_codebook_holds_exactly_k_values_and_zeros_stay(granularity, rpg, bits):
    model = mlp()
    with torch.no_grad():
        model[2].weight[:, ::3] = 0  # a pruned layer: k = 2^bits - 1
    zeros = model[2].weight == 0
    bias = model[0].bias.clone()
    out = lc.share_weights(model, bits=bits, granularity=granularity)
    assert out is model
    for i in (0, 2, 4):
        w = model[i].weight
        pruned = i == 2
        k = 2**bits - int(pruned)
        counts = distinct_nonzero_per_group(w, rpg or w.shape[0])
        # each group has far more than k distinct values before: after, exactly k
        assert counts == [k] * len(counts), (i, counts)
    assert torch.equal(model[2].weight == 0, zeros)
    assert torch.equal(model[0].bias, bias)  # biases are not selected


def test_per_layer_bits_include_exclude():
    model = mlp()
    before = model[4].weight.clone()
    lc.share_weights(model, bits={"*": 2, "2": 4}, exclude="4")
    assert torch.unique(model[0].weight).numel() == 4
    assert torch.unique(model[2].weight).numel() == 16
    assert torch.equal(model[4].weight, before)


def _weighted_error(model, ref, fisher):
    return sum(float((fisher[n] * (dict(model.named_parameters())[n].detach() - ref[n]) ** 2).sum()) for n in fisher)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("active", [16, 2])
def test_fisher_weighting_lowers_the_importance_weighted_error(granularity, active):
    # active=2: only two input features vary, so only two columns of the first layer matter at all; per
    # channel (2 important values per row, 4 centroids) the weighted codebooks reproduce them exactly.
    base = mlp(1)
    batches = [(x * (torch.arange(16) < active), y) for x, y in data(1)]
    names = ["0.weight", "2.weight", "4.weight"]
    params = dict(base.named_parameters())
    fisher = fisher_diagonal(base, {n: params[n] for n in names}, batches, ce)
    ref = {n: params[n].detach().clone() for n in names}
    plain = lc.share_weights(mlp(1), bits=2, granularity=granularity)
    weighted = lc.share_weights(mlp(1), bits=2, granularity=granularity, weighting="fisher", dataloader=batches, loss_fn=ce)
    for n in names:
        e_plain = _weighted_error(plain, {n: ref[n]}, {n: fisher[n]})
        e_weighted = _weighted_error(weighted, {n: ref[n]}, {n: fisher[n]})
        assert e_weighted < 0.99 * e_plain, n
        w = dict(weighted.named_parameters())[n]
        assert max(distinct_nonzero_per_group(w, w.shape[0] if granularity == "tensor" else 1)) <= 4
    if active == 2 and granularity == "channel":
        assert _weighted_error(weighted, {"0.weight": ref["0.weight"]}, {"0.weight": fisher["0.weight"]}) == 0.0


def test_calibration_leaves_mode_grads_and_buffers_alone():
    model = nn.Sequential(nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    model.train()
    running = model[1].running_mean.clone()
    seen = []

    def loss_fn(m, batch):
        seen.append(m.training)
        return ce(m, batch)

    lc.share_weights(model, bits=3, weighting="fisher", dataloader=data(2, batches=10), loss_fn=loss_fn, calibration_batches=3)
    assert seen == [False] * 3 and model.training
    assert torch.equal(model[1].running_mean, running)
    assert all(p.grad is None for p in model.parameters())


def test_auto_bits_meets_the_average_budget_and_favours_sensitive_layers():
    model = mlp(3)
    with torch.no_grad():
        model[0].weight.mul_(50)  # a layer with a much wider range loses most from few bits
    kept = sum(model[i].weight.numel() for i in (0, 2, 4))
    lc.share_weights(model, bits="auto", target_bits=4.0)
    counts = {i: torch.unique(model[i].weight).numel() for i in (0, 2, 4)}
    bits = {i: math.ceil(math.log2(c)) for i, c in counts.items()}
    assert all(2 <= b <= 8 for b in bits.values())
    size = sum(model[i].weight.numel() * bits[i] + 2 ** bits[i] * 32 for i in (0, 2, 4))
    assert size <= 4.0 * kept
    assert bits[0] >= max(bits[2], bits[4])


def test_auto_bits_with_a_byte_budget():
    model = mlp(4)
    others = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    kept = sum(model[i].weight.numel() for i in (0, 2, 4))
    budget = (others * 32 + kept * 3 + 3 * 8 * 32) // 8
    lc.share_weights(model, bits="auto", target_bytes=budget)
    bits = {i: math.ceil(math.log2(torch.unique(model[i].weight).numel())) for i in (0, 2, 4)}
    assert sum(model[i].weight.numel() * bits[i] + 2 ** bits[i] * 32 for i in (0, 2, 4)) + others * 32 <= budget * 8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"bits": 0}, "bits"),
        ({"bits": 17}, "bits"),
        ({"bits": "four"}, "bits"),
        ({"bits": True}, "bits"),
        ({"bits": {"*": 0}}, "bits"),
        ({"granularity": "row"}, "granularity"),
        ({"granularity": 0}, "granularity"),
        ({"weighting": "hessian"}, "weighting"),
        ({"weighting": "fisher"}, "dataloader and loss_fn"),
        ({"weighting": "fisher", "dataloader": [1]}, "dataloader and loss_fn"),
        ({"calibration_batches": 0}, "calibration_batches"),
        ({"bits": "auto"}, "target_bits"),
        ({"bits": "auto", "target_bits": 4, "target_bytes": 100}, "target_bits"),
        ({"bits": "auto", "target_bits": 0.5}, "target_bits"),
        ({"bits": 4, "target_bits": 4}, "target_bits"),
        ({"include": "nope*"}, "nope"),
        ({"init": "zeros"}, "init"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(CompressionConfigError, match=match):
        lc.share_weights(mlp(), **kwargs)


def test_model_must_be_a_module():
    with pytest.raises(CompressionConfigError, match="model"):
        lc.share_weights({"w": torch.ones(2)}, bits=2)
