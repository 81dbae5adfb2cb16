"""WeightSharing in real Trainer runs: invariants after every step, schedules, resume, logging, YAML."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from helpers import TinyNet, image_data, tiny_trainer
from torch import nn

from lightning_compress import WeightSharing
from lightning_compress.core.sharing import decode
from lightning_compress.schedules.events import EventSchedule


def loaders(n: int = 96, seed: int = 0):
    """Shuffled train batches of 16, validation batches of 32, over the same ``n`` images."""
    return image_data(n, 16, seed, shuffle=True), image_data(n, 32, seed)


def make_trainer(tmp_path, callbacks, max_epochs=2, **kw):
    return tiny_trainer(callbacks, max_epochs, default_root_dir=tmp_path, **kw)


def hand_prune(model: TinyNet, fraction: float = 0.5) -> dict[str, torch.Tensor]:
    """Zero the smallest-magnitude ``fraction`` of fc1 by hand; return the zero masks of every weight."""
    with torch.no_grad():
        w = model.fc1.weight
        thresh = w.abs().flatten().kthvalue(int(fraction * w.numel())).values
        w[w.abs() <= thresh] = 0.0
    return {n: (p == 0).clone() for n, p in model.named_parameters() if n.endswith("weight")}


class HoldZeros(Callback):
    """Stand-in for a pruning callback: keeps the hand-pruned zeros at zero after every batch."""

    def __init__(self, zeros: dict[str, torch.Tensor]):
        self.zeros = zeros

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            for name, p in pl_module.named_parameters():
                if name in self.zeros:
                    p[self.zeros[name]] = 0.0


class InvariantChecker(Callback):
    """After every training batch: at most k distinct non-zero values per shared layer, pruned zeros kept."""

    def __init__(self, sharing: WeightSharing, zeros: dict[str, torch.Tensor]):
        self.sharing, self.zeros = sharing, zeros
        self.checked_steps = 0
        self.first_centroids: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.named_parameters())
        for name, shared in self.sharing.codebooks.items():
            w = params[name].detach()
            k = 2 ** self.sharing._bits[name]
            distinct = torch.unique(w[w != 0])
            assert distinct.numel() <= k, f"{name}: {distinct.numel()} distinct values > k={k}"
            assert distinct.numel() <= shared.k
            assert torch.all(w[self.zeros[name]] == 0), f"{name}: a pruned weight moved"
            assert torch.equal(w, shared.decode().to(w.dtype)), f"{name}: weights differ from C[assignment]"
            self.first_centroids.setdefault(name, shared.centroids.clone())
        if self.sharing.codebooks:
            self.checked_steps += 1


OPTIMIZER_CASES = [
    pytest.param("sgd", {}, id="sgd-momentum-wd"),
    pytest.param("adam", {}, id="adam"),
    pytest.param("adamw", {}, id="adamw"),
    pytest.param("sgd", {"accumulate_grad_batches": 2}, id="sgd-accumulate2"),
    pytest.param("adamw", {"precision": "bf16-mixed"}, id="adamw-bf16-mixed"),
    pytest.param("sgd", {"gradient_clip_val": 0.01}, id="sgd-clip"),
]


@pytest.mark.parametrize("optimizer,trainer_kw", OPTIMIZER_CASES)
def test_at_most_k_values_and_zeros_stay_zero_after_every_step(tmp_path, optimizer, trainer_kw):
    torch.manual_seed(0)
    model = TinyNet(optimizer=optimizer)
    zeros = hand_prune(model)
    train, val = loaders()
    # Clustering after an epoch of training: momentum / Adam state then differs inside each cluster.
    sharing = WeightSharing({"conv": 3, "linear": 2}, start_epoch=1, evaluate=False)
    checker = InvariantChecker(sharing, zeros)
    make_trainer(tmp_path, [HoldZeros(zeros), sharing, checker], max_epochs=3, **trainer_kw).fit(model, train, val)

    assert set(sharing.codebooks) == {"conv.weight", "fc1.weight", "fc2.weight"}
    assert checker.checked_steps == 2 * 6  # 2 epochs of 6 batches
    for name, shared in sharing.codebooks.items():
        k = 8 if name == "conv.weight" else 4
        assert 1 <= shared.k <= k
        # the pruned half of fc1 is not a cluster: exactly its zeros carry the reserved code
        assert torch.equal(shared.assignment.long() == shared.k, zeros[name])
        # the centroids were trained, not frozen
        assert not torch.allclose(shared.centroids, checker.first_centroids[name])
    fc1 = model.fc1.weight.detach()
    assert int((fc1 == 0).sum()) == int(zeros["fc1.weight"].sum())


def test_plain_sgd_moves_each_centroid_by_lr_times_summed_gradient(tmp_path):
    """Without momentum/decay the projection is a no-op: C_k(t+1) = C_k(t) - lr * sum of member gradients."""

    class Plain(TinyNet):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Probe(Callback):  # runs before WeightSharing: sees the raw per-weight gradient
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if sharing.codebooks:
                self.before = sharing.codebooks["fc2.weight"].centroids.clone()
                self.grad = pl_module.fc2.weight.grad.clone()
                self.raw = True

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if getattr(self, "raw", False):
                self.after = sharing.codebooks["fc2.weight"].centroids.clone()

    torch.manual_seed(1)
    sharing = WeightSharing(2, start_step=2, include="fc2", evaluate=False)
    probe = Probe()
    train, _ = loaders()
    make_trainer(tmp_path, [probe, sharing], max_epochs=1, limit_train_batches=3).fit(Plain(), train)
    shared = sharing.codebooks["fc2.weight"]
    idx = shared.assignment.long()
    assert shared.k == 4
    for j in range(shared.k):
        summed = probe.grad[idx == j].sum()
        assert int((idx == j).sum()) > 1
        assert torch.allclose(probe.after[0, j], probe.before[0, j] - 0.01 * summed, atol=1e-6), j


def test_layer_by_layer_on_steps(tmp_path):
    seen: dict[int, set] = {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[trainer.global_step] = set(sharing.codebooks)

    sharing = WeightSharing(2, start_step=2, layer_interval=2, evaluate=False)
    train, _ = loaders()
    make_trainer(tmp_path, [sharing, Record()], max_epochs=2).fit(TinyNet(), train)
    # layer i is clustered before the batch that makes step 2 + 2 i (recorded after it, at step 3 + 2 i)
    assert seen[2] == set()
    assert seen[3] == {"conv.weight"}
    assert seen[5] == {"conv.weight", "fc1.weight"}
    assert seen[7] == {"conv.weight", "fc1.weight", "fc2.weight"}


def test_weights_zeroed_after_clustering_stay_zero(tmp_path):
    """Another callback (a pruner) zeroing shared weights later: those become pruned, not a cluster."""

    class LatePruner(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                with torch.no_grad():
                    pl_module.fc1.weight[:, :8] = 0.0

    sharing = WeightSharing(3, start_epoch=1, evaluate=False)
    train, _ = loaders()
    model = TinyNet(optimizer="adam")
    make_trainer(tmp_path, [sharing, LatePruner()], max_epochs=3).fit(model, train)
    w = model.fc1.weight.detach()
    assert torch.all(w[:, :8] == 0)
    assert torch.unique(w[w != 0]).numel() <= 8
    assert torch.all(sharing.codebooks["fc1.weight"].assignment[:, :8].long() == sharing.codebooks["fc1.weight"].k)


def test_resume_restores_codebooks_and_assignments_exactly(tmp_path):
    torch.manual_seed(0)
    train, val = loaders()
    model = TinyNet(optimizer="adamw")
    zeros = hand_prune(model)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    sharing = WeightSharing({"fc1": 3, "*": 4}, start_epoch=0, init="kmeans++", evaluate=False)
    make_trainer(tmp_path, [sharing, ckpt], max_epochs=2, enable_checkpointing=True).fit(model, train, val)
    saved = {n: (s.centroids.clone(), s.assignment.clone()) for n, s in sharing.codebooks.items()}
    assert saved["fc1.weight"][1].dtype == torch.uint8

    restored: dict = {}

    class Capture(Callback):
        def on_fit_start(self, trainer, pl_module):  # runs after WeightSharing.on_fit_start
            restored.update({n: (s.centroids.clone(), s.assignment.clone()) for n, s in sharing2.codebooks.items()})
            restored["weights"] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    sharing2 = WeightSharing({"fc1": 3, "*": 4}, start_epoch=0, init="kmeans++", evaluate=False)
    model2 = TinyNet(optimizer="adamw")
    checker = InvariantChecker(sharing2, zeros)
    make_trainer(tmp_path, [sharing2, Capture(), checker], max_epochs=4, enable_checkpointing=True).fit(
        model2, train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    for name, (c, a) in saved.items():
        assert torch.equal(restored[name][0], c)
        assert torch.equal(restored[name][1], a) and restored[name][1].dtype == a.dtype
        # assignments stay frozen through the resumed epochs (no re-clustering)
        assert torch.equal(sharing2.codebooks[name].assignment, a)
    assert checker.checked_steps == 2 * 6
    for name, (c, a) in saved.items():
        assert torch.equal(restored["weights"][name], decode(c, a))  # the model is exactly C[assignment]


def test_logs_bits_rates_accuracy_and_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    train, val = loaders()
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    sharing = WeightSharing(start_epoch=1, eval_batches=2)  # default bits: conv 8, linear 5
    make_trainer(tmp_path, [sharing], max_epochs=2, logger=logger).fit(TinyNet(), train, val)
    logger.experiment.flush()
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for t in ("compress/bits/conv.weight", "compress/bits/fc1.weight", "compress/codebook_size/fc2.weight",
              "compress/sharing_rate/fc1.weight", "compress/sharing_rate", "compress/sharing/bits_per_weight",
              "compress/sharing/accuracy_before", "compress/sharing/accuracy_after", "compress/sharing/accuracy_drop"):
        assert t in scalars, t
    assert acc.Scalars("compress/bits/fc1.weight")[0].value == 5
    conv_k = sharing.codebooks["conv.weight"].k  # 36 weights < 256: every distinct value kept
    assert conv_k == 36 and acc.Scalars("compress/codebook_size/conv.weight")[0].value == 36
    fc1 = sharing.codebooks["fc1.weight"]
    n = fc1.assignment.numel()
    assert acc.Scalars("compress/sharing_rate/fc1.weight")[0].value == pytest.approx(n * 32 / (n * 5 + 32 * 32), rel=1e-6)
    before = acc.Scalars("compress/sharing/accuracy_before")[0].value
    after = acc.Scalars("compress/sharing/accuracy_after")[0].value
    assert 0 <= before <= 1 and 0 <= after <= 1 and sharing.accuracy_before == pytest.approx(before)
    hists = set(acc.Tags()["histograms"])
    assert "compress/sharing/weights_before/fc1.weight" in hists and "compress/sharing/centroids/fc1.weight" in hists


def test_accuracy_before_after_is_measured_on_validation_data(tmp_path):
    """The 'just before' accuracy equals the accuracy of the unshared model on the same batches."""
    torch.manual_seed(0)
    train, val = loaders()
    model = TinyNet()
    measured: dict = {}

    class Measure(Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # runs before WeightSharing's hook
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    x, y = next(iter(val))
                    pl_module.eval()
                    measured["acc"] = float((pl_module(x).argmax(-1) == y).float().mean())
                    pl_module.train()

    sharing = WeightSharing(1, start_epoch=1, eval_batches=1)
    make_trainer(tmp_path, [Measure(), sharing], max_epochs=2).fit(model, train, val)
    assert sharing.accuracy_before == pytest.approx(measured["acc"])
    assert sharing.accuracy_after is not None


def test_constructor_validates_arguments():
    with pytest.raises(MisconfigurationException, match="bits"):
        WeightSharing(0)
    with pytest.raises(MisconfigurationException, match="bits"):
        WeightSharing({"fc1": 17})
    with pytest.raises(MisconfigurationException, match="start_epoch or start_step"):
        WeightSharing(4, start_epoch=1, start_step=10)
    with pytest.raises(MisconfigurationException, match="init"):
        WeightSharing(4, init="gaussian")
    with pytest.raises(MisconfigurationException, match="reduction"):
        WeightSharing(4, reduction="max")
    with pytest.raises(MisconfigurationException, match="start_epoch"):
        WeightSharing(4, start_epoch=-1)
    with pytest.raises(MisconfigurationException, match="layer_interval"):
        WeightSharing(4, layer_interval=-2)


def test_bits_glob_that_matches_nothing_warns_at_setup(tmp_path):
    # (core.targets now warns about a per-layer key that decides nothing, instead of failing: issue 13 item 5)
    train, _ = loaders()
    with pytest.warns(UserWarning, match="fc9"):
        make_trainer(tmp_path, [WeightSharing({"fc9": 4, "*": 5})], max_epochs=1).fit(TinyNet(), train)
    with pytest.raises(ValueError, match="no value for layers"):
        make_trainer(tmp_path, [WeightSharing({"fc1": 4})], max_epochs=1).fit(TinyNet(), train)


def test_event_schedule():
    s = EventSchedule(start=3, unit="step", interval=2)
    names = ["a", "b", "c"]
    assert s.times(names) == {"a": 3, "b": 5, "c": 7}
    assert s.due(names, 2) == []
    assert s.due(names, 5) == ["a", "b"]
    assert s.due(names, 5, done=["a"]) == ["b"]
    assert s.due(names, 100, done=["a", "b", "c"]) == []
    assert EventSchedule(start=1).due(names, 1) == names  # interval 0: all at once
    assert s.last_time(3) == 7
    with pytest.raises(ValueError, match="unit"):
        EventSchedule(unit="hour")
    with pytest.raises(ValueError, match="start"):
        EventSchedule(start=-1)


def test_yaml_configuration(tmp_path):
    from lightning_compress.cli import CompressCLI

    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        """
