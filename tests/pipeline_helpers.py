"""The whole compression pipeline on a tiny model, for the reliability tests (interruption, DDP).

One fit holds every callback of the package: mid-fit low-rank factorization of ``fc2`` (epoch 1),
gradual magnitude pruning of ``fc1``/``fc3`` (epochs 0 to 1.5, an update every half epoch), weight sharing of
``fc1`` (epoch 2) and ``fc3`` (epoch 3) with centroid fine-tuning, the monitor, the compressed export at the
end and a ``ModelCheckpoint`` (every epoch and ``last.ckpt``) written through
:class:`~lightning_compress.checkpoint_io.AtomicCheckpointIO`. Deterministic on CPU: fixed seeds, no
shuffling, no dropout, one thread, ``deterministic=True``; two runs of it give bit-identical tensors.

Kill points (``LC_KILL_AT`` or :func:`install_kill_point`) end the process with ``SIGKILL`` from inside the
code it is running at that moment, so the interruption lands exactly where a test wants it:

- ``batch:E.B``       after the optimizer step of batch ``B`` of epoch ``E`` (mid-epoch);
- ``mask_update:N``   in the ``N``-th per-layer mask computation, before the masks are applied;
- ``factorize:N``     right after the ``N``-th layer was swapped for its factors, optimizers not rebuilt;
- ``cluster:N``       in the ``N``-th layer clustering, after k-means, before the codebook is attached;
- ``ckpt_write:N``    halfway through writing the ``N``-th file into the checkpoint folder (whatever does the
  writing: ``torch.save`` into a file there, or the copy ``shutil.move`` makes across filesystems);
- ``export:N``        in the ``N``-th export, its temp file written, just before it is renamed to ``model.lcz``.

Used as a module by the test scripts (``sys.path`` gets ``tests/``); ``python tests/pipeline_helpers.py DIR
[--resume]`` runs one fit in ``DIR`` (``LC_KILL_AT=cluster:1`` to kill it, ``--resume`` to go on from ``last``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import (
    CompressionMonitor,
    ExportCompressed,
    GradualMagnitudePruning,
    LowRankFactorization,
    WeightSharing,
)
from lightning_compress.checkpoint_io import AtomicCheckpointIO
from lightning_compress.core.masks import unpack_mask

IN, HIDDEN, CLASSES = 16, 32, 4
N_TRAIN, N_VAL, BATCH = 128, 64, 16  # 8 training batches per epoch
MAX_EPOCHS = 4
SPARSITY = 0.75  # fc1 and fc3, reached at epoch 1.5
BITS = {"fc1.weight": 3, "fc3.weight": 2}  # fc1 shared at epoch 2, fc3 at epoch 3
FACTOR_RANK = 4  # fc2 (32x32) -> 32x4 @ 4x32 at epoch 1
PRUNED = ("fc1.weight", "fc3.weight")
CKPT_DIR = "ckpts"
STEP_CKPT_DIR = "step_ckpts"
EXPORT_FILE = "model.lcz"
KILL_ENV = "LC_KILL_AT"


class TinyNet(pl.LightningModule):
    """16-32-32-4 MLP, SGD with momentum and weight decay, StepLR per epoch (state to restore on resume)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.fc3 = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(IN, CLASSES, generator=g)
    x = torch.randn(N_TRAIN + N_VAL, IN, generator=g)
    y = (x @ teacher).argmax(1)
    train = TensorDataset(x[:N_TRAIN], y[:N_TRAIN])
    val = TensorDataset(x[N_TRAIN:], y[N_TRAIN:])
    return DataLoader(train, batch_size=BATCH, shuffle=False), DataLoader(val, batch_size=32)


def compression_callbacks(run_dir: str | os.PathLike) -> dict[str, Callback]:
    """The pipeline's callbacks, by role (the order is the order they run in)."""
    return {
        "factorization": LowRankFactorization(rank=FACTOR_RANK, epoch=1, include=["fc2"], verbose=False),
        "pruning": GradualMagnitudePruning(SPARSITY, include=["fc1", "fc3"], start_epoch=0, end_epoch=1.5,
                                           update_every=0.5, prog_bar=False),
        "sharing": WeightSharing(BITS, include=["fc1", "fc3"], start_epoch=2, layer_interval=1, eval_batches=1,
                                 log_histograms=False),
        "monitor": CompressionMonitor(print_summary=False),
        "export": ExportCompressed(Path(run_dir) / EXPORT_FILE, compare_gzip=False),
    }


