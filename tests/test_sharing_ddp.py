"""Two CPU processes with DDP: every rank holds the same codebooks, assignments and weights."""

from __future__ import annotations

import torch

SCRIPT = r"""
import os, sys
sys.path.insert(0, os.path.join(os.environ["PYTHONPATH"].split(os.pathsep)[0], "tests"))
import lightning.pytorch as pl
import torch
from helpers import tiny_trainer
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import WeightSharing


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 24)
        self.fc2 = nn.Linear(24, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class SkewRankOne(Callback):
    # Runs before WeightSharing at the clustering epoch: rank 1 perturbs its weights, so clustering locally
    # would give different codebooks; the callback must broadcast rank 0's.
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1 and trainer.global_rank == 1:
            with torch.no_grad():
                pl_module.fc1.weight.mul_(1.5)


def main():
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 12, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    val = DataLoader(TensorDataset(x, y), batch_size=32)
    sharing = WeightSharing(3, start_epoch=1, eval_batches=2, init="kmeans++", seed=3)
    trainer = tiny_trainer([SkewRankOne(), sharing], max_epochs=3, devices=2, strategy="ddp")
    model = Net()
    trainer.fit(model, train, val)
    torch.save(
        {
            "codebooks": {n: (s.centroids, s.assignment) for n, s in sharing.codebooks.items()},
            "weights": {n: p.detach() for n, p in model.named_parameters()},
            "accuracy": (sharing.accuracy_before, sharing.accuracy_after),
        },
        f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main()
"""


def test_ddp_ranks_hold_identical_codebooks(run_script, tmp_path):
    run_script(SCRIPT, timeout=240)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert set(r0["codebooks"]) == {"fc1.weight", "fc2.weight"}
    for name, (c0, a0) in r0["codebooks"].items():
        c1, a1 = r1["codebooks"][name]
        assert torch.equal(c0, c1), name
        assert torch.equal(a0, a1) and a0.dtype == torch.uint8, name
        assert 1 < c0.numel() <= 8
    for name, w0 in r0["weights"].items():
        assert torch.equal(w0, r1["weights"][name]), name
    w = r0["weights"]["fc1.weight"]
    assert torch.unique(w).numel() <= 8
    # accuracy is summed over both ranks' validation shards: the same number on each
    assert r0["accuracy"] == r1["accuracy"] and r0["accuracy"][0] is not None
