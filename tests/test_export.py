"""The compressed file: exact size report, bit-exact reload, every error, CLI and callback."""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest
import torch
from torch import nn

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import tiny_trainer

from lightning_compress.export import (
    FORMAT_VERSION,
    MAGIC,
    ArchitectureMismatchError,
    CompressedFileError,
    CorruptedFileError,
    NotCompressedFileError,
    TruncatedFileError,
    UnsupportedVersionError,
    decode_file,
    encode_state_dict,
    load_compressed,
    log_report,
    main,
    read_compressed,
    save_compressed,
)
from lightning_compress.zoo.models import LeNet5, LeNet300100

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bit_view(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous().reshape(-1)
    return t.view(INT_VIEW[t.element_size()]) if t.dtype.is_floating_point else t


def compress_like_the_paper(model: nn.Module, keep: list[float], clusters: int, seed: int = 0) -> nn.Module:
    """Magnitude-prune each weight to ``keep`` and snap survivors to ``clusters`` linear centroids."""
    torch.manual_seed(seed)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    with torch.no_grad():
        for p, frac in zip(weights, keep):
            k = max(1, int(frac * p.numel()))
            idx = p.abs().flatten().topk(k).indices
            mask = torch.zeros(p.numel(), dtype=torch.bool)
            mask[idx] = True
            vals = p.flatten()[mask]
            centroids = torch.linspace(float(vals.min()), float(vals.max()), clusters)
            snapped = centroids[(vals[:, None] - centroids).abs().argmin(1)]
            flat = torch.zeros(p.numel())
            flat[mask] = snapped
            p.copy_(flat.view_as(p))
    return model


@pytest.fixture(scope="module")
def lenet300():
    torch.manual_seed(0)  # deterministic initial weights, so the size assertions below are reproducible
    return compress_like_the_paper(LeNet300100(), [0.08, 0.09, 0.26], clusters=64)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        assert torch.equal(bit_view(sa[k]), bit_view(sb[k])), k


def test_round_trip_and_report_is_the_file_size(tmp_path, lenet300):
    path = tmp_path / "lenet.lcz"
    assert save_compressed(lenet300, path).gzip_bytes is None  # the gzip comparison is opt-in (issue 16)
    report = save_compressed(lenet300, path, compare_gzip=True)
    size = os.path.getsize(path)
    assert report.file_bytes == size
    assert report.header_bytes + report.layer_bytes + report.raw_bytes == size
    assert [l.name for l in report.layers] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert [r.name for r in report.raw] == ["fc1.bias", "fc2.bias", "fc3.bias"]
    assert report.dense_bytes == 4 * (266_200 + 410)
    assert report.nonzeros == 18_816 + 2_700 + 260
    assert all(l.codec.startswith("sparse") and "codebook" in l.codec for l in report.layers)
    assert report.ratio > 30  # pruning ~12x and 6-bit sharing; Huffman on top
    assert report.gzip_bytes and report.file_bytes < 0.6 * report.gzip_bytes
    assert report.entropy_bound_bytes <= report.file_bytes < 1.05 * report.entropy_bound_bytes
    table = report.table()
    assert f"**{size:,}**" in table and "fc1.weight" in table and "header" in table
    d = json.loads(json.dumps(report.as_dict()))
    assert d["file_bytes"] == size and len(d["layers"]) == 3 and d["layers"][0]["index_bits"] > 0

    fresh = LeNet300100()
    assert load_compressed(path, fresh) is fresh
    assert_same_state(lenet300, fresh)


class WithBuffers(nn.Module):
    """Conv + BatchNorm (int64 counter, running stats) + bf16 and fp16 layers + a plain buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fp16 = nn.Linear(8, 4).to(torch.float16)
        self.bf16 = nn.Linear(4, 2).to(torch.bfloat16)
        self.register_buffer("table", torch.arange(10, dtype=torch.int64))
        self.register_buffer("flags", torch.tensor([True, False]))


def test_buffers_and_mixed_dtypes_round_trip(tmp_path):
    torch.manual_seed(0)
    m = WithBuffers()
    m.bn.train()(torch.randn(4, 8, 5, 5))  # moves running stats and the counter
    with torch.no_grad():
        m.conv.weight[:4] = 0.0
        m.fp16.weight[0, 0] = float("nan")
    path = tmp_path / "m.lcz"
    report = save_compressed(m, path, compare_gzip=False)
    assert {l.name for l in report.layers} == {"conv.weight", "fp16.weight", "bf16.weight"}
    assert "bn.num_batches_tracked" in {r.name for r in report.raw}
    assert report.file_bytes == os.path.getsize(path)
    fresh = WithBuffers()
    load_compressed(path, fresh)
    assert_same_state(m, fresh)
    assert int(fresh.bn.num_batches_tracked) == 1


def test_negative_zero_is_documented_and_optional(tmp_path):
    m = nn.Linear(20, 20)
    with torch.no_grad():
        m.weight.mul_(m.weight > 0.3)  # negative pruned weights become -0.0
    assert (m.weight.view(torch.int32) == torch.iinfo(torch.int32).min).any()
    default = save_compressed(m, tmp_path / "a.lcz", compare_gzip=False)
    exact = save_compressed(m, tmp_path / "b.lcz", keep_negative_zero=True, compare_gzip=False)
    assert default.file_bytes < exact.file_bytes
    assert any("-0.0" in n for n in default.notes)
    a, b = read_compressed(tmp_path / "a.lcz"), read_compressed(tmp_path / "b.lcz")
    assert torch.equal(a["weight"], m.weight)  # equal values (-0.0 == +0.0)
    assert not (a["weight"].view(torch.int32) == torch.iinfo(torch.int32).min).any()
    assert torch.equal(bit_view(b["weight"]), bit_view(m.weight))


def test_include_exclude(tmp_path, lenet300):
    report = save_compressed(lenet300, tmp_path / "x.lcz", exclude="fc3", compare_gzip=False)
    assert [l.name for l in report.layers] == ["fc1.weight", "fc2.weight"]
    assert "fc3.weight" in {r.name for r in report.raw}
    with pytest.raises(ValueError, match="matches no eligible layer"):
        save_compressed(lenet300, tmp_path / "y.lcz", include="conv*")
    fresh = LeNet300100()
    load_compressed(tmp_path / "x.lcz", fresh)
    assert_same_state(lenet300, fresh)


def test_factorized_model_reloads_into_the_dense_architecture(tmp_path, lenet300):
    from lightning_compress.core.lowrank import factorize_linear, replace_module

    model = LeNet300100()
    model.load_state_dict(lenet300.state_dict())
    replace_module(model, "fc1", factorize_linear(model.fc1, rank=20))
    path = tmp_path / "factorized.lcz"
    report = save_compressed(model, path, compare_gzip=False)
    assert {"fc1.first.weight", "fc1.second.weight"} <= {l.name for l in report.layers}
    fresh = LeNet300100()
    load_compressed(path, fresh)
    assert_same_state(model, fresh)
    with pytest.raises(ArchitectureMismatchError):
        load_compressed(path, LeNet300100(), rebuild_factorized=False)


@st.composite
def state_dicts(draw):
    n = draw(st.integers(0, 5))
    sd, compress = {}, []
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    for i in range(n):
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool]))
        shape = tuple(draw(st.lists(st.integers(0, 12), max_size=3)))
        t = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.1, 1.0])))
        if draw(st.booleans()):
            t = torch.round(t * 2) / 2  # few distinct values, as after weight sharing
        name = f"layer{i}.weight"
        sd[name] = t.to(dtype)
        if draw(st.booleans()):
            compress.append(name)
    return sd, compress


@settings(max_examples=60, deadline=None)
@given(state_dicts())
def test_file_round_trip_property(case):
    sd, compress = case
    data, report = encode_state_dict(sd, compress, keep_negative_zero=True)
    assert report.file_bytes == len(data) == report.header_bytes + report.layer_bytes + report.raw_bytes
    back = decode_file(data)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert torch.equal(bit_view(back[k]), bit_view(v)), k


# ---- errors -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        m[0].weight.mul_(m[0].weight.abs() > 0.15)
    path = tmp_path_factory.mktemp("small") / "small.lcz"
    save_compressed(m, path, compare_gzip=False)
    return m, path.read_bytes()


def write(tmp_path, data: bytes):
    p = tmp_path / "f.lcz"
    p.write_bytes(data)
    return p


def test_every_truncation_is_detected(tmp_path, small_file):
    model, data = small_file
    for cut in range(len(data)):
        p = write(tmp_path, data[:cut])
        with pytest.raises(TruncatedFileError):
            read_compressed(p)


def test_every_single_byte_flip_is_detected(tmp_path, small_file):
    model, data = small_file
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            p = write(tmp_path, bytes(bad))
            with pytest.raises(CompressedFileError):
                read_compressed(p)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x10
    with pytest.raises(CorruptedFileError, match="checksum"):
        load_compressed(write(tmp_path, bytes(bad)), model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_trailing_bytes_and_not_a_file(tmp_path, small_file):
    _, data = small_file
    with pytest.raises(CorruptedFileError, match="unexpected bytes"):
        read_compressed(write(tmp_path, data + b"\x00"))
    with pytest.raises(NotCompressedFileError):
        read_compressed(write(tmp_path, b"PK\x03\x04 a zip file, not ours"))
    torch.save({"w": torch.zeros(3)}, tmp_path / "t.pt")
    with pytest.raises(NotCompressedFileError):
        read_compressed(tmp_path / "t.pt")


def with_version(data: bytes, version: int) -> bytes:
    body = bytearray(data[:-4])
    body[len(MAGIC)] = version
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def test_newer_format_version_is_refused(tmp_path, small_file):
    _, data = small_file
    with pytest.raises(UnsupportedVersionError, match=f"version {FORMAT_VERSION + 1} is newer"):
        read_compressed(write(tmp_path, with_version(data, FORMAT_VERSION + 1)))
    with pytest.raises(UnsupportedVersionError):
        read_compressed(write(tmp_path, with_version(data, 0)))
    assert read_compressed(write(tmp_path, with_version(data, FORMAT_VERSION)))  # control: the rewrite is valid


def test_wrong_architecture(tmp_path, lenet300):
    path = tmp_path / "lenet.lcz"
    save_compressed(lenet300, path, compare_gzip=False)
    with pytest.raises(ArchitectureMismatchError, match="missing in the file.*conv1.weight"):
        load_compressed(path, LeNet5())
    narrow = LeNet300100(in_features=100)
    before = narrow.fc1.weight.detach().clone()
    with pytest.raises(ArchitectureMismatchError, match=r"fc1.weight: shape \(300, 784\) in the file, \(300, 100\)"):
        load_compressed(path, narrow)
    assert torch.equal(narrow.fc1.weight, before)
    with pytest.raises(ArchitectureMismatchError, match="dtype torch.float32 in the file, torch.float64"):
        load_compressed(path, LeNet300100().double())


# ---- TensorBoard, CLI, callback -----------------------------------------------------------------------


class FakeWriter:
    def __init__(self) -> None:
        self.text, self.scalars = {}, {}

    def add_text(self, tag, text, global_step=None):
        self.text[tag] = text

    def add_scalar(self, tag, value, global_step=None):
        self.scalars[tag] = value


def test_log_report(tmp_path, lenet300):
    report = save_compressed(lenet300, tmp_path / "x.lcz", compare_gzip=True)
    w = FakeWriter()
    log_report(report, w, step=3)
    assert w.text["compress/export"] == report.table()
    assert w.scalars["compress/file_bytes"] == report.file_bytes
    assert w.scalars["compress/ratio"] == pytest.approx(report.ratio)
    assert w.scalars["compress/gzip_bytes"] == report.gzip_bytes


def tiny_fit(model, tmp_path, callbacks=(), logger=False):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
    trainer = tiny_trainer(callbacks, max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=logger,
                           default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(data, batch_size=16))
    return trainer


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = compress_like_the_paper(LeNet300100(lr=0.01), [0.1, 0.1, 0.3], clusters=16)
    trainer = tiny_fit(model, tmp_path)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    out, js = tmp_path / "model.lcz", tmp_path / "report.json"
    assert main(["LeNet300100", str(ckpt), "-o", str(out), "--json", str(js), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and "fc1.weight" in printed
    report = json.loads(js.read_text())
    assert report["file_bytes"] == os.path.getsize(out)
    fresh = LeNet300100()
    load_compressed(out, fresh)
    assert_same_state(model, fresh)
    # full class path works too; a bad name is a clean error
    assert main(["lightning_compress.zoo.models.LeNet300100", str(ckpt), "-o", str(tmp_path / "b.lcz"), "--no-gzip"]) == 0
    assert main(["NoSuchNet", str(ckpt)]) == 2
    assert main(["LeNet5", str(ckpt), "-o", str(tmp_path / "c.lcz"), "--no-gzip"]) == 2  # wrong class for the ckpt
    assert "error" in capsys.readouterr().err


def test_export_callback_writes_file_and_logs(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_compress.callbacks.export import ExportCompressed

    with pytest.raises(ValueError, match="path"):
        ExportCompressed("")
    path = tmp_path / "out" / "final.lcz"
    cb = ExportCompressed(path, compare_gzip=False)
    logger = TensorBoardLogger(tmp_path, name="tb")
    model = LeNet300100(lr=0.01)
    tiny_fit(model, tmp_path, callbacks=[cb], logger=logger)
    assert cb.report is not None and cb.report.file_bytes == os.path.getsize(path)
    fresh = LeNet300100()
    load_compressed(path, fresh)
    assert_same_state(model, fresh)
    acc = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert acc.Scalars("compress/file_bytes")[-1].value == cb.report.file_bytes
    assert acc.Scalars("compress/ratio")[-1].value == pytest.approx(cb.report.ratio, rel=1e-5)
    assert any(t.startswith("compress/export") for t in acc.Tags()["tensors"])


DDP_SCRIPT = """
import torch, lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset
from lightning_compress.callbacks.export import ExportCompressed
from lightning_compress.zoo.models import LeNet300100

torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
x, y = torch.randn(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g)
cb = ExportCompressed("out/model.lcz", compare_gzip=False)
model = LeNet300100(in_features=64, lr=0.05, lr_scheduler="none")
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, callbacks=[cb], logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=16))
torch.save({"state": model.state_dict(), "has_report": cb.report is not None}, f"rank{trainer.global_rank}.pt")
"""


@pytest.mark.slow
def test_export_callback_under_ddp_writes_once_from_rank_zero(run_script, tmp_path):
    run_script(DDP_SCRIPT, timeout=240)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["has_report"] and not r1["has_report"]
    stored = read_compressed(tmp_path / "out" / "model.lcz")
    for k, v in r0["state"].items():
        assert torch.equal(bit_view(stored[k]), bit_view(v)), k
        assert torch.equal(v, r1["state"][k]), k
