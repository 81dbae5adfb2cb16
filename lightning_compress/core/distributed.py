"""Sharded tensors (FSDP2 / ``DTensor``) seen one tensor at a time. Pure torch, no Lightning.

Under FSDP2 (Lightning's ``ModelParallelStrategy``) every parameter is a ``DTensor``: each rank holds a part
of it (``to_local()``), split on dim 0 the way ``torch.chunk`` splits (the last ranks get fewer rows, or none).
A mask, a codebook assignment or a statistic of a *whole* layer therefore needs either

* the whole layer, gathered **one tensor at a time** (:func:`full_tensor`, :func:`full_like`; memory: one
  layer, never the model), with the result cut back to this rank's part (:func:`shard_like`); or
* sums over the parts (:func:`shard_sum`: counts, histograms, per-cluster sums), which equal the unsharded
  sums exactly for integers.

Every function is a no-op on ordinary tensors (single process, DDP: each rank holds the whole tensor), so a
callback can call them unconditionally. Functions that communicate are *collective*: every rank holding a part
of the tensor must call them, in the same order.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

import torch
import torch.distributed as dist

try:  # torch >= 2.4 has the public module
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
except ImportError:  # pragma: no cover - older torch: nothing is ever sharded
    DTensor = Replicate = Shard = distribute_tensor = None  # type: ignore[assignment,misc]


def is_distributed() -> bool:
    """Whether a default process group is up (more than one rank may exist)."""
    return dist.is_available() and dist.is_initialized()


def is_dtensor(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` split across more than one rank (not merely replicated)."""
    if not is_dtensor(t):
        return False
    mesh = t.device_mesh
    return any(not isinstance(p, Replicate) and mesh.size(i) > 1 for i, p in enumerate(t.placements))


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t`` (``t`` itself when not a ``DTensor``).

    The same storage as ``t``: in-place edits of the result (``masked_fill_``, ``copy_``) change the parameter,
    its gradient or its optimizer state. Detached, so safe to edit under ``torch.no_grad()``.
    """
    if is_dtensor(t):
        local = getattr(t, "_local_tensor", None)  # the storage itself (to_local() may return a view or a copy)
        return (local if local is not None else t.to_local()).detach()
    return t.detach() if t.requires_grad else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather of one tensor; ``t`` itself when not a ``DTensor``)."""
    if not is_dtensor(t):
        return t.detach()
    with torch.no_grad():
        return t.detach().full_tensor()


