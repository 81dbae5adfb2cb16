"""Cross-callback checks: compression callbacks that claim one layer in conflicting ways fail at ``setup``.

Each callback validates its own arguments; what none of them can see alone is the combination. The rules
read :class:`~lightning_compress.callbacks._claims.Claim` objects only (what each callback says it will do),
so they import no callback class and can be tested with hand-written claims, without a Trainer. A layer is a
parameter name such as ``fc1.weight``; a callback is named by its place in ``trainer.callbacks``.

* two weight-sharing claims on one layer (two codebooks projecting one tensor in turn keep neither
  invariant). Two pruning callbacks on one layer do compose (each one's zeros count toward the other's
  target), so that is allowed;
* a pruning ramp still raising a layer's sparsity at or after the time weight sharing fixes that layer's
  assignments (clustering must see the final zeros): compared at ``setup`` when both count in the same unit,
  and by :func:`check_mixed_units` at ``on_train_start`` (once the batches per epoch are known, still before
  the first step) when one counts epochs and the other optimizer steps;
* mid-fit factorization replacing a layer that pruning or sharing holds masks or codebooks for (they would
  keep acting on the replaced module). Post-hoc factorization (``posthoc``) is fine.

It also warns when an event can never happen in this fit: clustering or mid-fit factorization at or after
``max_epochs``.

Usage (inside a callback)::

    def setup(self, trainer, pl_module, stage):
        check_compression_callbacks(trainer, pl_module, self, stage)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from lightning_compress.callbacks._claims import Claim, Describes
from lightning_compress.validation import fail

#: A claim with the words that name its callback in messages, e.g. ``"WeightSharing (callback 2 in trainer.callbacks)"``.
Labeled = tuple[str, Claim]


def callback_label(owner: str, position: int) -> str:
    """How messages name a callback: its class and 1-based position in ``trainer.callbacks``."""
    return f"{owner} (callback {position} in trainer.callbacks)"


# ------------------------------------------------------------------------------------------------ rules on claims
def _same_unit_conflict(prune: Labeled, share: Labeled, layer: str) -> str | None:
    (prune_label, p), (share_label, s) = prune, share
    end, start = p.layers[layer][1], s.layers[layer][0]
    if p.unit != s.unit or end < start:
        return None
    start_arg = "start_epoch" if s.unit == "epoch" else "start_step"
    return (f"{prune_label} raises the sparsity of {layer} until {p.unit} {end:g}, but {share_label} fixes its "
            f"assignments at {s.unit} {start:g} ({start_arg}); end pruning (end_epoch) before sharing starts")


def conflict(claims: Sequence[Labeled]) -> str | None:
    """The first conflict among ``claims`` that is known before training (same units), as a message; or ``None``."""
    shares = [c for c in claims if c[1].kind == "share"]
    prunes = [c for c in claims if c[1].kind == "prune"]
    sharer: dict[str, str] = {}
    for label, claim in shares:
        for layer in claim.layers:
            if layer in sharer:
                return f"{sharer[layer]} and {label} both share {layer}; give them disjoint include/exclude"
            sharer[layer] = label
    for share in shares:
        for layer in share[1].pending():
            for prune in prunes:
                if layer in prune[1].pending():
                    message = _same_unit_conflict(prune, share, layer)
                    if message:
                        return message
    for label, claim in claims:
        if claim.kind != "factorize" or claim.posthoc:
            continue
        for layer, (start, _end) in claim.pending().items():
            holders = [other for other, c in prunes + shares if layer in c.layers]
            if holders:
                return (f"{label} replaces {layer} at {claim.unit} {start:g} while {holders[0]} holds masks or "
                        "codebooks for it; exclude the layer from one of them, or factorize in an earlier fit and "
                        "compress the factors")
    return None


def unreachable(claims: Sequence[Labeled], max_epochs: int | None) -> list[str]:
    """Warnings for clustering or mid-fit factorization that ``max_epochs`` stops before it happens."""
    if max_epochs is None:
        return []
    notes = []
    for label, claim in claims:
        late = {layer: start for layer, (start, _) in claim.pending().items()
                if claim.unit == "epoch" and not claim.posthoc and start >= max_epochs}
        if not late:
            continue
        first = next(iter(late.values()))
        if claim.kind == "share":
            notes.append(f"{label}: clusters {list(late)} at epoch {first:g}, not before max_epochs={max_epochs}; "
                         "those layers will not be shared in this fit")
        elif claim.kind == "factorize":
            notes.append(f"{label}: epoch={first:g} is not before max_epochs={max_epochs}; "
                         "nothing will be factorized in this fit")
    return notes


def mixed_unit_conflict(claims: Sequence[Labeled], steps_per_epoch: float) -> str | None:
    """Pruning ramp vs clustering time when one counts epochs and the other optimizer steps."""

    def in_steps(value: float, unit: str) -> float:
        return value * steps_per_epoch if unit == "epoch" else value

    for share_label, s in (c for c in claims if c[1].kind == "share"):
        for prune_label, p in (c for c in claims if c[1].kind == "prune" and c[1].unit != s.unit):
            for layer in set(s.pending()) & set(p.pending()):
                end, start = p.layers[layer][1], s.layers[layer][0]
                end_steps, start_steps = in_steps(end, p.unit), in_steps(start, s.unit)
                if end_steps >= start_steps:
                    return (f"{prune_label} raises the sparsity of {layer} until {p.unit} {end:g} (step {end_steps:g}), "
                            f"but {share_label} fixes its assignments at {s.unit} {start:g} (step {start_steps:g}); "
                            "end pruning before sharing starts")
    return None


# ------------------------------------------------------------------------------------------------ Trainer entry points
def _describers(trainer: Any) -> list[tuple[int, Any]]:
    """``(1-based position, callback)`` of the callbacks in ``trainer.callbacks`` that describe themselves."""
    return [(i, cb) for i, cb in enumerate(trainer.callbacks, start=1) if isinstance(cb, Describes)]


def labeled_claims(trainer: Any, pl_module: Any) -> list[Labeled]:
    """Every describing callback's claim for this fit, with the words that name it."""
    out = []
    for position, cb in _describers(trainer):
        claim = cb.describe(trainer, pl_module)
        out.append((callback_label(claim.owner, position), claim))
    return out


