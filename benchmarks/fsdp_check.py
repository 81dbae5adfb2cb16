"""Sharded-training check: the compression callbacks under FSDP2 (``ModelParallelStrategy``) next to DDP.

Runs each check as its own multi-process fit (a fresh ``python`` per check; Lightning relaunches it per rank):

1. ``fsdp2``: a small MLP sharded with ``fully_shard`` in ``configure_model`` under
   ``ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)``, with gradual magnitude pruning
   (fc1, fc2), weight sharing (fc1, fc3, after the ramp), the monitor and the compressed export. Checks: exact
   zeros at the scheduled sparsity, at most ``2^bits`` values per shared layer, the exported file loads into
   the plain (unsharded) model and equals the gathered weights.
2. ``ddp``: the same fit under DDP (same seed, same data order); the two runs are compared: masks (fraction
   of positions that agree), codebooks, largest weight difference.
3. ``refusals``: ``LowRankFactorization`` mid-fit under FSDP2, and on GPUs every callback under
   ``FSDPStrategy`` (FSDP1; Lightning refuses FSDP1 on CPU itself), must stop in ``setup`` with a message
   pointing to what to do.

Prints a table, writes ``benchmarks/results/fsdp_check[_quick][_cpu].json``, exits non-zero on a failed check.

Usage::

    python benchmarks/fsdp_check.py --quick               # N = all visible GPUs (at least 2)
    python benchmarks/fsdp_check.py --quick --cpu         # 2 CPU processes, gloo (what the test suite does)

Status: the ``--cpu`` run is what has run (results committed); **the GPU run has not run yet** — no GPU machine
was available where this was written.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, meta, parser, result_path, write_json

SPARSITY, BITS = 0.75, 3
PRUNED, SHARED = ("fc1.weight", "fc2.weight"), ("fc1.weight", "fc3.weight")


def build(cpu: bool):
    """The model class and data; imported lazily so the orchestrator starts fast."""
    import lightning.pytorch as pl
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(32, 129), nn.Linear(129, 64), nn.Linear(64, 10)

        def configure_model(self) -> None:
            from lightning.pytorch.strategies import ModelParallelStrategy
            from torch.distributed.fsdp import fully_shard

            if isinstance(self.trainer.strategy, ModelParallelStrategy):
                mesh = self.device_mesh["data_parallel"]
                for layer in (self.fc1, self.fc2, self.fc3):
                    fully_shard(layer, mesh=mesh)
                fully_shard(self, mesh=mesh)

        def forward(self, x):
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss, sync_dist=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 32, generator=g)
    y = (x @ torch.randn(32, 10, generator=g)).argmax(1)
    return Net, DataLoader(TensorDataset(x, y), batch_size=64)


def callbacks(kind: str, out: Path, epochs: int) -> list:
    from lightning_compress import (
        CompressionMonitor, ExportCompressed, GradualMagnitudePruning, LowRankFactorization, WeightSharing,
    )

    if kind == "factorization":
        return [LowRankFactorization(rank=4, epoch=1, include=["fc2"], verbose=False)]
    ramp_end = max(1, epochs - 2)
    return [
        GradualMagnitudePruning(SPARSITY, include=["fc1", "fc2"], start_epoch=0, end_epoch=ramp_end - 0.5,
                                update_every=0.5),
        WeightSharing(BITS, include=["fc1", "fc3"], start_epoch=ramp_end, evaluate=False),
        CompressionMonitor(print_summary=False),
        ExportCompressed(out / "model.lcz", compare_gzip=False),
    ]


def worker(args: argparse.Namespace) -> None:
    """One fit (every rank runs this); rank 0 writes what the orchestrator checks."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    from lightning_compress.core import distributed as D

    out = Path(args.dir)
    pl.seed_everything(0, workers=True)
    net_cls, data = build(args.cpu)
    devices = 2 if args.cpu else args.devices
    strategy = {"ddp": DDPStrategy(), "fsdp1": "fsdp"}.get(
        args.worker, ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1))
    kind = "factorization" if args.worker == "factorization" else "pipeline"
    trainer = pl.Trainer(accelerator="cpu" if args.cpu else "gpu", devices=devices, strategy=strategy,
                         max_epochs=args.epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, deterministic=args.cpu,
                         callbacks=callbacks(kind, out, args.epochs), default_root_dir=str(out))
    model = net_cls()
    row: dict = {"worker": args.worker}
    start = time.perf_counter()
    try:
        trainer.fit(model, data)
        row["ok_fit"] = True
    except Exception as err:  # noqa: BLE001 - a refusal is what some checks expect; recorded either way
        row.update(ok_fit=False, error=f"{type(err).__name__}: {err}")
    row["seconds"] = round(time.perf_counter() - start, 2)
    if not args.cpu:
        row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    weights = {k: D.full_tensor(v).detach().cpu().clone() for k, v in model.state_dict().items()} if row["ok_fit"] else {}
    if trainer.global_rank == 0:
        torch.save({"row": row, "weights": weights}, out / f"{args.worker}.pt")


