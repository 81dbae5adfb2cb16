"""Post-training palettization of a trained TinyGPT: granularity x weighting at 3 and 4 bits (issue 18, item 6).

A dense ``zoo.TinyGPT`` (byte level, Debian's fortunes via ``zoo.TextDataModule``) is trained, then copies of it
are palettized post-training with ``lightning_compress.share_weights`` — per tensor, per output channel and per
group of 8 and 32 channels, each plain and Fisher-weighted (16 calibration batches of the training split), each
with the optimal codebooks (``init="optimal"``, the dynamic programme, the default) and with Lloyd from the
linear start (``init="linear"``, Deep Compression's k-means) — and
with coreai-opt's ``KMeansPalettizer`` (optional, installed outside the environment and passed as
``--coreai-path``) at the same bits and granularity. For each: validation perplexity (exp of the mean
per-token cross-entropy on the validation split), clustering wall time, and the real ``.lcz`` file bytes of the
palettized state dict (``format.api.encode_state_dict``: grouped codebooks stored as format version 2, every
codebook counted; the tied embedding/LM-head stored once). coreai-opt's palettized weights (its lookup tables
decoded) go through the same encoder, so its bytes are counted the same way. Selected tensors: every Linear,
Embedding and attention in-projection matrix (biases and norms stay float32); ``--types linear embedding``
selects exactly the tensors coreai-opt palettizes (it leaves the attention in-projection dense), for the
equal-bytes comparison.

Centroid fine-tuning: copies of the dense model are trained ``--finetune-steps`` more steps (Adam at
``--finetune-lr``) with the ``WeightSharing`` callback clustering at step 0 (per channel and per 32 channels,
Fisher-weighted, optimal codebooks), next to the dense model trained the same extra steps (the fair baseline).

Usage::

    python benchmarks/palettization.py --quick     # a short training run, < 60 s of clustering + eval
    python benchmarks/palettization.py --seeds 0 1 2

Results: ``benchmarks/results/palettization[_quick].json``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _common import meta, parser, result_path, trainer as quiet_trainer, write_json
from torch import nn

import lightning_compress as lc
from lightning_compress.core.targets import find_targets
from lightning_compress.format.api import encode_state_dict
from lightning_compress.zoo import TextDataModule, TinyGPT

TYPE_CHOICES = {"linear": "linear", "embedding": "embedding", "attention": nn.MultiheadAttention}
TYPES = ["linear", "embedding", nn.MultiheadAttention]  # --types; coreai-opt leaves attention in_proj dense
EXCLUDE: list[str] = []  # --exclude: globs left dense (coreai-opt also leaves TinyGPT's position table dense)


def selected(model: nn.Module) -> list[str]:
    return [t.name for t in find_targets(model, types=TYPES, exclude=EXCLUDE or None)]
GRANULARITIES = ["tensor", "channel", 8, 32]


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def perplexity(model: nn.Module, loader, max_batches: int | None) -> float:
    model.eval()
    total, count = 0.0, 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(x)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        count += y.numel()
    return math.exp(total / count)


def train_dense(seed: int, steps: int, train_limit: int | None, size: dict) -> tuple[TinyGPT, TextDataModule]:
    pl.seed_everything(seed, workers=True)
    dm = TextDataModule(batch_size=32, train_limit=train_limit, seed=42, context=size["context"])
    model = TinyGPT(lr=3e-3, **size)
    trainer = quiet_trainer(1000, max_steps=steps, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    model.eval()
    return model, dm


def file_bytes(model: nn.Module, grouped: dict[str, int | str]) -> int:
    """Real .lcz bytes of ``model``'s weights: selected tensors compressed (grouped where given), ties once."""
    names = selected(model)
    state, seen = {}, set()
    for name, tensor in model.state_dict(keep_vars=False).items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        state[name] = tensor
    _, report = encode_state_dict(state, compress=[n for n in names if n in state],
                                  groups={n: g for n, g in grouped.items() if n in state})
    return report.file_bytes


def run_ours(dense, dm, bits: int, granularity, weighting, eval_batches, init: str = "optimal") -> dict:
    model = copy.deepcopy(dense)
    kwargs = {}
    if weighting:
        kwargs = {"weighting": "fisher", "dataloader": dm.train_dataloader(), "loss_fn": lm_loss, "calibration_batches": 16}
    t = time.perf_counter()
    lc.share_weights(model, bits=bits, granularity=granularity, types=TYPES, exclude=EXCLUDE or None, init=init,
                     **kwargs)
    seconds = time.perf_counter() - t
    grouped = {} if granularity == "tensor" else {name: "auto" for name in selected(model)}
    return {"seconds": seconds, "val_ppl": perplexity(model, dm.val_dataloader(), eval_batches),
            "file_bytes": file_bytes(model, grouped)}


