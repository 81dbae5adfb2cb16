"""LowRankFactorization callback: post-hoc and mid-fit factorization, optimizer rebuild, resume, inference
loading, YAML configuration and 2-process DDP."""

from __future__ import annotations

import textwrap

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from helpers import tiny_trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import LowRankFactorization
from lightning_compress.callbacks.factorization import CHECKPOINT_KEY, load_factorized
from lightning_compress.core.lowrank import LowRankLinear, TuckerConv2d
from lightning_compress.zoo.models import LeNet5, LeNet300100


def _blobs(n=256, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, 10, generator=g)
    x = torch.randn(n, d, generator=g)
    return TensorDataset(x, (x @ w).argmax(1))


def _loaders(n=256, d=64, bs=32):
    ds = _blobs(n, d)
    return DataLoader(ds, batch_size=bs, shuffle=False), DataLoader(_blobs(96, d, seed=0), batch_size=bs)


class CaptureLogger(Logger):
    def __init__(self):
        super().__init__()
        self.metrics: dict[str, float] = {}

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_hyperparams(self, *args, **kwargs):
        pass


def _trainer(callbacks, max_epochs=1, logger=False, **kw):
    return tiny_trainer(callbacks, max_epochs, logger=logger, **kw)


def test_validation_of_arguments():
    with pytest.raises(MisconfigurationException, match="only one of"):
        LowRankFactorization(energy=0.9, rank=3)
    with pytest.raises(MisconfigurationException, match="energy"):
        LowRankFactorization(energy=1.2)
    with pytest.raises(MisconfigurationException, match="param_ratio"):
        LowRankFactorization(param_ratio={"*": 1.5})
    with pytest.raises(MisconfigurationException, match="epoch"):
        LowRankFactorization(epoch=-1)
    assert LowRankFactorization().rule_kind == "energy" and LowRankFactorization().rule_value == 0.9


def test_posthoc_factorizes_logs_and_leaves_unprofitable_layers():
    torch.manual_seed(0)
    model = LeNet300100(in_features=64, lr_scheduler="none")
    logger = CaptureLogger()
    # fc1 (300x64) at rank 64 would cost 64*364 > 19200: left dense; fc2/fc3 at rank 8 save
    cb = LowRankFactorization(rank={"*": 8, "fc1": 64})
    train, val = _loaders()
    _trainer([cb], logger=logger).fit(model, train, val)
    assert isinstance(model.fc2, LowRankLinear) and model.fc2.rank == 8
    assert isinstance(model.fc3, LowRankLinear) and model.fc3.rank == 8
    assert isinstance(model.fc1, torch.nn.Linear) and not isinstance(model.fc1, LowRankLinear)
    fc1 = next(r for r in cb.plan if r.name == "fc1")
    assert not fc1.applied and "no parameter saving" in fc1.reason
    assert "left dense: no parameter saving" in cb.table()
    m = logger.metrics
    assert m["compress/rank/fc2"] == 8 and m["compress/params_before/fc2"] == 30000
    assert m["compress/params_after/fc2"] == 8 * 400 and m["compress/params_after/fc1"] == 19200
    assert m["compress/macs_before/fc3"] == 1000 and m["compress/macs_after/fc3"] == 8 * 110
    assert 0 < m["compress/energy/fc2"] < 1
    assert m["compress/lowrank/params_ratio"] == pytest.approx((19200 + 3200 + 880) / (19200 + 30000 + 1000))
    assert {"compress/lowrank/acc_before", "compress/lowrank/acc_after"} <= set(m)
    assert cb.factorized_at_epoch == 1  # post-hoc: after the one epoch of training


