"""The Lightning side of the sharded-training tests: a tiny FSDP2 module and 2-process fits.

* :class:`ShardedNet`: a small MLP whose ``configure_model`` shards every Linear with FSDP2's ``fully_shard``
  under Lightning's ``ModelParallelStrategy``, and does nothing under other strategies, so the same class runs
  single-process or under DDP for comparisons. Row counts are odd on purpose: ranks' parts are uneven (17 + 16).
* :class:`Probe`: records what a callback sees under the strategy (parameter and gradient types, placements,
  post-step hook calls, the order of ``on_fit_start`` and ``load_state_dict``).
* ``python tests/fsdp_fit.py DIR --strategy fsdp2 [--epochs N] [--resume] [--kill-at E.B]`` runs one fit with
  the compression callbacks in ``DIR`` (Lightning relaunches the same command for rank 1) and writes each
  rank's gathered view (masks, codebooks, weights) per epoch and at the end. Tests run it in a subprocess
  (``run``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
IN, HIDDEN, CLASSES = 16, 33, 4  # 33 rows: 17 + 16 on 2 ranks; fc3 (4 rows): 2 + 2
N_TRAIN, BATCH = 128, 16  # 8 batches per epoch on one process, 4 per rank on two


class ShardedNet(pl.LightningModule):
    """``fully_shard`` on every Linear and the root under ModelParallelStrategy; plain otherwise."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.fc3 = nn.Linear(HIDDEN, CLASSES)

    def configure_model(self) -> None:
        from lightning.pytorch.strategies import ModelParallelStrategy
        from torch.distributed.fsdp import fully_shard

        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        mesh = self.device_mesh["data_parallel"]
        for layer in (self.fc1, self.fc2, self.fc3):
            fully_shard(layer, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def dataset(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN, IN, generator=g)
    y = (x[:, :CLASSES].argmax(1) + (x[:, CLASSES] > 1).long()) % CLASSES
    return TensorDataset(x, y)


def strategy_for(name: str):
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    if name == "fsdp2":
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    if name == "ddp":
        return DDPStrategy()
    return "auto"


def make_trainer(root: Path, strategy: str, callbacks: list, max_epochs: int = 2, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=1 if strategy == "single" else 2, strategy=strategy_for(strategy),
        max_epochs=max_epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        deterministic=True, default_root_dir=str(root), callbacks=callbacks, **kwargs,
    )


class Probe(Callback):
    """What a callback sees under the strategy; its state holds a tensor, to test the checkpoint's handling."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.post_steps: list[float] = []  # lr of every optimizer step the post-hook saw
        self.facts: dict = {}
        self.loaded = None

    def setup(self, trainer, pl_module, stage):
        self.facts["setup_weight_type"] = type(pl_module.fc1.weight).__name__
        self.events.append("setup")

    def on_fit_start(self, trainer, pl_module):
        self.events.append("on_fit_start")
        w = pl_module.fc1.weight
        local = w.to_local() if hasattr(w, "to_local") else w
        self.facts.update(fit_weight_type=type(w).__name__, placements=[str(p) for p in getattr(w, "placements", ())],
                          local_shape=tuple(local.shape), shape=tuple(w.shape),
                          optimizer_param_types=sorted({type(p).__name__ for g in trainer.optimizers[0].param_groups
                                                        for p in g["params"]}))
        optimizer = trainer.optimizers[0]
        optimizer.register_step_post_hook(lambda opt, a, k: self.post_steps.append(float(opt.param_groups[0]["lr"])))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if "grad_type" not in self.facts:
            g = pl_module.fc1.weight.grad
            local = g.to_local() if hasattr(g, "to_local") else g
            self.facts.update(grad_type=type(g).__name__, grad_placements=[str(p) for p in getattr(g, "placements", ())],
                              grad_local_shape=tuple(local.shape))
        self.events.append("step")

    def state_dict(self):
        return {"rank": trainer_rank(), "tensor": torch.arange(4) * (trainer_rank() + 1), "steps": len(self.post_steps)}

    def load_state_dict(self, state_dict):
        self.events.append("load_state_dict")
        self.loaded = state_dict


PRUNED, SHARED = ("fc1.weight", "fc2.weight"), ("fc1.weight", "fc3.weight")
SPARSITY, BITS = 0.75, 3
PRUNE_RULES = {"layer": {}, "global": {"scope": "global"}, "nm": {"structure": "2:4", "final_sparsity": None},
               "std": {"criterion": "std", "sensitivity": 0.5, "final_sparsity": None, "schedule": {0.25: 1.0, 0.5: 1.0}}}


def compression_callbacks(root: Path, prune: str, epochs: int) -> dict:
    """Pruning of fc1/fc2 over epoch 0-0.5 (an update every quarter epoch), sharing of fc1/fc3 at ``epochs - 2``
    (``FSDP_FIT_ONLY=sharing,export`` keeps only those)."""
    from lightning_compress import CompressionMonitor, ExportCompressed, GradualMagnitudePruning, WeightSharing

    kwargs = {"final_sparsity": SPARSITY, "start_epoch": 0.0, "end_epoch": 0.5, "update_every": 0.25,
              **PRUNE_RULES[prune]}
    return {
        "pruning": GradualMagnitudePruning(include=["fc1", "fc2"], prog_bar=False, **kwargs),
        "sharing": WeightSharing(BITS, start_epoch=max(0, epochs - 2), include=["fc1", "fc3"], evaluate=False,
                                 log_histograms=False),
        "monitor": CompressionMonitor(print_summary=False),
        "export": ExportCompressed(root / "model.lcz", compare_gzip=False),
    }


def compression_view(model: nn.Module, cbs: dict) -> dict:
    """Masks, codebooks (centroids, whole assignments) and whole weights, gathered: collective on every rank."""
    from lightning_compress.core import distributed as D

    params = dict(model.named_parameters())
    masks = {name: D.full_like(m, params[name]).clone() for name, m in getattr(cbs.get("pruning"), "masks", {}).items()}
    books = {}
    for name, shared in getattr(cbs.get("sharing"), "codebooks", {}).items():
        books[name] = {"centroids": shared.centroids.detach().cpu().clone(),
                       "assignment": D.full_like(shared.assignment, params[name]).cpu().clone()}
    weights = {name: D.full_tensor(p).detach().cpu().clone() for name, p in params.items()}
    return {"masks": masks, "codebooks": books, "weights": weights}


class Dump(Callback):
    """Each rank's gathered view at the start of training and the end of every epoch; ``kill_at`` ``(epoch, batch)``: SIGKILL
    both ranks after that batch's optimizer step (a crash mid-epoch)."""

    def __init__(self, root: Path, cbs: dict, kill_at: tuple[int, int] | None = None) -> None:
        self.root, self.cbs, self.kill_at = root, cbs, kill_at

    def on_train_start(self, trainer, pl_module):  # what a resumed rank holds before its first step
        torch.save(compression_view(pl_module, self.cbs), self.root / f"start_rank{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.kill_at == (trainer.current_epoch, batch_idx):
            import signal

            torch.distributed.barrier()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_end(self, trainer, pl_module):
        view = compression_view(pl_module, self.cbs)
        torch.save(view, self.root / f"epoch{trainer.current_epoch}_rank{trainer.global_rank}.pt")


def trainer_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0)))


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--strategy", default="fsdp2", choices=["fsdp2", "ddp", "single"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--compress", default="layer", choices=sorted(PRUNE_RULES), help="the pruning rule")
    p.add_argument("--kill-at", default=None, help="E.B: SIGKILL after batch B of epoch E")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = _parse(argv)
    root = Path(args.dir)
    pl.seed_everything(0, workers=True)
    compress(args, root)


