"""Weight sharing (trained quantization): codebooks, assignments and the centroid gradient.

A shared layer is a codebook ``C`` (k float centroids) plus an assignment tensor of the weight's shape that
holds, for every weight, the index of its centroid, or ``k`` for a pruned position (an exact zero that is
not a cluster). Then ``W = decode(C, assignment)``.

Training the centroids (Deep Compression, section 3.3): with assignments fixed,
``dL/dC_k = sum_{ij} dL/dW_ij * 1(I_ij = k)``. Writing that centroid gradient back into every member's
``.grad`` lets any ordinary optimizer update the ordinary weight tensor; afterwards ``recenter`` projects the
weights back onto the codebook (cluster means) so optimizer state that differs per weight (momentum, Adam
moments, weight decay) cannot split a cluster. Under plain SGD the projection is a no-op and the update is
exactly the paper's ``C_k -= lr * dL/dC_k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from lightning_compress.core.kmeans import Init, kmeans_1d

Reduction = Literal["sum", "mean"]
FLOAT_BITS = 32


def index_dtype(symbols: int) -> torch.dtype:
    """Smallest integer dtype for ``symbols`` codes: uint8 up to 256, int16 up to 32768, else int32."""
    if symbols <= 256:
        return torch.uint8
    if symbols <= 2**15:
        return torch.int16
    return torch.int32


@dataclass
class SharedWeight:
    """Codebook and compact assignment of one layer. ``assignment == k`` marks a pruned (zero) weight."""

    centroids: torch.Tensor  # (k,) float32, sorted ascending
    assignment: torch.Tensor  # weight-shaped, uint8/int16 codes in [0, k]

    @property
    def k(self) -> int:
        return self.centroids.numel()

    def index(self) -> torch.Tensor:
        """Assignment as int64 (what ``scatter``/indexing need)."""
        return self.assignment.long()

    def decode(self) -> torch.Tensor:
        """The weight tensor this codebook represents (pruned positions exactly zero)."""
        return decode(self.centroids, self.assignment)

    def cluster_sizes(self) -> torch.Tensor:
        return torch.bincount(self.index().reshape(-1), minlength=self.k + 1)[: self.k]


def cluster_weight(
    weight: torch.Tensor,
    k: int,
    init: Init = "linear",
    seed: int | None = 0,
    max_iter: int = 300,
    tol: float = 0.0,
) -> SharedWeight:
    """Cluster the non-zero entries of ``weight`` into at most ``k`` centroids; zeros stay zero.

    Zeros are treated as pruned: they get the reserved code ``k'`` (k' = centroids found) and are not part of
    any cluster. A layer with no non-zero entry gets an empty codebook.
    """
    w = weight.detach().float().reshape(-1).cpu()
    nonzero = w != 0
    values = w[nonzero]
    if values.numel() == 0:
        centroids = torch.zeros(0)
        assignment = torch.zeros(w.numel(), dtype=torch.uint8)
        return SharedWeight(centroids, assignment.reshape(weight.shape))
    result = kmeans_1d(values, k, init=init, max_iter=max_iter, tol=tol, seed=seed)
    centroids = result.centroids.float()
    kk = centroids.numel()
    has_pruned = bool((~nonzero).any())
    codes = torch.full((w.numel(),), kk, dtype=torch.long)
    codes[nonzero] = result.labels
    assignment = codes.to(index_dtype(kk + int(has_pruned))).reshape(weight.shape)
    return SharedWeight(centroids, assignment)


def decode(centroids: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """``W = [C, 0][assignment]``: the shared weights, with exact zeros at pruned positions."""
    table = torch.cat([centroids, centroids.new_zeros(1)])
    return table[assignment.long()]


def centroid_gradient(
    grad: torch.Tensor, assignment: torch.Tensor, k: int, reduction: Reduction = "sum"
) -> torch.Tensor:
    """``dL/dC`` (k,): the sum (paper) or mean of ``grad`` over each cluster; pruned positions ignored."""
    idx = assignment.long().reshape(-1)
    g = torch.zeros(k + 1, dtype=grad.dtype, device=grad.device)
    g.scatter_add_(0, idx, grad.reshape(-1))
    g = g[:k]
    if reduction == "mean":
        counts = torch.bincount(idx, minlength=k + 1)[:k].clamp_min(1).to(grad.dtype)
        g = g / counts
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return g


def shared_gradient(
    grad: torch.Tensor, assignment: torch.Tensor, k: int, reduction: Reduction = "sum"
) -> torch.Tensor:
    """The centroid gradient broadcast back to the weight's shape (zero at pruned positions).

    Every member of cluster k then receives the same gradient ``dL/dC_k``, so a plain SGD step moves the whole
    cluster, i.e. the centroid, by ``-lr * dL/dC_k``.
    """
    return decode(centroid_gradient(grad, assignment, k, reduction), assignment.to(grad.device))


def recenter(weight: torch.Tensor, assignment: torch.Tensor, k: int) -> torch.Tensor:
    """New centroids (k,) = the mean of each cluster's current weights (projection onto the codebook)."""
    idx = assignment.long().reshape(-1)
    w = weight.detach().reshape(-1)
    sums = torch.zeros(k + 1, dtype=torch.float64, device=w.device).scatter_add_(0, idx, w.double())
    counts = torch.bincount(idx, minlength=k + 1).clamp_min(1)
    return (sums / counts)[:k].to(weight.dtype)


def sharing_rate(n: int, k: int, b: int = FLOAT_BITS) -> float:
    """Deep Compression's weight-sharing compression rate r = n*b / (n*log2(k) + k*b).

    ``n`` shared weights of ``b`` bits each, stored as log2(k)-bit indices plus a k-entry codebook.
    """
    if n <= 0 or k <= 0:
        return 1.0
    return n * b / (n * math.log2(k) + k * b)


def index_bits(k: int) -> int:
    """Bits of a fixed-width index into a k-entry codebook (at least 1)."""
    return max(1, math.ceil(math.log2(k))) if k > 1 else 1


__all__ = [
    "SharedWeight",
    "centroid_gradient",
    "cluster_weight",
    "decode",
    "index_bits",
    "index_dtype",
    "recenter",
    "shared_gradient",
    "sharing_rate",
]
