"""Deep Compression end to end on Fashion-MNIST: the shipped recipes against dense training, same epochs.

For LeNet-300-100 and LeNet-5 this runs ``examples/configs/deep_compression_<net>_fashion_mnist.yaml``
exactly as ``lightning-compress fit --config`` would (gradual pruning -> weight sharing with centroid
fine-tuning -> ``ExportCompressed``), and the same YAML with no callbacks as the dense baseline (same
model, data, optimizer, LR schedule, seed and number of epochs). Reported per network:

* test accuracy of both, and of the model *loaded back from the compressed file* (proves the file is it);
* storage compression ratio = dense float32 bytes / bytes of the exported file on disk (``os.path.getsize``),
  header, codebooks, indices, Huffman tables and raw biases included; the per-layer table of that file;
* the paper's "pruning only / weight sharing only / both" curves (Deep Compression, Fig. 6): accuracy against
  storage ratio when the *trained dense model* is pruned (uniform per-layer sparsity), clustered (k = 2^bits,
  every layer), or both, **without retraining**; each point's ratio is again a real file's size and its
  accuracy that of the model decoded from the file. The retrained pipeline is plotted next to them;
* the per-layer sensitivity of the dense model (``lightning_compress.sensitivity``) next to the recipe's targets.

Goal: >= 40x storage compression with test accuracy at most 0.3 points below the dense baseline.

Usage::

    python benchmarks/deep_compression.py --quick     # smoke run: a few batches per epoch, about a minute
    python benchmarks/deep_compression.py             # full run (2 CPU cores: well under an hour)

Writes ``benchmarks/results/deep_compression[_quick].{json,md}`` (``--out DIR``: elsewhere) and ``..._curves.png``/``..._training.png``
(plots need ``pip install lightning-compress[bench]``, i.e. matplotlib).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, meta, parser, result_path, write_json
from _recipe_run import run_recipe

from lightning_compress.core import masks
from lightning_compress.core.metrics import top1_accuracy
from lightning_compress.core.sharing import cluster_weight
from lightning_compress.core.targets import find_targets, per_target_value
from lightning_compress.export import load_compressed, save_compressed
from lightning_compress.sensitivity import analyze_sensitivity

NETS = {
    "lenet300100": ROOT / "examples" / "configs" / "deep_compression_lenet300100_fashion_mnist.yaml",
    "lenet5": ROOT / "examples" / "configs" / "deep_compression_lenet5_fashion_mnist.yaml",
}
LABELS = {"lenet300100": "LeNet-300-100", "lenet5": "LeNet-5"}
# Deep Compression (Han et al. 2016), Table 1, on MNIST (not Fashion-MNIST): for reference only.
PAPER_MNIST = {
    "lenet300100": {"dense_error": 0.0164, "compressed_error": 0.0158, "ratio": 40},
    "lenet5": {"dense_error": 0.0080, "compressed_error": 0.0074, "ratio": 39},
}
GOAL_RATIO, GOAL_DROP_POINTS = 40.0, 0.3

FULL_CURVES = {
    "sparsities": [0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98],
    "bits": [8, 6, 5, 4, 3, 2],
}
QUICK_CURVES = {"sparsities": [0.9], "bits": [4]}
SENSITIVITY_SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99]


# ---- measuring one compressed variant -----------------------------------------------------------------


def _file_point(model: torch.nn.Module, loader, workdir: str) -> dict:
    """Write ``model`` to a compressed file, decode it into a copy, measure that copy's accuracy."""
    path = os.path.join(workdir, "point.lcz")
    report = save_compressed(model, path, compare_gzip=False)
    assert report.file_bytes == os.path.getsize(path)
    decoded = load_compressed(path, copy.deepcopy(model))
    return {"file_bytes": report.file_bytes, "ratio": report.ratio, "test_acc": top1_accuracy(decoded.eval(), loader),
            "nonzero_fraction": report.nonzeros / report.numel}


