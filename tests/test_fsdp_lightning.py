"""What Lightning's ModelParallelStrategy (FSDP2, 2 CPU processes, gloo) does to a callback, pinned.

The sharded support of the callbacks rests on these facts; if a Lightning or torch upgrade changes one, this
file says which:

* ``setup`` sees plain ``Parameter``s (``configure_model`` runs after it); from ``on_fit_start`` on, every
  parameter, every optimizer parameter and every gradient is a ``DTensor`` placed ``Shard(0)``, 17 + 16 rows
  of a 33-row layer on two ranks;
* optimizer step post-hooks fire on ``DTensor`` parameters;
* on resume, ``on_fit_start`` runs **before** ``load_state_dict`` (the strategy restores after setup), and
  restoring the optimizer runs one extra optimizer step with ``lr=0`` and zero gradients (torch's
  ``_init_optim_state``), which post-hooks see;
* the callbacks' state is written by rank 0 only (``meta.pt`` beside the sharded ``.distcp`` files) and every
  rank gets rank 0's state back, tensors included: state must be whole-layer, never one rank's part.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_fit  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp2")
    fsdp_fit.run(root, "--epochs", "1")
    fsdp_fit.run(root, "--epochs", "2", "--resume")
    load = lambda name: torch.load(root / f"{name}.pt", weights_only=False)  # noqa: E731
    return root, {name: load(name) for name in ("fit_rank0", "fit_rank1", "resume_rank0", "resume_rank1")}


def test_parameters_and_gradients_are_dim0_shards(runs):
    _, r = runs
    for rank, rows in ((0, 17), (1, 16)):
        facts = r[f"fit_rank{rank}"]["facts"]
        assert facts["setup_weight_type"] == "Parameter"
        assert (facts["fit_weight_type"], facts["placements"], facts["shape"]) == ("DTensor", ["S(0)"], (33, 16))
        assert facts["local_shape"] == facts["grad_local_shape"] == (rows, 16)
        assert (facts["grad_type"], facts["grad_placements"]) == ("DTensor", ["S(0)"])
        assert facts["optimizer_param_types"] == ["DTensor"]
        view = r[f"fit_rank{rank}"]["view"]["fc1.weight"]
        assert view["dtensor"] and torch.equal(view["full"][:17] if rank == 0 else view["full"][17:], view["local"])
    assert torch.equal(r["fit_rank0"]["view"]["fc1.weight"]["full"], r["fit_rank1"]["view"]["fc1.weight"]["full"])


def test_post_step_hooks_fire_and_restore_adds_one_zero_lr_step(runs):
    _, r = runs
    for rank in (0, 1):
        assert r[f"fit_rank{rank}"]["post_steps"] == [0.1] * 4  # 4 batches per rank
        assert r[f"resume_rank{rank}"]["post_steps"] == [0.0] + [0.1] * 4


def test_on_fit_start_runs_before_callback_state_is_restored(runs):
    _, r = runs
    for rank in (0, 1):
        assert r[f"resume_rank{rank}"]["events"][:4] == ["setup", "on_fit_start", "load_state_dict", "step"]


def test_callback_state_is_rank_zeros_for_every_rank(runs):
    root, r = runs
    for rank in (0, 1):
        loaded = r[f"resume_rank{rank}"]["loaded"]
        assert loaded["rank"] == 0 and torch.equal(loaded["tensor"], torch.arange(4)) and loaded["steps"] == 4
    files = sorted(p.name for p in (root / "ckpts" / "last.ckpt").iterdir())
    assert "meta.pt" in files and sum(f.endswith(".distcp") for f in files) == 2