def finetune(dense, dm, steps: int, lr: float, eval_batches, bits: int | None = None, granularity="channel",
             weighting: str = "fisher", seed: int = 0) -> dict:
    """``steps`` more training steps of a copy of ``dense``: plain (``bits=None``) or with WeightSharing
    clustering at step 0 (optimal codebooks, Fisher-weighted or plain) and training the centroids from there.
    Seeded per call, so every variant of one seed (the dense one included) sees the same batches."""
    pl.seed_everything(seed, workers=True, verbose=False)
    model = copy.deepcopy(dense)
    model.hparams.lr = lr
    callbacks = [] if bits is None else [lc.WeightSharing(
        bits, start_step=0, granularity=granularity, weighting=None if weighting == "plain" else weighting,
        init="optimal", calibration_batches=16,
        types=TYPES, exclude=EXCLUDE or None, evaluate=False, log_histograms=False)]
    t = time.perf_counter()
    quiet_trainer(1000, callbacks=callbacks, max_steps=steps, limit_val_batches=0).fit(model, datamodule=dm)
    seconds = time.perf_counter() - t
    model.eval()
    grouped = {} if bits is None else {name: "auto" for name in selected(model)}
    return {"seconds": seconds, "val_ppl": perplexity(model, dm.val_dataloader(), eval_batches),
            "file_bytes": file_bytes(model, grouped)}


