"""Which training strategies a compression callback runs under, decided once in ``setup``.

Three kinds of strategy:

* **full parameters on every rank** (single device, DDP, DeepSpeed ZeRO stages 1-2, which shard only the
  optimizer state and gradients): every callback runs; each rank computes the same masks and codebooks.
* **FSDP2** (Lightning's ``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model``): each parameter
  is a ``DTensor`` and a rank holds only its rows. A callback that works on sharded parameters (gathering one
  layer at a time or all-reducing sums, :mod:`lightning_compress.core.distributed`) declares it with
  ``sharded_ok=True``; the others refuse it.
* **parameters partitioned outside DTensor** (``FSDPStrategy``, i.e. FSDP1 with flat parameters, and DeepSpeed
  ZeRO stage 3): a rank has no per-tensor view of its part, so every callback refuses them and points to
  ``ModelParallelStrategy``.

A refusal happens in ``setup``, before any training step, with a message naming the callback, the strategy and
what to use instead. See ``docs/reliability.md`` ("Strategies").
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from lightning_compress.errors import CompressionConfigError

_USE_FSDP2 = ("use ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1) with "
              "torch.distributed.fsdp.fully_shard in your LightningModule's configure_model (FSDP2), "
              "or strategy='ddp'")


#: What to do instead, for the callbacks that cannot run under FSDP2 at all.
_FSDP2_INSTEAD = {
    "LowRankFactorization": (
        "it replaces modules, while FSDP2 fixes the module tree and each parameter's shards in configure_model. "
        "Mid-fit: use strategy='ddp'. Post-hoc: write the trained weights with ExportCompressed (it gathers "
        "one layer at a time) or a checkpoint, load them into the plain model in one process "
        "(lightning_compress.load_compressed(path, Model())) and factorize there, e.g. with a one-process "
        "Trainer and LowRankFactorization(), then fine-tune the factors under either strategy"
    ),
}


def partitioned_strategy(strategy: Any) -> bool:
    """FSDP1 or DeepSpeed ZeRO-3: parameters partitioned without a per-tensor (``DTensor``) view."""
    if isinstance(strategy, FSDPStrategy):
        return True
    return isinstance(strategy, DeepSpeedStrategy) and bool(getattr(strategy, "zero_stage_3", False))


def fsdp2_strategy(strategy: Any) -> bool:
    """Lightning's ``ModelParallelStrategy``: parameters become ``DTensor`` parts in ``configure_model``."""
    return isinstance(strategy, ModelParallelStrategy)


def sharded_strategy(strategy: Any) -> bool:
    """Whether ``strategy`` leaves each rank with only a part of the parameters."""
    return partitioned_strategy(strategy) or fsdp2_strategy(strategy)


def _tensor_parallel_size(strategy: Any) -> Any:
    """The mesh's tensor-parallel size once Lightning built it (``setup`` runs after), else the argument."""
    mesh = getattr(strategy, "_device_mesh", None)
    if mesh is not None and "tensor_parallel" in (mesh.mesh_dim_names or ()):
        return mesh["tensor_parallel"].size()
    return getattr(strategy, "_tensor_parallel_size", 1)


def refuse_sharded_strategy(trainer: Any, owner: str, *, sharded_ok: bool = False) -> None:
    """Raise ``CompressionConfigError`` naming ``owner`` when it cannot run under ``trainer``'s strategy.

    ``sharded_ok``: ``owner`` works on FSDP2 ``DTensor`` parameters (then only FSDP1, DeepSpeed ZeRO-3 and
    tensor parallelism are refused).
    """
    strategy = getattr(trainer, "strategy", None)
    name = type(strategy).__name__
    if partitioned_strategy(strategy):
        raise CompressionConfigError(
            f"{owner} does not support {name}: it shards every parameter across ranks as flat partitions, so "
            f"no rank sees a layer as a tensor and masks, codebooks and statistics cannot be computed per layer; "
            f"{_USE_FSDP2}."
        )
    if not fsdp2_strategy(strategy):
        return
    if not sharded_ok:
        why = _FSDP2_INSTEAD.get(owner, f"it shards every parameter across ranks, and {owner} needs the whole of "
                                        "each layer, which it does not gather. Use strategy='ddp' (each rank holds "
                                        "the full parameters)")
        raise CompressionConfigError(f"{owner} does not support {name}: {why}.")
    tp = _tensor_parallel_size(strategy)
    if tp != 1:
        raise CompressionConfigError(
            f"{owner} supports ModelParallelStrategy for data-parallel sharding only (FSDP2, dim 0 of each "
            f"parameter split across ranks), got tensor_parallel_size={tp}; use tensor_parallel_size=1."
        )


__all__ = ["fsdp2_strategy", "partitioned_strategy", "refuse_sharded_strategy", "sharded_strategy"]
