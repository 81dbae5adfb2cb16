"""GradualMagnitudePruning in real Trainer fits: exact zeros after every step, schedule timing, logging,
resume with identical masks, plain-model checkpoints, YAML configuration."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from helpers import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import GradualMagnitudePruning
from lightning_compress.callbacks._logging import tag
from lightning_compress.core.masks import unpack_mask
from lightning_compress.schedules import LinearSchedule, PolynomialSchedule
from lightning_compress.zoo import LeNet300100

N_BATCHES = 8
LAYERS = {"fc1.weight": 64 * 300, "fc2.weight": 300 * 100, "fc3.weight": 100 * 10}


def loader(n_batches: int = N_BATCHES, batch: int = 16, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * batch, 64, generator=g)
    y = (x[:, :10].argmax(1) + torch.randint(0, 2, (len(x),), generator=g)) % 10
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def model(**kw) -> LeNet300100:
    kw.setdefault("lr_scheduler", "none")
    return LeNet300100(in_features=64, **kw)


def trainer(callbacks, max_epochs=3, **kw) -> pl.Trainer:
    return tiny_trainer(callbacks, max_epochs, deterministic=True, **kw)


class ZeroProbe(Callback):
    """After every optimizer step, the pruned weights must be exactly zero; before clipping, grads too."""

    def __init__(self, pruning: GradualMagnitudePruning) -> None:
        self.pruning = pruning
        self.after_step_checks = 0
        self.grad_checks = 0
        self.pruned_counts: list[dict[str, int]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        for t in self.pruning.targets:
            mask = self.pruning.masks[t.name]
            assert (t.param.grad[~mask] == 0).all(), f"{t.name}: pruned gradient survived into clipping"
            self.grad_checks += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        counts = {}
        for t in self.pruning.targets:
            mask = self.pruning.masks[t.name]
            assert (t.param[~mask] == 0).all(), f"{t.name}: pruned weight moved off zero"
            # +0.0 bit for bit (a -0.0 would not round-trip through the compressed file unchanged)
            assert not torch.signbit(t.param[~mask]).any(), f"{t.name}: pruned weight is -0.0"
            counts[t.name] = int((~mask).sum())
            self.after_step_checks += 1
        self.pruned_counts.append(counts)


def check_final(cb: GradualMagnitudePruning, net: pl.LightningModule, sparsity: float) -> None:
    state = net.state_dict()
    for name, numel in LAYERS.items():
        w = state[name]
        assert int((w == 0).sum()) == round(sparsity * numel), name  # achieved == target up to rounding
        assert torch.equal(w != 0, cb.masks[name]), name  # zeros are exactly the mask (no survivors at 0)


@pytest.mark.parametrize(
    "opt, trainer_kw",
    [
        (dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-3), {}),
        (dict(optimizer="adam", lr=1e-2, weight_decay=1e-3), {}),
        (dict(optimizer="adamw", lr=1e-2, weight_decay=0.1), {}),
        (dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3),
         dict(accumulate_grad_batches=3, gradient_clip_val=0.05)),
        (dict(optimizer="adamw", lr=1e-2, weight_decay=0.1), dict(precision="bf16-mixed", gradient_clip_val=0.5)),
    ],
    ids=["sgd-momentum-wd", "adam", "adamw", "accumulate-clip", "bf16-mixed"],
)
def test_exact_zeros_under_optimizers_and_precision(opt, trainer_kw):
    pl.seed_everything(0)
    net = model(**opt)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cb = GradualMagnitudePruning(0.8, start_epoch=0, end_epoch=2, update_every=0.5)
    probe = ZeroProbe(cb)
    trainer([cb, probe], max_epochs=3, **trainer_kw).fit(net, loader())
    steps = -(-N_BATCHES // trainer_kw.get("accumulate_grad_batches", 1)) * 3
    assert probe.grad_checks == 3 * steps
    assert probe.after_step_checks == 3 * 3 * N_BATCHES
    check_final(cb, net, 0.8)
    # masks only grow, batch after batch
    for a, b in zip(probe.pruned_counts, probe.pruned_counts[1:]):
        assert all(b[k] >= a[k] for k in a)
    # the surviving weights did train, and biases were left alone (not selected by default)
    assert not torch.equal(net.fc1.weight[cb.masks["fc1.weight"]], before["fc1.weight"][cb.masks["fc1.weight"]])
    assert int((net.fc1.bias == 0).sum()) == 0


def test_schedule_timing_targets_and_logging(tmp_path):
    class Capture(Logger):
        name, version = "capture", 0

        def __init__(self):
            super().__init__()
            self.rows: list[tuple[int, dict]] = []

        def log_metrics(self, metrics, step=None):
            self.rows.append((step, dict(metrics)))

        def log_hyperparams(self, *args, **kwargs):
            pass

    pl.seed_everything(0)
    log = Capture()
    cb = GradualMagnitudePruning({"*": 0.9, "fc3*": 0.5}, start_epoch=0.5, end_epoch=2, update_every=0.5,
                                 schedule="cubic")
    t = trainer([cb], max_epochs=3, logger=log)
    t.fit(model(), loader())
    updates = [(s, m) for s, m in log.rows if tag("target_sparsity") in m]
    # 8 steps per epoch, update points 0.5, 1.0, 1.5, 2.0 epochs -> global steps 4, 8, 12, 16
    assert [s for s, _ in updates] == [4, 8, 12, 16]
    sched = PolynomialSchedule(start=0.5, end=2, power=3)
    for (step, m), point in zip(updates, [0.5, 1.0, 1.5, 2.0]):
        for name, final in (("fc1.weight", 0.9), ("fc2.weight", 0.9), ("fc3.weight", 0.5)):
            target = sched.target(point, final=final)
            assert m[tag("target_sparsity", name)] == pytest.approx(target)
            assert m[tag("sparsity", name)] == round(target * LAYERS[name]) / LAYERS[name]
        total = sum(LAYERS.values())
        assert m[tag("sparsity")] == pytest.approx(
            sum(m[tag("sparsity", n)] * LAYERS[n] for n in LAYERS) / total)
    assert updates[-1][1][tag("target_sparsity")] == pytest.approx((0.9 * 49200 + 0.5 * 1000) / 50200)
    assert t.progress_bar_metrics["sparsity"] == pytest.approx(updates[-1][1][tag("sparsity")])
    assert int((t.lightning_module.fc3.weight == 0).sum()) == 500


def test_global_scope_nm_and_han_criterion():
    pl.seed_everything(0)
    net = model()
    cb = GradualMagnitudePruning(0.9, start_epoch=0, end_epoch=1, scope="global")
    trainer([cb, ZeroProbe(cb)], max_epochs=2).fit(net, loader())
    zeros = {n: int((net.state_dict()[n] == 0).sum()) for n in LAYERS}
    assert sum(zeros.values()) == round(0.9 * sum(LAYERS.values()))
    assert len(set(z / LAYERS[n] for n, z in zeros.items())) > 1  # layers differ under a global ranking

    pl.seed_everything(0)
    net = model()
    cb = GradualMagnitudePruning(structure="2:4", start_epoch=0, end_epoch=1, update_every=0.5, schedule="linear")
    trainer([cb, ZeroProbe(cb)], max_epochs=2).fit(net, loader())
    for name in LAYERS:
        w = net.state_dict()[name]
        assert ((w != 0).view(w.shape[0], -1, 4).sum(-1) == 2).all(), name

    pl.seed_everything(0)
    net = model()
    cb = GradualMagnitudePruning(criterion="std", sensitivity={"*": 1.0, "fc3*": 0.5},
                                 schedule={0.5: 1.0, 1.0: 1.0, 1.5: 1.0})  # Han's three prune/retrain rounds
    probe = ZeroProbe(cb)
    trainer([cb, probe], max_epochs=2).fit(net, loader())
    first = probe.pruned_counts[4]  # right after the first round (step 4)
    assert 0.55 < first["fc1.weight"] / LAYERS["fc1.weight"] < 0.75  # P(|w| < std) ~ 0.68 for a Gaussian
    assert first["fc3.weight"] < first["fc1.weight"] * LAYERS["fc3.weight"] / LAYERS["fc1.weight"]
    assert probe.pruned_counts[-1]["fc1.weight"] >= first["fc1.weight"]
    for name in LAYERS:
        assert torch.equal(net.state_dict()[name] != 0, cb.masks[name])


def test_step_based_schedule_and_one_shot():
    pl.seed_everything(0)
    net = model()
    sched = LinearSchedule(start=3, end=9, frequency=3, unit="step", final_sparsity=0.6)
    cb = GradualMagnitudePruning(schedule=sched)
    probe = ZeroProbe(cb)
    trainer([cb, probe], max_epochs=2).fit(net, loader())
    # batch i runs at global step i; update points 3 (target 0), 6 (0.3) and 9 (0.6)
    fc1 = [c["fc1.weight"] for c in probe.pruned_counts]
    n = LAYERS["fc1.weight"]
    assert fc1[:6] == [0] * 6 and fc1[6:9] == [round(0.3 * n)] * 3
    assert set(fc1[9:]) == {round(0.6 * n)}

    pl.seed_everything(0)
    net = model()
    cb = GradualMagnitudePruning(0.95, start_epoch=1, schedule="constant")
    probe = ZeroProbe(cb)
    trainer([cb, probe], max_epochs=2).fit(net, loader())
    counts = [c["fc2.weight"] for c in probe.pruned_counts]
    assert counts[:N_BATCHES] == [0] * N_BATCHES and set(counts[N_BATCHES:]) == {round(0.95 * 30000)}


def _fit_with_checkpoints(tmp_path, max_epochs: int, ckpt_path=None):
    pl.seed_everything(0)
    net = model(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3)
    cb = GradualMagnitudePruning(0.9, start_epoch=0.25, end_epoch=3, update_every=0.25)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    t = trainer([cb, ckpt], max_epochs=max_epochs, enable_checkpointing=True)
    t.fit(net, loader(), ckpt_path=ckpt_path)
    return net, cb


def test_resume_mid_schedule_gives_identical_masks(tmp_path):
    straight, cb_straight = _fit_with_checkpoints(tmp_path / "a", max_epochs=4)
    mid = tmp_path / "a" / "ckpt" / "epoch=1.ckpt"  # after 2 epochs: schedule ends at 3
    saved = torch.load(mid, weights_only=False)
    cb_state = next(v for k, v in saved["callbacks"].items() if "GradualMagnitudePruning" in k)
    assert cb_state["last_point"] == 1.75  # the 2.0 update happens at the next batch
    packed = cb_state["masks"]["fc1.weight"]  # bit-packed: 1/8 byte per weight
    assert packed.dtype == torch.uint8 and packed.numel() == -(-LAYERS["fc1.weight"] // 8)
    mask = unpack_mask(packed, cb_state["mask_shapes"]["fc1.weight"])
    assert int((~mask).sum()) == int((saved["state_dict"]["fc1.weight"] == 0).sum()) > 0

    resumed, cb_resumed = _fit_with_checkpoints(tmp_path / "b", max_epochs=4, ckpt_path=mid)
    assert cb_resumed.last_point == cb_straight.last_point == 3.0
    for name in LAYERS:
        assert torch.equal(cb_resumed.masks[name], cb_straight.masks[name]), name
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key

    # the checkpoint is a plain model checkpoint: ordinary keys, exact zeros, strict load
    final = tmp_path / "a" / "ckpt" / "epoch=3.ckpt"
    plain = LeNet300100.load_from_checkpoint(final)
    assert set(plain.state_dict()) == set(model().state_dict())
    for name in LAYERS:
        assert int((plain.state_dict()[name] == 0).sum()) == round(0.9 * LAYERS[name])


def test_yaml_configuration(tmp_path):
    cli_mod = pytest.importorskip("lightning_compress.cli")
    config = tmp_path / "config.yaml"
    config.write_text(
        """