def run_coreai(dense, dm, bits: int, granularity, eval_batches, coreai_path: str) -> dict:
    sys.path.insert(0, coreai_path)
    warnings.filterwarnings("ignore")
    from coreai_opt.palettization import KMeansPalettizer, KMeansPalettizerConfig, ModuleKMeansPalettizerConfig
    from coreai_opt.palettization.spec import PalettizationSpec, PerGroupedChannelGranularity, PerTensorGranularity

    size = 1 if granularity == "channel" else granularity
    gran = PerTensorGranularity() if granularity == "tensor" else PerGroupedChannelGranularity(axis=0, group_size=size)
    spec = PalettizationSpec(n_bits=bits, granularity=gran)
    module_cfg = ModuleKMeansPalettizerConfig(op_input_spec=None, op_output_spec=None, op_state_spec={"weight": spec})
    model = copy.deepcopy(dense)
    x = next(iter(dm.val_dataloader()))[0][:1]
    t = time.perf_counter()
    palettized = KMeansPalettizer(model, KMeansPalettizerConfig(global_config=module_cfg)).prepare(example_inputs=(x,))
    seconds = time.perf_counter() - t
    ppl = perplexity(palettized, dm.val_dataloader(), eval_batches)
    plain = copy.deepcopy(dense)  # its decoded weights into the plain architecture, then the same encoder
    with torch.no_grad():
        decoded = {n: p.detach() for n, p in palettized.state_dict().items() if "original" not in n}
        for name, module in palettized.named_modules():
            if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
                decoded[f"{name}.weight"] = module.weight.detach()
        plain.load_state_dict({n: decoded.get(n, v) for n, v in plain.state_dict().items()})
    changed = [n for n, v in plain.state_dict().items() if not torch.equal(v, dense.state_dict()[n])]
    grouped = {} if granularity == "tensor" else {n: "auto" for n in changed}
    return {"seconds": seconds, "val_ppl": ppl, "file_bytes": file_bytes(plain, grouped), "palettized": changed}


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--steps", type=int, default=400, help="dense training steps (batch 32)")
    ap.add_argument("--eval-batches", type=int, default=None, help="validation batches (default: all)")
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--coreai-path", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--types", nargs="+", choices=sorted(TYPE_CHOICES), default=["linear", "embedding", "attention"],
                    help="tensors share_weights selects (and the file compresses); 'linear embedding' = coreai-opt's")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--exclude", nargs="*", default=[], help="globs of tensors left dense (e.g. pos.weight, which "
                    "coreai-opt does not palettize)")
    ap.add_argument("--inits", nargs="+", choices=["optimal", "linear", "density", "kmeans++"],
                    default=["optimal", "linear"], help="share_weights' init: optimal codebooks and/or Lloyd starts")
    ap.add_argument("--finetune-steps", type=int, default=100, help="centroid fine-tuning steps (0: none)")
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--finetune-granularities", nargs="+", default=["channel", "32"],
                    help="granularities fine-tuned with WeightSharing (tensor, channel or a group size)")
    ap.add_argument("--finetune-weightings", nargs="+", choices=["plain", "fisher"], default=["fisher"])
    ap.add_argument("--skip-post-training", action="store_true", help="only the centroid fine-tuning runs")
    ap.add_argument("--summarize", default=None, metavar="JSON", help="only add the over-seeds summary to a result file")
    args = ap.parse_args(argv)
    if args.summarize:
        payload = json.loads(open(args.summarize).read())
        payload["summary"] = summarize(payload["rows"])
        payload["equal_bytes"] = equal_bytes(payload["summary"])
        write_json(Path(args.summarize), payload)
        return
    TYPES[:] = [TYPE_CHOICES[t] for t in args.types]
    EXCLUDE[:] = args.exclude
    torch.set_num_threads(args.threads)  # more threads than free cores slows a shared machine down ~10x
    steps, eval_batches = (30, 4) if args.quick else (args.steps, args.eval_batches)
    size = {"d_model": 64, "n_layers": 1, "context": 32} if args.quick else {"d_model": 128, "n_layers": 2, "context": 64}
    grans = ["tensor", "channel", 32] if args.quick else GRANULARITIES
    bits_list = [4] if args.quick else args.bits
    rows = []
    for seed in args.seeds:
        t = time.perf_counter()
        dense, dm = train_dense(seed, steps, 2000 if args.quick else None, size)
        train_s = time.perf_counter() - t
        dm.setup("fit")
        base = {"seed": seed, "method": "dense", "bits": 32, "granularity": "-", "weighting": "-", "seconds": 0.0,
                "val_ppl": perplexity(dense, dm.val_dataloader(), eval_batches), "file_bytes": file_bytes(dense, {}),
                "train_seconds": train_s}
        rows.append(base)
        print(json.dumps(base), flush=True)
        if not args.skip_post_training:
            rows += post_training_rows(dense, dm, seed, bits_list, grans, args, eval_batches)
        ft_steps = 5 if args.quick else args.finetune_steps
        if ft_steps:
            ft_grans = [g if g in ("tensor", "channel") else int(g) for g in args.finetune_granularities]
            rows += finetune_rows(dense, dm, seed, ft_steps, args.finetune_lr, eval_batches, bits_list,
                                  ft_grans, args.finetune_weightings)
    path = write_json(result_path(args, f"palettization{args.tag}"),
                      {"steps": steps, "eval_batches": eval_batches, "model": size, "threads": args.threads,
                       "types": args.types, "meta": meta(args), "rows": rows})
    print_table(rows)
    payload = json.loads(path.read_text())
    payload["summary"] = summarize(rows)
    payload["equal_bytes"] = equal_bytes(payload["summary"])
    write_json(path, payload)
    print(f"wrote {path}")


def post_training_rows(dense, dm, seed: int, bits_list, grans, args, eval_batches) -> list[dict]:
    """share_weights at every bits x granularity x weighting x init, and coreai-opt beside each (when given)."""
    rows = []
    for bits in bits_list:
        for gran in grans:
            for weighting, init in itertools.product((None, "fisher"), args.inits):
                r = run_ours(dense, dm, bits, gran, weighting, eval_batches, init)
                rows.append({"seed": seed, "method": "share_weights", "bits": bits, "granularity": gran,
                             "weighting": weighting or "plain", "init": init, **r})
                print(json.dumps(rows[-1]), flush=True)
            if args.coreai_path:
                try:
                    r = run_coreai(dense, dm, bits, gran, eval_batches, args.coreai_path)
                except Exception as err:  # noqa: BLE001 - reported, the run goes on
                    r = {"error": f"{type(err).__name__}: {err}"[:300]}
                rows.append({"seed": seed, "method": "coreai-opt KMeansPalettizer", "bits": bits,
                             "granularity": gran, "weighting": "plain", **r})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "palettized"}), flush=True)
    return rows


