"""Checkpoints and files are data: no code runs, meta models are materialised, export targets are checked early,
factorized checkpoints export, and grouped codebooks (format version 2) are counted byte for byte."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from helpers import tiny_trainer

from lightning_compress.core.lowrank import FactorizedLayer, apply_factorization_plan, factorize_linear
from lightning_compress.errors import CompressionConfigError
from lightning_compress.export import (
    CompressedFileError,
    NotCompressedFileError,
    UnsafeCheckpointError,
    encode_state_dict,
    load_compressed,
    read_compressed,
    save_compressed,
)
from lightning_compress.export_cli import load_checkpoint, main
from lightning_compress.zoo.models import LeNet300100


class Evil:
    """Unpickling this writes a marker file: what a crafted checkpoint does to a reader that unpickles."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoint_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": LeNet300100().state_dict(), "hyper_parameters": {"x": Evil(str(marker))}}, ckpt)
    assert main(["LeNet300100", str(ckpt), "-o", str(tmp_path / "out.lcz")]) == 2
    assert "weights_only=False" in capsys.readouterr().err  # says what to do if the file is trusted
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(str(ckpt))
    with pytest.raises(NotCompressedFileError):
        load_compressed(ckpt, LeNet300100())
    with pytest.raises(NotCompressedFileError):
        read_compressed(ckpt)
    assert not marker.exists() and not (tmp_path / "out.lcz").exists()


def test_meta_device_model_is_materialised_with_the_files_weights(tmp_path):
    torch.manual_seed(0)
    model = LeNet300100()
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.03] = 0
    save_compressed(model, tmp_path / "m.lcz")
    with torch.device("meta"):
        empty = LeNet300100()
    assert empty.fc1.weight.is_meta
    load_compressed(tmp_path / "m.lcz", empty)
    assert not any(t.is_meta for t in empty.state_dict().values())
    for k, v in model.state_dict().items():
        assert torch.equal(empty.state_dict()[k], v), k
    assert isinstance(empty.fc1.weight, nn.Parameter) and empty.fc1.weight.requires_grad


def test_meta_model_with_unsaved_meta_buffers_is_refused(tmp_path):
    class WithScratch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

    save_compressed(WithScratch(), tmp_path / "s.lcz")
    with torch.device("meta"):
        m = WithScratch()
    with pytest.raises(CompressedFileError, match="scratch"):
        load_compressed(tmp_path / "s.lcz", m)


def test_export_callback_checks_its_target_before_training(tmp_path, monkeypatch):
    from lightning_compress.callbacks.export import ExportCompressed

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CompressionConfigError, match="is a file, not a folder"):
        ExportCompressed(tmp_path / "a_file" / "sub" / "m.lcz")
    with pytest.raises(CompressionConfigError, match="NUL"):
        ExportCompressed(str(tmp_path / "m\0.lcz"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ExportCompressed("~/runs/m.lcz").path == str(tmp_path / "runs" / "m.lcz")


def _fit(tmp_path, callbacks, **trainer_args):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 784, generator=g), torch.randint(0, 10, (32,), generator=g)),
                      batch_size=16)
    trainer = tiny_trainer(callbacks, **{"max_epochs": 1, "default_root_dir": tmp_path, **trainer_args})
    model = LeNet300100(lr=0.01)
    trainer.fit(model, data)
    return model


class Unfinished:
    """A compression callback whose schedule did not complete (the claim is all the export reads)."""

    def __init__(self, layers=("fc1.weight",)):
        from lightning.pytorch.callbacks import Callback  # noqa: F401  (registered through describe only)

        self.layers = layers

    def describe(self, trainer, pl_module):
        from lightning_compress.callbacks._claims import Claim

        return Claim(owner="GradualMagnitudePruning", kind="prune", unit="epoch",
                     layers={n: (0.0, 5.0) for n in self.layers},
                     unfinished=("fc1.weight: 43.8% sparse, 50% asked",))


def _with_claim(cb_list, claim_cb):
    from lightning.pytorch.callbacks import Callback

    class Claiming(Callback):
        describe = claim_cb.describe

    return [*cb_list, Claiming()]


def test_unfinished_compression_is_recorded_or_refused(tmp_path):
    from lightning_compress.callbacks.export import ExportCompressed

    cb = ExportCompressed(tmp_path / "m.lcz")
    _fit(tmp_path, _with_claim([cb], Unfinished()))
    assert cb.report.unfinished == ["GradualMagnitudePruning: fc1.weight: 43.8% sparse, 50% asked"]
    assert "UNFINISHED: GradualMagnitudePruning" in cb.report.table()
    strict = ExportCompressed(tmp_path / "strict.lcz", require_complete=True)
    with pytest.raises(CompressionConfigError, match="require_complete=True.*43.8% sparse"):
        _fit(tmp_path, _with_claim([strict], Unfinished()))
    assert not (tmp_path / "strict.lcz").exists()


def test_fast_dev_run_never_writes_or_overwrites_an_export(tmp_path):
    from lightning_compress.callbacks.export import ExportCompressed

    path = tmp_path / "m.lcz"
    path.write_bytes(b"earlier export")
    _fit(tmp_path, [ExportCompressed(path)], fast_dev_run=True)
    assert path.read_bytes() == b"earlier export"


class Scale(nn.Module):
    """A user's own layer type: a 2-D ``weight`` that no default selection knows."""

    def __init__(self, n: int, m: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, m))


class WithCustomLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.custom = Scale(50, 16)
        self.fc = nn.Linear(16, 4)


