"""Which strategies each callback accepts (callbacks/_strategy.py), without launching processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from lightning_compress import CompressionConfigError
from lightning_compress.callbacks._strategy import refuse_sharded_strategy, sharded_strategy


def _deepspeed(stage: int) -> DeepSpeedStrategy:
    strategy = DeepSpeedStrategy.__new__(DeepSpeedStrategy)  # the real class; deepspeed itself is not installed
    strategy.config = {"zero_optimization": {"stage": stage}}
    return strategy


def _trainer(strategy):
    return SimpleNamespace(strategy=strategy)


@pytest.mark.parametrize("strategy", [FSDPStrategy(), _deepspeed(3)], ids=["fsdp1", "zero3"])
@pytest.mark.parametrize("sharded_ok", [False, True])
def test_partitioned_strategies_are_refused_pointing_to_model_parallel(strategy, sharded_ok):
    with pytest.raises(CompressionConfigError, match=rf"GradualMagnitudePruning does not support "
                                                     rf"{type(strategy).__name__}: .*ModelParallelStrategy\("
                                                     rf"data_parallel_size=N, tensor_parallel_size=1\).*fully_shard"):
        refuse_sharded_strategy(_trainer(strategy), "GradualMagnitudePruning", sharded_ok=sharded_ok)


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_stages_1_and_2_keep_whole_parameters(stage):
    assert not sharded_strategy(_deepspeed(stage))
    refuse_sharded_strategy(_trainer(_deepspeed(stage)), "WeightSharing")


def test_fsdp2_accepted_only_by_callbacks_that_gather():
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    refuse_sharded_strategy(_trainer(strategy), "WeightSharing", sharded_ok=True)
    with pytest.raises(CompressionConfigError, match="WeightSharing does not support ModelParallelStrategy: .*ddp"):
        refuse_sharded_strategy(_trainer(strategy), "WeightSharing")


def test_factorization_refusal_says_what_to_do():
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    with pytest.raises(CompressionConfigError, match=r"LowRankFactorization does not support ModelParallelStrategy: "
                                                     r"it replaces modules.*Mid-fit: use strategy='ddp'.*Post-hoc: "
                                                     r".*load_compressed"):
        refuse_sharded_strategy(_trainer(strategy), "LowRankFactorization")


@pytest.mark.parametrize("tp", [2, "auto"])
def test_tensor_parallelism_refused(tp):
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=tp)
    if tp == "auto":  # Lightning decides at launch (all local devices go to tensor parallelism): refused as unknown
        strategy._tensor_parallel_size = "auto"
    with pytest.raises(CompressionConfigError, match=rf"data-parallel sharding only .*tensor_parallel_size={tp}"):
        refuse_sharded_strategy(_trainer(strategy), "CompressionMonitor", sharded_ok=True)


def test_deferred_state_armed_applies_late_state_at_once():
    from lightning_compress.callbacks._plumbing import DeferredState

    seen = []
    deferred = DeferredState()
    deferred.hold({"a": 1})  # DDP order: load_state_dict before on_fit_start
    deferred.arm(seen.append)  # on_fit_start
    assert seen == [{"a": 1}] and deferred.take() is None
    deferred.hold({"b": 2})  # ModelParallelStrategy order: load_state_dict after on_fit_start
    assert seen == [{"a": 1}, {"b": 2}]
    deferred.disarm()
    deferred.hold({"c": 3})
    assert seen == [{"a": 1}, {"b": 2}] and deferred.take() == {"c": 3}


def test_each_callback_under_fsdp2(tmp_path):
    """Only LowRankFactorization refuses FSDP2 in setup; the others pass the strategy check."""
    from torch import nn

    from lightning_compress import (
        CompressionMonitor, ExportCompressed, GradualMagnitudePruning, LowRankFactorization, WeightSharing,
    )

    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    for callback in (GradualMagnitudePruning(0.5, end_epoch=1), WeightSharing(3), CompressionMonitor(),
                     ExportCompressed(tmp_path / "m.lcz"), LowRankFactorization(rank=2)):
        trainer = SimpleNamespace(strategy=strategy, callbacks=[callback])
        try:
            callback.setup(trainer, model, "fit")
        except CompressionConfigError as err:
            assert type(callback) is LowRankFactorization and "does not support ModelParallelStrategy" in str(err)
        except Exception as err:  # noqa: BLE001 - the namespace trainer lacks what later checks read: past the refusal
            assert "does not support" not in str(err), err
        else:
            assert type(callback) is not LowRankFactorization


def test_fisher_weighting_refused_under_fsdp2():
    from torch import nn

    from lightning_compress import WeightSharing

    trainer = SimpleNamespace(strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))
    with pytest.raises(CompressionConfigError, match="weighting='fisher' is not supported under ModelParallelStrategy"):
        WeightSharing(3, weighting="fisher").setup(trainer, nn.Sequential(nn.Linear(4, 4)), "fit")
