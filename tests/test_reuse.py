"""Callbacks reused across fits, validate/test-only runs, frozen layers, dtype/device moves between fits.

The rules these tests hold (also in docs/bad_input.md):

* the same callback objects in a second ``fit`` of the **same model** (same or new Trainer) continue: masks
  are kept (they only grow), shared layers are not clustered again, exactly one post-step hook per callback
  sits on each optimizer during a fit and none is left after it;
* the same callback objects on **another model** start afresh (its own masks, codebooks, factorization);
* ``validate``/``test`` runs change nothing: no weight, no hook, no file;
* **frozen** layers (``requires_grad=False``) are compressed like the others: pruning masks them at each update,
  sharing clusters them; having no gradient, they then stay exactly where the mask/codebook put them;
* masks and codebooks follow the parameters' device and dtype (``model.double()`` between fits).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from helpers import TinyNet, image_data, tiny_trainer

from lightning_compress import GradualMagnitudePruning, LowRankFactorization, WeightSharing
from lightning_compress.callbacks.export import ExportCompressed
from lightning_compress.callbacks.monitor import CompressionMonitor
from lightning_compress.core.lowrank import LowRankLinear


def data(n: int = 48) -> DataLoader:
    return image_data(n)


def trainer(callbacks, max_epochs: int = 3, **kw) -> pl.Trainer:
    return tiny_trainer(callbacks, max_epochs, **{"limit_train_batches": 3, "limit_val_batches": 2, **kw})


class HookProbe(pl.Callback):
    """Records, after every optimizer step, how many post-step hooks each optimizer holds."""

    def __init__(self) -> None:
        self.counts: set[int] = set()
        self.optimizers: list[torch.optim.Optimizer] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for opt in trainer.optimizers:
            self.counts.add(len(opt._optimizer_step_post_hooks))
            if opt not in self.optimizers:
                self.optimizers.append(opt)


def distinct_nonzero(w: torch.Tensor) -> int:
    return int(torch.unique(w[w != 0]).numel())


def pipeline():
    return (GradualMagnitudePruning(0.6, start_epoch=0, end_epoch=1, update_every=0.5, include=["fc1", "conv"]),
            WeightSharing(3, start_epoch=2, include=["fc1", "fc2"], evaluate=False, log_histograms=False))


def test_second_fit_of_the_same_model_continues_with_one_hook_per_callback():
    torch.manual_seed(0)
    model, (prune, share) = TinyNet(), pipeline()
    probe1 = HookProbe()
    trainer([prune, share, probe1]).fit(model, data())
    masks = {k: m.clone() for k, m in prune.masks.items()}
    codes = {k: s.assignment.clone() for k, s in share.codebooks.items()}
    assert probe1.counts == {2}  # pruning + sharing, once each
    assert all(len(o._optimizer_step_post_hooks) == 0 for o in probe1.optimizers), "stale hook after fit"

    # new Trainer, same callbacks and model: the schedule replays, masks only grow, nothing re-clusters
    probe2 = HookProbe()
    trainer([prune, share, probe2], max_epochs=2).fit(model, data())
    assert probe2.counts == {2} and all(len(o._optimizer_step_post_hooks) == 0 for o in probe2.optimizers)
    for name, mask in masks.items():
        assert torch.equal(prune.masks[name], mask), name
        w = model.get_parameter(name)
        assert torch.equal(w != 0, mask), name  # exactly the pruned positions are zero
    for name, assignment in codes.items():
        assert torch.equal(share.codebooks[name].assignment, assignment), name  # not clustered again
        assert distinct_nonzero(model.get_parameter(name)) <= 8, name

    # same Trainer once more: max_epochs already reached, nothing runs and nothing breaks
    t = trainer([prune, share])
    t.fit(model, data())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t.fit(model, data())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_callbacks_reused_on_another_model_start_afresh():
    torch.manual_seed(0)
    prune = GradualMagnitudePruning(0.6, start_epoch=0, end_epoch=1, update_every=0.5, include="conv")
    share = WeightSharing(3, start_epoch=2, include="fc2", evaluate=False, log_histograms=False)
    factorize = LowRankFactorization(rank=4, include="fc1", evaluate=False, verbose=False)
    first = TinyNet()
    trainer([prune, share, factorize]).fit(first, data())
    first_masks = {k: m.clone() for k, m in prune.masks.items()}
    first_centroids = share.codebooks["fc2.weight"].centroids.clone()
    assert isinstance(first.fc1, LowRankLinear)

    second = TinyNet()  # other initial weights
    trainer([prune, share, factorize]).fit(second, data())
    for name, mask in prune.masks.items():
        w = second.get_parameter(name)
        assert int((w == 0).sum()) == round(0.6 * w.numel()), name  # its own target, reached on its own weights
        assert not torch.equal(mask, first_masks[name]), name  # not the first model's masks
    clustered = share.codebooks["fc2.weight"]  # clustered on the second model's own weights
    assert not torch.equal(clustered.centroids, first_centroids)
    assert torch.equal(second.fc2.weight, clustered.decode()) and distinct_nonzero(second.fc2.weight) <= 8
    assert isinstance(second.fc1, LowRankLinear)  # factorized as well, not skipped as "done"


def test_validate_and_test_only_runs_change_nothing(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    out = tmp_path / "model.lcz"
    callbacks = [*pipeline(), LowRankFactorization(rank=4, evaluate=False, verbose=False), CompressionMonitor(),
                 ExportCompressed(out)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = trainer(callbacks)
    t.validate(model, data(), verbose=False)
    t.test(model, data(), verbose=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not out.exists()
    assert type(model.fc1) is nn.Linear and callbacks[0].masks == {} and callbacks[1].codebooks == {}
    assert not model._load_state_dict_pre_hooks  # factorization's checkpoint pre-hook is gone after teardown

    t.fit(model, data())  # then a fit, then evaluation again: still nothing moves
    after_fit = {k: v.clone() for k, v in model.state_dict().items()}
    assert out.exists()
    t.validate(model, data(), verbose=False)
    t.test(model, data(), verbose=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in after_fit.items())
    assert not model._load_state_dict_pre_hooks


def test_frozen_layers_are_pruned_and_shared_and_stay_put():
    torch.manual_seed(0)
    for only_trainable in (False, True):  # frozen weight inside the optimizer (no grad) or left out of it
        model = TinyNet(frozen=("fc1",), only_trainable=only_trainable)
        original = model.fc1.weight.detach().clone()
        prune = GradualMagnitudePruning(0.75, start_epoch=0, end_epoch=1, include=["fc1", "conv"])
        trainer([prune], max_epochs=2).fit(model, data())
        w = model.fc1.weight
        assert int((w == 0).sum()) == round(0.75 * w.numel())  # masked by the documented rule
        assert torch.equal(w, original * prune.masks["fc1.weight"])  # and otherwise untouched

        share = WeightSharing(2, start_epoch=0, include="fc1", evaluate=False, log_histograms=False)
        trainer([share], max_epochs=2).fit(model, data())
        clustered = share.codebooks["fc1.weight"]
        assert torch.equal(w, clustered.decode())  # W = C[I] exactly, zeros kept
        assert distinct_nonzero(w) <= 4 and int((w == 0).sum()) == round(0.75 * w.numel())


def test_masks_and_codebooks_follow_the_model_to_double_between_fits():
    torch.manual_seed(0)
    model, (prune, share) = TinyNet(), pipeline()
    trainer([prune, share]).fit(model, data())
    masks = {k: m.clone() for k, m in prune.masks.items()}
    model.double()
    trainer([prune, share], max_epochs=2).fit(model, data())
    for name, mask in masks.items():
        w = model.get_parameter(name)
        assert w.dtype == torch.float64
        assert prune.masks[name].dtype == torch.bool and prune.masks[name].device == w.device
        assert torch.equal(w != 0, mask), name
    for name, shared in share.codebooks.items():
        w = model.get_parameter(name)
        assert shared.assignment.dtype == torch.uint8 and shared.assignment.device == w.device
        assert distinct_nonzero(w) <= 8
        assert torch.equal(w, shared.decode().to(w.dtype)), name


def test_no_stale_or_duplicate_hooks_when_factorization_rebuilds_optimizers_mid_fit():
    torch.manual_seed(0)
    model = TinyNet()
    prune = GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=1, include="fc2")
    share = WeightSharing(3, start_epoch=0, include="conv", evaluate=False, log_histograms=False)
    probe = HookProbe()
    trainer([prune, share, LowRankFactorization(rank=4, epoch=1, include="fc1", evaluate=False, verbose=False), probe],
            max_epochs=3).fit(model, data())
    assert isinstance(model.fc1, LowRankLinear)
    assert len(probe.optimizers) == 2  # the original and the rebuilt optimizer
    assert probe.counts == {2}, probe.counts  # one hook per callback, before and after the rebuild
    assert all(len(o._optimizer_step_post_hooks) == 0 for o in probe.optimizers), "stale hook after fit"
    w = model.fc2.weight
    assert int((w == 0).sum()) == w.numel() // 2 and torch.equal(w != 0, prune.masks["fc2.weight"])
    assert distinct_nonzero(model.conv.weight) <= 8
