"""What a compression callback will do, in a small public form that conflict rules and other callbacks read.

Every compression callback (pruning, sharing, factorization) answers ``describe(trainer, pl_module)`` with a
:class:`Claim`: which layers (parameter names such as ``fc1.weight``), what kind of change, in which unit of
time, and from when to when each layer changes. Rules that involve several callbacks
(``callbacks/_conflicts.py``), the export's checks and the monitor read claims, never another callback's
private members, and never import the callback classes (so there is no import cycle, and the rules are
testable with hand-written claims, without a Trainer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Protocol, runtime_checkable

from lightning_compress.schedules.events import Unit

Kind = Literal["prune", "share", "factorize"]


@dataclass(frozen=True)
class Claim:
    """One callback's plan for the current fit.

    ``layers`` maps each layer to the ``(start, end)`` of the time in ``unit`` during which the callback changes
    it: a pruning ramp's first and last update, a clustering time (start == end), a factorization epoch.
    ``done`` lists layers whose change already happened in an earlier fit or before a resume (clustered,
    factorized). ``posthoc`` marks a change made after training ends (its times are ``inf``).
    """

    owner: str
    kind: Kind
    unit: Unit
    layers: Mapping[str, tuple[float, float]]
    done: frozenset[str] = field(default_factory=frozenset)
    posthoc: bool = False
    renames_layers: bool = False
    #: Human-readable notes on what did not complete (``"fc1.weight: 43.8% sparse, 50% asked"``): filled in
    #: once the fit ended early (``max_steps``, ``EarlyStopping``, an interrupt); empty when all is done.
    unfinished: tuple[str, ...] = ()
    #: What the callback decided that a report should show (``"bits='auto' chose fc1.weight 3, fc2.weight 5"``).
    notes: tuple[str, ...] = ()

    def pending(self) -> dict[str, tuple[float, float]]:
        """The layers still to be changed in this fit."""
        return {name: span for name, span in self.layers.items() if name not in self.done}


@runtime_checkable
class Describes(Protocol):
    """A callback that can say what it will do (the compression callbacks)."""

    def describe(self, trainer: Any, pl_module: Any) -> Claim: ...


def claims(trainer: Any, pl_module: Any) -> list[tuple[Any, Claim]]:
    """``(callback, claim)`` for every compression callback of ``trainer``, in callback order."""
    return [(cb, cb.describe(trainer, pl_module)) for cb in trainer.callbacks if isinstance(cb, Describes)]


__all__ = ["Claim", "Describes", "Kind", "Unit", "claims"]
