"""Pruning + weight sharing + monitor + export under FSDP2 (ModelParallelStrategy, 2 CPU processes, gloo).

One fit of ``tests/fsdp_fit.py`` (pruning of fc1/fc2 to 75% over epochs 0-0.5, sharing of fc1/fc3 at 3 bits from
epoch 1) under FSDP2, the same fit under DDP (same seed, same data order: each rank gets the same batches),
and the FSDP2 fit killed with ``SIGKILL`` mid-epoch 2 and resumed from ``last.ckpt``.

The same fits pin what Lightning's ModelParallelStrategy does to a callback (the sharded support rests on it; if
a Lightning or torch upgrade changes one of these, ``test_lightning_*`` says which):

* ``setup`` sees plain ``Parameter``s (``configure_model`` runs after it); from ``on_fit_start`` on, every
  parameter, optimizer parameter and gradient is a ``DTensor`` placed ``Shard(0)``, 17 + 16 rows of a 33-row
  layer on two ranks; optimizer step post-hooks fire on them;
* on resume, ``on_fit_start`` runs **before** ``load_state_dict`` (the strategy restores after setup), and
  restoring the optimizer runs one extra optimizer step with ``lr=0`` and zero gradients (torch's
  ``_init_optim_state``), which post-hooks see;
* the callbacks' state is written by rank 0 only (``meta.pt`` beside the ``.distcp`` shards) and every rank gets
  rank 0's state back, tensors included: state must be whole-layer, never one rank's part.

Stated tolerance of FSDP2 vs DDP: masks and assignments equal; weights and centroids within 1e-6 (cluster means
and centroid gradients are summed over the ranks' parts, in another order than one sum over the layer). On
these CPUs the pruning-only part is bit-identical.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_fit as FF  # noqa: E402

from lightning_compress import load_compressed  # noqa: E402
from lightning_compress.core.sharing import SharedWeight  # noqa: E402

pytestmark = pytest.mark.slow
EPOCHS = 3
#: the callbacks of fsdp_fit.compression_callbacks in these fits
CALLBACKS = ("pruning", "sharing", "monitor", "export")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("FSDP_FIT_ONLY", ",".join(CALLBACKS))
    root = tmp_path_factory.mktemp("fsdp_pipeline")
    if os.environ.get("FSDP_PIPELINE_DIR"):  # reuse finished fits while working on the assertions
        return Path(os.environ["FSDP_PIPELINE_DIR"])
    for name, args in {"fsdp2": [], "ddp": ["--strategy", "ddp"], "killed": ["--kill-at", "2.2"]}.items():
        (root / name).mkdir()
        if name == "killed":
            with pytest.raises(AssertionError, match="exited -9"):
                FF.run(root / name, "--compress", "layer", "--epochs", str(EPOCHS), *args)
            FF.run(root / name, "--compress", "layer", "--epochs", str(EPOCHS), "--resume")
        else:
            FF.run(root / name, "--compress", "layer", "--epochs", str(EPOCHS), *args)
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _load(path):
    return torch.load(path, weights_only=False)


def test_targets_reached_and_ranks_agree(runs):
    r0, r1 = _load(runs / "fsdp2" / "final_rank0.pt"), _load(runs / "fsdp2" / "final_rank1.pt")
    assert r0["strategy"] == "ModelParallelStrategy" and r0["world_size"] == 2
    for part in ("masks", "weights"):
        assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part]), part
    for name in FF.PRUNED if "pruning" in CALLBACKS else ():
        w = r0["weights"][name]
        assert int((w == 0).sum()) == round(FF.SPARSITY * w.numel()), name
        assert torch.equal(r0["masks"][name], w != 0)
    for name in FF.SHARED:
        w, book = r0["weights"][name], r0["codebooks"][name]
        assert torch.unique(w[w != 0]).numel() <= 2 ** FF.BITS
        assert torch.equal(book["centroids"], r1["codebooks"][name]["centroids"])  # every rank one codebook
        assert torch.equal(SharedWeight(book["centroids"], book["assignment"]).decode(), w)  # W = C[assignment]


def test_export_reloads_into_the_plain_model_and_equals_the_unsharded_file(runs):
    from lightning_compress.export import save_compressed

    final = _load(runs / "fsdp2" / "final_rank0.pt")
    model = load_compressed(runs / "fsdp2" / "model.lcz", FF.ShardedNet())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in final["weights"].items())
    plain = FF.ShardedNet()
    plain.load_state_dict(final["weights"])
    save_compressed(plain, runs / "plain.lcz", compare_gzip=False)
    assert (runs / "plain.lcz").read_bytes() == (runs / "fsdp2" / "model.lcz").read_bytes()


def test_matches_the_same_fit_under_ddp(runs):
    for epoch in range(EPOCHS):
        a, b = _load(runs / "fsdp2" / f"epoch{epoch}_rank0.pt"), _load(runs / "ddp" / f"epoch{epoch}_rank0.pt")
        assert a["masks"].keys() == b["masks"].keys() and all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
        assert a["codebooks"].keys() == b["codebooks"].keys()
        for name in a["codebooks"]:
            assert torch.equal(a["codebooks"][name]["assignment"], b["codebooks"][name]["assignment"])
            assert torch.allclose(a["codebooks"][name]["centroids"], b["codebooks"][name]["centroids"], atol=1e-6, rtol=0)
        diff = max(float((a["weights"][k] - b["weights"][k]).abs().max()) for k in a["weights"])
        assert diff <= 1e-6, (epoch, diff)


def test_killed_and_resumed_run_ends_identical_to_the_uninterrupted_one(runs):
    a, b = _load(runs / "fsdp2" / "final_rank0.pt"), _load(runs / "killed" / "final_rank0.pt")
    for part in ("masks", "weights"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    for name in a["codebooks"]:
        for key in ("centroids", "assignment"):
            assert torch.equal(a["codebooks"][name][key], b["codebooks"][name][key])
    # before its first step, each resumed rank held exactly the checkpoint's (epoch 1's) state
    for rank in (0, 1):
        x, y = _load(runs / "fsdp2" / f"epoch1_rank{rank}.pt"), _load(runs / "killed" / f"start_rank{rank}.pt")
        for part in ("masks", "weights", "codebooks"):
            assert x[part].keys() == y[part].keys(), part
        assert all(torch.equal(x["weights"][k], y["weights"][k]) for k in x["weights"])
        assert all(torch.equal(x["masks"][k], y["masks"][k]) for k in x["masks"])
        for name in x["codebooks"]:
            assert all(torch.equal(x["codebooks"][name][key], y["codebooks"][name][key]) for key in x["codebooks"][name])
        assert x["codebooks"] or x["masks"]  # there was something to restore
    assert (runs / "fsdp2" / "model.lcz").read_bytes() == (runs / "killed" / "model.lcz").read_bytes()


# ------------------------------------------------------------------ what Lightning's ModelParallelStrategy does
def test_lightning_parameters_and_gradients_are_dim0_shards(runs):
    for rank, rows in ((0, 17), (1, 16)):
        facts = _load(runs / "fsdp2" / f"final_rank{rank}.pt")["probe"]["facts"]
        assert facts["setup_weight_type"] == "Parameter"
        assert (facts["fit_weight_type"], facts["placements"], facts["shape"]) == ("DTensor", ["S(0)"], (33, 16))
        assert facts["local_shape"] == facts["grad_local_shape"] == (rows, 16)
        assert (facts["grad_type"], facts["grad_placements"]) == ("DTensor", ["S(0)"])
        assert facts["optimizer_param_types"] == ["DTensor"]


def test_lightning_post_step_hooks_fire_and_restore_adds_one_zero_lr_step(runs):
    for rank in (0, 1):
        assert _load(runs / "fsdp2" / f"final_rank{rank}.pt")["probe"]["post_steps"] == [0.1] * (4 * EPOCHS)
        assert _load(runs / "killed" / f"final_rank{rank}.pt")["probe"]["post_steps"] == [0.0] + [0.1] * 4


def test_lightning_restores_callbacks_after_on_fit_start_with_rank_zeros_state(runs):
    for rank in (0, 1):
        probe = _load(runs / "killed" / f"final_rank{rank}.pt")["probe"]
        assert probe["events"][:4] == ["setup", "on_fit_start", "load_state_dict", "step"]
        loaded = probe["loaded"]  # saved at the end of epoch 1 of the killed run, by rank 0
        assert loaded["rank"] == 0 and torch.equal(loaded["tensor"], torch.arange(4)) and loaded["steps"] == 8
    files = sorted(p.name for p in (runs / "killed" / "ckpts" / "last.ckpt").iterdir())
    assert "meta.pt" in files and sum(f.endswith(".distcp") for f in files) == 2
