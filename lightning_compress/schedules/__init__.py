"""Time lives here: pure functions of training progress (step, epoch) -> target or event.

No tensors and no Trainer, so every schedule can be plotted and unit-tested on its own.
"""

from lightning_compress.schedules.sparsity import (
    SCHEDULE_NAMES,
    ConstantSchedule,
    CubicSchedule,
    ExponentialSchedule,
    LinearSchedule,
    MultiStepSchedule,
    PolynomialSchedule,
    SparsitySchedule,
    make_schedule,
)
from lightning_compress.schedules.events import EventSchedule
