"""Cluster the non-zero values of every codebook group of a weight: one Lloyd run per group, or all at once.

A weight viewed as ``(rows, cols)`` is cut into groups of ``rows_per_group`` rows; each group's non-zero
values get their own codebook (zeros are pruned positions, never a cluster). Both functions return
``(centroids (G, width) float32, codes (rows * cols,) int64)``: row g of ``centroids`` holds group g's
ascending centroids, padded by repeating its last one; ``codes`` index a weight's group codebook, and
``width`` (the widest codebook) marks a pruned zero.

``init="optimal"`` solves every group together with the dynamic programme of ``core.kmeans_optimal`` (the
global optimum of each group's weighted k-means): thousands of per-channel problems cost a few tensor
operations per tree level instead of one Python-level k-means each.
"""

from __future__ import annotations

import math

import torch

from lightning_compress.core.kmeans import kmeans_1d
from lightning_compress.core.kmeans_optimal import optimal_kmeans_rows


def cluster_groups_lloyd(
    w2: torch.Tensor, imp2: torch.Tensor | None, rpg: int, k: int, **kmeans_args
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``kmeans_1d`` per group (``kmeans_args``: init, max_iter, tol, seed); importance-weighted when the
    group has any positive importance."""
    n_groups = math.ceil(w2.shape[0] / rpg)
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (centroids, labels, nonzero mask)
    for g in range(n_groups):
        block = w2[g * rpg : (g + 1) * rpg].reshape(-1)
        nonzero = block != 0
        dense = bool(nonzero.all())  # nothing pruned: no masked copies of the values and importances
        values = block if dense else block[nonzero]
        if values.numel() == 0:
            found.append((torch.zeros(0), torch.zeros(0, dtype=torch.long), nonzero))
            continue
        weights = None if imp2 is None else imp2[g * rpg : (g + 1) * rpg].reshape(-1)
        weights = weights if weights is None or dense else weights[nonzero]
        if weights is not None and float(weights.sum()) <= 0:
            weights = None
        result = kmeans_1d(values, k, weights=weights, **kmeans_args)
        found.append((result.centroids.float(), result.labels, nonzero))
    width = max(c.numel() for c, _, _ in found)
    centroids = torch.zeros(n_groups, width)
    codes = torch.full((w2.numel(),), width, dtype=torch.long)
    per_group = rpg * w2.shape[1]
    for g, (c, labels, nonzero) in enumerate(found):
        if c.numel():
            centroids[g, : c.numel()] = c
            centroids[g, c.numel() :] = c[-1]
            block_codes = codes[g * per_group : g * per_group + nonzero.numel()]
            if labels.numel() == nonzero.numel():
                block_codes.copy_(labels)
            else:
                block_codes[nonzero] = labels
    return centroids, codes


def cluster_groups_optimal(
    w2: torch.Tensor, imp2: torch.Tensor | None, rpg: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every group's optimal (importance-weighted) codebook, all groups solved together."""
    rows, cols = w2.shape
    n_groups = math.ceil(rows / rpg)
    pad = n_groups * rpg - rows  # the last group may be short: zero rows, which are not clustered
    x = torch.cat([w2, w2.new_zeros(pad, cols)]).reshape(n_groups, rpg * cols)
    imp = None if imp2 is None else torch.cat([imp2, imp2.new_zeros(pad, cols)]).reshape(n_groups, rpg * cols)
    valid = x != 0
    c64, counts = optimal_kmeans_rows(x, k, imp, valid)
    last = (counts - 1).clamp_min(0)
    slot = torch.arange(c64.shape[1])[None, :]
    mids = torch.where(slot[:, :-1] < last[:, None], (c64[:, :-1] + c64[:, 1:]) * 0.5, torch.inf)
    labels = torch.searchsorted(mids.contiguous(), x.double().contiguous())
    c32, labels, counts = _merge_float32(c64, labels, counts)
    width = int(counts.max()) if counts.numel() else 0
    centroids = c32[:, :width].clone()
    if width:
        fill = centroids.gather(1, (counts - 1).clamp_min(0)[:, None])
        centroids = torch.where(slot[:, :width] < counts[:, None], centroids, fill)
    codes = torch.where(valid, labels, torch.full_like(labels, width)).reshape(-1)[: w2.numel()]
    return centroids, codes


def _merge_float32(c64: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor):
    """Centroids in float32; neighbours that round to one float32 value become one centroid (labels remapped).

    Returns (centroids (G, k) with each row's distinct values first, labels, distinct counts)."""
    c32 = c64.float()
    used = torch.arange(c64.shape[1])[None, :] < counts[:, None]
    new = used.clone()
    new[:, 1:] &= c32[:, 1:] != c32[:, :-1]
    position = (new.long().cumsum(1) - 1).clamp_min(0)
    out = torch.zeros_like(c32).scatter_(1, position, c32)
    return out, position.gather(1, labels), new.sum(1)


__all__ = ["cluster_groups_lloyd", "cluster_groups_optimal"]
