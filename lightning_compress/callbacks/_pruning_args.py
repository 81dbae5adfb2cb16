"""Argument checks of :class:`~lightning_compress.GradualMagnitudePruning`, so its constructor reads as a list.

Each function checks one group of arguments that depend on each other and returns the value the callback
keeps; every mistake raises :class:`~lightning_compress.errors.CompressionConfigError` naming the argument.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from lightning.pytorch.utilities import rank_zero_warn

from lightning_compress.core.targets import resolve_types
from lightning_compress.schedules.sparsity import (
    SCHEDULE_NAMES,
    ExponentialSchedule,
    MultiStepSchedule,
    SparsitySchedule,
)
from lightning_compress.validation import (
    check_fraction,
    check_milestones,
    check_number,
    check_per_layer,
    fail,
)

OWNER = "GradualMagnitudePruning"


def check_end_epoch(end_epoch: Any, start_epoch: float) -> float | None:
    """``None`` or a finite number at or after ``start_epoch``."""
    if end_epoch is None:
        return None
    check_number(OWNER, "end_epoch", end_epoch)
    if end_epoch < start_epoch:
        fail(OWNER, f"end_epoch ({end_epoch!r}) must be a finite number >= start_epoch ({start_epoch:g})")
    return float(end_epoch)


def check_schedule(schedule: Any, end_epoch: float | None) -> str | SparsitySchedule:
    """A schedule name, a ``{epoch: sparsity}`` mapping (turned into a multistep schedule) or a schedule object."""
    if isinstance(schedule, Mapping):
        return MultiStepSchedule(check_milestones(OWNER, "schedule", schedule))
    if isinstance(schedule, str):
        if schedule.lower() not in SCHEDULE_NAMES:
            fail(OWNER, f"schedule must be one of {list(SCHEDULE_NAMES)}, a mapping or a SparsitySchedule; "
                        f"got {schedule!r}")
        return schedule
    if not isinstance(schedule, SparsitySchedule):
        fail(OWNER, f"schedule must be a name, a {{epoch: sparsity}} mapping or a SparsitySchedule, "
                    f"got {type(schedule).__name__}")
    if end_epoch is not None:
        rank_zero_warn(f"{OWNER}: a schedule object brings its own start/end; end_epoch={end_epoch} is ignored")
    return schedule


def is_exponential(schedule: str | SparsitySchedule) -> bool:
    return isinstance(schedule, ExponentialSchedule) or (isinstance(schedule, str) and schedule.lower() == "exponential")


def parse_structure(structure: Any) -> tuple[int, int] | None:
    """``"N:M"`` -> ``(N, M)`` with ``0 < N < M``; ``None`` stays ``None``."""
    if structure is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(structure))
    if not match or not 0 < int(match[1]) < int(match[2]):
        fail(OWNER, f"structure must look like 'N:M' with 0 < N < M (e.g. '2:4'), got {structure!r}")
    return int(match[1]), int(match[2])


def check_types(types: Any) -> Any:
    try:
        resolve_types(types)
    except ValueError as err:
        fail(OWNER, str(err))
    return types


def check_sensitivity(sensitivity: Any, criterion: str, final_sparsity: Any, scope: str,
                      structured: bool, schedule: str | SparsitySchedule) -> Any:
    """Han's ``q`` (``criterion="std"`` only): a number >= 0 or ``{glob: number}``, alone as the sparsity rule."""
    if criterion != "std":
        if sensitivity is not None:
            fail(OWNER, "sensitivity is only used with criterion='std'")
        return None
    if sensitivity is None:
        fail(OWNER, "criterion='std' needs sensitivity (Han's q, e.g. 1.0)")
    check_per_layer(OWNER, "sensitivity", sensitivity, lambda o, n, v: check_number(o, n, v, low=0))
    if final_sparsity is not None or scope != "layer" or structured:
        fail(OWNER, "criterion='std' sets sparsity through sensitivity; do not combine it with final_sparsity, "
                    "scope='global' or structure")
    if is_exponential(schedule):
        fail(OWNER, "criterion='std' needs a schedule whose ramp reaches 1; not exponential")
    return sensitivity


def check_final_sparsity(final_sparsity: Any, initial_sparsity: float, criterion: str, scope: str,
                         structure: tuple[int, int] | None, schedule: str | SparsitySchedule) -> Any:
    """The target (a fraction or ``{glob: fraction}``), implied by ``structure`` or by a schedule object."""
    if structure is not None:
        implied = 1.0 - structure[0] / structure[1]
        if isinstance(final_sparsity, Mapping) or scope != "layer":
            fail(OWNER, f"structure='{structure[0]}:{structure[1]}' takes no per-layer final_sparsity and scope='layer'")
        if final_sparsity is not None:
            check_fraction(OWNER, "final_sparsity", final_sparsity)
        if final_sparsity is not None and abs(final_sparsity - implied) > 1e-9:
            fail(OWNER, f"final_sparsity={final_sparsity} contradicts structure='{structure[0]}:{structure[1]}' "
                        f"(which means sparsity {implied:g}); drop final_sparsity")
        final_sparsity = implied
    if final_sparsity is None and criterion == "magnitude":
        if isinstance(schedule, SparsitySchedule) and schedule.final_sparsity is not None:
            final_sparsity = schedule.final_sparsity
        else:
            fail(OWNER, "final_sparsity is required (a float in [0, 1] or {glob: float})")
    if final_sparsity is None:
        return None
    check_per_layer(OWNER, "final_sparsity", final_sparsity, check_fraction)
    if isinstance(final_sparsity, Mapping) and scope == "global":
        fail(OWNER, "scope='global' ranks all layers together; give final_sparsity as one float")
    values = list(final_sparsity.values()) if isinstance(final_sparsity, Mapping) else [final_sparsity]
    if min(values) < initial_sparsity:
        fail(OWNER, f"final_sparsity ({min(values)}) is below initial_sparsity ({initial_sparsity})")
    if is_exponential(schedule) and max(values) >= 1.0:
        fail(OWNER, "the exponential schedule needs final_sparsity < 1")
    return final_sparsity


__all__ = [
    "OWNER",
    "check_end_epoch",
    "check_final_sparsity",
    "check_schedule",
    "check_sensitivity",
    "check_types",
    "is_exponential",
    "parse_structure",
]
