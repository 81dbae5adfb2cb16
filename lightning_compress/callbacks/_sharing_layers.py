"""A shared layer during a fit (parameter + codebooks), its checkpoint form, the optimizer side, the metrics.

Projection after a step: with an element-wise optimizer (SGD, Adam, AdamW, ... - each weight's update depends
only on its own gradient and state) whose per-weight state was made uniform inside every cluster at
clustering time, all members of a cluster receive the same update, so reading one member per cluster gives
the new centroids ("representative", O(G k) instead of a pass over the layer). Any other optimizer (or a
subclass that may override ``step``) gets the cluster means. Either way the layer is then rewritten as
``C[assignment]``, so the "at most k values per codebook" invariant never depends on that reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from lightning_compress.callbacks._logging import tag
from lightning_compress.callbacks._sharing_options import OWNER
from lightning_compress.core.bits import FLOAT_BITS
from lightning_compress.core.distributed import Parts, full_like, is_sharded, local_slices, local_tensor, shard_like
from lightning_compress.core.sharing import Projection, SharedWeight, sharing_rate
from lightning_compress.core.targets import Target
from lightning_compress.validation import fail

#: Optimizers whose update of a weight depends only on that weight's gradient, value and state.
ELEMENTWISE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.Adadelta, torch.optim.Rprop,
)


@dataclass
class SharedLayer:
    """A shared layer during fit: its parameter and codebooks (on the parameter's device)."""

    target: Target
    bits: int
    shared: SharedWeight

    @property
    def param(self) -> nn.Parameter:
        return self.target.param

    def write_weights(self) -> None:
        """``W = C[assignment]``."""
        with torch.no_grad():
            local_tensor(self.param).copy_(self.shared.decode().to(self.param.dtype))

    def representative_zeroed(self) -> torch.Tensor:
        """Whether someone zeroed a cluster's representative (0-dim bool tensor; one read per cluster)."""
        reps = self.shared.used_representatives()
        hit = (local_tensor(self.param).reshape(-1).index_select(0, reps) == 0).any()
        parts = self.shared.parts  # FSDP2: the ranks must agree (absorbing zeros is then collective)
        return hit if parts is None else torch.tensor(bool(parts.count(int(hit))))

    def describe(self) -> str:
        s = self.shared
        groups = f" x {s.groups} codebooks" if s.groups > 1 else ""
        return f"{s.k} centroids{groups}, {self.bits} bits"

    def state(self) -> dict[str, Any]:
        s = self.shared
        return {"bits": self.bits, "centroids": s.centroids.detach().cpu().clone(),
                "assignment": full_like(s.assignment, self.param).detach().cpu().clone(),  # FSDP2: whole
                "rows_per_group": s.rows_per_group}

    @staticmethod
    def read_state(name: str, entry: Mapping[str, Any], shape: tuple[int, ...]) -> tuple[SharedWeight, int]:
        """A checkpoint entry checked against the layer (version 1 entries: one ``(k,)`` codebook)."""
        centroids, assignment, bits = entry["centroids"], entry["assignment"], int(entry["bits"])
        if tuple(assignment.shape) != shape:
            fail(OWNER, f"checkpoint assignment of {name!r} has shape {tuple(assignment.shape)}, the layer {shape}")
        k = centroids.shape[-1] if centroids.dim() else 0
        top = int(assignment.max()) if assignment.numel() else None
        if k > 2**bits or (top is not None and top > k) or not bool(torch.isfinite(centroids).all()):
            fail(OWNER, f"checkpoint codebook of {name!r} is inconsistent ({k} centroids for {bits} bits, "
                        f"largest code {top}); corrupted checkpoint?")
        try:
            return SharedWeight(centroids.float(), assignment, entry.get("rows_per_group")), bits
        except ValueError as err:
            fail(OWNER, f"checkpoint codebook of {name!r} is inconsistent: {err}; corrupted checkpoint?")


def local_part(shared: SharedWeight, param: torch.Tensor) -> SharedWeight:
    """``shared`` (whole-tensor codebooks) for this rank: under FSDP2 the assignment rows of the rank's part,
    with the per-cluster sums of every step summed over the ranks; otherwise ``shared`` on ``param``'s device."""
    if not is_sharded(param):
        return shared.to(param.device)
    local = local_tensor(param)
    return SharedWeight(shared.centroids.to(local.device), shard_like(shared.assignment, param).to(local.device),
                        shared.rows_per_group, local_slices(param)[0].start, Parts(param))


def projection_for(optimizer: torch.optim.Optimizer, synced: bool) -> Projection:
    """``"representative"`` for an element-wise optimizer whose state is uniform per cluster, else ``"mean"``."""
    return "representative" if synced and type(optimizer) in ELEMENTWISE_OPTIMIZERS else "mean"


def sync_optimizer_state(optimizer: torch.optim.Optimizer, layers: Iterable[SharedLayer]) -> None:
    """Make every weight-shaped state tensor (momentum, moments) uniform inside each cluster, zero when pruned."""
    with torch.no_grad():
        for layer in layers:
            state = optimizer.state.get(layer.param)
            for value in (state or {}).values():
                if torch.is_tensor(value) and value.is_floating_point() and value.shape == layer.param.shape:
                    layer.shared.average_within_clusters(local_tensor(value))


def sharing_metrics(layers: Mapping[str, SharedLayer]) -> dict[str, float]:
    """Per layer: index bits, codebook width, weight-sharing rate (every codebook counted); and totals,
    including the bytes of state per shared weight the callback keeps (assignments + codebooks)."""
    m: dict[str, float] = {}
    stored_bits = raw_bits = kept = state_bytes = weights = 0
    for name, layer in layers.items():
        s = layer.shared
        n = s.kept()
        m[tag("bits", name)] = s.index_bits()
        m[tag("codebook_size", name)] = s.k
        m[tag("sharing_rate", name)] = sharing_rate(n, s.k, groups=s.groups)
        state_bytes += s.state_bytes()
        weights += s.assignment.numel()
        if s.k:
            stored_bits += s.stored_bits()
            raw_bits += FLOAT_BITS * n
            kept += n
    if kept:
        m[tag("sharing", "bits_per_weight")] = stored_bits / kept
        m[tag("sharing_rate")] = raw_bits / stored_bits
    if weights:
        m[tag("sharing", "state_bytes_per_weight")] = state_bytes / weights
    return m


__all__ = ["ELEMENTWISE_OPTIMIZERS", "SharedLayer", "local_part", "projection_for", "sharing_metrics", "sync_optimizer_state"]
