"""The bad-input catalogue: every bad configuration or input is rejected with an error that names the
offending parameter or layer, before any optimizer step where that is possible.

Each ``Case`` is one row of ``docs/bad_input.md`` (the test checks the doc lists every id with its error type
and message excerpt). Cases that run a Trainer go through :func:`fit_raises`, which also asserts that no
optimizer step ran (``global_step`` unchanged) and, unless the case loads a checkpoint, that the model's
weights are bit-identical to what they were before ``fit``.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from helpers import TinyNet, tiny_trainer as trainer
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_compress import CompressionMonitor, GradualMagnitudePruning, LowRankFactorization, WeightSharing
from lightning_compress.callbacks.export import ExportCompressed
from lightning_compress.format.errors import (
    ArchitectureMismatchError,
    CorruptedFileError,
    NotCompressedFileError,
    TruncatedFileError,
)
from lightning_compress.export import load_compressed, save_compressed
from lightning_compress.schedules import LinearSchedule

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_input.md"


# ---------------------------------------------------------------------------------------------- fixtures
class NoLayers(pl.LightningModule):
    """Nothing a compression callback could select: one bare parameter and a norm layer."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6))
        self.norm = nn.LayerNorm(6)

    def training_step(self, batch, batch_idx):
        return (self.norm(batch[0].flatten(1)[:, :6]) * self.scale).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Stream(IterableDataset):
    """A train set without ``len``: an epoch-based schedule cannot know where an epoch ends."""

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(8):
            yield torch.randn(1, 6, 6, generator=g), torch.tensor(0)


