r"""Gradual magnitude pruning during ``Trainer.fit`` (Zhu & Gupta 2017; Han et al. 2015's threshold rule).

At each update point of a schedule the callback recomputes masks (bool, 1 byte per weight, held here,
never as ``weight_mask`` parametrizations), zeroes the pruned weights in place and keeps them at exactly
zero for the rest of the fit: their gradients are zeroed before the optimizer step (and before gradient
clipping, so the clipping norm ignores them) and the masks are re-applied after *every* optimizer step by
a ``register_step_post_hook`` on each optimizer. That covers momentum, weight decay, Adam moments,
gradient accumulation, manual optimization and mixed precision alike.

The model's ``state_dict`` keeps its ordinary keys with exact zeros, so checkpoints load into the plain
architecture; masks and schedule position live in this callback's ``state_dict`` so a resumed fit
continues with identical masks. Every rank computes the same masks (deterministic tie-breaking).

Example::

    from lightning_compress import GradualMagnitudePruning

    pruning = GradualMagnitudePruning(
        final_sparsity={"*": 0.9, "fc3*": 0.7},   # per-layer globs; or one float
        start_epoch=1, end_epoch=8, update_every=0.25,   # fractional epochs are fine
        schedule="cubic",                                # linear, exponential, constant, {epoch: sparsity}
    )
    trainer = Trainer(max_epochs=12, callbacks=[pruning])

or in a LightningCLI config::

    trainer:
      callbacks:
        - class_path: lightning_compress.GradualMagnitudePruning
          init_args: {final_sparsity: 0.9, start_epoch: 1, end_epoch: 8, schedule: cubic}
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Mapping, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_compress.callbacks._strategy import refuse_sharded_strategy
from lightning_compress.callbacks._logging import log_scalars, tag
from lightning_compress.core import masks as M
from lightning_compress.callbacks._conflicts import check_compression_callbacks
from lightning_compress.core.targets import Target, find_targets, per_target_value, resolve_types
from lightning_compress.schedules.sparsity import (
    SCHEDULE_NAMES,
    ExponentialSchedule,
    MultiStepSchedule,
    SparsitySchedule,
    make_schedule,
)

_OWNER = "GradualMagnitudePruning"
#: Without ``end_epoch``, the ramp ends after this fraction of ``max_epochs`` (the rest fine-tunes).
DEFAULT_RAMP_FRACTION = 0.75


def _check_fraction(name: str, value: Any) -> None:
    values = value.values() if isinstance(value, Mapping) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{_OWNER}: {name} must be in [0, 1] (or a mapping of such), got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_exponential(schedule: Any) -> bool:
    return isinstance(schedule, ExponentialSchedule) or (isinstance(schedule, str) and schedule.lower() == "exponential")


def _parse_structure(structure: str | None) -> tuple[int, int] | None:
    if structure is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(structure))
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise ValueError(f"{_OWNER}: structure must look like 'N:M' with 0 < N < M (e.g. '2:4'), got {structure!r}")
    return int(match[1]), int(match[2])


class GradualMagnitudePruning(Callback):
    """Prune weights of least magnitude on a schedule and hold them at exactly zero.

    Args:
        final_sparsity: target fraction of zeros at the end of the ramp: a float, or ``{glob or type: float}``
            (later keys win; ``"*"`` gives a default). Optional with ``structure`` (implied ``1 - N/M``), with
            ``criterion="std"``, or when the schedule object carries its own ``final_sparsity``.
        start_epoch: epoch (fractional allowed) of the first update point.
        end_epoch: epoch at which the final sparsity is reached; ``None`` = ``start + 0.75 (max_epochs - start)``.
        update_every: epochs between mask updates; ``None`` = 10 updates over the ramp.
        schedule: ``"cubic"`` (default, Zhu & Gupta), ``"polynomial"``, ``"linear"``, ``"exponential"``,
            ``"constant"`` (one-shot at ``start_epoch``), a ``{epoch: sparsity}`` mapping (multistep), or a
            :class:`~lightning_compress.schedules.SparsitySchedule` (its own timing and unit, e.g. steps, win).
        initial_sparsity: target at the first update point of a ramp.
        scope: ``"layer"`` (each layer reaches its own target) or ``"global"`` (one magnitude threshold over
            all selected layers; the scalar target is met in total, layers differ).
        criterion: ``"magnitude"`` (exact target counts) or ``"std"``: Han et al.'s rule, prune
            ``|w| < q * std(w)`` with ``q = sensitivity * ramp``; use a multistep schedule such as
            ``{1: 1, 2: 1, 3: 1}`` for Han's iterative prune/retrain rounds at a fixed ``q``.
        sensitivity: Han's ``q``, a float or ``{glob: float}`` (per-layer sensitivity); ``criterion="std"`` only.
        structure: ``"N:M"`` (e.g. ``"2:4"``): keep N of every M consecutive input weights; the ramp goes
            from M to N kept per group.
        include, exclude: globs over parameter or module names; ``types``: layer types (default Linear and
            Conv/ConvTranspose weights); ``param_names``: which parameters of those modules (``["weight", "bias"]``).
        log_layers: log per-layer sparsity at every update (global values are always logged).
        prog_bar: show the current global sparsity as ``sparsity`` in the progress bar.
    """

    def __init__(
        self,
        final_sparsity: float | dict[str, float] | None = None,
        start_epoch: float = 0.0,
        end_epoch: float | None = None,
        update_every: float | None = None,
        schedule: str | SparsitySchedule | dict[float, float] = "cubic",
        initial_sparsity: float = 0.0,
        scope: Literal["layer", "global"] = "layer",
        criterion: Literal["magnitude", "std"] = "magnitude",
        sensitivity: float | dict[str, float] | None = None,
        structure: str | None = None,
        include: list[str] | str | None = None,
        exclude: list[str] | str | None = None,
        types: list[str] | None = None,
        param_names: Sequence[str] = ("weight",),
        log_layers: bool = True,
        prog_bar: bool = True,
    ) -> None:
        super().__init__()
        if scope not in ("layer", "global"):
            raise ValueError(f"{_OWNER}: scope must be 'layer' or 'global', got {scope!r}")
        if criterion not in ("magnitude", "std"):
            raise ValueError(f"{_OWNER}: criterion must be 'magnitude' or 'std', got {criterion!r}")
        if not _is_number(start_epoch) or start_epoch < 0:
            raise ValueError(f"{_OWNER}: start_epoch must be a finite number >= 0, got {start_epoch!r}")
        if end_epoch is not None and (not _is_number(end_epoch) or end_epoch < start_epoch):
            raise ValueError(f"{_OWNER}: end_epoch ({end_epoch!r}) must be a finite number >= start_epoch ({start_epoch})")
        if update_every is not None and (not _is_number(update_every) or not update_every > 0):
            raise ValueError(f"{_OWNER}: update_every must be a finite number > 0 (epochs), got {update_every!r}")
        try:
            resolve_types(types)
        except ValueError as err:
            raise ValueError(f"{_OWNER}: {err}") from None
        _check_fraction("initial_sparsity", initial_sparsity)
        self.nm = _parse_structure(structure)

        if isinstance(schedule, Mapping):
            schedule = MultiStepSchedule(schedule)
        elif isinstance(schedule, str):
            if schedule.lower() not in SCHEDULE_NAMES:
                raise ValueError(f"{_OWNER}: schedule must be one of {list(SCHEDULE_NAMES)}, a mapping or a "
                                 f"SparsitySchedule; got {schedule!r}")
        elif not isinstance(schedule, SparsitySchedule):
            raise ValueError(f"{_OWNER}: schedule must be a name, a {{epoch: sparsity}} mapping or a SparsitySchedule, "
                             f"got {type(schedule).__name__}")
        if isinstance(schedule, SparsitySchedule) and end_epoch is not None:
            rank_zero_warn(f"{_OWNER}: a schedule object brings its own start/end; end_epoch={end_epoch} is ignored")

        if criterion == "std":
            if sensitivity is None:
                raise ValueError(f"{_OWNER}: criterion='std' needs sensitivity (Han's q, e.g. 1.0)")
            for q in sensitivity.values() if isinstance(sensitivity, Mapping) else [sensitivity]:
                if not isinstance(q, (int, float)) or q < 0:
                    raise ValueError(f"{_OWNER}: sensitivity must be >= 0 (or a mapping of such), got {sensitivity!r}")
            if final_sparsity is not None or scope != "layer" or self.nm:
                raise ValueError(f"{_OWNER}: criterion='std' sets sparsity through sensitivity; do not combine it "
                                 "with final_sparsity, scope='global' or structure")
            if _is_exponential(schedule):
                raise ValueError(f"{_OWNER}: criterion='std' needs a schedule whose ramp reaches 1; not exponential")
        elif sensitivity is not None:
            raise ValueError(f"{_OWNER}: sensitivity is only used with criterion='std'")

        if self.nm is not None:
            implied = 1.0 - self.nm[0] / self.nm[1]
            if isinstance(final_sparsity, Mapping) or scope != "layer":
                raise ValueError(f"{_OWNER}: structure={structure!r} takes no per-layer final_sparsity and scope='layer'")
            if final_sparsity is not None and abs(final_sparsity - implied) > 1e-9:
                raise ValueError(f"{_OWNER}: final_sparsity={final_sparsity} contradicts structure={structure!r} "
                                 f"(which means sparsity {implied:g}); drop final_sparsity")
            final_sparsity = implied
        if final_sparsity is None and criterion == "magnitude":
            if isinstance(schedule, SparsitySchedule) and schedule.final_sparsity is not None:
                final_sparsity = schedule.final_sparsity
            else:
                raise ValueError(f"{_OWNER}: final_sparsity is required (a float in [0, 1] or {{glob: float}})")
        if final_sparsity is not None:
            _check_fraction("final_sparsity", final_sparsity)
            if isinstance(final_sparsity, Mapping) and scope == "global":
                raise ValueError(f"{_OWNER}: scope='global' ranks all layers together; give final_sparsity as one float")
            lowest = min(final_sparsity.values()) if isinstance(final_sparsity, Mapping) else final_sparsity
            if lowest < initial_sparsity:
                raise ValueError(f"{_OWNER}: final_sparsity ({lowest}) is below initial_sparsity ({initial_sparsity})")
            if _is_exponential(schedule) and (
                max(final_sparsity.values()) if isinstance(final_sparsity, Mapping) else final_sparsity
            ) >= 1.0:
                raise ValueError(f"{_OWNER}: the exponential schedule needs final_sparsity < 1")

        self.final_sparsity = final_sparsity
        self.start_epoch = float(start_epoch)
        self.end_epoch = None if end_epoch is None else float(end_epoch)
        self.update_every = update_every
        self.schedule_spec = schedule
        self.initial_sparsity = float(initial_sparsity)
        self.scope = scope
        self.criterion = criterion
        self.sensitivity = sensitivity
        self.include, self.exclude, self.types = include, exclude, types
        self.param_names = tuple(param_names)
        self.log_layers = log_layers
        self.prog_bar = prog_bar

        self.schedule: SparsitySchedule | None = schedule if isinstance(schedule, SparsitySchedule) else None
        self.targets: list[Target] = []
        self.masks: dict[str, torch.Tensor] = {}
        self.last_point: float | None = None
        self.current_target: dict[str, float] = {}
        self.sparsity: float = 0.0
        self._final: dict[str, float] = {}
        self._q: dict[str, float] = {}
        self._loaded: dict[str, Any] | None = None
        self._handles: list[Any] = []
        self._hook_fns: list[Any] = []
        self._multipliers: dict[str, torch.Tensor] = {}
        self._shown: float | None = None

    @property
    @override
    def state_key(self) -> str:
        # keyed by what it prunes, so two instances on different layers checkpoint side by side, while a
        # changed target or schedule still resumes from an older checkpoint
        return self._generate_state_key(
            include=self.include, exclude=self.exclude, types=self.types, param_names=list(self.param_names)
        )

    # ---------------------------------------------------------------- hooks, in the order a fit calls them
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_sharded_strategy(trainer, _OWNER)
        check_compression_callbacks(trainer, pl_module, self, stage)
        previous = {t.name: t.param for t in self.targets}
        self.targets = find_targets(pl_module, self.include, self.exclude, self.types, self.param_names, owner=_OWNER)
        if self.nm is not None:  # fail now rather than at the first mask update
            for t in self.targets:
                cols = t.param.numel() // t.param.shape[0] if t.param.dim() >= 2 else 0
                if t.param.dim() < 2 or cols % self.nm[1]:
                    raise ValueError(f"{_OWNER}: structure='{self.nm[0]}:{self.nm[1]}' needs layer {t.name} "
                                     f"(shape {tuple(t.param.shape)}) to have an input size divisible by {self.nm[1]}")
        if self.criterion == "std":
            self._q = per_target_value(self.sensitivity, self.targets, _OWNER, "sensitivity")
        else:
            self._final = per_target_value(self.final_sparsity, self.targets, _OWNER, "final_sparsity")
        kept = {}
        for t in self.targets:  # a second fit of the same model keeps its masks (they only grow)...
            old = self.masks.get(t.name)
            same = old is not None and previous.get(t.name) is t.param and old.shape == t.param.shape
            kept[t.name] = old.to(t.param.device) if same else torch.ones_like(t.param, dtype=torch.bool)
        if self.masks and not any(previous.get(t.name) is t.param for t in self.targets):
            # ...while another model (same callback object) starts its schedule afresh
            self.last_point, self.current_target = None, {}
        self.masks = kept

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # called after setup and after the model weights were restored; applied once optimizers exist
        self._loaded = state_dict

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # restored here, not in on_train_start: resuming from a checkpoint already at max_epochs trains no step
        # and calls no on_train_start, yet the masks must be held (and saved again by trainer.save_checkpoint)
        if self._loaded is not None:
            self._restore(self._loaded)
            self._loaded = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedule = self._build_schedule(trainer)
        if self.schedule.unit == "epoch" and not math.isfinite(trainer.num_training_batches):
            raise ValueError(f"{_OWNER}: an epoch-based schedule needs a sized train dataloader; "
                             "pass a step-based schedule (unit='step') instead")
        self._apply_all()
        self._register_post_step_hooks(trainer)
        self.sparsity, self._shown = self._achieved()[0], None
        if self.schedule.unit == "epoch" and trainer.max_epochs not in (None, -1) and self.schedule.end > trainer.max_epochs:
            rank_zero_warn(f"{_OWNER}: the schedule ends at epoch {self.schedule.end:g} but max_epochs="
                           f"{trainer.max_epochs}; the final sparsity will not be reached")

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._maybe_update(trainer, batch_idx)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # before Lightning's gradient clipping: pruned weights take no part in the norm nor in the update
        for t in self.targets:
            grad, mask = t.param.grad, self._multipliers.get(t.name)
            if grad is not None and mask is not None:
                grad.mul_(mask)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # the progress bar keeps the last value, so log only when it changes (self.log is not free per step)
        if self.prog_bar and self._shown != self.sparsity:
            pl_module.log("sparsity", self.sparsity, prog_bar=True, logger=False, on_step=True, on_epoch=False)
            self._shown = self.sparsity

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {name: m.detach().cpu().clone() for name, m in self.masks.items()},
            "last_point": self.last_point,
            "current_target": dict(self.current_target),
            "unit": None if self.schedule is None else self.schedule.unit,
        }

    # ---------------------------------------------------------------- internals
    def _build_schedule(self, trainer: pl.Trainer) -> SparsitySchedule:
        if isinstance(self.schedule_spec, SparsitySchedule):
            return self.schedule_spec
        end = self.end_epoch
        if end is None:
            if trainer.max_epochs in (None, -1):
                raise ValueError(f"{_OWNER}: end_epoch is required when the Trainer has no max_epochs")
            end = self.start_epoch + DEFAULT_RAMP_FRACTION * max(0.0, trainer.max_epochs - self.start_epoch)
        return make_schedule(self.schedule_spec, start=self.start_epoch, end=end, frequency=self.update_every,
                             unit="epoch", initial_sparsity=self.initial_sparsity)

    def progress(self, trainer: pl.Trainer, batch_idx: int = 0) -> float:
        """Where the fit is, in the schedule's unit: optimizer steps, or epochs with the batch fraction.

        Epochs count batches, not optimizer steps, so gradient accumulation and manual optimization (any
        number of steps per batch) do not stretch the schedule; both are restored exactly on resume.
        """
        if self.schedule.unit == "step":
            return float(trainer.global_step)
        return trainer.current_epoch + batch_idx / max(1, trainer.num_training_batches)

    def _restore(self, state: dict[str, Any]) -> None:
        saved = state.get("masks", {})
        missing = [t.name for t in self.targets if t.name not in saved]
        if missing:
            raise ValueError(f"{_OWNER}: the checkpoint has no masks for {missing}; was it made with other layers?")
        for t in self.targets:
            mask = saved[t.name]
            if mask.shape != t.param.shape:
                raise ValueError(f"{_OWNER}: checkpoint mask for {t.name} has shape {tuple(mask.shape)}, "
                                 f"the layer {tuple(t.param.shape)}")
            self.masks[t.name] = mask.to(device=t.param.device, dtype=torch.bool)
        self.last_point = state.get("last_point")
        self.current_target = dict(state.get("current_target", {}))

    def _apply_all(self) -> None:
        for t in self.targets:
            M.apply_mask_(t.param, self.masks[t.name])
        # Hot-path multipliers: the same bytes viewed as uint8 (float * uint8 is ~3x faster than float * bool
        # in PyTorch's CPU kernels); layers with nothing pruned are skipped entirely.
        self._multipliers = {
            t.name: self.masks[t.name].view(torch.uint8) for t in self.targets if not bool(self.masks[t.name].all())
        }

    def _register_post_step_hooks(self, trainer: pl.Trainer) -> None:
        self._remove_hooks(trainer)
        by_id = {id(t.param): t for t in self.targets}
        for opt in trainer.optimizers:
            mine = [by_id[id(p)] for g in opt.param_groups for p in g["params"] if id(p) in by_id]
            if mine:
                hook = self._make_post_hook(mine)
                self._hook_fns.append(hook)
                self._handles.append(opt.register_step_post_hook(hook))
        orphans = set(by_id) - {id(p) for o in trainer.optimizers for g in o.param_groups for p in g["params"]}
        if orphans and trainer.optimizers:
            rank_zero_info(f"{_OWNER}: {len(orphans)} pruned tensors are in no optimizer; they stay as pruned")

    def _make_post_hook(self, targets: list[Target]):
        def reapply(optimizer: Any, args: Any, kwargs: Any) -> None:
            with torch.no_grad():
                for t in targets:
                    mask = self._multipliers.get(t.name)
                    if mask is not None:
                        # + 0.0 turns the -0.0 that stale momentum leaves (negative x 0) into +0.0
                        t.param.mul_(mask).add_(0.0)

        return reapply

    def _remove_hooks(self, trainer: pl.Trainer | None = None) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        # copies of our hooks on optimizers rebuilt mid-fit (LowRankFactorization carries hooks over)
        for opt in trainer.optimizers if trainer is not None else []:
            hooks = opt._optimizer_step_post_hooks
            for key in [k for k, fn in hooks.items() if any(fn is mine for mine in self._hook_fns)]:
                del hooks[key]
        self._hook_fns = []

    def _maybe_update(self, trainer: pl.Trainer, batch_idx: int) -> None:
        point = self.schedule.update_point(self.progress(trainer, batch_idx))
        if point is None or point == self.last_point:
            return
        self.update_masks(point)
        self.last_point = point
        self._log(trainer)

    def update_masks(self, point: float) -> None:
        """Recompute masks for the schedule's target at ``point`` and zero the newly pruned weights."""
        sched, params = self.schedule, [t.param for t in self.targets]
        for t in self.targets:  # NaN has no magnitude: a diverged layer must not be pruned as if it were fine
            if not bool(torch.isfinite(t.param).all()):
                bad = int((~torch.isfinite(t.param)).sum())
                raise FloatingPointError(f"{_OWNER}: layer {t.name} has {bad} non-finite weights (NaN/inf) at the "
                                         f"mask update at {sched.unit} {point:g}; training diverged before pruning "
                                         "(lower the learning rate, clip gradients)")
        if self.criterion == "std":
            ramp = sched.target(point, final=1.0, initial=0.0)
            for t in self.targets:
                q = self._q[t.name] * ramp
                self.masks[t.name] = M.threshold_mask(t.param, q, self.masks[t.name])
                self.current_target[t.name] = M.sparsity(self.masks[t.name])
        elif self.scope == "global":
            target = sched.target(point, final=self.final_sparsity)
            new = M.global_magnitude_masks(params, target, [self.masks[t.name] for t in self.targets])
            for t, m in zip(self.targets, new):
                self.masks[t.name] = m
                self.current_target[t.name] = target
        elif self.nm is not None:
            n, m = self.nm
            target = sched.target(point, final=self._final[self.targets[0].name])
            keep = max(n, m - int(round(target * m)))
            for t in self.targets:
                self.masks[t.name] = M.nm_mask(t.param, keep, m, self.masks[t.name])
                self.current_target[t.name] = 1.0 - keep / m
        else:
            for t in self.targets:
                target = sched.target(point, final=self._final[t.name])
                self.masks[t.name] = M.magnitude_mask(t.param, target, self.masks[t.name])
                self.current_target[t.name] = target
        self._apply_all()

    def _achieved(self) -> tuple[float, dict[str, float]]:
        per_layer, zeros, total = {}, 0, 0
        for t in self.targets:
            z = int((t.param.detach() == 0).sum())
            per_layer[t.name] = z / t.param.numel()
            zeros, total = zeros + z, total + t.param.numel()
        return (zeros / total if total else 0.0), per_layer

    def target_sparsity(self) -> float:
        """Current scheduled sparsity over all selected weights (element-weighted)."""
        total = sum(t.param.numel() for t in self.targets)
        if not total or not self.current_target:
            return 0.0
        return sum(self.current_target.get(t.name, 0.0) * t.param.numel() for t in self.targets) / total

    def _log(self, trainer: pl.Trainer) -> None:
        self.sparsity, per_layer = self._achieved()
        metrics = {tag("target_sparsity"): self.target_sparsity(), tag("sparsity"): self.sparsity}
        if self.log_layers:
            for name, value in per_layer.items():
                metrics[tag("sparsity", name)] = value
                metrics[tag("target_sparsity", name)] = self.current_target.get(name, 0.0)
        log_scalars(trainer, metrics)


__all__ = ["GradualMagnitudePruning"]