model:
  class_path: lightning_compress.zoo.LeNet300100
  init_args: {in_features: 784, lr_scheduler: none}
data:
  class_path: lightning_compress.zoo.data.DigitsDataModule
  init_args: {batch_size: 64, train_limit: 256}
trainer:
  max_epochs: 2
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_compress.GradualMagnitudePruning
      init_args:
        final_sparsity: {"*": 0.8, "fc3*": 0.5}
        start_epoch: 0
        end_epoch: 1
        update_every: 0.5
        schedule: linear
    - class_path: lightning_compress.callbacks.pruning.GradualMagnitudePruning
      init_args:
        exclude: ["fc1*"]
        schedule:
          class_path: lightning_compress.schedules.PolynomialSchedule
          init_args: {start: 0, end: 1, power: 2, final_sparsity: 0.3}
"""
    )
    # default_root_dir: the CLI saves its config.yaml there when fit starts
    cli = cli_mod.CompressCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    cbs = [c for c in cli.trainer.callbacks if isinstance(c, GradualMagnitudePruning)]
    assert len(cbs) == 2
    assert cbs[0].final_sparsity == {"*": 0.8, "fc3*": 0.5} and cbs[0].schedule_spec == "linear"
    assert isinstance(cbs[1].schedule, PolynomialSchedule) and cbs[1].schedule.power == 2
    cli.trainer.fit(cli.model, cli.datamodule)
    w = cli.model.state_dict()
    assert int((w["fc1.weight"] == 0).sum()) == round(0.8 * 784 * 300)
    # the second callback prunes fc2/fc3 to 30% in addition to what the first holds; both hold their masks
    assert int((w["fc3.weight"] == 0).sum()) >= round(0.5 * 1000)
    assert torch.equal(w["fc2.weight"] != 0, cbs[0].masks["fc2.weight"] & cbs[1].masks["fc2.weight"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "final_sparsity is required"),
        (dict(final_sparsity=1.5), "final_sparsity"),
        (dict(final_sparsity={"*": -0.1}), "final_sparsity"),
        (dict(final_sparsity=0.9, start_epoch=-1), "start_epoch"),
        (dict(final_sparsity=0.9, start_epoch=3, end_epoch=2), "end_epoch"),
        (dict(final_sparsity=0.9, update_every=0), "update_every"),
        (dict(final_sparsity=0.9, schedule="quartic"), "schedule"),
        (dict(final_sparsity=0.9, scope="model"), "scope"),
        (dict(final_sparsity={"*": 0.9}, scope="global"), "scope='global'"),
        (dict(final_sparsity=0.9, criterion="std"), "sensitivity"),
        (dict(criterion="std", sensitivity=-1), "sensitivity"),
        (dict(final_sparsity=0.9, sensitivity=1.0), "sensitivity"),
        (dict(structure="4:2"), "structure"),
        (dict(final_sparsity=0.9, structure="2:4"), "contradicts"),
        (dict(final_sparsity=1.0, schedule="exponential"), "exponential"),
        (dict(final_sparsity=0.2, initial_sparsity=0.5), "initial_sparsity"),
        (dict(final_sparsity=0.9, schedule={1: 0.9, 2: 0.5}), "milestones"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradualMagnitudePruning(**kwargs)


def test_setup_errors_name_the_layers():
    cb = GradualMagnitudePruning({"*": 0.5, "conv*": 0.9})  # a key that matches nothing warns (issue 13 item 5)
    with pytest.warns(UserWarning, match="final_sparsity key 'conv\\*' matches no selected layer"):
        trainer([cb], max_epochs=1).fit(model(), loader())
    cb = GradualMagnitudePruning(0.5, include=["decoder.*"])
    with pytest.raises(ValueError, match="include pattern 'decoder"):
        trainer([cb], max_epochs=1).fit(model(), loader())


def test_yaml_short_names_and_multistep_mapping(tmp_path):
    cli_mod = pytest.importorskip("lightning_compress.cli")
    config = tmp_path / "config.yaml"
    config.write_text(
        """
