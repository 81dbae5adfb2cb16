"""LowRankFactorization on real models and real files (issues 11, 13, 14, 17): attention, ties, arguments,
claims, the factorized checkpoint after a post-hoc run, and loading without unpickling."""

from __future__ import annotations

import math
import pickle

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from helpers import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import CompressionConfigError, LowRankFactorization, load_factorized
from lightning_compress.callbacks.factorization import CHECKPOINT_KEY, FACTORIZED_CHECKPOINT
from lightning_compress.core.lowrank import LowRankLinear
from lightning_compress.zoo import LeNet300100, TinyGPT


def tiny_gpt():
    return TinyGPT(context=8, d_model=16, n_heads=2, n_layers=1, lr_scheduler="none")


def lm_loader():
    tokens = torch.randint(0, 256, (16, 9), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)


def blobs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, generator=g)
    return DataLoader(TensorDataset(x, (x @ torch.randn(64, 10, generator=g)).argmax(1)), batch_size=16)


def trainer(callbacks, max_epochs=1, **kw):
    return tiny_trainer(callbacks, max_epochs, **kw)


def test_attention_out_proj_factorized_keeps_attention_exact_at_full_rank():
    attn = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    before = attn(x, x, x, need_weights=False)[0]
    from lightning_compress.core.lowrank import factorize_linear

    attn.out_proj = factorize_linear(attn.out_proj, 8)  # full rank: the same map
    assert torch.allclose(attn.out_proj.weight, attn.out_proj.dense_weight())
    after = attn(x, x, x, need_weights=False)[0]
    assert torch.allclose(before, after, atol=1e-5)
    after.sum().backward()
    assert attn.out_proj.first.weight.grad is not None and attn.out_proj.second.weight.grad is not None


def test_tied_head_is_left_dense_and_stays_tied(caplog):
    model = tiny_gpt()
    with caplog.at_level("INFO"):
        trainer([LowRankFactorization(param_ratio=0.3, verbose=False)]).fit(model, lm_loader(), lm_loader())
    assert model.head.weight is model.tok.weight and isinstance(model.head, nn.Linear)
    assert any("head.weight" in r.getMessage() and "tied" in r.getMessage() for r in caplog.records)
    assert isinstance(model.blocks[0].mlp[0], LowRankLinear)


@pytest.mark.parametrize("kwargs, excerpt", [
    ({"hooi_iters": True}, "hooi_iters must be an int"),
    ({"eval_batches": True}, "eval_batches must be an int"),
    ({"epoch": 1.5}, "epoch must be an int"),
    ({"rank": True}, "rank"),
    ({"energy": {}}, "must not be an empty mapping"),
    ({"verbose": "yes"}, "verbose must be true or false"),
])
def test_bad_arguments_are_config_errors(kwargs, excerpt):
    with pytest.raises(CompressionConfigError, match=excerpt):
        LowRankFactorization(**kwargs)


def test_describe_claims_what_and_when():
    model = LeNet300100(in_features=64, lr_scheduler="none")
    cb = LowRankFactorization(rank=4, epoch=3, exclude="fc3")
    t = trainer([cb], max_epochs=2)
    claim = cb.describe(t, model)
    assert claim.kind == "factorize" and claim.renames_layers and not claim.posthoc
    assert dict(claim.layers) == {"fc1.weight": (3.0, 3.0), "fc2.weight": (3.0, 3.0)}
    t.fit(model, blobs(), blobs())  # ends at epoch 2: epoch 3 is never reached
    claim = cb.describe(t, model)
    assert claim.unfinished and "epoch 3" in claim.unfinished[0]
    post = LowRankFactorization(rank=4, verbose=False, save_checkpoint=False)
    t = trainer([post])
    assert post.describe(t, model).posthoc and math.isinf(post.describe(t, model).layers["fc1.weight"][0])
    t.fit(model, blobs(), blobs())
    claim = post.describe(t, model)
    assert claim.done == frozenset(claim.layers) and {"fc1.weight", "fc2.weight"} <= claim.done and not claim.unfinished


def test_posthoc_run_writes_a_factorized_checkpoint(tmp_path):
    model = LeNet300100(in_features=64, lr_scheduler="none")
    cb = LowRankFactorization(rank=4, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    trainer([cb, ckpt], enable_checkpointing=True).fit(model, blobs(), blobs())
    assert cb.factorized_checkpoint == str(tmp_path / "ckpts" / FACTORIZED_CHECKPOINT)
    stored = torch.load(cb.factorized_checkpoint, weights_only=True)
    assert "fc1.first.weight" in stored["state_dict"] and stored[CHECKPOINT_KEY]
    assert "fc1.weight" in torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)["state_dict"]  # dense
    plain = load_factorized(cb.factorized_checkpoint, LeNet300100(in_features=64)).eval()
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), model.eval()(x))


def test_fast_dev_run_writes_no_factorized_checkpoint(tmp_path):
    cb = LowRankFactorization(rank=4, verbose=False)
    pl.Trainer(fast_dev_run=True, callbacks=[cb, ModelCheckpoint(dirpath=tmp_path)], logger=False,
               enable_progress_bar=False, enable_model_summary=False).fit(
        LeNet300100(in_features=64, lr_scheduler="none"), blobs(), blobs())
    assert cb.done and cb.factorized_checkpoint is None and not list(tmp_path.iterdir())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_factorized_never_unpickles(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    model = LeNet300100(in_features=64)
    torch.save({"state_dict": model.state_dict(), "payload": _Evil(str(marker))}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CompressionConfigError, match="was not unpickled.*weights_only=False"):
        load_factorized(str(path), LeNet300100(in_features=64))
    assert not marker.exists()
    # what the message says to do works: the caller loads a trusted file and passes the checkpoint
    loaded = {"state_dict": model.state_dict()}
    assert load_factorized(loaded, LeNet300100(in_features=64)) is not None