def make_trainer(run_dir: str | os.PathLike, callbacks: list[Callback], atomic: bool = True,
                 every_n_train_steps: int | None = None, **overrides: Any) -> pl.Trainer:
    run_dir = Path(run_dir)
    kwargs: dict[str, Any] = dict(
        accelerator="cpu", devices=1, max_epochs=MAX_EPOCHS, deterministic=True, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=run_dir,
        logger=TensorBoardLogger(run_dir, name="tb", version=0),
        plugins=[AtomicCheckpointIO()] if atomic else None,
    )
    kwargs.update(overrides)
    checkpoints = [ModelCheckpoint(dirpath=run_dir / CKPT_DIR, filename="{epoch}", save_top_k=-1, save_last=True)]
    if every_n_train_steps:  # mid-epoch checkpoints too, in their own folder
        checkpoints.append(ModelCheckpoint(dirpath=run_dir / STEP_CKPT_DIR, filename="{step}", save_top_k=-1,
                                           every_n_train_steps=every_n_train_steps))
    return pl.Trainer(callbacks=[*callbacks, *checkpoints], **kwargs)


def fit(run_dir: str | os.PathLike, ckpt_path: str | None = None, atomic: bool = True, kill: str | None = None,
        record_start: str | os.PathLike | None = None, dump_dir: str | os.PathLike | None = None,
        **trainer_kwargs: Any):
    """One fit of the pipeline in ``run_dir`` (a fresh model and fresh callbacks, as a new process has).

    ``kill`` arms a kill point (default: the ``LC_KILL_AT`` environment variable); ``record_start`` saves the
    restored state at ``on_fit_start``; ``dump_dir`` gets every rank's state at every epoch end.
    """
    kill = os.environ.get(KILL_ENV) if kill is None else kill
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    cbs = compression_callbacks(run_dir)
    extra = install_kill_point(kill, run_dir)
    if record_start is not None:
        extra.append(RecordAtFitStart(record_start, cbs))
    if dump_dir is not None:
        extra.append(DumpEachEpoch(dump_dir, cbs))
    trainer = make_trainer(run_dir, [*cbs.values(), *extra], atomic=atomic, **trainer_kwargs)
    model = TinyNet()
    train, val = loaders()
    trainer.fit(model, train, val, ckpt_path=ckpt_path)
    return trainer, model, cbs


