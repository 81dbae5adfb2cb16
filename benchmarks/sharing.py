"""Weight sharing benchmarks.

Part 1 (``kmeans``): our 1-D k-means (``core.kmeans.kmeans_1d``) against scikit-learn's ``KMeans``
(Lloyd, ``n_init=1``) started from the *same* initial centroids (our linear init, passed to scikit-learn as
an array), with the same ``max_iter`` and ``tol`` (scikit-learn's criterion, implemented identically), on
Gaussian "weights" of 1M and 10M float32 values with k = 32 and 256. Both results are scored with the
same float64 inertia. scikit-learn runs on the float32 input (its faster path); its float32 arithmetic
follows a slightly different trajectory from our float64 one, so on 1M values it is also run in float64,
where it must reproduce our inertia (same algorithm, same empty-cluster rule). Our time includes sorting, initialisation and the final labels; scikit-learn's time
is its ``fit`` only. Speed-up and inertia ratio come from the same run.

Part 2 (``bits``): accuracy vs bits (2..8) of LeNet-300-100 on Fashion-MNIST, without and with pruning,
like Deep Compression's bits table. A dense model is trained; a pruned one is derived from it with
``GradualMagnitudePruning`` (Han et al.'s LeNet-300-100 kept fractions 8% / 9% / 26%). For each bit width
every layer is clustered (k = 2^bits, linear init, the callback's clustering) and the centroids are
fine-tuned with ``WeightSharing``. Reported: test accuracy of the base model, just after clustering (no
fine-tuning) and after fine-tuning.

Usage::

    python benchmarks/sharing.py --quick            # smoke run, both parts, < 2 minutes
    python benchmarks/sharing.py --part kmeans      # full part 1
    python benchmarks/sharing.py --part bits        # full part 2

Results: ``benchmarks/results/sharing_kmeans[_quick].json`` and ``sharing_bits[_quick].json``.
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import torch
from _common import meta, parser, result_path, trainer as quiet_trainer, write_json

from lightning_compress.core.kmeans import inertia, init_centroids, kmeans_1d


def _meta(args) -> dict:
    import sklearn

    return meta(args, sklearn=sklearn.__version__)


# ---------------------------------------------------------------- part 1: k-means speed and inertia
def _sk_inertia(x: torch.Tensor, km) -> float:
    return inertia(x, torch.from_numpy(km.cluster_centers_.ravel().astype(np.float64)), torch.from_numpy(km.labels_).long())


def bench_kmeans(sizes: list[int], ks: list[int], max_iter: int, tol: float, seed: int = 0,
                 sk64_max_n: int = 1_000_000) -> dict:
    from sklearn.cluster import KMeans

    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(seed)
        x = (0.05 * torch.randn(n, generator=g)).float()
        x_np = x.numpy().reshape(-1, 1)
        for k in ks:
            t0 = time.perf_counter()
            ours = kmeans_1d(x, k, init="linear", max_iter=max_iter, tol=tol)
            t_ours = time.perf_counter() - t0

            c0_64 = init_centroids(x, k, "linear").numpy().reshape(-1, 1)
            c0 = c0_64.astype(np.float32)
            km = KMeans(k, init=c0, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd", random_state=seed)
            t0 = time.perf_counter()
            km.fit(x_np)
            t_sk = time.perf_counter() - t0

            in_ours = inertia(x, ours.centroids, ours.labels)
            in_sk = _sk_inertia(x, km)
            in_sk64 = None
            if n <= sk64_max_n:  # same algorithm in float64: the trajectories coincide, so must the inertia
                km64 = KMeans(k, init=c0_64, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd")
                in_sk64 = _sk_inertia(x, km64.fit(x_np.astype(np.float64)))
            row = {
                "n": n,
                "k": k,
                "ours_s": t_ours,
                "sklearn_s": t_sk,
                "speedup": t_sk / t_ours,
                "ours_inertia": in_ours,
                "sklearn_inertia": in_sk,
                "inertia_ratio_ours_over_sklearn": in_ours / in_sk,
                "sklearn_float64_inertia": in_sk64,
                "ours_iter": ours.n_iter,
                "sklearn_iter": int(km.n_iter_),
                "ours_clusters": int(ours.centroids.numel()),
            }
            rows.append(row)
            print(
                f"n={n:>10,} k={k:>3}: ours {t_ours:7.3f}s ({ours.n_iter} it) | sklearn {t_sk:8.3f}s "
                f"({km.n_iter_} it) | speed-up {row['speedup']:6.1f}x | inertia ours/sklearn "
                f"{row['inertia_ratio_ours_over_sklearn']:.6f}",
                flush=True,
            )
    return {
        "init": "linear (ours, passed to scikit-learn as an array)",
        "max_iter": max_iter,
        "tol": tol,
        "data": "0.05 * N(0, 1), float32",
        "sklearn_input": "float32 (timed); float64 run for n <= %d gives sklearn_float64_inertia (not timed)" % sk64_max_n,
        "inertia": "float64 sum of squared distances of both results, computed the same way",
        "rows": rows,
    }


def print_kmeans_table(res: dict) -> None:
    print("\n| n | k | ours (s) | scikit-learn (s) | speed-up | inertia ours / sklearn | iterations ours / sklearn |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in res["rows"]:
        print(
            f"| {r['n']:,} | {r['k']} | {r['ours_s']:.3f} | {r['sklearn_s']:.3f} | {r['speedup']:.1f}x | "
            f"{r['inertia_ratio_ours_over_sklearn']:.6f} | {r['ours_iter']} / {r['sklearn_iter']} |"
        )


# ---------------------------------------------------------------- part 2: accuracy vs bits
def _trainer(max_epochs: int, callbacks: list, limit_train_batches=None):
    return quiet_trainer(max_epochs, callbacks, limit_train_batches=limit_train_batches)


@torch.no_grad()
def _test_accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(-1) == y).sum())
        total += y.numel()
    model.train()
    return correct / total


def _cluster_only(model, bits: int):
    """The callback's clustering step alone (no fine-tuning): every weight replaced by its centroid."""
    from lightning_compress.core.sharing import cluster_weight

    m = copy.deepcopy(model)
    with torch.no_grad():
        for layer in (m.fc1, m.fc2, m.fc3):
            layer.weight.copy_(cluster_weight(layer.weight, 2**bits).decode())
    return m


