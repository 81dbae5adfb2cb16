"""Per-step cost of WeightSharing's centroid fine-tuning, against dense training, side by side in one run.

For each model a dense copy and a shared copy (``WeightSharing(bits=4)``, clustered before timing, per tensor
and, where asked, per channel) train on random data with the same optimizer (SGD with momentum). Fits of the
variants alternate (interleaved repetitions), each timing every training step from ``on_train_batch_start``
to ``on_train_batch_end`` (forward, backward, the callback's gradient hook, the optimizer step and the
projection after it), the first step of every fit dropped (it builds optimizer state). Reported: the median
step in process CPU time and in wall time, and their ratios to dense. Also the bytes of state the callback
keeps per shared weight (its ``state_dict``: assignments + codebooks) and in memory (+ the int64 index), and a
break-down of the two per-step operations on the largest layer.

Models: an MLP of 8 Linear 2048x2048 layers (33.6M weights, batch 16: memory-bound, the worst case), a
CIFAR-style ResNet-18 (batch 32, 32x32 inputs) and a small GPT-style transformer (the zoo's TinyGPT when
present, else a local stand-in of the same shape, named in the output).

    python benchmarks/sharing_step.py --quick     # smoke run: small models, ~1 minute
    python benchmarks/sharing_step.py             # the full run (writes benchmarks/results/sharing_step.json)

``--out`` names the results folder (``sharing_step[_quick].json`` inside it); ``--seeds`` takes one seed (of the
weights and the random data).
"""

from __future__ import annotations

import copy
import statistics
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F
from _common import meta, parser, result_path, trainer as quiet_trainer, write_json
from torch.utils.data import DataLoader, TensorDataset

from lightning_compress import GradualMagnitudePruning, WeightSharing
from lightning_compress.core.sharing import cluster_weight


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module, lr: float = 0.01):
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def mlp(width: int, layers: int = 8) -> nn.Module:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def transformer(vocab: int, dim: int, layers: int, context: int) -> tuple[nn.Module, str]:
    try:
        from lightning_compress.zoo.tinygpt import TinyGPT  # type: ignore

        return (TinyGPT(vocab_size=vocab, context=context, d_model=dim, n_layers=layers),
                f"zoo TinyGPT ({layers} blocks, d={dim}, context {context}, vocab {vocab}, tied head)")
    except Exception:  # noqa: BLE001 - not merged yet: a stand-in of the same kind
        pass

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, dim)
            self.pos = nn.Parameter(torch.zeros(context, dim))
            layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, layers)
            self.head = nn.Linear(dim, vocab)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context))

        def forward(self, x):
            h = self.emb(x) + self.pos[: x.shape[1]]
            return self.head(self.blocks(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True))

    return LM(), f"local GPT-style LM ({layers} blocks, d={dim}, context {context}, vocab {vocab})"


def resnet18() -> nn.Module:
    from pruning import ResNet18  # the CIFAR-style ResNet-18 of the pruning benchmark

    return ResNet18()


class StepTimer(Callback):
    def __init__(self):
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._c, self._w = time.process_time(), time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx > 0:  # the first step of a fit builds optimizer state
            self.cpu.append(time.process_time() - self._c)
            self.wall.append(time.perf_counter() - self._w)


def fit(module: pl.LightningModule, loader: DataLoader, steps: int, callbacks: list) -> None:
    quiet_trainer(max_epochs=None, max_steps=steps, callbacks=callbacks, limit_val_batches=0).fit(module, loader)


def breakdown(weight: torch.Tensor, granularity, reps: int = 5) -> dict:
    """Time of the two per-step operations on one layer, and a dense SGD-momentum update for scale."""
    shared = cluster_weight(weight, 16, granularity=granularity, max_iter=30)
    p = shared.decode().clone()
    grad = torch.randn_like(p)
    buf = torch.zeros_like(p)
    shared.flat_index()
    out = {}
    for name, fn in [
        ("gradient (scatter + gather)", lambda: shared.share_gradient(grad.clone())),
        ("projection, representative (gather)", lambda: shared.project(p, "representative")),
        ("projection, mean (scatter + gather)", lambda: shared.project(p, "mean")),
        ("dense SGD-momentum update", lambda: (buf.mul_(0.9).add_(grad), p.add_(buf, alpha=-1e-9))),
        ("grad.clone() (subtract from the gradient row)", lambda: grad.clone()),
    ]:
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        out[name] = (time.perf_counter() - t) / reps
    return out


