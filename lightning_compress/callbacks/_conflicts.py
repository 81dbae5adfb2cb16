"""Cross-callback checks: compression callbacks that claim one layer in conflicting ways fail at ``setup``.

Each callback validates its own arguments; what none of them can see alone is the combination. Called
from the ``setup`` of :class:`GradualMagnitudePruning`, :class:`WeightSharing` and
:class:`LowRankFactorization`; only the first of them in ``trainer.callbacks`` runs it, once per ``fit``,
before any training step. The rules (a layer is a parameter name such as ``fc1.weight``):

* two weight-sharing callbacks select the same layer (two codebooks projecting one tensor in turn keep
  neither invariant). Two pruning callbacks on one layer do compose (each one's zeros count toward the
  other's target, the layer ends with the union of their zeros), so that is allowed as long as their
  selections differ (two of one type with the same selection share a ``state_key``, which the Trainer
  itself refuses when it is constructed);
* pruning still raises a layer's sparsity at or after the epoch (or step) at which weight sharing fixes
  that layer's assignments (clustering must see the final zeros); compared only when both count in the
  same unit at ``setup``; when one counts epochs and the other optimizer steps, the same rule is checked
  by :func:`check_mixed_units` at ``on_train_start``, once the batches per epoch are known (still before
  the first step);
* mid-fit factorization (``epoch=E``) replaces a layer that pruning or sharing holds masks or codebooks
  for (they would keep acting on the replaced module). Post-hoc factorization is fine: it runs after
  training and leaves layers that look pruned or shared dense unless ``force=True``.

It also warns when an event can never happen in this fit: sharing that clusters at or after
``max_epochs``, mid-fit factorization at an epoch ``>= max_epochs``.

Usage (inside a callback)::

    def setup(self, trainer, pl_module, stage):
        check_compression_callbacks(trainer, pl_module, self, stage)
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from torch import nn

from lightning_compress.core.lowrank import inside_factorized
from lightning_compress.core.targets import find_targets


def _compression_callbacks(trainer: pl.Trainer) -> list[Any]:
    from lightning_compress.callbacks.factorization import LowRankFactorization
    from lightning_compress.callbacks.pruning import GradualMagnitudePruning
    from lightning_compress.callbacks.sharing import WeightSharing

    return [cb for cb in trainer.callbacks if isinstance(cb, (GradualMagnitudePruning, WeightSharing, LowRankFactorization))]


def _label(cb: Any, index: int) -> str:
    return f"{type(cb).__name__} (callback #{index})"


def check_compression_callbacks(trainer: pl.Trainer, pl_module: pl.LightningModule, caller: Any, stage: str) -> None:
    """Raise ``MisconfigurationException`` naming the layer and both callbacks when two claims conflict."""
    if stage != "fit":
        return
    ours = _compression_callbacks(trainer)
    if not ours or ours[0] is not caller:
        return  # the first compression callback checks for all of them
    from lightning_compress.callbacks.factorization import LowRankFactorization
    from lightning_compress.callbacks.pruning import GradualMagnitudePruning
    from lightning_compress.callbacks.sharing import WeightSharing

    max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    pruned: dict[str, list[tuple[str, Any]]] = defaultdict(list)  # layer -> [(label, schedule)]
    shared: dict[str, list[tuple[str, Any, int]]] = defaultdict(list)  # layer -> [(label, unit, time)]
    factorized: dict[str, tuple[str, int]] = {}  # layer -> (label, epoch)
    for i, cb in enumerate(ours):
        label = _label(cb, i)
        if isinstance(cb, GradualMagnitudePruning):
            targets = find_targets(pl_module, cb.include, cb.exclude, cb.types, cb.param_names, owner=type(cb).__name__)
            schedule = cb._build_schedule(trainer)
            for t in targets:
                pruned[t.name].append((label, schedule))
        elif isinstance(cb, WeightSharing):
            targets = find_targets(pl_module, cb.include, cb.exclude, cb.types, owner=type(cb).__name__)
            times = cb.schedule.times([t.name for t in targets])
            for name, time in times.items():
                shared[name].append((label, cb.schedule.unit, time))
            if cb.schedule.unit == "epoch" and max_epochs is not None and times:
                late = [n for n, time in times.items() if time >= max_epochs and n not in cb.codebooks]
                if late:
                    rank_zero_warn(f"{label}: clusters {late} at epoch {times[late[0]]}, not before "
                                   f"max_epochs={max_epochs}; those layers will not be shared in this fit")
        elif isinstance(cb, LowRankFactorization) and cb.epoch is not None and not cb.done:
            if max_epochs is not None and cb.epoch >= max_epochs:
                rank_zero_warn(f"{label}: epoch={cb.epoch} is not before max_epochs={max_epochs}; "
                               "nothing will be factorized in this fit")
            for t in find_targets(pl_module, cb.include, cb.exclude, cb.types, owner=type(cb).__name__):
                if isinstance(t.module, (nn.Linear, nn.Conv2d)) and not inside_factorized(pl_module, t.module_name):
                    factorized[t.name] = (label, cb.epoch)

    for layer, claims in shared.items():
        if len(claims) > 1:
            raise MisconfigurationException(
                f"{claims[0][0]} and {claims[1][0]} both share {layer}; give them disjoint include/exclude")
    for layer, [(share_label, unit, time)] in shared.items():
        for prune_label, schedule in pruned.get(layer, []):
            if schedule.unit == unit and schedule.end >= time:
                start = "start_epoch" if unit == "epoch" else "start_step"
                raise MisconfigurationException(
                    f"{prune_label} raises the sparsity of {layer} until {unit} {schedule.end:g}, but {share_label} "
                    f"fixes its assignments at {unit} {time} ({start}); end pruning (end_epoch) before sharing starts")
    for layer, (fact_label, epoch) in factorized.items():
        for other in [c[0] for c in pruned.get(layer, [])] + [c[0] for c in shared.get(layer, [])]:
            raise MisconfigurationException(
                f"{fact_label} replaces {layer} at epoch {epoch} while {other} holds masks or codebooks for it; "
                "exclude the layer from one of them, or factorize in an earlier fit and compress the factors")


def check_mixed_units(trainer: pl.Trainer, sharing: Any) -> None:
    """Pruning ramp vs clustering time when one counts epochs and the other steps (called at on_train_start)."""
    from lightning_compress.callbacks.pruning import GradualMagnitudePruning

    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0:
        return
    steps_per_epoch = batches / max(1, trainer.accumulate_grad_batches)  # pruning epochs count batches

    def in_steps(value: float, unit: str) -> float:
        return value * steps_per_epoch if unit == "epoch" else value

    ours = _compression_callbacks(trainer)
    times = sharing.schedule.times([t.name for t in sharing._targets])
    for i, cb in enumerate(ours):
        if not isinstance(cb, GradualMagnitudePruning):
            continue
        schedule = cb._build_schedule(trainer)
        if schedule.unit == sharing.schedule.unit:
            continue  # checked at setup
        for t in cb.targets:
            if t.name in times and t.name not in sharing.codebooks:
                end, start = in_steps(schedule.end, schedule.unit), in_steps(times[t.name], sharing.schedule.unit)
                if end >= start:
                    raise MisconfigurationException(
                        f"{_label(cb, i)} raises the sparsity of {t.name} until {schedule.unit} {schedule.end:g} "
                        f"(step {end:g}), but {_label(sharing, ours.index(sharing))} fixes its assignments at "
                        f"{sharing.schedule.unit} {times[t.name]} (step {start:g}); end pruning before sharing starts")


__all__ = ["check_compression_callbacks", "check_mixed_units"]