def bench_bits(bits_list: list[int], dense_epochs: int, prune_epochs: int, finetune_epochs: int,
               train_limit: int | None, finetune_lr: float, reduction: str) -> dict:
    import lightning.pytorch as pl

    from lightning_compress import GradualMagnitudePruning, WeightSharing
    from lightning_compress.core.stats import model_stats
    from lightning_compress.zoo.data import FashionMNISTDataModule
    from lightning_compress.zoo.models import LeNet300100

    pl.seed_everything(0, verbose=False)
    quick_limits = {"val_limit": 1000, "test_limit": 2000} if train_limit and train_limit < 5000 else {}
    if train_limit and not quick_limits:
        quick_limits = {"val_limit": 2000}  # the validation split only feeds the callback's before/after check
    dm = FashionMNISTDataModule(batch_size=128, train_limit=train_limit, download=False, **quick_limits)
    dm.setup("fit")
    dm.setup("test")
    test_loader = dm.test_dataloader()
    loaders = {"train_dataloaders": dm.train_dataloader(), "val_dataloaders": dm.val_dataloader()}

    t0 = time.perf_counter()
    dense = LeNet300100(lr=0.05)
    _trainer(dense_epochs, []).fit(dense, **loaders)
    bases = {"dense": dense}
    base_info = {"dense": {"epochs": dense_epochs, "test_acc": _test_accuracy(dense, test_loader)}}

    pruned = copy.deepcopy(dense)
    keep = {"fc1*": 0.92, "fc2*": 0.91, "fc3*": 0.74}  # Han et al. 2015: 8% / 9% / 26% kept
    prune_cb = GradualMagnitudePruning(keep, start_epoch=0, end_epoch=max(1, prune_epochs - 1))
    pruned.hparams.lr = 0.01
    _trainer(prune_epochs, [prune_cb]).fit(pruned, **loaders)
    stats = model_stats(pruned)
    bases["pruned"] = pruned
    base_info["pruned"] = {
        "epochs": prune_epochs,
        "test_acc": _test_accuracy(pruned, test_loader),
        "sparsity": stats.sparsity,
        "kept": {s.name: 1 - s.sparsity for s in stats.layers},
    }
    print(f"base models ({time.perf_counter() - t0:.0f}s): " + json.dumps(base_info), flush=True)

    rows = []
    for base_name, base in bases.items():
        for bits in bits_list:
            t0 = time.perf_counter()
            clustered_acc = _test_accuracy(_cluster_only(base, bits), test_loader)
            model = copy.deepcopy(base)
            model.hparams.lr = finetune_lr
            model.hparams.lr_scheduler = "none"
            sharing = WeightSharing(bits, start_epoch=0, reduction=reduction, eval_batches=None, log_histograms=False)
            _trainer(finetune_epochs, [sharing]).fit(model, **loaders)
            tuned_acc = _test_accuracy(model, test_loader)
            distinct = {n: int(torch.unique(p[p != 0]).numel()) for n, p in model.named_parameters() if n.endswith("weight")}
            stats = model_stats(model)
            row = {
                "base": base_name,
                "bits": bits,
                "base_test_acc": base_info[base_name]["test_acc"],
                "clustered_test_acc": clustered_acc,
                "finetuned_test_acc": tuned_acc,
                "val_acc_before_clustering": sharing.accuracy_before,
                "val_acc_after_clustering": sharing.accuracy_after,
                "distinct_nonzero_values": distinct,
                "estimated_storage_ratio": stats.ratio,
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            print(
                f"{base_name:>6} {bits} bits: base {row['base_test_acc']:.4f} | clustered {clustered_acc:.4f} | "
                f"fine-tuned {tuned_acc:.4f} | storage {stats.ratio:.1f}x ({row['seconds']:.0f}s)",
                flush=True,
            )
    return {
        "dataset": "Fashion-MNIST test set" + (" (first 2000)" if "test_limit" in quick_limits else " (10k)"),
        "train_limit": train_limit,
        "model": "LeNet-300-100",
        "dense_epochs": dense_epochs,
        "prune_epochs": prune_epochs,
        "finetune_epochs": finetune_epochs,
        "finetune_optimizer": f"SGD momentum 0.9, wd 1e-4, lr {finetune_lr}, constant",
        "reduction": reduction,
        "init": "linear",
        "bases": base_info,
        "rows": rows,
    }


def print_bits_table(res: dict) -> None:
    print("\n| bits | dense: clustered | dense: fine-tuned | pruned: clustered | pruned: fine-tuned |")
    print("|---:|---:|---:|---:|---:|")
    by = {(r["base"], r["bits"]): r for r in res["rows"]}
    for b in sorted({r["bits"] for r in res["rows"]}):
        cells = []
        for base in ("dense", "pruned"):
            r = by.get((base, b))
            cells += [f"{r['clustered_test_acc']:.4f}", f"{r['finetuned_test_acc']:.4f}"] if r else ["-", "-"]
        print(f"| {b} | " + " | ".join(cells) + " |")
    print(
        f"| base | {res['bases']['dense']['test_acc']:.4f} | | {res['bases']['pruned']['test_acc']:.4f} "
        f"(sparsity {res['bases']['pruned']['sparsity']:.1%}) | |"
    )


def main(argv=None) -> None:
    ap = parser(__doc__, quick_help="smoke run of both parts (< 2 minutes)")
    ap.add_argument("--part", choices=["kmeans", "bits", "all"], default="all")
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--tol", type=float, default=1e-4, help="scikit-learn's default; same criterion for both")
    ap.add_argument("--reduction", choices=["sum", "mean"], default="sum")
    ap.add_argument("--finetune-lr", type=float, default=None)
    ap.add_argument("--train-limit", type=int, default=None, help="part 2: training examples (default: all 55k)")
    ap.add_argument("--epochs", type=int, nargs=3, default=[6, 6, 2], metavar=("DENSE", "PRUNE", "FINETUNE"),
                    help="part 2: epochs of dense training, pruning and centroid fine-tuning per bit width")
    args = ap.parse_args(argv)

    if args.part in ("kmeans", "all"):
        sizes, ks = ([100_000], [32, 256]) if args.quick else ([1_000_000, 10_000_000], [32, 256])
        res = bench_kmeans(sizes, ks, args.max_iter, args.tol)
        res.update(quick=args.quick, meta=_meta(args))
        print_kmeans_table(res)
        print("wrote", write_json(result_path(args, "sharing_kmeans"), res))

    if args.part in ("bits", "all"):
        # With reduction="sum" the centroid gradient is the sum over thousands of weights: a small lr.
        # A probe on 12k examples (2 and 4 bits) recovered the clustering drop with sum/1e-4 and mean/1e-2.
        lr = args.finetune_lr or (1e-4 if args.reduction == "sum" else 1e-2)
        if args.quick:
            res = bench_bits([2, 8], dense_epochs=1, prune_epochs=1, finetune_epochs=1, train_limit=3000,
                             finetune_lr=lr, reduction=args.reduction)
        else:
            dense_e, prune_e, tune_e = args.epochs
            res = bench_bits(list(range(2, 9)), dense_epochs=dense_e, prune_epochs=prune_e, finetune_epochs=tune_e,
                             train_limit=args.train_limit, finetune_lr=lr, reduction=args.reduction)
        res.update(quick=args.quick, meta=_meta(args))
        print_bits_table(res)
        print("wrote", write_json(result_path(args, "sharing_bits"), res))


if __name__ == "__main__":
    main()
