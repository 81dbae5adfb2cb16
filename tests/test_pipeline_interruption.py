"""The full pipeline (factorize + prune + share + monitor + export) killed with SIGKILL and resumed.

One script (one Lightning import) forks a fresh process per run: the uninterrupted reference, then a chain
of runs each killed from inside at a chosen moment (mid mask update, right after a layer was factorized,
mid-epoch, mid clustering, mid checkpoint write) and the next resuming with ``ckpt_path="last"``, and a
last resume that runs to the end. A separate run shows what Lightning's default checkpoint writer leaves
when the kill lands in its cross-filesystem copy, which :class:`AtomicCheckpointIO` prevents.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import pipeline_helpers as H  # noqa: E402

from lightning_compress import load_compressed  # noqa: E402
from lightning_compress.checkpoint_io import TEMP_MARKER, AtomicCheckpointIO  # noqa: E402
from lightning_compress.core.sharing import decode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# a filesystem other than the checkpoints' for the system temp folder (Lightning's default writer copies then)
OTHER_FS_TMP = "/dev/shm"

#: (kill point, resume?) in order; every run but the last is killed.
CHAIN = [
    ("mask_update:7", False),  # fresh run; pruning update at epoch 1.5, first layer: last.ckpt = epoch 0
    ("factorize:1", True),     # from epoch 0: fc2 swapped for factors at epoch 1, optimizers not rebuilt yet
    ("batch:2.3", True),       # from epoch 0: epoch 1 saved, fc1 clustered at epoch 2, killed mid-epoch 2
    ("cluster:2", True),       # from epoch 1: epoch 2 saved, killed while clustering fc3 at epoch 3
    ("ckpt_write:2", True),    # from epoch 2: epoch 3 done, killed halfway through writing last.ckpt
    ("export:1", True),        # from epoch 2 again (last.ckpt survived): trained to the end, killed exporting
    (None, True),              # from epoch 3, the end: trains nothing, restores everything, exports
]
RESUMED_FROM = [None, 0, 0, 1, 2, 2, 3]  # epoch of the checkpoint each run starts from
FINAL = len(CHAIN) - 1

SCRIPT = r"""
import glob, json, os, shutil, sys, tempfile
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import torch
import pipeline_helpers as H

CHAIN = json.loads(sys.argv[2])
OTHER_FS_TMP = sys.argv[3]


def run(run_dir, kill, resume, start, final, atomic=True, every_n_train_steps=None):
    if os.path.isdir(OTHER_FS_TMP):
        tempfile.tempdir = OTHER_FS_TMP
    ckpt_path = ("last" if resume is True else resume) if resume else None
    trainer, model, cbs = H.fit(run_dir, ckpt_path=ckpt_path, atomic=atomic, kill=kill, record_start=start,
                                every_n_train_steps=every_n_train_steps)
    torch.save(H.compression_state(model, cbs), final)
    trainer.save_checkpoint(os.path.join(run_dir, "after_fit.ckpt"))  # what the callbacks hold, saved again


summary = {"chain": [], "listing": [], "run_dir": []}
os.makedirs("ref")
summary["ref"] = H.run_in_child(run, "ref", None, False, None, "ref/final.pt")
os.makedirs("chain")
for i, (kill, resume) in enumerate(CHAIN):
    if resume:
        shutil.copy("chain/ckpts/last.ckpt", f"chain/resume{i}.ckpt")
    summary["chain"].append(H.run_in_child(run, "chain", kill, resume, f"chain/start{i}.pt", f"chain/final{i}.pt"))
    summary["listing"].append(sorted(os.listdir("chain/ckpts")))
    summary["run_dir"].append(sorted(os.listdir("chain")))
os.makedirs("midepoch")  # mid-epoch checkpoints every 4 steps; resume from the newest file
summary["midepoch"] = [H.run_in_child(run, "midepoch", "batch:1.5", False, None, "midepoch/unused.pt",
                                      every_n_train_steps=4)]
newest = max(glob.glob("midepoch/step_ckpts/*.ckpt"), key=os.path.getmtime)
shutil.copy(newest, "midepoch/resume.ckpt")
summary["midepoch"].append(H.run_in_child(run, "midepoch", None, newest, "midepoch/start.pt", "midepoch/final.pt",
                                          every_n_train_steps=4))
os.makedirs("default_io")
summary["default_io"] = H.run_in_child(run, "default_io", "ckpt_write:4", False, None, "default_io/final.pt",
                                       atomic=False)
