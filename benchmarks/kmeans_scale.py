"""k-means at scale: clustering 100M weights per tensor and per output channel (issue 16, item 3).

One LLM-shaped weight matrix (8192 x 12288 = 100.7M float32 values, N(0, 0.02)), clustered at 4 bits
(k = 16) by

* ours: ``core.kmeans.kmeans_1d`` (per tensor) and ``core.sharing.cluster_weight(granularity="channel")``
  (one 1-D k-means per output row), linear init, scikit-learn's ``tol=1e-4`` criterion;
* ours-weighted, ours-optimal-weighted: the same with an importance per weight (squared Gaussian draws, as a
  Fisher diagonal would be), i.e. weighted k-means; their ``weighted_inertia`` is the importance-weighted error
  (a per-tensor codebook of >= 2M values is solved over value bins, ``core.kmeans_binned``);
* ours-optimal: ``cluster_weight(init="optimal")``: the dynamic programme of ``core.kmeans_optimal`` (every row
  solved together; a row of up to 1024 values exactly, a longer one over 1024 runs of sorted values (cut by rank and value) then Lloyd
  when that leaves >= 16 runs per centroid (exactly otherwise);
  a single codebook per tensor up to 4096 values exactly, over 4096 runs beyond);
* scikit-learn ``KMeans`` (Lloyd, ``n_init=1``, same init, same tol) — it does O(n k) work per iteration, so it
  runs on a subsample (``--sk-values`` values per tensor, ``--sk-rows`` rows per channel) and its time is
  scaled linearly to the full size (named as an extrapolation in the table);
* coreai-opt (Apple, optional): ``KMeansPalettizer`` on an ``nn.Linear`` holding the same matrix, per tensor and
  per channel (``PerGroupedChannelGranularity(group_size=1)``); its default "fast mode" rounds weights to
  float16 and 4 decimals and runs an exact 1-D dynamic programme (kmeans1d) on the unique values. Its C++
  kernel is compiled on first use; a warm-up on a tiny layer runs first. Install it outside the project's
  environment (``pip install --no-deps --target DIR coreai-opt torchao pydantic ...``) and pass
  ``--coreai-path DIR``; it is never a dependency of the package.

Every measurement runs in a fresh process: time is wall-clock of the clustering call, memory is the process's
peak RSS (VmHWM) minus its RSS just before the call (the input matrix already allocated). The quality column is
the per-tensor (or summed per-row) inertia relative to ours.

Usage::

    python benchmarks/kmeans_scale.py --quick      # 1M weights (1024 x 1024), < 60 s
    python benchmarks/kmeans_scale.py              # 100M weights

Results: ``benchmarks/results/kmeans_scale[_quick].json``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from _common import meta, parser, result_path, write_json


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _matrix(rows: int, cols: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(rows, cols, generator=g) * 0.02


def _inertia_rows(w, decoded) -> float:
    return float((w.double() - decoded.double()).square().sum())


def _run_ours(rows: int, cols: int, k: int, granularity: str, tol: float, init: str = "linear",
              weighted: bool = False) -> dict:
    import torch

    from lightning_compress.core.sharing import cluster_weight

    w = _matrix(rows, cols)
    importance = None
    if weighted:  # a Fisher-like importance: squared Gaussian "gradients" (fixed seed)
        importance = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1)).square_()
    before = _rss_kib("VmRSS")
    t = time.perf_counter()
    shared = cluster_weight(w, k, granularity=granularity, tol=tol, init=init, importance=importance)
    seconds = time.perf_counter() - t
    peak = _rss_kib("VmHWM") - before
    decoded = shared.decode()
    extra = {} if importance is None else {
        "weighted_inertia": float((importance.double() * (w.double() - decoded.double()).square()).sum())}
    return {"seconds": seconds, "peak_mib": peak / 1024, "inertia": _inertia_rows(w, decoded), **extra,
            "values": rows * cols, "measured_values": rows * cols, "threads": torch.get_num_threads()}


def _run_sklearn(rows: int, cols: int, k: int, granularity: str, tol: float, sk_values: int, sk_rows: int) -> dict:
    from sklearn.cluster import KMeans

    from lightning_compress.core.kmeans import init_centroids

    w = _matrix(rows, cols)
    if granularity == "tensor":
        sub = w.reshape(-1)[torch_perm(w.numel(), sk_values)]
        blocks = [sub]
    else:
        blocks = [w[i] for i in range(min(sk_rows, rows))]
    inits = [init_centroids(b, k, "linear").numpy()[:, None] for b in blocks]
    before = _rss_kib("VmRSS")
    t = time.perf_counter()
    inertia = 0.0
    for b, c0 in zip(blocks, inits):
        km = KMeans(k, init=c0, n_init=1, max_iter=300, tol=tol, algorithm="lloyd").fit(b.numpy()[:, None])
        inertia += float(km.inertia_)
    seconds = time.perf_counter() - t
    peak = _rss_kib("VmHWM") - before
    measured = sum(b.numel() for b in blocks)
    scale = rows * cols / measured
    return {"seconds": seconds * scale, "seconds_measured": seconds, "extrapolated_x": scale,
            "peak_mib": peak / 1024, "inertia": inertia * scale if granularity == "channel" else None,
            "values": rows * cols, "measured_values": measured,
            "threads": os.cpu_count()}  # scikit-learn's OpenMP uses every core by default


def torch_perm(n: int, m: int):
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(1))[:m]


def _coreai_model(w, k_bits: int, granularity: str):
    import torch
    from torch import nn

    from coreai_opt.palettization import KMeansPalettizer, KMeansPalettizerConfig, ModuleKMeansPalettizerConfig
    from coreai_opt.palettization.spec import PalettizationSpec, PerGroupedChannelGranularity, PerTensorGranularity

    gran = PerTensorGranularity() if granularity == "tensor" else PerGroupedChannelGranularity(axis=0, group_size=1)
    spec = PalettizationSpec(n_bits=k_bits, granularity=gran)
    module = ModuleKMeansPalettizerConfig(op_input_spec=None, op_output_spec=None, op_state_spec={"weight": spec})
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    model = nn.Sequential(layer)
    return KMeansPalettizer(model, KMeansPalettizerConfig(global_config=module)), torch.zeros(1, w.shape[1])


def _run_coreai(rows: int, cols: int, k: int, granularity: str, tol: float, coreai_path: str) -> dict:
    import warnings

    import torch

    sys.path.insert(0, coreai_path)
    warnings.filterwarnings("ignore")
    bits = k.bit_length() - 1
    warm, x = _coreai_model(torch.randn(16, 16), bits, granularity)  # compiles the C++ kernel once
    warm.prepare(example_inputs=(x,))
    w = _matrix(rows, cols)
    palettizer, x = _coreai_model(w, bits, granularity)
    before = _rss_kib("VmRSS")
    t = time.perf_counter()
    model = palettizer.prepare(example_inputs=(x,))
    with torch.no_grad():
        decoded = model[0].weight.detach().clone()
    seconds = time.perf_counter() - t
    peak = _rss_kib("VmHWM") - before
    return {"seconds": seconds, "peak_mib": peak / 1024, "inertia": _inertia_rows(w, decoded),
            "values": rows * cols, "measured_values": rows * cols}


def _child(queue, fn, args) -> None:
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
        queue.put(fn(*args))
    except Exception as err:  # noqa: BLE001 - reported in the table, the run goes on
        queue.put({"error": f"{type(err).__name__}: {err}"[:500]})


def measure(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args))
    proc.start()
    while True:  # a child killed for memory never answers: notice it instead of waiting forever
        try:
            out = queue.get(timeout=5)
            break
        except Exception:  # noqa: BLE001 - queue.Empty
            if not proc.is_alive():
                out = {"error": f"process died (exit code {proc.exitcode}; out of memory?)"}
                break
    proc.join()
    return out


def main(argv=None) -> None:
    ap = parser(__doc__, quick_help="1M weights (1024 x 1024)")
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=12288)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--sk-values", type=int, default=2_000_000, help="scikit-learn per-tensor subsample")
    ap.add_argument("--sk-rows", type=int, default=64, help="scikit-learn per-channel rows measured")
    ap.add_argument("--coreai-path", default=None, help="directory holding coreai-opt (pip install --target)")
    ap.add_argument("--skip", nargs="*", default=[], help="methods to skip: ours sklearn coreai (their rows of the "
                    "previous run are kept)")
    ap.add_argument("--granularities", nargs="+", default=["tensor", "channel"])
    ap.add_argument("--tag", default="", help="suffix of the result file name (another matrix size)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these methods (e.g. ours-optimal "
                    "ours-optimal-weighted); the other rows of the previous run are kept")
    args = ap.parse_args(argv)
    rows, cols = (1024, 1024) if args.quick else (args.rows, args.cols)
    sk_values = min(args.sk_values, rows * cols // 4) if args.quick else args.sk_values
    table = []
    for gran in args.granularities:
        jobs = [("ours", _run_ours, (rows, cols, args.k, gran, args.tol)),
                ("ours-optimal", _run_ours, (rows, cols, args.k, gran, args.tol, "optimal")),
                ("ours-weighted", _run_ours, (rows, cols, args.k, gran, args.tol, "linear", True)),
                ("ours-optimal-weighted", _run_ours, (rows, cols, args.k, gran, args.tol, "optimal", True)),
                ("sklearn", _run_sklearn, (rows, cols, args.k, gran, args.tol, sk_values, args.sk_rows))]
        if args.coreai_path:
            jobs.append(("coreai-opt", _run_coreai, (rows, cols, args.k, gran, args.tol, args.coreai_path)))
        for name, fn, fargs in jobs:
            if name.split("-")[0] in args.skip or (args.only is not None and name not in args.only):
                continue
            row = {"method": name, "granularity": gran, **measure(fn, *fargs)}
            table.append(row)
            print(json.dumps(row), flush=True)
    path = result_path(args, f"kmeans_scale{args.tag}")
    if (args.skip or args.only is not None) and path.exists():  # keep the other methods' rows (same sizes)
        old = json.loads(path.read_text())
        ran = {(r["method"], r["granularity"]) for r in table}
        if (old["rows"], old["cols"], old["k"]) == (rows, cols, args.k):
            kept = [r for r in old["table"] if (r["method"], r["granularity"]) not in ran]
            table = sorted(kept + table, key=lambda r: (r["granularity"] != "tensor", r["method"]))
    ours = {r["granularity"]: r for r in table if r["method"] == "ours" and "error" not in r}
    for r in table:
        if r.get("inertia") is not None and r["granularity"] in ours:
            r["inertia_vs_ours"] = r["inertia"] / ours[r["granularity"]]["inertia"]
    payload = {"rows": rows, "cols": cols, "k": args.k, "tol": args.tol, "table": table,
               "meta": meta(args, bench_threads=int(os.environ.get("BENCH_THREADS", "1")))}
    write_json(path, payload)
    print(f"\n{rows} x {cols} = {rows * cols:,} weights, k = {args.k}")
    print("| method | granularity | time (s) | peak extra memory (MiB) | inertia vs ours | note |")
    print("|---|---|---|---|---|---|")
    for r in table:
        if "error" in r:
            print(f"| {r['method']} | {r['granularity']} | – | – | – | {r['error']} |")
            continue
        note = f"measured on {r['measured_values']:,} values, time x{r['extrapolated_x']:.0f}" if "extrapolated_x" in r else ""
        q = f"{r['inertia_vs_ours']:.4f}" if "inertia_vs_ours" in r else "–"
        print(f"| {r['method']} | {r['granularity']} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | {q} | {note} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
