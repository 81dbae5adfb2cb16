r"""Gradual magnitude pruning during ``Trainer.fit`` (Zhu & Gupta 2017; Han et al. 2015's threshold rule).

At each update point of a schedule the callback recomputes masks (bool, 1 byte per weight, held here,
never as ``weight_mask`` parametrizations; checkpoints hold them bit-packed, 1/8 byte per weight) with one
of the rules of :mod:`lightning_compress.core.mask_rules`, zeroes the pruned weights in place and keeps them
at exactly zero for the rest of the fit: their gradients are zeroed before the optimizer step (and before gradient
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
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_compress.callbacks import _pruning_args as args
from lightning_compress.callbacks._claims import Claim
from lightning_compress.callbacks._conflicts import check_compression_callbacks
from lightning_compress.callbacks._logging import log_scalars, log_text, tag
from lightning_compress.callbacks._plumbing import DeferredState, StepHook, unwrap_optimizer
from lightning_compress.callbacks._pruning_state import packed_masks, restored_masks
from lightning_compress.callbacks._strategy import refuse_sharded_strategy
from lightning_compress.core.distributed import local_tensor, shard_count
from lightning_compress.core import masks as mask_ops
from lightning_compress.core.mask_rules import choose_rule
from lightning_compress.core.sharded_masks import apply_rule, local_masks, non_finite, whole_masks
from lightning_compress.core.targets import Target, find_targets, per_target_value
from lightning_compress.schedules.reach import last_progress
from lightning_compress.schedules.sparsity import SparsitySchedule, make_schedule
from lightning_compress.validation import as_config_error, check_bool, check_choice, check_fraction, check_number, fail

_OWNER = args.OWNER
#: Without ``end_epoch``, the ramp ends after this fraction of ``max_epochs`` (the rest fine-tunes).
DEFAULT_RAMP_FRACTION = 0.75
#: Schedule names that prune once, at ``start_epoch``: they need no end.
ONE_SHOT_NAMES = ("constant", "one_shot", "oneshot")
_EPS = 1e-9
#: Optimizers whose update leaves a weight at exactly +0.0 when its gradient and its state entries are zero
#: (SGD with momentum/Nesterov/weight decay, Adam, AdamW while lr * weight_decay < 1). With those, once the
#: state of the pruned entries is zeroed at a mask update, masking the gradients is all a step needs.
_ZERO_KEEPING = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


class GradualMagnitudePruning(Callback):
    """Prune weights of least magnitude on a schedule and hold them at exactly zero.

    Args:
        final_sparsity: target fraction of zeros at the end of the ramp: a float, or ``{glob or type: float}``
            (later keys win; ``"*"`` gives a default). Optional with ``structure`` (implied ``1 - N/M``), with
            ``criterion="std"``, or when the schedule object carries its own ``final_sparsity``.
        start_epoch: epoch (fractional allowed) of the first update point.
        end_epoch: epoch at which the final sparsity is reached; ``None`` = ``start + 0.75 (max_epochs - start)``
            (a one-shot ``schedule="constant"`` needs no end).
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
        include: globs over parameter or module names of the layers to prune (``"fc*"``); default: every
            layer of ``types``.
        exclude: globs of layers to leave dense (applied after ``include``).
        types: layer types (``"linear"``, ``"conv"``, ``"embedding"``, ``"attention"``, ``"rnn"``, ... or classes);
            default: every weight matrix (Linear, Conv/ConvTranspose, Embedding, attention, RNN weights).
        param_names: which parameters of those modules (``["weight", "bias"]`` for biases too).
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
        self.scope = check_choice(_OWNER, "scope", scope, ("layer", "global"))
        self.criterion = check_choice(_OWNER, "criterion", criterion, ("magnitude", "std"))
        self.start_epoch = float(check_number(_OWNER, "start_epoch", start_epoch, low=0))
        self.end_epoch = args.check_end_epoch(end_epoch, self.start_epoch)
        self.update_every = check_number(_OWNER, "update_every", update_every, low=0, low_open=True, allow_none=True)
        self.initial_sparsity = float(check_fraction(_OWNER, "initial_sparsity", initial_sparsity))
        self.schedule_spec = args.check_schedule(schedule, self.end_epoch)
        self.structure = structure
        self._group_pattern = args.parse_structure(structure)  # (kept N, group size M) for "N:M"
        self.sensitivity = args.check_sensitivity(sensitivity, criterion, final_sparsity, scope,
                                                  self._group_pattern is not None, self.schedule_spec)
        self.final_sparsity = args.check_final_sparsity(final_sparsity, self.initial_sparsity, criterion, scope,
                                                        self._group_pattern, self.schedule_spec)
        self.include, self.exclude, self.types = include, exclude, args.check_types(types)
        self.param_names = tuple(param_names)
        self.log_layers = check_bool(_OWNER, "log_layers", log_layers)
        self.prog_bar = check_bool(_OWNER, "prog_bar", prog_bar)
        self._rule = choose_rule(self.scope, self.criterion, self._group_pattern)

        self.schedule: SparsitySchedule | None = self.schedule_spec if isinstance(self.schedule_spec, SparsitySchedule) else None
        self.targets: list[Target] = []
        self.masks: dict[str, torch.Tensor] = {}
        self.last_point: float | None = None
        self.current_target: dict[str, float] = {}
        self.sparsity: float = 0.0
        self._level_by_layer: dict[str, float] = {}  # what the schedule ramps each layer to: sparsity, or Han's q
        self._levels: dict[str, float] = {}  # the levels of the last mask update (saved: a changed target shows)
        self._held: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # (param, uint8 mask) of pruned layers
        self._held_by_optimizer: dict[int, list[tuple[torch.nn.Parameter, torch.Tensor]]] = {}
        self._state_zeroed: set[int] = set()  # optimizers whose state holds zeros at every pruned entry
        self._grads_masked: set[int] = set()  # optimizers whose gradients were masked before this step
        self._skip_proven_steps = True  # off for the rest of the fit once a check finds a moved pruned weight
        self._shown_sparsity: float | None = None
        self._unfinished: tuple[str, ...] = ()
        self._deferred = DeferredState()
        self._step_hook = StepHook(self._reapply_masks)

    @property
    @override
    def state_key(self) -> str:
        # keyed by what it prunes, so two instances on different layers checkpoint side by side, while a
        # changed target or schedule still resumes from an older checkpoint
        return self._generate_state_key(
            include=self.include, exclude=self.exclude, types=self.types, param_names=list(self.param_names)
        )

    # ---------------------------------------------------------------- what it will do (read by other callbacks)
    def describe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Claim:
        """Which layers this fit prunes, from the first to the last update point of the schedule."""
        schedule = self._build_schedule(trainer)
        names = [t.name for t in self._find_targets(pl_module)]
        complete = self.last_point is not None and self.last_point >= schedule.end - _EPS
        return Claim(owner=_OWNER, kind="prune", unit=schedule.unit,
                     layers={name: (schedule.start, schedule.end) for name in names},
                     done=frozenset(names) if complete else frozenset(), unfinished=self._unfinished)

    # ---------------------------------------------------------------- hooks, in the order a fit calls them
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        refuse_sharded_strategy(trainer, _OWNER, sharded_ok=True)
        check_compression_callbacks(trainer, pl_module, self, stage)
        previous = {t.name: t.param for t in self.targets}
        self.targets = self._find_targets(pl_module)
        if self._group_pattern is not None:  # fail now rather than at the first mask update
            group = self._group_pattern[1]
            for t in self.targets:
                if t.param.dim() < 2 or (t.param.numel() // t.param.shape[0]) % group:
                    fail(_OWNER, f"structure='{self.structure}' needs layer {t.name} (shape {tuple(t.param.shape)}) "
                                 f"to have an input size divisible by {group}")
        levels, what = (self.sensitivity, "sensitivity") if self.criterion == "std" else (self.final_sparsity, "final_sparsity")
        self._level_by_layer = per_target_value(levels, self.targets, _OWNER, what)
        kept = {}
        for t in self.targets:  # a second fit of the same model keeps its masks (they only grow)...
            old = self.masks.get(t.name)
            same = old is not None and previous.get(t.name) is t.param and old.shape == t.param.shape
            kept[t.name] = old.to(t.param.device) if same else torch.ones_like(t.param, dtype=torch.bool)
        if self.masks and not any(previous.get(t.name) is t.param for t in self.targets):
            # ...while another model (same callback object) starts its schedule afresh
            self.last_point, self.current_target, self._levels = None, {}, {}
        self.masks = kept
        self._unfinished = ()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # called after setup and after the model weights were restored; applied once optimizers exist
        self._deferred.hold(state_dict)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # restored here, not in on_train_start: resuming from a checkpoint already at max_epochs trains no step
        # and calls no on_train_start, yet the masks must be held (and saved again by trainer.save_checkpoint)
        self.masks = local_masks(self.masks, {t.name: t.param for t in self.targets})  # FSDP2: this rank's rows
        self._deferred.arm(lambda state: self._restore(state, self._build_schedule(trainer)))  # (also: state after)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedule = self._build_schedule(trainer)
        if self.schedule.unit == "epoch" and not math.isfinite(trainer.num_training_batches):
            fail(_OWNER, "an epoch-based schedule needs a sized train dataloader; "
                         "pass a step-based schedule (unit='step') instead")
        self._apply_all()
        self._zero_pruned_state(trainer.optimizers)
        self._step_hook.attach_all(trainer.optimizers)
        owned = {id(p) for o in trainer.optimizers for g in o.param_groups for p in g["params"]}
        orphans = [t.name for t in self.targets if id(t.param) not in owned]
        if orphans and trainer.optimizers:
            rank_zero_info(f"{_OWNER}: {len(orphans)} pruned tensors are in no optimizer; they stay as pruned")
        self.sparsity, self._shown_sparsity = self._achieved()[0], None
        self._warn_if_unreachable(trainer, pl_module)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        point = self.schedule.update_point(self.progress(trainer, batch_idx))
        if point is not None and point != self.last_point:
            self.update_masks(point)
            self._zero_pruned_state(trainer.optimizers)
            self.last_point = point
            self._log(trainer)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # before Lightning's gradient clipping: pruned weights take no part in the norm nor in the update
        for param, mask in self._held:
            if param.grad is not None:
                mask_ops.multiply_by_mask_(local_tensor(param.grad), mask)
        self._grads_masked.add(id(unwrap_optimizer(optimizer)))

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # the progress bar keeps the last value, so log only when it changes (self.log is not free per step)
        if self.prog_bar and self._shown_sparsity != self.sparsity:
            pl_module.log("sparsity", self.sparsity, prog_bar=True, logger=False, on_step=True, on_epoch=False)
            self._shown_sparsity = self.sparsity

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_zeros_held()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_zeros_held()
        self._note_unfinished(trainer)  # before every on_fit_end, so ExportCompressed sees it in describe()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._note_unfinished(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step_hook.detach(trainer.optimizers)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._step_hook.detach(trainer.optimizers)
        self._deferred.disarm()

    @override
    def state_dict(self) -> dict[str, Any]:
        # bit-packed: 1/8 byte per weight in the checkpoint (live masks: bool); whole layers (FSDP2: rank 0 saves)
        masks = whole_masks(self.masks, {t.name: t.param for t in self.targets})
        return {
            **packed_masks(_OWNER, masks),
            "last_point": self.last_point,
            "current_target": dict(self.current_target),
            "levels": dict(self._levels),
            "unit": None if self.schedule is None else self.schedule.unit,
        }

    # ---------------------------------------------------------------- schedule and progress
    def _find_targets(self, pl_module: pl.LightningModule) -> list[Target]:
        with as_config_error(_OWNER):
            return find_targets(pl_module, self.include, self.exclude, self.types, self.param_names, owner=_OWNER)

    def _build_schedule(self, trainer: pl.Trainer) -> SparsitySchedule:
        if isinstance(self.schedule_spec, SparsitySchedule):
            return self.schedule_spec
        end = self.end_epoch
        if self.schedule_spec.lower() in ONE_SHOT_NAMES:
            end = self.start_epoch  # one-shot: nothing to ramp, no end needed
        elif end is None:
            if trainer.max_epochs in (None, -1):
                fail(_OWNER, "end_epoch is required when the Trainer has no max_epochs")
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

    def _warn_if_unreachable(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before the first step: say so when ``max_epochs``/``max_steps`` stop the fit before the ramp ends."""
        unit, end = self.schedule.unit, self.schedule.end
        max_epochs = None if trainer.max_epochs in (None, -1) else trainer.max_epochs
        max_steps = None if trainer.max_steps in (None, -1) else trainer.max_steps
        if not pl_module.automatic_optimization:  # steps per batch unknown: only max_epochs can be judged
            if unit == "step":
                return
            max_steps = None
        last = last_progress(unit, trainer.num_training_batches, trainer.accumulate_grad_batches, max_epochs, max_steps)
        if last is not None and end > last + _EPS and (self.last_point is None or self.last_point < end - _EPS):
            limits = ", ".join(f"{k}={v}" for k, v in (("max_epochs", max_epochs), ("max_steps", max_steps)) if v is not None)
            rank_zero_warn(f"{_OWNER}: the schedule ends at {unit} {end:g} but the last batch of this fit starts at "
                           f"{unit} {last:g} ({limits}); the final sparsity will not be reached")

    def _note_unfinished(self, trainer: pl.Trainer) -> None:
        """At the end of training: if the ramp did not reach its end, warn and record what is missing."""
        sched = self.schedule
        if sched is None or not self.targets or (self.last_point is not None and self.last_point >= sched.end - _EPS):
            return
        zeros, asked = self._achieved()[1], self._rule.asked(self._scheduled_levels(sched, sched.end))
        if asked is None:
            notes = [f"{t.name}: {zeros[t.name]:.1%} sparse, threshold ramp unfinished" for t in self.targets]
        else:
            notes = [f"{t.name}: {zeros[t.name]:.1%} sparse, {a:.1%} asked" for t, a in zip(self.targets, asked)]
        self._unfinished = tuple(notes)
        where = "not started" if self.last_point is None else f"last update at {sched.unit} {self.last_point:g}"
        text = (f"{_OWNER}: training stopped before the pruning schedule ended ({sched.unit} {sched.end:g}; "
                f"{where}): " + "; ".join(notes))
        rank_zero_warn(text)
        log_text(trainer, tag("unfinished", "pruning"), text)

    # ---------------------------------------------------------------- masks
    def _restore(self, state: dict[str, Any], sched: SparsitySchedule) -> None:
        restored = restored_masks(_OWNER, state, self.targets)  # whole layers; FSDP2: each rank keeps its rows
        self.masks.update(local_masks(restored, {t.name: t.param for t in self.targets}))
        self.last_point = state.get("last_point")
        self.current_target = dict(state.get("current_target", {}))
        self._levels = dict(state.get("levels", self.current_target))
        self._continue_changed_target(sched)

    def _continue_changed_target(self, sched: SparsitySchedule) -> None:
        """Resumed after the ramp ended with another target: prune on to a higher one, refuse a lower one."""
        if self.criterion == "std" or self.last_point is None or self.last_point < sched.end - _EPS:
            return  # mid-ramp the next update point uses the new target anyway
        new = dict(zip((t.name for t in self.targets), self._scheduled_levels(sched, sched.end)))
        old = {name: self._levels.get(name, level) for name, level in new.items()}
        lower = [name for name in new if new[name] < old[name] - _EPS]
        if lower:
            name = lower[0]
            fail(_OWNER, f"final_sparsity {new[name]:g} for {name} is below the {old[name]:g} its checkpoint masks "
                         "already prune (the ramp ended there); masks only grow: resume with final_sparsity >= "
                         f"{old[name]:g}, or start from the dense weights")
        higher = [name for name in new if new[name] > old[name] + _EPS]
        if higher:
            changes = ", ".join(f"{n} {old[n]:g} -> {new[n]:g}" for n in higher)
            rank_zero_info(f"{_OWNER}: final_sparsity changed after the ramp ended ({changes}); "
                           "pruning on to the new target at the next batch")
            self.last_point = None  # the end point is due again, with the new target

    def _scheduled_levels(self, sched: SparsitySchedule, point: float) -> list[float]:
        """What the schedule asks of each layer at ``point``: a sparsity, or Han's q times the ramp."""
        initial = 0.0 if self.criterion == "std" else None
        return [sched.target(point, final=self._level_by_layer[t.name], initial=initial) for t in self.targets]

    def update_masks(self, point: float) -> None:
        """Recompute masks for the schedule's target at ``point`` and zero the newly pruned weights."""
        for t in self.targets:  # NaN has no magnitude: a diverged layer must not be pruned as if it were fine
            if bad := non_finite(t.param):
                raise FloatingPointError(f"{_OWNER}: layer {t.name} has {bad} non-finite weights (NaN/inf) at the "
                                         f"mask update at {self.schedule.unit} {point:g}; training diverged before "
                                         "pruning (lower the learning rate, clip gradients)")
        levels = self._scheduled_levels(self.schedule, point)
        new, targets = apply_rule(self._rule, [t.param for t in self.targets], [self.masks[t.name] for t in self.targets], levels)
        for t, mask, target, level in zip(self.targets, new, targets, levels):
            self.masks[t.name], self.current_target[t.name], self._levels[t.name] = mask, target, level
        self._apply_all()

    def _apply_all(self) -> None:
        """Zero the pruned weights and rebuild the hot-path list of (parameter, uint8 mask) of pruned layers.

        ``float * uint8`` is faster than ``float * bool`` in PyTorch's CPU kernels; the uint8 view shares the
        mask's bytes. Layers with nothing pruned are left out of the per-step work entirely.
        """
        self._held = []
        for t in self.targets:
            mask = self.masks[t.name]
            if int(torch.count_nonzero(mask)) < mask.numel():
                self._held.append((t.param, mask.view(torch.uint8)))
                mask_ops.apply_mask_(local_tensor(t.param), mask, self._held[-1][1])
        self._held_by_optimizer, self._state_zeroed = {}, set()

    def _zero_pruned_state(self, optimizers: Sequence[Any]) -> None:
        """Zero the optimizer state (momentum, Adam moments) of pruned entries, once per mask change.

        Stale momentum is what would move a pruned weight; without it, an optimizer of ``_ZERO_KEEPING`` keeps
        pruned weights at +0.0 by itself, and the per-step re-masking can be skipped (see ``_reapply_masks``).
        """
        for optimizer in map(unwrap_optimizer, optimizers):
            with torch.no_grad():
                for param, mask in self._held:
                    for value in optimizer.state.get(param, {}).values():
                        if isinstance(value, torch.Tensor) and value.shape == param.shape:
                            local_tensor(value).mul_(mask)
            self._state_zeroed.add(id(optimizer))

    def _step_kept_zeros(self, optimizer: torch.optim.Optimizer) -> bool:
        """Whether this step provably left every pruned weight at +0.0 (so re-masking would change nothing)."""
        masked = id(optimizer) in self._grads_masked
        self._grads_masked.discard(id(optimizer))
        if not masked or not self._skip_proven_steps or type(optimizer) not in _ZERO_KEEPING or id(optimizer) not in self._state_zeroed:
            return False
        if type(optimizer) is torch.optim.AdamW:  # decoupled decay multiplies by 1 - lr * wd: keep it positive
            return all(float(g["lr"]) * float(g["weight_decay"]) < 1 for g in optimizer.param_groups)
        return True

    def _check_zeros_held(self) -> None:
        """Once per epoch: a pruned weight that moved (something changed gradients after this callback masked
        them) is zeroed again, said once, and every later step is re-masked."""
        moved = [p for p, m in self._held if bool(torch.logical_and(local_tensor(p) != 0, m == 0).any())]
        if moved and self._skip_proven_steps:
            rank_zero_warn(f"{_OWNER}: {len(moved)} pruned tensors held non-zero weights at the epoch end (a hook "
                           "changed gradients after this callback masked them?); zeroed again, and re-masked "
                           "after every step from now on")
            self._skip_proven_steps = False
        if moved:
            self._apply_all()

    def _reapply_masks(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """After every optimizer step: momentum, weight decay or Adam moments may have moved pruned weights.

        Skipped when the step provably kept them at +0.0: the gradients were masked before it (Lightning's
        ``on_before_optimizer_step``, also under manual optimization through ``self.optimizers()``), the
        optimizer is one of ``_ZERO_KEEPING`` and its state of pruned entries was zeroed at the mask update.
        A step that bypasses Lightning (a raw optimizer) or any other optimizer is re-masked.
        """
        if self._step_kept_zeros(optimizer):
            return
        held = self._held_by_optimizer.get(id(optimizer))
        if held is None:
            owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
            held = self._held_by_optimizer[id(optimizer)] = [(p, m) for p, m in self._held if id(p) in owned]
        with torch.no_grad():
            for param, mask in held:
                mask_ops.multiply_by_mask_(local_tensor(param), mask, positive_zero=True)  # never -0.0

    # ---------------------------------------------------------------- what is logged
    def _achieved(self) -> tuple[float, dict[str, float]]:
        per_layer, zeros, total = {}, 0, 0
        for t in self.targets:
            z = t.param.numel() - shard_count(int(torch.count_nonzero(local_tensor(t.param))), t.param)
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