model:
  class_path: lightning_compress.zoo.models.LeNet300100
data:
  class_path: lightning_compress.zoo.data.DigitsDataModule
trainer:
  accelerator: cpu
  callbacks:
    - class_path: lightning_compress.WeightSharing
      init_args:
        bits: {"linear": 6, "fc1*": 4}
        start_epoch: 3
        layer_interval: 1
        init: density
        reduction: mean
"""
    )
    cli = CompressCLI(args=["--config", str(cfg)], run=False)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, WeightSharing)]
    assert cb.bits == {"linear": 6, "fc1*": 4}
    assert (cb.schedule.start, cb.schedule.unit, cb.schedule.interval) == (3, "epoch", 1)
    assert (cb.init, cb.reduction) == ("density", "mean")
    cb.setup(cli.trainer, cli.model, "fit")
    # later mapping entries win: "fc1*" overrides the "linear" default
    assert cb._bits == {"fc1.weight": 4, "fc2.weight": 6, "fc3.weight": 6}


# ---- grouped codebooks, Fisher weighting, changed settings on resume, claims ----


def distinct_per_group(w: torch.Tensor, rows: int) -> list[int]:
    return [torch.unique(w[i : i + rows][w[i : i + rows] != 0]).numel() for i in range(0, w.shape[0], rows)]


class GroupChecker(Callback):
    """After every training batch: exactly the codebooks' values, at most k per group, pruned zeros kept."""

    def __init__(self, sharing: WeightSharing, zeros: dict[str, torch.Tensor]):
        self.sharing, self.zeros, self.checked_steps, self.most = sharing, zeros, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.named_parameters())
        for name, shared in self.sharing.codebooks.items():
            w = params[name].detach()
            k = 2 ** self.sharing._bits[name]
            counts = distinct_per_group(w, shared.rows_per_group)
            assert len(counts) == shared.groups and max(counts) <= min(k, shared.k), (name, counts)
            self.most = max(self.most, max(counts))
            assert torch.all(w[self.zeros[name]] == 0), f"{name}: a pruned weight moved"
            assert torch.equal(w, shared.decode().to(w.dtype)), f"{name}: weights differ from C[assignment]"
        if self.sharing.codebooks:
            self.checked_steps += 1


