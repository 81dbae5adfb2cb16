"""The full pipeline under DDP on 2 CPU processes (gloo), and the refusal of sharded strategies (FSDP).

Every rank dumps its masks, codebooks, factor ranks and weights at the end of every epoch; they must be
identical across ranks. Logging and the export happen on rank zero only, and the exported file loads on one
process. Lightning does not run FSDP on CPU (it raises before any callback runs), so the FSDP behaviour
here is tested on the callbacks' ``setup`` with a real ``FSDPStrategy`` object; ``benchmarks/fsdp_check.py``
checks it end to end on GPUs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

sys.path.insert(0, str(Path(__file__).parent))
import pipeline_helpers as H  # noqa: E402

from lightning_compress import load_compressed  # noqa: E402

SCRIPT = r"""
import os, sys
sys.path.insert(0, os.path.join(os.environ["PYTHONPATH"].split(os.pathsep)[0], "tests"))
import torch
import pipeline_helpers as H
from lightning_compress.callbacks import export as export_callback

export_calls = []
_save = export_callback.save_compressed


def counting_save(*args, **kwargs):
    export_calls.append(os.getpid())
    return _save(*args, **kwargs)


export_callback.save_compressed = counting_save

if __name__ == "__main__":
    os.makedirs("dumps", exist_ok=True)
    trainer, model, cbs = H.fit("run", dump_dir="dumps", devices=2, strategy="ddp")
    torch.save({**H.compression_state(model, cbs), "export_calls": len(export_calls), "pid": os.getpid(),
                "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__},
               f"dumps/rank{trainer.global_rank}_final.pt")
"""


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "ddp_pipeline.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run([sys.executable, "ddp_pipeline.py"], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"script exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return tmp


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.mark.slow
def test_ranks_hold_identical_masks_codebooks_and_ranks_at_every_epoch(ddp_run):
    dumps = ddp_run / "dumps"
    for epoch in range(H.MAX_EPOCHS):
        r0, r1 = _load(dumps / f"rank0_epoch{epoch}.pt"), _load(dumps / f"rank1_epoch{epoch}.pt")
        for part in ("masks", "codebooks", "ranks", "weights"):
            assert _equal(r0[part], r1[part]), f"epoch {epoch}: {part} differ between ranks"
    # and there was something to agree on: masks from epoch 0, factors from 1, codebooks from 2 and 3
    e0, e1, e2, e3 = (_load(dumps / f"rank0_epoch{e}.pt") for e in range(4))
    assert int((~e0["masks"]["fc1.weight"]).sum()) > 0 and not e0["ranks"]
    assert e1["ranks"] == {"fc2": (H.FACTOR_RANK,)} and not e1["codebooks"]
    assert list(e2["codebooks"]) == ["fc1.weight"] and sorted(e3["codebooks"]) == ["fc1.weight", "fc3.weight"]
    f0, f1 = _load(dumps / "rank0_final.pt"), _load(dumps / "rank1_final.pt")
    assert f0["world_size"] == 2 and f0["strategy"] == "DDPStrategy"
    assert _equal(f0["weights"], f1["weights"])
    for name in H.PRUNED:
        w = f0["weights"][name]
        assert int((w == 0).sum()) == round(H.SPARSITY * w.numel()), name
        assert torch.unique(w[w != 0]).numel() <= 2 ** H.BITS[name], name


@pytest.mark.slow
def test_logging_and_export_happen_on_rank_zero_only(ddp_run):
    f0, f1 = _load(ddp_run / "dumps" / "rank0_final.pt"), _load(ddp_run / "dumps" / "rank1_final.pt")
    assert (f0["export_calls"], f1["export_calls"]) == (1, 0)
    run = ddp_run / "run"
    assert sorted(os.listdir(run)) == sorted([H.CKPT_DIR, H.EXPORT_FILE, "tb"])  # one export, no temp files
    assert os.listdir(run / "tb") == ["version_0"]
    events = [n for n in os.listdir(run / "tb" / "version_0") if n.startswith("events.out.tfevents")]
    assert events and {n.split(".")[-2] for n in events} == {str(f0["pid"])}, events  # written by rank 0 only
    assert not any(n.startswith(".") for n in os.listdir(run / H.CKPT_DIR))  # no partial checkpoint left


@pytest.mark.slow
def test_exported_file_loads_on_one_process(ddp_run):
    final = _load(ddp_run / "dumps" / "rank0_final.pt")
    model = load_compressed(ddp_run / "run" / H.EXPORT_FILE, H.TinyNet())
    assert _equal(dict(model.state_dict()), final["weights"])
    x = torch.randn(5, H.IN)
    assert model(x).shape == (5, H.CLASSES)


# ------------------------------------------------------------------------------------------ sharded strategies
@pytest.mark.parametrize("strategy", [FSDPStrategy()], ids=["fsdp"])  # FSDP2: tests/test_fsdp_*.py
def test_callbacks_refuse_sharded_strategies_in_setup(strategy, tmp_path):
    callbacks = list(H.compression_callbacks(tmp_path).values())
    trainer = SimpleNamespace(strategy=strategy, callbacks=callbacks)  # Lightning builds no FSDP Trainer on CPU
    for callback in callbacks:
        with pytest.raises(MisconfigurationException, match=rf"{type(callback).__name__} does not support "
                                                            rf"{type(strategy).__name__}: .*shard.*strategy='ddp'"):
            callback.setup(trainer, H.TinyNet(), "fit")


@pytest.mark.parametrize("strategy", ["auto", "ddp"])
def test_callbacks_accept_strategies_with_full_parameters(strategy, tmp_path):
    import lightning.pytorch as pl

    callbacks = list(H.compression_callbacks(tmp_path).values())
    trainer = pl.Trainer(accelerator="cpu", devices=2 if strategy == "ddp" else 1, strategy=strategy, logger=False,
                         callbacks=callbacks, max_epochs=H.MAX_EPOCHS)
    assert isinstance(trainer.strategy, DDPStrategy if strategy == "ddp" else SingleDeviceStrategy)
    for callback in callbacks:
        callback.setup(trainer, H.TinyNet(), "fit")  # no error


def test_lightning_refuses_fsdp_on_cpu():
    """Why the FSDP checks above use the strategy object: on CPU Lightning stops before any callback."""
    import lightning.pytorch as pl

    with pytest.raises(ValueError, match="requires a GPU"):
        pl.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)
