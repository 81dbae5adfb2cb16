"""CompressionMonitor: the measuring instrument of a compression run.

It reads the model alone (``core.stats``), so it reports what *any* technique left behind, ours or not:
per-layer and global sparsity, distinct values and bits, estimated storage size and compression ratio,
plus accuracy. Everything goes to the Trainer's loggers (TensorBoard by default) under ``compress/...``;
at the end of fit the final numbers go to TensorBoard's hparams view, so runs with different schedules
compare side by side, and the per-layer table is logged as text and printed.

Example::

    from lightning_compress import CompressionMonitor, GradualMagnitudePruning

    trainer = Trainer(callbacks=[GradualMagnitudePruning(0.9, start_epoch=0, end_epoch=5), CompressionMonitor()])
    trainer.fit(model, datamodule)
    print(trainer.callbacks[-1].last_stats.table())
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_compress.callbacks._strategy import refuse_sharded_strategy
from lightning_compress.callbacks._logging import log_scalars, log_text, tag
from lightning_compress.core.stats import ModelStats, model_stats
from lightning_compress.core.targets import find_targets


class CompressionMonitor(Callback):
    """Log sparsity, bits, estimated size, compression ratio and accuracy during fit.

    Args:
        include, exclude, types: which layers count as compressible (defaults: every Linear/Conv weight).
        accuracy_key: metric the module logs itself; when it never appears, accuracy is computed here with
            torchmetrics from classification batches ``(x, y)``.
        log_per_layer: also log ``compress/sparsity/<layer>`` and ``compress/bits/<layer>``.
        log_hparams: write the final numbers to TensorBoard's hparams view at the end of fit.
        print_summary: print the per-layer table at the end of fit (rank zero).
    """

    def __init__(
        self,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        accuracy_key: str = "val_acc",
        log_per_layer: bool = True,
        log_hparams: bool = True,
        print_summary: bool = True,
    ) -> None:
        self.include, self.exclude, self.types = include, exclude, types
        self.accuracy_key = accuracy_key
        self.log_per_layer = log_per_layer
        self.log_hparams = log_hparams
        self.print_summary = print_summary
        self.last_stats: ModelStats | None = None
        self.last_accuracy: float | None = None
        self._own_accuracy: torchmetrics.Metric | None = None
        self._module_logs_accuracy = False

    # -- measuring ---------------------------------------------------------------------------------
    def measure(self, model: torch.nn.Module) -> ModelStats:
        """Statistics of ``model``'s selected layers (re-selected each time: factorization may change them)."""
        targets = find_targets(model, self.include, self.exclude, self.types, owner="CompressionMonitor")
        self.last_stats = model_stats(model, targets)
        return self.last_stats

    def _metrics(self, stats: ModelStats) -> dict[str, float]:
        m = {
            tag("sparsity"): stats.sparsity,
            tag("ratio"): stats.ratio,
            tag("size_bytes"): stats.compressed_bytes,
            tag("nonzeros"): stats.nonzeros,
            tag("bits_per_weight"): stats.bits_per_weight,
        }
        if self.log_per_layer:
            for s in stats.layers:
                m[tag("sparsity", s.name)] = s.sparsity
                m[tag("bits", s.name)] = s.bits
        if self.last_accuracy is not None:
            m[tag("accuracy")] = self.last_accuracy
        return m

    # -- hooks, in the order a fit calls them ----------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_sharded_strategy(trainer, "CompressionMonitor")
        # Fail before the first step when the selection is wrong, not at the first validation.
        find_targets(pl_module, self.include, self.exclude, self.types, owner="CompressionMonitor")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_scalars(trainer, self._metrics(self.measure(pl_module)))

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._module_logs_accuracy or trainer.sanity_checking:
            return
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and torch.is_tensor(batch[1])):
            return  # not a classification batch: nothing to measure here
        x, y = batch
        with torch.no_grad():
            logits = pl_module(x)
        if logits.dim() != 2:
            return
        if self._own_accuracy is None:
            self._own_accuracy = torchmetrics.classification.MulticlassAccuracy(logits.shape[-1], average="micro")
        self._own_accuracy = self._own_accuracy.to(logits.device)
        self._own_accuracy.update(logits, y)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.accuracy_key)
        if value is not None:
            self._module_logs_accuracy = True
            self.last_accuracy = float(value)
        elif self._own_accuracy is not None and self._own_accuracy.update_count:
            self.last_accuracy = float(self._own_accuracy.compute())
        if self._own_accuracy is not None:
            self._own_accuracy.reset()
        if trainer.state.fn == "fit":
            log_scalars(trainer, self._metrics(self.measure(pl_module)))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stats = self.measure(pl_module)
        metrics = self._metrics(stats)
        log_scalars(trainer, metrics)
        log_text(trainer, tag("table"), stats.table())
        if self.log_hparams and trainer.is_global_zero:
            final = {tag("final", "ratio"): stats.ratio, tag("final", "sparsity"): stats.sparsity}
            if self.last_accuracy is not None:
                final[tag("final", "accuracy")] = self.last_accuracy
            params = _run_hparams(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_hyperparams(params, metrics=final)
        if self.print_summary:
            acc = f", accuracy {self.last_accuracy:.4f}" if self.last_accuracy is not None else ""
            rank_zero_info(
                f"\nCompression summary (estimated storage, before Huffman): {stats.ratio:.1f}x smaller, "
                f"sparsity {stats.sparsity:.2%}{acc}\n{stats.table()}\n"
            )


def _run_hparams(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """Module hyperparameters plus the scalar settings of this package's callbacks, for the hparams view."""
    params: dict[str, Any] = {}
    for k, v in dict(pl_module.hparams).items():
        if isinstance(v, (int, float, str, bool)):
            params[k] = v
    for cb in trainer.callbacks:
        if not type(cb).__module__.startswith("lightning_compress") or isinstance(cb, CompressionMonitor):
            continue
        for k, v in vars(cb).items():
            if not k.startswith("_") and isinstance(v, (int, float, str, bool)):
                params[f"{type(cb).__name__}/{k}"] = v
            elif not k.startswith("_") and isinstance(v, dict) and len(v) <= 16:
                params[f"{type(cb).__name__}/{k}"] = str(v)
    return params
