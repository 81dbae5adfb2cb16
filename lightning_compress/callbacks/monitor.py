"""CompressionMonitor: the measuring instrument of a compression run.

It reads the model alone (``core.stats``), so it reports what *any* technique left behind, ours or not:
per-layer and global sparsity, distinct values and bits, the *estimated* storage size and compression ratio
(before Huffman coding; the exported file's real ratio is logged by ``ExportCompressed`` as
``compress/ratio``), plus the task's quality: accuracy for a classifier, perplexity for a language model.
Everything goes to the Trainer's loggers (TensorBoard by default) under ``compress/...``; at the end of fit
the final numbers go to TensorBoard's hparams view, so runs with different schedules compare side by side,
and the per-layer table is logged as text and printed.

What counts as which task is read from the validation batches: ``(x, y)`` whose outputs and targets are a
classification (:func:`~lightning_compress.core.metrics.is_classification`) get top-1 accuracy; when the
logits carry a sequence dimension (``(B, T, V)`` against ``(B, T)`` targets) the model is a language model
and also gets perplexity, ``exp`` of the loss the module logs (``loss_key``, in nats) or else torchmetrics'
``Perplexity`` on the logits. Anything else (a regression, a dict output) is logged without accuracy, and
one info line says so.

Example::

    from lightning_compress import CompressionMonitor, GradualMagnitudePruning

    trainer = Trainer(callbacks=[GradualMagnitudePruning(0.9, start_epoch=0, end_epoch=5), CompressionMonitor()])
    trainer.fit(model, datamodule)
    print(trainer.callbacks[-1].last_stats.table())
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.text import Perplexity
from typing_extensions import override

from lightning_compress.callbacks._logging import log_scalars, log_text, tag
from lightning_compress.callbacks._strategy import refuse_sharded_strategy
from lightning_compress.core.metrics import is_classification
from lightning_compress.core.stats import ModelStats, model_stats
from lightning_compress.core.targets import Target, find_targets
from lightning_compress.validation import as_config_error, check_bool, fail

_OWNER = "CompressionMonitor"
Task = Literal["classification", "language_model", "other"]
#: Hyperparameter values TensorBoard's hparams view can show (never tensors, masks or nested state).
_HPARAM_TYPES = (int, float, str, bool)


class CompressionMonitor(Callback):
    """Log sparsity, bits, estimated size and ratio, and accuracy or perplexity during fit.

    Args:
        include: globs of the layers that count as compressible (default: every weight matrix, as everywhere
            in this package).
        exclude: globs of layers left out of the statistics.
        types: layer types that count (``"linear"``, ``"conv"``, ``"embedding"``, ... or classes).
        accuracy_key: metric the module logs itself; when it never appears, accuracy is computed here with
            torchmetrics from classification batches ``(x, y)``.
        loss_key: the validation loss (mean cross-entropy in nats) the module logs; a language model's
            perplexity is ``exp`` of it. When it never appears, perplexity is computed here from the logits.
        log_per_layer: also log ``compress/sparsity/<layer>`` and ``compress/bits/<layer>``.
        log_hparams: write the final numbers to TensorBoard's hparams view at the end of fit.
        print_summary: print the per-layer table at the end of fit (rank zero).
    """

    def __init__(
        self,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        types: Sequence[str] | None = None,
        accuracy_key: str = "val_acc",
        loss_key: str = "val_loss",
        log_per_layer: bool = True,
        log_hparams: bool = True,
        print_summary: bool = True,
    ) -> None:
        for name, value in (("accuracy_key", accuracy_key), ("loss_key", loss_key)):
            if not isinstance(value, str) or not value:
                fail(_OWNER, f"{name} must be a metric name (a non-empty string), got {value!r}")
        self.include, self.exclude, self.types = include, exclude, types
        self.accuracy_key, self.loss_key = accuracy_key, loss_key
        self.log_per_layer = check_bool(_OWNER, "log_per_layer", log_per_layer)
        self.log_hparams = check_bool(_OWNER, "log_hparams", log_hparams)
        self.print_summary = check_bool(_OWNER, "print_summary", print_summary)
        self.last_stats: ModelStats | None = None
        self.last_accuracy: float | None = None
        self.last_perplexity: float | None = None
        #: What the validation batches showed the model to be; ``None`` until the first validation batch.
        self.task: Task | None = None
        self._own_accuracy: torchmetrics.Metric | None = None
        self._own_perplexity: Perplexity | None = None
        self._module_logs_accuracy = False
        self._module_logs_loss = False

    # -- measuring ---------------------------------------------------------------------------------
    def targets(self, model: torch.nn.Module) -> list[Target]:
        """The selected layers (the package's one selection; ``CompressionConfigError`` when it is wrong)."""
        with as_config_error(_OWNER):
            return find_targets(model, self.include, self.exclude, self.types, owner=_OWNER)

    def measure(self, model: torch.nn.Module) -> ModelStats:
        """Statistics of ``model``'s selected layers (re-selected each time: factorization may change them)."""
        self.last_stats = model_stats(model, self.targets(model))
        return self.last_stats

    def _metrics(self, stats: ModelStats) -> dict[str, float]:
        m = {
            tag("sparsity"): stats.sparsity,
            tag("estimated_ratio"): stats.ratio,
            tag("estimated_size_bytes"): stats.compressed_bytes,
            tag("nonzeros"): stats.nonzeros,
            tag("bits_per_weight"): stats.bits_per_weight,
        }
        if self.log_per_layer:
            for s in stats.layers:
                m[tag("sparsity", s.name)] = s.sparsity
                m[tag("bits", s.name)] = s.bits
        if self.last_accuracy is not None:
            m[tag("accuracy")] = self.last_accuracy
        if self.last_perplexity is not None:
            m[tag("perplexity")] = self.last_perplexity
        return m

    def _not_a_classification(self, why: str) -> None:
        self.task = "other"
        rank_zero_info(f"{_OWNER}: {why}; accuracy is not measured (log it yourself as {self.accuracy_key!r} "
                       "to see it under compress/accuracy); every other number is")

    def _needs_forward(self) -> bool:
        if self.task == "other":
            return False
        if self.task is None:
            return True
        return not self._module_logs_accuracy or (self.task == "language_model" and not self._module_logs_loss)

    # -- hooks, in the order a fit calls them ----------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_sharded_strategy(trainer, _OWNER, sharded_ok=True)
        self.targets(pl_module)  # fail before the first step when the selection is wrong

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_scalars(trainer, self._metrics(self.measure(pl_module)))

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not self._needs_forward():
            return
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and torch.is_tensor(batch[1])):
            self._not_a_classification("validation batches are not (x, y) pairs")
            return
        x, y = batch
        with torch.no_grad():
            logits = pl_module(x)
        if not is_classification(logits, y):
            shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
            self._not_a_classification(f"validation outputs {shape} and targets {tuple(y.shape)} are not a classification")
            return
        if self.task is None:
            self.task = "language_model" if logits.dim() >= 3 else "classification"
        classes = logits.shape[-1]
        if self._own_accuracy is None:
            self._own_accuracy = torchmetrics.classification.MulticlassAccuracy(classes, average="micro")
        self._own_accuracy = self._own_accuracy.to(logits.device)
        self._own_accuracy.update(logits.reshape(-1, classes), y.reshape(-1))
        if self.task == "language_model":
            if self._own_perplexity is None:
                self._own_perplexity = Perplexity()
            self._own_perplexity = self._own_perplexity.to(logits.device)
            self._own_perplexity.update(logits.reshape(1, -1, classes).float(), y.reshape(1, -1))

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        accuracy = self._logged(trainer, self.accuracy_key)
        self._module_logs_accuracy = accuracy is not None
        self.last_accuracy = accuracy if accuracy is not None else _computed(self._own_accuracy)
        if self.task == "language_model":
            loss = self._logged(trainer, self.loss_key)
            self._module_logs_loss = loss is not None
            self.last_perplexity = math.exp(loss) if loss is not None else _computed(self._own_perplexity)
        for metric in (self._own_accuracy, self._own_perplexity):
            if metric is not None:
                metric.reset()
        if trainer.state.fn == "fit":
            log_scalars(trainer, self._metrics(self.measure(pl_module)))

    @staticmethod
    def _logged(trainer: pl.Trainer, key: str) -> float | None:
        """The value the module logged under ``key`` this epoch, if any."""
        value = trainer.callback_metrics.get(key)
        return float(value) if value is not None else None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stats = self.measure(pl_module)
        log_scalars(trainer, self._metrics(stats))
        log_text(trainer, tag("table"), stats.table())
        if self.log_hparams and trainer.is_global_zero:
            final = {tag("final", "estimated_ratio"): stats.ratio, tag("final", "sparsity"): stats.sparsity}
            if self.last_accuracy is not None:
                final[tag("final", "accuracy")] = self.last_accuracy
            if self.last_perplexity is not None:
                final[tag("final", "perplexity")] = self.last_perplexity
            params = run_hparams(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_hyperparams(params, metrics=final)
        if self.print_summary:
            quality = f", accuracy {self.last_accuracy:.4f}" if self.last_accuracy is not None else ""
            if self.last_perplexity is not None:
                quality += f", perplexity {self.last_perplexity:.3f}"
            rank_zero_info(
                f"\nEstimated compression (no file written by this monitor; before Huffman coding): "
                f"{stats.ratio:.1f}x smaller, sparsity {stats.sparsity:.2%}{quality}\n{stats.table()}\n"
            )


def _computed(metric: torchmetrics.Metric | None) -> float | None:
    """This callback's own measurement of the epoch, if it made one."""
    return float(metric.compute()) if metric is not None and metric.update_count else None


def _plain(value: Any) -> bool:
    """A value TensorBoard's hparams can hold as text: scalars, and short lists/dicts made only of them."""
    if isinstance(value, _HPARAM_TYPES) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return len(value) <= 16 and all(isinstance(v, _HPARAM_TYPES) for v in value)
    if isinstance(value, Mapping):
        return len(value) <= 16 and all(isinstance(k, str) and isinstance(v, _HPARAM_TYPES) for k, v in value.items())
    return False


def run_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """Module hyperparameters plus the settings of this package's callbacks, for the hparams view.

    Only plain values go in (numbers, strings, booleans; short lists or mappings of them as text): never a
    tensor, a mask dictionary or other state, which TensorBoard cannot show and which would bloat the file.
    """
    params: dict[str, Any] = {}
    for k, v in dict(pl_module.hparams).items():
        if isinstance(v, _HPARAM_TYPES):
            params[k] = v
    for cb in trainer.callbacks:
        if not type(cb).__module__.startswith("lightning_compress") or isinstance(cb, CompressionMonitor):
            continue
        for k, v in vars(cb).items():
            if k.startswith("_") or v is None or not _plain(v):
                continue
            params[f"{type(cb).__name__}/{k}"] = v if isinstance(v, _HPARAM_TYPES) else str(v)
    return params


__all__ = ["CompressionMonitor", "run_hparams"]
