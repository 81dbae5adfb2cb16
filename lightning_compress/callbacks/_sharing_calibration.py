"""Sensitivity of each weight for ``WeightSharing(weighting="fisher")``, measured inside a running fit.

The empirical Fisher diagonal (SqueezeLLM, Kim et al. 2023; Apple's SKM): the mean over calibration batches
of the squared gradient of the training loss, ``F_i = mean_b (dL_b/dw_i)^2``. Clustering then minimises
``sum_i F_i (w_i - c_{a_i})^2``: weights the loss is sensitive to are reproduced more closely.

The loss is the module's own ``training_step`` on the fit's training batches, so what is weighted is what is
trained. Each rank measures on its own batches (the codebook is broadcast from rank zero afterwards), the
model's gradients are saved and restored around the measurement, and nothing is logged.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_compress.core.importance import fisher_diagonal
from lightning_compress.validation import fail

_OWNER = "WeightSharing"


def _loss_of(output: Any) -> torch.Tensor:
    loss = output.get("loss") if isinstance(output, dict) else output
    if not torch.is_tensor(loss) or loss.numel() != 1:
        fail(_OWNER, "weighting='fisher' needs training_step to return the loss (a scalar tensor or {'loss': ...}), "
                     f"got {type(output).__name__}")
    return loss.reshape(())


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


def training_batches(trainer: pl.Trainer, count: int) -> Iterator[Any]:
    """Up to ``count`` training batches of this fit, on the module's device."""
    loader = trainer.train_dataloader
    if loader is None:
        trainer.fit_loop.setup_data()
        loader = trainer.train_dataloader
    if loader is None:
        fail(_OWNER, "weighting='fisher' needs training batches; the fit has no train dataloader")
    loaders = list(loader.values()) if isinstance(loader, dict) else list(loader) if isinstance(loader, (list, tuple)) else [loader]
    seen = 0
    for batch in loaders[0]:
        if seen >= count:
            return
        yield trainer.strategy.batch_to_device(batch)
        seen += 1


def fisher_importance(
    pl_module: pl.LightningModule, params: Sequence[nn.Parameter], batches: Iterator[Any]
) -> list[torch.Tensor]:
    """``mean_b (dL_b/dw)^2`` for each of ``params`` (``core.importance.fisher_diagonal``), the loss being the
    module's ``training_step`` on ``batches``; the fit's gradients are left as they were, nothing is logged."""
    if not pl_module.automatic_optimization:
        fail(_OWNER, "weighting='fisher' calls training_step for calibration, which steps the optimizers itself "
                     "under manual optimization; use weighting=None")
    counter = iter(range(1 << 62))

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        return _loss_of(pl_module.training_step(batch, next(counter)))

    pl_module.log = pl_module.log_dict = _no_log  # calibration losses are not training metrics
    try:
        return fisher_diagonal(pl_module, list(params), batches, loss_fn)
    except ValueError as err:
        fail(_OWNER, f"weighting='fisher': {err}")
    finally:
        del pl_module.log, pl_module.log_dict


__all__ = ["fisher_importance", "training_batches"]
