"""TextDataModule on small text files the tests write; TinyGPT and ResNet shapes, ties and a few steps."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_compress.errors import CompressionConfigError
from lightning_compress.zoo import DatasetNotFoundError, ResNet, TextDataModule, TinyGPT
from lightning_compress.zoo.registry import MODELS, resolve_model_class
from lightning_compress.zoo.text import split_documents

DOCS = [f"fortune number {i}: {'abc' * (i % 5 + 1)} the end." for i in range(40)]


def write_corpus(tmp_path, docs=DOCS):
    folder = tmp_path / "fortunes"
    folder.mkdir()
    half = len(docs) // 2
    (folder / "one").write_text("\n%\n".join(docs[:half]) + "\n%\n")
    (folder / "two").write_text("\n%\n".join(docs[half:]))
    (folder / "one.dat").write_bytes(b"\x00\x01binary index")  # strfile index: skipped
    return folder


def test_split_documents_on_percent_lines():
    assert split_documents("a\nb\n%\nc\n%\n\n%\nd", "%") == ["a\nb", "c", "d"]
    assert split_documents("whole\nfile", None) == ["whole\nfile"]


def test_split_is_by_document_seeded_and_disjoint(tmp_path):
    folder = write_corpus(tmp_path)
    dm = TextDataModule([str(folder)], val_fraction=0.1, test_fraction=0.1, seed=3)
    parts = dm.split()
    assert (len(parts["val"]), len(parts["test"]), len(parts["train"])) == (4, 4, 32)
    assert sorted(parts["val"] + parts["test"] + parts["train"]) == sorted(DOCS)
    assert parts == TextDataModule([str(folder)], val_fraction=0.1, test_fraction=0.1, seed=3).split()
    assert parts != TextDataModule([str(folder)], val_fraction=0.1, test_fraction=0.1, seed=4).split()


@pytest.mark.parametrize("level", ["byte", "char"])
def test_batches_are_next_token_windows(tmp_path, level):
    dm = TextDataModule([str(write_corpus(tmp_path))], level=level, context=16, batch_size=4)
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[0, 1:], y[0, :-1])
    text = "\n".join(dm.split()["val"]) + "\n"
    assert dm.decode(x[0]) == text[:16]
    assert int(x.max()) < dm.vocab_size
    if level == "char":
        assert dm.vocab[0] == "\0" and dm.vocab_size == len(set("".join(dm.split()["train"]) + "\n")) + 1


def test_missing_corpus_and_bad_arguments(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no text files"):
        TextDataModule([str(tmp_path / "nowhere")]).setup("fit")
    with pytest.raises(CompressionConfigError, match="level must be one of"):
        TextDataModule(level="word")
    with pytest.raises(CompressionConfigError, match="context must be an int"):
        TextDataModule(context=0)
    with pytest.raises(CompressionConfigError, match="val_fraction \\+ test_fraction"):
        TextDataModule(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(CompressionConfigError, match="d_model .* divisible by n_heads"):
        TinyGPT(d_model=30, n_heads=4)


def test_zoo_names_resolve():
    assert {"TinyGPT", "ResNet"} <= set(MODELS)
    assert resolve_model_class("TinyGPT") is TinyGPT and resolve_model_class("ResNet") is ResNet


def test_tinygpt_ties_head_to_embedding_and_is_causal():
    model = TinyGPT(context=8, d_model=16, n_heads=2, n_layers=1).eval()
    assert model.head.weight is model.tok.weight
    x = torch.randint(0, 256, (2, 8))
    y = x.clone()
    y[:, 5:] = torch.randint(0, 256, (2, 3))
    with torch.no_grad():
        a, b = model(x), model(y)
    assert a.shape == (2, 8, 256)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)  # later tokens never change earlier logits
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_tinygpt_learns_a_little_on_text(tmp_path):
    pl.seed_everything(0)
    dm = TextDataModule([str(write_corpus(tmp_path))], context=16, batch_size=8)
    model = TinyGPT(context=16, d_model=32, n_heads=2, n_layers=1, lr=1e-2, lr_scheduler="none")
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, dm)
    assert float(trainer.callback_metrics["val_loss"]) < 3.5  # ln(256) = 5.55 at the start


def test_resnet_has_batchnorm_residuals_and_a_depthwise_conv():
    model = ResNet()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(c.groups == c.in_channels > 1 for c in convs)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(CompressionConfigError, match="width"):
        ResNet(width=0)
