"""How far a fit can get: the last progress value (epoch with batch fraction, or optimizer step) it reaches.

Pure arithmetic on the Trainer's limits, so a callback can warn before the first step that a schedule ends
after the fit does (``max_epochs`` or ``max_steps`` too small), and tests can check the rule without a Trainer.
"""

from __future__ import annotations

import math

from lightning_compress.schedules.events import Unit


def last_progress(unit: Unit, batches_per_epoch: float, accumulate: int = 1, max_epochs: int | None = None,
                  max_steps: int | None = None) -> float | None:
    """Progress seen at the start of the last training batch, in ``unit``; ``None`` if the fit has no limit.

    ``"epoch"`` progress is ``epoch + batch / batches_per_epoch``; ``"step"`` progress is the optimizer steps
    done before the batch. With ``accumulate`` batches per step, an epoch's last partial group still steps
    (Lightning's rule), so one epoch is ``ceil(batches / accumulate)`` steps. Automatic optimization only.
    """
    if not math.isfinite(batches_per_epoch) or batches_per_epoch <= 0:
        return None
    batches_per_epoch = int(batches_per_epoch)
    steps_per_epoch = -(-batches_per_epoch // max(1, accumulate))
    limits = []  # total batches each limit lets run
    if max_epochs is not None and max_epochs >= 0:
        limits.append(max_epochs * batches_per_epoch)
    if max_steps is not None and max_steps >= 0:
        epochs, steps = divmod(max_steps, steps_per_epoch)
        limits.append(epochs * batches_per_epoch + min(batches_per_epoch, steps * max(1, accumulate)))
    if not limits:
        return None
    last_batch = min(limits) - 1
    if last_batch < 0:
        return -1.0
    if unit == "epoch":
        return last_batch / batches_per_epoch
    epochs, batch = divmod(last_batch, batches_per_epoch)
    return float(epochs * steps_per_epoch + batch // max(1, accumulate))


__all__ = ["last_progress"]
