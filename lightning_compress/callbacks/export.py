"""Write the compressed artifact when fit ends and log its real size.

The ratio the other callbacks estimate while training is confirmed here by the file itself: its bytes on
disk, header, indices, codebooks, Huffman tables and biases included.

Example::

    from lightning.pytorch import Trainer
    from lightning_compress import GradualMagnitudePruning, WeightSharing
    from lightning_compress.callbacks.export import ExportCompressed

    trainer = Trainer(callbacks=[GradualMagnitudePruning(...), WeightSharing(...), ExportCompressed("model.lcz")])
    trainer.fit(model, datamodule)
    print(trainer.callbacks[-1].report.table())

Logged (rank zero, every logger): ``compress/file_bytes``, ``compress/file_ratio`` (dense bytes / file bytes),
``compress/gzip_bytes``; TensorBoard also gets the per-layer table as text under ``compress/export``.
"""

from __future__ import annotations

import os
from typing import Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_compress.callbacks._strategy import refuse_sharded_strategy
from lightning_compress.callbacks._logging import log_scalars, log_text, tag
from lightning_compress.export import CompressionReport, compressed_names, report_scalars, save_compressed


class ExportCompressed(Callback):
    """Save the model with :func:`~lightning_compress.export.save_compressed` at the end of ``fit``.

    Args:
        path: file to write (its folder is created). Only global rank zero writes it.
        include / exclude: globs of layers to compress (default: every Linear/Conv weight).
        keep_negative_zero: store -0.0 exactly instead of as +0.0 (see ``core/storage``).
        compare_gzip: also measure the gzip'd ``state_dict`` for the report.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        keep_negative_zero: bool = False,
        compare_gzip: bool = True,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"ExportCompressed: path must be a non-empty file path, got {path!r}")
        if os.path.isdir(path):
            raise ValueError(f"ExportCompressed: path {os.fspath(path)!r} is a directory; give a file name")
        self.path = os.fspath(path)
        self.include = include
        self.exclude = exclude
        self.keep_negative_zero = keep_negative_zero
        self.compare_gzip = compare_gzip
        #: The report of the last export (rank zero only; ``None`` elsewhere and before fit ends).
        self.report: CompressionReport | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_sharded_strategy(trainer, "ExportCompressed")
        # a selection typo must fail now, not after the whole fit; unless a factorization will rename the layers
        if stage == "fit" and (self.include or self.exclude) and not any(
            type(cb).__name__ == "LowRankFactorization" for cb in trainer.callbacks
        ):
            compressed_names(pl_module, include=self.include, exclude=self.exclude)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            folder = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(folder, exist_ok=True)
            self.report = save_compressed(
                pl_module,
                self.path,
                include=self.include,
                exclude=self.exclude,
                keep_negative_zero=self.keep_negative_zero,
                compare_gzip=self.compare_gzip,
            )
            rank_zero_info(
                f"ExportCompressed: wrote {self.path} ({self.report.file_bytes:,} bytes, "
                f"{self.report.ratio:.1f}x smaller than dense)"
            )
            log_text(trainer, tag("export"), self.report.table())
            log_scalars(trainer, report_scalars(self.report))
            for logger in trainer.loggers:
                logger.save()
        trainer.strategy.barrier("ExportCompressed.on_fit_end")
