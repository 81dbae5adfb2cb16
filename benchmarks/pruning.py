"""Gradual magnitude pruning vs Lightning's ``ModelPruning``, and the per-step cost of holding masks.

1. Accuracy: LeNet-300-100 on Fashion-MNIST, dense vs ``GradualMagnitudePruning`` (cubic, mask updates
   every ``--update-every`` epochs) vs Lightning's ``ModelPruning`` (``l1_unstructured``, layer-wise,
   pruning at every epoch end along the *same* cubic cumulative targets, lottery-ticket reset off,
   made permanent at the end), at 90 / 95 / 98 % weight sparsity, same epochs, same optimizer.
   Reports test accuracy and the achieved sparsity of the final weights.
2. Step time: median train-step time (first ``on_train_batch_start`` to last ``on_train_batch_end``, so
   it includes every per-step hook) at 90 % sparsity with masks held vs dense, on LeNet-300-100 (batch
   128) and a CIFAR-style ResNet-18 (11.2M weights, 32x32 random inputs), variants interleaved. Measured
   as process CPU time with one torch thread (robust to other jobs on a shared machine; wall time is
   reported too). Our mask updates happen in the warm-up epoch and are timed on their own.

    python benchmarks/pruning.py --quick          # smoke run, ~2 minutes on 2 cores
    python benchmarks/pruning.py --epochs 10      # full comparison

Writes ``benchmarks/results/pruning.json`` (``pruning_quick.json`` with ``--quick``). ``fit_seconds`` is wall
time and only meaningful on an otherwise idle machine. Runs committed so far (2 shared CPU cores):
``pruning.json`` = ``--epochs 6 --train-limit 20000 --timing-reps 2 --resnet-steps 6``;
``pruning_fashion_10ep.json`` = ``--epochs 10 --skip-timing --tag _fashion_10ep`` (full 55k training split).
``pruning_timing.json`` = ``--skip-accuracy --timing-reps 3 --resnet-steps 8 --tag _timing`` (a second timing run;
the spread between the two, a few percent, is the machine's noise).
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning.pytorch as pl
import torch
from _common import meta, parser, result_path, trainer as quiet_trainer, write_json
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import GradualMagnitudePruning
from lightning_compress.schedules import CubicSchedule, PolynomialSchedule
from lightning_compress.zoo import LeNet300100
from lightning_compress.zoo.data import FashionMNISTDataModule

SPARSITIES = (0.90, 0.95, 0.98)


def trainer(callbacks, max_epochs=None, max_steps=-1, **kw) -> pl.Trainer:
    return quiet_trainer(max_epochs, callbacks, max_steps=max_steps, **kw)


# ------------------------------------------------------------------------------------------- accuracy
def lightning_amounts(final: float, start: float, ramp_epochs: int):
    """Per-epoch ``amount`` (fraction of what remains) so ModelPruning follows our cubic absolute targets."""
    cubic = CubicSchedule(start=start, end=ramp_epochs, final_sparsity=final)

    def amount(epoch: int) -> float:  # called at the end of epoch `epoch`
        if epoch >= ramp_epochs:
            return 0.0
        before, after = cubic(epoch), cubic(epoch + 1)
        return 1.0 - (1.0 - after) / (1.0 - before)

    return amount


def weight_sparsity(model: nn.Module) -> float:
    ws = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def run_accuracy(method: str, sparsity: float, args, dm) -> dict:
    pl.seed_everything(args.seeds[0], verbose=False)
    model = LeNet300100(optimizer="sgd", lr=args.lr, momentum=0.9, weight_decay=1e-4, lr_scheduler="cosine")
    ramp = max(1, round(args.epochs * args.ramp))
    if not args.start <= ramp:
        raise ValueError(f"--start ({args.start}) must not be after the end of the ramp (epoch {ramp})")
    callbacks = []
    if method == "ours":
        callbacks.append(GradualMagnitudePruning(sparsity, start_epoch=args.start, end_epoch=ramp,
                                                 update_every=args.update_every, prog_bar=False))
    elif method == "lightning":
        callbacks.append(ModelPruning(
            "l1_unstructured", parameters_to_prune=[(model.fc1, "weight"), (model.fc2, "weight"), (model.fc3, "weight")],
            use_global_unstructured=False, amount=lightning_amounts(sparsity, args.start, ramp),
            use_lottery_ticket_hypothesis=False, make_pruning_permanent=True, verbose=0,
        ))
    t = trainer(callbacks, max_epochs=args.epochs, limit_val_batches=0)
    start = time.perf_counter()
    t.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - start
    test = t.test(model, datamodule=dm, verbose=False)[0]
    return {"method": method, "target_sparsity": sparsity, "test_acc": test["test_acc"],
            "achieved_sparsity": weight_sparsity(model), "fit_seconds": fit_s}


# ------------------------------------------------------------------------------------------- step time
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet18(pl.LightningModule):
    """CIFAR-style ResNet-18: 3x3 stem, [2, 2, 2, 2] basic blocks, 64-512 channels (11.2M parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


class StepTimer:
    """Two callbacks: ``first`` starts the clocks before any other hook, ``last`` stops them after all.

    Records wall time and process CPU time; with one torch thread the CPU time is far less sensitive to
    other jobs sharing the machine, so it is the primary measure.
    """

    def __init__(self, skip: int) -> None:
        self.skip, self.wall, self.cpu, self._t0 = skip, [], [], (0.0, 0.0)
        timer = self

        class First(Callback):
            def on_train_batch_start(self, *a):
                timer._t0 = (time.perf_counter(), time.process_time())

        class Last(Callback):
            def on_train_batch_end(self, trainer, *a):
                if trainer.global_step > timer.skip:
                    timer.wall.append(time.perf_counter() - timer._t0[0])
                    timer.cpu.append(time.process_time() - timer._t0[1])

        self.first, self.last = First(), Last()


def time_steps(make_model, data, steps: int, warmup: int, pruning=None) -> tuple[StepTimer, list[float]]:
    pl.seed_everything(0, verbose=False)
    model = make_model()
    timer = StepTimer(warmup)
    extra, update_s = [], []
    if pruning is not None:
        cb = pruning(model)
        if isinstance(cb, GradualMagnitudePruning):  # time each mask update on its own
            update = cb.update_masks

            def timed_update(point, _update=update):
                t0 = time.process_time()
                _update(point)
                update_s.append(time.process_time() - t0)

            cb.update_masks = timed_update
        extra.append(cb)
    trainer([timer.first, *extra, timer.last], max_steps=warmup + steps).fit(model, data)
    return timer, update_s


def run_timing(name: str, make_model, data, steps: int, warmup: int, reps: int, final: float) -> dict:
    """Steady-state step time with masks held (all mask updates happen in the warm-up epoch)."""

    def ours(model):
        sched = PolynomialSchedule(start=0, end=warmup - 1, frequency=max(1, (warmup - 1) // 3), unit="step",
                                   final_sparsity=final)
        return GradualMagnitudePruning(schedule=sched, prog_bar=True)

    def lightning(model):
        # prunes once at the end of the warm-up epoch, so its forward pre-hooks run in every timed step
        params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        return ModelPruning("l1_unstructured", parameters_to_prune=params, use_global_unstructured=False,
                            amount=lambda epoch: final if epoch == 0 else 0.0,
                            use_lottery_ticket_hypothesis=False, verbose=0)

    variants = {"dense": None, "ours": ours, "lightning_modelpruning": lightning}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    updates: list[float] = []
    time_steps(make_model, data, 2, warmup)  # untimed: first-fit costs (allocator, kernels) hit no variant
    keys = list(variants)
    for rep in range(reps):  # interleaved, order rotated, so machine noise hits all variants alike
        for key in keys[rep % len(keys):] + keys[: rep % len(keys)]:
            fn = variants[key]
            timer, up = time_steps(make_model, data, steps, warmup, fn)
            cpu[key] += timer.cpu
            wall[key] += timer.wall
            updates += up
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    return {
        "model": name, "steps_timed_per_variant": len(cpu["dense"]),
        "median_step_cpu_s": med_cpu, "median_step_wall_s": med_wall,
        "ratio_cpu_vs_dense": {k: med_cpu[k] / med_cpu["dense"] for k in med_cpu},
        "ratio_wall_vs_dense": {k: med_wall[k] / med_wall["dense"] for k in med_wall},
        "ours_mask_update_cpu_s_median": statistics.median(updates) if updates else None,
        "ours_mask_updates_timed": len(updates),
    }


def random_loader(shape, n: int, batch: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)),
                      batch_size=batch)


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    p = parser(__doc__, quick_help="smoke run: 2 epochs on 3k images, few timed steps")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--ramp", type=float, default=0.6, help="fraction of epochs spent pruning (rest fine-tunes)")
    p.add_argument("--update-every", type=float, default=0.1, help="our mask update period, in epochs")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the accuracy runs (more spin on a busy machine)")
    p.add_argument("--timing-threads", type=int, default=1, help="torch threads while timing (CPU time is exact at 1)")
    p.add_argument("--timing-reps", type=int, default=3)
    p.add_argument("--resnet-steps", type=int, default=8)
    p.add_argument("--start", type=float, default=1.0, help="epoch at which pruning starts (both methods)")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--tag", default="", help="suffix of the result file name (pruning{tag}[_quick].json)")
    args = p.parse_args()
    if len(args.seeds) != 1:
        p.error("--seeds: this script runs one seed per call (use --tag to keep runs apart)")
    if args.quick:
        args.epochs, args.train_limit, args.test_limit = 2, args.train_limit or 3000, args.test_limit or 2000
        args.start, args.timing_reps, args.resnet_steps = 0.5, 1, 3
    torch.set_num_threads(args.threads)
    report: dict = {"meta": meta(args)}

    if not args.skip_accuracy:
        dm = FashionMNISTDataModule(batch_size=args.batch_size, train_limit=args.train_limit,
                                    test_limit=args.test_limit, download=False)
        rows = [run_accuracy("dense", 0.0, args, dm)]
        for s in SPARSITIES:
            rows += [run_accuracy("ours", s, args, dm), run_accuracy("lightning", s, args, dm)]
        report["accuracy"] = rows
        print(f"\nFashion-MNIST LeNet-300-100, {args.epochs} epochs, cubic ramp from epoch {args.start:g} to "
              f"{max(1, round(args.epochs * args.ramp))}, train_limit={args.train_limit}, test_limit={args.test_limit}")
        print(f"{'method':<22}{'target':>8}{'achieved':>10}{'test acc':>10}{'fit s':>8}")
        for r in rows:
            print(f"{r['method']:<22}{r['target_sparsity']:>8.2f}{r['achieved_sparsity']:>10.4f}"
                  f"{r['test_acc']:>10.4f}{r['fit_seconds']:>8.1f}")

    if not args.skip_timing:
        torch.set_num_threads(args.timing_threads)
        lenet_steps = 15 if args.quick else 60
        resnet_batch = 8 if args.quick else 32
        report["timing"] = [
            # one epoch = the warm-up steps; timing starts after it
            run_timing("LeNet-300-100 (batch 128)", LeNet300100, random_loader((1, 28, 28), 128 * 5, 128),
                       steps=lenet_steps, warmup=5, reps=args.timing_reps, final=0.9),
            run_timing(f"ResNet-18 CIFAR (batch {resnet_batch}, 32x32)", ResNet18,
                       random_loader((3, 32, 32), resnet_batch * 4, resnet_batch),
                       steps=args.resnet_steps, warmup=4, reps=args.timing_reps, final=0.9),
        ]
        print(f"\nTrain-step time at 90% sparsity vs dense ({args.timing_threads} thread; medians; masks held)")
        print(f"{'model':<36}{'variant':<24}{'cpu ms':>10}{'ratio':>8}{'wall ratio':>12}")
        for r in report["timing"]:
            for k in r["median_step_cpu_s"]:
                print(f"{r['model']:<36}{k:<24}{1000 * r['median_step_cpu_s'][k]:>10.2f}"
                      f"{r['ratio_cpu_vs_dense'][k]:>8.3f}{r['ratio_wall_vs_dense'][k]:>12.3f}")
            print(f"{'':<36}{'ours: one mask update':<24}{1000 * r['ours_mask_update_cpu_s_median']:>10.2f}")

    out = write_json(result_path(args, f"pruning{args.tag}"), report)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
