"""MkDocs hook: the results page is filled from ``benchmarks/results/`` at build time.

``docs/results.md`` holds the prose and markers such as ``<!-- results:pruning -->``; each marker is replaced
by tables rendered from the benchmark's JSON (or, for the end-to-end benchmark, its own Markdown report), and
every ``benchmarks/results/*.png`` is published as ``img/results/<name>.png``. So the page always shows the
numbers of the files committed next to it, and never a number that is not in them. Every result file is shown
except a ``--quick`` smoke run whose full run exists; the page says which kind each one is.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MARKER = re.compile(r"<!-- results:([\w-]+) -->")
log = logging.getLogger("mkdocs.hooks.results")

# On MNIST: Deep Compression (Han, Mao, Dally, ICLR 2016, arXiv:1510.00149, Tables 1-3: ratios, errors, per-layer
# kept weights and bits, which repeat Han et al., NeurIPS 2015, arXiv:1506.02626, Table 2) and the best published
# ratios, soft weight sharing (Ullrich, Meeds, Welling, ICLR 2017, arXiv:1702.04008, Table 1).
PAPER = {
    "lenet300100": {"label": "LeNet-300-100", "weights": "266K", "dense_error": 1.64, "dc_ratio": 40, "dc_error": 1.58,
                    "dc_steps": "prune 12x, + quantization 32x, + Huffman 40x", "best_ratio": 64, "best_error": 1.94,
                    "kept": "8% / 9% / 26% (fc1 / fc2 / fc3)", "bits": "6 everywhere"},
    "lenet5": {"label": "LeNet-5", "weights": "431K", "dense_error": 0.80, "dc_ratio": 39, "dc_error": 0.74,
               "dc_steps": "", "best_ratio": 162, "best_error": 0.97,
               "kept": "66% / 12% / 8% / 19% (conv1 / conv2 / fc1 / fc2)", "bits": "conv 8, fc 5"},
}


# ---- helpers -----------------------------------------------------------------------------------------------


def select(prefix: str) -> list[Path]:
    """The result files of one benchmark: every ``<prefix>*.json`` except a quick run whose full run exists.

    ``export_quick.json`` is left out when ``export.json`` exists; ``export_quick_oneshot.json`` stays until an
    ``export_oneshot.json`` does.
    """
    found = sorted(RESULTS.glob(f"{prefix}*.json"))
    return [p for p in found if "_quick" not in p.stem or not (p.parent / p.name.replace("_quick", "")).exists()]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def is_quick(data: dict, path: Path) -> bool:
    meta = data.get("meta", {}) if isinstance(data.get("meta"), dict) else {}
    flags = [data.get("quick"), meta.get("quick"), data.get("mode") == "quick" if "mode" in data else None,
             (data.get("config") or {}).get("quick") if isinstance(data.get("config"), dict) else None]
    known = [f for f in flags if f is not None]
    return bool(known[0]) if known else path.stem.endswith("_quick")


def source(path: Path, data: dict) -> str:
    kind = ("a **quick** smoke run (`--quick`: few batches, small splits; not the final numbers)"
            if is_quick(data, path) else "a **full** run")
    return f"Source: `benchmarks/results/{path.name}`, {kind}."


def pct(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * float(x):.{digits}f}%"


def num(x: Any, fmt: str = ",") -> str:
    if x is None:
        return "n/a"
    return format(x, fmt)


def ratio(x: Any, digits: int = 1) -> str:
    return "n/a" if x is None else f"{float(x):.{digits}f}x"


def table(head: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "|".join("---" if i == 0 else "---:" for i in range(len(head)))
    lines = ["| " + " | ".join(head) + " |", "|" + align + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def note(text: str) -> str:
    """A benchmark's own note, quoted, with Markdown's emphasis characters escaped."""
    return "> Note from the file: " + re.sub(r"([*_`])", r"\\\1", str(text))


def image(name: str, alt: str) -> str:
    return f"![{alt}](img/results/{name})" if (RESULTS / name).is_file() else ""


def missing(what: str, command: str) -> str:
    return f"*Not measured yet:* no `{what}` in `benchmarks/results/` (run `{command}`)."


# ---- sections ----------------------------------------------------------------------------------------------


def render_paper() -> str:
    rows = [[p["label"], p["weights"], f"{p['dense_error']:.2f}%",
             f"{p['dc_ratio']}x at {p['dc_error']:.2f}%" + (f" ({p['dc_steps']})" if p["dc_steps"] else ""),
             f"{p['best_ratio']}x at {p['best_error']:.2f}% (soft weight sharing)", p["kept"], p["bits"]]
            for p in PAPER.values()]
    return table(["model (MNIST)", "weights", "dense error", "Deep Compression", "best known", "kept weights",
                  "bits"], rows, "---|---:|---:|---|---|---|---")


def render_deep_compression() -> str:
    paths = select("deep_compression")
    if not paths:
        return missing("deep_compression.json", "python benchmarks/deep_compression.py")
    return "\n\n".join(render_deep_compression_file(path) if "networks" in load(path) else render_runs_file(path)
                       for path in paths)


def render_runs_file(path: Path) -> str:
    """A file of separate runs (``{"what": ..., "runs": [...]}``), e.g. the recipe-tuning runs."""
    data = load(path)
    out = [source(path, data) + (f" {data['what']}" if data.get("what") else ""), ""]
    rows = []
    for r in data.get("runs", []):
        settings = r.get("settings", "")
        if isinstance(settings, dict):
            settings = "; ".join(f"{k}: {v}" for k, v in settings.items())
        drop = r.get("accuracy_drop_points")
        rows.append([r.get("name", "n/a"), str(r.get("epochs", "n/a")), pct(r.get("test_acc")),
                     "" if drop is None else f"{drop:+.2f}", num(r.get("file_bytes")) if "file_bytes" in r else "",
                     ratio(r.get("ratio")) if "ratio" in r else "", str(settings).replace("|", "/")])
    out += [table(["run", "epochs", "test acc", "drop (points)", "file bytes", "ratio", "settings"], rows,
                  "---|---:|---:|---:|---:|---:|---"), ""]
    return "\n".join(out)


def render_deep_compression_file(path: Path) -> str:
    data = load(path)
    out = [source(path, data), ""]
    rows = []
    for net, r in data.get("networks", {}).items():
        paper = PAPER.get(net, {})
        p, d = r.get("pipeline", {}), r.get("dense", {})
        goal = r.get("goal", {})
        rows.append([paper.get("label", net), "Fashion-MNIST (this package)", str(r.get("epochs", "n/a")),
                     pct(d.get("test_acc")), pct(p.get("test_acc")),
                     "n/a" if r.get("accuracy_drop_points") is None else f"{r['accuracy_drop_points']:+.2f}",
                     ratio(p.get("ratio")), "met" if goal.get("met") else "not met"])
        if paper:
            rows.append([paper["label"], "MNIST (paper)", "", f"error {paper['dense_error']:.2f}%",
                         f"error {paper['dc_error']:.2f}%", f"{paper['dc_error'] - paper['dense_error']:+.2f}",
                         f"{paper['dc_ratio']}x", ""])
    out += [table(["network", "data", "epochs", "dense test acc", "compressed test acc", "drop (points)",
                   "storage ratio", "goal (>= 40x, drop <= 0.3)"], rows, "---|---|---:|---:|---:|---:|---:|---"), ""]
    out.append("Fashion-MNIST is a harder data set than MNIST, so the accuracies of the two rows are not "
               "comparable; the ratios are, since both are dense 32-bit bytes over the bytes of the compressed "
               "model with indices, codebooks and Huffman tables included.")
    out.append("")
    for name, alt in ((f"{path.stem}_curves.png", "Accuracy against storage ratio"),
                      (f"{path.stem}_training.png", "Training curves")):
        img = image(name, alt)
        if img:
            out += [img, ""]
    report = path.with_suffix(".md")
    if report.is_file():
        text = report.read_text()
        text = re.sub(r"^(#+) ", lambda m: "#" * min(6, len(m.group(1)) + 2) + " ", text, flags=re.M)
        out += [f"The benchmark's own report (`benchmarks/results/{report.name}`):", "", text]
    return "\n".join(out)


def render_export() -> str:
    paths = select("export")
    if not paths:
        return missing("export.json", "python benchmarks/export.py")
    out = []
    for path in paths:
        data = load(path)
        meta = data.get("meta", {})
        out += [source(path, data) + (f" Method: `{meta['method']}`." if meta.get("method") else ""), ""]
        rows = []
        for net, r in data.get("results", {}).items():
            rows.append([net, pct(r.get("test_acc")) if "test_acc" in r else "n/a", num(r.get("dense_bytes")),
                         num(r.get("file_bytes")), ratio(r.get("ratio_vs_dense")),
                         ratio(r.get("file_over_entropy_bound"), 3), num(r.get("gzip_state_dict_bytes")),
                         ratio(r.get("file_over_gzip"), 3), num(r.get("xz_state_dict_bytes")),
                         ratio(r.get("file_over_xz"), 3)])
        out += [table(["network", "test acc", "dense bytes", "file bytes", "ratio", "file / entropy bound",
                       "gzip bytes", "file / gzip", "xz bytes", "file / xz"], rows), ""]
        if meta.get("note"):
            out += [note(meta["note"]), ""]
    return "\n".join(out)


def render_pruning() -> str:
    paths = select("pruning")
    if not paths:
        return missing("pruning.json", "python benchmarks/pruning.py")
    out = [render_pruning_file(path) for path in paths]
    for path in select("global_pruning_memory"):
        data = load(path)
        out += [f"Memory of one global magnitude threshold (`scope: global`) over {num(data.get('weights'))} weights in "
                f"{data.get('layers', 'n/a')} layers at sparsity {data.get('sparsity', 'n/a')}: the histogram select "
                "this package uses, against concatenating all weights and calling `torch.kthvalue`, and the same one-shot "
                "mask through the callback. "
                + source(path, data), ""]
        rows = [[f"`{r.get('method', 'n/a')}`", "n/a" if r.get("peak_extra_mib") is None else f"{r['peak_extra_mib']:,.0f}",
                 "n/a" if r.get("cpu_s") is None else f"{r['cpu_s']:.3g}",
                 "n/a" if r.get("wall_s") is None else f"{r['wall_s']:.3g}", num(r.get("pruned"))]
                for r in data.get("rows", [])]
        out += [table(["method", "peak extra memory (MiB)", "CPU s", "wall s", "weights pruned"], rows), ""]
    return "\n".join(out)


def render_pruning_file(path: Path) -> str:
    data = load(path)
    cfg = data.get("config") or data.get("meta", {}).get("args", {})  # older files: "config"; _common: meta.args
    out = [source(path, data) + f" LeNet-300-100, Fashion-MNIST, {cfg.get('epochs', 'n/a')} epochs per run.", ""]
    by_target: dict[float, dict[str, dict]] = {}
    for r in data.get("accuracy", []):
        by_target.setdefault(r.get("target_sparsity"), {})[r.get("method")] = r
    dense = by_target.get(0.0, {}).get("dense", {})
    rows = []
    for target, methods in sorted(by_target.items(), key=lambda kv: kv[0] or 0.0):
        if target == 0.0:
            continue
        ours, theirs = methods.get("ours", {}), methods.get("lightning", {})
        rows.append([f"{target:g}", pct(dense.get("test_acc")), pct(ours.get("test_acc")),
                     pct(ours.get("achieved_sparsity")), pct(theirs.get("test_acc")),
                     pct(theirs.get("achieved_sparsity"))])
    out += [table(["target sparsity", "dense test acc", "ours test acc", "ours sparsity",
                   "Lightning ModelPruning test acc", "its sparsity"], rows), ""]
    timing = data.get("timing", [])
    if timing:
        rows = []
        for t in timing:
            cpu = t.get("ratio_cpu_vs_dense", {})
            rows.append([t.get("model", "n/a"), ratio(cpu.get("ours"), 2), ratio(cpu.get("lightning_modelpruning"), 2),
                         num(t.get("steps_timed_per_variant"), "d")])
        out += ["Training-step time relative to the dense model (median CPU time per step):", "",
                table(["model", "ours", "Lightning ModelPruning", "steps timed"], rows), ""]
    return "\n".join(out)


def render_sharing() -> str:
    out = []
    if not select("sharing_bits"):
        out.append(missing("sharing_bits.json", "python benchmarks/sharing.py"))
    for path in select("sharing_bits"):
        data = load(path)
        out += [source(path, data) + f" {data.get('model', '')}, {data.get('dataset', '')}; centroid fine-tuning: "
                f"{data.get('finetune_optimizer', 'n/a')}, reduction `{data.get('reduction', 'n/a')}`.", ""]
        rows = [[r.get("base", "n/a"), str(r.get("bits", "n/a")), pct(r.get("base_test_acc")),
                 pct(r.get("clustered_test_acc")), pct(r.get("finetuned_test_acc")),
                 ratio(r.get("estimated_storage_ratio"))] for r in data.get("rows", [])]
        out += [table(["base model", "bits", "before clustering", "after clustering", "after fine-tuning",
                       "estimated storage ratio (no Huffman)"], rows), ""]
    for path in select("sharing_kmeans"):
        data = load(path)
        out += ["1-D k-means against scikit-learn's `KMeans` (same initial centroids):", "", source(path, data), ""]
        rows = [[num(r.get("n")), str(r.get("k", "n/a")), f"{r['ours_s']:.3g} s" if r.get("ours_s") else "n/a",
                 f"{r['sklearn_s']:.3g} s" if r.get("sklearn_s") else "n/a", ratio(r.get("speedup")),
                 "n/a" if r.get("inertia_ratio_ours_over_sklearn") is None
                 else f"{r['inertia_ratio_ours_over_sklearn']:.4f}"] for r in data.get("rows", [])]
        out += [table(["weights", "k", "ours", "scikit-learn", "speed-up", "inertia ours / scikit-learn"], rows), ""]
    return "\n".join(out)


def render_factorization() -> str:
    paths = select("factorization")
    if not paths:
        return missing("factorization.json", "python benchmarks/factorization.py")
    return "\n".join(render_factorization_file(path) for path in paths)


def render_factorization_file(path: Path) -> str:
    data = load(path)
    setup = (f" Dense training: {num(data.get('train_samples'))} images, {data.get('dense_epochs', 'n/a')} epochs; "
             f"fine-tuning: {data.get('finetune_epochs', 'n/a')} epoch(s) at lr {data.get('finetune_lr', 'n/a')}; "
             f"test on {num(data.get('test_samples'))} images.")
    out = [source(path, data) + setup
           + ("" if data.get("complete", True) else " The run did not finish every setting."), ""]
    rows = []
    for model in data.get("results", []):
        for r in model.get("rows", []):
            rows.append([model.get("model", "n/a"), r.get("label", "n/a"), ratio(r.get("param_ratio"), 3),
                         pct(r.get("acc_factorized")), pct(r.get("acc_finetuned")),
                         ratio(r.get("latency_ratio_b1"), 2), ratio(r.get("latency_ratio_b256"), 2)])
    out += [table(["model", "rule", "params after / before", "test acc after factorizing",
                   "after fine-tuning", "CPU latency ratio, batch 1", "batch 256"], rows), ""]
    if data.get("notes"):
        out += [note(data["notes"]), ""]
    return "\n".join(out)


def render_transformer() -> str:
    paths = [p for p in select("transformer") if p.stem in ("transformer", "transformer_quick")]
    if not paths:
        return missing("transformer.json", "python benchmarks/transformer.py")
    return "\n".join(render_transformer_file(path) for path in paths)


def render_transformer_file(path: Path) -> str:
    data = load(path)
    setups = data.get("meta", {}).get("setups", {})
    sizes = "; ".join(f"{name}: {s.get('epochs')} epochs x {s.get('batches')} batches of {s.get('batch')}, "
                      f"model {s.get('model')}" for name, s in setups.items())
    out = [source(path, data) + f" {data.get('meta', {}).get('seeds', 'n/a')} seed(s). Training: {sizes}.", ""]
    rows = []
    for s in data.get("summary", {}).values():
        unit = "perplexity" if s["model"] == "tinygpt" else "accuracy"
        val = (f"{s['val']:.3f} ± {s['val_sd']:.3f}" if unit == "perplexity" else
               f"{pct(s['val'])} ± {pct(s['val_sd'])}")
        test = f"{s['test']:.3f}" if unit == "perplexity" else pct(s["test"])
        method = s["method"] + (f" ({s['bits']} bits, chosen on validation)" if s["method"] == "both" else "")
        rows.append([s["model"], method, unit, val, test, ratio(s["file_ratio"], 2), ratio(s["estimated_ratio"], 2),
                     pct(s["sparsity"], 1)])
    out += [table(["model", "method", "metric", "validation (mean ± sd)", "test", "file ratio",
                   "estimated ratio", "sparsity"], rows), ""]
    timing = data.get("step_time")
    if timing:
        out += [f"TinyGPT CPU time per training step (median of {timing['steps_measured']} interleaved steps per "
                f"kind): dense {1e3 * timing['dense_step_cpu_s']:.1f} ms, pruning + sharing active "
                f"{1e3 * timing['compressed_step_cpu_s']:.1f} ms: **{timing['overhead']:.3f}x**.", ""]
    goal_rows = []
    for name, g in data.get("goals", {}).items():
        if name == "overhead":
            goal_rows.append(["TinyGPT step time, pruning + sharing", f"<= {g['goal']:.2f}x", f"{g['measured']:.3f}x",
                              "yes" if g["met"] else "no"])
        else:
            budget = "+5% perplexity" if name == "tinygpt" else "-0.5 pt accuracy"
            best = (f"{ratio(g['best_ratio_within_budget'], 2)} ({g['best_within_budget']})"
                    if g.get("best_within_budget") else "none within budget")
            goal_rows.append([f"{name} file ratio within {budget}", f">= {g['goal_ratio']:.0f}x", best,
                              "yes" if g["met"] else "no"])
    if goal_rows:
        out += [table(["goal", "target", "measured (best within budget)", "met"], goal_rows), ""]
    structure = data.get("structure", {})
    if structure:
        rows = [[name, num(st["dense_bytes"]), num(st["weight_bytes"]), num(st["other_bytes"]),
                 num(st["tied_alias_copy_bytes"]), ratio(st["max_ratio_if_weights_free"], 1)]
                for name, st in structure.items()]
        out += ["Where the bytes are (fresh model): every file stores the non-weight tensors at 32 bits and the "
                "exporter writes a tied tensor's alias (the LM head) again, raw; the last column is the ratio a file "
                "would have if every weight matrix cost nothing.", "",
                table(["model", "dense bytes", "weight matrices", "other tensors (32-bit)", "raw copy of tied tensors",
                       "ratio ceiling"], rows), ""]
    return "\n".join(out)


def render_palettization() -> str:
    stems = ("palettization", "palettization_finetune")  # the other palettization_*.json are named in the prose
    paths = [p for p in select("palettization") if p.stem.replace("_quick", "") in stems and "summary" in load(p)]
    if not paths:
        return missing("palettization.json", "python benchmarks/palettization.py --seeds 0 1 2")
    return "\n".join(render_palettization_file(path) for path in paths)


def render_palettization_file(path: Path) -> str:
    """The over-seeds summary (ours, coreai-opt, centroid fine-tuning) and the equal-bytes comparison."""
    data = load(path)
    seeds = sorted({r["seed"] for r in data["rows"]})
    dense = [r["val_ppl"] for r in data["rows"] if r["method"] == "dense"]
    args = data.get("meta", {}).get("args", {})
    out = [source(path, data) + f" Seeds {seeds}; {data.get('steps')} dense training steps; model {data.get('model')}; "
           f"tensors: {', '.join(data.get('types', []))}"
           + (f", except {', '.join(args['exclude'])}" if args.get("exclude") else "")
           + f"; dense validation perplexity {', '.join(f'{p:.3f}' for p in dense)}.", ""]
    rows = [[s["method"], s["bits"], s["granularity"], s["weighting"], s["init"],
             f"{s['ppl_change_mean']:+.2%} [{s['ppl_change_min']:+.2%}, {s['ppl_change_max']:+.2%}]",
             num(round(s["file_bytes_mean"])), f"{s['seconds_mean']:.2f}"] for s in data["summary"]]
    out += [table(["method", "bits", "granularity", "weighting", "init", "perplexity vs dense: mean [min, max]",
                   "file bytes (mean)", "seconds (mean)"], rows, "---|---:|---|---|---|---:|---:|---:"), ""]
    pairs = data.get("equal_bytes", [])
    if pairs:
        rows = []
        for pair in pairs:
            peer, ours = pair["coreai_opt"], pair["ours"]
            rows.append([f"{peer['bits']}-bit, {peer['granularity']}",
                         f"{peer['ppl_change_mean']:+.2%}, {num(round(peer['file_bytes_mean']))} B",
                         "none" if ours is None else f"{ours['bits']}-bit, {ours['granularity']}, {ours['weighting']}, "
                                                     f"{ours['init']}",
                         "" if ours is None else f"{ours['ppl_change_mean']:+.2%}, {num(round(ours['file_bytes_mean']))} B",
                         "yes" if pair["ours_better"] else "no"])
        out += ["At equal bytes: for each coreai-opt setting, the best of ours whose file is no larger.", "",
                table(["coreai-opt", "its perplexity change, file", "ours (best at <= bytes)", "our change, file",
                       "ours better"], rows, "---|---:|---|---:|---"), ""]
    return "\n".join(out)


def render_lenet_tuning() -> str:
    """``lenet_tuning.py``: every candidate on the validation split, then the chosen ones on the test split."""
    out = []
    for stem, split in (("lenet_tuning", "validation"), ("lenet_tuning_test", "test")):
        paths = [p for p in select(stem) if p.stem.replace("_quick", "") == stem]
        if not paths:
            out.append(missing(f"{stem}.json", "python benchmarks/lenet_tuning.py" + (" --test" if split == "test" else "")))
            continue
        for path in paths:
            data = load(path)
            out += [source(path, data) + f" Split: {data.get('split', split)}.", ""]
            rows = [[name, str(s.get("epochs", "n/a")), str(len(s["seeds"])), ratio(s["ratio_stats"]["min"]) + " - " + ratio(s["ratio_stats"]["max"]),
                     f"{s['delta_stats']['mean']:+.2f}", f"{s['delta_stats']['std']:.2f}",
                     ", ".join(f"{d:+.2f}" for d in s["delta_points"]),
                     "met" if s.get("goal_48x_0.3pt_met") else "not met",
                     "met" if s.get("aim_64x_0.3pt_met") else "not met"]
                    for name, s in data.get("summary", {}).items()]
            out += [table(["candidate", "epochs", "seeds", "ratio (min - max)", f"mean delta {split} acc (points)", "std",
                           "per seed (seed order)", ">= 48x, mean drop <= 0.3", ">= 64x, mean drop <= 0.3"], rows,
                          "---|---:|---:|---:|---:|---:|---|---|---"), ""]
            # each candidate against its dense twin (same epochs), named in the summary
            twin = {name: s.get("dense") for name, s in data.get("summary", {}).items()}
            dense = {(r["candidate"], r["seed"]): r for r in data.get("runs", [])
                     if r["candidate"].split("/")[1].startswith("dense")}
            metric = "val_acc" if split == "validation" else "test_acc"
            rows = []
            for r in sorted(data.get("runs", []), key=lambda r: (r["candidate"], r["seed"])):
                d = dense.get((twin.get(r["candidate"]) or f"{r['net']}/dense", r["seed"]))
                if r["candidate"].split("/")[1].startswith("dense") or d is None:
                    continue
                rows.append([r["candidate"], str(r["seed"]), num(r.get("file_bytes")), ratio(r.get("ratio")),
                             pct(r[metric]), pct(d[metric]), f"{100 * (r[metric] - d[metric]):+.2f}"])
            out += [table(["candidate", "seed", "file bytes", "ratio", f"{split} acc", f"dense {split} acc",
                           "delta (points)"], rows), ""]
    return "\n".join(out)


RENDERERS: dict[str, Callable[[], str]] = {
    "paper": render_paper,
    "deep_compression": render_deep_compression,
    "lenet_tuning": render_lenet_tuning,
    "export": render_export,
    "pruning": render_pruning,
    "sharing": render_sharing,
    "factorization": render_factorization,
    "transformer": render_transformer,
    "palettization": render_palettization,
}


# ---- MkDocs events -----------------------------------------------------------------------------------------


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"img/results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "results.md":
        return markdown

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in RENDERERS:
            log.warning("results.md: unknown marker %r (known: %s)", name, ", ".join(RENDERERS))
            return match.group(0)
        try:
            return RENDERERS[name]()
        except Exception as err:  # noqa: BLE001 - a changed JSON layout must fail the strict build, loudly
            log.warning("results.md: cannot render %r from benchmarks/results: %r", name, err)
            return f"*Could not render `{name}`: {err!r}*"

    return MARKER.sub(replace, markdown)
