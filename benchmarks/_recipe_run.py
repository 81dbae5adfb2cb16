"""Run a recipe YAML (or its dense twin) the way ``lightning-compress fit`` would, and measure it.

Shared by ``deep_compression.py``: the benchmark trains exactly what ``examples/configs`` ships, with
only bookkeeping overrides (where logs, checkpoints and the compressed file go, progress bar off, and in ``--quick``
mode how many batches an epoch has).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_compress.cli import CompressCLI


class EpochRecorder(Callback):
    """Validation accuracy (and global sparsity of the model's Linear/Conv weights) after every epoch."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        acc = trainer.callback_metrics.get("val_acc")
        zeros = total = 0
        for m in pl_module.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                zeros += int((m.weight == 0).sum())
                total += m.weight.numel()
        self.history.append({
            "epoch": trainer.current_epoch + 1,
            "val_acc": float(acc) if acc is not None else float("nan"),
            "sparsity": zeros / total if total else 0.0,
        })


@dataclass
class RecipeRun:
    model: LightningModule
    datamodule: Any
    trainer: Trainer
    test_acc: float
    fit_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    export: Any = None  # CompressionReport of ExportCompressed, when the recipe has one


def build(recipe: str, overrides: Sequence[str] = ()) -> CompressCLI:
    """Instantiate model, data and trainer from ``recipe`` plus command-line style ``overrides``."""
    argv, sys.argv = sys.argv, sys.argv[:1]  # the benchmark's own flags are not LightningCLI's
    try:
        return CompressCLI(args=["--config", recipe, *overrides], run=False)
    finally:
        sys.argv = argv


def run_recipe(recipe: str, workdir: str, name: str, dense: bool = False, overrides: Sequence[str] = (),
               test: bool = True) -> RecipeRun:
    """Fit ``recipe`` (``dense=True``: same model, data, optimizer and epochs, no callbacks) and test it.

    ``test=False``: the test split is not touched (``test_acc`` is NaN), for tuning on the validation split.
    """
    os.makedirs(workdir, exist_ok=True)
    args = [
        f"--trainer.logger.init_args.save_dir={workdir}",
        f"--trainer.logger.init_args.name={name}",
        f"--trainer.default_root_dir={os.path.join(workdir, name)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *overrides,
    ]
    if dense:
        args.append("--trainer.callbacks=[]")
    cli = build(recipe, args)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    export_cb = None
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint):  # the recipe's checkpoints go to the workdir, not the recipe's runs/
            cb.dirpath = os.path.join(workdir, name, "checkpoints")
        if type(cb).__name__ == "ExportCompressed":
            cb.path = os.path.join(workdir, f"{name}.lcz")
            export_cb = cb
    recorder = EpochRecorder()
    trainer.callbacks.append(recorder)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_seconds = time.perf_counter() - start
    test_acc = float("nan")
    if test:
        test_acc = float(trainer.test(model, datamodule=dm, verbose=False)[0]["test_acc"])
    return RecipeRun(
        model=model,
        datamodule=dm,
        trainer=trainer,
        test_acc=test_acc,
        fit_seconds=fit_seconds,
        history=recorder.history,
        export=None if export_cb is None else export_cb.report,
    )
