"""WeightSharing: Deep Compression's trained quantization as a Lightning callback.

At a scheduled epoch or step each selected layer's surviving (non-zero) weights are clustered into
k = 2^bits centroids with 1-D k-means (``core.kmeans``); every weight is replaced by its centroid and the
assignments are frozen. Training then continues on the *centroids*: before every optimizer step each shared
weight's gradient is replaced by its cluster's gradient ``dL/dC_k`` (sum over the cluster as in the paper,
or the mean), and after every optimizer step the layer is projected back onto its codebook (centroid = mean
of its members, ``W = C[assignment]``). The model keeps ordinary parameters and ``state_dict`` keys; each
shared layer holds at most k distinct non-zero values after every step, whatever the optimizer (momentum,
weight decay, Adam moments), gradient accumulation or mixed precision. Zeros at clustering time count as
pruned: they are not a cluster and stay exactly zero (as do weights another callback zeroes later).

Accuracy "just before" and "just after" clustering is measured by the callback itself on up to
``eval_batches`` batches of the validation dataloader (top-1 of ``model(x)`` on ``(x, y)`` batches, eval
mode, summed over DDP ranks) and logged as ``compress/sharing/accuracy_before``/``accuracy_after``/
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
          init_args: {bits: {"fc1*": 4, "*": 6}, start_epoch: 3, init: linear, reduction: sum}

Note on ``reduction="sum"``: the centroid gradient grows with the cluster size, so an SGD learning rate
tuned for dense training acts as a much larger step on big clusters; ``"mean"`` keeps the scale of a
single weight's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from typing_extensions import override

from lightning_compress.callbacks._strategy import refuse_sharded_strategy
from lightning_compress.callbacks._logging import log_histogram, log_scalars, log_text, tag
from lightning_compress.callbacks._conflicts import check_compression_callbacks, check_mixed_units
from lightning_compress.core.kmeans import INITS
from lightning_compress.core.sharing import (
    SharedWeight,
    centroid_gradient,
    cluster_weight,
    decode,
    index_bits,
    index_dtype,
    recenter,
    sharing_rate,
)
from lightning_compress.core.targets import Target, find_targets, per_target_value
from lightning_compress.schedules.events import EventSchedule

#: Deep Compression's choice for AlexNet/LeNet-5: 8 bits for conv layers, 5 for fully connected ones.
DEFAULT_CONV_BITS = 8
DEFAULT_FC_BITS = 5
MAX_BITS = 16


@dataclass
class _Layer:
    """A shared layer during fit: its parameter and codebook (on the parameter's device)."""

    target: Target
    bits: int
    shared: SharedWeight

    @property
    def param(self) -> nn.Parameter:
        return self.target.param


class WeightSharing(Callback):
    """Cluster each layer's weights into 2^bits shared values and fine-tune the centroids.

    Args:
        bits: bits per weight index, an int or ``{glob or type alias: int}`` (e.g. ``{"conv": 8, "linear": 5}``);
            ``None`` means Deep Compression's conv 8 / fully connected 5. k = 2^bits centroids per layer, or
            2^bits - 1 when the layer has pruned zeros (one of the 2^bits codes is zero's).
        start_epoch: epoch at whose start clustering happens (default 0 when ``start_step`` is not given).
        start_step: global step at which clustering happens instead (exclusive with ``start_epoch``).
        layer_interval: epochs (or steps) between layers when clustering layer by layer, in model order;
            0 clusters all layers at once.
        init: k-means initialisation: ``linear`` (default, the paper's best), ``density``, ``random``, ``kmeans++``.
        reduction: centroid gradient, ``sum`` (default, the paper) or ``mean`` of the member gradients.
        include, exclude, types: layer selection (see ``core.targets.find_targets``).
        max_iter, tol, seed: k-means settings (``seed`` for the sampled inits).
        evaluate: measure validation accuracy just before and just after clustering.
        eval_batches: validation batches used for that measurement (``None``: all).
        log_histograms: log each layer's weights (before clustering) and centroids as TensorBoard histograms.
    """

    def __init__(
        self,
        bits: int | Mapping[str, int] | None = None,
        start_epoch: int | None = None,
        start_step: int | None = None,
        layer_interval: int = 0,
        init: str = "linear",
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
    ) -> None:
        _check_bits(bits)
        if start_epoch is not None and start_step is not None:
            raise MisconfigurationException("WeightSharing: give start_epoch or start_step, not both")
        if init not in INITS:
            raise MisconfigurationException(f"WeightSharing: init must be one of {INITS}, got {init!r}")
        if reduction not in ("sum", "mean"):
            raise MisconfigurationException(f"WeightSharing: reduction must be 'sum' or 'mean', got {reduction!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise MisconfigurationException(f"WeightSharing: max_iter must be an int >= 1, got {max_iter!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise MisconfigurationException(f"WeightSharing: tol must be a number >= 0, got {tol!r}")
        if eval_batches is not None and (isinstance(eval_batches, bool) or not isinstance(eval_batches, int) or eval_batches < 1):
            raise MisconfigurationException(f"WeightSharing: eval_batches must be >= 1 or None, got {eval_batches}")
        unit, start = ("step", start_step) if start_step is not None else ("epoch", start_epoch or 0)
        try:
            self.schedule = EventSchedule(start=start, unit=unit, interval=layer_interval)
        except ValueError as err:
            name = {"start": f"start_{unit}", "interval": "layer_interval"}.get(str(err).split()[0], "schedule")
            raise MisconfigurationException(f"WeightSharing: {name}: {err}") from err
        self.bits = dict(bits) if isinstance(bits, Mapping) else bits
        self.start_epoch, self.start_step, self.layer_interval = start_epoch, start_step, layer_interval
        self.init, self.reduction = init, reduction
        self.include, self.exclude, self.types = include, exclude, types
        self.max_iter, self.tol, self.seed = max_iter, tol, seed
        self.evaluate, self.eval_batches, self.log_histograms = evaluate, eval_batches, log_histograms

        self._targets: list[Target] = []
        self._bits: dict[str, int] = {}
        self._layers: dict[str, _Layer] = {}
        self._pending_state: dict[str, Any] | None = None
        self._hooked: dict[int, Any] = {}  # id(optimizer) -> hook handle
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

    # -- hooks, in the order a fit calls them ----------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_sharded_strategy(trainer, "WeightSharing")
        check_compression_callbacks(trainer, pl_module, self, stage)
        self._targets = find_targets(pl_module, self.include, self.exclude, self.types, owner="WeightSharing")
        current = {t.name: t.param for t in self._targets}
        stale = [name for name, layer in self._layers.items() if current.get(name) is not layer.param]
        if stale:  # reused on another model: its layers are not shared yet, start afresh
            for name in stale:
                del self._layers[name]
            self.accuracy_before = self.accuracy_after = None
        for layer in self._layers.values():  # the model may have moved since the last fit: codebooks follow it
            shared, device = layer.shared, layer.param.device
            if shared.assignment.device != device:
                layer.shared = SharedWeight(shared.centroids.to(device), shared.assignment.to(device))
        if self.bits is None:
            self._bits = {t.name: DEFAULT_CONV_BITS if t.is_conv else DEFAULT_FC_BITS for t in self._targets}
        else:
            self._bits = per_target_value(self.bits, self._targets, owner="WeightSharing", what="bits")

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Model weights are restored already; the optimizer not yet. Re-attach in on_fit_start.
        self._pending_state = state_dict

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None
        for optimizer in trainer.optimizers:
            self._ensure_hook(optimizer)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_mixed_units(trainer, self)  # pruning in epochs vs sharing in steps (or the reverse): now comparable

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.unit == "epoch":
            self._cluster_due(trainer, pl_module, trainer.current_epoch)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.schedule.unit == "step":
            self._cluster_due(trainer, pl_module, trainer.global_step)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        self._ensure_hook(optimizer)
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        with torch.no_grad():
            for name, layer in self._layers.items():
                p = layer.param
                if id(p) not in owned or p.grad is None:
                    continue
                idx = self._absorb_new_zeros(layer)  # int64 codes, converted once for this step
                g = centroid_gradient(p.grad, idx, layer.shared.k, self.reduction)
                if scaler is None and not bool(torch.isfinite(g).all()):  # (a grad scaler skips such steps)
                    raise FloatingPointError(f"WeightSharing: non-finite gradient (NaN/inf) for shared layer "
                                             f"{name} at step {trainer.global_step}; it would poison whole clusters")
                p.grad.copy_(decode(g, idx.to(p.grad.device)))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._layers:
            log_scalars(trainer, self._metrics())
            if self.log_histograms:
                for name, layer in self._layers.items():
                    log_histogram(trainer, tag("sharing", "centroids", name), layer.shared.centroids)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._layers:
            log_text(trainer, tag("sharing", "codebooks"), self._codebook_text())
        self._remove_hooks(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "layers": {
                name: {
                    "bits": layer.bits,
                    "centroids": layer.shared.centroids.detach().cpu().clone(),
                    "assignment": layer.shared.assignment.detach().cpu().clone(),
                }
                for name, layer in self._layers.items()
            },
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
        }

    # -- clustering ----------------------------------------------------------------------------------
    def _cluster_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule, progress: int) -> None:
        names = [t.name for t in self._targets]
        due = self.schedule.due(names, progress, done=list(self._layers))
        if not due:
            return
        by_name = {t.name: t for t in self._targets}
        for name in due:  # all checked before any is clustered, so a failure leaves every layer untouched
            weight = by_name[name].param.detach()
            if not bool(torch.isfinite(weight).all()):
                raise FloatingPointError(
                    f"WeightSharing: layer {name} has {int((~torch.isfinite(weight)).sum())} non-finite weights "
                    f"(NaN/inf) at clustering ({self.schedule.unit} {progress}); k-means cannot place them")
        before = self._accuracy(trainer, pl_module) if self.evaluate else None
        metrics: dict[str, float] = {}
        for name in due:
            target = by_name[name]
            bits = self._bits[name]
            weight = target.param.detach()
            if self.log_histograms and bool((weight != 0).any()):
                log_histogram(trainer, tag("sharing", "weights_before", name), weight[weight != 0])
            # b bits name 2^b codes. A pruned layer spends one on its zeros (the file's pruned/filler code too),
            # so 8-bit assignments stay one byte per weight in memory and exactly 8 bits on disk.
            k = 2**bits - int(bool((weight == 0).any()))
            shared = cluster_weight(weight, k, init=self.init, seed=self.seed, max_iter=self.max_iter, tol=self.tol)
            # Identical weights give identical codebooks on every rank; broadcasting makes it a guarantee.
            shared = trainer.strategy.broadcast(shared, src=0)
            self._attach(target, bits, shared)
            if self.log_histograms and shared.k:
                log_histogram(trainer, tag("sharing", "centroids", name), shared.centroids)
        after = self._accuracy(trainer, pl_module) if self.evaluate else None
        if before is not None and after is not None:
            self.accuracy_before, self.accuracy_after = before, after
            metrics.update({
                tag("sharing", "accuracy_before"): before,
                tag("sharing", "accuracy_after"): after,
                tag("sharing", "accuracy_drop"): before - after,
            })
        metrics.update(self._metrics())
        log_scalars(trainer, metrics)
        log_text(trainer, tag("sharing", "codebooks"), self._codebook_text())
        acc = f"; accuracy {before:.4f} -> {after:.4f}" if before is not None and after is not None else ""
        rank_zero_info(
            f"WeightSharing: clustered {', '.join(f'{n} ({self._layers[n].shared.k} centroids)' for n in due)} "
            f"at {self.schedule.unit} {progress}{acc}"
        )

    def _attach(self, target: Target, bits: int, shared: SharedWeight) -> None:
        """Make ``target`` a shared layer: keep its codebook on the parameter's device and write W = C[I]."""
        p = target.param
        shared = SharedWeight(shared.centroids.to(p.device), shared.assignment.to(p.device))
        with torch.no_grad():
            p.copy_(shared.decode().to(p.dtype))
        self._layers[target.name] = _Layer(target, bits, shared)

    def _restore(self, state: Mapping[str, Any]) -> None:
        by_name = {t.name: t for t in self._targets}
        for name, entry in state.get("layers", {}).items():
            if name not in by_name:
                raise MisconfigurationException(
                    f"WeightSharing: checkpoint has a codebook for {name!r}, which is not a selected layer"
                )
            target = by_name[name]
            if tuple(entry["assignment"].shape) != tuple(target.param.shape):
                raise MisconfigurationException(
                    f"WeightSharing: checkpoint assignment of {name!r} has shape {tuple(entry['assignment'].shape)}, "
                    f"the layer {tuple(target.param.shape)}"
                )
            centroids, assignment, bits = entry["centroids"], entry["assignment"], int(entry["bits"])
            k = centroids.numel()
            if k > 2**bits or (assignment.numel() and int(assignment.max()) > k) or not bool(torch.isfinite(centroids).all()):
                raise MisconfigurationException(
                    f"WeightSharing: checkpoint codebook of {name!r} is inconsistent ({k} centroids for {bits} bits, "
                    f"largest code {int(assignment.max()) if assignment.numel() else None}); corrupted checkpoint?")
            self._attach(target, bits, SharedWeight(centroids, assignment))
        self.accuracy_before = state.get("accuracy_before")
        self.accuracy_after = state.get("accuracy_after")

    # -- keeping the invariant after every optimizer step --------------------------------------------
    def _ensure_hook(self, optimizer: torch.optim.Optimizer) -> None:
        """Register the projection on ``optimizer`` once (optimizers may be rebuilt mid-fit)."""
        if id(optimizer) in self._hooked:
            return
        if any(fn == self._after_step for fn in optimizer._optimizer_step_post_hooks.values()):
            self._hooked[id(optimizer)] = None  # carried over by an optimizer rebuild; removed in _remove_hooks
        else:
            self._hooked[id(optimizer)] = optimizer.register_step_post_hook(self._after_step)

    def _remove_hooks(self, trainer: pl.Trainer | None = None) -> None:
        for handle in self._hooked.values():
            if handle is not None:
                handle.remove()
        self._hooked.clear()
        for opt in trainer.optimizers if trainer is not None else []:  # copies on rebuilt optimizers
            hooks = opt._optimizer_step_post_hooks
            for key in [k for k, fn in hooks.items() if fn == self._after_step]:
                del hooks[key]

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        with torch.no_grad():
            for layer in self._layers.values():
                p = layer.param
                if id(p) not in owned:
                    continue
                shared = layer.shared
                idx = shared.index()  # one int64 conversion shared by both passes
                shared.centroids = recenter(p, idx, shared.k).to(shared.centroids.dtype)
                p.copy_(decode(shared.centroids, idx).to(p.dtype))

    @staticmethod
    def _absorb_new_zeros(layer: _Layer) -> torch.Tensor:
        """Weights zeroed since clustering (e.g. by a pruning callback) become pruned positions.

        Returns the (updated) assignment as int64, so the caller converts it only once per step.
        """
        shared = layer.shared
        codes = shared.index()
        newly = (layer.param == 0) & (codes != shared.k)
        if bool(newly.any()):
            codes[newly] = shared.k
            shared.assignment = codes.to(index_dtype(shared.k + 1))
        return codes

    # -- measuring -----------------------------------------------------------------------------------
    def _metrics(self) -> dict[str, float]:
        m: dict[str, float] = {}
        stored_bits = raw_bits = weights = 0
        for name, layer in self._layers.items():
            k = layer.shared.k
            n = int((layer.shared.assignment.long() != k).sum())
            m[tag("bits", name)] = index_bits(k)
            m[tag("codebook_size", name)] = k
            m[tag("sharing_rate", name)] = sharing_rate(n, k)
            if k:
                stored_bits += n * index_bits(k) + 32 * k
                raw_bits += 32 * n
                weights += n
        if weights:
            m[tag("sharing", "bits_per_weight")] = stored_bits / weights
            m[tag("sharing_rate")] = raw_bits / stored_bits
        return m

    def _codebook_text(self) -> str:
        lines = []
        for name, layer in self._layers.items():
            c = ", ".join(f"{v:.5g}" for v in layer.shared.centroids.tolist())
            lines.append(f"**{name}** ({layer.shared.k} centroids, {layer.bits} bits): {c}")
        return "  \n".join(lines)

    def _accuracy(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        """Top-1 accuracy on up to ``eval_batches`` validation batches, or ``None`` when there is none."""
        loaders = _val_loaders(trainer)
        if not loaders:
            return None
        was_training = pl_module.training
        pl_module.eval()
        correct = torch.zeros((), dtype=torch.float64)
        total = torch.zeros((), dtype=torch.float64)
        seen = 0
        try:
            with torch.no_grad():
                for batch in loaders[0]:
                    if self.eval_batches is not None and seen >= self.eval_batches:
                        break
                    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and torch.is_tensor(batch[1])):
                        rank_zero_warn("WeightSharing: validation batches are not (x, y); accuracy not measured")
                        return None
                    x, y = (t.to(pl_module.device) if torch.is_tensor(t) else t for t in batch)
                    logits = pl_module(x)
                    correct += float((logits.argmax(-1) == y).sum())
                    total += y.numel()
                    seen += 1
        finally:
            pl_module.train(was_training)
        correct = trainer.strategy.reduce(correct.to(pl_module.device), reduce_op="sum")
        total = trainer.strategy.reduce(total.to(pl_module.device), reduce_op="sum")
        return float(correct) / float(total) if float(total) else None


def _val_loaders(trainer: pl.Trainer) -> list:
    loaders = trainer.val_dataloaders
    if loaders is None:
        try:  # not loaded yet (no sanity check, clustering before the first validation)
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
        except Exception:  # noqa: BLE001 - no validation configured is a normal case
            return []
        loaders = trainer.val_dataloaders
    if loaders is None:
        return []
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    if isinstance(loaders, Mapping):
        return list(loaders.values())
    return [loaders]


def _check_bits(bits: Any) -> None:
    values = bits.values() if isinstance(bits, Mapping) else [bits]
    if bits is None:
        return
    for b in values:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BITS:
            raise MisconfigurationException(f"WeightSharing: bits must be integers in [1, {MAX_BITS}], got {bits!r}")


__all__ = ["WeightSharing"]
