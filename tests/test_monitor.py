"""CompressionMonitor writes the documented tags; checked with TensorBoard's own event reader."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress.callbacks.monitor import CompressionMonitor


class Plain(pl.LightningModule):
    """Logs no accuracy, so the monitor must compute it itself."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # lr 0: the hand-made zeros stay put


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(x, y), batch_size=16)


def read_events(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_monitor_logs_tags_accuracy_hparams_and_table(tmp_path):
    torch.manual_seed(0)
    model = Plain()
    with torch.no_grad():
        model.fc1.weight[:, :12] = 0  # 75% sparse first layer
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    monitor = CompressionMonitor()
    trainer = pl.Trainer(
        max_epochs=2, logger=logger, callbacks=[monitor], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, *loaders())

    # Accuracy computed by the monitor itself equals a direct computation.
    x, y = loaders()[1].dataset.tensors
    expected = (model(x).argmax(1) == y).float().mean().item()
    assert monitor.last_accuracy == pytest.approx(expected, abs=1e-6)
    stats = monitor.last_stats
    assert stats.layers[0].sparsity == pytest.approx(0.75)

    events = read_events(logger.log_dir)
    scalars = set(events.Tags()["scalars"])
    for t in [
        "compress/sparsity", "compress/ratio", "compress/size_bytes", "compress/bits_per_weight",
        "compress/accuracy", "compress/sparsity/fc1.weight", "compress/bits/fc2.weight",
    ]:
        assert t in scalars, t
    first_layer = events.Scalars("compress/sparsity/fc1.weight")
    assert first_layer[-1].value == pytest.approx(0.75)
    assert events.Scalars("compress/ratio")[-1].value == pytest.approx(stats.ratio, rel=1e-6)
    # One point at fit start and one per validation epoch, at the end of fit.
    assert len(events.Scalars("compress/sparsity")) >= 3

    tensors = set(events.Tags()["tensors"])
    assert any(t.startswith("compress/table") for t in tensors)
    plugins = events.PluginTagToContent("hparams")
    assert plugins, "no hparams summary written"
    assert any(b"compress/final/ratio" in content for content in plugins.values())


def test_monitor_prefers_the_module_val_acc(tmp_path):
    from lightning_compress.zoo import LeNet300100

    model = LeNet300100(in_features=16, num_classes=3, lr=0.01)
    monitor = CompressionMonitor(print_summary=False)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, callbacks=[monitor], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, *loaders())
    assert monitor.last_accuracy == pytest.approx(float(trainer.callback_metrics["val_acc"]))


def test_monitor_rejects_bad_selection_before_training():
    monitor = CompressionMonitor(include=["does_not_exist*"])
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[monitor])
    with pytest.raises(ValueError, match="does_not_exist"):
        trainer.fit(Plain(), *loaders())
