"""LowRankFactorization: replace trained layers by low-rank factors, post-hoc or mid-fit with fine-tuning.

``nn.Linear`` becomes a :class:`~lightning_compress.core.lowrank.LowRankLinear` (truncated SVD, two Linears;
it still exposes ``.weight``/``.bias`` as the product, so ``nn.MultiheadAttention``, which reads
``out_proj.weight`` in its forward, keeps running); ``nn.Conv2d`` becomes a
:class:`~lightning_compress.core.lowrank.TuckerConv2d` (1x1 -> kxk -> 1x1, Tucker-2 by HOSVD [+HOOI]). Ranks
come from a kept-energy threshold, a fixed rank or a target parameter ratio, per layer if wanted. Left dense,
with the reason in the report: a layer whose factorization saves nothing, a grouped conv, a layer that already
looks pruned or shared (unless ``force=True``), and a tied weight (factorizing it would untie it). Other types
are skipped with one info line. Factorize first, then prune/share: the factors are ordinary layers.

Example::

    from lightning_compress import LowRankFactorization, load_factorized

    trainer = Trainer(callbacks=[LowRankFactorization(energy=0.9)])          # post-hoc, at the end of fit
    trainer = Trainer(max_epochs=10, callbacks=[LowRankFactorization(param_ratio=0.25, epoch=8)])  # mid-fit
    trainer.fit(model, datamodule)
    model = load_factorized("checkpoints/factorized.ckpt", LeNet300100())    # inference, plain instance

**Mid-fit** (``epoch=E``): at the start of epoch ``E`` the modules are replaced, then optimizers and LR
schedulers are rebuilt (:func:`rebuild_optimizers`) carrying over scheduler position, group learning rates,
optimizer state of surviving parameters and the step hooks of other callbacks. Under DDP the module is
re-wrapped (factors broadcast from rank 0, which decides the plan).

**Checkpoints**: factor weights are ordinary state_dict entries (``fc1.first.weight``, ...); the plan is in
the callback state and at the checkpoint's top level (``"lowrank_factorization"``). A ``load_state_dict``
pre-hook registered in ``setup`` rebuilds the factorized layers an incoming state_dict describes, for every
path into ``load_state_dict``. A post-hoc factorization happens after ``ModelCheckpoint`` wrote its (dense)
files, so the callback then writes ``factorized.ckpt`` beside them (``save_checkpoint``).

Logged: ``compress/lowrank/acc_before|acc_after|acc_finetuned`` (validation top-1 around the change),
``compress/rank/<layer>``, ``compress/energy/<layer>``, ``compress/params_before|params_after/<layer>``,
``compress/macs_before|macs_after/<layer>``, ``compress/lowrank/params_ratio`` and the table
``compress/lowrank/table``. Details: ``docs/callbacks/factorization.md``.
"""

from __future__ import annotations

import functools

import math
import os
from collections.abc import Mapping
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import _load as pl_load
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_compress.callbacks._claims import Claim
from lightning_compress.callbacks._conflicts import check_compression_callbacks
from lightning_compress.callbacks._evaluate import validation_accuracy
from lightning_compress.callbacks._logging import log_scalars, log_text, tag
from lightning_compress.callbacks._plumbing import carry_step_hooks
from lightning_compress.callbacks._strategy import refuse_sharded_strategy
from lightning_compress.core import lowrank
from lightning_compress.core.targets import Target, find_targets, per_target_value
from lightning_compress.validation import as_config_error, check_bool, check_int, fail, reraise_as_config_error

