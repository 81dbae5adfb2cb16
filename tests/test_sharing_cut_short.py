"""Weight sharing in runs cut short (issue 13 item 3): warned before the first step, recorded at the end."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyNet, image_data, tiny_trainer

from lightning_compress import CompressionConfigError, ExportCompressed, WeightSharing


def test_max_steps_that_ends_before_clustering_warns_before_the_first_step():
    sharing = WeightSharing(bits=2, start_step=10, evaluate=False, log_histograms=False)
    trainer = tiny_trainer([sharing], max_epochs=5, max_steps=4)
    with pytest.warns(UserWarning, match=r"the fit ends at step 3 \(max_epochs=5, max_steps=4\), before \['conv.weight'"):
        trainer.fit(TinyNet(), image_data())


def test_epoch_schedule_cut_by_max_steps_warns_too():
    sharing = WeightSharing(bits=2, start_epoch=2, evaluate=False, log_histograms=False)
    trainer = tiny_trainer([sharing], max_epochs=5, max_steps=7)  # 6 batches per epoch: stops in epoch 1
    with pytest.warns(UserWarning, match=r"the fit ends at epoch 1.* \(max_epochs=5, max_steps=7\).*at epoch 2"):
        trainer.fit(TinyNet(), image_data())


def test_unclustered_layers_are_recorded_and_a_strict_export_refuses(tmp_path):
    sharing = WeightSharing(bits=2, start_step=10, evaluate=False, log_histograms=False)
    export = ExportCompressed(tmp_path / "m.lcz", require_complete=True)
    model = TinyNet()
    trainer = tiny_trainer([sharing, export], max_epochs=5, max_steps=4)
    with pytest.warns(UserWarning, match="training stopped before every layer was clustered"):
        with pytest.raises(CompressionConfigError, match=r"require_complete=True.*fc1.weight: not clustered"):
            trainer.fit(model, image_data())
    claim = sharing.describe(trainer, model)
    assert any("at most 4 asked" in note for note in claim.unfinished)
    assert not (tmp_path / "m.lcz").exists()


def test_a_complete_run_records_nothing(tmp_path):
    sharing = WeightSharing(bits=2, start_epoch=1, evaluate=False, log_histograms=False)
    model = TinyNet()
    trainer = tiny_trainer([sharing, ExportCompressed(tmp_path / "m.lcz", require_complete=True)], max_epochs=2)
    trainer.fit(model, image_data())
    assert sharing.describe(trainer, model).unfinished == ()
    assert (tmp_path / "m.lcz").exists()
    for name in ("conv.weight", "fc1.weight", "fc2.weight"):
        assert torch.unique(model.get_parameter(name)).numel() <= 4


def test_bits_chosen_by_auto_are_written_into_the_export_report(tmp_path):
    sharing = WeightSharing(bits="auto", target_bits=4.0, start_epoch=1, evaluate=False, log_histograms=False)
    export = ExportCompressed(tmp_path / "m.lcz")
    trainer = tiny_trainer([sharing, export], max_epochs=2)
    trainer.fit(TinyNet(), image_data())
    assert sharing.chosen_bits
    (note,) = [n for n in export.report.notes if n.startswith("WeightSharing: bits='auto'")]
    for name, bits in sharing.chosen_bits.items():
        assert f"{name} {bits}" in note
    assert note in export.report.table()
