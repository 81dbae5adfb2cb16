"""Stand-in claims for WeightSharing and LowRankFactorization until they answer ``describe`` themselves.

TEMPORARY: the conflict rules read claims only. While those two callbacks have no ``describe`` yet, this
builds their claims from their public attributes (selection, ``schedule``, ``codebooks``, ``epoch``,
``done``), recognised by shape, not by importing their classes. Delete this module (and its one use in
``_conflicts._describe``) once both callbacks implement ``describe``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_compress.callbacks._claims import Claim
from lightning_compress.core.lowrank import inside_factorized
from lightning_compress.core.targets import find_targets


def _targets(cb: Any, pl_module: Any) -> list:
    return find_targets(pl_module, cb.include, cb.exclude, cb.types, owner=type(cb).__name__)


def _sharing_claim(cb: Any, pl_module: Any) -> Claim:
    times = cb.schedule.times([t.name for t in _targets(cb, pl_module)])
    return Claim(owner=type(cb).__name__, kind="share", unit=cb.schedule.unit,
                 layers={name: (float(time), float(time)) for name, time in times.items()},
                 done=frozenset(name for name in times if name in cb.codebooks))


def _factorization_claim(cb: Any, pl_module: Any) -> Claim:
    if cb.done:  # the layers are factors now: nothing left to replace (and the old names are gone)
        return Claim(owner=type(cb).__name__, kind="factorize", unit="epoch", layers={}, renames_layers=True)
    if cb.epoch is None:
        layers = {t.name: (float("inf"), float("inf")) for t in _targets(cb, pl_module)}
        return Claim(owner=type(cb).__name__, kind="factorize", unit="epoch", layers=layers, posthoc=True,
                     renames_layers=True)
    layers = {t.name: (float(cb.epoch), float(cb.epoch)) for t in _targets(cb, pl_module)
              if isinstance(t.module, (nn.Linear, nn.Conv2d)) and not inside_factorized(pl_module, t.module_name)}
    return Claim(owner=type(cb).__name__, kind="factorize", unit="epoch", layers=layers,
                 done=frozenset(layers) if cb.done else frozenset(), renames_layers=True)


def interim_claim(cb: Any, pl_module: Any) -> Claim | None:
    """A claim for a compression callback without ``describe`` (recognised by its attributes), else ``None``."""
    if all(hasattr(cb, a) for a in ("codebooks", "schedule", "include", "exclude", "types")) and hasattr(cb.schedule, "times"):
        return _sharing_claim(cb, pl_module)
    if all(hasattr(cb, a) for a in ("epoch", "done", "plan", "include", "exclude", "types")):
        return _factorization_claim(cb, pl_module)
    return None


__all__ = ["interim_claim"]
