"""``WeightSharing``'s arguments, checked in one place (``lightning_compress.validation``).

Every message names the argument and shows the value; nothing is guessed from a lower layer's error text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from lightning_compress.core.bit_allocation import BIT_CHOICES
from lightning_compress.core.bits import FLOAT_BITS
from lightning_compress.core.sharing import GRANULARITIES, SHARING_INITS
from lightning_compress.core.targets import resolve_types
from lightning_compress.schedules.events import EventSchedule
from lightning_compress.validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_per_layer,
    fail,
    is_int,
)

OWNER = "WeightSharing"
#: Widest index the callback accepts (the file format's limit too).
MAX_BITS = 16
#: Widths ``bits="auto"`` chooses from (core.bit_allocation.BIT_CHOICES).
MIN_AUTO_BITS, MAX_AUTO_BITS = min(BIT_CHOICES), max(BIT_CHOICES)
WEIGHTINGS = (None, "fisher")


def _check_bits_value(owner: str, name: str, value: Any) -> Any:
    return check_int(owner, name, value, low=1, high=MAX_BITS)


def _check_granularity(value: Any) -> Any:
    if isinstance(value, str):
        return check_choice(OWNER, "granularity", value, GRANULARITIES)
    if not is_int(value) or value < 1:
        fail(OWNER, f"granularity must be 'tensor', 'channel' or an int >= 1 (output channels per codebook), "
                    f"got {value!r}")
    return value


@dataclass(frozen=True)
class SharingOptions:
    """The checked timing settings (the callback keeps every argument as a public attribute too)."""

    unit: str
    start: int
    interval: int

    @classmethod
    def check(cls, *, bits: Any, start_epoch: Any, start_step: Any, layer_interval: Any, init: Any, reduction: Any,
              types: Any, max_iter: Any, tol: Any, seed: Any, evaluate: Any, eval_batches: Any, log_histograms: Any,
              granularity: Any, weighting: Any, calibration_batches: Any, target_bits: Any) -> "SharingOptions":
        if bits == "auto":
            check_number(OWNER, "target_bits", target_bits, low=MIN_AUTO_BITS, high=MAX_AUTO_BITS + FLOAT_BITS)
        elif target_bits is not None:
            fail(OWNER, f"target_bits={target_bits!r} is used only with bits='auto' (got bits={bits!r})")
        elif bits is not None:
            if isinstance(bits, Mapping):
                check_per_layer(OWNER, "bits", bits, _check_bits_value)
            else:
                _check_bits_value(OWNER, "bits", bits)
        if start_epoch is not None and start_step is not None:
            fail(OWNER, f"give start_epoch or start_step, not both (got start_epoch={start_epoch!r}, "
                        f"start_step={start_step!r})")
        check_int(OWNER, "start_epoch", start_epoch, low=0, allow_none=True)
        check_int(OWNER, "start_step", start_step, low=0, allow_none=True)
        check_int(OWNER, "layer_interval", layer_interval, low=0)
        check_choice(OWNER, "init", init, SHARING_INITS)
        check_choice(OWNER, "reduction", reduction, ("sum", "mean"))
        try:
            resolve_types(types)
        except ValueError as err:
            fail(OWNER, str(err))
        check_int(OWNER, "max_iter", max_iter, low=1)
        check_number(OWNER, "tol", tol, low=0)
        check_int(OWNER, "seed", seed, allow_none=True)
        check_bool(OWNER, "evaluate", evaluate)
        check_int(OWNER, "eval_batches", eval_batches, low=1, allow_none=True)
        check_bool(OWNER, "log_histograms", log_histograms)
        _check_granularity(granularity)
        check_choice(OWNER, "weighting", weighting, WEIGHTINGS)
        check_int(OWNER, "calibration_batches", calibration_batches, low=1)
        if start_step is not None:
            return cls("step", start_step, layer_interval)
        return cls("epoch", start_epoch or 0, layer_interval)

    def schedule(self) -> EventSchedule:
        return EventSchedule(start=self.start, unit=self.unit, interval=self.interval)  # type: ignore[arg-type]


__all__ = ["MAX_BITS", "OWNER", "SharingOptions"]
