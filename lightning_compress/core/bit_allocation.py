"""Bits per layer from a size budget, by measured sensitivity.

Layers differ in how much quantization hurts: the importance-weighted squared error
``E_l(b) = sum_i F_i (w_i - c_{a_i})^2`` of layer l clustered at b bits is measured (by clustering, once per
candidate width), and each layer's size ``S_l(b) = kept_l * b + G_l * k(b) * 32`` bits counts its codes and
every codebook (G_l codebooks of k(b) float32 centroids). Choosing one width per layer to minimise
``sum_l E_l(b_l)`` under ``sum_l S_l(b_l) <= budget`` is a multiple-choice knapsack; ``allocate_bits`` solves
it greedily along each layer's lower convex hull of (size, error) — the Lagrangian path: every move is the
upgrade with the largest error drop per added bit that still fits (exact when the budget lands on a hull
vertex, e.g. layers of equal size with convex error curves) — and by a dynamic programme over the budget cut
into small units (exact up to that rounding); the better of the two is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from lightning_compress.core.bits import FLOAT_BITS
from lightning_compress.core.sharing import Granularity, cluster_weight, codebook_size, rows_per_group

#: Candidate widths: 2..8 bits (at 1 bit a pruned layer's codebook would hold only zero's code).
BIT_CHOICES: tuple[int, ...] = tuple(range(2, 9))


@dataclass
class LayerCosts:
    """One layer's size and measured error at every candidate width (``errors[b]``)."""

    name: str
    kept: int  # non-zero (coded) weights
    groups: int  # codebooks
    has_pruned: bool
    errors: dict[int, float] = field(default_factory=dict)

    def size_bits(self, bits: int, float_bits: int = FLOAT_BITS) -> int:
        """Stored bits at ``bits``: one code per kept weight plus every codebook's centroids."""
        return self.kept * bits + self.groups * codebook_size(bits, self.has_pruned) * float_bits


def importance_weighted_error(weight: torch.Tensor, decoded: torch.Tensor, importance: torch.Tensor | None) -> float:
    """``sum F (w - w_q)^2`` in float64 (plain squared error when ``importance`` is None)."""
    diff = (weight.detach().double() - decoded.detach().double()).square()
    return float(diff.sum() if importance is None else (importance.detach().double().cpu() * diff.cpu()).sum())


