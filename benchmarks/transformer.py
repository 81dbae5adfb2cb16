"""Compress the zoo's modern models end to end: TinyGPT on Debian's fortunes and ResNet on Fashion-MNIST.

For each model, with the same number of training steps in every run ("retrained as long as dense"):

* ``dense``: no compression;
* ``prune``: ``GradualMagnitudePruning`` (cubic ramp over the middle of training, default selection = every
  weight matrix, the tied LM head once);
* ``share<b>``: ``WeightSharing`` alone at b = 8, 6, 4, 3 bits (clustered late, centroids fine-tuned after);
* ``both``: pruning then sharing at the bit width *chosen on validation*: the smallest b whose share-only
  validation metric (mean over seeds) stays within the tolerance of dense;
* ``factorize``: ``LowRankFactorization(param_ratio=0.5)`` mid-fit, then fine-tuning.

Measured per run: the real file ratio (bytes of the uncompressed model's tensors, each storage once, over the
bytes of the file ``save_compressed`` writes for the trained model), the
monitor's estimate, validation perplexity (TinyGPT, ``exp(val_loss)``) or accuracy (ResNet), and the test
metric once at the end (never used for a choice). Per-step CPU time (``time.process_time``, one thread) of
TinyGPT with pruning + sharing active vs without, in interleaved short fits (median per step).

Usage::

    python benchmarks/transformer.py --quick                 # < 1 min: tiny models, 1 seed, few steps
    python benchmarks/transformer.py --models tinygpt        # full TinyGPT part (3 seeds)
    python benchmarks/transformer.py --models resnet         # full ResNet part (3 seeds)
    python benchmarks/transformer.py --merge benchmarks/results/transformer_tinygpt.json \
        benchmarks/results/transformer_resnet.json             # -> benchmarks/results/transformer.json

Results go to ``benchmarks/results/transformer[_quick][_<models>].json`` and a table on stdout.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from _common import meta, parser, trainer as quiet_trainer, write_json

from lightning_compress import (
    GradualMagnitudePruning,
    LowRankFactorization,
    WeightSharing,
    model_stats,
    save_compressed,
)
from lightning_compress.zoo import FashionMNISTDataModule, ResNet, TextDataModule, TinyGPT

BITS = (8, 6, 4, 3)

#: Sizes. "epochs" x "batches" = training steps of every run; prune ramps over [prune_start, prune_end) epochs,
#: sharing clusters at "share_epoch", factorization happens at "factorize_epoch".
SETUPS = {
    "tinygpt": {
        "full": dict(model=dict(d_model=64, n_layers=2, n_heads=4, context=64, lr=3e-3), batch=32, epochs=3,
                     batches=80, val_batches=30, sparsity=0.6, prune_start=0.5, prune_end=1.5, share_epoch=2,
                     factorize_epoch=1, tolerance=0.02),
        "quick": dict(model=dict(d_model=32, n_layers=1, n_heads=2, context=32, lr=3e-3), batch=16, epochs=2,
                      batches=8, val_batches=4, sparsity=0.5, prune_start=0.25, prune_end=0.75, share_epoch=1,
                      factorize_epoch=1, tolerance=0.05),
    },
    "resnet": {
        "full": dict(model=dict(width=8, lr=0.05), batch=128, epochs=3, batches=50, val_batches=20, sparsity=0.7,
                     prune_start=0.5, prune_end=1.5, share_epoch=2, factorize_epoch=1, tolerance=0.005,
                     train_limit=None),
        "quick": dict(model=dict(width=4, lr=0.05), batch=64, epochs=2, batches=6, val_batches=3, sparsity=0.5,
                      prune_start=0.25, prune_end=0.75, share_epoch=1, factorize_epoch=1, tolerance=0.02,
                      train_limit=2000),
    },
}


def make(name: str, cfg: dict, seed: int):
    pl.seed_everything(seed, verbose=False)
    if name == "tinygpt":
        m = cfg["model"]
        model = TinyGPT(lr_scheduler="cosine", **m)
        data = TextDataModule(context=m["context"], batch_size=cfg["batch"], seed=42)
    else:
        model = ResNet(lr_scheduler="cosine", optimizer="sgd", **cfg["model"])
        data = FashionMNISTDataModule(batch_size=cfg["batch"], download=False, train_limit=cfg.get("train_limit"))
    return model, data


def callbacks_for(method: str, cfg: dict, bits: int | None) -> list:
    prune = lambda: GradualMagnitudePruning(  # noqa: E731
        cfg["sparsity"], start_epoch=cfg["prune_start"], end_epoch=cfg["prune_end"],
        update_every=(cfg["prune_end"] - cfg["prune_start"]) / 8, prog_bar=False)
    share = lambda b: WeightSharing(b, start_epoch=cfg["share_epoch"], evaluate=False,  # noqa: E731
                                    log_histograms=False)
    if method == "dense":
        return []
    if method == "prune":
        return [prune()]
    if method.startswith("share"):
        return [share(int(method[5:]))]
    if method == "both":
        return [prune(), share(bits)]
    if method == "factorize":
        return [LowRankFactorization(param_ratio=0.5, epoch=cfg["factorize_epoch"], evaluate=False, verbose=False,
                                     save_checkpoint=False)]
    raise ValueError(method)


def trainer_for(cfg: dict, callbacks: list, epochs: int | None = None, batches: int | None = None) -> pl.Trainer:
    return quiet_trainer(epochs or cfg["epochs"], callbacks, limit_train_batches=batches or cfg["batches"],
                         limit_val_batches=cfg["val_batches"], limit_test_batches=cfg["val_batches"])


def metric(name: str, metrics: dict, stage: str) -> float:
    """Validation/test perplexity (TinyGPT) or accuracy (ResNet)."""
    if name == "tinygpt":
        return math.exp(float(metrics[f"{stage}_loss"]))
    return float(metrics[f"{stage}_acc"])


def run(name: str, method: str, cfg: dict, seed: int, bits: int | None = None) -> dict:
    model, data = make(name, cfg, seed)
    trainer = trainer_for(cfg, callbacks_for(method, cfg, bits))
    start = time.process_time()
    trainer.fit(model, data)
    train_cpu = time.process_time() - start
    val = metric(name, trainer.validate(model, data, verbose=False)[0], "val")
    test = metric(name, trainer.test(model, data, verbose=False)[0], "test")  # recorded once, never used to choose
    with tempfile.TemporaryDirectory() as tmp:
        report = save_compressed(model, os.path.join(tmp, "m.lcz"), compare_gzip=False)
    stats = model_stats(model)
    dense = dense_bytes(make(name, cfg, seed)[0])
    return dict(model=name, method=method, seed=seed, bits=bits, val=val, test=test, file_bytes=report.file_bytes,
                dense_bytes=dense, file_ratio=dense / report.file_bytes, estimated_ratio=stats.ratio, sparsity=stats.sparsity,
                steps=trainer.global_step, train_cpu_s=train_cpu)


def dense_bytes(model: torch.nn.Module) -> int:
    """Bytes of the uncompressed model's tensors as ``torch.save`` stores them: each storage once (a tied
    embedding/LM head counts once), float32 weights, buffers included. The reference of every file ratio."""
    seen: dict[int, int] = {}
    for t in model.state_dict().values():
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


class StepTimer(pl.Callback):
    """CPU time of each training step (forward, backward, optimizer step and every post-step hook)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, *args) -> None:
        self._t0 = time.process_time()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.process_time() - self._t0)