def finetune_rows(dense, dm, seed: int, steps: int, lr: float, eval_batches, bits_list, grans=("channel", 32),
                  weightings=("fisher",)) -> list[dict]:
    """The dense model trained ``steps`` more, and WeightSharing fine-tuning at every bits x granularity x weighting."""
    rows = [{"seed": seed, "method": f"dense +{steps} steps", "bits": 32, "granularity": "-", "weighting": "-",
             **finetune(dense, dm, steps, lr, eval_batches, seed=seed)}]
    print(json.dumps(rows[-1]), flush=True)
    for bits, gran, weighting in itertools.product(bits_list, grans, weightings):
        rows.append({"seed": seed, "method": f"WeightSharing +{steps} steps", "bits": bits, "granularity": gran,
                     "weighting": weighting, "init": "optimal",
                     **finetune(dense, dm, steps, lr, eval_batches, bits, gran, weighting, seed)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per configuration over seeds: mean and spread of the perplexity change vs that seed's dense model (for
    fine-tuning rows, vs the dense model trained the same extra steps), mean bytes and seconds."""
    dense = {r["seed"]: r for r in rows if r["method"] == "dense"}
    dense_ft = {r["seed"]: r for r in rows if r["method"].startswith("dense +")}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "error" in r or r["method"] == "dense" or r["method"].startswith("dense +"):
            continue
        key = (r["method"], r["bits"], str(r["granularity"]), r["weighting"], r.get("init", "-"))
        groups.setdefault(key, []).append(r)
    out = []
    for (method, bits, gran, weighting, init), rs in groups.items():
        base = dense_ft if method.startswith("WeightSharing") else dense
        rel = torch.tensor([r["val_ppl"] / base[r["seed"]]["val_ppl"] - 1 for r in rs], dtype=torch.float64)
        out.append({"method": method, "bits": bits, "granularity": gran, "weighting": weighting, "init": init,
                    "seeds": len(rs), "ppl_change_mean": float(rel.mean()),
                    "ppl_change_min": float(rel.min()), "ppl_change_max": float(rel.max()),
                    "file_bytes_mean": float(sum(r["file_bytes"] for r in rs) / len(rs)),
                    "seconds_mean": float(sum(r["seconds"] for r in rs) / len(rs))})
    print("| method | bits | granularity | weighting | init | seeds | ppl vs dense, mean [min, max] | bytes | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['method']} | {r['bits']} | {r['granularity']} | {r['weighting']} | {r['init']} | {r['seeds']} | "
              f"{r['ppl_change_mean']:+.2%} [{r['ppl_change_min']:+.2%}, {r['ppl_change_max']:+.2%}] | "
              f"{r['file_bytes_mean']:,.0f} | {r['seconds_mean']:.2f} |")
    return out


def equal_bytes(summary: list[dict]) -> list[dict]:
    """For every coreai-opt setting: our post-training setting with the lowest mean perplexity among those whose
    mean file is no larger than coreai-opt's (any bits, granularity, weighting, init)."""
    ours = [s for s in summary if s["method"] == "share_weights"]
    out = []
    for peer in (s for s in summary if s["method"].startswith("coreai-opt")):
        fits = [s for s in ours if s["file_bytes_mean"] <= peer["file_bytes_mean"]]
        best = min(fits, key=lambda s: s["ppl_change_mean"], default=None)
        out.append({"coreai_opt": peer, "ours": best,
                    "ours_better": best is not None and best["ppl_change_mean"] < peer["ppl_change_mean"]})
    print("| coreai-opt setting | its ppl, bytes | our best at <= bytes | our ppl, bytes |")
    print("|---|---|---|---|")
    for r in out:
        p, o = r["coreai_opt"], r["ours"]
        mine = "none" if o is None else f"{o['bits']}-bit {o['granularity']} {o['weighting']} {o['init']}"
        nums = "" if o is None else f"{o['ppl_change_mean']:+.2%}, {o['file_bytes_mean']:,.0f}"
        print(f"| {p['bits']}-bit {p['granularity']} | {p['ppl_change_mean']:+.2%}, {p['file_bytes_mean']:,.0f} | "
              f"{mine} | {nums} |")
    return out


def print_table(rows: list[dict]) -> None:
    dense = {r["seed"]: r for r in rows if r["method"] == "dense"}
    print("| seed | method | bits | granularity | weighting | init | val ppl | vs dense | file bytes | clustering s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['seed']} | {r['method']} | {r['bits']} | {r['granularity']} | - | - | {r['error']} | | | |")
            continue
        rel = r["val_ppl"] / dense[r["seed"]]["val_ppl"] - 1
        print(f"| {r['seed']} | {r['method']} | {r['bits']} | {r['granularity']} | {r['weighting']} | "
              f"{r.get('init', '-')} | {r['val_ppl']:.3f} | {rel:+.1%} | {r['file_bytes']:,} | {r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
