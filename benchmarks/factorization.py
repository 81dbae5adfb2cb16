"""Low-rank factorization on Fashion-MNIST: accuracy vs parameter ratio, before and after fine-tuning, and
CPU latency against the dense model.

For LeNet-300-100 and LeNet-5: train a dense model, then for each kept-energy threshold tau factorize a copy
with ``LowRankFactorization(energy=tau, epoch=0)`` inside a one-epoch fit (the factorization happens at the
start of that fit, the epoch fine-tunes the factors). Test accuracy is measured right after factorizing
and after the fine-tuning epoch; the dense model trained for the same extra epoch is the reference row.
Latency: forward passes at batch 1 and batch 256 on CPU (1 thread), factorized and dense timed alternately,
reported as the median of factorized / dense time (below 1 = faster), in process CPU time (robust to other
load on a shared machine) and in wall-clock time.

    python benchmarks/factorization.py --quick     # smoke run, well under a minute
    python benchmarks/factorization.py             # full run

Prints a table and writes ``benchmarks/results/factorization[_quick].json`` (``--out DIR``: elsewhere).
"""

from __future__ import annotations

import copy
import statistics
import time

import lightning.pytorch as pl
import torch
from _common import meta, parser, result_path, trainer as quiet_trainer, write_json
from torch import nn

from lightning_compress import LowRankFactorization
from lightning_compress.core.metrics import top1_accuracy
from lightning_compress.zoo.data import FashionMNISTDataModule
from lightning_compress.zoo.models import LeNet5, LeNet300100


def accuracy(model: nn.Module, loader) -> float:
    return top1_accuracy(model.eval(), loader)