model: {class_path: LeNet300100}
data: {class_path: DigitsDataModule}
trainer:
  logger: false
  callbacks:
    - class_path: GradualMagnitudePruning
      init_args: {schedule: {1: 0.5, 2.5: 0.8}}
"""
    )
    cli = cli_mod.CompressCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, GradualMagnitudePruning)]
    assert cb.final_sparsity == 0.8  # taken from the last milestone
    assert cb.schedule.milestones == {1.0: 0.5, 2.5: 0.8}


class ManualOpt(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        for _ in range(2):  # two optimizer steps per batch: masks must hold after each
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def test_manual_optimization_default_timing_and_hook_cleanup():
    pl.seed_everything(0)
    net = ManualOpt()
    cb = GradualMagnitudePruning(0.75, schedule="linear")  # end_epoch = 0.75 * max_epochs, 10 updates
    probe = ZeroProbe(cb)
    t = trainer([cb, probe], max_epochs=4)
    t.fit(net, loader())
    assert cb.schedule.end == 3.0 and cb.schedule.frequency == pytest.approx(0.3)
    assert t.global_step == 2 * 4 * N_BATCHES
    # epochs count batches, not the two optimizer steps per batch: the last update is at batch 24 (epoch 3.0)
    counts = [c["net.0.weight"] for c in probe.pruned_counts]
    assert counts[23] < counts[24] == counts[-1] == round(0.75 * 64 * 32)
    for name, w in (("net.0.weight", net.net[0].weight), ("net.2.weight", net.net[2].weight)):
        assert int((w == 0).sum()) == round(0.75 * w.numel()), name
        assert torch.equal(w != 0, cb.masks[name])
    assert not t.optimizers[0]._optimizer_step_post_hooks  # removed at the end of the fit


# ------------------------------------------------------------------ changed settings and runs cut short (issue 13)
def _pruned_checkpoint(tmp_path, final=0.5):
    pl.seed_everything(0)
    cb = GradualMagnitudePruning(final, start_epoch=0, end_epoch=1)
    t = trainer([cb], max_epochs=2)
    t.fit(model(), loader())
    path = tmp_path / "pruned.ckpt"
    t.save_checkpoint(path)
    return path


def test_resume_after_the_ramp_with_a_higher_target_prunes_on(tmp_path, caplog):
    path = _pruned_checkpoint(tmp_path, 0.5)
    net = model()
    cb = GradualMagnitudePruning(0.8, start_epoch=0, end_epoch=1)
    with caplog.at_level("INFO"):
        trainer([cb, ZeroProbe(cb)], max_epochs=3).fit(net, loader(), ckpt_path=path)
    check_final(cb, net, 0.8)
    assert "fc1.weight 0.5 -> 0.8" in caplog.text and "pruning on to the new target" in caplog.text
    # the masks only grew: everything pruned at 0.5 is still pruned
    saved = torch.load(path, weights_only=False)["state_dict"]
    assert not bool((net.fc1.weight != 0)[saved["fc1.weight"] == 0].any())


def test_resume_after_the_ramp_with_a_lower_target_is_refused(tmp_path):
    from lightning_compress.errors import CompressionConfigError

    path = _pruned_checkpoint(tmp_path, 0.5)
    cb = GradualMagnitudePruning(0.3, start_epoch=0, end_epoch=1)
    with pytest.raises(CompressionConfigError, match=r"final_sparsity 0\.3 for fc1\.weight is below the 0\.5"):
        trainer([cb], max_epochs=3).fit(model(), loader(), ckpt_path=path)


def test_a_checkpoint_with_bool_masks_still_resumes(tmp_path):
    path = _pruned_checkpoint(tmp_path, 0.5)
    ckpt = torch.load(path, weights_only=False)
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("GradualMagnitudePruning")]
    state = ckpt["callbacks"][key]
    state["masks"] = {n: unpack_mask(m, state["mask_shapes"][n]) for n, m in state["masks"].items()}
    del state["mask_shapes"], state["levels"]  # as written before masks were bit-packed
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    net = model()
    cb = GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=1)
    trainer([cb, ZeroProbe(cb)], max_epochs=3).fit(net, loader(), ckpt_path=old)
    check_final(cb, net, 0.5)
    for name, mask in state["masks"].items():
        assert torch.equal(cb.masks[name], mask), name


class StopAfterFirstEpoch(Callback):
    """What EarlyStopping does when it fires: ask the Trainer to stop."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.mark.parametrize(
    "make, trainer_kw",
    [
        (lambda: GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=2), dict(max_epochs=3, max_steps=10)),
        (lambda: GradualMagnitudePruning(schedule=LinearSchedule(start=0, end=20, unit="step", final_sparsity=0.5)),
         dict(max_epochs=3, max_steps=10)),
        (lambda: GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=2), dict(max_epochs=2)),  # ends at the end
    ],
    ids=["epochs-vs-max_steps", "steps-vs-max_steps", "end_epoch-equals-max_epochs"],
)
def test_a_schedule_the_fit_cannot_finish_warns_before_training_and_is_recorded(make, trainer_kw):
    seen: list[str] = []

    class FirstStep(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not seen:
                seen.extend(str(w.message) for w in record)

    cb = make()
    net = model()
    t = trainer([cb, FirstStep()], **trainer_kw)
    with pytest.warns(UserWarning) as record:
        t.fit(net, loader())
    assert any("the final sparsity will not be reached" in m for m in seen), seen
    assert any("training stopped before the pruning schedule ended" in str(w.message) for w in record)
    claim = cb.describe(t, net)
    assert claim.unfinished and claim.unfinished[0].startswith("fc1.weight: ")
    assert claim.unfinished[0].endswith("50.0% asked")
    assert not claim.done


def test_early_stopping_before_the_ramp_ends_is_recorded():
    cb = GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=2)
    net = model()
    t = trainer([cb, StopAfterFirstEpoch()], max_epochs=4)
    with pytest.warns(UserWarning, match="training stopped before the pruning schedule ended"):
        t.fit(net, loader())
    assert cb.describe(t, net).unfinished