def run_model(name: str, make, loader: DataLoader, steps: int, reps: int, granularities, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    dense = Classifier(make())
    variants = {"dense": (dense, [])}
    clustering = {}
    for g in granularities:
        module = copy.deepcopy(dense)
        cb = WeightSharing(4, start_step=0, evaluate=False, log_histograms=False, granularity=g)
        t = time.perf_counter()
        fit(module, loader, 2, [cb])  # clusters at step 0, then trains a step
        clustering[str(g)] = time.perf_counter() - t
        variants[f"sharing_4bit_{g}"] = (module, [cb])
    pruned = copy.deepcopy(dense)  # pruning side by side: 50% masks set at the first batch, then held every step
    pruning = GradualMagnitudePruning(0.5, schedule="constant", prog_bar=False, log_layers=False)
    fit(pruned, loader, 2, [pruning])
    variants["pruning_50"] = (pruned, [pruning])
    fit(dense, loader, 2, [])
    timers = {v: StepTimer() for v in variants}
    for rep in range(reps):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for v in order:
            module, cbs = variants[v]
            fit(module, loader, steps, [*cbs, timers[v]])
    cpu = {v: statistics.median(t.cpu) for v, t in timers.items()}
    wall = {v: statistics.median(t.wall) for v, t in timers.items()}
    first_cb = variants[f"sharing_4bit_{granularities[0]}"][1][0]
    shared_weights = sum(s.assignment.numel() for s in first_cb.codebooks.values())
    state = first_cb.state_dict()["layers"]
    state_bytes = sum(e["centroids"].numel() * 4 + e["assignment"].numel() * e["assignment"].element_size()
                      for e in state.values())
    index_bytes = sum(s.flat_index().numel() * s.flat_index().element_size() for s in first_cb.codebooks.values())
    biggest = max(first_cb.codebooks.values(), key=lambda s: s.assignment.numel())
    weight = biggest.decode()
    return {
        "model": name,
        "steps_timed_per_variant": len(timers["dense"].cpu),
        "parameters": sum(p.numel() for p in dense.parameters()),
        "shared_weights": shared_weights,
        "clustering_fit_s": clustering,
        "median_step_cpu_s": cpu,
        "median_step_wall_s": wall,
        "ratio_cpu_vs_dense": {v: cpu[v] / cpu["dense"] for v in cpu},
        "ratio_wall_vs_dense": {v: wall[v] / wall["dense"] for v in wall},
        "state_dict_bytes_per_shared_weight": state_bytes / shared_weights,
        "memory_bytes_per_shared_weight": (state_bytes + index_bytes) / shared_weights,
        "breakdown_largest_layer_s": {str(g): breakdown(weight, g) for g in granularities},
        "largest_layer_shape": list(weight.shape),
    }


def random_loader(shape, classes: int, batch: int, batches: int, tokens: bool = False, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    n = batch * batches
    if tokens:
        x = torch.randint(classes, (n, *shape), generator=g)
        y = torch.randint(classes, (n, *shape), generator=g)
    else:
        x = torch.randn(n, *shape, generator=g)
        y = torch.randint(classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def main() -> None:
    p = parser(__doc__, quick_help="small models and few steps (a smoke run, ~1 minute)")
    p.add_argument("--steps", type=int, default=8, help="steps per fit (the first is not timed)")
    p.add_argument("--reps", type=int, default=4, help="interleaved fits per variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="mlp,resnet18,transformer")
    p.add_argument("--tag", default="", help="suffix of the result file (sharing_step_<tag>.json)")
    args = p.parse_args()
    if len(args.seeds) != 1:
        p.error("--seeds: one seed (of the weights and the random data) per call")
    seed = args.seeds[0]
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.reps = 4, 2
    width = 512 if args.quick else 2048
    batch_resnet = 8 if args.quick else 32
    ctx, vocab, dim, blocks = (32, 256, 64, 2) if args.quick else (64, 256, 256, 4)
    results = []
    for m in args.models.split(","):
        if m == "mlp":
            results.append(run_model(f"MLP 8 x Linear {width}x{width} (batch 16)", lambda: mlp(width),
                                     random_loader((width,), 10, 16, args.steps + 1, seed=seed), args.steps,
                                     args.reps, ["tensor", "channel"], seed))
        elif m == "resnet18":
            results.append(run_model(f"ResNet-18 CIFAR (batch {batch_resnet}, 32x32)", resnet18,
                                     random_loader((3, 32, 32), 10, batch_resnet, args.steps + 1, seed=seed),
                                     args.steps, args.reps, ["tensor"], seed))
        elif m == "transformer":
            net, label = transformer(vocab, dim, blocks, ctx)
            results.append(run_model(f"{label} (batch 16)", lambda: copy.deepcopy(net),
                                     random_loader((ctx,), vocab, 16, args.steps + 1, tokens=True, seed=seed),
                                     args.steps, args.reps, ["tensor"], seed))
        else:
            p.error(f"--models: unknown model {m!r} (choose from mlp, resnet18, transformer)")
        print_table(results[-1])
    stem = "sharing_step" + (f"_{args.tag}" if args.tag else "")
    out = write_json(result_path(args, stem), {"meta": meta(args), "results": results})
    print(f"wrote {out}")


def print_table(r: dict) -> None:
    print(f"\n{r['model']}: {r['parameters'] / 1e6:.1f}M parameters, {r['steps_timed_per_variant']} steps per variant")
    print(f"{'variant':28s} {'cpu ms':>8s} {'wall ms':>8s} {'cpu x':>7s} {'wall x':>7s}")
    for v in r["median_step_cpu_s"]:
        print(f"{v:28s} {r['median_step_cpu_s'][v] * 1e3:8.1f} {r['median_step_wall_s'][v] * 1e3:8.1f} "
              f"{r['ratio_cpu_vs_dense'][v]:7.2f} {r['ratio_wall_vs_dense'][v]:7.2f}")
    print(f"state: {r['state_dict_bytes_per_shared_weight']:.3f} B/weight in the checkpoint, "
          f"{r['memory_bytes_per_shared_weight']:.3f} B/weight in memory (with the int64 index)")
    for g, parts in r["breakdown_largest_layer_s"].items():
        print(f"  largest layer {r['largest_layer_shape']}, {g}: " +
              ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in parts.items()))


if __name__ == "__main__":
    main()
