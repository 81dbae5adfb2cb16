"""Two CPU processes (DDP, gloo): every rank must hold bit-identical masks and weights."""

from __future__ import annotations

import pytest
import torch

SCRIPT = """
import torch, lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset
from lightning_compress import GradualMagnitudePruning
from lightning_compress.zoo import LeNet300100

class Dump(Callback):
    def __init__(self, prunings):
        self.prunings = prunings
    def on_fit_end(self, trainer, pl_module):
        masks = {k: v.cpu() for p in self.prunings for k, v in p.masks.items()}
        torch.save({"masks": masks, "weights": pl_module.state_dict(), "points": [p.last_point for p in self.prunings]},
                   f"rank{trainer.global_rank}.pt")

if __name__ == "__main__":
    torch.set_num_threads(1)
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.round(torch.randn(256, 64, generator=g) * 4) / 4   # coarse inputs: many exact weight ties
    y = torch.randint(0, 10, (256,), generator=g)
    model = LeNet300100(in_features=64, optimizer="sgd", lr=0.05, lr_scheduler="none")
    layer = GradualMagnitudePruning(0.8, include=["fc1*", "fc2*"], start_epoch=0, end_epoch=1, update_every=0.25)
    glob = GradualMagnitudePruning(0.5, include=["fc3*"], scope="global", start_epoch=0.5, schedule="constant")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, callbacks=[layer, glob, Dump([layer, glob])],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))
"""


@pytest.mark.slow
def test_ddp_ranks_hold_identical_masks(run_script, tmp_path):
    run_script(SCRIPT, timeout=240)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["points"] == r1["points"] == [1.0, 0.5]
    assert set(r0["masks"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for name, mask in r0["masks"].items():
        assert torch.equal(mask, r1["masks"][name]), name
    for key, value in r0["weights"].items():
        assert torch.equal(value, r1["weights"][key]), key
    assert int((~r0["masks"]["fc1.weight"]).sum()) == round(0.8 * 64 * 300)
    assert int((~r0["masks"]["fc3.weight"]).sum()) == 500
    assert int((r0["weights"]["fc2.weight"] == 0).sum()) == round(0.8 * 300 * 100)