_OWNER = "LowRankFactorization"
#: Top-level checkpoint key holding the plan (list of dicts), readable without the callback.
CHECKPOINT_KEY = "lowrank_factorization"
#: File name of the checkpoint written after a post-hoc factorization (next to ModelCheckpoint's files).
FACTORIZED_CHECKPOINT = "factorized.ckpt"
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
        include: globs of the layers to factorize (default: every layer of ``types``).
        exclude: globs of layers to keep dense.
        types: ``"linear"`` (truncated SVD) and ``"conv2d"`` (Tucker-2), the default; other types are skipped
            with a message.
        hooi_iters: HOOI refinement sweeps after the HOSVD initialisation of Tucker-2 (0 = HOSVD only).
        force: factorize layers that already look pruned (exact zeros) or shared (few distinct values).
        evaluate: measure validation accuracy just before/after factorizing and after fine-tuning.
        eval_batches: cap on validation batches for those measurements (default: the Trainer's val batches).
        verbose: print the per-layer table (rank zero).
        save_checkpoint: after a post-hoc factorization, write the factorized model to ``factorized.ckpt``
            next to ``ModelCheckpoint``'s files: they were written before it and hold the dense weights. Not in
            a ``fast_dev_run``, nor without a ``ModelCheckpoint`` (an info line says what to do instead).
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
        save_checkpoint: bool = True,
    ) -> None:
        given = {k: v for k, v in (("energy", energy), ("rank", rank), ("param_ratio", param_ratio)) if v is not None}
        if len(given) > 1:
            fail(_OWNER, f"give only one of energy, rank, param_ratio (got {sorted(given)})")
        name, value = next(iter(given.items())) if given else ("energy", 0.9)
        self.rule_kind = {"energy": "energy", "rank": "rank", "param_ratio": "ratio"}[name]
        self.rule_value = dict(value) if isinstance(value, Mapping) else value
        if isinstance(value, Mapping) and not value:
            fail(_OWNER, f"{name} must not be an empty mapping")
        for key, v in (value.items() if isinstance(value, Mapping) else [(None, value)]):
            if isinstance(v, bool) or (key is not None and not isinstance(key, str)):
                fail(_OWNER, f"{name}: expected numbers keyed by layer globs, got {key!r}: {v!r}")
            try:
                lowrank.RankRule(self.rule_kind, tuple(v) if isinstance(v, (list, tuple)) else v)
            except ValueError as err:
                reraise_as_config_error(_OWNER, name, err)
        check_int(_OWNER, "epoch", epoch, low=0, allow_none=True)
        check_int(_OWNER, "hooi_iters", hooi_iters, low=0)
        check_int(_OWNER, "eval_batches", eval_batches, low=1, allow_none=True)
        for flag, v in (("force", force), ("evaluate", evaluate), ("verbose", verbose), ("save_checkpoint", save_checkpoint)):
            check_bool(_OWNER, flag, v)
        self.epoch = epoch
        self.include, self.exclude, self.types = include, exclude, types
        self.hooi_iters = hooi_iters
        self.force = force
        self.evaluate = evaluate
        self.eval_batches = eval_batches
        self.verbose = verbose
        self.save_checkpoint = save_checkpoint
        #: Where the factorized checkpoint was written after a post-hoc factorization (``None`` before).
        self.factorized_checkpoint: str | None = None
        # state (saved in state_dict)
        self.plan: list[lowrank.FactorizedLayer] = []  # every considered layer, applied or not
        self.factorized_at_epoch: int | None = None
        self.accuracy: dict[str, float] = {}
        self._hook_handle = None

    # ------------------------------------------------------------------ public helpers
    @property
    def done(self) -> bool:
        return self.factorized_at_epoch is not None

    @property
    def applied_plan(self) -> list[lowrank.FactorizedLayer]:
        return [r for r in self.plan if r.applied]

    def table(self) -> str:
        return lowrank.plan_table(self.plan)

    # ------------------------------------------------------------------ hooks, in the order a fit calls them
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_sharded_strategy(trainer, _OWNER)
        check_compression_callbacks(trainer, pl_module, self, stage)
        if stage == "fit" and self.done and not any(
            isinstance(dict(pl_module.named_modules()).get(r.name), lowrank.FACTORIZED_TYPES) for r in self.applied_plan
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
            self._save_factorized(trainer)
        elif self.epoch is not None and not self.done:
            rank_zero_warn(
                f"{_OWNER}: training ended at epoch {trainer.current_epoch} before epoch={self.epoch}; "
                "nothing was factorized"
            )
        elif self.epoch is not None and self.evaluate:  # measured again after every (resumed) fine-tuning fit
            acc = self._evaluate(trainer, pl_module)
            if acc is not None:
                self.accuracy["acc_finetuned"] = acc
                log_scalars(trainer, {tag("lowrank", "acc_finetuned"): acc})
                rank_zero_info(f"{_OWNER}: accuracy after fine-tuning {acc:.4f}")

    def _save_factorized(self, trainer: pl.Trainer) -> None:
        """Write the factorized model: the run's checkpoints were written before the factorization (dense)."""
        if not self.applied_plan:
            return
        folder = next((cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
                       and cb.dirpath), None)
        if not self.save_checkpoint or trainer.fast_dev_run or folder is None:
            rank_zero_info(f"{_OWNER}: the model is factorized in memory; any checkpoint of this run holds the dense "
                           "model: call trainer.save_checkpoint(path) to keep the factorized one (load it with "
                           "load_factorized(path, model))")
            return
        path = os.path.join(folder, FACTORIZED_CHECKPOINT)
        trainer.save_checkpoint(path)
        self.factorized_checkpoint = path
        rank_zero_info(f"{_OWNER}: wrote the factorized model to {path} (the run's other checkpoints hold the dense "
                       f"model); load it with load_factorized({path!r}, model) or resume from it with ckpt_path")

    def describe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Claim:
        """The layers this callback will replace (module weights such as ``fc1.weight``), at ``epoch``.

        Post-hoc (``epoch=None``) changes happen after training (times ``inf``). ``unfinished`` says so when a
        mid-fit epoch was never reached in a fit that has ended.
        """
        posthoc = self.epoch is None
        when = math.inf if posthoc else float(self.epoch)
        done = frozenset(f"{r.name}.weight" for r in self.applied_plan)
        layers = {f"{r.name}.weight": (when, when) for r in self.applied_plan}
        if not self.done:
            layers = {t.name: (when, when) for t in self._candidates(pl_module)}
        unfinished: tuple[str, ...] = ()
        if not posthoc and not self.done and trainer is not None and trainer.state.finished:
            unfinished = (f"factorization at epoch {self.epoch} never happened (training ended at epoch "
                          f"{trainer.current_epoch})",)
        return Claim(owner=_OWNER, kind="factorize", unit="epoch", layers=layers, done=done, posthoc=posthoc,
                     renames_layers=True, unfinished=unfinished)

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
        plan = [r.as_dict() for r in self.plan]
        return {"plan": plan, "factorized_at_epoch": self.factorized_at_epoch, "accuracy": dict(self.accuracy)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.plan = [lowrank.FactorizedLayer.from_dict(d) for d in state_dict.get("plan", [])]
        self.factorized_at_epoch = state_dict.get("factorized_at_epoch")
        self.accuracy = dict(state_dict.get("accuracy", {}))

    # ------------------------------------------------------------------ the work
    def _rule_for(self, value: Any) -> lowrank.RankRule:
        return lowrank.RankRule(self.rule_kind, tuple(value) if isinstance(value, (list, tuple)) else value)

    def _selected(self, model: nn.Module) -> list[Target]:
        with as_config_error(_OWNER):
            return find_targets(model, self.include, self.exclude, self.types, owner=_OWNER)

    def _candidates(self, model: nn.Module) -> list[Target]:
        """Selected Linear/Conv2d layers that are not factors already and not tied (quiet: no messages)."""
        return [t for t in self._selected(model) if isinstance(t.module, _SUPPORTED) and t.param_name == "weight"
                and not t.aliases and not lowrank.inside_factorized(model, t.module_name)]

    def make_plan(self, model: nn.Module) -> list[lowrank.FactorizedLayer]:
        """Decide, layer by layer, the ranks (and whether to factorize at all). Pure; touches no weights.

        Left out, with one info line each: types other than Linear/Conv2d, and tied weights (an LM head that
        shares the embedding's Parameter: replacing it would untie the two, so the tie is kept and it stays dense).
        """
        targets = [t for t in self._selected(model) if not lowrank.inside_factorized(model, t.module_name)]
        candidates = {t.name for t in self._candidates(model)}
        for t in targets:
            if t.name in candidates:
                continue
            if t.aliases:
                why = f"its weight is tied to {list(t.aliases)} (factorizing would untie them); left dense"
            else:
                why = f"{type(t.module).__name__}.{t.param_name} is not supported (Linear and Conv2d are); left dense"
            rank_zero_info(f"{_OWNER}: {t.name}: {why}")
        targets = [t for t in targets if t.name in candidates]
        if not targets:
            return []
        values = per_target_value(self.rule_value, targets, _OWNER, self.rule_kind)
        plan: list[lowrank.FactorizedLayer] = []
        for t in targets:
            rec = lowrank.plan_layer(t.module_name, t.module, self._rule_for(values[t.name]), self.hooi_iters)
            if rec.applied and not self.force:
                why = lowrank.layer_looks_compressed(t.module.weight)
                if why:
                    rec.applied = False
                    rec.reason = f"{why}; pass force=True to factorize it anyway"
            plan.append(rec)
        return plan

    def _factorize(self, trainer: pl.Trainer, pl_module: pl.LightningModule, midfit: bool) -> None:
        plan = self.make_plan(pl_module)
        # rank zero decides: energy-rule ranks must not differ across processes by a rounding hair
        plan = [lowrank.FactorizedLayer.from_dict(d) for d in trainer.strategy.broadcast([r.as_dict() for r in plan], src=0)]
        shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        if self.evaluate:
            acc = self._evaluate(trainer, pl_module, record_shapes=(plan, shapes))
            if acc is not None:
                self.accuracy["acc_before"] = acc
        if not shapes:
            self._shapes_from_example(pl_module, plan, shapes)

        for rec in plan:
            module = pl_module.get_submodule(rec.name)
            if rec.name in shapes:
                rec.macs_before = lowrank.dense_macs(module, *shapes[rec.name])
                rec.macs_after = lowrank.factorized_macs(rec, module, *shapes[rec.name]) if rec.applied else rec.macs_before
            if rec.applied:
                lowrank.replace_module(pl_module, rec.name, lowrank.factorize_module(module, rec, self.hooi_iters))
            else:
                rank_zero_info(f"{_OWNER}: {rec.name} left dense: {rec.reason}")
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
            rank_zero_info(f"{_OWNER} at epoch {self.factorized_at_epoch}:\n{table}" + (f"\n{acc}" if acc else ""))

    # ------------------------------------------------------------------ measurement
    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record_shapes=None) -> float | None:
        """Top-1 validation accuracy (``callbacks/_evaluate``); ``record_shapes=(plan, shapes)`` also records
        each planned layer's input/output shapes on the first batch."""
        first_batch = None
        if record_shapes is not None:
            plan, shapes = record_shapes
            first_batch = functools.partial(_shape_hooks, pl_module, plan, shapes)
        return validation_accuracy(trainer, pl_module, _OWNER, self.eval_batches, first_batch)

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

    return [model.get_submodule(r.name).register_forward_hook(make(r.name)) for r in plan]


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
    _optimizers_to_device(strategy.optimizers, strategy.root_device)
    new_opts = list(strategy.optimizers)
    if len(old_opts) != len(new_opts):
        rank_zero_warn(f"{_OWNER}: configure_optimizers returned a different number of optimizers; "
                       "their state was not carried over")
        return
    for old, new in zip(old_opts, new_opts):
        for group in new.param_groups:
            for p in group["params"]:
                if p in old.state:
                    new.state[p] = old.state[p]
        if len(old.param_groups) == len(new.param_groups):
            for g_old, g_new in zip(old.param_groups, new.param_groups):
                g_new.update({k: g_old[k] for k in _SCHEDULED_GROUP_KEYS if k in g_old and k in g_new})
        else:
            rank_zero_warn(f"{_OWNER}: param groups changed in number; learning rates restart from the config")
        carry_step_hooks(old, new)
    new_scheds = list(strategy.lr_scheduler_configs)
    for old_cfg, new_cfg in zip(old_scheds, new_scheds):
        if type(old_cfg.scheduler) is type(new_cfg.scheduler):
            new_cfg.scheduler.load_state_dict(old_cfg.scheduler.state_dict())
        else:
            rank_zero_warn(f"{_OWNER}: scheduler {type(new_cfg.scheduler).__name__} differs from the old one; it restarts")


# ---------------------------------------------------------------------- architecture before weights
def _rebuild_before_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """``load_state_dict`` pre-hook: turn dense layers into the factorized ones the incoming keys describe."""
    local = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)} if prefix else state_dict
    plan = lowrank.infer_factorization_plan(local, module)
    if plan:
        lowrank.apply_factorization_plan(module, plan)
        rank_zero_info(f"{_OWNER}: rebuilt factorized layers {[(r.name, r.ranks) for r in plan]} before loading weights")
    # the other way round, e.g. ``trainer.test(ckpt_path="best")`` after a post-hoc factorization: the file
    # holds the dense layers, so the module goes back to them
    dense = [name for name, m in module.named_modules() if isinstance(m, lowrank.FACTORIZED_TYPES)
             and f"{name}.weight" in local and f"{name}.first.weight" not in local]
    for name in dense:
        lowrank.replace_module(module, name, lowrank.dense_shell(module.get_submodule(name)))
    if dense:
        rank_zero_info(f"{_OWNER}: the checkpoint holds {dense} dense; restored the dense layers to load it")