def test_a_finished_schedule_records_nothing():
    cb = GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=1)
    net = model()
    t = trainer([cb], max_epochs=2)
    t.fit(net, loader())
    claim = cb.describe(t, net)
    assert claim.unfinished == () and claim.done == frozenset(LAYERS) and claim.kind == "prune"
    assert claim.layers["fc1.weight"] == (0.0, 1.0)


def test_one_shot_needs_no_end_epoch_without_max_epochs():
    net = model()
    cb = GradualMagnitudePruning(0.5, schedule="constant")
    trainer([cb], max_epochs=-1, max_steps=4).fit(net, loader())
    check_final(cb, net, 0.5)


def test_steps_that_provably_keep_zeros_skip_remasking_and_a_breach_is_caught():
    """SGD with momentum keeps masked-gradient weights at +0.0 once their momentum is zeroed: no re-masking.
    A hook that writes gradients after the masking breaks that: the epoch-end check catches and repairs it."""
    pl.seed_everything(0)
    net = model(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)
    cb = GradualMagnitudePruning(0.8, start_epoch=0, schedule="constant")
    skipped = []
    decide = cb._step_kept_zeros
    cb._step_kept_zeros = lambda optimizer: skipped.append(decide(optimizer)) or skipped[-1]
    probe = ZeroProbe(cb)
    trainer([cb, probe], max_epochs=2).fit(net, loader())
    check_final(cb, net, 0.8)
    assert probe.after_step_checks == 3 * 2 * N_BATCHES  # exact +0.0 after every step...
    assert len(skipped) == 2 * N_BATCHES and all(skipped)  # ...without re-masking a single one

    class Noise(Callback):  # after the pruning callback: pruned gradients become non-zero again
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            for p in pl_module.parameters():
                if p.grad is not None:
                    p.grad.add_(1e-3)

    pl.seed_everything(0)
    net = model(optimizer="sgd", lr=0.1, momentum=0.9)
    cb = GradualMagnitudePruning(0.8, start_epoch=0, schedule="constant")
    with pytest.warns(UserWarning, match="held non-zero weights at the epoch end"):
        trainer([cb, Noise()], max_epochs=3).fit(net, loader())
    assert not cb._skip_proven_steps
    check_final(cb, net, 0.8)  # repaired at the first epoch end, re-masked after every step since


def test_an_export_after_a_cut_short_ramp_can_be_refused(tmp_path):
    from lightning_compress import ExportCompressed
    from lightning_compress.errors import CompressionConfigError

    cb = GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=2)
    export = ExportCompressed(tmp_path / "m.lcz", require_complete=True)
    with pytest.warns(UserWarning), pytest.raises(CompressionConfigError, match=r"GradualMagnitudePruning: fc1\.weight: "):
        trainer([cb, export], max_epochs=3, max_steps=10).fit(model(), loader())
    assert not (tmp_path / "m.lcz").exists()