def measure_layer(
    name: str,
    weight: torch.Tensor,
    importance: torch.Tensor | None = None,
    granularity: Granularity = "tensor",
    bit_choices: Iterable[int] = BIT_CHOICES,
    **cluster_kwargs,
) -> LayerCosts:
    """Cluster ``weight`` at every width in ``bit_choices`` and record the importance-weighted error."""
    w = weight.detach().float().cpu()
    nonzero = w != 0
    has_pruned = bool((~nonzero).any())
    rows = int(w.shape[0]) if w.dim() else 1
    rpg = rows_per_group(w.shape, granularity)
    costs = LayerCosts(name, int(nonzero.sum()), -(-max(1, rows) // rpg), has_pruned)
    for bits in bit_choices:
        k = codebook_size(bits, has_pruned)
        shared = cluster_weight(w, k, granularity=granularity, importance=importance, **cluster_kwargs)
        costs.errors[bits] = importance_weighted_error(w, shared.decode(), importance)
    return costs


def budget_for_average(layers: Sequence[LayerCosts], bits_per_weight: float) -> float:
    """Budget in bits for an average of ``bits_per_weight`` per kept weight, codebooks included."""
    return bits_per_weight * sum(layer.kept for layer in layers)


def _hull(layer: LayerCosts, choices: Sequence[int]) -> list[int]:
    """Widths on the lower convex hull of (size, error), by increasing size; dominated widths dropped."""
    points = sorted((layer.size_bits(b), layer.errors[b], b) for b in choices)
    hull: list[tuple[int, float, int]] = []
    for p in points:
        if hull and p[1] >= hull[-1][1]:
            continue  # bigger and no better: never worth it
        while len(hull) >= 2:
            (s0, e0, _), (s1, e1, _) = hull[-2], hull[-1]
            # drop the middle point when it lies on or above the segment from hull[-2] to p
            if (e0 - e1) * (p[0] - s0) <= (e0 - p[1]) * (s1 - s0):
                hull.pop()
            else:
                break
        hull.append(p)
    return [b for _, _, b in hull]


def allocate_bits(
    layers: Sequence[LayerCosts], budget_bits: float, bit_choices: Sequence[int] = BIT_CHOICES, resolution: int = 4096
) -> dict[str, int]:
    """Width per layer minimising the summed error with total size <= ``budget_bits`` (see module doc).

    Two solvers, the better answer wins: the greedy walk along each layer's convex hull (exact on hull
    vertices), and a dynamic programme over the spare budget in ``resolution`` units (exact up to rounding
    each layer's size up to a unit). Both finish by spending what is left on the best single change that fits.
    Raises ``ValueError`` when even the narrowest widths exceed the budget.
    """
    choices = sorted(set(bit_choices))
    if not layers:
        return {}
    hulls = {layer.name: _hull(layer, choices) for layer in layers}
    by_name = {layer.name: layer for layer in layers}
    # Start from each layer's smallest width (the first hull point is the smallest size).
    pos = {name: 0 for name in hulls}
    used = sum(by_name[n].size_bits(h[0]) for n, h in hulls.items())
    if used > budget_bits:
        raise ValueError(f"budget of {budget_bits:.0f} bits is below the smallest possible size ({used} bits)")
    while True:
        best, best_gain = None, 0.0
        for name, hull in hulls.items():
            i = pos[name]
            if i + 1 >= len(hull):
                continue
            layer = by_name[name]
            extra = layer.size_bits(hull[i + 1]) - layer.size_bits(hull[i])
            if used + extra > budget_bits:
                continue
            gain = (layer.errors[hull[i]] - layer.errors[hull[i + 1]]) / max(extra, 1)
            if best is None or gain > best_gain:
                best, best_gain = name, gain
        if best is None:
            break
        layer, hull = by_name[best], hulls[best]
        used += layer.size_bits(hull[pos[best] + 1]) - layer.size_bits(hull[pos[best]])
        pos[best] += 1
    greedy = _fill(layers, {name: hulls[name][pos[name]] for name in hulls}, budget_bits - used, choices)
    dp = _knapsack(layers, budget_bits, choices, resolution)
    if dp is not None:
        dp = _fill(layers, dp, budget_bits - total_size_bits(layers, dp), choices)
        if total_error(layers, dp) < total_error(layers, greedy):
            return dp
    return greedy


def _knapsack(
    layers: Sequence[LayerCosts], budget_bits: float, choices: Sequence[int], resolution: int
) -> dict[str, int] | None:
    """Dynamic programme over the budget above the all-narrowest size, cut into ``resolution`` units; each
    upgrade's size is rounded *up* to whole units, so the answer always fits (and is optimal up to that
    rounding: at most one unit per layer of the budget goes unused)."""
    base = {layer.name: min(choices, key=layer.size_bits) for layer in layers}
    spare = budget_bits - total_size_bits(layers, base)
    if spare <= 0 or resolution < 1:
        return None
    unit = spare / resolution
    inf = float("inf")
    best = np.zeros(resolution + 1)  # best[c]: least error of the layers so far within c units
    picks = []
    for layer in layers:
        low = layer.size_bits(base[layer.name])
        new = np.full(resolution + 1, inf)
        arg = np.zeros(resolution + 1, dtype=np.int8)
        for j, b in enumerate(choices):
            cost = max(0, math.ceil((layer.size_bits(b) - low) / unit - 1e-9))
            if cost > resolution:
                continue
            cand = np.full(resolution + 1, inf)
            cand[cost:] = best[: resolution + 1 - cost] + layer.errors[b]
            better = cand < new
            new[better], arg[better] = cand[better], j
        picks.append(arg)
        best = new
    c = int(np.argmin(best))
    out = {}
    for layer, arg in zip(reversed(layers), reversed(picks)):
        b = choices[int(arg[c])]
        out[layer.name] = b
        c -= max(0, math.ceil((layer.size_bits(b) - layer.size_bits(base[layer.name])) / unit - 1e-9))
    return out


def _fill(layers: Sequence[LayerCosts], bits: dict[str, int], left: float, choices: Sequence[int]) -> dict[str, int]:
    """Spend what the hull walk left: repeatedly take the single change (any width, hull or not) that lowers
    the error most and still fits."""
    while True:
        best = None
        for layer in layers:
            now = bits[layer.name]
            for b in choices:
                extra = layer.size_bits(b) - layer.size_bits(now)
                drop = layer.errors[now] - layer.errors[b]
                if extra <= left and drop > 0 and (best is None or drop > best[0]):
                    best = (drop, layer.name, b, extra)
        if best is None:
            return bits
        _, name, b, extra = best
        bits[name] = b
        left -= extra


def total_size_bits(layers: Sequence[LayerCosts], bits: dict[str, int]) -> int:
    return sum(layer.size_bits(bits[layer.name]) for layer in layers)


def total_error(layers: Sequence[LayerCosts], bits: dict[str, int]) -> float:
    return sum(layer.errors[bits[layer.name]] for layer in layers)


__all__ = [
    "BIT_CHOICES",
    "LayerCosts",
    "allocate_bits",
    "budget_for_average",
    "importance_weighted_error",
    "measure_layer",
    "total_error",
    "total_size_bits",
]