def load_factorized(
    checkpoint: str | os.PathLike | Mapping[str, Any], model: nn.Module, strict: bool = True, map_location: Any = "cpu"
) -> nn.Module:
    """Load a checkpoint saved after factorization into a plain (dense) ``model`` instance, for inference.

    ``checkpoint`` is a path (a Lightning checkpoint or a bare ``state_dict`` file) or an already loaded
    checkpoint/``state_dict``. Rebuilds the factorized layers from the plan stored in the checkpoint (or from
    its keys), then loads the weights. Returns ``model`` (modified in place)::

        model = load_factorized("factorized.ckpt", LeNet300100()).eval()

    A file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary
    pickled objects (a checkpoint is data from strangers).
    """
    if isinstance(checkpoint, Mapping):
        loaded = checkpoint
    else:
        try:
            loaded = pl_load(checkpoint, map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch's UnpicklingError and friends: say what to do
            if isinstance(err, (FileNotFoundError, IsADirectoryError)):
                raise
            fail("load_factorized", f"checkpoint {str(checkpoint)!r} holds more than tensors and plain containers, "
                 f"so it was not unpickled ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                 "If you trust the file, load it yourself (torch.load(path, weights_only=False)) and pass the "
                 "loaded checkpoint or its 'state_dict' to load_factorized instead of the path")
    state_dict = loaded.get("state_dict", loaded)
    plan = loaded.get(CHECKPOINT_KEY)
    if plan is None:
        plan = lowrank.infer_factorization_plan(state_dict, model)
    lowrank.apply_factorization_plan(model, plan)
    model.load_state_dict(state_dict, strict=strict)
    return model


__all__ = ["CHECKPOINT_KEY", "FACTORIZED_CHECKPOINT", "LowRankFactorization", "load_factorized", "rebuild_optimizers"]
