"""How each phase of a compression run grows with the model: synthetic LLM-shaped MLPs of 100M and 1B weights.

The model is a stack of residual feed-forward blocks ``x + W2 relu(W1 x)`` with ``W1: d -> ffn`` and
``W2: ffn -> d`` (no biases; the shapes of a transformer's MLP: d=2048/ffn=5504 for "100M", d=4096/ffn=11008
for "1B", 4096x11008 being LLaMA-7B's). Every phase runs in a fresh process (so its peak RSS is its own),
with ``--threads`` torch threads (default 1), on float32 weights drawn from N(0, 0.02^2):

* ``mask_layer`` / ``mask_global``: one mask update at 50% sparsity over every layer, layer-wise
  (``core.mask_rules.LayerMagnitude``) and with one global threshold (``GlobalMagnitude``);
* ``kmeans_tensor`` / ``kmeans_channel``: 4-bit k-means of the first layer, as one codebook and as one codebook
  per output row (``core.sharing.cluster_weight``, ``granularity="tensor"`` / ``"channel"``);
* ``step_dense`` / ``step_pruning``: the median time of a Lightning training step (batch 8, SGD) without
  callbacks and with ``GradualMagnitudePruning`` holding 50%-sparse masks (its one-shot update is in the
  warm-up and not timed), plus the pruning callback's state bytes per weight (live masks, checkpoint);
* ``export`` / ``import``: ``save_compressed``/``load_compressed`` of the model pruned to 90%, against
  ``torch.save``/``torch.load(weights_only=True)`` of the same state dict (``torch_save``/``torch_load``).

Peak RSS is the process's ``ru_maxrss`` after the phase minus before it (the model is built first, in place,
without temporaries); glibc's mmap threshold is pinned so that freed tensors leave the RSS.

    python benchmarks/scale.py --quick          # two small sizes (1.4M and 5.6M weights), one process each
    python benchmarks/scale.py --sizes 100M     # the 100M model (a few minutes)
    python benchmarks/scale.py --sizes 1B       # 1B weights: ~4 GB of weights, ~13 GB peak in the step phases

Prints a table and writes ``benchmarks/results/scale{_quick,_<sizes>}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, meta, parser, trainer as quiet_trainer, write_json

#: name -> (d, ffn, blocks); weights = blocks * 2 * d * ffn
SIZES = {
    "q1": (256, 688, 4),
    "q2": (512, 1376, 4),
    "100M": (2048, 5504, 5),
    "1B": (4096, 11008, 11),
}
PHASES = ("mask_layer", "mask_global", "kmeans_tensor", "kmeans_channel", "step_dense", "step_pruning",
          "export", "import", "torch_save", "torch_load")
SPARSITY, EXPORT_SPARSITY, BITS, BATCH = 0.5, 0.9, 4, 8


def weights_of(size: str) -> int:
    d, ffn, blocks = SIZES[size]
    return blocks * 2 * d * ffn


# ---------------------------------------------------------------------------------------------- child process
def _build(size: str, seed: int = 0):
    import torch
    from torch import nn

    d, ffn, blocks = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    layers = nn.ModuleList()
    for _ in range(blocks):
        for shape in ((ffn, d), (d, ffn)):
            layer = nn.Linear(shape[1], shape[0], bias=False, device="meta").to_empty(device="cpu")
            with torch.no_grad():
                layer.weight.normal_(0.0, 0.02, generator=g)
            layers.append(layer)
    return layers


def _module(layers):
    import lightning.pytorch as pl
    import torch

    class Blocks(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layers = layers

        def forward(self, x):
            for up, down in zip(self.layers[::2], self.layers[1::2]):
                x = x + down(torch.relu(up(x)))
            return x

        def training_step(self, batch, _):
            return self(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-4)

    return Blocks()


def _steps(layers, pruning: bool, steps: int = 4, warmup: int = 2) -> dict:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_compress import GradualMagnitudePruning

    times: list[tuple[float, float]] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, *args):
            self.t0 = (time.perf_counter(), time.process_time())

        def on_train_batch_end(self, *args):
            times.append((time.perf_counter() - self.t0[0], time.process_time() - self.t0[1]))

    d = layers[0].weight.shape[1]
    data = DataLoader(TensorDataset(torch.randn((steps + warmup) * BATCH, d)), batch_size=BATCH)
    callbacks = [Timer()]
    cb = GradualMagnitudePruning(SPARSITY, schedule="constant", prog_bar=False, log_layers=False) if pruning else None
    if cb is not None:
        callbacks.insert(0, cb)
    trainer = quiet_trainer(None, callbacks, max_steps=steps + warmup)
    trainer.fit(_module(layers), data)
    timed = times[warmup:]
    out = {"step_wall_s": statistics.median(t[0] for t in timed), "step_cpu_s": statistics.median(t[1] for t in timed),
           "steps_timed": len(timed)}
    if cb is not None:
        n = sum(t.param.numel() for t in cb.targets)
        live = sum(m.numel() * m.element_size() for m in cb.masks.values())
        saved = sum(m.numel() * m.element_size() for m in cb.state_dict()["masks"].values())
        out.update(state_bytes_per_weight_live=live / n, state_bytes_per_weight_checkpoint=saved / n)
    return out


def _prune_in_place(layers, sparsity: float) -> None:
    from lightning_compress.core.masks import apply_mask_, magnitude_mask

    for layer in layers:
        apply_mask_(layer.weight, magnitude_mask(layer.weight, sparsity))


def _phase(phase: str, layers, workdir: str) -> dict:
    import torch

    from lightning_compress.core.mask_rules import GlobalMagnitude, LayerMagnitude
    from lightning_compress.core.sharing import cluster_weight
    from lightning_compress.export import load_compressed, save_compressed

    weights = [layer.weight.detach() for layer in layers]
    if phase in ("mask_layer", "mask_global"):
        rule = LayerMagnitude() if phase == "mask_layer" else GlobalMagnitude()
        masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]
        before = _mark()
        new, _ = rule(weights, masks, [SPARSITY] * len(weights))
        return _done(before, {"pruned": sum(int((~m).sum()) for m in new)})
    if phase == "kmeans_tensor":
        before = _mark()
        shared = cluster_weight(weights[0], 2**BITS, max_iter=30)
        return _done(before, {"layer_weights": weights[0].numel(), "centroids": int(shared.centroids.numel())})
    if phase == "kmeans_channel":
        before = _mark()
        shared = cluster_weight(weights[0], 2**BITS, max_iter=30, granularity="channel")
        return _done(before, {"layer_weights": weights[0].numel(), "codebooks": int(shared.centroids.shape[0])})
    if phase in ("step_dense", "step_pruning"):
        before = _mark()
        return _done(before, _steps(layers, pruning=phase == "step_pruning"))
    _prune_in_place(layers, EXPORT_SPARSITY)
    model = torch.nn.Sequential(*layers)
    lcz, pt = os.path.join(workdir, "model.lcz"), os.path.join(workdir, "model.pt")
    if phase in ("import", "torch_load"):  # write the file first (not timed)
        save_compressed(model, lcz, compare_gzip=False) if phase == "import" else torch.save(model.state_dict(), pt)
    before = _mark()
    if phase == "export":
        report = save_compressed(model, lcz, compare_gzip=False)
        return _done(before, {"file_bytes": report.file_bytes})
    if phase == "import":
        load_compressed(lcz, model)
        return _done(before, {"file_bytes": os.path.getsize(lcz)})
    if phase == "torch_save":
        torch.save(model.state_dict(), pt)
        return _done(before, {"file_bytes": os.path.getsize(pt)})
    torch.load(pt, weights_only=True)
    return _done(before, {"file_bytes": os.path.getsize(pt)})


def _mark() -> tuple[float, float, int]:
    return time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _done(before: tuple[float, float, int], extra: dict) -> dict:
    wall, cpu, rss = before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "peak_extra_mib": (peak - rss) / 1024, "rss_before_mib": rss / 1024, **extra}


def child(size: str, phases: str, threads: int, seed: int) -> None:
    import torch

    torch.set_num_threads(threads)
    layers = _build(size, seed)
    with tempfile.TemporaryDirectory() as workdir:
        for phase in phases.split(","):  # one per process, except in --quick (all in order)
            print(json.dumps({"phase": phase, **_phase(phase, layers, workdir)}), flush=True)


# ---------------------------------------------------------------------------------------------- parent
#: Bytes a phase needs beyond nothing, in multiples of the weights' float32 bytes (weights, grads, masks, copies).
NEED = {"step_dense": 2.6, "step_pruning": 2.9, "import": 2.5, "torch_load": 2.5, "export": 2.0}


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where unknown): the machine is shared, so a big phase checks first."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(size: str, phases: list[str], threads: int, seed: int = 0) -> list[dict]:
    need = max(NEED.get(p, 1.5) for p in phases) * weights_of(size) * 4 + 2 * 2**30  # + 2 GiB headroom
    free = available_bytes()
    if free and need > free:
        return [{"phase": p, "error": f"skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"}
                for p in phases]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MALLOC_MMAP_THRESHOLD_": "131072",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, __file__, "--child", size, ",".join(phases), "--threads", str(threads),
                           "--seeds", str(seed)],
                          capture_output=True, text=True, env=env)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode:
        error = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        rows += [{"phase": p, "error": error} for p in phases[len(rows):]]
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'size':<6} {'weights':>8} {'phase':<15} {'wall s':>9} {'cpu s':>9} {'peak +MiB':>10}  notes"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['size']:<6} {r['weights'] / 1e6:>7.1f}M {r['phase']:<15} error: {r['error']}")
            continue
        notes = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                          if k not in ("size", "weights", "phase", "wall_s", "cpu_s", "peak_extra_mib", "rss_before_mib"))
        lines.append(f"{r['size']:<6} {r['weights'] / 1e6:>7.1f}M {r['phase']:<15} {r['wall_s']:>9.3f} "
                     f"{r['cpu_s']:>9.3f} {r['peak_extra_mib']:>10.0f}  {notes}")
    return "\n".join(lines)


def markdown(paths: list[Path]) -> str:
    """The committed results as one Markdown table (for docs/results.md): a row per phase, a column per size."""
    runs = [json.loads(p.read_text()) for p in paths]
    sizes = [(size, run) for run in runs for size in run["sizes"]]
    header = "| phase | " + " | ".join(f"{s} ({run['sizes'][s]['weights'] / 1e6:.0f}M): CPU s / wall s / peak +MiB"
                                      for s, run in sizes) + " |"
    lines = [header, "|---" * (len(sizes) + 1) + "|"]
    for phase in PHASES:
        cells = []
        for size, run in sizes:
            row = next((r for r in run["rows"] if r["size"] == size and r["phase"] == phase), None)
            if row is None or "error" in row:
                cells.append("not run" if row is None else "error")
            elif phase.startswith("step_"):  # the median step, not the phase (which builds a Trainer)
                cells.append(f"{row['step_cpu_s']:.3g} / {row['step_wall_s']:.3g} / {row['peak_extra_mib']:.0f}")
            else:
                cells.append(f"{row['cpu_s']:.3g} / {row['wall_s']:.3g} / {row['peak_extra_mib']:.0f}")
        lines.append(f"| `{phase}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(paths: list[Path], out: Path) -> None:
    """CPU seconds of each phase against the model's weights (log-log): how each phase grows with the model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for p in paths for r in json.loads(p.read_text())["rows"] if "error" not in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for phase in PHASES:
        points = sorted((r["weights"], r["step_cpu_s"] if phase.startswith("step_") else r["cpu_s"])
                        for r in rows if r["phase"] == phase)
        if points:
            ax.plot(*zip(*points), marker="o", label=phase)
    ax.set(xscale="log", yscale="log", xlabel="weights in the model", ylabel="CPU seconds (one thread)",
           title="benchmarks/scale.py: cost of each phase against model size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None) -> None:
    ap = parser(__doc__, quick_help="the two small sizes q1, q2, all phases of a size in one process")
    ap.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--update", action="store_true", help="replace only the measured phases' rows in the JSON")
    ap.add_argument("--markdown", nargs="+", type=Path, help="print committed result files as a Markdown table")
    ap.add_argument("--plot", nargs="+", type=Path, help="plot committed result files (PNG into --out)")
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "PHASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if len(args.seeds) != 1:
        ap.error("--seeds: one seed (of the random weights) per call")
    if args.child:
        child(*args.child, args.threads, args.seeds[0])
        return
    if args.markdown:
        print(markdown(args.markdown))
        return
    if args.plot:
        plot(args.plot, args.out / "scale_cost.png")
        print(f"wrote {args.out / 'scale_cost.png'}")
        return
    sizes = args.sizes or (["q1", "q2"] if args.quick else ["100M"])
    rows = []
    for size in sizes:
        # a fresh process per phase (its own peak RSS); --quick runs a size's phases in one process, so there
        # a phase's peak counts only what it adds above the phases before it
        groups = [args.phases] if args.quick else [[p] for p in args.phases]
        for phases in groups:
            for result in run(size, phases, args.threads, args.seeds[0]):
                row = {"size": size, "weights": weights_of(size), **result}
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    name = "scale_quick" if args.quick and not args.sizes else "scale_" + "_".join(sizes)
    out = args.out / f"{name}.json"
    if args.update and out.exists():  # re-measured phases replace their rows; the others are kept
        redone = {(r["size"], r["phase"]) for r in rows}
        rows = [r for r in json.loads(out.read_text())["rows"] if (r["size"], r["phase"]) not in redone] + rows
        rows.sort(key=lambda r: (list(SIZES).index(r["size"]), PHASES.index(r["phase"])))
    write_json(out, {
        "meta": meta(args), "sizes": {s: dict(zip(("d", "ffn", "blocks"), SIZES[s]), weights=weights_of(s)) for s in sizes},
        "threads": args.threads, "sparsity": SPARSITY, "export_sparsity": EXPORT_SPARSITY, "bits": BITS,
        "batch": BATCH, "one_process_per_phase": not args.quick, "rows": rows,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
