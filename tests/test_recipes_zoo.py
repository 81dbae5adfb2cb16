"""The TinyGPT and ResNet recipes parse with ``lightning-compress`` and run a few steps end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_compress.cli import main
from lightning_compress.export import read_compressed

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-compress"])


def _callbacks(path: Path) -> dict[str, dict]:
    config = yaml.safe_load(path.read_text())
    return {cb["class_path"].rsplit(".", 1)[-1]: cb.get("init_args", {}) for cb in config["trainer"]["callbacks"]}


@pytest.mark.parametrize("name", ["tinygpt_fortunes.yaml", "resnet_fashion_mnist.yaml"])
def test_recipe_prunes_shares_exports_and_monitors(name):
    cbs = _callbacks(CONFIGS / name)
    assert list(cbs) == ["ModelCheckpoint", "GradualMagnitudePruning", "WeightSharing", "ExportCompressed",
                         "CompressionMonitor"]
    max_epochs = yaml.safe_load((CONFIGS / name).read_text())["trainer"]["max_epochs"]
    assert cbs["GradualMagnitudePruning"]["end_epoch"] < cbs["WeightSharing"]["start_epoch"] < max_epochs


def _run(recipe: Path, *extra: str) -> None:
    main(["fit", "--config", str(recipe), *extra, "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
          "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false"])


def test_tinygpt_recipe_runs_on_a_small_corpus(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n%\n".join(f"fortune {i}: " + "the quick brown fox " * (i % 4 + 1) for i in range(60)))
    recipe = CONFIGS / "tinygpt_fortunes.yaml"
    monkeypatch.chdir(tmp_path)
    _run(recipe, f"--data.init_args.paths=[{corpus}]", "--data.init_args.context=16", "--model.init_args.context=16",
         "--model.init_args.d_model=16", "--model.init_args.n_heads=2", "--trainer.max_epochs=4")
    weights = read_compressed(tmp_path / _callbacks(recipe)["ExportCompressed"]["path"])
    w = weights["blocks.0.mlp.0.weight"]
    assert int((w == 0).sum()) >= int(0.6 * w.numel()) and torch.unique(w[w != 0]).numel() <= 2 ** 4
    assert torch.unique(weights["tok.weight"][weights["tok.weight"] != 0]).numel() <= 2 ** 4  # the embedding too


def test_resnet_recipe_runs_on_offline_digits(tmp_path, monkeypatch):
    recipe = CONFIGS / "resnet_fashion_mnist.yaml"
    monkeypatch.chdir(tmp_path)
    _run(recipe, "--data=DigitsDataModule", "--data.init_args.val_size=0.2", "--data.init_args.batch_size=32",
         "--model.init_args.width=4", "--trainer.max_epochs=6")
    weights = read_compressed(tmp_path / _callbacks(recipe)["ExportCompressed"]["path"])
    w = weights["stages.1.conv1.weight"]
    assert int((w == 0).sum()) >= int(0.8 * w.numel()) and torch.unique(w[w != 0]).numel() <= 2 ** 5