def _pruned(model: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    out = copy.deepcopy(model)
    for t in find_targets(out):
        with torch.no_grad():
            masks.apply_mask_(t.param, masks.magnitude_mask(t.param, sparsity))
    return out


def _shared(model: torch.nn.Module, bits) -> torch.nn.Module:
    """Every layer clustered (k-means over its non-zero weights, linear init) with ``bits`` (int or mapping)."""
    out = copy.deepcopy(model)
    targets = find_targets(out)
    per_layer = per_target_value(bits, targets, "benchmark", "bits")
    for t in targets:
        shared = cluster_weight(t.param.detach(), 2 ** per_layer[t.name], init="linear")
        with torch.no_grad():
            t.param.copy_(shared.decode().to(t.param.dtype))
    return out


def tradeoff_curves(dense: torch.nn.Module, loader, recipe_bits, grid: dict, workdir: str) -> dict:
    """Pruning only / sharing only / both, applied to the trained dense model without retraining."""
    dense = dense.eval()
    curves: dict[str, list[dict]] = {"pruning": [], "sharing": [], "both": []}
    for s in grid["sparsities"]:
        curves["pruning"].append({"sparsity": s, **_file_point(_pruned(dense, s), loader, workdir)})
        curves["both"].append({"sparsity": s, "bits": recipe_bits,
                               **_file_point(_shared(_pruned(dense, s), recipe_bits), loader, workdir)})
    for b in grid["bits"]:
        curves["sharing"].append({"bits": b, **_file_point(_shared(dense, b), loader, workdir)})
    return curves


def recipe_settings(recipe: str) -> tuple[object, object]:
    """``final_sparsity`` of the recipe's GradualMagnitudePruning and ``bits`` of its WeightSharing."""
    import yaml

    config = yaml.safe_load(Path(recipe).read_text())
    targets = bits = None
    for cb in config["trainer"]["callbacks"]:
        name = cb["class_path"].rsplit(".", 1)[-1]
        if name == "GradualMagnitudePruning":
            targets = cb["init_args"].get("final_sparsity")
        elif name == "WeightSharing":
            bits = cb["init_args"].get("bits")
    return targets, bits


def _overrides(quick: bool, seed: int = 0) -> list[str]:
    seeded = [] if seed == 0 else [f"--seed_everything={seed}"]  # the recipes' own seed is 0
    if not quick:
        return seeded
    return [*seeded, "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2",
            "--data.init_args.test_limit=1000", "--trainer.num_sanity_val_steps=0"]


# ---- the two halves of one network (independent: they run in parallel with --jobs 2) -------------------


def dense_task(net: str, quick: bool, workdir: str, threads: int, with_sensitivity: bool, seed: int = 0) -> dict:
    """Dense baseline, then what only needs the trained dense model: trade-off curves and sensitivity."""
    torch.set_num_threads(threads)
    recipe = str(NETS[net])
    _, bits = recipe_settings(recipe)
    t0 = time.perf_counter()
    dense = run_recipe(recipe, workdir, f"{net}_dense", dense=True, overrides=_overrides(quick, seed))
    print(f"[{net}] dense: test acc {dense.test_acc:.4f} ({dense.fit_seconds:.0f}s fit)", flush=True)
    out = {"test_acc": dense.test_acc, "fit_seconds": dense.fit_seconds, "history": dense.history,
           "epochs": dense.trainer.max_epochs}
    loader = dense.datamodule.test_dataloader()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t1 = time.perf_counter()
        out["curves"] = tradeoff_curves(dense.model, loader, bits, QUICK_CURVES if quick else FULL_CURVES, tmp)
        out["curves_seconds"] = time.perf_counter() - t1
    print(f"[{net}] curves done ({out['curves_seconds']:.0f}s)", flush=True)
    if with_sensitivity:
        t1 = time.perf_counter()
        sens = analyze_sensitivity(dense.model, dense.datamodule.val_dataloader(),
                                   QUICK_CURVES["sparsities"] if quick else SENSITIVITY_SPARSITIES,
                                   log_dir=os.path.join(workdir, f"{net}_sensitivity"))
        out["sensitivity"] = sens.as_dict(tolerance=0.01)
        out["sensitivity_seconds"] = time.perf_counter() - t1
    out["seconds"] = time.perf_counter() - t0
    return out


def pipeline_task(net: str, quick: bool, workdir: str, threads: int, seed: int = 0) -> dict:
    """The recipe as shipped: fit, test, and the exported file decoded and tested again."""
    torch.set_num_threads(threads)
    recipe = str(NETS[net])
    t0 = time.perf_counter()
    pipe = run_recipe(recipe, workdir, f"{net}_pipeline", overrides=_overrides(quick, seed))
    report = pipe.export
    assert report.file_bytes == os.path.getsize(report.path)
    loader = pipe.datamodule.test_dataloader()
    from_file = top1_accuracy(load_compressed(report.path, copy.deepcopy(pipe.model)).eval(), loader)
    print(f"[{net}] pipeline: test acc {pipe.test_acc:.4f} (from file {from_file:.4f}), file {report.file_bytes:,} "
          f"bytes, {report.ratio:.1f}x ({pipe.fit_seconds:.0f}s fit)", flush=True)
    return {
        "test_acc": pipe.test_acc,
        "test_acc_from_file": from_file,
        "fit_seconds": pipe.fit_seconds,
        "epochs": pipe.trainer.max_epochs,
        "train_batches_per_epoch": int(pipe.trainer.num_training_batches),
        "file_bytes": report.file_bytes,
        "dense_bytes": report.dense_bytes,
        "ratio": report.ratio,
        "nonzero_fraction": report.nonzeros / report.numel,
        "history": pipe.history,
        "table": report.table(),
        "report": report.as_dict(),
        "seconds": time.perf_counter() - t0,
    }


def combine(net: str, quick: bool, dense: dict, pipe: dict, seed: int = 0) -> dict:
    recipe = str(NETS[net])
    targets, bits = recipe_settings(recipe)
    drop = 100 * (dense["test_acc"] - pipe["test_acc"])
    return {
        "recipe": os.path.relpath(recipe, ROOT),
        "overrides": _overrides(quick, seed),
        "epochs": pipe["epochs"],
        "train_batches_per_epoch": pipe["train_batches_per_epoch"],
        "recipe_final_sparsity": targets,
        "recipe_bits": bits,
        "dense": {k: v for k, v in dense.items() if k not in ("curves", "sensitivity")},
        "pipeline": pipe,
        "accuracy_drop_points": drop,
        "goal": {"min_ratio": GOAL_RATIO, "max_drop_points": GOAL_DROP_POINTS,
                 "met": bool(pipe["ratio"] >= GOAL_RATIO and drop <= GOAL_DROP_POINTS)},
        "paper_mnist": PAPER_MNIST[net],
        "curves": dense["curves"],
        **({"sensitivity": dense["sensitivity"]} if "sensitivity" in dense else {}),
    }


# ---- output -------------------------------------------------------------------------------------------


def bits_label(bits) -> str:
    if isinstance(bits, dict):
        return " / ".join(f"{k} {v}" for k, v in bits.items()) + " bits"
    return f"{bits} bits"


def markdown(payload: dict) -> str:
    mode = payload["mode"]
    lines = [
        f"# Deep Compression on Fashion-MNIST ({mode} run)",
        "",
        f"Produced by `python benchmarks/deep_compression.py{' --quick' if mode == 'quick' else ''}` on "
        f"{payload['host']['cpus']} CPU cores ({payload['host']['jobs']} processes x {payload['host']['torch_threads']} "
        f"torch thread(s), machine shared with other jobs), {payload['wall_seconds'] / 60:.1f} minutes in all. Dense baseline and pipeline: the "
        "same recipe YAML, model, optimizer, LR schedule, seed and number of epochs; the dense run has no callbacks.",
        "Ratio = dense float32 bytes / bytes of the exported `.lcz` file on disk (everything included).",
        "",
        "| network | epochs | dense test acc | compressed test acc | from file | drop (points) | file bytes | ratio "
        f"| goal (>= {GOAL_RATIO:g}x, drop <= {GOAL_DROP_POINTS} pt) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for net, r in payload["networks"].items():
        p = r["pipeline"]
        lines.append(
            f"| {LABELS[net]} | {r['epochs']} | {100 * r['dense']['test_acc']:.2f}% | {100 * p['test_acc']:.2f}% | "
            f"{100 * p['test_acc_from_file']:.2f}% | {r['accuracy_drop_points']:+.2f} | {p['file_bytes']:,} | "
            f"**{p['ratio']:.1f}x** | {'met' if r['goal']['met'] else 'not met'} |"
        )
    lines += ["", "Paper, on MNIST (not this data set): LeNet-300-100 40x at 1.58% error (dense 1.64%); "
              "LeNet-5 39x at 0.74% error (dense 0.80%).", ""]
    if payload.get("notes"):
        lines += ["Notes:", "", *(f"- {n}" for n in payload["notes"]), ""]
    for net, r in payload["networks"].items():
        lines += [f"## {LABELS[net]}", "",
                  f"Recipe `{r['recipe']}`" + (f" with `{' '.join(r['overrides'])}`" if r["overrides"] else "")
                  + f"; pruning targets {r['recipe_final_sparsity']}, {bits_label(r['recipe_bits'])}.", "",
                  "### The exported file, per layer", "", r["pipeline"]["table"], "",
                  "### Pruning only / sharing only / both (trained dense model, no retraining)", "",
                  "| method | setting | non-zero % | file bytes | ratio | test acc |", "|---|---|---:|---:|---:|---:|"]
        for method, points in r["curves"].items():
            for pt in points:
                setting = []
                if "sparsity" in pt:
                    setting.append(f"sparsity {pt['sparsity']:g}")
                if "bits" in pt:
                    setting.append(bits_label(pt["bits"]))
                lines.append(f"| {method} | {', '.join(setting)} | {100 * pt['nonzero_fraction']:.1f} | "
                             f"{pt['file_bytes']:,} | {pt['ratio']:.1f}x | {100 * pt['test_acc']:.2f}% |")
        p = r["pipeline"]
        lines += [f"| pipeline (retrained, {r['epochs']} epochs) | recipe | {100 * p['nonzero_fraction']:.1f} | "
                  f"{p['file_bytes']:,} | {p['ratio']:.1f}x | {100 * p['test_acc']:.2f}% |", ""]
        if "sensitivity" in r:
            s = r["sensitivity"]
            lines += ["### Sensitivity of the dense model (one layer pruned at a time, validation accuracy)", "",
                      f"baseline {s['baseline']:.4f}; suggested at 1 point tolerance: {s['suggested_final_sparsity']}",
                      "", "| layer | " + " | ".join(f"{100 * x:g}%" for x in s["sparsities"]) + " |",
                      "|---|" + "---:|" * len(s["sparsities"])]
            for layer, accs in s["curves"].items():
                lines.append(f"| {layer} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def plots(payload: dict, stem: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install lightning-compress[bench]): no plots", flush=True)
        return []
    nets = list(payload["networks"])
    fig, axes = plt.subplots(1, len(nets), figsize=(6.5 * len(nets), 4.6), squeeze=False)
    for ax, net in zip(axes[0], nets):
        r = payload["networks"][net]
        for method, style in (("pruning", "o-"), ("sharing", "s-"), ("both", "^-")):
            pts = sorted(r["curves"][method], key=lambda p: p["ratio"])
            ax.plot([p["ratio"] for p in pts], [100 * p["test_acc"] for p in pts], style,
                    label={"pruning": "pruning only", "sharing": "weight sharing only",
                           "both": f"pruning + sharing ({bits_label(r['recipe_bits'])})"}[method])
            for pt in pts:
                note = f"{100 * pt['sparsity']:g}%" if method == "pruning" else (
                    f"{pt['bits']}b" if method == "sharing" else "")
                if note:
                    ax.annotate(note, (pt["ratio"], 100 * pt["test_acc"]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        ax.axhline(100 * r["dense"]["test_acc"], color="gray", ls="--", lw=1, label="dense baseline")
        p = r["pipeline"]
        ax.plot([p["ratio"]], [100 * p["test_acc"]], "r*", ms=15, label=f"recipe, retrained ({p['ratio']:.0f}x)")
        ax.set_xscale("log")
        ax.set_xlabel("storage compression ratio (real file size)")
        ax.set_ylabel("test accuracy (%)")
        low = min(100 * p["test_acc"] for m in r["curves"].values() for p in m)
        ax.set_ylim(max(low - 2, 100 * r["dense"]["test_acc"] - 30), 100 * r["dense"]["test_acc"] + 2)
        ax.set_title(f"{LABELS[net]}, Fashion-MNIST (curves: no retraining)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    curves = f"{stem}_curves.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(nets), figsize=(6.5 * len(nets), 4.2), squeeze=False)
    for ax, net in zip(axes[0], nets):
        r = payload["networks"][net]
        for kind, color in (("dense", "gray"), ("pipeline", "tab:blue")):
            h = r[kind]["history"]
            ax.plot([e["epoch"] for e in h], [100 * e["val_acc"] for e in h], "o-", color=color, label=f"{kind} val acc")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        twin = ax.twinx()
        h = r["pipeline"]["history"]
        twin.plot([e["epoch"] for e in h], [100 * e["sparsity"] for e in h], "--", color="tab:orange", label="sparsity")
        twin.set_ylabel("sparsity (%)")
        twin.set_ylim(0, 100)
        ax.set_title(f"{LABELS[net]}: training")
        ax.grid(True, alpha=0.3)
        lines = ax.get_legend_handles_labels()
        extra = twin.get_legend_handles_labels()
        ax.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8, loc="lower right")
    fig.tight_layout()
    training = f"{stem}_training.png"
    fig.savefig(training, dpi=110)
    plt.close(fig)
    return [curves, training]


def main(argv=None) -> int:
    ap = parser(__doc__, quick_help="smoke run (about a minute): 6 batches per epoch, 1,000 test images")
    ap.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    ap.add_argument("--jobs", type=int, default=2,
                    help="processes (default 2, one per core): dense and pipeline runs are independent")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "bench_deep_compression"),
                    help="TensorBoard logs, checkpoints and compressed files")
    ap.add_argument("--no-sensitivity", action="store_true", help="skip the per-layer sensitivity analysis")
    ap.add_argument("--name", default=None, help="results file stem (default deep_compression[_quick])")
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="only rewrite the Markdown and plots of an existing results JSON (no training)")
    args = ap.parse_args(argv)
    if args.from_json:
        payload = json.loads(Path(args.from_json).read_text())
        stem = Path(args.from_json).with_suffix("")
        Path(f"{stem}.md").write_text(markdown(payload))
        print("wrote " + ", ".join([f"{stem}.md", *plots(payload, stem)]))
        return 0
    if args.jobs < 1 or args.threads < 1:
        ap.error("--jobs and --threads must be >= 1")
    if len(args.seeds) != 1:
        ap.error("--seeds: this benchmark runs one seed per invocation (use --name to keep each seed's files)")
    seed = args.seeds[0]
    start = time.perf_counter()
    mode = "quick" if args.quick else "full"
    workdir = os.path.join(args.workdir, mode)
    os.makedirs(workdir, exist_ok=True)
    payload = {
        "benchmark": "deep_compression",
        "mode": mode,
        "dataset": "Fashion-MNIST (55,000 train / 5,000 validation / 10,000 test)",
        "host": {"cpus": os.cpu_count(), "jobs": args.jobs, "torch_threads": args.threads},
        "meta": meta(args),
        "networks": {},
    }
    stem = args.out / args.name if args.name else result_path(args, "deep_compression", suffix="")
    args.out.mkdir(parents=True, exist_ok=True)
    # Longest first (LeNet-5) so two workers finish together.
    tasks = [(net, kind) for net in sorted(args.nets, key=lambda n: n != "lenet5") for kind in ("pipeline", "dense")]
    results: dict[tuple[str, str], dict] = {}

    def call(run, net, kind):
        if kind == "dense":
            return run(dense_task, net, args.quick, workdir, args.threads, not args.no_sensitivity, seed)
        return run(pipeline_task, net, args.quick, workdir, args.threads, seed)

    if args.jobs == 1:
        torch.set_num_threads(args.threads)
        for net, kind in tasks:
            results[(net, kind)] = call(lambda f, *a: f(*a), net, kind)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {call(pool.submit, net, kind): (net, kind) for net, kind in tasks}
            for future, key in futures.items():
                results[key] = future.result()
    for net in args.nets:
        payload["networks"][net] = combine(net, args.quick, results[(net, "dense")], results[(net, "pipeline")], seed)
    payload["wall_seconds"] = time.perf_counter() - start
    write_json(Path(f"{stem}.json"), payload)
    text = markdown(payload)
    Path(f"{stem}.md").write_text(text)
    written = [f"{stem}.json", f"{stem}.md", *plots(payload, stem)]
    print(text)
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
