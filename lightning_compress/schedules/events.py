"""When a one-off event happens: at an epoch or a step, optionally one layer after another.

Weight sharing clusters a layer once and then fine-tunes its centroids; doing all layers at once is the Deep
Compression recipe, doing them layer by layer (``interval`` > 0) lets the still-free layers absorb the error
of the ones already shared. Pure: no tensors and no Trainer, so the timing can be tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from lightning_compress.validation import check_choice, check_int, fail

#: What a schedule counts: epochs (fractional in sparsity schedules) or optimizer steps.
Unit = Literal["epoch", "step"]
UNITS: tuple[str, ...] = ("epoch", "step")


@dataclass(frozen=True)
class EventSchedule:
    """Event ``i`` (layer ``i`` in the given order) is due once progress reaches ``start + i * interval``.

    ``unit`` says what progress counts: the epoch index (events fire at the start of that epoch) or the
    global optimizer step (events fire before the batch that would make that step).
    """

    start: int = 0
    unit: Unit = "epoch"
    interval: int = 0

    def __post_init__(self) -> None:
        # no owner prefix: the message starts with the argument's name, which WeightSharing maps to its own
        check_choice("", "unit", self.unit, UNITS)
        check_int("", "start", self.start, low=0)
        check_int("", "interval", self.interval, low=0)

    def time_of(self, index: int) -> int:
        """Progress (epoch or step) at which event ``index`` is due."""
        if index < 0:
            fail("", f"index must be >= 0, got {index}")
        return self.start + index * self.interval

    def times(self, names: Sequence[str]) -> dict[str, int]:
        """``{name: time}`` for events named in order."""
        return {name: self.time_of(i) for i, name in enumerate(names)}

    def due(self, names: Sequence[str], progress: int, done: Sequence[str] = ()) -> list[str]:
        """Names (in order) whose time has come at ``progress`` and that are not in ``done`` yet.

        Events whose time has passed are due too, so a run resumed after the event time still fires them.
        """
        finished = set(done)
        return [n for i, n in enumerate(names) if n not in finished and progress >= self.time_of(i)]

    def last_time(self, count: int) -> int:
        """Progress at which the last of ``count`` events is due."""
        return self.time_of(max(0, count - 1))


__all__ = ["UNITS", "EventSchedule", "Unit"]
