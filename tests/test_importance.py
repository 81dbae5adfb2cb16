"""Empirical Fisher diagonal (core/importance)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_compress.core.importance import fisher_diagonal


def _sum_loss(model, batch):
    return model(batch).sum()


def test_fisher_of_a_linear_layer_is_the_mean_squared_analytic_gradient():
    # y = W x, L = sum(y)  =>  dL/dW_ij = sum over the batch of x_j; dL/db_i = batch size.
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    batches = [torch.randn(4, 3) for _ in range(5)]
    f = fisher_diagonal(model, dict(model.named_parameters()), batches, _sum_loss)
    expected_w = torch.stack([b.sum(0).square().expand(2, 3) for b in batches]).mean(0)
    torch.testing.assert_close(f["weight"], expected_w)
    torch.testing.assert_close(f["bias"], torch.full((2,), 16.0))


def test_max_batches_stops_early_and_counts_the_mean_over_used_batches():
    model = nn.Linear(2, 1, bias=False)
    batches = [torch.ones(1, 2), 3 * torch.ones(1, 2), 100 * torch.ones(1, 2)]
    f = fisher_diagonal(model, [model.weight], iter(batches), _sum_loss, max_batches=2)
    torch.testing.assert_close(f[0], torch.full((1, 2), (1.0 + 9.0) / 2))


def test_grads_flags_and_weights_are_left_untouched():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)  # frozen tensors still get an estimate
    model[2].weight.grad = torch.full_like(model[2].weight, 7.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    f = fisher_diagonal(model, {"a": model[0].weight, "b": model[2].weight}, [torch.randn(5, 3)], _sum_loss)
    assert f["a"].shape == (3, 3) and bool((f["a"] >= 0).all()) and float(f["a"].sum()) > 0
    assert not model[0].weight.requires_grad and model[2].weight.requires_grad
    assert model[0].weight.grad is None and torch.equal(model[2].weight.grad, torch.full((1, 3), 7.0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tied_tensor_under_two_names_and_unused_tensor():
    emb = nn.Embedding(5, 2)
    head = nn.Linear(2, 5, bias=False)
    head.weight = emb.weight  # tied
    unused = nn.Parameter(torch.ones(3))
    model = nn.ModuleDict({"emb": emb, "head": head})

    def loss_fn(m, batch):
        return m["head"](m["emb"](batch)).logsumexp(-1).sum()

    f = fisher_diagonal(model, {"emb": emb.weight, "head": head.weight, "x": unused}, [torch.tensor([0, 1, 2])], loss_fn)
    assert f["emb"] is f["head"]
    assert torch.equal(f["x"], torch.zeros(3))


def test_bad_arguments():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="no batch"):
        fisher_diagonal(model, [model.weight], [], _sum_loss)
    with pytest.raises(ValueError, match="max_batches"):
        fisher_diagonal(model, [model.weight], [torch.ones(1, 2)], _sum_loss, max_batches=0)
    with pytest.raises(ValueError, match="scalar"):
        fisher_diagonal(model, [model.weight], [torch.ones(3, 2)], lambda m, b: m(b))
    with pytest.raises(ValueError, match="leaf"):
        fisher_diagonal(model, [model.weight * 2], [torch.ones(1, 2)], _sum_loss)