def test_posthoc_tucker_on_conv_net_with_measured_macs():
    torch.manual_seed(0)
    model = LeNet5(lr_scheduler="none")
    x, y = torch.randn(48, 1, 28, 28), torch.randint(0, 10, (48,))
    dl = DataLoader(TensorDataset(x, y), batch_size=16)
    cb = LowRankFactorization(rank={"conv*": [10, 20], "fc*": 10}, exclude=["fc2"])
    _trainer([cb]).fit(model, dl, dl)
    assert isinstance(model.conv2, TuckerConv2d) and model.conv2.ranks == (10, 20)
    assert isinstance(model.fc1, LowRankLinear) and isinstance(model.fc2, torch.nn.Linear)
    rec = {r.name: r for r in cb.plan}
    # conv1 has one input channel: Tucker ranks clip to (1, 20) and 1*1 + 1*20*25 + 20*20 > 500 weights
    assert rec["conv1"].ranks == (1, 20) and not rec["conv1"].applied and isinstance(model.conv1, torch.nn.Conv2d)
    assert rec["conv2"].params_after == 20 * 10 + 10 * 20 * 25 + 20 * 50 < rec["conv2"].params_before == 25000
    assert rec["conv2"].macs_before == 8 * 8 * 50 * 20 * 25  # conv2 sees 12x12 inputs, gives 8x8 outputs
    assert rec["conv2"].macs_after == 144 * 20 * 10 + 64 * (10 * 20 * 25 + 20 * 50)
    assert 0 < rec["conv2"].energy < 1 and set(cb.accuracy) == {"acc_before", "acc_after"}


def test_tucker_conv_replaced_and_outputs_match_at_full_rank_inside_model():
    torch.manual_seed(0)
    model = LeNet5(lr_scheduler="none").eval()
    x = torch.randn(4, 1, 28, 28)
    ref = model(x)
    cb = LowRankFactorization(rank=[20, 50], include=["conv2"], evaluate=False, verbose=False)
    plan = cb.make_plan(model)
    assert [(r.name, r.ranks) for r in plan] == [("conv2", (20, 50))]
    from lightning_compress.core import lowrank as lr

    lr.replace_module(model, "conv2", lr.factorize_module(model.conv2, plan[0]))
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)


class Probe(pl.Callback):
    """Runs after the factorization callback: records what the optimizer holds at each epoch start."""

    def __init__(self):
        self.seen = {}

    def on_train_epoch_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        params = [p for g in opt.param_groups for p in g["params"]]
        fc1 = pl_module.fc1
        self.seen[trainer.current_epoch] = dict(
            factorized=isinstance(fc1, LowRankLinear),
            holds_factors=isinstance(fc1, LowRankLinear) and any(p is fc1.first.weight for p in params)
            and any(p is fc1.second.weight for p in params),
            n_params=len(params),
            first=fc1.first.weight.detach().clone() if isinstance(fc1, LowRankLinear) else None,
            lr=opt.param_groups[0]["lr"],
            sched_epoch=trainer.lr_scheduler_configs[0].scheduler.last_epoch,
            fc3_momentum="momentum_buffer" in opt.state.get(pl_module.fc3.weight, {}),
        )


def test_midfit_rebuild_trains_factors_and_carries_schedule(tmp_path):
    torch.manual_seed(0)
    model = LeNet300100(in_features=64, lr=0.05, lr_scheduler="step", step_size=1, gamma=0.5)
    cb = LowRankFactorization(rank=6, epoch=1, include=["fc1", "fc2"])
    probe = Probe()
    train, val = _loaders()
    trainer = _trainer([cb, probe], max_epochs=2)
    trainer.fit(model, train, val)
    before, after = probe.seen[0], probe.seen[1]
    assert not before["factorized"] and before["n_params"] == 6
    assert after["factorized"] and after["holds_factors"]
    assert after["n_params"] == 8  # fc1/fc2: first, second.weight, second.bias each; fc3: weight, bias
    assert after["lr"] == pytest.approx(0.025) and after["sched_epoch"] == 1  # StepLR continued, not restarted
    assert after["fc3_momentum"]  # surviving parameters keep their momentum
    assert not torch.equal(after["first"], model.fc1.first.weight.detach())  # the factors trained
    assert {"acc_before", "acc_after", "acc_finetuned"} <= set(cb.accuracy)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0125)