def run_worker(name: str, args: argparse.Namespace, tmp: Path) -> dict:
    out = tmp / name
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--worker", name, "--dir", str(out), "--epochs", str(args.epochs),
           "--devices", str(args.devices)] + (["--cpu"] if args.cpu else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    result = out / f"{name}.pt"
    if not result.exists():
        return {"row": {"worker": name, "ok_fit": False, "error": f"exit {proc.returncode}: {proc.stderr[-800:]}"},
                "weights": {}}
    return torch.load(result, weights_only=True)


def check_pipeline(run: dict, out: Path) -> dict:
    from lightning_compress import load_compressed

    row = {"check": "fsdp2: prune + share + monitor + export", "ok": False, "seconds": run["row"].get("seconds")}
    if not run["row"]["ok_fit"]:
        return {**row, "detail": run["row"].get("error", "")[:300]}
    w, problems = run["weights"], []
    for name in PRUNED:
        zeros, want = int((w[name] == 0).sum()), round(SPARSITY * w[name].numel())
        if zeros != want:
            problems.append(f"{name}: {zeros} zeros, {want} scheduled")
    for name in SHARED:
        values = torch.unique(w[name][w[name] != 0]).numel()
        if values > 2**BITS:
            problems.append(f"{name}: {values} distinct values > {2**BITS}")
    net_cls, _ = build(True)
    loaded = load_compressed(out / "fsdp2" / "model.lcz", net_cls()).state_dict()
    if any(not torch.equal(loaded[k], w[k]) for k in w):
        problems.append("exported file differs from the gathered weights")
    return {**row, "ok": not problems, "detail": "; ".join(problems) or "invariants hold, file reloads bit-exactly",
            "peak_gpu_bytes": run["row"].get("peak_gpu_bytes")}


def check_against_ddp(fsdp: dict, ddp: dict) -> dict:
    row = {"check": "fsdp2 vs ddp (same seed and data order)", "ok": False}
    if not (fsdp["row"]["ok_fit"] and ddp["row"]["ok_fit"]):
        return {**row, "detail": "a fit failed: " + str(ddp["row"].get("error", ""))[:200]}
    a, b = fsdp["weights"], ddp["weights"]
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    agree = {k: float(((a[k] == 0) == (b[k] == 0)).float().mean()) for k in PRUNED}
    # gradients are summed in another order (reduce-scatter vs all-reduce): float noise, not equality
    ok = diff < 1e-3 and min(agree.values()) > 0.99
    return {**row, "ok": ok, "max_abs_weight_diff": diff, "mask_agreement": agree,
            "detail": f"max |w_fsdp2 - w_ddp| = {diff:.2e}, masks agree on {min(agree.values()):.2%}+ of positions"}


def check_refusal(run: dict, label: str, words: tuple[str, ...]) -> dict:
    err = run["row"].get("error", "")
    ok = not run["row"]["ok_fit"] and all(word in err for word in words)
    return {"check": label, "ok": ok, "detail": err[:240] or "fit finished: no refusal"}


def main(argv=None) -> int:
    p = parser(__doc__, quick_help="4 epochs per fit instead of 8")
    p.add_argument("--cpu", action="store_true", help="2 CPU processes (gloo) instead of GPUs")
    p.add_argument("--devices", type=int, default=max(2, torch.cuda.device_count()))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.epochs = args.epochs or (4 if args.quick else 8)
    if args.worker:
        worker(args)
        return 0
    result = {"quick": args.quick, "cpu": args.cpu, "devices": 2 if args.cpu else args.devices,
              "cuda": torch.cuda.is_available(), "meta": meta(args), "rows": []}
    if not args.cpu and torch.cuda.device_count() < 2:
        result["status"] = f"not run: {torch.cuda.device_count()} GPU(s); FSDP2 sharding needs at least 2 (or --cpu)"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            runs = {name: run_worker(name, args, tmp) for name in
                    ["fsdp2", "ddp", "factorization"] + ([] if args.cpu else ["fsdp1"])}
            result["rows"].append(check_pipeline(runs["fsdp2"], tmp))
            result["rows"].append(check_against_ddp(runs["fsdp2"], runs["ddp"]))
            result["rows"].append(check_refusal(runs["factorization"], "fsdp2: mid-fit factorization refused",
                                                ("LowRankFactorization", "ModelParallelStrategy")))
            if "fsdp1" in runs:
                result["rows"].append(check_refusal(runs["fsdp1"], "fsdp1 (FSDPStrategy) refused",
                                                    ("FSDPStrategy", "ModelParallelStrategy")))
        result["status"] = "passed" if all(r["ok"] for r in result["rows"]) else "FAILED"
    print(f"FSDP2 check ({'cpu' if args.cpu else 'gpu'}, {'quick' if args.quick else 'full'}): {result['status']}")
    for row in result["rows"]:
        print(f"  {'ok ' if row['ok'] else 'BAD'}  {row['check']:<44} {row.get('detail', '')}")
    out = write_json(result_path(args, "fsdp_check", suffix=("_cpu" if args.cpu else "") + ".json"), result)
    print(f"wrote {out}")
    return 1 if result["status"] == "FAILED" else 0


if __name__ == "__main__":
    sys.exit(main())