def data(n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return DataLoader(TensorDataset(x, (x.mean((1, 2, 3)) > 0).long()), batch_size=8)


class StepCounter(pl.Callback):
    """Counts optimizer steps that completed in this fit (a post-step hook on every optimizer)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_fit_start(self, trainer, pl_module):
        for opt in trainer.optimizers:
            opt.register_step_post_hook(lambda *args: setattr(self, "steps", self.steps + 1))


def fit_raises(callbacks, model: pl.LightningModule | None = None, loader=None, ckpt_path=None,
               check_weights: bool = True, **kw) -> None:
    """Fit; on the expected exception check that no optimizer step ran and the weights are untouched.

    ``check_weights=False`` where a callback legitimately rewrote them first (clustering before the step).
    """
    model = model if model is not None else TinyNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counter = StepCounter()
    t = trainer(list(callbacks) + [counter], **kw)
    try:
        t.fit(model, loader if loader is not None else data(), ckpt_path=ckpt_path)
    except BaseException:
        assert counter.steps == 0, "an optimizer step ran before the error"
        if ckpt_path is None:
            assert t.global_step == 0
        if ckpt_path is None and check_weights:
            after = model.state_dict()
            for k, v in before.items():  # bit-exact, NaN == NaN
                torch.testing.assert_close(after[k], v, rtol=0, atol=0, equal_nan=True, msg=f"{k} changed before the error")
        raise
    raise AssertionError("fit did not raise")


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of pruning (fc1) + weight sharing (fc2) after 3 epochs."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    t = trainer(callbacks(), max_epochs=3, limit_train_batches=2)
    t.fit(TinyNet(), data())
    t.save_checkpoint(path)
    return path


def callbacks():
    return [GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=1, include="fc1"),
            WeightSharing(3, start_epoch=2, include="fc2", evaluate=False, log_histograms=False)]


def edited_checkpoint(source: Path, tmp: Path, edit: Callable[[dict], None]) -> Path:
    ckpt = torch.load(source, weights_only=False)
    edit(ckpt)
    path = tmp / "edited.ckpt"
    torch.save(ckpt, path)
    return path


def _state(ckpt: dict, owner: str) -> dict:
    (key,) = [k for k in ckpt["callbacks"] if k.startswith(owner)]
    return ckpt["callbacks"][key]


def resume(ckpt: Path, model: pl.LightningModule | None = None) -> None:
    fit_raises(callbacks(), model=model, ckpt_path=ckpt, max_epochs=5, limit_train_batches=2)


def _mask_shape(ckpt):
    _state(ckpt, "GradualMagnitudePruning")["masks"]["fc1.weight"] = torch.ones(5, 5, dtype=torch.bool)


def _mask_missing(ckpt):
    del _state(ckpt, "GradualMagnitudePruning")["masks"]["fc1.weight"]


def _codebook_renamed(ckpt):
    layers = _state(ckpt, "WeightSharing")["layers"]
    layers["fc9.weight"] = layers.pop("fc2.weight")


def _codes_beyond_k(ckpt):
    entry = _state(ckpt, "WeightSharing")["layers"]["fc2.weight"]
    entry["assignment"] = entry["assignment"].clone()
    entry["assignment"].view(-1)[0] = entry["centroids"].numel() + 5


# ---------------------------------------------------------------------------------------------- compressed files
def _lcz(tmp: Path) -> tuple[Path, bytes]:
    model = TinyNet()
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.1] = 0
    path = tmp / "model.lcz"
    save_compressed(model, path, compare_gzip=False)
    return path, path.read_bytes()


def _export_under_a_file(tmp):
    (tmp / "a_file").write_text("x")
    ExportCompressed(tmp / "a_file" / "m.lcz")


def _read_over_limit(tmp):
    from lightning_compress.export import read_compressed

    path, _ = _lcz(tmp)
    read_compressed(path, max_bytes=64)


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickled",))


def _unsafe_checkpoint(tmp):
    from lightning_compress.export_cli import load_checkpoint

    torch.save({"state_dict": {}, "hyper_parameters": {"x": _RunsCode()}}, tmp / "evil.ckpt")
    load_checkpoint(str(tmp / "evil.ckpt"))


def _load_truncated(tmp):
    path, raw = _lcz(tmp)
    path.write_bytes(raw[: len(raw) // 2])
    load_compressed(path, TinyNet())


def _load_flipped(tmp):
    path, raw = _lcz(tmp)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(flipped))
    load_compressed(path, TinyNet())


def _load_not_lcz(tmp):
    path = tmp / "weights.pt"
    torch.save(TinyNet().state_dict(), path)
    load_compressed(path, TinyNet())


def _load_other_architecture(tmp):
    path, _ = _lcz(tmp)
    load_compressed(path, TinyNet(hidden=16))


# ---------------------------------------------------------------------------------------------- YAML / CLI
def _cli(tmp: Path, callback_yaml: str) -> None:
    from lightning_compress.cli import CompressCLI

    config = tmp / "config.yaml"
    config.write_text(
        "model:\n  class_path: lightning_compress.zoo.LeNet300100\n  init_args: {in_features: 64}\n"
        "data:\n  class_path: lightning_compress.zoo.data.DigitsDataModule\n"
        "trainer:\n  max_epochs: 1\n  logger: false\n  callbacks:\n" + callback_yaml
    )
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            CompressCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp}"], run=False)
    except SystemExit as exit_:  # jsonargparse prints the reason and exits: keep the reason as the message
        raise SystemExit(f"exit {exit_.code}: {err.getvalue()}") from None


PRUNING_YAML = "    - class_path: GradualMagnitudePruning\n      init_args: {{{}}}\n"
SHARING_YAML = "    - class_path: WeightSharing\n      init_args: {{{}}}\n"


# ---------------------------------------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class Case:
    id: str
    what: str
    run: Callable[[Path], object]
    error: type[BaseException]
    excerpt: str  # part of the message; it names the parameter or the layer
    when: str  # init | setup | fit start | load | parse


def _g(**kw):
    return lambda tmp: GradualMagnitudePruning(**kw)


def _lazy_net() -> TinyNet:
    model = TinyNet()
    model.fc1 = nn.LazyLinear(model.fc1.out_features)
    return model


def _w(**kw):
    return lambda tmp: WeightSharing(**kw)


def _f(**kw):
    return lambda tmp: LowRankFactorization(**kw)


def _t(**kw):
    def run(tmp):
        from lightning_compress import share_weights

        return share_weights(TinyNet(), **kw)

    return run


CASES = [
    # -- GradualMagnitudePruning arguments
    Case("P01", "final_sparsity above 1", _g(final_sparsity=1.5), ValueError, "final_sparsity must be a finite number >= 0 and <= 1", "init"),
    Case("P02", "per-layer final_sparsity below 0", _g(final_sparsity={"fc1*": -0.1}), ValueError, "final_sparsity['fc1*'] must be a finite number >= 0 and <= 1", "init"),
    Case("P03", "final_sparsity given as a string", _g(final_sparsity="0.9"), ValueError, "final_sparsity must be a finite number >= 0 and <= 1", "init"),
    Case("P04", "initial_sparsity above final_sparsity", _g(final_sparsity=0.5, initial_sparsity=0.8), ValueError, "below initial_sparsity", "init"),
    Case("P05", "end_epoch before start_epoch", _g(final_sparsity=0.5, start_epoch=3, end_epoch=2), ValueError, "end_epoch (2) must be", "init"),
    Case("P06", "negative start_epoch", _g(final_sparsity=0.5, start_epoch=-1), ValueError, "start_epoch must be", "init"),
    Case("P07", "NaN start_epoch", _g(final_sparsity=0.5, start_epoch=float("nan")), ValueError, "start_epoch must be a finite number", "init"),
    Case("P08", "update_every of 0", _g(final_sparsity=0.5, update_every=0), ValueError, "update_every must be", "init"),
    Case("P09", "unknown schedule name", _g(final_sparsity=0.5, schedule="cubik"), ValueError, "schedule must be one of", "init"),
    Case("P10", "unknown scope", _g(final_sparsity=0.5, scope="model"), ValueError, "scope must be", "init"),
    Case("P11", "malformed N:M structure", _g(structure="4:2"), ValueError, "structure must look like 'N:M'", "init"),
    Case("P12", "criterion='std' without sensitivity", _g(criterion="std"), ValueError, "needs sensitivity", "init"),
    Case("P13", "sensitivity without criterion='std'", _g(final_sparsity=0.5, sensitivity=1.0), ValueError, "sensitivity is only used", "init"),
    Case("P14", "unknown layer type", _g(final_sparsity=0.5, types=["transformer"]), ValueError, "unknown layer type 'transformer'", "init"),
    Case("P15", "exponential schedule to sparsity 1", _g(final_sparsity=1.0, schedule="exponential"), ValueError, "final_sparsity < 1", "init"),
    Case("P16", "missing final_sparsity", _g(), ValueError, "final_sparsity is required", "init"),
    Case("P17", "schedule mapping with a key that is not a number", _g(schedule={"late": 0.5}), ValueError,
         "schedule keys must be numbers (epochs or steps), got 'late'", "init"),
    # -- WeightSharing arguments
    Case("S01", "bits of 0", _w(bits=0), MisconfigurationException, "bits must be an int >= 1 and <= 16", "init"),
    Case("S02", "bits above 16", _w(bits=17), MisconfigurationException, "bits must be an int >= 1 and <= 16", "init"),
    Case("S03", "fractional bits", _w(bits=4.5), MisconfigurationException, "bits must be an int", "init"),
    Case("S04", "per-layer bits given as a string", _w(bits={"fc1*": "4"}), MisconfigurationException, "bits['fc1*'] must be an int", "init"),
    Case("S05", "both start_epoch and start_step", _w(bits=4, start_epoch=1, start_step=5), MisconfigurationException, "start_epoch or start_step", "init"),
    Case("S06", "negative start_epoch", _w(bits=4, start_epoch=-1), MisconfigurationException, "start_epoch", "init"),
    Case("S07", "unknown k-means init", _w(bits=4, init="spectral"), MisconfigurationException, "init must be one of", "init"),
    Case("S08", "unknown reduction", _w(bits=4, reduction="max"), MisconfigurationException, "reduction must be", "init"),
    Case("S09", "max_iter given as a string", _w(bits=4, max_iter="10"), MisconfigurationException, "max_iter must be an int", "init"),
    Case("S10", "negative tol", _w(bits=4, tol=-1.0), MisconfigurationException, "tol must be", "init"),
    Case("S11", "negative layer_interval", _w(bits=4, layer_interval=-1), MisconfigurationException, "layer_interval", "init"),
    Case("S12", "unknown granularity", _w(bits=4, granularity="row"), MisconfigurationException, "granularity must be one of", "init"),
    Case("S13", "granularity of 0 channels", _w(bits=4, granularity=0), MisconfigurationException, "granularity must be 'tensor', 'channel' or an int >= 1", "init"),
    Case("S14", "unknown weighting", _w(bits=4, weighting="hessian"), MisconfigurationException, "weighting must be one of", "init"),
    Case("S15", "calibration_batches of 0", _w(bits=4, calibration_batches=0), MisconfigurationException, "calibration_batches must be an int >= 1", "init"),
    Case("S16", "bits='auto' without target_bits", _w(bits="auto"), MisconfigurationException, "target_bits must be a finite number >= 2", "init"),
    Case("S17", "target_bits without bits='auto'", _w(bits=4, target_bits=3.0), MisconfigurationException, "target_bits=3.0 is used only with bits='auto'", "init"),
    # -- LowRankFactorization / ExportCompressed arguments
    Case("F01", "energy above 1", _f(energy=1.5), MisconfigurationException, "energy", "init"),
    Case("F02", "two rank rules at once", _f(energy=0.9, rank=4), MisconfigurationException, "only one of energy, rank, param_ratio", "init"),
    Case("F03", "rank 0", _f(rank=0), MisconfigurationException, "rank", "init"),
    Case("F04", "param_ratio above 1", _f(param_ratio=2.0), MisconfigurationException, "param_ratio", "init"),
    Case("F05", "negative epoch", _f(epoch=-1), MisconfigurationException, "epoch must be", "init"),
    Case("F06", "hooi_iters given as a bool", _f(hooi_iters=True), MisconfigurationException, "hooi_iters must be an int", "init"),
    Case("F07", "eval_batches given as a bool", _f(eval_batches=True), MisconfigurationException, "eval_batches must be an int", "init"),
    Case("E01", "empty export path", lambda tmp: ExportCompressed(""), ValueError, "path must be", "init"),
    Case("E02", "export path is a directory", lambda tmp: ExportCompressed(tmp), ValueError, "is a directory", "init"),
    Case("E03", "export include pattern that matches nothing",
         lambda tmp: fit_raises([ExportCompressed(tmp / "m.lcz", include="fc9*")]), ValueError, "include pattern 'fc9*'", "setup"),
    Case("E04", "export path under a regular file", _export_under_a_file, ValueError, "is a file, not a folder", "init"),
    Case("E05", "export path with a NUL character", lambda tmp: ExportCompressed(str(tmp / "m\0.lcz")), ValueError,
         "contains a NUL character", "init"),
    # -- selection, at setup
    Case("T01", "include pattern that matches nothing",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.5, include="fc9*")]), ValueError, "include pattern 'fc9*'", "setup"),
    Case("T02", "exclude pattern that matches nothing",
         lambda tmp: fit_raises([WeightSharing(4, exclude="head*", evaluate=False)]), ValueError, "exclude pattern 'head*'", "setup"),
    Case("T03", "per-layer key that matches no selected layer",
         lambda tmp: fit_raises([WeightSharing({"fc9*": 4}, evaluate=False)]), ValueError, "bits key 'fc9*'", "setup"),
    Case("T04", "model with no eligible layer",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.5)], model=NoLayers()), ValueError, "no eligible layer in NoLayers", "setup"),
    Case("T05", "N:M structure on a layer whose input size is not a multiple of M",
         lambda tmp: fit_raises([GradualMagnitudePruning(structure="2:4")]), ValueError, "layer conv.weight", "setup"),
    Case("T06", "epoch schedule with an unsized train dataloader",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.5, end_epoch=1)], loader=DataLoader(Stream(), batch_size=4)),
         ValueError, "needs a sized train dataloader", "fit start"),
    Case("T07", "no end_epoch and no max_epochs",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.5)], max_epochs=-1, max_steps=4), ValueError, "end_epoch is required", "setup"),
    Case("T08", "lazy layer not yet initialised (nn.LazyLinear)",
         lambda tmp: trainer([CompressionMonitor()]).fit(_lazy_net(), data()), ValueError, "are lazy", "setup"),
    # -- two callbacks claiming one layer
    Case("C01", "sharing fixes assignments before pruning ends on the same layer",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=2),
                                 WeightSharing(4, start_epoch=1, evaluate=False)]),
         MisconfigurationException, "raises the sparsity of conv.weight until epoch 2", "setup"),
    Case("C02", "two weight-sharing callbacks on one layer",
         lambda tmp: fit_raises([WeightSharing(4, include="fc*", evaluate=False), WeightSharing(3, include="fc1", evaluate=False)]),
         MisconfigurationException, "both share fc1.weight", "setup"),
    Case("C03", "two pruning callbacks with the same selection (colliding checkpoint state)",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.5), GradualMagnitudePruning(0.7)]),
         RuntimeError, "The `callback.state_key` must be unique", "Trainer"),
    Case("C06", "sharing (in steps) fixes assignments before pruning (in epochs) ends on the same layer",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.5, start_epoch=0, end_epoch=1, include="fc1"),
                                 WeightSharing(4, start_step=3, include="fc1", evaluate=False)]),
         MisconfigurationException, "raises the sparsity of fc1.weight until epoch 1 (step 4)", "fit start"),
    Case("C04", "mid-fit factorization of a layer that pruning holds masks for",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.5, include="fc1"), LowRankFactorization(rank=4, epoch=1)]),
         MisconfigurationException, "replaces fc1.weight at epoch 1", "setup"),
    Case("C05", "mid-fit factorization of a layer that weight sharing holds a codebook for",
         lambda tmp: fit_raises([LowRankFactorization(rank=4, epoch=2, include="fc1"), WeightSharing(4, include="fc1", evaluate=False)]),
         MisconfigurationException, "replaces fc1.weight at epoch 2", "setup"),
    # -- non-finite numbers
    Case("N01", "NaN weights at clustering time",
         lambda tmp: fit_raises([WeightSharing(4, evaluate=False)], model=_with_nan(TinyNet(), "fc1")),
         FloatingPointError, "layer fc1.weight has 1 non-finite weights", "fit start"),
    Case("N02", "inf weights at a mask update",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.5, end_epoch=1)], model=_with_nan(TinyNet(), "fc2", float("inf"))),
         FloatingPointError, "layer fc2.weight has 1 non-finite weights", "fit start"),
    Case("N03", "non-finite gradients of a shared layer",
         lambda tmp: fit_raises([WeightSharing(4, evaluate=False)], model=TinyNet(poison=True), check_weights=False),
         FloatingPointError, "non-finite gradient (NaN/inf) for shared layer conv.weight", "first step"),
    # -- checkpoints
    Case("K01", "resume into a model of another shape",
         lambda tmp: resume(tmp / "good.ckpt", model=TinyNet(hidden=16)), RuntimeError, "size mismatch for fc1.weight", "load"),
    Case("K02", "pruning state whose mask shape differs from the layer",
         lambda tmp: resume(edited_checkpoint(tmp / "good.ckpt", tmp, _mask_shape)), ValueError, "checkpoint mask for fc1.weight has shape (5, 5)", "load"),
    Case("K03", "pruning state without a mask for a selected layer",
         lambda tmp: resume(edited_checkpoint(tmp / "good.ckpt", tmp, _mask_missing)), ValueError, "no masks for ['fc1.weight']", "load"),
    Case("K04", "sharing state for a layer that is not selected",
         lambda tmp: resume(edited_checkpoint(tmp / "good.ckpt", tmp, _codebook_renamed)), MisconfigurationException, "codebook for 'fc9.weight'", "load"),
    Case("K05", "sharing state with codes beyond its codebook",
         lambda tmp: resume(edited_checkpoint(tmp / "good.ckpt", tmp, _codes_beyond_k)), MisconfigurationException, "codebook of 'fc2.weight' is inconsistent", "load"),
    Case("K06", "checkpoint file that is not a checkpoint",
         lambda tmp: (tmp / "junk.ckpt").write_bytes(b"\0junk" * 64) and resume(tmp / "junk.ckpt"),
         pickle.UnpicklingError, "load", "load"),
    Case("K07", "truncated checkpoint file",
         lambda tmp: (tmp / "cut.ckpt").write_bytes((tmp / "good.ckpt").read_bytes()[:2000]) and resume(tmp / "cut.ckpt"),
         RuntimeError, "failed finding central directory", "load"),
    Case("K08", "resume after the pruning ramp ended, with a lower final_sparsity (masks only grow)",
         lambda tmp: fit_raises([GradualMagnitudePruning(0.3, start_epoch=0, end_epoch=1, include="fc1"), callbacks()[1]],
                                ckpt_path=tmp / "good.ckpt", max_epochs=5, limit_train_batches=2),
         ValueError, "final_sparsity 0.3 for fc1.weight is below the 0.5 its checkpoint masks already prune", "load"),
    # -- compressed files
    Case("X01", "truncated compressed file", _load_truncated, TruncatedFileError, "the file is truncated", "load"),
    Case("X02", "one flipped byte in a compressed file", _load_flipped, CorruptedFileError, "checksum mismatch", "load"),
    Case("X03", "a torch.save file given to load_compressed", _load_not_lcz, NotCompressedFileError, "not a lightning-compress file", "load"),
    Case("X04", "compressed file of another architecture", _load_other_architecture, ArchitectureMismatchError, "fc1.weight", "load"),
    Case("X05", "compressed file larger than read_compressed's memory limit", _read_over_limit, ValueError,
         "more than the limit max_bytes=", "load"),
    Case("X06", "checkpoint that would run code when unpickled, given to the export tool", _unsafe_checkpoint,
         ValueError, "would run code from the file", "load"),
    # -- YAML through the CLI parser
    Case("Y01", "unknown schedule name in YAML",
         lambda tmp: _cli(tmp, PRUNING_YAML.format("final_sparsity: 0.5, schedule: cubik")), ValueError, "schedule must be one of", "parse"),
    Case("Y02", "string where a number belongs in YAML",
         lambda tmp: _cli(tmp, PRUNING_YAML.format("final_sparsity: lots")), SystemExit, 'Parser key "final_sparsity"', "parse"),
    Case("Y03", "misspelled argument in YAML",
         lambda tmp: _cli(tmp, PRUNING_YAML.format("final_sparsty: 0.5")), SystemExit, "'final_sparsty' is not accepted", "parse"),
    Case("Y04", "out-of-range bits in YAML",
         lambda tmp: _cli(tmp, SHARING_YAML.format("bits: 20")), ValueError, "bits must be an int >= 1 and <= 16", "parse"),
    Case("Y05", "schedule mapping with a key that is not a number in YAML",
         lambda tmp: _cli(tmp, PRUNING_YAML.format("schedule: {late: 0.5}")), ValueError, "schedule keys must be numbers", "parse"),
    # -- share_weights (post-training) arguments
    Case("Q01", "share_weights with bits of 0", _t(bits=0), ValueError, "bits must be an int >= 1 and <= 16", "call"),
    Case("Q02", "share_weights with an unknown granularity", _t(bits=4, granularity="row"), ValueError,
         "granularity must be one of", "call"),
    Case("Q03", "share_weights weighting='fisher' without dataloader and loss_fn", _t(bits=4, weighting="fisher"),
         ValueError, "weighting='fisher' needs dataloader and loss_fn", "call"),
    Case("Q04", "share_weights bits='auto' without a budget", _t(bits="auto"), ValueError,
         "bits='auto' needs exactly one budget", "call"),
    Case("Q05", "share_weights bits='auto' with a budget below 2 bits everywhere", _t(bits="auto", target_bits=0.5),
         ValueError, "target_bits=0.5 is below the smallest size", "call"),
]


def _with_nan(model: TinyNet, layer: str, value: float = float("nan")) -> TinyNet:
    with torch.no_grad():
        getattr(model, layer).weight.view(-1)[3] = value
    return model


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rejected_with_a_message_that_names_it(case: Case, checkpoint: Path, tmp_path: Path):
    if case.id.startswith("K"):
        (tmp_path / "good.ckpt").write_bytes(checkpoint.read_bytes())
    with pytest.raises(case.error) as info:
        case.run(tmp_path)
    assert case.excerpt in str(info.value), f"{case.id}: {info.value}"


WARNINGS = [
    ("W01", "weight sharing at or after max_epochs", lambda: [WeightSharing(4, start_epoch=5, evaluate=False)],
     "not before max_epochs=2"),
    ("W02", "pruning schedule ending after max_epochs", lambda: [GradualMagnitudePruning(0.5, start_epoch=1, end_epoch=6)],
     "the final sparsity will not be reached"),
    ("W03", "mid-fit factorization at or after max_epochs", lambda: [LowRankFactorization(rank=4, epoch=3)],
     "epoch=3 is not before max_epochs=2"),
    ("W04", "step-based pruning schedule ending after the fit's last step",
     lambda: [GradualMagnitudePruning(schedule=LinearSchedule(start=0, end=5, unit="step", final_sparsity=0.5))],
     "the final sparsity will not be reached"),
    ("W05", "step-based weight sharing after the fit's last step",
     lambda: [WeightSharing(4, start_step=5, evaluate=False)], "those layers will not be shared in this fit"),
]


@pytest.mark.parametrize("wid, what, make, excerpt", WARNINGS, ids=[w[0] for w in WARNINGS])
def test_events_that_cannot_happen_warn_before_training(wid, what, make, excerpt):
    seen: list[str] = []

    class FirstStep(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not seen:
                seen.extend(str(w.message) for w in record)

    with pytest.warns(UserWarning) as record:
        trainer(make() + [FirstStep()], max_epochs=2, limit_train_batches=1).fit(TinyNet(), data())
    assert any(excerpt in m for m in seen), f"{wid}: no warning before the first step containing {excerpt!r}: {seen}"


def _doc_rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\|\s*([A-Z]\d\d)\s*\|", line)
        if match:
            rows[match[1]] = line
    return rows


def test_catalogue_is_documented():
    rows = _doc_rows()
    for case in CASES:
        assert case.id in rows, f"{case.id} ({case.what}) missing from docs/bad_input.md"
        assert case.error.__name__ in rows[case.id], f"{case.id}: doc names another error type"
        assert case.excerpt.replace("|", "\\|") in rows[case.id], f"{case.id}: doc lacks the message excerpt"
    for wid, what, _make, excerpt in WARNINGS:
        assert wid in rows and excerpt in rows[wid], wid
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