def compress(args: argparse.Namespace, root: Path) -> None:
    """One fit with every compression callback; dumps the gathered view per epoch and at the end."""
    cbs = compression_callbacks(root, args.compress, args.epochs)
    only = os.environ.get("FSDP_FIT_ONLY")
    if only:
        cbs = {k: v for k, v in cbs.items() if k in only.split(",")}
    kill = tuple(int(x) for x in args.kill_at.split(".")) if args.kill_at else None
    ckpt = ModelCheckpoint(dirpath=root / "ckpts", save_last=True, save_top_k=-1)
    probe = Probe()
    trainer = make_trainer(root, args.strategy, [*cbs.values(), ckpt, Dump(root, cbs, kill), probe],
                           max_epochs=args.epochs)
    model = ShardedNet()
    trainer.fit(model, DataLoader(dataset(), batch_size=BATCH), ckpt_path="last" if args.resume else None)
    view = compression_view(model, cbs)
    torch.save({**view, "strategy": type(trainer.strategy).__name__, "world_size": trainer.world_size,
                "probe": {"events": probe.events, "post_steps": probe.post_steps, "facts": probe.facts,
                          "loaded": probe.loaded}},
               root / f"final_rank{trainer.global_rank}.pt")
    if torch.distributed.is_initialized():  # an orderly exit: a rank leaving while gloo threads run may abort
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run(dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python tests/fsdp_fit.py DIR ARGS`` in a fresh interpreter (Lightning spawns rank 1 from it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__)), str(dir), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"fit exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


if __name__ == "__main__":
    main(sys.argv[1:])