def check_compression_callbacks(trainer: Any, pl_module: Any, caller: Any, stage: str) -> None:
    """Raise ``CompressionConfigError`` naming the layer and both callbacks when two claims conflict.

    Called from every compression callback's ``setup``; only the first describing callback in
    ``trainer.callbacks`` runs the rules, once per ``fit``. Callbacks without ``describe`` take no part.
    """
    if stage != "fit":
        return
    ours = _describers(trainer)
    if not ours or ours[0][1] is not caller:
        return
    claims = labeled_claims(trainer, pl_module)
    max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    for note in unreachable(claims, max_epochs):
        rank_zero_warn(note)
    message = conflict(claims)
    if message:
        fail("", message)


def check_mixed_units(trainer: Any, pl_module: Any = None, _sharing: Any = None) -> None:
    """At ``on_train_start``: the pruning-vs-sharing rule across units, now that batches per epoch are known.

    ``check_mixed_units(trainer, sharing_callback)`` (the former signature) still works: a second argument
    that is a callback rather than the LightningModule is taken as the caller and the module is read from
    the trainer.
    """
    if not isinstance(pl_module, LightningModule):
        pl_module = trainer.lightning_module
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches <= 0:
        return
    steps_per_epoch = batches / max(1, trainer.accumulate_grad_batches)  # pruning epochs count batches
    message = mixed_unit_conflict(labeled_claims(trainer, pl_module), steps_per_epoch)
    if message:
        fail("", message)


__all__ = [
    "callback_label",
    "check_compression_callbacks",
    "check_mixed_units",
    "conflict",
    "labeled_claims",
    "mixed_unit_conflict",
    "unreachable",
]
