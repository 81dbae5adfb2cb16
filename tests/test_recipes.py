"""The shipped YAML recipes parse with ``lightning-compress``, say what they claim, and one runs end to end."""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml

from lightning_compress.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))
DEEP_COMPRESSION = sorted(CONFIGS.glob("deep_compression_*.yaml"))


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own arguments sit in sys.argv next to ``args``."""
    monkeypatch.setattr(sys, "argv", ["lightning-compress"])


def print_config(path: Path, *extra: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), *extra, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_there_are_deep_compression_recipes_for_both_networks_and_data_sets():
    names = {p.name for p in DEEP_COMPRESSION}
    assert names >= {f"deep_compression_{net}_{data}.yaml" for net in ("lenet300100", "lenet5")
                     for data in ("mnist", "fashion_mnist")}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_with_the_cli(path):
    config = print_config(path)
    assert config["model"]["class_path"].startswith("lightning_compress.zoo")
    assert config["data"]["class_path"].startswith("lightning_compress.zoo")


def _callbacks(config: dict) -> dict[str, dict]:
    return {cb["class_path"].rsplit(".", 1)[-1]: cb["init_args"] for cb in config["trainer"]["callbacks"]}


@pytest.mark.parametrize("path", DEEP_COMPRESSION, ids=lambda p: p.name)
def test_deep_compression_recipes_prune_then_share_then_export(path):
    config = print_config(path)
    order = [cb["class_path"].rsplit(".", 1)[-1] for cb in config["trainer"]["callbacks"]]
    assert order[0] == "ModelCheckpoint" and config["trainer"]["callbacks"][0]["init_args"]["save_last"]
    order = order[1:]
    assert order[:3] == ["GradualMagnitudePruning", "WeightSharing", "ExportCompressed"]
    cbs = _callbacks(config)
    prune, share = cbs["GradualMagnitudePruning"], cbs["WeightSharing"]
    max_epochs = config["trainer"]["max_epochs"]
    # clustering after the last mask update, and epochs left to fine-tune the centroids
    assert prune["end_epoch"] < share["start_epoch"] < max_epochs
    assert share["reduction"] in ("sum", "mean")
    targets = prune["final_sparsity"]
    if "lenet300100" in path.name:
        assert set(targets) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    else:
        assert set(targets) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    # re-tuned on Fashion-MNIST's validation split (issue 18, benchmarks/lenet_tuning.py): bits per layer,
    # fewest on fc1 (most of the weights), Fisher-weighted clustering
    assert set(share["bits"]) == set(targets) and all(3 <= b <= 8 for b in share["bits"].values())
    assert share["bits"]["fc1.weight"] == min(share["bits"].values())
    assert share["weighting"] == "fisher"
    assert all(0.3 <= s < 1 for s in targets.values())
    mnist_twin = path.name.replace("_fashion_mnist", "_mnist")
    if mnist_twin != path.name:  # MNIST and Fashion-MNIST recipes differ only in the data and where files go
        twin = _callbacks(print_config(CONFIGS / mnist_twin))
        assert twin["GradualMagnitudePruning"] == prune and twin["WeightSharing"] == share


def test_a_recipe_runs_end_to_end_on_tiny_epochs(tmp_path, monkeypatch):
    """The LeNet-300-100 recipe, unchanged except for data (offline digits) and 2 batches per epoch."""
    recipe = CONFIGS / "deep_compression_lenet300100_fashion_mnist.yaml"
    config = yaml.safe_load(recipe.read_text())
    cbs = _callbacks(config)
    targets = cbs["GradualMagnitudePruning"]["final_sparsity"]
    monkeypatch.chdir(tmp_path)  # the recipe writes runs/... relative to the working directory
    main([
        "fit", "--config", str(recipe),
        "--data=DigitsDataModule", "--data.init_args.val_size=0.2", "--data.init_args.batch_size=32",
        f"--trainer.max_epochs={cbs['WeightSharing']['start_epoch'] + 1}",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ])
    path = tmp_path / cbs["ExportCompressed"]["path"]
    assert path.is_file()
    from lightning_compress.export import read_compressed

    weights = read_compressed(path)
    for name, sparsity in targets.items():
        w = weights[name]
        zeros = int((w == 0).sum())
        assert zeros >= round(sparsity * w.numel())  # pruned to (at least) the recipe's target
        bits = cbs["WeightSharing"]["bits"][name]
        assert torch.unique(w[w != 0]).numel() <= 2 ** bits  # shared: at most 2^bits distinct non-zero values
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "runs").rglob("*"))
    assert os.path.getsize(path) < 0.1 * 266_610 * 4  # far smaller than the dense float32 model


def test_compress_your_model_example_runs_and_its_file_reloads(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("compress_your_model", CONFIGS.parent / "compress_your_model.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--epochs", "4", "--limit-batches", "3", "--sparsity", "0.9", "--bits", "4",
                           "--out", str(tmp_path)])
    assert (tmp_path / "model.lcz").stat().st_size == result["file_bytes"]
    assert result["val_acc_from_file"] == result["val_acc"]  # the file is the trained model
    assert result["ratio"] > 5


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_keeps_one_last_checkpoint(path):
    """``save_last`` without the version counter: a second run overwrites ``last.ckpt`` (no ``last-v1.ckpt``)."""
    for cb in yaml.safe_load(path.read_text())["trainer"].get("callbacks", []):
        if cb["class_path"].rsplit(".", 1)[-1] == "ModelCheckpoint" and cb.get("init_args", {}).get("save_last"):
            assert cb["init_args"].get("enable_version_counter") is False, path.name


@pytest.mark.slow
def test_a_second_run_of_a_recipe_leaves_its_weights_in_last_ckpt(tmp_path, monkeypatch):
    """Run the quickstart twice (different seeds): last.ckpt and the export hold the second run's weights."""
    from lightning_compress.export import read_compressed

    monkeypatch.chdir(tmp_path)
    recipe = CONFIGS / "quickstart_digits.yaml"
    tiny = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    lcz = tmp_path / "runs" / "quickstart" / "lenet300100.lcz"
    ckpt_dir = tmp_path / "runs" / "quickstart" / "checkpoints"
    exported = []
    for seed in (0, 1):
        main(["fit", "--config", str(recipe), f"--seed_everything={seed}", *tiny])
        exported.append(read_compressed(lcz))
    assert not exported[0]["fc1.weight"].equal(exported[1]["fc1.weight"])  # the runs differ
    assert sorted(p.name for p in ckpt_dir.iterdir() if "-v" in p.stem) == []  # no last-v1.ckpt, no epoch=..-v1
    state = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in exported[1].items():
        assert state[name].equal(tensor), name  # last.ckpt is the second run
