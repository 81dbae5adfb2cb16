"""CompressionMonitor writes the documented tags; checked with TensorBoard's own event reader."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from helpers import tiny_trainer
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
    trainer = tiny_trainer([monitor], 2, logger=logger)
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
        "compress/sparsity", "compress/estimated_ratio", "compress/estimated_size_bytes", "compress/bits_per_weight",
        "compress/accuracy", "compress/sparsity/fc1.weight", "compress/bits/fc2.weight",
    ]:
        assert t in scalars, t
    first_layer = events.Scalars("compress/sparsity/fc1.weight")
    assert first_layer[-1].value == pytest.approx(0.75)
    assert "compress/ratio" not in scalars  # one ratio: the real file's, logged by ExportCompressed only
    assert events.Scalars("compress/estimated_ratio")[-1].value == pytest.approx(stats.ratio, rel=1e-6)
    # One point at fit start and one per validation epoch, at the end of fit.
    assert len(events.Scalars("compress/sparsity")) >= 3

    tensors = set(events.Tags()["tensors"])
    assert any(t.startswith("compress/table") for t in tensors)
    plugins = events.PluginTagToContent("hparams")
    assert plugins, "no hparams summary written"
    assert any(b"compress/final/estimated_ratio" in content for content in plugins.values())


def test_monitor_prefers_the_module_val_acc(tmp_path):
    from lightning_compress.zoo import LeNet300100

    model = LeNet300100(in_features=16, num_classes=3, lr=0.01)
    monitor = CompressionMonitor(print_summary=False)
    trainer = tiny_trainer([monitor], 1)
    trainer.fit(model, *loaders())
    assert monitor.last_accuracy == pytest.approx(float(trainer.callback_metrics["val_acc"]))


def test_monitor_rejects_bad_selection_before_training():
    monitor = CompressionMonitor(include=["does_not_exist*"])
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[monitor])
    with pytest.raises(ValueError, match="does_not_exist"):
        trainer.fit(Plain(), *loaders())


class Regression(Plain):
    """Outputs ``(B, k)`` floats against float targets: no accuracy exists (issue 13 item 6)."""

    def __init__(self, outputs: int):
        super().__init__()
        self.fc2 = nn.Linear(8, outputs)

    def training_step(self, batch, _):
        x, y = batch
        return F.mse_loss(self(x), y)


@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_model_logs_everything_but_accuracy(tmp_path, outputs, caplog):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 16, generator=g), torch.randn(32, outputs, generator=g)
    data = DataLoader(TensorDataset(x, y), batch_size=8)
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    monitor = CompressionMonitor(print_summary=False)
    trainer = tiny_trainer([monitor], 2, logger=logger)
    with caplog.at_level("INFO"):
        trainer.fit(Regression(outputs), data, data)
    assert monitor.last_accuracy is None and monitor.task == "other"
    assert sum("accuracy is not measured" in r.getMessage() for r in caplog.records) == 1
    scalars = set(read_events(logger.log_dir).Tags()["scalars"])
    assert "compress/accuracy" not in scalars and "compress/estimated_ratio" in scalars


def test_language_model_gets_perplexity_from_its_loss_and_from_logits(tmp_path):
    from lightning_compress.zoo import TinyGPT

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (16, 9), generator=g)
    data = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)
    model = TinyGPT(context=8, d_model=16, n_heads=2, n_layers=1, lr=1e-3)
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False)
    monitor = CompressionMonitor(print_summary=False)
    trainer = tiny_trainer([monitor], 1, logger=logger)
    trainer.fit(model, data, data)
    assert monitor.task == "language_model"
    assert monitor.last_perplexity == pytest.approx(torch.exp(trainer.callback_metrics["val_loss"]).item(), rel=1e-5)
    # the logits-based measurement agrees (another loss key: the monitor measures perplexity itself)
    own = CompressionMonitor(loss_key="not_logged", print_summary=False)
    pl.Trainer(logger=False, callbacks=[own], enable_progress_bar=False, enable_model_summary=False).validate(model, data)
    with torch.no_grad():
        logits = model(tokens[:, :-1])
    expected = torch.exp(F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))).item()
    assert own.last_perplexity == pytest.approx(expected, rel=1e-4)
    assert own.last_accuracy == pytest.approx((logits.argmax(-1) == tokens[:, 1:]).float().mean().item(), abs=1e-6)
    scalars = set(read_events(logger.log_dir).Tags()["scalars"])
    assert {"compress/perplexity", "compress/accuracy"} <= scalars


def test_hparams_hold_no_tensors():
    from lightning_compress import GradualMagnitudePruning
    from lightning_compress.callbacks.monitor import run_hparams

    pruning = GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=1)
    pruning.masks = {"fc1.weight": torch.ones(2, 2)}  # state of the kind a callback keeps publicly
    pruning.layer_sparsity = {"fc1.weight": 0.5}
    trainer = pl.Trainer(callbacks=[pruning], logger=False)
    params = run_hparams(trainer, Plain())
    assert params and all(isinstance(v, (int, float, str, bool)) for v in params.values())
    assert "GradualMagnitudePruning/masks" not in params
    assert not any("tensor" in str(v) for v in params.values())
    assert params["GradualMagnitudePruning/layer_sparsity"] == "{'fc1.weight': 0.5}"