def test_export_compresses_claimed_and_included_weights_of_any_layer(tmp_path):
    torch.manual_seed(0)
    m = WithCustomLayer()
    with torch.no_grad():
        m.custom.weight.copy_(torch.where(m.custom.weight.abs() > 1.0, torch.sign(m.custom.weight), 0.0))
    default = save_compressed(m, tmp_path / "a.lcz")
    assert [l.name for l in default.layers] == ["fc.weight"]  # the default selection: known layer types
    claimed = save_compressed(m, tmp_path / "b.lcz", also=["custom.weight"])
    included = save_compressed(m, tmp_path / "c.lcz", include=["custom", "fc"])
    for report in (claimed, included):
        assert [l.name for l in report.layers] == ["custom.weight", "fc.weight"]
        assert report.file_bytes < default.file_bytes
    fresh = WithCustomLayer()
    load_compressed(tmp_path / "b.lcz", fresh)
    assert torch.equal(fresh.custom.weight, m.custom.weight)


def test_default_selection_follows_the_callbacks_targets():
    """An Embedding is compressed by default exactly when ``find_targets`` selects it (the same code)."""
    from lightning_compress.core.targets import find_targets

    m = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 2))
    report = save_compressed(m, _tmp_file())
    assert [l.name for l in report.layers] == [t.name for t in find_targets(m)]


def _tmp_file() -> str:
    import tempfile

    return os.path.join(tempfile.mkdtemp(), "m.lcz")


def test_cli_exports_a_checkpoint_written_after_midfit_factorization(tmp_path, capsys):
    torch.manual_seed(0)
    model = LeNet300100()
    record = FactorizedLayer("fc1", "svd", (20,), float("nan"), 300 * 784, 20 * (300 + 784))
    model.fc1 = factorize_linear(model.fc1, 20)
    ckpt = tmp_path / "fact.ckpt"
    torch.save({"state_dict": model.state_dict(), "lowrank_factorization": [record.as_dict()],
                "hyper_parameters": {}}, ckpt)
    assert main(["LeNet300100", str(ckpt), "-o", str(tmp_path / "f.lcz"), "--verify"]) == 0
    assert "rebuilt 1 factorized layer" in capsys.readouterr().out
    dense = LeNet300100()
    load_compressed(tmp_path / "f.lcz", dense)
    assert torch.equal(dense.fc1.first.weight, model.fc1.first.weight)
    bare = tmp_path / "bare.pt"  # a bare state_dict: the plan comes from the keys
    torch.save(model.state_dict(), bare)
    assert main(["LeNet300100", str(bare), "-o", str(tmp_path / "g.lcz")]) == 0


def test_cli_says_a_checkpoint_saved_before_posthoc_factorization_holds_dense_weights(tmp_path, capsys):
    ckpt = tmp_path / "dense.ckpt"
    torch.save({"state_dict": LeNet300100().state_dict(), "callbacks": {"LowRankFactorization{'energy': 0.9}": {}}},
               ckpt)
    assert main(["LeNet300100", str(ckpt), "-o", str(tmp_path / "d.lcz")]) == 0
    out = capsys.readouterr().out
    assert "holds the DENSE weights" in out and "ExportCompressed" in out


def per_row_codebooks(rows: int = 64, cols: int = 256, k: int = 8, sparsity: float = 0.5) -> torch.Tensor:
    """Each row holds at most ``k`` distinct non-zero values of its own (per-channel weight sharing)."""
    g = torch.Generator().manual_seed(0)
    books = torch.randn(rows, k, generator=g)
    idx = torch.randint(0, k, (rows, cols), generator=g)
    w = torch.gather(books, 1, idx)
    return torch.where(torch.rand(rows, cols, generator=g) < sparsity, torch.zeros(()), w)


@pytest.mark.parametrize("groups", ["auto", 1, 4])
def test_grouped_codebooks_are_version_2_smaller_and_exact(tmp_path, groups):
    w = per_row_codebooks()
    v1, r1 = encode_state_dict({"w": w}, ["w"])
    v2, r2 = encode_state_dict({"w": w}, ["w"], groups={"w": groups})
    assert v1[4] == 1 and v2[4] == 2 and r2.format_version == 2
    assert len(v2) < len(v1) and r2.file_bytes == len(v2)
    assert r2.header_bytes + r2.layer_bytes + r2.raw_bytes == len(v2)  # every codebook byte is in the layer
    layer = r2.layers[0]
    assert "64x codebook" in layer.codec or "16x codebook" in layer.codec
    (tmp_path / "g.lcz").write_bytes(v2)
    assert torch.equal(read_compressed(tmp_path / "g.lcz")["w"], w)


def test_grouping_that_does_not_pay_keeps_version_1(tmp_path):
    w = torch.randn(32, 32).round()  # few values shared by every row: one codebook is best
    data, report = encode_state_dict({"w": w}, ["w"], groups={"w": "auto"})
    assert data[4] == 1 and report.format_version == 1
    assert data == encode_state_dict({"w": w}, ["w"])[0]


def test_save_path_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    report = save_compressed(nn.Linear(3, 2), "~/x.lcz")
    assert report.path == str(tmp_path / "x.lcz") and os.path.exists(tmp_path / "x.lcz")


def test_auto_detects_the_fewest_groups_that_fit():
    from lightning_compress.format.grouped import detect_rows_per_group

    per_row = per_row_codebooks()
    assert detect_rows_per_group(per_row) == 1
    books = torch.randn(16, 8)  # 16 groups of 4 rows, 8 values each
    w = torch.gather(books.repeat_interleave(4, dim=0), 1, torch.randint(0, 8, (64, 100)))
    assert detect_rows_per_group(w) == 4
    assert detect_rows_per_group((torch.arange(64.0).reshape(8, 8) % 4) + 1) is None  # every row: the same 4
    data, report = encode_state_dict({"w": w}, ["w"], groups={"w": "auto"})
    assert data[4] == 2 and report.layers[0].codec.startswith("dense/16x codebook")
