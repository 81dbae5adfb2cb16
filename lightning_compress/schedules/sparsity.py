"""Sparsity schedules: training progress -> absolute target sparsity.

A schedule is a small validated object (the TF Model Optimization habit): its constructor checks its
arguments and names the offending one, and it answers two questions about a progress value ``t``
(in epochs, fractional allowed, or in optimizer steps, depending on ``unit``):

* ``schedule(t)`` / ``schedule.target(t, final)`` — the absolute sparsity the model should have at ``t``
  (never "a fraction of what remains", which is what ``torch.nn.utils.prune`` iterates);
* ``schedule.update_point(t)`` / ``should_update(t)`` — when masks change. Masks change only at update
  points ``start, start + frequency, ...`` and ``end``, so the target is piecewise constant and a run
  resumed from any checkpoint lands on the same update points.

Targets are evaluated at update points, so a run with coarse updates reaches exactly the scheduled value
at each of them. Usage::

    sched = PolynomialSchedule(start=1, end=8, frequency=0.5, power=3)   # Zhu & Gupta's cubic
    sched.target(4.0, final=0.9)         # 0.9 + (0 - 0.9) * (1 - 3/7) ** 3
    make_schedule("linear", start=0, end=5)
    make_schedule({1: 0.5, 3: 0.8, 5: 0.9})  # multistep, absolute milestones

Every schedule is a plain class with typed ``__init__`` arguments, so LightningCLI configures it with
``class_path``/``init_args`` or, through :func:`make_schedule`, with a short name.
"""

from __future__ import annotations

import math
from typing import Mapping

from lightning_compress.schedules.events import UNITS, Unit
from lightning_compress.validation import check_choice, check_fraction, check_milestones, check_number, fail

#: How many mask updates a ramp makes when ``frequency`` is not given.
DEFAULT_UPDATES = 10
_EPS = 1e-9