# --------------------------------------------------------------------------- what a run holds
def compression_state(model: nn.Module, cbs: dict[str, Callback]) -> dict[str, Any]:
    """Masks, codebooks, factor ranks and every tensor of the model, on CPU (for comparisons)."""
    pruning, sharing, factorization = cbs["pruning"], cbs["sharing"], cbs["factorization"]
    return {
        "masks": {k: v.detach().cpu().clone() for k, v in pruning.masks.items()},
        "codebooks": {k: (s.centroids.detach().cpu().clone(), s.assignment.detach().cpu().clone())
                      for k, s in sharing.codebooks.items()},
        "ranks": {r.name: tuple(r.ranks) for r in factorization.applied_plan},
        "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """Masks, codebooks and ranks stored in a Lightning checkpoint of the pipeline."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    states = ckpt["callbacks"]
    prune = next(v for k, v in states.items() if k.startswith("GradualMagnitudePruning"))
    share = next(v for k, v in states.items() if k.startswith("WeightSharing"))
    factor = next(v for k, v in states.items() if k.startswith("LowRankFactorization"))
    return {
        "epoch": ckpt["epoch"],
        "global_step": ckpt["global_step"],
        "masks": {k: unpack_mask(v, prune["mask_shapes"][k]) if v.dtype != torch.bool else v
                  for k, v in prune["masks"].items()},
        "codebooks": {k: (v["centroids"], v["assignment"]) for k, v in share["layers"].items()},
        "ranks": {p["name"]: tuple(p["ranks"]) for p in factor["plan"] if p["applied"]},
        "weights": ckpt["state_dict"],
    }


class RecordAtFitStart(Callback):
    """Saves what the callbacks hold once a resumed fit has restored everything (before its first step; also
    in a fit that has no step left to train). Put it after the compression callbacks."""

    def __init__(self, path: str | os.PathLike, cbs: dict[str, Callback]) -> None:
        self.path, self.cbs = path, cbs

    def on_fit_start(self, trainer, pl_module):
        torch.save(compression_state(pl_module, self.cbs), self.path)


class DumpEachEpoch(Callback):
    """``rank<r>_epoch<e>.pt`` with the state of this rank at the end of every training epoch."""

    def __init__(self, out_dir: str | os.PathLike, cbs: dict[str, Callback]) -> None:
        self.out_dir, self.cbs = Path(out_dir), cbs

    def on_train_epoch_end(self, trainer, pl_module):
        state = compression_state(pl_module, self.cbs)
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt")


# --------------------------------------------------------------------------- kill points
def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAtBatch(Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            _die()


def _kill_on_nth_call(owner: Any, attr: str, n: int, before: bool, only=None) -> None:
    """Kill in the ``n``-th call of ``owner.attr`` (among those ``only(*args)`` selects), before or after it."""
    original = getattr(owner, attr)
    calls = [0]

    def wrapper(*args, **kwargs):
        if only is not None and not only(*args, **kwargs):
            return original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == n and before:
            _die()
        result = original(*args, **kwargs)
        if calls[0] == n:
            _die()
        return result

    setattr(owner, attr, wrapper)


def _kill_mid_write(ckpt_dir: Path, n: int) -> None:
    """SIGKILL halfway through the ``n``-th write of a file in ``ckpt_dir`` (torch.save into it, or a copy)."""
    ckpt_dir = ckpt_dir.resolve()
    writes = [0]
    original_save, original_sendfile = torch.save, os.sendfile
    original_copy_file_range = getattr(os, "copy_file_range", None)

    def into_ckpt_dir(path: str) -> bool:
        return Path(path).resolve().parent == ckpt_dir

    def save(obj, f, *args, **kwargs):
        name = getattr(f, "name", f if isinstance(f, (str, os.PathLike)) else None)
        if name is None or isinstance(name, int) or not into_ckpt_dir(os.fspath(name)):
            return original_save(obj, f, *args, **kwargs)
        writes[0] += 1
        if writes[0] != n:
            return original_save(obj, f, *args, **kwargs)
        import io

        buffer = io.BytesIO()
        original_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        if hasattr(f, "write"):
            f.write(data[: len(data) // 2])
            f.flush()
        else:
            with open(f, "wb") as out:
                out.write(data[: len(data) // 2])
        _die()

    def first_chunk_into_ckpt_dir(out_fd: int) -> bool:
        # shutil copies a file in chunks (sendfile, or copy_file_range on newer Pythons): count its first one
        return os.fstat(out_fd).st_size == 0 and into_ckpt_dir(os.readlink(f"/proc/self/fd/{out_fd}"))

    def sendfile(out_fd, in_fd, offset, count):
        if not first_chunk_into_ckpt_dir(out_fd):
            return original_sendfile(out_fd, in_fd, offset, count)
        writes[0] += 1
        if writes[0] != n:
            return original_sendfile(out_fd, in_fd, offset, count)
        original_sendfile(out_fd, in_fd, offset, max(1, os.fstat(in_fd).st_size // 2))
        _die()

    def copy_file_range(src, dst, count, offset_src=None, offset_dst=None):
        if not first_chunk_into_ckpt_dir(dst):
            return original_copy_file_range(src, dst, count, offset_src, offset_dst)
        writes[0] += 1
        if writes[0] != n:
            return original_copy_file_range(src, dst, count, offset_src, offset_dst)
        original_copy_file_range(src, dst, max(1, os.fstat(src).st_size // 2), offset_src, offset_dst)
        _die()

    torch.save = save
    os.sendfile = sendfile
    if original_copy_file_range is not None:
        os.copy_file_range = copy_file_range


def install_kill_point(spec: str | None, run_dir: str | os.PathLike) -> list[Callback]:
    """Arm the kill point ``spec`` (see the module docstring); returns callbacks to add to the Trainer."""
    if not spec:
        return []
    kind, _, arg = spec.partition(":")
    if kind == "batch":
        epoch, batch = (int(v) for v in arg.split("."))
        return [_KillAtBatch(epoch, batch)]
    if kind == "mask_update":
        from lightning_compress.core import masks

        _kill_on_nth_call(masks, "magnitude_mask", int(arg), before=False)
    elif kind == "factorize":
        from lightning_compress.core import lowrank

        _kill_on_nth_call(lowrank, "replace_module", int(arg), before=False)
    elif kind == "cluster":
        from lightning_compress.callbacks import sharing

        _kill_on_nth_call(sharing, "cluster_weight", int(arg), before=False)
    elif kind == "export":
        _kill_on_nth_call(os, "replace", int(arg), before=True,
                          only=lambda src, dst, *a, **k: os.fspath(dst).endswith(EXPORT_FILE))
    elif kind == "ckpt_write":
        _kill_mid_write(Path(run_dir) / CKPT_DIR, int(arg))
    else:
        raise ValueError(f"unknown kill point {spec!r}")
    return []


def run_in_child(fn, *args, **kwargs) -> int:
    """Run ``fn`` in a forked child (cheap: Lightning is imported already) and return its wait status.

    The child is a separate process: a SIGKILL in it takes down its memory, open files and threads with it,
    exactly as for a training process killed from outside. Returns ``-signal`` or the exit code.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            fn(*args, **kwargs)
        except BaseException:  # noqa: BLE001 - report and exit non-zero, never return into the parent's code
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--resume"]
    trainer, model, cbs = fit(args[0] if args else ".", ckpt_path="last" if "--resume" in sys.argv else None)
    print({k: (v == 0).float().mean().item() for k, v in model.state_dict().items() if k in PRUNED})
