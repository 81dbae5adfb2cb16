"""Cross-callback rules on hand-written claims: no Trainer, no callback classes."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lightning_compress.callbacks import _conflicts
from lightning_compress.callbacks._claims import Claim
from lightning_compress.callbacks._conflicts import (
    callback_label,
    check_compression_callbacks,
    conflict,
    mixed_unit_conflict,
    unreachable,
)
from lightning_compress.errors import CompressionConfigError


def prune(unit="epoch", start=0.0, end=2.0, layers=("fc1.weight",), done=()):
    return Claim("GradualMagnitudePruning", "prune", unit, {n: (start, end) for n in layers}, frozenset(done))


def share(unit="epoch", at=1.0, layers=("fc1.weight",), done=()):
    return Claim("WeightSharing", "share", unit, {n: (at, at) for n in layers}, frozenset(done))


def factorize(epoch=1.0, layers=("fc1.weight",), posthoc=False):
    span = (float("inf"),) * 2 if posthoc else (epoch, epoch)
    return Claim("LowRankFactorization", "factorize", "epoch", {n: span for n in layers}, posthoc=posthoc)


def labeled(*claims):
    return [(callback_label(c.owner, i), c) for i, c in enumerate(claims, start=1)]


def test_labels_are_one_based_positions_in_trainer_callbacks():
    assert callback_label("WeightSharing", 2) == "WeightSharing (callback 2 in trainer.callbacks)"


def test_two_sharing_claims_on_one_layer():
    message = conflict(labeled(share(layers=("fc1.weight", "fc2.weight")), share(layers=("fc2.weight",))))
    assert message.startswith("WeightSharing (callback 1 in trainer.callbacks) and WeightSharing (callback 2 in "
                              "trainer.callbacks) both share fc2.weight")
    assert conflict(labeled(share(layers=("fc1.weight",)), share(layers=("fc2.weight",)))) is None
    assert conflict(labeled(prune(), prune())) is None  # two prunings compose


def test_pruning_must_end_before_sharing_fixes_assignments():
    message = conflict(labeled(prune(end=2.0), share(at=1.0)))
    assert "GradualMagnitudePruning (callback 1 in trainer.callbacks) raises the sparsity of fc1.weight until " \
           "epoch 2, but WeightSharing (callback 2 in trainer.callbacks) fixes its assignments at epoch 1 " \
           "(start_epoch)" in message
    assert "until epoch 2" in conflict(labeled(prune(end=2.0), share(at=2.0)))  # at the same time: too late
    assert conflict(labeled(prune(end=1.0), share(at=2.0))) is None
    assert conflict(labeled(prune(end=2.0), share(at=1.0, done=("fc1.weight",)))) is None  # clustered already
    assert conflict(labeled(prune(end=2.0, done=("fc1.weight",)), share(at=1.0))) is None  # ramp finished
    assert conflict(labeled(prune(end=2.0, layers=("fc2.weight",)), share(at=1.0))) is None  # other layer
    assert conflict(labeled(prune(unit="step", end=50), share(at=1.0))) is None  # units differ: at train start
    assert "(start_step)" in conflict(labeled(prune(unit="step", end=50), share(unit="step", at=40)))


def test_mixed_units_compare_in_steps():
    claims = labeled(prune(unit="epoch", end=1.0), share(unit="step", at=3))
    message = mixed_unit_conflict(claims, steps_per_epoch=4)
    assert "raises the sparsity of fc1.weight until epoch 1 (step 4)" in message
    assert "fixes its assignments at step 3 (step 3)" in message
    assert mixed_unit_conflict(claims, steps_per_epoch=2) is None
    assert mixed_unit_conflict(labeled(prune(unit="step", end=10), share(at=3.0)), steps_per_epoch=4) is None
    assert "at epoch 2 (step 8)" in mixed_unit_conflict(labeled(prune(unit="step", end=10), share(at=2.0)),
                                                         steps_per_epoch=4)


def test_mid_fit_factorization_of_a_held_layer():
    message = conflict(labeled(factorize(epoch=2.0), share(at=0.0)))
    assert message.startswith("LowRankFactorization (callback 1 in trainer.callbacks) replaces fc1.weight at "
                              "epoch 2 while WeightSharing (callback 2 in trainer.callbacks) holds")
    assert "replaces fc1.weight at epoch 1" in conflict(labeled(prune(end=0.5), factorize(epoch=1.0)))
    assert conflict(labeled(prune(), factorize(posthoc=True))) is None
    assert conflict(labeled(prune(), factorize(layers=("fc2.weight",)))) is None


def test_events_after_max_epochs_warn():
    notes = unreachable(labeled(share(at=5.0), factorize(epoch=3.0), prune(end=9.0)), max_epochs=2)
    assert notes == [
        "WeightSharing (callback 1 in trainer.callbacks): clusters ['fc1.weight'] at epoch 5, not before "
        "max_epochs=2; those layers will not be shared in this fit",
        "LowRankFactorization (callback 2 in trainer.callbacks): epoch=3 is not before max_epochs=2; "
        "nothing will be factorized in this fit",
    ]
    assert unreachable(labeled(share(at=5.0, done=("fc1.weight",)), share(unit="step", at=50)), max_epochs=2) == []
    assert unreachable(labeled(share(at=5.0)), max_epochs=None) == []


class Describing:
    def __init__(self, claim):
        self.claim = claim

    def describe(self, trainer, pl_module):
        return self.claim


def test_entry_point_on_a_stand_in_trainer():
    first, second = Describing(prune(end=2.0)), Describing(share(at=1.0))
    trainer = SimpleNamespace(callbacks=[object(), first, second], max_epochs=3)
    check_compression_callbacks(trainer, None, second, "fit")  # not the first describing callback: no check
    check_compression_callbacks(trainer, None, first, "validate")
    with pytest.raises(CompressionConfigError, match=r"callback 2 in trainer.callbacks\) raises the sparsity"):
        check_compression_callbacks(trainer, None, first, "fit")


def test_mixed_units_entry_point_keeps_the_former_signature():
    pruning, sharing = Describing(prune(end=1.0)), Describing(share(unit="step", at=3))
    module = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(callbacks=[pruning, sharing], num_training_batches=8, accumulate_grad_batches=2,
                              lightning_module=module)
    with pytest.raises(CompressionConfigError, match=r"until epoch 1 \(step 4\)"):
        _conflicts.check_mixed_units(trainer, module)
    with pytest.raises(CompressionConfigError, match=r"until epoch 1 \(step 4\)"):
        _conflicts.check_mixed_units(trainer, sharing)  # (trainer, sharing_callback), as before


def test_rules_import_no_callback_class():
    source = Path(_conflicts.__file__).read_text()
    imported = [n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.split(".")[-1] in ("pruning", "sharing", "factorization", "export")]