def test_resume_after_factorization_and_inference_loading(tmp_path):
    torch.manual_seed(0)
    model = LeNet300100(in_features=64, lr_scheduler="step", step_size=1, gamma=0.5)
    train, val = _loaders()
    cb = LowRankFactorization(energy=0.8, epoch=1)
    trainer = _trainer([cb], max_epochs=2)
    trainer.fit(model, train, val)
    ckpt = tmp_path / "factorized.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    raw = torch.load(ckpt, weights_only=False)
    plan = raw[CHECKPOINT_KEY]
    assert plan == [r.as_dict() for r in cb.applied_plan] and plan[0]["name"] == "fc1" and plan[0]["kind"] == "svd"

    # resume: a fresh dense model and a fresh callback; the architecture is rebuilt before weights load
    class AtFitStart(pl.Callback):
        def on_fit_start(self, trainer, pl_module):
            self.sd = {k: v.clone() for k, v in pl_module.state_dict().items()}

    fresh = LeNet300100(in_features=64, lr_scheduler="step", step_size=1, gamma=0.5)
    cb2, at_start = LowRankFactorization(energy=0.8, epoch=1), AtFitStart()
    t2 = _trainer([cb2, at_start], max_epochs=3)
    t2.fit(fresh, train, val, ckpt_path=ckpt)
    assert at_start.sd.keys() == saved.keys()
    assert all(torch.equal(at_start.sd[k], saved[k]) for k in saved)
    assert cb2.factorized_at_epoch == 1 and [r.ranks for r in cb2.applied_plan] == [tuple(p["ranks"]) for p in plan]
    assert t2.current_epoch == 3
    assert t2.lr_scheduler_configs[0].scheduler.last_epoch == 3
    assert not torch.equal(fresh.state_dict()[f"{plan[0]['name']}.first.weight"], saved[f"{plan[0]['name']}.first.weight"])

    # inference loading into a plain model, from the Lightning checkpoint and from a bare state_dict
    x = torch.randn(5, 64)
    expected = model.eval()(x)
    plain = load_factorized(str(ckpt), LeNet300100(in_features=64)).eval()
    assert isinstance(getattr(plain, plan[0]["name"]), LowRankLinear)
    torch.testing.assert_close(plain(x), expected)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    plain2 = load_factorized(str(tmp_path / "weights.pt"), LeNet300100(in_features=64)).eval()
    torch.testing.assert_close(plain2(x), expected)


def test_pruned_or_shared_layers_need_force():
    torch.manual_seed(0)
    model = LeNet300100(in_features=64)
    with torch.no_grad():
        model.fc1.weight[:, :32] = 0  # half pruned
        levels = torch.tensor([-0.1, -0.03, 0.03, 0.1])
        model.fc2.weight.copy_(levels[torch.randint(0, 4, model.fc2.weight.shape)])  # 4 shared values
    plan = {r.name: r for r in LowRankFactorization(rank=4).make_plan(model)}
    assert not plan["fc1"].applied and "already pruned" in plan["fc1"].reason and "force=True" in plan["fc1"].reason
    assert not plan["fc2"].applied and "already shared (4 distinct values)" in plan["fc2"].reason
    assert plan["fc3"].applied
    forced = {r.name: r for r in LowRankFactorization(rank=4, force=True).make_plan(model)}
    assert forced["fc1"].applied and forced["fc2"].applied


def test_factors_not_factorized_twice():
    from lightning_compress.core import lowrank as lr

    model = LeNet300100(in_features=64)
    cb = LowRankFactorization(rank=4)
    for rec in cb.make_plan(model):
        lr.replace_module(model, rec.name, lr.factorize_module(model.get_submodule(rec.name), rec))
    assert cb.make_plan(model) == []  # every candidate now sits inside a factorized module


def test_yaml_configuration(tmp_path):
    from lightning_compress.cli import CompressCLI

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(textwrap.dedent("""
        model:
          class_path: lightning_compress.zoo.models.LeNet300100
          init_args: {in_features: 64}
        data:
          class_path: lightning_compress.zoo.data.DigitsDataModule
        trainer:
          accelerator: cpu
          logger: false
          callbacks:
            - class_path: lightning_compress.LowRankFactorization
              init_args:
                param_ratio: {"*": 0.3, "fc3": 0.5}
                epoch: 2
                exclude: [fc3]
                hooi_iters: 2
    """))
    cli = CompressCLI(args=["--config", str(cfg)], run=False)
    cbs = [c for c in cli.trainer.callbacks if isinstance(c, LowRankFactorization)]
    assert len(cbs) == 1
    cb = cbs[0]
    assert cb.rule_kind == "ratio" and cb.rule_value == {"*": 0.3, "fc3": 0.5}
    assert cb.epoch == 2 and cb.exclude == ["fc3"] and cb.hooi_iters == 2


