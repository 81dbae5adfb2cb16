"""Strategies the compression callbacks refuse: those that shard each parameter across ranks.

Under FSDP (and ``ModelParallelStrategy``'s FSDP2/tensor parallelism, DeepSpeed ZeRO stage 3) a rank holds
only a slice of each weight. Magnitude masks need the whole layer's ranking, k-means the whole layer's
values, an SVD the whole matrix, statistics and the export the whole tensor; computed on a slice they are
wrong and differ between ranks. The callbacks fail in ``setup``, before any training step, and point to
DDP, where every rank holds the full parameters. See ``docs/reliability.md``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException


def sharded_strategy(strategy: Any) -> bool:
    """Whether ``strategy`` leaves each rank with only a shard of the parameters."""
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
        return True
    return isinstance(strategy, DeepSpeedStrategy) and bool(getattr(strategy, "zero_stage_3", False))


def refuse_sharded_strategy(trainer: Any, owner: str) -> None:
    """Raise ``MisconfigurationException`` naming ``owner`` when ``trainer`` shards the parameters."""
    strategy = getattr(trainer, "strategy", None)
    if sharded_strategy(strategy):
        raise MisconfigurationException(
            f"{owner} does not support {type(strategy).__name__}: it shards every parameter across ranks, so "
            "masks, codebooks, factorizations and statistics computed on one rank's shard would be wrong and "
            "differ between ranks. Use strategy='ddp' (each rank holds the full parameters)."
        )


__all__ = ["refuse_sharded_strategy", "sharded_strategy"]