def _gather_safe(local: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    """gloo has no bool collectives: move bools through uint8."""
    return (local.to(torch.uint8), torch.bool) if local.dtype == torch.bool else (local, local.dtype)


def full_like(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather a tensor split exactly like ``like`` (a mask or assignments kept per shard) into its full shape."""
    if not is_dtensor(like):
        return local
    if tuple(local.shape) != tuple(like.to_local().shape):
        raise ValueError(f"local part shaped {tuple(local.shape)}, but this rank holds {tuple(like.to_local().shape)} "
                         f"of the {tuple(like.shape)} tensor it should be split like")
    data, dtype = _gather_safe(local.detach())
    spread = DTensor.from_local(data, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())
    return spread.full_tensor().to(dtype)


def local_slices(like: torch.Tensor) -> tuple[slice, ...]:
    """Global index ranges (one slice per dim) of this rank's part of ``like``; whole ranges when not sharded.

    Follows ``DTensor``'s split of ``Shard(d)`` placements (``torch.chunk`` sizes, mesh dims left to right),
    which is how FSDP2 shards its parameters. Other placements (``_StridedShard`` of FSDP + tensor parallel on
    one dim, ``Partial``) raise ``NotImplementedError``.
    """
    bounds = [[0, n] for n in like.shape]
    if not is_dtensor(like):
        return tuple(slice(a, b) for a, b in bounds)
    mesh, coord = like.device_mesh, like.device_mesh.get_coordinate()
    if coord is None:
        raise ValueError("this rank holds no part of the tensor (it is not in the tensor's device mesh)")
    for i, placement in enumerate(like.placements):
        if isinstance(placement, Replicate):
            continue
        if type(placement) is not Shard:
            raise NotImplementedError(f"placement {placement} on mesh dim {i} is not supported")
        d = placement.dim % like.dim()
        start, stop = bounds[d]
        chunk = math.ceil((stop - start) / mesh.size(i))
        lo = min(start + coord[i] * chunk, stop)
        bounds[d] = [lo, min(lo + chunk, stop)]
    return tuple(slice(a, b) for a, b in bounds)


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's part of a full-shaped tensor (a mask, assignments), cut exactly as ``like`` is cut.

    No communication: every rank slices its own rows. ``full`` itself when ``like`` is not a ``DTensor``.
    """
    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"full tensor shaped {tuple(full.shape)}, expected {tuple(like.shape)}")
    if not is_dtensor(like):
        return full
    try:
        part = full[local_slices(like)]
    except NotImplementedError:  # exotic placements: let DTensor cut it, locally (src_data_rank=None)
        part = distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()
    return part.clone().to(like.to_local().device)


def _shard_groups(like: torch.Tensor) -> list:
    """Process groups of the mesh dims over which ``like`` is split (not those it is replicated over)."""
    if not is_dtensor(like):
        return []
    mesh = like.device_mesh
    return [mesh.get_group(i) for i, p in enumerate(like.placements)
            if not isinstance(p, Replicate) and mesh.size(i) > 1]


def shard_sum(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` (in place) over the ranks holding the parts of ``like``: a local count or histogram becomes
    the whole tensor's. A no-op when ``like`` is not sharded (every rank already saw the whole tensor)."""
    for group in _shard_groups(like):
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def shard_count(n: int, like: torch.Tensor) -> int:
    """:func:`shard_sum` of one integer."""
    if not is_sharded(like):
        return int(n)
    return int(shard_sum(torch.tensor([int(n)], dtype=torch.int64, device=_comm_device(like)), like).item())


def _comm_device(like: torch.Tensor) -> torch.device:
    return like.to_local().device if is_dtensor(like) else like.device


def flat_range(like: torch.Tensor) -> tuple[int, int]:
    """``(start, stop)`` flat (row-major) indices of this rank's part, when that part is one contiguous run of
    the whole tensor: true for FSDP2's dim-0 split. ``NotImplementedError`` otherwise."""
    slices = local_slices(like)
    inner = 1
    for n in like.shape[1:]:
        inner *= n
    if any((s.start, s.stop) != (0, n) for s, n in zip(slices[1:], like.shape[1:])):
        raise NotImplementedError("this rank's part is not a contiguous run of rows (sharded beyond dim 0)")
    if not slices:
        return 0, like.numel()
    return slices[0].start * inner, slices[0].stop * inner


def shard_prefix(n: int, like: torch.Tensor) -> int:
    """Sum of ``n`` over the ranks whose parts of ``like`` come *before* this rank's in flat order (0 when not
    sharded). With it, "the first c ties in flat order" is decided per part without gathering the tensor."""
    if not is_sharded(like):
        return 0
    start, _ = flat_range(like)
    pairs = torch.tensor([[start, int(n)]], dtype=torch.int64, device=_comm_device(like))
    gathered = pairs
    for group in _shard_groups(like):
        parts = [torch.empty_like(gathered) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, gathered, group=group)
        gathered = torch.cat(parts)
    starts, counts = gathered[:, 0], gathered[:, 1]
    return int(counts[starts < start].sum())


def all_reduce_sum(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum ``x`` in place over ``group`` (default: every rank); a no-op without a process group."""
    if is_distributed() and dist.get_world_size(group) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x


def broadcast_(x: torch.Tensor, src: int = 0, group: Any = None) -> torch.Tensor:
    """Overwrite ``x`` with rank ``src``'s (every rank the same codebook to the last bit); no-op alone."""
    if is_distributed() and dist.get_world_size(group) > 1:
        data, dtype = _gather_safe(x)
        dist.broadcast(data, src=src, group=group)
        if data is not x:
            x.copy_(data.to(dtype))
    return x


def on_whole(fn: Callable[..., torch.Tensor], param: torch.Tensor, *parts: torch.Tensor) -> torch.Tensor:
    """``fn(whole param, *whole parts)`` cut back to this rank's part; ``fn(param, *parts)`` when not sharded.

    ``parts`` are tensors split like ``param`` (its current mask, ...). Every rank gathers the same layer and
    runs the same deterministic ``fn``, so every rank gets its part of one answer. Memory: one layer.
    """
    if not is_sharded(param):
        return fn(local_tensor(param), *parts)
    whole = fn(full_tensor(param), *(full_like(p, param) for p in parts))
    return shard_like(whole, param)


class Parts:
    """Sums over the parts of tensors split across ranks: one layer, or every layer of one FSDP2 mesh.

    ``Parts(param)`` or ``Parts([p1, p2, ...])``. Identity when nothing is sharded (single process, DDP: every
    rank holds whole tensors), so a mask or codebook rule written with it counts a whole tensor on one process
    and the parts of it on many, with the same code. All sharded tensors given must share one mesh; a mix of
    sharded and whole tensors is refused (a whole tensor's counts would be summed once per rank).
    """

    def __init__(self, like: torch.Tensor | Sequence[torch.Tensor] | None = None) -> None:
        likes = [] if like is None else [like] if isinstance(like, torch.Tensor) else list(like)
        sharded = [is_sharded(t) for t in likes]
        if any(sharded) and not all(sharded):
            raise ValueError("some tensors are sharded and some are whole on every rank: shard all of them "
                             "(fully_shard the modules that hold them) or none")
        self.likes = likes if any(sharded) else []
        self.sharded = bool(self.likes)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over the ranks (in place); ``x`` itself when nothing is sharded."""
        return shard_sum(x, self.likes[0]) if self.sharded else x

    def count(self, n: int) -> int:
        return shard_count(n, self.likes[0]) if self.sharded else int(n)

    def before(self, n: int, i: int = 0) -> int:
        """Sum of ``n`` over the ranks whose parts of the ``i``-th tensor precede this rank's in flat order."""
        return shard_prefix(n, self.likes[i]) if self.sharded else 0


class GatheredStateDict(Mapping):
    """A ``state_dict`` whose sharded values are gathered one at a time, when read.

    Handed to a writer that reads each tensor once, in order (the compressed export), it keeps at most two
    whole layers alive beside the model's own parts: the one being written, and the next one being gathered
    while a ``for`` loop still holds the last. Collective: every rank must read the same keys in the same
    order (run the same writer), even if only rank 0 keeps the result. ``peak_live`` counts the largest
    number of gathered tensors alive at once (what a test checks).
    """

    def __init__(self, state_dict: Mapping[str, Any]) -> None:
        self._state = state_dict
        self._live: list[weakref.ref] = []
        self.peak_live = 0

    def __getitem__(self, key: str) -> Any:
        value = self._state[key]
        if not is_dtensor(value):
            return value
        self._live = [r for r in self._live if r() is not None]
        whole = full_tensor(value)
        self._live.append(weakref.ref(whole))
        self.peak_live = max(self.peak_live, len(self._live))
        return whole

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


__all__ = [
    "GatheredStateDict",
    "Parts",
    "all_reduce_sum",
    "broadcast_",
    "flat_range",
    "full_like",
    "full_tensor",
    "is_distributed",
    "is_dtensor",
    "is_sharded",
    "local_slices",
    "local_tensor",
    "on_whole",
    "shard_count",
    "shard_like",
    "shard_prefix",
    "shard_sum",
]