def n_params(model: nn.Module) -> int:
    """Weights and biases of the network (metric buffers excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if "_acc" not in n)


def _per_call(model: nn.Module, x: torch.Tensor, inner: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per forward, averaged over ``inner`` calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(inner):
        model(x)
    return (time.perf_counter() - w0) / inner, (time.process_time() - c0) / inner


def latency(model: nn.Module, batch: int, shape=(1, 28, 28), repeats: int = 30, min_time: float = 0.02) -> float:
    """Median CPU seconds per forward pass at ``batch``."""
    model.eval()
    x = torch.randn(batch, *shape)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        inner = max(1, int(min_time / max(_per_call(model, x, 1)[0], 1e-6)))
        return statistics.median(_per_call(model, x, inner)[1] for _ in range(repeats))


def latency_ratio(model: nn.Module, dense: nn.Module, batch: int, shape=(1, 28, 28), repeats: int = 30,
                  min_time: float = 0.02) -> dict[str, float]:
    """Factorized / dense time per forward: median over ``repeats`` samples, each averaging calls for about
    ``min_time`` seconds, the two models timed alternately. ``cpu`` uses this process's CPU time, which time
    slices lost to other processes on a shared machine do not inflate; ``wall`` is wall-clock time."""
    model.eval()
    dense.eval()
    x = torch.randn(batch, *shape)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
            dense(x)
        inner = max(1, int(min_time / max(_per_call(dense, x, 1)[0], 1e-6)))
        wall, cpu = [], []
        for _ in range(repeats):
            (wm, cm), (wd, cd) = _per_call(model, x, inner), _per_call(dense, x, inner)
            wall.append(wm / wd)
            cpu.append(cm / max(cd, 1e-9))
    return dict(cpu=statistics.median(cpu), wall=statistics.median(wall))


def trainer(max_epochs: int, callbacks=(), limit_train_batches=None) -> pl.Trainer:
    return quiet_trainer(max_epochs, callbacks, limit_train_batches=limit_train_batches, limit_val_batches=0)


class TestAccAtFactorization(pl.Callback):
    """Runs right after the factorization callback at the start of the fine-tuning fit."""

    def __init__(self, loader):
        self.loader, self.acc = loader, None

    def on_train_epoch_start(self, trainer, pl_module):
        if self.acc is None:
            was = pl_module.training
            self.acc = accuracy(pl_module, self.loader)
            pl_module.train(was)


def run_model(name: str, make, dm, args) -> dict:
    torch.manual_seed(args.seeds[0])
    dense = make()
    t0 = time.perf_counter()
    trainer(args.epochs).fit(dense, datamodule=dm)
    train_s = time.perf_counter() - t0
    test = dm.test_dataloader()
    dense_acc = accuracy(dense, test)
    dense_params = n_params(dense)
    dense_lat = {b: latency(dense, b, repeats=args.repeats) for b in (1, 256)}

    # reference: the dense model given the same extra epoch the factorized ones get
    ref = copy.deepcopy(dense)
    ref.hparams.lr = args.finetune_lr
    trainer(1, limit_train_batches=args.finetune_batches).fit(ref, datamodule=dm)
    rows = [dict(energy=None, label="dense", param_ratio=1.0, params=dense_params, acc_factorized=dense_acc,
                 acc_finetuned=accuracy(ref, test), latency_ratio_b1=1.0, latency_ratio_b256=1.0,
                 wall_latency_ratio_b1=1.0, wall_latency_ratio_b256=1.0, layers={})]
    for tau in args.energies:
        model = copy.deepcopy(dense)
        model.hparams.lr = args.finetune_lr
        cb = LowRankFactorization(energy=tau, epoch=0, evaluate=False, verbose=False)
        probe = TestAccAtFactorization(test)
        trainer(1, [cb, probe], limit_train_batches=args.finetune_batches).fit(model, datamodule=dm)
        rows.append(dict(
            energy=tau, label=f"tau={tau}", param_ratio=n_params(model) / dense_params, params=n_params(model),
            acc_factorized=probe.acc, acc_finetuned=accuracy(model, test),
            **_ratios(model, dense, args.repeats),
            layers={r.name: dict(kind=r.kind, ranks=list(r.ranks), energy=r.energy, applied=r.applied,
                                 params_before=r.params_before, params_after=r.params_after, reason=r.reason)
                    for r in cb.plan},
        ))
    return dict(model=name, dense_test_acc=dense_acc, dense_params=dense_params, dense_train_seconds=train_s,
                dense_latency_s={str(b): v for b, v in dense_lat.items()}, rows=rows)


def _ratios(model, dense, repeats) -> dict:
    out = {}
    for b in (1, 256):
        r = latency_ratio(model, dense, b, repeats=repeats)
        out[f"latency_ratio_b{b}"] = r["cpu"]
        out[f"wall_latency_ratio_b{b}"] = r["wall"]
    return out


def table(result: dict) -> str:
    lines = [f"{result['model']}: dense test acc {result['dense_test_acc']:.4f}, {result['dense_params']} params, "
             f"CPU time per forward b1 {result['dense_latency_s']['1'] * 1e6:.0f} us, b256 {result['dense_latency_s']['256'] * 1e3:.2f} ms"]
    head = f"{'row':<10} {'param ratio':>11} {'acc factorized':>14} {'acc +1 epoch':>12} {'cpu b1':>7} {'cpu b256':>8} {'wall b1':>7} {'wall b256':>9}  ranks"
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        ranks = ", ".join(f"{n}:{'x'.join(map(str, l['ranks']))}" + ("" if l["applied"] else "(dense)")
                          for n, l in r["layers"].items())
        lines.append(f"{r['label']:<10} {r['param_ratio']:>11.3f} {r['acc_factorized']:>14.4f} {r['acc_finetuned']:>12.4f} "
                     f"{r['latency_ratio_b1']:>7.2f} {r['latency_ratio_b256']:>8.2f} {r['wall_latency_ratio_b1']:>7.2f} "
                     f"{r['wall_latency_ratio_b256']:>9.2f}  {ranks}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = parser(__doc__, quick_help="smoke run on a subset (well under a minute)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    p.add_argument("--models", nargs="+", default=["LeNet300100", "LeNet5"], choices=["LeNet300100", "LeNet5"])
    p.add_argument("--epochs", type=int, default=None, help="dense training epochs (default: 3; quick: 1)")
    p.add_argument("--train-limit", type=int, default=None, help="use only this many training images")
    p.add_argument("--energies", type=float, nargs="+", default=None, help="kept-energy thresholds to sweep")
    args = p.parse_args(argv)
    if len(args.seeds) != 1:
        p.error("--seeds: this benchmark runs one seed per invocation")
    overrides = dict(epochs=args.epochs, train_limit=args.train_limit, energies=args.energies)
    torch.set_num_threads(1)
    if args.quick:
        args.energies, args.epochs, args.repeats = [0.8, 0.95], 1, 3
        train_limit, test_limit, args.finetune_batches = 2000, 1000, 10
    else:
        args.energies, args.epochs, args.repeats = [0.3, 0.5, 0.7, 0.8, 0.9, 0.95], 3, 15
        train_limit, test_limit, args.finetune_batches = None, None, None
    if overrides["epochs"] is not None:
        args.epochs = overrides["epochs"]
    if overrides["train_limit"] is not None:
        train_limit = overrides["train_limit"]
    if overrides["energies"] is not None:
        args.energies = overrides["energies"]
    args.finetune_lr = 0.01
    dm = FashionMNISTDataModule(args.data_dir, download=False, batch_size=128, val_size=5000, seed=args.seeds[0],
                                train_limit=train_limit, test_limit=test_limit, val_limit=1000)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    makers = {"LeNet300100": lambda: LeNet300100(lr=0.05, lr_scheduler="cosine"),
              "LeNet5": lambda: LeNet5(lr=0.05, lr_scheduler="cosine")}
    t0 = time.perf_counter()
    results = []
    stem = "factorization"
    if args.models != ["LeNet300100", "LeNet5"]:
        stem += "_" + "_".join(m.lower() for m in args.models)
    path = result_path(args, stem)
    for name in args.models:
        res = run_model(name, makers[name], dm, args)
        print(table(res), flush=True)
        print(flush=True)
        results.append(res)
        out = dict(
            benchmark="factorization", quick=args.quick, complete=len(results) == len(args.models),
            meta=meta(args), dataset="Fashion-MNIST", energies=args.energies, train_samples=len(dm.train_dataset),
            test_samples=len(dm.test_dataset), dense_epochs=args.epochs, finetune_epochs=1,
            finetune_batches=args.finetune_batches, finetune_lr=args.finetune_lr, torch_threads=1,
            seconds=time.perf_counter() - t0, results=results,
            notes="param_ratio = all weights+biases after / before; latency_ratio = median of factorized / dense "
                  "forward time on CPU, 1 thread, timed alternately (latency_ratio_*: process CPU time; wall_latency_ratio_*: "
                  "wall clock, which other processes' load on a shared machine distorts); acc_* on the test split; the dense row's "
                  "acc_finetuned is the dense model after the same extra epoch.",
        )
        write_json(path, out)  # after each model, so a long run keeps what it measured
    print(f"wrote {path} ({out['seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
