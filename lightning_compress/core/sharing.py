"""Weight sharing (trained quantization): grouped codebooks, assignments and the centroid gradient.

A shared tensor is split along dim 0 (output channels / rows) into ``G`` groups of ``rows_per_group`` rows
(the last group may be shorter); each group has its own codebook of ``k`` float centroids. ``G = 1`` is Deep
Compression's one codebook per tensor; ``rows_per_group = 1`` is one codebook per output channel. An
assignment tensor of the weight's shape holds, for every weight, the index of its centroid in its group's
codebook, or ``k`` for a pruned position (an exact zero that is not a cluster). Then
``W = decode(C, assignment)``, with ``C`` of shape ``(G, k)``.

Training the centroids (Deep Compression, section 3.3): with assignments fixed,
``dL/dC_gk = sum_{ij in group g} dL/dW_ij * 1(I_ij = k)``. Writing that centroid gradient back into every
member's ``.grad`` lets any ordinary optimizer update the ordinary weight tensor; afterwards the weights are
projected back onto the codebooks so that per-weight optimizer state (momentum, Adam moments, weight decay)
cannot split a cluster. Under plain SGD the projection is a no-op and the update is exactly the paper's
``C_k -= lr * dL/dC_k``.

Every per-step operation works on one flat index ``group * (k + 1) + code`` into a ``(G, k + 1)`` table whose
last column is the pruned zero, so a gather (``index_select``) decodes and a scatter (``scatter_add_``) sums
per cluster, for all groups at once. That index is built once per codebook and kept in memory as int64 (8
bytes per weight: torch's CPU scatter-add takes only int64 indices, and is 2-3x faster than ``index_add_``
with int32 ones; converting the 1-byte assignment at every step cost more than the step's arithmetic). The
assignment itself, what a checkpoint stores, is 1 byte per weight up to 256 codes.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Literal, Union

import torch

from lightning_compress.core.bits import FLOAT_BITS, index_bits
from lightning_compress.core.distributed import Parts
from lightning_compress.core.group_clustering import cluster_groups_lloyd, cluster_groups_optimal
from lightning_compress.core.kmeans import INITS, Init, kmeans_1d

Reduction = Literal["sum", "mean"]
#: ``"tensor"`` (one codebook), ``"channel"`` (one per output channel) or an int G' (one per G' output channels).
Granularity = Union[Literal["tensor", "channel"], int]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel")
#: ``init`` of the sharing entry points: ``"auto"`` (Lloyd from the linear start for one unweighted codebook per
#: tensor, the optimal codebooks otherwise; see ``cluster_weight``) or any of ``core.kmeans.INITS``.
SHARING_INITS: tuple[str, ...] = ("auto", *INITS)
#: ``init="auto"`` uses the optimal codebooks up to this many centroids per codebook.
AUTO_OPTIMAL_MAX_K = 16
#: Projection after an optimizer step: cluster means, or one member per cluster (exact when every member of a
#: cluster was updated identically, i.e. an element-wise optimizer whose state is the same across the cluster).
Projection = Literal["mean", "representative"]


def index_dtype(symbols: int) -> torch.dtype:
    """Smallest integer dtype for ``symbols`` codes: uint8 up to 256, int16 up to 32768, else int32."""
    if symbols <= 256:
        return torch.uint8
    if symbols <= 2**15:
        return torch.int16
    return torch.int32


def codebook_size(bits: int, has_pruned: bool) -> int:
    """Centroids per codebook for ``bits``-bit codes: ``2^bits``, or ``2^bits - 1`` when the layer has pruned
    zeros (zero takes the last code, so 8-bit assignments stay one byte and exactly 8 bits in the file)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be an int >= 1, got {bits!r}")
    return 2**bits - int(bool(has_pruned))


def rows_per_group(shape: torch.Size | tuple[int, ...], granularity: Granularity) -> int:
    """Rows (entries of dim 0) per codebook for a tensor of ``shape``: all of them, 1, or ``granularity``."""
    rows = int(shape[0]) if len(shape) else 1
    if granularity == "tensor":
        return max(1, rows)
    if granularity == "channel":
        return 1
    if isinstance(granularity, bool) or not isinstance(granularity, int) or granularity < 1:
        raise ValueError(f"granularity must be 'tensor', 'channel' or an int >= 1, got {granularity!r}")
    return min(granularity, max(1, rows))


