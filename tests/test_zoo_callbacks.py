"""Every callback leaves every zoo model able to run (issue 14 item 2): a forward pass after pruning, weight
sharing, post-hoc and mid-fit factorization, and export + reload, on LeNet-300-100, LeNet-5, TinyGPT and
ResNet. Tiny configurations and a few steps keep it fast."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import (
    ExportCompressed,
    GradualMagnitudePruning,
    LowRankFactorization,
    WeightSharing,
    load_compressed,
)
from lightning_compress.core.lowrank import LowRankLinear
from lightning_compress.zoo import LeNet5, LeNet300100, ResNet, TinyGPT

MODELS = {
    "LeNet300100": lambda: LeNet300100(lr_scheduler="none"),
    "LeNet5": lambda: LeNet5(lr_scheduler="none"),
    "TinyGPT": lambda: TinyGPT(context=8, d_model=16, n_heads=2, n_layers=1, lr_scheduler="none"),
    "ResNet": lambda: ResNet(width=4, lr_scheduler="none"),
}


def data(name: str) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    if name == "TinyGPT":
        tokens = torch.randint(0, 256, (16, 9), generator=g)
        return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)
    return DataLoader(TensorDataset(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)),
                      batch_size=8)


CALLBACKS = {
    "pruning": lambda tmp: [GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=1, update_every=1)],
    "sharing": lambda tmp: [WeightSharing(3, start_epoch=1, evaluate=False)],
    "factorize_posthoc": lambda tmp: [LowRankFactorization(param_ratio=0.3, save_checkpoint=False, verbose=False)],
    "factorize_midfit": lambda tmp: [LowRankFactorization(param_ratio=0.3, epoch=1, verbose=False)],
    "export": lambda tmp: [GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=1, update_every=1),
                           ExportCompressed(tmp / "model.lcz")],
}


@pytest.mark.parametrize("callback", list(CALLBACKS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_model_runs_after_callback(model_name, callback, tmp_path):
    pl.seed_everything(0)
    model = MODELS[model_name]()
    loader = data(model_name)
    x, _ = next(iter(loader))
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.callbacks.extend(CALLBACKS[callback](tmp_path))  # after the Trainer's own (no ModelCheckpoint here)
    trainer.fit(model, loader, loader)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()
    if callback.startswith("factorize"):
        replaced = [m for m in model.modules() if isinstance(m, LowRankLinear)]
        assert replaced, "nothing was factorized"
        if model_name == "TinyGPT":  # the attention projection was replaced and attention still runs
            assert isinstance(model.blocks[0].attn.out_proj, LowRankLinear)
            assert model.head.weight is model.tok.weight  # the tie is kept (the head stays dense)
    if callback == "export":
        fresh = MODELS[model_name]().eval()
        load_compressed(tmp_path / "model.lcz", fresh)
        with torch.no_grad():
            assert torch.equal(fresh(x), out)