DDP_SCRIPT = """
import sys, torch
import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset
from lightning_compress import LowRankFactorization
from lightning_compress.zoo.models import LeNet300100

class Snap(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.at = {k: v.clone() for k, v in pl_module.state_dict().items()}
            opt = trainer.optimizers[0]
            held = {id(p) for g in opt.param_groups for p in g["params"]}
            self.held = all(id(p) in held for p in pl_module.parameters())
            self.ddp_params = {id(p) for p in trainer.strategy.model.parameters()} == {id(p) for p in pl_module.parameters()}

def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 10, generator=g); x = torch.randn(256, 64, generator=g)
    ds = TensorDataset(x, (x @ w).argmax(1))
    model = LeNet300100(in_features=64, lr_scheduler="none")
    cb, snap = LowRankFactorization(energy=0.7, epoch=1), Snap()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, callbacks=[cb, snap],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(ds, batch_size=32), DataLoader(ds, batch_size=64))
    torch.save(dict(ranks=[(r.name, r.ranks) for r in cb.applied_plan], at=snap.at, held=snap.held,
                    ddp=snap.ddp_params, final=model.state_dict(), acc=cb.accuracy),
               f"rank{trainer.global_rank}.pt")

if __name__ == "__main__":
    main()
"""


def test_ddp_two_processes_identical_factors(run_script, tmp_path):
    run_script(DDP_SCRIPT, timeout=240)
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in range(2))
    assert r0["ranks"] == r1["ranks"] and len(r0["ranks"]) >= 2
    assert r0["held"] and r1["held"] and r0["ddp"] and r1["ddp"]
    for k in r0["final"]:
        assert torch.equal(r0["at"][k], r1["at"][k]), k
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    name = r0["ranks"][0][0]
    assert not torch.equal(r0["at"][f"{name}.first.weight"], r0["final"][f"{name}.first.weight"])
    assert r0["acc"] == r1["acc"]


def test_composition_with_pruning_factorize_first(tmp_path):
    from lightning_compress import GradualMagnitudePruning

    torch.manual_seed(0)
    train, val = _loaders(n=128)
    model = LeNet300100(in_features=64, lr_scheduler="none")
    _trainer([LowRankFactorization(rank=8)]).fit(model, train, val)
    # the factors are ordinary Linears: pruning selects and prunes them like any layer
    _trainer([GradualMagnitudePruning(final_sparsity=0.5, start_epoch=0, end_epoch=1, schedule="constant")]).fit(
        model, train, val)
    for name in ("fc1.first", "fc1.second", "fc2.first", "fc3.second"):
        w = model.get_submodule(name).weight
        assert int((w == 0).sum()) == w.numel() // 2, name
    torch.save(model.state_dict(), tmp_path / "w.pt")
    plain = load_factorized(str(tmp_path / "w.pt"), LeNet300100(in_features=64))
    assert torch.equal(plain.fc1.first.weight, model.fc1.first.weight)

    # the other order in one fit: layers pruned during the fit are not factorized post-hoc without force=True
    dense = LeNet300100(in_features=64, lr_scheduler="none")
    cb = LowRankFactorization(rank=8, evaluate=False)
    pruning = GradualMagnitudePruning(final_sparsity=0.5, start_epoch=0, end_epoch=1, schedule="constant",
                                      include=["fc1", "fc2"])
    _trainer([pruning, cb]).fit(dense, train, val)
    assert type(dense.fc1) is torch.nn.Linear and type(dense.fc2) is torch.nn.Linear
    assert isinstance(dense.fc3, LowRankLinear)
    assert "already pruned" in cb.table() and "force=True" in cb.table()


def test_dense_checkpoint_loads_back_into_a_posthoc_factorized_model(tmp_path):
    """``trainer.test(ckpt_path=<checkpoint written before the post-hoc factorization>)`` must still load."""
    torch.manual_seed(0)
    train, val = _loaders(n=64)
    model = LeNet300100(in_features=64, lr_scheduler="none")
    trainer = tiny_trainer([LowRankFactorization(rank=4, evaluate=False)], 1, enable_checkpointing=True,
                           default_root_dir=tmp_path)
    trainer.fit(model, train, val)
    assert isinstance(model.fc1, LowRankLinear)
    ckpt = trainer.checkpoint_callback.best_model_path  # written before on_train_end: dense
    dense_sd = torch.load(ckpt, weights_only=False)["state_dict"]
    assert "fc1.weight" in dense_sd
    trainer.validate(model, val, ckpt_path=ckpt, verbose=False)
    assert type(model.fc1) is torch.nn.Linear and torch.equal(model.fc1.weight, dense_sd["fc1.weight"])
