"""WeightSharing: Deep Compression's trained quantization as a Lightning callback.

At a scheduled epoch or step each selected layer's surviving (non-zero) weights are clustered with 1-D k-means
(``core.kmeans``) into ``k = 2^bits`` centroids per codebook - one codebook per tensor (Deep Compression), per
output channel, or per group of output channels (``granularity``); every weight is replaced by its centroid
and the assignments are frozen. With ``weighting="fisher"`` the clustering minimises the squared error
weighted by each weight's sensitivity (the empirical Fisher diagonal of the training loss, SqueezeLLM/SKM).
Training then continues on the *centroids*: before every optimizer step each shared weight's gradient is
replaced by its cluster's gradient ``dL/dC`` (sum over the cluster as in the paper, or the mean), and after
every optimizer step the layer is projected back onto its codebooks (``W = C[assignment]``). The model keeps
ordinary parameters and ``state_dict`` keys; each codebook's weights hold at most k distinct non-zero values
after every step, whatever the optimizer (momentum, weight decay, Adam moments), gradient accumulation or
mixed precision. Zeros at clustering time count as pruned: they are not a cluster and stay exactly zero (as
do weights another callback zeroes later).

Accuracy "just before" and "just after" clustering is measured on up to ``eval_batches`` validation batches
(``callbacks/_evaluate.py``) and logged as ``compress/sharing/accuracy_before``/``accuracy_after``/
``accuracy_drop``: the drop that centroid fine-tuning must recover.

Example::

    from lightning_compress import GradualMagnitudePruning, WeightSharing

    trainer = Trainer(max_epochs=20, callbacks=[
        GradualMagnitudePruning(0.9, start_epoch=0, end_epoch=8),
        WeightSharing({"conv": 8, "linear": 5}, start_epoch=12),   # Deep Compression's bits
    ])
    trainer.fit(model, datamodule)

Or in LightningCLI YAML::

    trainer:
      callbacks:
        - class_path: lightning_compress.WeightSharing
          init_args: {bits: 3, granularity: channel, weighting: fisher, start_epoch: 3}

Note on ``reduction="sum"``: the centroid gradient grows with the cluster size, so an SGD learning rate
tuned for dense training acts as a much larger step on big clusters; ``"mean"`` keeps the scale of a
single weight's gradient.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_compress.callbacks._claims import Claim, claims
from lightning_compress.callbacks._conflicts import check_compression_callbacks, check_mixed_units
from lightning_compress.callbacks._evaluate import validation_accuracy
from lightning_compress.callbacks._logging import log_histogram, log_scalars, log_text, tag
from lightning_compress.callbacks._plumbing import DeferredState, StepHook, unwrap_optimizer
from lightning_compress.callbacks._sharing_calibration import fisher_importance, training_batches
from lightning_compress.callbacks._sharing_layers import (
    SharedLayer, local_part, projection_for, sharing_metrics, sync_optimizer_state,
)
from lightning_compress.callbacks._sharing_options import OWNER, SharingOptions
from lightning_compress.callbacks._strategy import fsdp2_strategy, refuse_sharded_strategy
from lightning_compress.core.bit_allocation import allocate_bits, budget_for_average, measure_layer
from lightning_compress.core.distributed import full_tensor, local_tensor, shard_count
from lightning_compress.core.sharing import SharedWeight, cluster_weight, codebook_size, rows_per_group
from lightning_compress.core.targets import Target, find_targets, per_target_value
from lightning_compress.schedules.reach import last_progress
from lightning_compress.validation import as_config_error, fail

#: Deep Compression's choice for AlexNet/LeNet-5: 8 bits for conv layers, 5 for fully connected ones.
DEFAULT_CONV_BITS = 8
DEFAULT_FC_BITS = 5


class WeightSharing(Callback):
    """Cluster each layer's weights into 2^bits shared values per codebook and fine-tune the centroids.

    Args:
        bits: bits per weight index, an int or ``{glob or type alias: int}`` (e.g. ``{"conv": 8, "linear": 5}``);
            ``None`` means Deep Compression's conv 8 / fully connected 5. k = 2^bits centroids per codebook, or
            2^bits - 1 when the layer has pruned zeros (one of the 2^bits codes is zero's). ``"auto"``: bits per
            layer (2..8) chosen at clustering for an average of ``target_bits`` per kept weight.
        start_epoch: epoch at whose start clustering happens (default 0 when ``start_step`` is not given).
        start_step: global step at which clustering happens instead (exclusive with ``start_epoch``).
        layer_interval: epochs (or steps) between layers when clustering layer by layer, in model order;
            0 clusters all layers at once.
        init: ``auto`` (default): Lloyd from the linear start for one unweighted codebook per tensor (the paper's)
            and above 4 bits; ``optimal`` for per-channel, per-group and Fisher-weighted codebooks up to 4 bits.
            ``optimal``: each codebook is the globally optimal (weighted) 1-D k-means, by dynamic programming
            (``core.kmeans_optimal``). Or Lloyd from ``linear``, ``density``, ``random``, ``kmeans++``.
        reduction: centroid gradient, ``sum`` (default, the paper) or ``mean`` of the member gradients.
        include: globs over parameter or module names of the layers to share (default: every layer of ``types``).
        exclude: globs of layers to keep unshared (applied after ``include``).
        types: layer types (``"linear"``, ``"conv"``, ``"embedding"``, ``"attention"``, ``"rnn"``, ... or classes);
            default: every weight matrix (see ``core.targets.find_targets``).
        max_iter, tol, seed: k-means settings (``seed`` for the sampled inits).
        evaluate: measure validation accuracy just before and just after clustering.
        eval_batches: validation batches used for that measurement (``None``: all).
        log_histograms: log each layer's weights (before clustering) and centroids as TensorBoard histograms.
        granularity: ``"tensor"`` (one codebook per tensor, default), ``"channel"`` (one per output channel,
            i.e. row of dim 0) or an int G (one per G output channels).
        weighting: ``None`` (every weight counts equally) or ``"fisher"`` (importance-weighted k-means, the
            importance being the mean squared training-loss gradient over ``calibration_batches`` batches).
        calibration_batches: training batches for the Fisher importance.
        target_bits: with ``bits="auto"``: average stored bits per kept weight (indices plus every codebook);
            each layer's bits minimise the summed importance-weighted quantization error within that budget.
    """

    def __init__(
        self,
        bits: int | Mapping[str, int] | str | None = None,
        start_epoch: int | None = None,
        start_step: int | None = None,
        layer_interval: int = 0,
        init: str = "auto",
        reduction: str = "sum",
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        types: Sequence[str] | None = None,
        max_iter: int = 300,
        tol: float = 0.0,
        seed: int = 0,
        evaluate: bool = True,
        eval_batches: int | None = 50,
        log_histograms: bool = True,
        granularity: str | int = "tensor",
        weighting: str | None = None,
        calibration_batches: int = 8,
        target_bits: float | None = None,
    ) -> None:
        self.options = SharingOptions.check(
            bits=bits, start_epoch=start_epoch, start_step=start_step, layer_interval=layer_interval, init=init,
            reduction=reduction, types=types, max_iter=max_iter, tol=tol, seed=seed, evaluate=evaluate,
            eval_batches=eval_batches, log_histograms=log_histograms, granularity=granularity, weighting=weighting,
            calibration_batches=calibration_batches, target_bits=target_bits,
        )
        self.schedule = self.options.schedule()
        self.bits = dict(bits) if isinstance(bits, Mapping) else bits
        self.start_epoch, self.start_step, self.layer_interval = start_epoch, start_step, layer_interval
        self.init, self.reduction = init, reduction
        self.include, self.exclude, self.types = include, exclude, types
        self.max_iter, self.tol, self.seed = max_iter, tol, seed
        self.evaluate, self.eval_batches, self.log_histograms = evaluate, eval_batches, log_histograms
        self.granularity, self.weighting, self.calibration_batches = granularity, weighting, calibration_batches
        self.target_bits = target_bits
        #: ``{layer: bits}`` chosen by ``bits="auto"`` (also in the checkpoint, per layer, as ``bits``).
        self.chosen_bits: dict[str, int] = {}

        self.targets: list[Target] = []
        self._bits: dict[str, int] = {}
        self._layers: dict[str, SharedLayer] = {}
        self._deferred = DeferredState()
        self._hook = StepHook(self._after_step)
        self._synced: set[int] = set()  # ids of optimizers whose state is uniform inside every cluster
        self._scan_zeros = True
        self._pruning_live = False
        self._unfinished: tuple[str, ...] = ()
        self.accuracy_before: float | None = None
        self.accuracy_after: float | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(include=self.include, exclude=self.exclude, types=self.types)

    # -- public views ----------------------------------------------------------------------------------
    @property
    def codebooks(self) -> dict[str, SharedWeight]:
        """``{layer: SharedWeight}`` of the layers shared so far (live: centroids move during fine-tuning)."""
        return {name: layer.shared for name, layer in self._layers.items()}

    def describe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Claim:
        """What this callback does: cluster each selected layer once (start == end), in epochs or steps."""
        targets = self.targets or self._find_targets(pl_module)
        times = self.schedule.times([t.name for t in targets])
        chosen = ", ".join(f"{name} {bits}" for name, bits in self.chosen_bits.items())
        notes = (f"bits='auto' (target {self.target_bits:g} bits per weight) chose: {chosen}",) if chosen else ()
        return Claim(owner=OWNER, kind="share", unit=self.schedule.unit,
                     layers={name: (float(t), float(t)) for name, t in times.items()}, done=frozenset(self._layers),
                     unfinished=self._unfinished, notes=notes)

    def _find_targets(self, pl_module: pl.LightningModule) -> list[Target]:
        with as_config_error(OWNER):
            return find_targets(pl_module, self.include, self.exclude, self.types, owner=OWNER)

    # -- hooks, in the order a fit calls them ----------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_sharded_strategy(trainer, OWNER, sharded_ok=True)
        if self.weighting == "fisher" and fsdp2_strategy(trainer.strategy):
            fail(OWNER, "weighting='fisher' is not supported under ModelParallelStrategy (its calibration "
                        "backward bypasses FSDP2's gradient reduction); use weighting=None or strategy='ddp'")
        check_compression_callbacks(trainer, pl_module, self, stage)
        self.targets = self._find_targets(pl_module)
        self._unfinished = ()
        current = {t.name: t.param for t in self.targets}
        stale = [name for name, layer in self._layers.items() if current.get(name) is not layer.param]
        if stale:  # reused on another model: its layers are not shared yet, start afresh
            for name in stale:
                del self._layers[name]
            self.accuracy_before = self.accuracy_after = None
        for layer in self._layers.values():  # the model may have moved since the last fit: codebooks follow it
            if layer.shared.assignment.device != layer.param.device:
                layer.shared = layer.shared.to(layer.param.device)
        if self.bits == "auto":  # chosen at clustering from measured errors; restored layers keep theirs
            self._bits = {name: layer.bits for name, layer in self._layers.items()}
        elif self.bits is None:
            self._bits = {t.name: DEFAULT_CONV_BITS if t.is_conv else DEFAULT_FC_BITS for t in self.targets}
        else:
            self._bits = per_target_value(self.bits, self.targets, owner=OWNER, what="bits")

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Model weights are restored already; the optimizer not yet. Re-attached in on_fit_start.
        self._deferred.hold(state_dict)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._deferred.arm(self._restore)  # ModelParallelStrategy restores callbacks after on_fit_start
        self._synced.clear()
        self._hook.attach_all(trainer.optimizers)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_mixed_units(trainer, pl_module)  # pruning in epochs vs sharing in steps (or the reverse): now comparable
        self._warn_if_fit_ends_first(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._scan_zeros = True  # zeros written between epochs (by any callback) are absorbed at the next step
        self._pruning_live = self._pruning_active(trainer, pl_module)
        if self.schedule.unit == "epoch":
            self._cluster_due(trainer, pl_module, trainer.current_epoch)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.schedule.unit == "step":
            self._cluster_due(trainer, pl_module, trainer.global_step)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        optimizer = unwrap_optimizer(optimizer)
        self._hook.attach(optimizer)
        if id(optimizer) not in self._synced:
            sync_optimizer_state(optimizer, self._layers.values())
            self._synced.add(id(optimizer))
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        layers = {n: layer for n, layer in self._layers.items() if id(layer.param) in owned and layer.param.grad is not None}
        if not layers:
            return
        scan = self._scan_zeros or self._pruning_live
        self._scan_zeros = False
        with torch.no_grad():
            zeroed = [layer.representative_zeroed() for layer in layers.values()]  # one device sync for all layers
            for layer, hit in zip(layers.values(), _flags(zeroed)):
                if scan or hit:
                    layer.shared.absorb_zeros(local_tensor(layer.param))
            grads = [layer.shared.share_gradient(local_tensor(layer.param.grad), self.reduction) for layer in layers.values()]
        if getattr(trainer.precision_plugin, "scaler", None) is None:  # (a grad scaler skips such steps itself)
            bad = [name for name, ok in zip(layers, _flags([torch.isfinite(g).all() for g in grads])) if not ok]
            if bad:
                raise FloatingPointError(f"{OWNER}: non-finite gradient (NaN/inf) for shared layer {bad[0]} at step "
                                         f"{trainer.global_step}; it would poison whole clusters")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._layers:
            log_scalars(trainer, sharing_metrics(self._layers))
            if self.log_histograms:
                for name, layer in self._layers.items():
                    log_histogram(trainer, tag("sharing", "centroids", name), layer.shared.centroids)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._note_unfinished(trainer)  # before every on_fit_end, so ExportCompressed sees it in describe()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._note_unfinished(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._layers:
            log_text(trainer, tag("sharing", "codebooks"), self._codebook_text())
        self._hook.detach(trainer.optimizers)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._hook.detach(trainer.optimizers)
        self._deferred.disarm()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 2,
            "layers": {name: layer.state() for name, layer in self._layers.items()},
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
        }

    # -- runs cut short ----------------------------------------------------------------------------------
    def _warn_if_fit_ends_first(self, trainer: pl.Trainer) -> None:
        """Warn before the first step when the fit's limits end it before a layer is clustered.

        Epoch clustering at or after ``max_epochs`` is the conflict rules' warning (at setup); this adds
        ``max_steps`` and step-based clustering, which need the batches per epoch known only now.
        """
        max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        max_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else None
        unit = self.schedule.unit
        last = last_progress(unit, trainer.num_training_batches, trainer.accumulate_grad_batches,
                             max_epochs=max_epochs, max_steps=max_steps)
        if last is None:
            return
        times = self.schedule.times([t.name for t in self.targets])
        late = {name: time for name, time in times.items() if name not in self._layers and time > last
                and not (unit == "epoch" and max_epochs is not None and time >= max_epochs)}
        if late:
            limits = ", ".join(f"{k}={v}" for k, v in (("max_epochs", max_epochs), ("max_steps", max_steps)) if v is not None)
            rank_zero_warn(f"{OWNER}: the fit ends at {unit} {last:g} ({limits}), before {list(late)} are clustered "
                           f"(at {unit} {next(iter(late.values())):g}); those layers will not be shared in this fit")

    def _note_unfinished(self, trainer: pl.Trainer) -> None:
        """At the end of training: layers never clustered are warned about and recorded for the export."""
        pending = [t for t in self.targets if t.name not in self._layers]
        if not pending or self._unfinished:
            return
        times = self.schedule.times([t.name for t in self.targets])
        unit = self.schedule.unit
        notes = []
        for t in pending:
            values = int(torch.unique(local_tensor(t.param).detach()).numel())
            asked = f", at most {2 ** self._bits[t.name]} asked" if t.name in self._bits else ""
            notes.append(f"{t.name}: not clustered (due at {unit} {times[t.name]:g}; {values} distinct values{asked})")
        self._unfinished = tuple(notes)
        text = f"{OWNER}: training stopped before every layer was clustered: " + "; ".join(notes)
        rank_zero_warn(text)
        log_text(trainer, tag("unfinished", "sharing"), text)

    # -- clustering ----------------------------------------------------------------------------------
    def _cluster_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule, progress: int) -> None:
        due = self.schedule.due([t.name for t in self.targets], progress, done=list(self._layers))
        if not due:
            return
        by_name = {t.name: t for t in self.targets}
        for name in due:  # all checked before any is clustered, so a failure leaves every layer untouched
            param = by_name[name].param
            bad = shard_count(int((~torch.isfinite(local_tensor(param))).sum()), param)
            if bad:
                raise FloatingPointError(
                    f"{OWNER}: layer {name} has {bad} non-finite weights "
                    f"(NaN/inf) at clustering ({self.schedule.unit} {progress}); k-means cannot place them")
        before = self._accuracy(trainer, pl_module)
        importance = self._importance(trainer, pl_module, [by_name[n] for n in due])
        if self.bits == "auto":
            self._choose_bits(trainer, [by_name[n] for n in due], importance)
        for name in due:
            self._cluster(trainer, by_name[name], importance.get(name))
        sync_optimizer_state_all(trainer.optimizers, [self._layers[n] for n in due])
        after = self._accuracy(trainer, pl_module)
        metrics: dict[str, float] = {}
        if before is not None and after is not None:
            self.accuracy_before, self.accuracy_after = before, after
            metrics.update({tag("sharing", "accuracy_before"): before, tag("sharing", "accuracy_after"): after,
                            tag("sharing", "accuracy_drop"): before - after})
        metrics.update(sharing_metrics(self._layers))
        log_scalars(trainer, metrics)
        log_text(trainer, tag("sharing", "codebooks"), self._codebook_text())
        acc = f"; accuracy {before:.4f} -> {after:.4f}" if before is not None and after is not None else ""
        listed = ", ".join(f"{n} ({self._layers[n].describe()})" for n in due)
        rank_zero_info(f"{OWNER}: clustered {listed} at {self.schedule.unit} {progress}{acc}")

    def _cluster(self, trainer: pl.Trainer, target: Target, importance: torch.Tensor | None) -> None:
        weight = full_tensor(target.param)  # FSDP2: the whole layer, gathered (one layer at a time)
        if self.log_histograms and bool((weight != 0).any()):
            log_histogram(trainer, tag("sharing", "weights_before", target.name), weight[weight != 0])
        bits = self._bits[target.name]
        k = codebook_size(bits, has_pruned=bool((weight == 0).any()))
        shared = cluster_weight(weight, k, init=self.init, seed=self.seed, max_iter=self.max_iter, tol=self.tol,
                                granularity=self.granularity, importance=importance)
        # Identical weights give identical codebooks on every rank; broadcasting makes it a guarantee.
        shared = trainer.strategy.broadcast(shared, src=0)
        self._attach(target, bits, shared)
        if self.log_histograms and shared.k:
            log_histogram(trainer, tag("sharing", "centroids", target.name), shared.centroids)

    def _choose_bits(self, trainer: pl.Trainer, targets: list[Target], importance: dict[str, torch.Tensor]) -> None:
        """Bits per layer (2..8) for an average of ``target_bits`` per kept weight (codebooks included), from
        each layer's importance-weighted quantization error measured at every width (``core.bit_allocation``)."""
        kwargs = dict(init=self.init, seed=self.seed, max_iter=self.max_iter, tol=self.tol)
        costs = [measure_layer(t.name, full_tensor(t.param), importance.get(t.name), self.granularity, **kwargs)
                 for t in targets]
        try:
            chosen = allocate_bits(costs, budget_for_average(costs, self.target_bits))
        except ValueError as err:
            fail(OWNER, f"target_bits={self.target_bits}: {err}")
        chosen = trainer.strategy.broadcast(chosen, src=0)  # (Fisher weights differ per rank)
        self._bits.update(chosen)
        self.chosen_bits.update(chosen)
        log_text(trainer, tag("sharing", "chosen_bits"), ", ".join(f"{n}: {b}" for n, b in self.chosen_bits.items()))
        rank_zero_info(f"{OWNER}: bits='auto' at {self.target_bits} bits per weight chose "
                       + ", ".join(f"{n} {b} bits" for n, b in chosen.items()))

    def _importance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, targets: list[Target]) -> dict[str, torch.Tensor]:
        if self.weighting != "fisher":
            return {}
        batches = training_batches(trainer, self.calibration_batches)
        fisher = fisher_importance(pl_module, [t.param for t in targets], batches)
        return {t.name: f for t, f in zip(targets, fisher)}

    def _attach(self, target: Target, bits: int, shared: SharedWeight) -> None:
        """Make ``target`` a shared layer: keep its codebook on the parameter's device and write W = C[I]."""
        layer = SharedLayer(target, bits, local_part(shared, target.param))
        layer.write_weights()
        self._layers[target.name] = layer

    def _restore(self, state: Mapping[str, Any]) -> None:
        by_name = {t.name: t for t in self.targets}
        for name, entry in state.get("layers", {}).items():
            if name not in by_name:
                fail(OWNER, f"checkpoint has a codebook for {name!r}, which is not a selected layer")
            target = by_name[name]
            shared, bits = SharedLayer.read_state(name, entry, tuple(target.param.shape))
            self._attach(target, bits, shared)
            self._check_changed_settings(name, bits, shared)
        self.accuracy_before = state.get("accuracy_before")
        self.accuracy_after = state.get("accuracy_after")

    def _check_changed_settings(self, name: str, old_bits: int, shared: SharedWeight) -> None:
        """A layer clustered with other bits or codebook groups than asked now is clustered again (from its
        current weights, at the next clustering point) - never kept with more values than the new k allows."""
        new_bits = self._bits.get(name, old_bits)
        new_rows = rows_per_group(self._layers[name].param.shape, self.granularity)
        changes = []
        if new_bits != old_bits:
            changes.append(f"bits {old_bits} -> {new_bits}")
        if new_rows != shared.rows_per_group:
            changes.append(f"rows per codebook {shared.rows_per_group} -> {new_rows} (granularity={self.granularity!r})")
        if not changes:
            return
        del self._layers[name]
        note = (f"; raising the bits cannot bring back values merged before: it holds at most {shared.k} distinct "
                "values per codebook now" if new_bits > old_bits else "")
        rank_zero_info(f"{OWNER}: {name} in the checkpoint differs from the settings ({'; '.join(changes)}): "
                       f"re-clustering it from its current weights at the next clustering point{note}")

    # -- keeping the invariant after every optimizer step --------------------------------------------
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        projection = projection_for(optimizer, synced=id(optimizer) in self._synced)
        for layer in self._layers.values():
            if id(layer.param) in owned:
                layer.shared.project(local_tensor(layer.param), projection)

    def _pruning_active(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Whether a pruning callback may still zero weights of a shared layer in this epoch (then new zeros are
        looked for at every step; otherwise at the first step of each epoch)."""
        for _, claim in claims(trainer, pl_module):
            if claim.kind != "prune" or claim.posthoc:
                continue
            now = trainer.current_epoch if claim.unit == "epoch" else trainer.global_step  # the epoch's start
            if any(name in self._layers and end >= now for name, (_, end) in claim.layers.items()):
                return True
        return False

    # -- measuring -----------------------------------------------------------------------------------
    def _codebook_text(self) -> str:
        lines = []
        for name, layer in self._layers.items():
            c = layer.shared.centroids
            shown = ", ".join(f"{v:.5g}" for v in c[0].tolist())
            more = f" (first of {c.shape[0]} codebooks)" if c.shape[0] > 1 else ""
            lines.append(f"**{name}** ({layer.describe()}){more}: {shown}")
        return "  \n".join(lines)

    def _accuracy(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        if not self.evaluate:
            return None
        return validation_accuracy(trainer, pl_module, OWNER, max_batches=self.eval_batches)


def _flags(values: list[torch.Tensor]) -> list[bool]:
    """Booleans of 0-dim tensors with one device synchronisation (not one per layer)."""
    if not values:
        return []
    device = values[0].device
    return torch.stack([v.to(device) for v in values]).tolist()


def sync_optimizer_state_all(optimizers: Sequence[Any], layers: Sequence[SharedLayer]) -> None:
    for optimizer in optimizers:
        sync_optimizer_state(unwrap_optimizer(optimizer), layers)


__all__ = ["WeightSharing"]