summary["default_io_listing"] = sorted(os.listdir("default_io/ckpts"))
with open("summary.json", "w") as f:
    json.dump(summary, f)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run the script once for the whole module (it is the expensive part)."""
    import subprocess

    tmp = tmp_path_factory.mktemp("interruption")
    script = tmp / "driver.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(REPO), json.dumps(CHAIN), OTHER_FS_TMP], cwd=tmp,
                          env=env, capture_output=True, text=True, timeout=400)
    if proc.returncode != 0 or not (tmp / "summary.json").exists():
        pytest.fail(f"driver exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    summary = json.loads((tmp / "summary.json").read_text())
    summary["_log"] = proc.stdout + proc.stderr
    return tmp, summary


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, tuple):
            assert all(torch.equal(u, v) for u, v in zip(x, y)), f"{what}: {key}"
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), f"{what}: {key}"


@pytest.mark.slow
def test_every_kill_lands_and_the_last_resume_finishes(runs):
    tmp, summary = runs
    assert summary["ref"] == 0, summary["_log"][-4000:]
    assert summary["chain"] == [-9] * (len(CHAIN) - 1) + [0], summary["_log"][-6000:]
    # what was saved when each kill landed
    epochs_saved = [sorted(n for n in listing if n.startswith("epoch=")) for listing in summary["listing"]]
    assert epochs_saved[0] == ["epoch=0.ckpt"]
    assert epochs_saved[1] == ["epoch=0.ckpt"]  # killed before epoch 1 ended
    assert epochs_saved[2] == ["epoch=0.ckpt", "epoch=1.ckpt"]
    assert epochs_saved[3] == ["epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"]
    assert epochs_saved[4][-1] == "epoch=3.ckpt"  # written whole; last.ckpt was being written at the kill
    # killed exporting: the file is not there under its name (only the temp file), the final checkpoint is
    assert "epoch=3-v1.ckpt" in summary["listing"][5] and H.EXPORT_FILE not in summary["run_dir"][5]
    assert any(n.startswith(H.EXPORT_FILE + ".tmp") for n in summary["run_dir"][5]), summary["run_dir"][5]
    for i, start_epoch in enumerate(RESUMED_FROM):
        if start_epoch is not None:
            assert _load(tmp / "chain" / f"resume{i}.ckpt")["epoch"] == start_epoch, i


@pytest.mark.slow
def test_resume_restores_the_checkpoints_masks_codebooks_and_ranks(runs):
    tmp, _ = runs
    for i, start_epoch in enumerate(RESUMED_FROM):
        if start_epoch is None:
            continue
        saved = H.checkpoint_state(tmp / "chain" / f"resume{i}.ckpt")
        held = _load(tmp / "chain" / f"start{i}.pt")
        _assert_same_tensors(held["masks"], saved["masks"], f"masks, run {i}")
        _assert_same_tensors(held["codebooks"], saved["codebooks"], f"codebooks, run {i}")
        assert held["ranks"] == saved["ranks"], i
        _assert_same_tensors(held["weights"], saved["weights"], f"weights, run {i}")
    # the chain's checkpoints were not trivial: masks at epoch 0, factors at 1, a codebook at 2
    at_epoch2 = H.checkpoint_state(tmp / "chain" / "resume5.ckpt")
    assert at_epoch2["ranks"] == {"fc2": (H.FACTOR_RANK,)} and list(at_epoch2["codebooks"]) == ["fc1.weight"]
    assert int((~H.checkpoint_state(tmp / "chain" / "resume1.ckpt")["masks"]["fc1.weight"]).sum()) > 0


def _assert_on_schedule(final: dict, checkpoints: list[dict]) -> None:
    """Exact zeros at the scheduled sparsity, 2^bits centroids, the factor rank; no weight pruned in any of
    ``checkpoints`` revived."""
    w = final["weights"]
    for name in H.PRUNED:
        numel = w[name].numel()
        assert int((w[name] == 0).sum()) == round(H.SPARSITY * numel), name
        assert int((~final["masks"][name]).sum()) == round(H.SPARSITY * numel), name
        centroids, assignment = final["codebooks"][name]
        k = 2 ** H.BITS[name] - 1  # pruned layer: zero takes one of the 2^bits codes
        assert centroids.numel() == k and torch.unique(w[name][w[name] != 0]).numel() <= k, name
        assert torch.equal(w[name], decode(centroids, assignment)), name
    assert final["ranks"] == {"fc2": (H.FACTOR_RANK,)}
    assert w["fc2.first.weight"].shape == (H.FACTOR_RANK, H.HIDDEN)
    for saved in checkpoints:
        for name, mask in saved["masks"].items():
            assert not bool(final["masks"][name][~mask].any()), f"revived: pruned at step {saved['global_step']}"
            assert bool((w[name][~mask] == 0).all()), name


@pytest.mark.slow
def test_resumed_run_ends_on_schedule_and_masks_only_grow(runs):
    tmp, _ = runs
    final = _load(tmp / "chain" / f"final{FINAL}.pt")
    _assert_on_schedule(final, [H.checkpoint_state(tmp / "chain" / f"resume{i}.ckpt")
                                for i, e in enumerate(RESUMED_FROM) if e is not None])


@pytest.mark.slow
def test_resume_from_the_newest_mid_epoch_checkpoint(runs):
    tmp, summary = runs
    assert summary["midepoch"] == [-9, 0]
    saved = H.checkpoint_state(tmp / "midepoch" / "resume.ckpt")
    assert (saved["epoch"], saved["global_step"]) == (1, 12)  # killed after step 14; steps 4, 8, 12 saved
    assert 0 < int((~saved["masks"]["fc1.weight"]).sum()) < round(H.SPARSITY * H.IN * H.HIDDEN)  # mid-ramp
    held = _load(tmp / "midepoch" / "start.pt")
    for part in ("masks", "codebooks", "weights"):
        _assert_same_tensors(held[part], saved[part], part)
    assert held["ranks"] == saved["ranks"] == {"fc2": (H.FACTOR_RANK,)}
    final = _load(tmp / "midepoch" / "final.pt")
    _assert_on_schedule(final, [saved])
    model = load_compressed(tmp / "midepoch" / H.EXPORT_FILE, H.TinyNet())
    _assert_same_tensors(dict(model.state_dict()), final["weights"], "exported")


@pytest.mark.slow
def test_resume_from_epoch_end_is_bit_identical_to_the_uninterrupted_run(runs):
    tmp, _ = runs
    ref, final = _load(tmp / "ref" / "final.pt"), _load(tmp / "chain" / f"final{FINAL}.pt")
    _assert_same_tensors(final["weights"], ref["weights"], "weights")
    _assert_same_tensors(final["masks"], ref["masks"], "masks")
    _assert_same_tensors(final["codebooks"], ref["codebooks"], "codebooks")
    assert final["ranks"] == ref["ranks"]
    # the exported files are the same bytes and load back into a plain (dense) TinyNet bit-exactly
    exported = (tmp / "chain" / H.EXPORT_FILE).read_bytes()
    assert exported == (tmp / "ref" / H.EXPORT_FILE).read_bytes()
    model = load_compressed(tmp / "chain" / H.EXPORT_FILE, H.TinyNet())
    _assert_same_tensors({k: v for k, v in model.state_dict().items()}, final["weights"], "exported")


@pytest.mark.slow
def test_a_kill_mid_write_never_leaves_a_bad_last_checkpoint(runs):
    tmp, summary = runs
    # AtomicCheckpointIO: the partial write is a hidden temp file; last.ckpt stayed the complete epoch-2 one
    listing = summary["listing"][4]
    partial = [n for n in listing if TEMP_MARKER in n]
    assert len(partial) == 1 and partial[0].startswith(".last.ckpt"), listing
    assert _load(tmp / "chain" / "resume5.ckpt")["epoch"] == 2
    with pytest.raises(Exception):
        _load(tmp / "chain" / "ckpts" / partial[0])  # truncated: would not load, and "last" never picks it
    # the next run held exactly that checkpoint's weights (those of epoch 2, not of a partial epoch-3 file)
    held, saved = _load(tmp / "chain" / "start5.pt"), H.checkpoint_state(tmp / "chain" / "resume5.ckpt")
    _assert_same_tensors(held["weights"], saved["weights"], "weights")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the kill point hooks Linux's file copy (sendfile)")
@pytest.mark.skipif(not os.path.isdir(OTHER_FS_TMP) or os.stat(OTHER_FS_TMP).st_dev == os.stat(REPO).st_dev,
                    reason="needs a temp folder on another filesystem")
@pytest.mark.slow
def test_lightning_default_writer_truncates_last_ckpt_across_filesystems(runs):
    """Why AtomicCheckpointIO exists: with the system temp folder on another filesystem, Lightning's
    writer copies into ``last.ckpt``; a kill mid-copy leaves it truncated and the previous one is gone."""
    tmp, summary = runs
    assert summary["default_io"] == -9
    ckpts = tmp / "default_io" / "ckpts"
    assert summary["default_io_listing"] == ["epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"]
    assert (ckpts / "last.ckpt").stat().st_size < (ckpts / "epoch=1.ckpt").stat().st_size
    with pytest.raises(Exception):
        _load(ckpts / "last.ckpt")


def test_atomic_checkpoint_io_failed_write_keeps_the_previous_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.arange(4.0)}, path)
    assert _load(path)["epoch"] == 1
    with pytest.raises(Exception):
        io.save_checkpoint({"epoch": 2, "bad": lambda: None}, path)  # pickling fails mid-write
    assert _load(path)["epoch"] == 1 and torch.equal(_load(path)["w"], torch.arange(4.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp file left behind
    io.save_checkpoint({"epoch": 3}, f"file://{path}")
    assert io.load_checkpoint(path)["epoch"] == 3
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, path, storage_options={"x": 1})


@pytest.mark.slow
def test_a_resume_with_nothing_left_to_train_holds_and_resaves_the_state(runs):
    """The last run resumed from the final checkpoint: no step, yet the callbacks hold the restored masks and
    codebooks (a checkpoint saved after it must not say "nothing pruned" next to pruned weights)."""
    tmp, _ = runs
    assert _load(tmp / "chain" / f"resume{FINAL}.ckpt")["epoch"] == H.MAX_EPOCHS - 1
    ref_after = H.checkpoint_state(tmp / "ref" / "after_fit.ckpt")
    after = H.checkpoint_state(tmp / "chain" / "after_fit.ckpt")
    for part in ("masks", "codebooks", "weights"):
        _assert_same_tensors(after[part], ref_after[part], part)
    assert after["ranks"] == ref_after["ranks"] == {"fc2": (H.FACTOR_RANK,)}
    assert int((~after["masks"]["fc1.weight"]).sum()) == round(H.SPARSITY * H.IN * H.HIDDEN)
