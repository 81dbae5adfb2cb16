"""Time lives here: pure functions of training progress (step, epoch) -> target or event.

No tensors and no Trainer, so every schedule can be plotted and unit-tested on its own.
"""
