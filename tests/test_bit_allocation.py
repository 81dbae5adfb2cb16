"""Bits per layer from a budget (core/bit_allocation)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from lightning_compress.core.bit_allocation import (
    BIT_CHOICES,
    LayerCosts,
    allocate_bits,
    budget_for_average,
    measure_layer,
    total_error,
    total_size_bits,
)


def brute_force(layers, budget):
    best = None
    for combo in itertools.product(BIT_CHOICES, repeat=len(layers)):
        bits = {layer.name: b for layer, b in zip(layers, combo)}
        if total_size_bits(layers, bits) <= budget:
            err = total_error(layers, bits)
            if best is None or err < best[0]:
                best = (err, bits)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_equal_steps_and_convex_errors_give_the_exact_optimum(seed):
    # No codebooks (groups=0) and equal sizes: every extra bit costs the same, errors a*4^-b are convex, so the
    # knapsack's greedy is exact at every budget.
    rng = random.Random(seed)
    layers = [LayerCosts(f"l{i}", 100, 0, False, {b: rng.uniform(0.1, 10) * 4.0**-b for b in BIT_CHOICES}) for i in range(4)]
    for avg in (2, 2.5, 3, 4.25, 5, 7.75, 8):
        budget = budget_for_average(layers, avg)
        got = allocate_bits(layers, budget)
        opt_err, _ = brute_force(layers, budget)
        assert total_size_bits(layers, got) <= budget
        assert total_error(layers, got) == pytest.approx(opt_err, rel=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_general_costs_stay_feasible_and_near_optimal(seed):
    # Unequal layer sizes, per-channel codebooks, noisy non-convex errors: a multiple-choice knapsack where
    # greedy is not exact; it must fit the budget, beat every uniform width that fits, and stay near optimal.
    rng = random.Random(100 + seed)
    layers = []
    for i in range(4):
        kept, groups = rng.choice([500, 2000, 8000]), rng.choice([1, 4, 16])
        base = rng.uniform(0.1, 10)
        layers.append(LayerCosts(f"l{i}", kept, groups, rng.random() < 0.5, {b: base * 4.0**-b * rng.uniform(0.7, 1.3) for b in BIT_CHOICES}))
    for avg in (2.6, 3.3, 4.1, 5.5):
        budget = budget_for_average(layers, avg)
        best = brute_force(layers, budget)
        if best is None:
            with pytest.raises(ValueError, match="budget"):
                allocate_bits(layers, budget)
            continue
        got = allocate_bits(layers, budget)
        assert total_size_bits(layers, got) <= budget
        for b in BIT_CHOICES:
            uniform = {layer.name: b for layer in layers}
            if total_size_bits(layers, uniform) <= budget:
                assert total_error(layers, got) <= total_error(layers, uniform) + 1e-15
        assert total_error(layers, got) <= 1.01 * best[0]


def test_budget_extremes():
    layers = [LayerCosts("a", 1000, 2, False, {b: 2.0**-b for b in BIT_CHOICES}), LayerCosts("b", 10, 1, True, {b: 1.0 / b for b in BIT_CHOICES})]
    assert allocate_bits(layers, 1e12) == {"a": 8, "b": 8}
    smallest = total_size_bits(layers, {"a": 2, "b": 2})
    assert allocate_bits(layers, smallest) == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="budget"):
        allocate_bits(layers, smallest - 1)


def test_the_more_important_of_two_identical_layers_gets_more_bits():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, generator=g)
    imp = torch.rand(64, 64, generator=g)
    a = measure_layer("a", w, imp)
    b = measure_layer("b", w.clone(), imp * 100)
    assert all(a.errors[x] > a.errors[x + 1] for x in range(2, 8))  # more bits, less error
    bits = allocate_bits([a, b], budget_for_average([a, b], 4))
    assert bits["b"] > bits["a"]
    assert total_size_bits([a, b], bits) <= budget_for_average([a, b], 4)


def test_measured_error_is_zero_once_the_codebook_holds_every_value():
    w = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0]])  # 3 distinct non-zero values, pruned zeros
    costs = measure_layer("w", w, granularity="channel")
    assert costs.kept == 4 and costs.groups == 2 and costs.has_pruned
    assert costs.errors[2] == 0.0  # 2 bits, pruned: 3 centroids per row cover each row's values
    assert costs.size_bits(2) == 4 * 2 + 2 * 3 * 32