GROUP_CASES = [
    pytest.param("sgd", {}, "channel", "linear", id="sgd-momentum-wd-channel"),
    pytest.param("adam", {}, 3, "linear", id="adam-groups3"),
    pytest.param("adamw", {}, "channel", "linear", id="adamw-wd-channel"),
    pytest.param("sgd", {"accumulate_grad_batches": 2}, 5, "linear", id="sgd-accumulate2-groups5"),
    pytest.param("sgd", {}, "channel", "optimal", id="sgd-channel-optimal"),
    pytest.param("adamw", {}, 3, "optimal", id="adamw-groups3-optimal"),
]


@pytest.mark.parametrize("optimizer,trainer_kw,granularity,init", GROUP_CASES)
def test_grouped_codebooks_hold_at_most_k_values_per_group_after_every_step(
    tmp_path, optimizer, trainer_kw, granularity, init
):
    torch.manual_seed(0)
    model = TinyNet(optimizer=optimizer)
    zeros = hand_prune(model)
    train, val = loaders()
    sharing = WeightSharing(2, start_epoch=1, evaluate=False, include="fc*", granularity=granularity, init=init)
    checker = GroupChecker(sharing, zeros)
    first = {}

    class First(Callback):
        def on_train_epoch_start(self, trainer, pl_module):  # after WeightSharing's hook: the fresh codebooks
            if trainer.current_epoch == 1:
                first.update({n: s.centroids.clone() for n, s in sharing.codebooks.items()})

    make_trainer(tmp_path, [HoldZeros(zeros), sharing, First(), checker], max_epochs=3, **trainer_kw).fit(model, train, val)
    assert checker.checked_steps == 2 * 6 and checker.most >= 2
    fc1, fc2 = sharing.codebooks["fc1.weight"], sharing.codebooks["fc2.weight"]
    rows = {"channel": 1, 3: 3, 5: 5}[granularity]
    assert fc1.rows_per_group == rows and fc1.groups == -(-32 // rows) and fc1.centroids.shape == (fc1.groups, 3)
    assert fc2.centroids.shape == (-(-3 // rows), 4)  # fc2 has no zeros: 4 centroids; fc1 is pruned: 3
    assert torch.equal(fc1.assignment.long() == fc1.k, zeros["fc1.weight"])
    for name, shared in sharing.codebooks.items():  # every codebook trained
        assert not torch.allclose(shared.centroids, first[name])


def test_projection_reads_one_member_per_cluster_for_elementwise_optimizers_only(tmp_path):
    """SGD's state is made uniform per cluster at clustering; a subclass gets the cluster means."""
    from lightning_compress.callbacks._sharing_layers import projection_for

    class MySGD(torch.optim.SGD):
        pass

    p = [nn.Parameter(torch.zeros(2))]
    assert projection_for(torch.optim.SGD(p, lr=0.1), synced=True) == "representative"
    assert projection_for(torch.optim.SGD(p, lr=0.1), synced=False) == "mean"
    assert projection_for(MySGD(p, lr=0.1), synced=True) == "mean"

    class Momentum(TinyNet):  # momentum built up before clustering differs per weight
        def configure_optimizers(self):
            return MySGD(self.parameters(), lr=0.05, momentum=0.9)

    for model in (TinyNet(optimizer="sgd"), Momentum()):
        torch.manual_seed(0)
        zeros = hand_prune(model)
        sharing = WeightSharing(3, start_epoch=1, evaluate=False, granularity="channel")
        checker = GroupChecker(sharing, zeros)
        trainer = make_trainer(tmp_path, [HoldZeros(zeros), sharing, checker], max_epochs=2)
        trainer.fit(model, loaders()[0])
        assert checker.checked_steps == 6
        shared = sharing.codebooks["fc1.weight"]
        buf = trainer.optimizers[0].state[model.fc1.weight]["momentum_buffer"]
        assert torch.allclose(buf, shared.decode(shared.recenter(buf)), rtol=1e-5, atol=1e-9)  # uniform per cluster


def test_fisher_diagonal_is_the_mean_squared_training_loss_gradient(tmp_path):
    from lightning_compress.callbacks._sharing_calibration import fisher_importance as fisher_diagonal

    torch.manual_seed(0)
    model = TinyNet()
    train, _ = loaders()
    batches = [next(iter(train)) for _ in range(3)]
    expected = torch.zeros_like(model.fc1.weight)
    for b in batches:
        model.zero_grad()
        model.training_step(b, 0).backward()
        expected += model.fc1.weight.grad.square() / 3
    model.fc1.weight.grad = marker = torch.full_like(model.fc1.weight, 7.0)
    (fisher,) = fisher_diagonal(model, [model.fc1.weight], iter(batches))
    assert torch.allclose(fisher, expected, rtol=1e-5, atol=1e-12)
    assert model.fc1.weight.grad is marker  # the fit's gradients are left as they were


def _supports_weights() -> bool:
    import inspect

    from lightning_compress.core.kmeans import kmeans_1d

    return "weights" in inspect.signature(kmeans_1d).parameters


@pytest.mark.skipif(not _supports_weights(), reason="weighted k-means (core.kmeans weights=) not merged yet")
def test_fisher_weighting_lowers_the_importance_weighted_error(tmp_path):
    from lightning_compress.callbacks._sharing_calibration import fisher_importance as fisher_diagonal
    from lightning_compress.core.sharing import cluster_weight

    torch.manual_seed(0)
    model = TinyNet()
    train, _ = loaders()
    batches = list(train)[:4]
    (fisher,) = fisher_diagonal(model, [model.fc1.weight], iter(batches))
    w = model.fc1.weight.detach()
    plain = cluster_weight(w, 4, granularity="channel")
    weighted = cluster_weight(w, 4, granularity="channel", importance=fisher)

    def err(s):
        return float((fisher * (s.decode() - w) ** 2).sum())

    assert err(weighted) < err(plain)
    sharing = WeightSharing(2, start_epoch=1, evaluate=False, include="fc1", granularity="channel",
                            weighting="fisher", calibration_batches=2)
    model = TinyNet()
    make_trainer(tmp_path, [sharing], max_epochs=2).fit(model, train)
    assert max(distinct_per_group(model.fc1.weight.detach(), 1)) == 4
    assert sharing.codebooks["fc1.weight"].groups == 32


@pytest.mark.parametrize("old_bits,new_bits", [(3, 2), (2, 3)], ids=["lower", "raise"])
def test_resume_with_other_bits_reclusters_from_the_current_weights(tmp_path, caplog, old_bits, new_bits):
    torch.manual_seed(0)
    train, _ = loaders()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    first = WeightSharing(old_bits, start_epoch=0, evaluate=False, include="fc1")
    make_trainer(tmp_path, [first, ckpt], max_epochs=1, enable_checkpointing=True).fit(TinyNet(), train)
    assert first.codebooks["fc1.weight"].k == 2**old_bits

    model = TinyNet()
    second = WeightSharing(new_bits, start_epoch=0, evaluate=False, include="fc1")
    checker = GroupChecker(second, {"fc1.weight": torch.zeros(32, 64, dtype=torch.bool)})
    with caplog.at_level("INFO"):
        make_trainer(tmp_path, [second, checker], max_epochs=2, enable_checkpointing=True).fit(
            model, train, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    text = caplog.text
    assert f"bits {old_bits} -> {new_bits}" in text and "re-clustering" in text
    shared = second.codebooks["fc1.weight"]
    assert second.state_dict()["layers"]["fc1.weight"]["bits"] == new_bits
    values = torch.unique(model.fc1.weight.detach()).numel()
    if new_bits < old_bits:
        assert shared.k == 2**new_bits and values == 2**new_bits  # 8 values became 4
    else:
        assert shared.k == 2**old_bits and values <= 2**old_bits and "cannot bring back" in text
    assert checker.checked_steps == 6


def test_describe_claims_each_layer_at_its_clustering_time(tmp_path):
    sharing = WeightSharing(2, start_step=4, layer_interval=3, evaluate=False)
    model = TinyNet()
    claim = sharing.describe(None, model)
    assert (claim.owner, claim.kind, claim.unit) == ("WeightSharing", "share", "step")
    assert dict(claim.layers) == {"conv.weight": (4.0, 4.0), "fc1.weight": (7.0, 7.0), "fc2.weight": (10.0, 10.0)}
    assert claim.done == frozenset()
    make_trainer(tmp_path, [sharing], max_epochs=2).fit(model, loaders()[0])
    assert sharing.describe(None, model).done == {"conv.weight", "fc1.weight", "fc2.weight"}


def test_constructor_validates_new_arguments():
    from lightning_compress import CompressionConfigError

    for kwargs, name in [({"granularity": "row"}, "granularity"), ({"granularity": 0}, "granularity"),
                         ({"granularity": True}, "granularity"), ({"weighting": "hessian"}, "weighting"),
                         ({"calibration_batches": 0}, "calibration_batches"), ({"evaluate": "no"}, "evaluate"),
                         ({"eval_batches": True}, "eval_batches"), ({"seed": 1.5}, "seed")]:
        with pytest.raises(CompressionConfigError, match=name):
            WeightSharing(4, **kwargs)


def test_auto_bits_meet_the_average_budget_and_hold_per_layer_k(tmp_path, caplog):
    torch.manual_seed(0)
    model = TinyNet(optimizer="adamw")
    zeros = hand_prune(model)
    sharing = WeightSharing("auto", target_bits=4.5, start_epoch=1, evaluate=False, weighting="fisher",
                            calibration_batches=2)
    checker = GroupChecker(sharing, zeros)
    with caplog.at_level("INFO"):
        make_trainer(tmp_path, [HoldZeros(zeros), sharing, checker], max_epochs=2).fit(model, loaders()[0])
    assert checker.checked_steps == 6 and "bits='auto'" in caplog.text
    assert set(sharing.chosen_bits) == {"conv.weight", "fc1.weight", "fc2.weight"}
    assert all(2 <= b <= 8 for b in sharing.chosen_bits.values()) and len(set(sharing.chosen_bits.values())) > 1
    stored = sum(s.stored_bits() for s in sharing.codebooks.values())
    kept = sum(s.kept() for s in sharing.codebooks.values())
    assert stored / kept <= 4.5  # codebooks included
    for name, shared in sharing.codebooks.items():
        assert shared.k <= 2 ** sharing.chosen_bits[name]
        assert sharing.state_dict()["layers"][name]["bits"] == sharing.chosen_bits[name]


def test_auto_bits_arguments_and_an_impossible_budget(tmp_path):
    from lightning_compress import CompressionConfigError

    with pytest.raises(CompressionConfigError, match="target_bits"):
        WeightSharing("auto")
    with pytest.raises(CompressionConfigError, match="target_bits"):
        WeightSharing(4, target_bits=3.0)
    with pytest.raises(CompressionConfigError, match="bits"):
        WeightSharing("many")
    sharing = WeightSharing("auto", target_bits=2.0, evaluate=False)  # fc2's 96 weights need 2 bits + 4 floats
    with pytest.raises(CompressionConfigError, match="target_bits=2.0"):
        make_trainer(tmp_path, [sharing], max_epochs=1).fit(TinyNet(), loaders()[0])


def test_steps_reuse_one_index_and_state_is_one_byte_per_weight(tmp_path):
    """No per-step conversion of the assignments: the (group, code) index is built once per codebook."""
    seen: dict[str, set] = {}

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            for name, shared in sharing.codebooks.items():
                seen.setdefault(name, set()).add(id(shared.flat_index()))

    sharing = WeightSharing(4, start_epoch=0, evaluate=False, granularity=4)
    make_trainer(tmp_path, [sharing, Watch()], max_epochs=2).fit(TinyNet(optimizer="adam"), loaders()[0])
    assert all(len(ids) == 1 for ids in seen.values()) and len(seen) == 3
    state = sharing.state_dict()["layers"]
    for name, entry in state.items():
        assert entry["assignment"].dtype == torch.uint8 and entry["rows_per_group"] in (3, 4)  # fc2 has 3 rows: one codebook
    from lightning_compress.callbacks._sharing_layers import sharing_metrics

    per_weight = sharing_metrics(sharing._layers)["compress/sharing/state_bytes_per_weight"]
    weights = sum(e["assignment"].numel() for e in state.values())
    floats = sum(e["centroids"].numel() for e in state.values())
    assert per_weight == pytest.approx((weights + 4 * floats) / weights)


def test_version_1_state_with_one_dimensional_codebooks_resumes(tmp_path):
    """Checkpoints written before grouped codebooks: ``(k,)`` centroids, no rows_per_group, version 1."""
    torch.manual_seed(0)
    model = TinyNet()
    first = WeightSharing(3, start_epoch=0, evaluate=False)
    make_trainer(tmp_path, [first], max_epochs=1).fit(model, loaders()[0])
    v1 = {"version": 1, "accuracy_before": None, "accuracy_after": None,
          "layers": {n: {"bits": e["bits"], "centroids": e["centroids"].reshape(-1), "assignment": e["assignment"]}
                     for n, e in first.state_dict()["layers"].items()}}
    second = WeightSharing(3, start_epoch=0, evaluate=False)
    second.load_state_dict(v1)
    checker = GroupChecker(second, {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()})
    make_trainer(tmp_path, [second, checker], max_epochs=1).fit(model, loaders()[0])
    assert checker.checked_steps == 6
    for name, entry in v1["layers"].items():
        shared = second.codebooks[name]
        assert shared.groups == 1 and torch.equal(shared.assignment, entry["assignment"])  # not clustered again