class SparsitySchedule:
    """Base class: update points from ``start``, ``end`` and ``frequency``; subclasses give the shape.

    Args:
        start: progress at which pruning starts (first update point; the target there is ``initial_sparsity``
            for ramps). Epochs may be fractional (``0.5`` = half way through the first epoch).
        end: progress at which the final sparsity is reached (last update point).
        frequency: distance between update points; ``None`` spreads ``DEFAULT_UPDATES`` updates over the ramp.
        unit: ``"epoch"`` (float progress, ``global_step / steps_per_epoch``) or ``"step"`` (optimizer steps).
        initial_sparsity: target at ``start``.
        final_sparsity: target at ``end``; the callback's per-layer value is used instead when it has one.
    """

    def __init__(
        self,
        start: float = 0.0,
        end: float | None = None,
        frequency: float | None = None,
        unit: Unit = "epoch",
        initial_sparsity: float = 0.0,
        final_sparsity: float | None = None,
    ) -> None:
        owner = type(self).__name__
        check_choice(owner, "unit", unit, UNITS)
        check_number(owner, "start", start, low=0)
        end = start if end is None else check_number(owner, "end", end)
        if end < start:
            fail(owner, f"end ({end}) must not be before start ({start})")
        if frequency is None:
            frequency = (end - start) / DEFAULT_UPDATES if end > start else 1.0
            if unit == "step":
                frequency = max(1, int(frequency))
        check_number(owner, "frequency", frequency, low=0, low_open=True)
        if unit == "step":
            for name, v in (("start", start), ("end", end), ("frequency", frequency)):
                if float(v) != int(v):
                    fail(owner, f"{name} must be a whole number of steps when unit='step', got {v!r}")
        check_fraction(owner, "initial_sparsity", initial_sparsity)
        check_fraction(owner, "final_sparsity", final_sparsity, allow_none=True)
        if final_sparsity is not None and final_sparsity < initial_sparsity:
            fail(owner, f"final_sparsity ({final_sparsity}) must be >= initial_sparsity ({initial_sparsity}): "
                        "masks only grow")
        self.start = float(start)
        self.end = float(end)
        self.frequency = float(frequency)
        self.unit = unit
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = None if final_sparsity is None else float(final_sparsity)

    # -- when ---------------------------------------------------------------------------------------
    def update_point(self, t: float) -> float | None:
        """The latest update point ``<= t`` (``None`` before ``start``). Masks change when this changes."""
        if t < self.start - _EPS:
            return None
        if t >= self.end - _EPS:
            return self.end
        k = math.floor((t - self.start) / self.frequency + _EPS)
        return min(self.start + k * self.frequency, self.end)

    def should_update(self, t: float) -> bool:
        """True when ``t`` is itself an update point (TF-MOT semantics for integer steps)."""
        p = self.update_point(t)
        return p is not None and abs(p - t) <= _EPS * max(1.0, abs(t))

    def update_points(self) -> list[float]:
        """All update points in order (for plots and tests)."""
        pts, k = [], 0
        while True:
            p = min(self.start + k * self.frequency, self.end)
            pts.append(p)
            if p >= self.end - _EPS:
                return pts
            k += 1

    # -- how much -----------------------------------------------------------------------------------
    def progress(self, t: float) -> float:
        """Fraction of the ramp elapsed at ``t``, clipped to [0, 1]."""
        if self.end <= self.start:
            return 1.0 if t >= self.start - _EPS else 0.0
        return min(1.0, max(0.0, (t - self.start) / (self.end - self.start)))

    def shape(self, p: float, initial: float, final: float) -> float:
        """Sparsity at ramp fraction ``p`` in [0, 1]; ``shape(0) == initial`` and ``shape(1) == final``."""
        raise NotImplementedError

    def _resolve(self, final: float | None, initial: float | None) -> tuple[float, float]:
        final = self.final_sparsity if final is None else final
        initial = self.initial_sparsity if initial is None else initial
        if final is None:
            fail(type(self).__name__, "final_sparsity is not set; pass final= or final_sparsity=")
        return float(initial), float(final)

    def target(self, t: float, final: float | None = None, initial: float | None = None) -> float:
        """Absolute target sparsity at progress ``t`` (evaluated exactly, not at the update point)."""
        initial, final = self._resolve(final, initial)
        if t < self.start - _EPS:
            return initial
        return self.shape(self.progress(t), initial, final)

    def target_at_update(self, t: float, final: float | None = None, initial: float | None = None) -> float:
        """Target held between update points: the value at ``update_point(t)``."""
        p = self.update_point(t)
        return self._resolve(final, initial)[0] if p is None else self.target(p, final, initial)

    def __call__(self, t: float) -> float:
        return self.target(t)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class PolynomialSchedule(SparsitySchedule):
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - p)^power. ``power=3`` is their cubic schedule.

    A high power prunes fast while the network is redundant and slowly near the end.
    """

    def __init__(
        self,
        start: float = 0.0,
        end: float | None = None,
        frequency: float | None = None,
        unit: Unit = "epoch",
        initial_sparsity: float = 0.0,
        final_sparsity: float | None = None,
        power: float = 3.0,
    ) -> None:
        super().__init__(start, end, frequency, unit, initial_sparsity, final_sparsity)
        check_number(type(self).__name__, "power", power, low=0, low_open=True)
        self.power = float(power)

    def shape(self, p: float, initial: float, final: float) -> float:
        return final + (initial - final) * (1.0 - p) ** self.power


class CubicSchedule(PolynomialSchedule):
    """The default: polynomial with ``power=3`` (Zhu & Gupta)."""

    def __init__(
        self,
        start: float = 0.0,
        end: float | None = None,
        frequency: float | None = None,
        unit: Unit = "epoch",
        initial_sparsity: float = 0.0,
        final_sparsity: float | None = None,
    ) -> None:
        super().__init__(start, end, frequency, unit, initial_sparsity, final_sparsity, power=3.0)


class LinearSchedule(PolynomialSchedule):
    """Equal sparsity increments per update (AGP with power 1)."""

    def __init__(
        self,
        start: float = 0.0,
        end: float | None = None,
        frequency: float | None = None,
        unit: Unit = "epoch",
        initial_sparsity: float = 0.0,
        final_sparsity: float | None = None,
    ) -> None:
        super().__init__(start, end, frequency, unit, initial_sparsity, final_sparsity, power=1.0)


class ExponentialSchedule(SparsitySchedule):
    """Density (1 - sparsity) decays geometrically: every update keeps the same fraction of what survived.

    d_t = d_i (d_f / d_i)^p, the continuous form of Han et al.'s iterative prune/retrain rounds. The target is
    still absolute; only the ramp shape is geometric. Requires ``final < 1``.
    """

    def shape(self, p: float, initial: float, final: float) -> float:
        if final >= 1.0:
            fail("ExponentialSchedule", "final sparsity must be < 1 (density cannot decay to 0 geometrically)")
        d_i, d_f = 1.0 - initial, 1.0 - final
        if p >= 1.0:
            return final
        return 1.0 - d_i * (d_f / d_i) ** p


class ConstantSchedule(SparsitySchedule):
    """One-shot: the final sparsity from ``start`` on (prune once, then fine-tune with masks held)."""

    def __init__(
        self,
        start: float = 0.0,
        unit: Unit = "epoch",
        final_sparsity: float | None = None,
    ) -> None:
        super().__init__(start, start, None, unit, 0.0, final_sparsity)

    def shape(self, p: float, initial: float, final: float) -> float:
        return final


class MultiStepSchedule(SparsitySchedule):
    """Piecewise-constant absolute targets: ``{progress: sparsity}``, e.g. ``{1: 0.5, 3: 0.8, 5: 0.9}``.

    The milestone values are the targets of a layer whose final sparsity is the last milestone; a layer
    given a different final sparsity (per-layer mapping in the callback) is scaled proportionally.
    """

    def __init__(self, milestones: Mapping[float, float], unit: Unit = "epoch") -> None:
        items = sorted(check_milestones(type(self).__name__, "milestones", milestones).items())
        prev = 0.0
        for k, v in items:
            if v < prev:
                fail(type(self).__name__, f"milestones must not decrease (masks only grow): {v} at {k:g} after {prev}")
            prev = v
        super().__init__(items[0][0], items[-1][0], 1.0, unit, 0.0, items[-1][1])
        self.milestones = dict(items)

    def update_point(self, t: float) -> float | None:
        hits = [k for k in self.milestones if k <= t + _EPS]
        return hits[-1] if hits else None

    def should_update(self, t: float) -> bool:
        return any(abs(k - t) <= _EPS * max(1.0, abs(t)) for k in self.milestones)

    def update_points(self) -> list[float]:
        return list(self.milestones)

    def target(self, t: float, final: float | None = None, initial: float | None = None) -> float:
        initial, final = self._resolve(final, initial)
        p = self.update_point(t)
        if p is None:
            return initial
        last = self.final_sparsity or 0.0
        value = self.milestones[p]
        return value if last == 0.0 or final == last else value * final / last


_NAMED: dict[str, type[SparsitySchedule]] = {
    "cubic": CubicSchedule,
    "polynomial": PolynomialSchedule,
    "linear": LinearSchedule,
    "exponential": ExponentialSchedule,
    "constant": ConstantSchedule,
    "one_shot": ConstantSchedule,
    "oneshot": ConstantSchedule,
}
SCHEDULE_NAMES = tuple(_NAMED)


def make_schedule(
    spec: str | SparsitySchedule | Mapping[float, float] = "cubic",
    start: float = 0.0,
    end: float | None = None,
    frequency: float | None = None,
    unit: Unit = "epoch",
    initial_sparsity: float = 0.0,
    **kwargs: float,
) -> SparsitySchedule:
    """Build a schedule from a name (``"cubic"``, ``"linear"``, ...), a milestone mapping, or pass one through.

    The timing arguments apply to names only; a schedule object keeps its own timing.
    """
    if isinstance(spec, SparsitySchedule):
        return spec
    if isinstance(spec, Mapping):
        return MultiStepSchedule(spec, unit=unit)
    if not isinstance(spec, str) or spec.lower() not in _NAMED:
        fail("", f"schedule must be one of {list(SCHEDULE_NAMES)}, a {{epoch: sparsity}} mapping "
                         f"or a SparsitySchedule, got {spec!r}")
    cls = _NAMED[spec.lower()]
    if cls is ConstantSchedule:
        return ConstantSchedule(start=start, unit=unit)
    return cls(start=start, end=end, frequency=frequency, unit=unit, initial_sparsity=initial_sparsity, **kwargs)


__all__ = [
    "ConstantSchedule",
    "CubicSchedule",
    "ExponentialSchedule",
    "LinearSchedule",
    "MultiStepSchedule",
    "PolynomialSchedule",
    "SCHEDULE_NAMES",
    "SparsitySchedule",
    "make_schedule",
]
