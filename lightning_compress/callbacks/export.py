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

Logged (rank zero, every logger): ``compress/ratio`` (the file's real ratio: dense bytes / file bytes) and
``compress/file_bytes`` (and ``compress/gzip_bytes`` with ``compare_gzip``); TensorBoard also gets the
per-layer table as text under ``compress/export``, with any schedule that did not finish.
"""

from __future__ import annotations

import os
from typing import Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_compress.callbacks._claims import claims
from lightning_compress.callbacks._logging import log_scalars, log_text
from lightning_compress.callbacks._strategy import refuse_sharded_strategy
from lightning_compress.core.distributed import GatheredStateDict, is_sharded
from lightning_compress.format.api import compressed_names, save_compressed
from lightning_compress.format.report import CompressionReport, report_scalars
from lightning_compress.format.ties import find_aliases
from lightning_compress.tags import tag
from lightning_compress.validation import check_bool, check_writable_file, fail

_OWNER = "ExportCompressed"


def log_report(report: CompressionReport, writer, step: int = 0, prefix: str = "compress") -> None:
    """Write the report to a ``SummaryWriter``-like object: the table as text, sizes as scalars."""
    writer.add_text(f"{prefix}/export", report.table(), global_step=step)
    for key, value in report_scalars(report, prefix).items():
        writer.add_scalar(key, value, global_step=step)


class ExportCompressed(Callback):
    """Save the model with :func:`~lightning_compress.export.save_compressed` at the end of ``fit``.

    Args:
        path: file to write (``~`` is expanded; its folder is created). Only global rank zero writes it.
        include: globs of weight tensors to compress (default: the callbacks' default selection, plus every
            tensor a compression callback compressed).
        exclude: globs of tensors to store raw.
        keep_negative_zero: store -0.0 exactly instead of as +0.0 (see ``format/layer.py``).
        compare_gzip: also measure the gzip'd ``state_dict`` for the report (slow on big models; off by default).
        require_complete: refuse to write when a compression schedule did not finish (``max_steps``,
            ``EarlyStopping``, an interrupt): an error naming what is unfinished, and no file.

    A ``fast_dev_run`` writes nothing (Lightning's convention: no artifacts from a dev run).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        keep_negative_zero: bool = False,
        compare_gzip: bool = False,
        require_complete: bool = False,
    ) -> None:
        self.path = check_writable_file(_OWNER, "path", path)
        self.include = include
        self.exclude = exclude
        self.keep_negative_zero = check_bool(_OWNER, "keep_negative_zero", keep_negative_zero)
        self.compare_gzip = check_bool(_OWNER, "compare_gzip", compare_gzip)
        self.require_complete = check_bool(_OWNER, "require_complete", require_complete)
        #: The report of the last export (rank zero only; ``None`` elsewhere and before fit ends).
        self.report: CompressionReport | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_sharded_strategy(trainer, _OWNER, sharded_ok=True)
        if stage != "fit":
            return
        check_writable_file(_OWNER, "path", self.path)  # again: the folder may have changed since __init__
        # a selection typo must fail now, not after the whole fit; unless a factorization will rename the layers
        renames = any(claim.renames_layers for _, claim in claims(trainer, pl_module))
        if (self.include or self.exclude) and not renames:
            try:
                compressed_names(pl_module, include=self.include, exclude=self.exclude)
            except ValueError as err:
                fail(_OWNER, str(err))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.fast_dev_run:
            rank_zero_info(f"ExportCompressed: fast_dev_run, {self.path} not written")
            return
        described = [claim for _, claim in claims(trainer, pl_module)]
        unfinished = [f"{c.owner}: {note}" for c in described for note in c.unfinished]
        if unfinished and self.require_complete:
            fail(_OWNER, f"require_complete=True and compression did not finish, so {self.path} was not written: "
                         + "; ".join(unfinished))
        if unfinished:
            rank_zero_warn(f"ExportCompressed: exporting an unfinished compression: {'; '.join(unfinished)}")
        # FSDP2: each tensor is gathered when the writer reads it (one layer at a time); a gather is collective,
        # so the other ranks read the same tensors in the same order (the writer reads each once, in order)
        state = GatheredStateDict(pl_module.state_dict()) if any(map(is_sharded, pl_module.parameters())) else None
        if trainer.is_global_zero:
            shared = [name for c in described if c.kind == "share" for name in c.layers]
            self._export(trainer, pl_module, [name for c in described for name in c.layers], shared, unfinished, state)
        elif state is not None:  # the same keys the writer reads: a tied tensor's later names are not read
            skip = find_aliases(state, pl_module)
            for key in state:
                if key not in skip:
                    state[key]
        trainer.strategy.barrier("ExportCompressed.on_fit_end")

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, claimed: list[str], shared: list[str],
                unfinished: list[str], state: GatheredStateDict | None = None) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        names = set(pl_module.state_dict())
        self.report = save_compressed(  # shared layers may hold per-channel / per-group codebooks: detect them
            pl_module, self.path, include=self.include, exclude=self.exclude, also=claimed,
            keep_negative_zero=self.keep_negative_zero, compare_gzip=self.compare_gzip and state is None,
            groups={n: "auto" for n in shared if n in names},
            state_dict=state,  # gzip of a gathered model would hold it whole: skipped under FSDP2
        )
        self.report.unfinished = list(unfinished)
        self.report.notes += [f"{c.owner}: {note}" for _, c in claims(trainer, pl_module) for note in c.notes]
        rank_zero_info(
            f"ExportCompressed: {self.report.ratio:.1f}x smaller than dense: wrote {self.path} "
            f"({self.report.file_bytes:,} bytes, the real file ratio)"
        )
        log_text(trainer, tag("export"), self.report.table())
        log_scalars(trainer, report_scalars(self.report))
        for logger in trainer.loggers:
            logger.save()


__all__ = ["ExportCompressed", "log_report"]