def step_overhead(cfg: dict, repeats: int, steps: int, warmup: int) -> dict:
    """Median per-step CPU time of TinyGPT with pruning + sharing active vs dense, in interleaved fits."""
    timing = dict(cfg, prune_start=0.0, prune_end=warmup / 2 / steps, share_epoch=None)
    out: dict[str, list[float]] = {"dense": [], "prune+share": []}
    for r in range(repeats):
        for kind in ("dense", "prune+share"):
            model, data = make("tinygpt", cfg, seed=100 + r)
            timer = StepTimer()
            cbs = [timer]
            if kind != "dense":
                cbs = [GradualMagnitudePruning(cfg["sparsity"], start_epoch=0.0, end_epoch=timing["prune_end"],
                                               update_every=timing["prune_end"] / 4, prog_bar=False),
                       WeightSharing(4, start_step=warmup // 2 + 1, evaluate=False, log_histograms=False), timer]
            trainer = trainer_for(cfg, cbs, epochs=1, batches=steps)
            trainer.limit_val_batches = 0
            trainer.fit(model, data)
            out[kind].extend(timer.times[warmup:])
    dense, both = statistics.median(out["dense"]), statistics.median(out["prune+share"])
    return dict(dense_step_cpu_s=dense, compressed_step_cpu_s=both, overhead=both / dense,
                steps_measured=len(out["dense"]), repeats=repeats)


def summarize(rows: list[dict]) -> dict:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"]), []).append(r)
    out = {}
    for (name, method), rs in groups.items():
        def mean(key):
            return statistics.fmean(r[key] for r in rs)

        def sd(key):
            return statistics.stdev([r[key] for r in rs]) if len(rs) > 1 else 0.0

        out[f"{name}/{method}"] = dict(model=name, method=method, bits=rs[0]["bits"], seeds=len(rs),
                                       val=mean("val"), val_sd=sd("val"), test=mean("test"),
                                       file_ratio=mean("file_ratio"), estimated_ratio=mean("estimated_ratio"),
                                       sparsity=mean("sparsity"), file_bytes=mean("file_bytes"))
    return out


def choose_bits(name: str, summary: dict, tolerance: float) -> int:
    """Smallest share-only bit width whose mean validation metric is within ``tolerance`` of dense."""
    dense = summary[f"{name}/dense"]["val"]
    for b in sorted(BITS):
        v = summary[f"{name}/share{b}"]["val"]
        ok = v <= dense * (1 + tolerance) if name == "tinygpt" else v >= dense - tolerance
        if ok:
            return b
    return max(BITS)


#: The issue's goals (validation, mean of the seeds, same steps as dense).
GOALS = {"tinygpt": dict(min_ratio=8.0, max_ppl_increase=0.05), "resnet": dict(min_ratio=20.0, max_acc_drop=0.005),
         "overhead": 1.10}


def goals(summary: dict, timing: dict | None) -> dict:
    """For each model: the best real file ratio among configurations within the quality budget, and whether
    it reaches the goal; the step-time overhead against its goal."""
    out: dict = {}
    for name, goal in (("tinygpt", GOALS["tinygpt"]), ("resnet", GOALS["resnet"])):
        dense = summary.get(f"{name}/dense")
        if dense is None:
            continue
        rows = [s for s in summary.values() if s["model"] == name]
        if name == "tinygpt":
            ok = [s for s in rows if s["val"] <= dense["val"] * (1 + goal["max_ppl_increase"])]
        else:
            ok = [s for s in rows if s["val"] >= dense["val"] - goal["max_acc_drop"]]
        best = max(ok, key=lambda s: s["file_ratio"]) if ok else None
        top = max(rows, key=lambda s: s["file_ratio"])
        out[name] = dict(goal_ratio=goal["min_ratio"], best_within_budget=best and best["method"],
                         best_ratio_within_budget=best and best["file_ratio"], met=bool(best and
                         best["file_ratio"] >= goal["min_ratio"]), highest_ratio_method=top["method"],
                         highest_ratio=top["file_ratio"], highest_ratio_val=top["val"], dense_val=dense["val"])
    if timing:
        out["overhead"] = dict(goal=GOALS["overhead"], measured=timing["overhead"],
                               met=timing["overhead"] <= GOALS["overhead"])
    return out


def structure(name: str, cfg: dict) -> dict:
    """Where a model's bytes are, from a fresh instance: the selected weight matrices, the other tensors stored
    at 32 bits (biases, norms, BatchNorm statistics), and the extra raw copies of tied tensors the exporter
    writes under their alias names. ``max_ratio_if_weights_free``: the ratio if every weight matrix cost 0."""
    from lightning_compress.core.targets import find_targets

    model = make(name, cfg, 0)[0]
    targets = find_targets(model)
    weights = 4 * sum(t.param.numel() for t in targets)
    total = dense_bytes(model)
    alias_copies = 4 * sum(t.param.numel() * len(t.aliases) for t in targets)
    return dict(dense_bytes=total, weight_bytes=weights, other_bytes=total - weights, tied_alias_copy_bytes=alias_copies,
                max_ratio_if_weights_free=total / (total - weights + alias_copies))


def merge(paths: list[str], out: Path) -> None:
    """One result file from the per-model runs (``--models tinygpt`` and ``--models resnet`` run in parallel)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    rows = [r for d in parts for r in d["runs"]]
    timing = next((d["step_time"] for d in parts if d.get("step_time")), None)
    summary = summarize(rows)
    merged = dict(parts[0]["meta"], merged_from=[Path(p).name for p in paths],
                setups={k: v for d in parts for k, v in d["meta"]["setups"].items()},
                wall_s=sum(d["meta"]["wall_s"] for d in parts))
    result = dict(meta=merged, chosen_bits={k: v for d in parts for k, v in d["chosen_bits"].items()},
                  summary=summary, goals=goals(summary, timing), step_time=timing,
                  structure={n: structure(n, cfg) for n, cfg in merged["setups"].items()}, runs=rows)
    write_json(out, result)
    print(table(summary))
    print(json.dumps(result["goals"], indent=1))
    print(f"wrote {out}")


def table(summary: dict) -> str:
    lines = ["| model | method | seeds | val metric (mean ± sd) | test metric | file ratio | estimated ratio | sparsity |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in summary.values():
        unit = "ppl" if s["model"] == "tinygpt" else "acc"
        method = s["method"] + (f" ({s['bits']} bits)" if s["method"] == "both" else "")
        lines.append(f"| {s['model']} | {method} | {s['seeds']} | {unit} {s['val']:.4f} ± {s['val_sd']:.4f} | "
                     f"{s['test']:.4f} | {s['file_ratio']:.2f}x | {s['estimated_ratio']:.2f}x | {s['sparsity']:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = parser(__doc__, quick_help="tiny models, one seed (0), a few steps (< 1 min)", seeds=(0, 1, 2))
    p.set_defaults(seeds=None)  # 0 1 2, or 0 alone with --quick
    p.add_argument("--models", default="tinygpt,resnet", help="comma-separated: tinygpt, resnet")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="combine per-model result files into <out>/transformer.json and exit")
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out / "transformer.json")
        return 0
    torch.set_num_threads(1)  # CPU time per step comparable between runs on a shared machine
    mode = "quick" if args.quick else "full"
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    wall = time.time()
    rows: list[dict] = []
    chosen: dict[str, int] = {}
    timing = None
    for name in names:
        cfg = SETUPS[name][mode]
        for method in ["dense", "prune", *[f"share{b}" for b in BITS], "factorize"]:
            for seed in seeds:
                rows.append(run(name, method, cfg, seed))
                print(f"{name} {method} seed {seed}: val {rows[-1]['val']:.4f}, file {rows[-1]['file_ratio']:.2f}x",
                      flush=True)
        chosen[name] = choose_bits(name, summarize(rows), cfg["tolerance"])
        for seed in seeds:
            rows.append(run(name, "both", cfg, seed, bits=chosen[name]))
        if name == "tinygpt":
            timing = step_overhead(cfg, repeats=1 if args.quick else 3, steps=24 if args.quick else 60,
                                   warmup=12 if args.quick else 20)
    summary = summarize(rows)
    print(table(summary))
    if timing:
        print(f"TinyGPT step CPU time: dense {timing['dense_step_cpu_s'] * 1e3:.1f} ms, pruning + sharing "
              f"{timing['compressed_step_cpu_s'] * 1e3:.1f} ms -> {timing['overhead']:.3f}x")
    result = dict(
        meta=meta(args, benchmark="transformer", mode=mode, seeds=len(seeds), seed_values=seeds, threads=1,
                  wall_s=time.time() - wall, setups={n: SETUPS[n][mode] for n in names}),
        chosen_bits=chosen, summary=summary, goals=goals(summary, timing), step_time=timing, runs=rows,
    )
    suffix = ("_quick" if args.quick else "") + ("" if len(names) == 2 else "_" + "_".join(names))
    out = write_json(args.out / f"transformer{suffix}.json", result)
    print(f"wrote {out} in {time.time() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