def _rows(shape: torch.Size | tuple[int, ...]) -> int:
    return int(shape[0]) if len(shape) else 1


@dataclass
class SharedWeight:
    """Codebooks and compact assignment of one tensor. ``assignment == k`` marks a pruned (zero) weight.

    ``centroids`` is ``(G, k)`` float32 (each row ascending over the codes its group uses; a group that found
    fewer than ``k`` clusters repeats its largest centroid in the unused slots, which no weight references).
    A 1-D ``(k,)`` codebook (checkpoints written before grouped codebooks) is read as ``G = 1``.
    ``rows_per_group``: rows of dim 0 per codebook; ``None`` means the whole tensor.
    """

    centroids: torch.Tensor
    assignment: torch.Tensor
    rows_per_group: int | None = None
    #: FSDP2: ``assignment`` holds rows ``[row_offset, row_offset + rows)`` of the tensor and ``parts``
    #: (:class:`~lightning_compress.core.distributed.Parts`) sums per-cluster statistics over the ranks.
    row_offset: int = 0
    parts: Parts | None = field(default=None, repr=False, compare=False)
    _flat: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _counts: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _reps: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _used_reps: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.centroids.dim() == 1:
            self.centroids = self.centroids.reshape(1, -1)
        if self.centroids.dim() != 2:
            raise ValueError(f"centroids must be (G, k) or (k,), got shape {tuple(self.centroids.shape)}")
        rows = _rows(self.assignment.shape)
        if self.rows_per_group is None:
            self.rows_per_group = max(1, rows) if self.centroids.shape[0] <= 1 else math.ceil(rows / self.centroids.shape[0])
        expected = math.ceil(rows / self.rows_per_group) if rows else 1
        if self.parts is None and self.centroids.shape[0] != max(1, expected):
            raise ValueError(f"{self.centroids.shape[0]} codebooks for {rows} rows at {self.rows_per_group} rows per group "
                             f"(expected {expected})")

    # -- shape --------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Codebook width (centroids per group); code ``k`` is the pruned zero."""
        return self.centroids.shape[1]

    @property
    def groups(self) -> int:
        return self.centroids.shape[0]

    def to(self, device: torch.device | str) -> "SharedWeight":
        """This codebook on ``device`` (a new object; caches rebuilt lazily)."""
        return SharedWeight(self.centroids.to(device), self.assignment.to(device), self.rows_per_group,
                            self.row_offset, self.parts)

    # -- cached index structures (built once; rebuilt when the assignment changes) -------------------
    def flat_index(self) -> torch.Tensor:
        """int64 index ``group * (k + 1) + code`` of every weight (flattened) into the ``(G, k + 1)`` table."""
        if self._flat is None or self._flat.device != self.assignment.device:
            rows = _rows(self.assignment.shape)
            codes = self.assignment.reshape(max(1, rows), -1).to(torch.int64)
            if self.groups > 1:
                offset = (torch.arange(max(1, rows), device=codes.device, dtype=torch.int64) + self.row_offset) // self.rows_per_group
                codes = codes + (offset * (self.k + 1)).unsqueeze(1)
            self._flat = codes.reshape(-1)
            self._counts = self._reps = self._used_reps = None
        return self._flat

    def counts(self) -> torch.Tensor:
        """Members per code, ``(G, k + 1)`` int64 (last column: pruned positions)."""
        if self._counts is None or self._flat is None:
            flat = self.flat_index()
            counts = torch.bincount(flat, minlength=self.groups * (self.k + 1)).reshape(self.groups, -1)
            self._counts = counts if self.parts is None else self.parts.sum(counts)  # every rank's members
        return self._counts

    def representatives(self) -> torch.Tensor:
        """Flat position of one member per ``(group, code)``, ``(G, k)`` int64; ``-1`` where a code is unused."""
        if self._reps is None or self._flat is None:
            flat = self.flat_index()  # (may reset the caches when it rebuilds)
            size = self.groups * (self.k + 1)
            pos = torch.arange(flat.numel(), device=flat.device)
            first = torch.full((size,), flat.numel(), dtype=torch.long, device=flat.device)
            first.scatter_reduce_(0, flat, pos, reduce="amin")
            first[first == flat.numel()] = -1
            self._reps = first.reshape(self.groups, -1)[:, : self.k].contiguous()
            self._used_reps = self._reps[self._reps >= 0]
        return self._reps

    def used_representatives(self) -> torch.Tensor:
        """Flat positions of one member of every used code (the ``>= 0`` entries of ``representatives``)."""
        if self._used_reps is None or self._reps is None or self._flat is None:
            self._reps = None
            self.representatives()
        return self._used_reps

    def _invalidate(self) -> None:
        self._flat = self._counts = self._reps = self._used_reps = None

    # -- the operations of a fine-tuning step (vectorised over groups) -------------------------------
    def table(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """``[C | 0]`` flattened: ``(G * (k + 1),)``, the zero column for pruned positions."""
        c = self.centroids if values is None else values
        return torch.cat([c, c.new_zeros(c.shape[0], 1)], 1).reshape(-1)

    def decode(self, values: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor these codebooks represent (``values``: other ``(G, k)`` per-code values, e.g. gradients).

        With ``out`` (a contiguous tensor of the weight's shape and the table's dtype) writes into it.
        """
        table = self.table(values)
        flat = self.flat_index()
        if table.device != flat.device:
            table = table.to(flat.device)
        if out is not None and out.is_contiguous() and out.dtype == table.dtype:
            torch.index_select(table, 0, flat, out=out.view(-1))
            return out
        decoded = table.index_select(0, flat).reshape(self.assignment.shape)
        if out is not None:
            out.copy_(decoded)
            return out
        return decoded

    def _summed(self, sums: torch.Tensor) -> torch.Tensor:
        return sums if self.parts is None else self.parts.sum(sums.contiguous())

    def cluster_sums(self, values: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``(G, k)``: the sum of ``values`` (weight-shaped) over each cluster; pruned positions left out."""
        flat = self.flat_index()
        src = values.reshape(-1)
        if dtype is not None and src.dtype != dtype:
            src = src.to(dtype)
        sums = src.new_zeros(self.groups * (self.k + 1))
        sums.scatter_add_(0, flat, src)
        return sums.reshape(self.groups, -1)[:, : self.k]

    def centroid_gradient(self, grad: torch.Tensor, reduction: Reduction = "sum") -> torch.Tensor:
        """``dL/dC`` ``(G, k)``: the sum (paper) or mean of ``grad`` over each cluster."""
        g = self._summed(self.cluster_sums(grad))
        if reduction == "mean":
            g = g / self.counts()[:, : self.k].clamp_min(1).to(g.dtype)
        elif reduction != "sum":
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        return g

    def share_gradient(self, grad: torch.Tensor, reduction: Reduction = "sum") -> torch.Tensor:
        """Replace ``grad`` in place by its cluster's gradient (zero at pruned positions); returns ``dL/dC``."""
        g = self.centroid_gradient(grad, reduction)
        self.decode(g, out=grad)
        return g

    def recenter(self, weight: torch.Tensor, projection: Projection = "mean") -> torch.Tensor:
        """New centroids ``(G, k)`` from the current weights: cluster means, or one member per cluster."""
        if projection == "representative" and self.parts is None:  # parts: members spread over ranks, use means
            reps = self.representatives()
            picked = weight.detach().reshape(-1).index_select(0, reps.clamp_min(0).reshape(-1)).reshape(reps.shape)
            return torch.where(reps >= 0, picked.to(self.centroids.dtype), self.centroids)
        sums = self._summed(self.cluster_sums(weight.detach(), dtype=torch.float64))
        counts = self.counts()[:, : self.k]
        means = (sums / counts.clamp_min(1)).to(self.centroids.dtype)
        return torch.where(counts > 0, means, self.centroids)

    def project(self, weight: torch.Tensor, projection: Projection = "mean") -> None:
        """Move the centroids to the weights (``recenter``) and write ``W = C[assignment]`` into ``weight``."""
        with torch.no_grad():
            self.centroids = self.recenter(weight, projection)
            if weight.dtype == self.centroids.dtype:
                self.decode(out=weight.data)
            else:
                weight.data.copy_(self.decode().to(weight.dtype))

    def average_within_clusters(self, values: torch.Tensor) -> None:
        """Replace weight-shaped ``values`` in place by their cluster means (zero at pruned positions).

        Used on optimizer state (momentum, Adam moments) at clustering: once every member of a cluster has the
        same state, an element-wise optimizer moves all of them identically.
        """
        sums = self._summed(self.cluster_sums(values.detach(), dtype=torch.float64))
        means = (sums / self.counts()[:, : self.k].clamp_min(1)).to(values.dtype)
        self.decode(means, out=values)

    def absorb_zeros(self, weight: torch.Tensor) -> int:
        """Weights zeroed since clustering (e.g. by a pruning callback) become pruned positions; returns how many."""
        newly = (weight.detach() == 0) & (self.assignment != self.k)
        count = int(newly.sum()) if self.parts is None else self.parts.count(int(newly.sum()))
        if count:
            codes = self.assignment.to(torch.int32)
            codes[newly] = self.k
            self.assignment = codes.to(index_dtype(self.k + 1))
            self._invalidate()
        return count

    # -- bit accounting --------------------------------------------------------------------------------
    def kept(self) -> int:
        """Weights that are not pruned (the ones an index is stored for)."""
        return int(self.counts()[:, : self.k].sum())

    def used_codes(self) -> torch.Tensor:
        """Distinct centroids actually referenced by each group, ``(G,)``."""
        return (self.counts()[:, : self.k] > 0).sum(1)

    def index_bits(self) -> int:
        """Fixed-width index bits per kept weight (``ceil(log2 k)``, at least 1)."""
        return index_bits(self.k)

    def codebook_bits(self, float_bits: int = FLOAT_BITS) -> int:
        """Bits of all codebooks: ``G * k`` floats."""
        return self.groups * self.k * float_bits

    def stored_bits(self, float_bits: int = FLOAT_BITS) -> int:
        """Indices of the kept weights plus every codebook (pruned positions are stored by the sparse format)."""
        return self.kept() * self.index_bits() + self.codebook_bits(float_bits)

    def state_bytes(self) -> int:
        """Bytes of the persistent state (assignment + centroids) - what a checkpoint holds for this tensor."""
        return self.assignment.numel() * self.assignment.element_size() + self.centroids.numel() * 4


def _supports_weights() -> bool:
    return "weights" in inspect.signature(kmeans_1d).parameters


def cluster_weight(
    weight: torch.Tensor,
    k: int,
    init: Init = "linear",
    seed: int | None = 0,
    max_iter: int = 300,
    tol: float = 0.0,
    granularity: Granularity = "tensor",
    importance: torch.Tensor | None = None,
) -> SharedWeight:
    """Cluster the non-zero entries of each group of ``weight`` into at most ``k`` centroids; zeros stay zero.

    Zeros are treated as pruned: they get the reserved code ``k'`` (k' = the codebook width, the most
    centroids any group found) and are not part of any cluster. ``importance`` (weight-shaped, >= 0) weights
    each weight's squared error (sensitivity-weighted k-means); a group whose importance is all zero is
    clustered unweighted. An all-zero tensor gets an empty codebook.

    ``init="auto"``: an unweighted codebook per tensor uses Lloyd from the linear start (Deep Compression's
    choice: it keeps the rare large weights represented, which plain squared error undervalues; on TinyGPT it
    gave lower perplexity than the least-squares optimum in 3 of 4 comparisons, ``benchmarks/palettization.py``);
    per-channel and per-group codebooks, and importance-weighted ones (whose error already says what matters),
    use ``"optimal"`` up to ``AUTO_OPTIMAL_MAX_K`` centroids (4 bits), where the programme costs about what Lloyd
    does. Beyond, Lloyd: the programme's time grows with k (at 64 centroids on 2048-value rows, 13x Lloyd's).
    """
    if importance is not None:
        if tuple(importance.shape) != tuple(weight.shape):
            raise ValueError(f"importance has shape {tuple(importance.shape)}, the weight {tuple(weight.shape)}")
        if not _supports_weights():
            raise ValueError("importance weighting needs a weighted k-means (core.kmeans.kmeans_1d(weights=...))")
    w = weight.detach().float().cpu()
    rows = max(1, _rows(w.shape))
    rpg = rows_per_group(w.shape, granularity)
    w2 = w.reshape(rows, -1)
    imp2 = None
    if importance is not None:  # float32 stays float32 (the fast paired sort); the programme works in float64
        imp2 = importance.detach().cpu().reshape(rows, -1)
        imp2 = imp2 if imp2.dtype in (torch.float32, torch.float64) else imp2.double()
    if init == "auto":
        init = "linear" if (rpg >= rows and imp2 is None) or k > AUTO_OPTIMAL_MAX_K else "optimal"
    if init == "optimal" and rpg < rows:  # many codebooks: solved together
        centroids, codes = cluster_groups_optimal(w2, imp2, rpg, k)
    else:
        centroids, codes = cluster_groups_lloyd(w2, imp2, rpg, k, init=init, max_iter=max_iter, tol=tol, seed=seed)
    width = centroids.shape[1]
    has_pruned = bool((w2 == 0).any())
    assignment = codes.to(index_dtype(width + int(has_pruned))).reshape(weight.shape)
    return SharedWeight(centroids, assignment, rpg if centroids.shape[0] > 1 else None)


# -- the per-tensor functions of the first release (a 1-D codebook), kept for callers and tests ------------
def decode(centroids: torch.Tensor, assignment: torch.Tensor, rows_per_group: int | None = None) -> torch.Tensor:
    """``W = [C, 0][assignment]``: the shared weights, with exact zeros at pruned positions.

    ``centroids`` is ``(k,)`` or ``(G, k)`` (then ``rows_per_group`` unless ``G`` is 1 or one per row).
    """
    return SharedWeight(centroids, assignment, rows_per_group).decode()


def centroid_gradient(
    grad: torch.Tensor, assignment: torch.Tensor, k: int, reduction: Reduction = "sum"
) -> torch.Tensor:
    """``dL/dC`` (k,) of one per-tensor codebook: the sum (paper) or mean of ``grad`` over each cluster."""
    shared = SharedWeight(grad.new_zeros(k), assignment.to(grad.device))
    return shared.centroid_gradient(grad, reduction).reshape(-1)


def shared_gradient(
    grad: torch.Tensor, assignment: torch.Tensor, k: int, reduction: Reduction = "sum"
) -> torch.Tensor:
    """The centroid gradient broadcast back to the weight's shape (zero at pruned positions).

    Every member of cluster k then receives the same gradient ``dL/dC_k``, so a plain SGD step moves the whole
    cluster, i.e. the centroid, by ``-lr * dL/dC_k``.
    """
    shared = SharedWeight(grad.new_zeros(k), assignment.to(grad.device))
    return shared.decode(shared.centroid_gradient(grad, reduction))


def recenter(weight: torch.Tensor, assignment: torch.Tensor, k: int) -> torch.Tensor:
    """New centroids (k,) = the mean of each cluster's current weights (projection onto the codebook)."""
    shared = SharedWeight(weight.new_zeros(k, dtype=torch.float32), assignment.to(weight.device))
    return shared.recenter(weight).reshape(-1).to(weight.dtype)


def sharing_rate(n: int, k: int, b: int = FLOAT_BITS, groups: int = 1) -> float:
    """Deep Compression's weight-sharing compression rate r = n*b / (n*log2(k) + G*k*b).

    ``n`` shared weights of ``b`` bits each, stored as log2(k)-bit indices plus ``groups`` k-entry codebooks.
    """
    if n <= 0 or k <= 0:
        return 1.0
    return n * b / (n * math.log2(k) + groups * k * b)


__all__ = [
    "GRANULARITIES",
    "Granularity",
    "Projection",
    "SharedWeight",
    "centroid_gradient",
    "cluster_weight",
    "codebook_size",
    "decode",
    "index_dtype",
    "recenter",
    "rows_per_group",
    "shared_gradient",
    "sharing_rate",
]
