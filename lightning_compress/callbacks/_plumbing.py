"""Lightning plumbing every compression callback needs, written once.

* :class:`DeferredState`: Lightning restores a callback's state (``load_state_dict``) after ``setup`` and after
  the model's weights, but before the optimizers exist; masks and codebooks are re-attached in
  ``on_fit_start``. This holds the state in between.
* :class:`StepHook`: one function run after every optimizer step (masks re-applied, weights projected onto a
  codebook), attached once per optimizer, kept when optimizers are rebuilt mid-fit (:func:`carry_step_hooks`),
  and removed from every optimizer at the end of the fit. The only code that touches torch's private hook
  dictionaries.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

StepFn = Callable[[torch.optim.Optimizer, Any, Any], None]


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer behind Lightning's ``LightningOptimizer`` wrapper (or the optimizer itself)."""
    return getattr(optimizer, "_optimizer", optimizer)


def _post_hooks(optimizer: torch.optim.Optimizer) -> dict:
    return optimizer._optimizer_step_post_hooks


class DeferredState:
    """A checkpoint's callback state, held from ``load_state_dict`` until the callback can apply it.

    Strategies that restore after setup (``ModelParallelStrategy``: ``restore_checkpoint_after_setup``)
    call ``load_state_dict`` *after* ``on_fit_start``; a callback that :meth:`arm`\ s it in ``on_fit_start``
    gets such late state applied at once.
    """

    def __init__(self) -> None:
        self._state: dict[str, Any] | None = None
        self._apply: Callable[[dict[str, Any]], None] | None = None

    def hold(self, state: dict[str, Any]) -> None:
        if self._apply is not None:  # armed: the fit has started, apply now
            self._apply(state)
        else:
            self._state = state

    def arm(self, apply: Callable[[dict[str, Any]], None]) -> None:
        """Apply a held state now, and any state that arrives later at once, until :meth:`disarm`."""
        self._apply = apply
        state = self.take()
        if state is not None:
            apply(state)

    def disarm(self) -> None:
        self._apply = None

    def take(self) -> dict[str, Any] | None:
        """The held state (once), or ``None``."""
        state, self._state = self._state, None
        return state


class StepHook:
    """``fn(optimizer, args, kwargs)`` after every step of every optimizer it is attached to."""

    def __init__(self, fn: StepFn) -> None:
        self.fn = fn
        self._handles: dict[int, Any] = {}  # id(optimizer) -> handle (None: carried over by a rebuild)

    def attach(self, optimizer: Any) -> None:
        """Attach to ``optimizer`` once; a no-op when already there (also when a rebuild carried it over)."""
        optimizer = unwrap_optimizer(optimizer)
        if id(optimizer) in self._handles:
            return
        if any(fn == self.fn for fn in _post_hooks(optimizer).values()):
            self._handles[id(optimizer)] = None
        else:
            self._handles[id(optimizer)] = optimizer.register_step_post_hook(self.fn)

    def attach_all(self, optimizers: Any) -> None:
        for optimizer in optimizers:
            self.attach(optimizer)

    def detach(self, optimizers: Any = ()) -> None:
        """Remove the hook from every optimizer it was attached to, and from ``optimizers`` (rebuilt copies)."""
        for handle in self._handles.values():
            if handle is not None:
                handle.remove()
        self._handles.clear()
        for optimizer in optimizers:
            hooks = _post_hooks(unwrap_optimizer(optimizer))
            for key in [k for k, fn in hooks.items() if fn == self.fn]:
                del hooks[key]


def carry_step_hooks(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
    """Give a rebuilt optimizer the step hooks of the one it replaces (masks and codebooks keep holding)."""
    new._optimizer_step_pre_hooks.update(old._optimizer_step_pre_hooks)
    new._optimizer_step_post_hooks.update(old._optimizer_step_post_hooks)


__all__ = ["DeferredState", "StepHook", "carry_step_hooks", "unwrap_optimizer"]
