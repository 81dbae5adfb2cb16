"""Peak extra memory and time of a global magnitude threshold: ours vs the concatenate-and-kthvalue way.

``core.masks.global_magnitude_masks`` (16-bit histograms of the float bit patterns, chunk by chunk) against
the obvious implementation ``torch.kthvalue(torch.cat([w.abs() for w in weights]), k)``, which holds a
second copy of every weight; and the same one-shot global mask through the callback
(``GradualMagnitudePruning(scope="global", schedule="constant")`` in a Trainer: its whole first-batch update,
i.e. the non-finite check, the masks, zeroing the weights and the optimizer state, logging). Each variant runs in a fresh process (so ``ru_maxrss`` is its own), with one torch thread,
on float32 weights split into equal layers; the peak is max RSS after the call minus max RSS before it.
glibc's mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors leave the RSS instead of
staying in the heap; that makes every large allocation an mmap, which slows both variants' CPU time.
Ours prunes exactly ``round(sparsity * n)`` weights (checked); the reference prunes every tie of its
threshold too (checked to be within 1e-5 n).

    python benchmarks/global_pruning_memory.py --quick     # 10M weights, ~1 minute on 2 busy cores
    python benchmarks/global_pruning_memory.py             # 100M weights in 20 layers

Writes ``benchmarks/results/global_pruning_memory.json`` (``..._quick.json`` with ``--quick``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _common import ROOT, meta, parser, result_path, write_json

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from lightning_compress.core.masks import global_magnitude_masks

def through_callback(weights, sparsity, masks):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset
    from lightning_compress import GradualMagnitudePruning

    class Layers(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList()
            for w in weights:
                layer = torch.nn.Linear(1000, w.numel() // 1000, bias=False, device="meta")
                layer.weight = torch.nn.Parameter(w.view(-1, 1000))  # the same storage: no copy
                self.layers.append(layer)
        def training_step(self, batch, _):
            return sum(layer(batch[0]).sum() for layer in self.layers[:1])
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    timing = {{}}
    class Around(pl.Callback):
        def __init__(self, key): self.key = key
        def on_train_batch_start(self, *a):
            timing[self.key] = (time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    cb = GradualMagnitudePruning(sparsity, scope="global", schedule="constant", log_layers=False, prog_bar=False)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Around("start"), cb, Around("end")])
    trainer.fit(Layers(), DataLoader(TensorDataset(torch.zeros(1, 1000)), batch_size=1))
    (w0, c0, r0), (w1, c1, r1) = timing["start"], timing["end"]
    return [cb.masks[n] for n in cb.masks], (w1 - w0, c1 - c0, (r1 - r0) / 1024)

def cat_kthvalue(weights, sparsity, masks):
    scores = torch.cat([w.abs().reshape(-1) for w in weights])  # the second copy of every weight
    k = round(sparsity * scores.numel())
    threshold = torch.kthvalue(scores, k).values
    del scores
    return [m & (w.abs() > threshold) for w, m in zip(weights, masks)]

layers, per_layer, sparsity, method = {layers}, {per_layer}, {sparsity}, {method!r}
g = torch.Generator().manual_seed({seed})
weights = [torch.randn(per_layer, generator=g) for _ in range(layers)]
masks = [torch.ones(per_layer, dtype=torch.bool) for _ in range(layers)]
if method == "callback":
    out, (wall, cpu, peak) = through_callback(weights, sparsity, masks)
else:
    fn = global_magnitude_masks if method == "histogram_select" else cat_kthvalue
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(weights, sparsity, masks)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({{"method": method, "peak_extra_mib": peak, "wall_s": wall, "cpu_s": cpu,
                  "pruned": sum(int((~m).sum()) for m in out)}}))
"""


def measure(method: str, layers: int, per_layer: int, sparsity: float, seed: int = 0) -> dict:
    source = CHILD.format(root=str(ROOT), layers=layers, per_layer=per_layer, sparsity=sparsity, method=method,
                          seed=seed)
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, check=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = parser(__doc__, quick_help="10M weights in 10 layers instead of 100M in 20")
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args(argv)
    if len(args.seeds) != 1:
        ap.error("--seeds: one seed (of the random weights) per call")
    layers, per_layer = (10, 1_000_000) if args.quick else (20, 5_000_000)
    n = layers * per_layer
    rows = []
    for method in ("histogram_select", "cat_kthvalue", "callback"):
        row = measure(method, layers, per_layer, args.sparsity, args.seeds[0])
        exact = method != "cat_kthvalue"  # the reference prunes every tie of its threshold
        assert row["pruned"] == round(args.sparsity * n) if exact else abs(row["pruned"] - args.sparsity * n) <= 1e-5 * n, row
        rows.append(row)
    weights_mib, masks_mib = n * 4 / 2**20, n / 2**20
    print(f"{n / 1e6:.0f}M float32 weights ({weights_mib:.0f} MiB) in {layers} layers; new bool masks {masks_mib:.0f} MiB")
    print(f"{'method':<16} {'peak extra MiB':>15} {'x weights':>10} {'wall s':>8} {'cpu s':>8}")
    for r in rows:
        print(f"{r['method']:<16} {r['peak_extra_mib']:>15.0f} {r['peak_extra_mib'] / weights_mib:>10.2f} "
              f"{r['wall_s']:>8.1f} {r['cpu_s']:>8.1f}")
    ours, ref, callback = rows
    print(f"ratio cat_kthvalue / histogram_select: peak memory {ref['peak_extra_mib'] / ours['peak_extra_mib']:.2f}x, "
          f"cpu time {ref['cpu_s'] / ours['cpu_s']:.2f}x")
    print(f"ratio callback / cat_kthvalue: cpu time {callback['cpu_s'] / ref['cpu_s']:.2f}x, "
          f"wall time {callback['wall_s'] / ref['wall_s']:.2f}x, peak memory "
          f"{callback['peak_extra_mib'] / ref['peak_extra_mib']:.2f}x")
    out = write_json(result_path(args, "global_pruning_memory"), {
        "quick": args.quick, "weights": n, "layers": layers, "sparsity": args.sparsity,
        "weights_mib": weights_mib, "new_masks_mib": masks_mib, "rows": rows, "meta": meta(args),
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
