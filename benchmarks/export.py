"""Benchmark the compressed file against gzip/xz and the entropy bound, and time encode/decode.

For LeNet-300-100 and LeNet-5 compressed the Deep Compression way (per-layer pruning at the paper's kept
fractions, then weight sharing at the paper's bits), this measures side by side, in one run:

* our file's bytes (header included) vs gzip -9 and xz -9e of the *same* pruned, shared state_dict (both as
  ``torch.save`` output and as the bare tensor bytes); goal: <= 0.6x gzip;
* our file vs the Shannon bound of its coded streams (same file, streams at their zero-order entropy, no
  Huffman tables); goal: within 5%;
* ``core/stats.py``'s estimate (same layouts, no Huffman) to show what Huffman coding saves;
* encode (``save_compressed``) and decode (``read_compressed``) throughput, median of repeats;
* that the reloaded model is bit-identical (the sign of pruned zeros aside) and scores the same accuracy.

Compression method (``--method``):
* ``train`` (default): Fashion-MNIST with the project's callbacks, ``GradualMagnitudePruning`` (cubic ramp
  to the per-layer sparsities) then ``WeightSharing`` with centroid fine-tuning (full: LeNet-300-100 6
  epochs, sharing at epoch 4; LeNet-5 4 epochs, sharing at epoch 3; quick: 6k images, 3 epochs).
* ``oneshot``: no training; ``core.masks.magnitude_mask`` on the freshly initialised weights and
  ``core.sharing.cluster_weight`` k-means. Weight statistics differ from trained ones.

* ``--scale``: encode/decode throughput on a 33.6M-weight model (8 Linear 2048x2048, 90% pruned, 5-bit shared),
  one thread, side by side with ``torch.save``/``torch.load`` of the same ``state_dict``, and a bit-exact check
  (goals: encode >= 30M weights/s, decode >= 100M weights/s).

Usage::

    python benchmarks/export.py --quick     # ~1 min: subset of the data, 2 epochs
    python benchmarks/export.py             # full: all 55k training images, more epochs
    python benchmarks/export.py --scale     # throughput at 33.6M weights (~1 min)
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import statistics
import tempfile
import time

import torch
from _common import meta, parser, result_path, trainer as quiet_trainer, write_json

from lightning_compress.core.stats import model_stats
from lightning_compress.export import load_compressed, read_compressed, save_compressed, torch_save_bytes
from lightning_compress.zoo.models import LeNet5, LeNet300100

#: Deep Compression's per-layer kept fractions and bits.
SETUPS = {
    "LeNet-300-100": dict(
        cls=LeNet300100,
        kept={"fc1.weight": 0.08, "fc2.weight": 0.09, "fc3.weight": 0.26},
        bits={"fc1.weight": 6, "fc2.weight": 6, "fc3.weight": 6},
        full_epochs=(6, 4),  # (epochs, epoch at which weights are shared); pruning ramps until share - 0.5
    ),
    "LeNet-5": dict(
        cls=LeNet5,
        kept={"conv1.weight": 0.66, "conv2.weight": 0.12, "fc1.weight": 0.08, "fc2.weight": 0.19},
        bits={"conv1.weight": 8, "conv2.weight": 8, "fc1.weight": 5, "fc2.weight": 5},
        full_epochs=(4, 3),  # conv training is the slow part on a shared 2-core CPU
    ),
}


def compress_oneshot(model, kept: dict, bits: dict) -> None:
    from lightning_compress.core.masks import apply_mask_, magnitude_mask
    from lightning_compress.core.sharing import cluster_weight, decode

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, frac in kept.items():
            p = params[name]
            apply_mask_(p, magnitude_mask(p, 1.0 - frac))
            shared = cluster_weight(p, 2 ** bits[name], init="linear")
            p.copy_(decode(shared.centroids, shared.assignment).view_as(p))


def compress_trained(model, kept: dict, bits: dict, quick: bool, workdir: str, epochs: int, share_at: int) -> dict:
    from lightning_compress.callbacks.pruning import GradualMagnitudePruning
    from lightning_compress.callbacks.sharing import WeightSharing
    from lightning_compress.zoo.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(
        batch_size=128,
        download=False,
        train_limit=6000 if quick else None,
        val_limit=1000 if quick else None,
        test_limit=2000 if quick else None,
    )
    pruning = GradualMagnitudePruning(
        final_sparsity={k: round(1.0 - v, 4) for k, v in kept.items()},
        start_epoch=0,
        end_epoch=share_at - 0.5,
        update_every=0.25,
        log_layers=False,
        prog_bar=False,
    )
    sharing = WeightSharing(bits=dict(bits), start_epoch=share_at, init="linear", reduction="mean", evaluate=False,
                            log_histograms=False)
    trainer = quiet_trainer(epochs, [pruning, sharing], default_root_dir=workdir)
    t = time.perf_counter()
    trainer.fit(model, dm)
    fit_s = time.perf_counter() - t
    acc = trainer.test(model, dm, verbose=False)[0]["test_acc"]
    return dict(epochs=epochs, share_epoch=share_at, train_images=dm.train_limit or "all", fit_seconds=fit_s,
                test_acc=acc, datamodule=dm, trainer=trainer)


def other_compressors(state_dict: dict) -> dict:
    pickled = torch_save_bytes(state_dict)
    raw = b"".join(v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for v in state_dict.values())
    return {
        "torch_save_bytes": len(pickled),
        "gzip_state_dict_bytes": len(gzip.compress(pickled, compresslevel=9, mtime=0)),
        "xz_state_dict_bytes": len(lzma.compress(pickled, preset=9 | lzma.PRESET_EXTREME)),
        "gzip_raw_tensors_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0)),
        "xz_raw_tensors_bytes": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
    }


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def same_up_to_zero_sign(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    ia, ib = a.contiguous().view(torch.int32).clone(), b.contiguous().view(torch.int32).clone()
    for t in (ia, ib):
        t[t == torch.iinfo(torch.int32).min] = 0
    return torch.equal(ia, ib)


def run_model(name: str, setup: dict, method: str, quick: bool, repeats: int, workdir: str) -> dict:
    epochs, share_at = (3, 2) if quick else setup["full_epochs"]
    torch.manual_seed(0)
    model = setup["cls"]()
    info: dict = {"method": method}
    train = None
    if method == "train":
        train = compress_trained(model, setup["kept"], setup["bits"], quick, workdir, epochs, share_at)
        info.update({k: v for k, v in train.items() if k not in ("datamodule", "trainer")})
    else:
        compress_oneshot(model, setup["kept"], setup["bits"])
    model.eval()
    path = os.path.join(workdir, f"{name}.lcz")
    report = save_compressed(model, path, compare_gzip=True)
    assert report.file_bytes == os.path.getsize(path)
    sd = model.state_dict()
    others = other_compressors(sd)
    estimate = model_stats(model).compressed_bytes

    enc_s = timed(lambda: save_compressed(model, path), repeats)
    dec_s = timed(lambda: read_compressed(path), repeats)
    fresh = setup["cls"]()
    load_compressed(path, fresh)
    identical = all(same_up_to_zero_sign(sd[k], v) for k, v in fresh.state_dict().items())
    if train is not None:
        reloaded_acc = train["trainer"].test(fresh, train["datamodule"], verbose=False)[0]["test_acc"]
        info["reloaded_test_acc"] = reloaded_acc

    layer_nonzero = {l.name: round(l.nonzero_fraction, 4) for l in report.layers}
    gz, xz = others["gzip_state_dict_bytes"], others["xz_state_dict_bytes"]
    return {
        **info,
        "file_bytes": report.file_bytes,
        "header_bytes": report.header_bytes,
        "dense_bytes": report.dense_bytes,
        "ratio_vs_dense": report.ratio,
        "stats_estimate_bytes_no_huffman": estimate,
        "entropy_bound_bytes": report.entropy_bound_bytes,
        "file_over_entropy_bound": report.file_bytes / report.entropy_bound_bytes,
        **others,
        "file_over_gzip": report.file_bytes / gz,
        "file_over_xz": report.file_bytes / xz,
        "file_over_gzip_raw": report.file_bytes / others["gzip_raw_tensors_bytes"],
        "goal_le_0.6x_gzip": report.file_bytes <= 0.6 * gz,
        "goal_within_5pct_of_entropy": report.file_bytes <= 1.05 * report.entropy_bound_bytes,
        "encode_seconds": enc_s,
        "decode_seconds": dec_s,
        "encode_weights_per_s": report.numel / enc_s,
        "decode_weights_per_s": report.numel / dec_s,
        "reload_bit_identical_up_to_zero_sign": identical,
        "layer_nonzero_fraction": layer_nonzero,
        "report": report.as_dict(),
        "table": report.table(),
    }


def scale_model(layers: int = 8, width: int = 2048, sparsity: float = 0.9, bits: int = 5) -> torch.nn.Module:
    """``layers`` Linear(width, width), magnitude-pruned to ``sparsity``, survivors on 2**bits - 1 linear centroids."""
    torch.manual_seed(0)  # the biases
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    with torch.no_grad():
        for layer in model:
            w = torch.randn(width, width, generator=g)
            keep = w.abs() > w.abs().flatten().kthvalue(int(sparsity * w.numel())).values
            centroids = torch.linspace(float(w[keep].min()), float(w[keep].max()), 2**bits - 1)
            nearest = centroids[torch.bucketize(w, (centroids[1:] + centroids[:-1]) / 2)]
            layer.weight.copy_(torch.where(keep, nearest, torch.zeros(())))
    return model


def run_scale(repeats: int, workdir: str) -> dict:
    model = scale_model()
    sd = model.state_dict()
    numel = sum(v.numel() for v in sd.values())
    lcz, pt = os.path.join(workdir, "scale.lcz"), os.path.join(workdir, "scale.pt")
    report = save_compressed(model, lcz)
    times = {"lcz_encode": [], "lcz_decode": [], "torch_save": [], "torch_load": []}
    for _ in range(repeats):  # interleaved, so load on the machine hits both alike
        for key, fn in (("lcz_encode", lambda: save_compressed(model, lcz)), ("lcz_decode", lambda: read_compressed(lcz)),
                        ("torch_save", lambda: torch.save(sd, pt)),
                        ("torch_load", lambda: torch.load(pt, map_location="cpu", weights_only=True))):
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    back = read_compressed(lcz)
    exact = all(same_up_to_zero_sign(sd[k], back[k]) for k in sd)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": "8 x Linear(2048, 2048), 90% pruned, 5-bit shared (31 centroids + zero)",
        "weights": numel, "file_bytes": report.file_bytes, "ratio": report.ratio,
        "torch_save_bytes": os.path.getsize(pt), "codecs": sorted({l.codec for l in report.layers}),
        **{f"{k}_seconds": v for k, v in med.items()},
        **{f"{k}_seconds_all": v for k, v in times.items()},
        "encode_weights_per_s": numel / med["lcz_encode"], "decode_weights_per_s": numel / med["lcz_decode"],
        "goal_encode_30M_per_s": numel / med["lcz_encode"] >= 30e6,
        "goal_decode_100M_per_s": numel / med["lcz_decode"] >= 100e6,
        "bit_exact_up_to_zero_sign": exact,
    }


def main_scale(args, repeats: int) -> None:
    out = result_path(args, "format_throughput")  # not export*.json: docs/hooks.py renders those
    with tempfile.TemporaryDirectory() as workdir:
        r = run_scale(repeats, workdir)
    info = meta(args, repeats=repeats, load_average=os.getloadavg(),
                note="medians of interleaved repeats, one thread, on a shared 2-core CPU (other jobs running)")
    write_json(out, {"meta": info, "results": r})
    print("| | seconds | M weights/s |\n|---|---:|---:|")
    for key in ("lcz_encode", "lcz_decode", "torch_save", "torch_load"):
        sec = r[f"{key}_seconds"]
        print(f"| {key} | {sec:.3f} | {r['weights'] / sec / 1e6:.1f} |")
    print(f"\nfile {r['file_bytes']:,} bytes ({r['ratio']:.1f}x), torch.save {r['torch_save_bytes']:,} bytes; "
          f"bit-exact: {r['bit_exact_up_to_zero_sign']}\nwrote {out}")


def main() -> None:
    ap = parser(__doc__, quick_help="smoke run: data subset, fewer epochs/repeats")
    ap.add_argument("--scale", action="store_true", help="throughput at 33.6M weights vs torch.save/torch.load "
                    "(writes <out>/format_throughput[_quick].json)")
    ap.add_argument("--method", choices=["train", "oneshot"], default="train")
    ap.add_argument("--models", nargs="*", default=list(SETUPS), choices=list(SETUPS))
    args = ap.parse_args()
    torch.set_num_threads(1)  # a shared CPU: more threads oversubscribe and slow everyone down
    repeats = 3 if args.quick else 7
    if args.scale:
        main_scale(args, repeats)
        return
    out = result_path(args, "export", suffix=("_oneshot" if args.method == "oneshot" else "") + ".json")
    info = meta(args, method=args.method,
                note="file/gzip and file/xz compare against the same pruned+shared state_dict (torch.save output); "
                "entropy bound = same file with every coded stream at its zero-order entropy and no Huffman tables. "
                "Timings on a shared 2-core CPU.")
    results = {}
    if out.exists():  # keep other models' results of the same kind of run (models can be run one at a time)
        previous = json.loads(out.read_text())
        if {k: previous["meta"].get(k) for k in ("quick", "method")} == {"quick": args.quick, "method": args.method}:
            results = {k: v for k, v in previous["results"].items() if k not in args.models}
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            print(f"== {name} ({args.method}{', quick' if args.quick else ''})", flush=True)
            results[name] = run_model(name, SETUPS[name], args.method, args.quick, repeats, workdir)
            results[name]["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            print(results[name].pop("table"), flush=True)
            write_json(out, {"meta": info, "results": results})

    header = (
        "| model | method | acc | file B | ratio | stats est. B | entropy B | file/entropy | gzip B | file/gzip "
        "| xz B | file/xz | enc ms | dec ms | enc Mw/s | dec Mw/s |"
    )
    print("\n" + header + "\n" + "|---" * 16 + "|")
    for name, r in results.items():
        acc = f"{r['test_acc']:.4f}" if "test_acc" in r else "-"
        print(
            f"| {name} | {r['method']} | {acc} | {r['file_bytes']:,} | {r['ratio_vs_dense']:.1f}x | "
            f"{r['stats_estimate_bytes_no_huffman']:,} | {r['entropy_bound_bytes']:,} | {r['file_over_entropy_bound']:.3f} | "
            f"{r['gzip_state_dict_bytes']:,} | {r['file_over_gzip']:.3f} | {r['xz_state_dict_bytes']:,} | "
            f"{r['file_over_xz']:.3f} | {1e3 * r['encode_seconds']:.1f} | {1e3 * r['decode_seconds']:.1f} | "
            f"{r['encode_weights_per_s'] / 1e6:.2f} | {r['decode_weights_per_s'] / 1e6:.2f} |"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
