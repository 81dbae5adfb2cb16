"""LowRankFactorization: replace trained layers by low-rank factors, post-hoc or mid-fit with fine-tuning.

``nn.Linear`` (``m x n``) becomes a :class:`~lightning_compress.core.lowrank.LowRankLinear` (two Linears
from the truncated SVD, ``sqrt(sigma)`` on each side, bias on the second); ``nn.Conv2d`` becomes a
:class:`~lightning_compress.core.lowrank.TuckerConv2d` (1x1 -> kxk -> 1x1, Tucker-2 by HOSVD [+HOOI]).
Ranks come from a kept-energy threshold, a fixed rank or a target parameter ratio, per layer if wanted.
A layer whose factorization would not save parameters, a grouped conv, or a layer that already looks pruned
or shared (unless ``force=True``) is left dense, and the report says why.

Example::

    from lightning_compress import LowRankFactorization

    # post-hoc (default): factorize at the end of fit, keep 90% of each layer's energy
    trainer = Trainer(callbacks=[LowRankFactorization(energy=0.9)])
    # mid-fit: factorize at the start of epoch 8, then the remaining epochs fine-tune the factors
    trainer = Trainer(max_epochs=10, callbacks=[LowRankFactorization(param_ratio=0.25, epoch=8, exclude=["fc3"])])
    trainer.fit(model, datamodule)
    print(trainer.callbacks[0].table())

    # inference on a factorized checkpoint with a plain model instance
    model = load_factorized("last.ckpt", LeNet300100())

**Mid-fit** (``epoch=E``): at the start of epoch ``E`` the modules are replaced in place, then optimizers
and LR schedulers are rebuilt with the module's own ``configure_optimizers`` so the factors train. What
carries over: each rebuilt scheduler loads the ``state_dict`` of the one it replaces (same position), and
each param group takes the old group's current ``lr``/``initial_lr`` (and momentum/betas), so the schedule
continues from epoch ``E`` instead of restarting; optimizer state (momentum buffers, Adam moments) carries
over for the parameters that survived, while the new factors start with empty state; step pre/post hooks
that other callbacks registered on the old optimizers are copied onto the new ones. Under DDP the module is
re-wrapped, which also broadcasts the factors from rank 0 (the plan itself is decided on rank 0).

**Accuracy**: just before and just after the factorization the callback evaluates the validation
dataloader itself (top-1 on ``(x, y)`` batches, summed over ranks) and logs
``compress/lowrank/acc_before`` and ``compress/lowrank/acc_after``; after fine-tuning, at the end of
training, ``compress/lowrank/acc_finetuned`` (alongside the module's own ``val_acc``).

**Checkpoints**: factor weights are ordinary state_dict entries (``fc1.first.weight``, ``fc1.second.weight``,
``conv2.core.weight``, ...). The plan (layer, kind, ranks) is stored in the callback state and at the top
level of the checkpoint (``"lowrank_factorization"``). On resume the architecture must change *before* the
weights load, but Lightning restores callback state only after the model, so in ``setup`` this callback
registers a ``load_state_dict`` pre-hook on the module that rebuilds the factorized layers the incoming
state_dict describes (its keys and shapes say exactly which layers and ranks). It works for every path
into ``load_state_dict`` (``fit/validate/test(ckpt_path=...)``, ``"last"``, HPC) without re-reading the
file. :func:`load_factorized` does the same for inference without a Trainer. Post-hoc factorization runs
in ``on_train_end``, after ``ModelCheckpoint`` wrote its files (they hold the dense model): call
``trainer.save_checkpoint(path)`` after ``fit`` to keep the factorized one.

**Order with the other callbacks**: factorize first, then prune/share. The factors are ordinary
``nn.Linear``/``nn.Conv2d`` children (``fc1.first``, ``conv2.core``, ...), so a later pruning or sharing
fit selects them like any layer; a layer that already looks pruned (more than 1% exact zeros) or shared
(at most 256 distinct values) is left dense unless ``force=True`` (the SVD of a pruned or quantized
matrix destroys its zeros and codebook). Factors are never factorized again.

Monitoring: per layer ``compress/rank/<layer>`` (``.../in`` and ``.../out`` for Tucker-2),
``compress/energy/<layer>``, ``compress/params_before|params_after/<layer>``,
``compress/macs_before|macs_after/<layer>`` (per sample, measured input sizes), the totals
``compress/lowrank/params_ratio`` and the text table ``compress/lowrank/table``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import _load as pl_load
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_compress.callbacks._conflicts import check_compression_callbacks
from lightning_compress.callbacks._strategy import refuse_sharded_strategy
from lightning_compress.callbacks._logging import log_scalars, log_text, tag
from lightning_compress.core import lowrank as lr
from lightning_compress.core.targets import find_targets, per_target_value

#: Top-level checkpoint key holding the plan (list of dicts), readable without the callback.
CHECKPOINT_KEY = "lowrank_factorization"
_SUPPORTED = (nn.Linear, nn.Conv2d)
#: Param-group hyperparameters that LR/momentum schedulers move and that must continue after a rebuild.
_SCHEDULED_GROUP_KEYS = ("lr", "initial_lr", "momentum", "betas", "max_lr", "min_lr", "max_momentum", "base_momentum")

# int first: jsonargparse tries union members in order, and `rank: 32` in YAML must stay an int, not 32.0
RuleValue = int | float | Sequence[int]


class LowRankFactorization(Callback):
    """Factorize Linear (truncated SVD) and Conv2d (Tucker-2) layers, at the end of fit or at a given epoch.

    Args:
        energy: kept-energy threshold tau in (0, 1] (smallest rank with ``sum sigma_i^2 / sum sigma^2 >= tau``,
            per channel mode for convs), or a ``{glob or type alias: tau}`` mapping. The default rule
            (``energy=0.9``) when none of ``energy``/``rank``/``param_ratio`` is given.
        rank: fixed rank (int; for convs also ``[r_in, r_out]``), or a mapping.
        param_ratio: target factorized/dense weight count per layer in (0, 1), or a mapping.
        epoch: ``None`` factorizes at the end of training (post-hoc); an int factorizes at the start of that
            epoch, and the remaining epochs fine-tune the factors.
        include, exclude, types: layer selection as everywhere in this package (default types: linear, conv2d;
            other types are skipped with a message).
        hooi_iters: HOOI refinement sweeps after the HOSVD initialisation of Tucker-2 (0 = HOSVD only).
        force: factorize layers that already look pruned (exact zeros) or shared (few distinct values).
        evaluate: measure validation accuracy just before/after factorizing and after fine-tuning.
        eval_batches: cap on validation batches for those measurements (default: the Trainer's val batches).
        verbose: print the per-layer table (rank zero).
    """

    def __init__(
        self,
        energy: float | Mapping[str, float] | None = None,
        rank: RuleValue | Mapping[str, RuleValue] | None = None,
        param_ratio: float | Mapping[str, float] | None = None,
        epoch: int | None = None,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        types: Sequence[str] | None = ("linear", "conv2d"),
        hooi_iters: int = 0,
        force: bool = False,
        evaluate: bool = True,
        eval_batches: int | None = None,
        verbose: bool = True,
    ) -> None:
        given = {k: v for k, v in (("energy", energy), ("rank", rank), ("param_ratio", param_ratio)) if v is not None}
        if len(given) > 1:
            raise MisconfigurationException(
                f"LowRankFactorization: give only one of energy, rank, param_ratio (got {sorted(given)})"
            )
        name, value = next(iter(given.items())) if given else ("energy", 0.9)
        self.rule_kind = {"energy": "energy", "rank": "rank", "param_ratio": "ratio"}[name]
        self.rule_value = value
        values = value.values() if isinstance(value, Mapping) else [value]
        for v in values:  # validate now, with the argument's name in the message
            try:
                lr.RankRule(self.rule_kind, tuple(v) if isinstance(v, (list, tuple)) else v)
            except ValueError as err:
                raise MisconfigurationException(f"LowRankFactorization: {name}: {err}") from None
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise MisconfigurationException(f"LowRankFactorization: epoch must be None or an int >= 0, got {epoch!r}")
        if not isinstance(hooi_iters, int) or hooi_iters < 0:
            raise MisconfigurationException(f"LowRankFactorization: hooi_iters must be an int >= 0, got {hooi_iters!r}")
        if eval_batches is not None and (not isinstance(eval_batches, int) or eval_batches < 1):
            raise MisconfigurationException(f"LowRankFactorization: eval_batches must be None or >= 1, got {eval_batches!r}")
        self.epoch = epoch
        self.include, self.exclude, self.types = include, exclude, types
        self.hooi_iters = hooi_iters
        self.force = force
        self.evaluate = evaluate
        self.eval_batches = eval_batches
        self.verbose = verbose
        # state (saved in state_dict)
        self.plan: list[lr.FactorizedLayer] = []  # every considered layer, applied or not
        self.factorized_at_epoch: int | None = None
        self.accuracy: dict[str, float] = {}
        self._hook_handle = None

    # ------------------------------------------------------------------ public helpers
    @property
    def done(self) -> bool:
        return self.factorized_at_epoch is not None

    @property
    def applied_plan(self) -> list[lr.FactorizedLayer]:
        return [r for r in self.plan if r.applied]

    def table(self) -> str:
        return lr.plan_table(self.plan)

    # ------------------------------------------------------------------ hooks, in the order a fit calls them
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_sharded_strategy(trainer, "LowRankFactorization")
        check_compression_callbacks(trainer, pl_module, self, stage)
        if stage == "fit" and self.done and not any(
            isinstance(dict(pl_module.named_modules()).get(r.name), lr.FACTORIZED_TYPES) for r in self.applied_plan
        ):  # reused on another (dense) model: factorize that one too; a resumed checkpoint restores the plan later
            self.plan, self.factorized_at_epoch, self.accuracy = [], None, {}
        # before Lightning restores a checkpoint's weights: rebuild whatever factorized layers they describe
        if self._hook_handle is None:
            self._hook_handle = pl_module.register_load_state_dict_pre_hook(_rebuild_before_load)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epoch is not None and not self.done and trainer.current_epoch >= self.epoch:
            self._factorize(trainer, pl_module, midfit=True)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.epoch is None and not self.done:
            self._factorize(trainer, pl_module, midfit=False)
        elif self.epoch is not None and not self.done:
            rank_zero_warn(
                f"LowRankFactorization: training ended at epoch {trainer.current_epoch} before epoch={self.epoch}; "
                "nothing was factorized"
            )
        elif self.epoch is not None and self.evaluate:  # measured again after every (resumed) fine-tuning fit
            acc = self._evaluate(trainer, pl_module)
            if acc is not None:
                self.accuracy["acc_finetuned"] = acc
                log_scalars(trainer, {tag("lowrank", "acc_finetuned"): acc})
                rank_zero_info(f"LowRankFactorization: accuracy after fine-tuning {acc:.4f}")

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.done:
            checkpoint[CHECKPOINT_KEY] = [r.as_dict() for r in self.applied_plan]

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "plan": [r.as_dict() for r in self.plan],
            "factorized_at_epoch": self.factorized_at_epoch,
            "accuracy": dict(self.accuracy),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.plan = [lr.FactorizedLayer.from_dict(d) for d in state_dict.get("plan", [])]
        self.factorized_at_epoch = state_dict.get("factorized_at_epoch")
        self.accuracy = dict(state_dict.get("accuracy", {}))

    # ------------------------------------------------------------------ the work
    def _rule_for(self, value: Any) -> lr.RankRule:
        return lr.RankRule(self.rule_kind, tuple(value) if isinstance(value, (list, tuple)) else value)

    def make_plan(self, model: nn.Module) -> list[lr.FactorizedLayer]:
        """Decide, layer by layer, the ranks (and whether to factorize at all). Pure; touches no weights."""
        targets = [
            t for t in find_targets(model, self.include, self.exclude, self.types, owner="LowRankFactorization")
            if not lr.inside_factorized(model, t.module_name)
        ]
        values = per_target_value(self.rule_value, targets, "LowRankFactorization", self.rule_kind)
        plan: list[lr.FactorizedLayer] = []
        for t in targets:
            if not isinstance(t.module, _SUPPORTED):
                rank_zero_info(f"LowRankFactorization: {t.module_name} ({type(t.module).__name__}) is not supported; left dense")
                continue
            rec = lr.plan_layer(t.module_name, t.module, self._rule_for(values[t.name]), self.hooi_iters)
            if rec.applied and not self.force:
                why = lr.layer_looks_compressed(t.module.weight)
                if why:
                    rec.applied = False
                    rec.reason = f"{why}; pass force=True to factorize it anyway"
            plan.append(rec)
        return plan

    def _factorize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, midfit: bool) -> None:
        plan = self.make_plan(pl_module)
        # rank zero decides: energy-rule ranks must not differ across processes by a rounding hair
        plan = [lr.FactorizedLayer.from_dict(d) for d in trainer.strategy.broadcast([r.as_dict() for r in plan], src=0)]
        shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        if self.evaluate:
            acc = self._evaluate(trainer, pl_module, record_shapes=(plan, shapes))
            if acc is not None:
                self.accuracy["acc_before"] = acc
        if not shapes:
            self._shapes_from_example(pl_module, plan, shapes)

        for rec in plan:
            module = lr.get_module(pl_module, rec.name)
            if rec.name in shapes:
                rec.macs_before = lr.dense_macs(module, *shapes[rec.name])
                rec.macs_after = lr.factorized_macs(rec, module, *shapes[rec.name]) if rec.applied else rec.macs_before
            if rec.applied:
                lr.replace_module(pl_module, rec.name, lr.factorize_module(module, rec, self.hooi_iters))
            else:
                rank_zero_info(f"LowRankFactorization: {rec.name} left dense: {rec.reason}")
        self.plan = plan
        self.factorized_at_epoch = trainer.current_epoch

        if self.evaluate:
            acc = self._evaluate(trainer, pl_module)
            if acc is not None:
                self.accuracy["acc_after"] = acc
        if midfit:
            rebuild_optimizers(trainer)
        self._report(trainer)

    def _report(self, trainer: pl.Trainer) -> None:
        metrics: dict[str, float] = {}
        before = after = 0
        for r in self.plan:
            if r.kind == "svd":
                metrics[tag("rank", r.name)] = r.ranks[0]
            else:
                metrics[tag("rank", r.name, "in")] = r.ranks[0]
                metrics[tag("rank", r.name, "out")] = r.ranks[1]
            metrics[tag("energy", r.name)] = r.energy if r.applied else 1.0
            metrics[tag("params_before", r.name)] = r.params_before
            metrics[tag("params_after", r.name)] = r.params_after if r.applied else r.params_before
            if r.macs_before is not None:
                metrics[tag("macs_before", r.name)] = r.macs_before
                metrics[tag("macs_after", r.name)] = r.macs_after
            before += r.params_before
            after += r.params_after if r.applied else r.params_before
        metrics[tag("lowrank", "params_ratio")] = after / before if before else 1.0
        metrics[tag("lowrank", "layers_factorized")] = len(self.applied_plan)
        for k, v in self.accuracy.items():
            metrics[tag("lowrank", k)] = v
        log_scalars(trainer, metrics)
        table = self.table()
        acc = ", ".join(f"{k} {v:.4f}" for k, v in self.accuracy.items())
        log_text(trainer, tag("lowrank", "table"), f"<pre>{table}\n{acc}</pre>")
        if self.verbose:
            rank_zero_info(f"LowRankFactorization at epoch {self.factorized_at_epoch}:\n{table}" + (f"\n{acc}" if acc else ""))

    # ------------------------------------------------------------------ measurement
    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record_shapes=None) -> float | None:
        """Top-1 accuracy over the validation dataloader(s), summed over ranks; ``None`` without one."""
        val_loop = trainer.fit_loop.epoch_loop.val_loop
        try:
            val_loop.setup_data()
        except Exception as err:  # noqa: BLE001 - no val data is a normal configuration, say so and go on
            rank_zero_info(f"LowRankFactorization: no validation data to measure accuracy ({err})")
            return None
        loaders = trainer.val_dataloaders
        if loaders is None:
            return None
        loaders = list(loaders.values()) if isinstance(loaders, Mapping) else (loaders if isinstance(loaders, (list, tuple)) else [loaders])
        limits = list(trainer.num_val_batches) if trainer.num_val_batches else [math.inf] * len(loaders)
        handles = []
        if record_shapes is not None:
            plan, shapes = record_shapes
            handles = _shape_hooks(pl_module, plan, shapes)
        was_training = pl_module.training
        pl_module.eval()
        correct = torch.zeros((), dtype=torch.long, device=pl_module.device)
        total = torch.zeros((), dtype=torch.long, device=pl_module.device)
        try:
            with torch.no_grad():
                for loader, limit in zip(loaders, limits):
                    cap = min(limit, self.eval_batches or math.inf)
                    for i, batch in enumerate(loader):
                        if i >= cap:
                            break
                        batch = trainer.strategy.batch_to_device(batch)
                        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
                            rank_zero_warn("LowRankFactorization: validation batches are not (x, y); accuracy not measured")
                            return None
                        x, y = batch[0], batch[1]
                        logits = pl_module(x)
                        if logits.dim() < 2 or logits.shape[0] != y.shape[0]:
                            rank_zero_warn("LowRankFactorization: outputs are not class logits; accuracy not measured")
                            return None
                        correct += (logits.argmax(-1) == y).sum()
                        total += y.numel()
                        for h in handles:
                            h.remove()
                        handles = []
        finally:
            for h in handles:
                h.remove()
            pl_module.train(was_training)
        correct = trainer.strategy.reduce(correct, reduce_op="sum")
        total = trainer.strategy.reduce(total, reduce_op="sum")
        return float(correct) / float(total) if int(total) else None

    @staticmethod
    def _shapes_from_example(pl_module: pl.LightningModule, plan, shapes) -> None:
        x = getattr(pl_module, "example_input_array", None)
        if not isinstance(x, torch.Tensor):
            return
        handles = _shape_hooks(pl_module, plan, shapes)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                pl_module(x[:1].to(pl_module.device))
        finally:
            for h in handles:
                h.remove()
            pl_module.train(was_training)


def _shape_hooks(model: nn.Module, plan, shapes: dict) -> list:
    """Forward hooks that record each planned layer's per-sample input and output shapes."""

    def make(name):
        def hook(_module, inputs, output):
            shapes.setdefault(name, (tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))

        return hook

    return [lr.get_module(model, r.name).register_forward_hook(make(r.name)) for r in plan]


# ---------------------------------------------------------------------- optimizer rebuild
def rebuild_optimizers(trainer: pl.Trainer) -> None:
    """Rebuild optimizers and LR schedulers after modules were replaced, carrying their progress over.

    See the module docstring for what carries over. Under DDP the module is re-wrapped first so that the
    new parameters are registered for gradient all-reduce (and broadcast from rank 0).
    """
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
    old_opts = list(strategy.optimizers)
    old_scheds = list(strategy.lr_scheduler_configs)
    strategy.setup_optimizers(trainer)
    from lightning.fabric.utilities.optimizer import _optimizers_to_device

    _optimizers_to_device(strategy.optimizers, strategy.root_device)
    new_opts = list(strategy.optimizers)
    if len(old_opts) != len(new_opts):
        rank_zero_warn("LowRankFactorization: configure_optimizers returned a different number of optimizers; "
                       "their state was not carried over")
        return
    for old, new in zip(old_opts, new_opts):
        for group in new.param_groups:
            for p in group["params"]:
                if p in old.state:
                    new.state[p] = old.state[p]
        if len(old.param_groups) == len(new.param_groups):
            for g_old, g_new in zip(old.param_groups, new.param_groups):
                for key in _SCHEDULED_GROUP_KEYS:
                    if key in g_old and key in g_new:
                        g_new[key] = g_old[key]
        else:
            rank_zero_warn("LowRankFactorization: param groups changed in number; learning rates restart from the config")
        new._optimizer_step_pre_hooks.update(old._optimizer_step_pre_hooks)
        new._optimizer_step_post_hooks.update(old._optimizer_step_post_hooks)
    new_scheds = list(strategy.lr_scheduler_configs)
    for old_cfg, new_cfg in zip(old_scheds, new_scheds):
        if type(old_cfg.scheduler) is type(new_cfg.scheduler):
            new_cfg.scheduler.load_state_dict(old_cfg.scheduler.state_dict())
        else:
            rank_zero_warn(f"LowRankFactorization: scheduler {type(new_cfg.scheduler).__name__} differs from the old one; "
                           "it restarts")


# ---------------------------------------------------------------------- architecture before weights
def _rebuild_before_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """``load_state_dict`` pre-hook: turn dense layers into the factorized ones the incoming keys describe."""
    local = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)} if prefix else state_dict
    plan = lr.infer_factorization_plan(local, module)
    if plan:
        lr.apply_factorization_plan(module, plan)
        rank_zero_info(f"LowRankFactorization: rebuilt factorized layers {[(r.name, r.ranks) for r in plan]} before loading weights")
    # the other way round, e.g. ``trainer.test(ckpt_path="best")`` after a post-hoc factorization: the file
    # holds the dense layers, so the module goes back to them
    dense = [name for name, m in module.named_modules() if isinstance(m, lr.FACTORIZED_TYPES)
             and f"{name}.weight" in local and f"{name}.first.weight" not in local]
    for name in dense:
        lr.replace_module(module, name, lr.dense_shell(module.get_submodule(name)))
    if dense:
        rank_zero_info(f"LowRankFactorization: the checkpoint holds {dense} dense; restored the dense layers to load it")


def load_factorized(checkpoint_path: str, model: nn.Module, strict: bool = True, map_location: Any = "cpu") -> nn.Module:
    """Load a checkpoint saved after factorization into a plain (dense) ``model`` instance, for inference.

    Rebuilds the factorized layers from the plan stored in the checkpoint (or, for a bare ``state_dict``
    file, from its keys), then loads the weights. Returns ``model`` (modified in place)::

        model = load_factorized("epoch=9.ckpt", LeNet300100()).eval()
    """
    checkpoint = pl_load(checkpoint_path, map_location=map_location, weights_only=False)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    plan = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, Mapping) else None
    if plan is None:
        plan = lr.infer_factorization_plan(state_dict, model)
    apply_factorization_plan(model, plan)
    model.load_state_dict(state_dict, strict=strict)
    return model


apply_factorization_plan = lr.apply_factorization_plan

__all__ = ["CHECKPOINT_KEY", "LowRankFactorization", "apply_factorization_plan", "load_factorized", "rebuild_optimizers"]
