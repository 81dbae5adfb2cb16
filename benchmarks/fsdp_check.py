"""GPU check: the compression callbacks under Lightning's FSDP strategy, next to DDP/single-device controls.

Lightning runs FSDP only on GPUs (on CPU it raises ``The strategy `fsdp` requires a GPU accelerator``
before any callback runs), so the CPU test suite checks the refusal on the callbacks' ``setup`` with a real
``FSDPStrategy`` object, and this script checks it end to end where FSDP really runs:

1. ``fsdp``: for each callback (pruning, weight sharing, factorization, monitor, export), a fit with
   ``strategy="fsdp"`` must stop in ``setup`` with a ``MisconfigurationException`` that names the callback
   and ``FSDPStrategy``, before any optimizer step, with the model's weights untouched;
2. ``control``: the same callbacks together on the GPU with the default strategy must finish a fit with
   their invariants: exact zeros at the scheduled sparsity, at most 2^bits values per shared layer, the
   factorized layer at its rank, and an exported file that loads back bit-exactly.

Prints a table, writes ``benchmarks/results/fsdp_check[_quick].json`` and exits non-zero on a failed check.
Without CUDA it records what Lightning does with FSDP on CPU and reports the GPU checks as not run.

Usage::

    python benchmarks/fsdp_check.py --quick     # 2 epochs per fit, well under a minute on one GPU
    python benchmarks/fsdp_check.py             # 4 epochs per fit
    python benchmarks/fsdp_check.py --devices 2 # FSDP across 2 GPUs (Lightning relaunches this script per rank)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.utilities.exceptions import MisconfigurationException  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_compress import (  # noqa: E402
    CompressionMonitor,
    ExportCompressed,
    GradualMagnitudePruning,
    LowRankFactorization,
    WeightSharing,
    load_compressed,
)

SPARSITY, BITS, RANK = 0.75, 3, 4


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 4)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g)
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(TensorDataset(x[:128], y[:128]), batch_size=64)


def callbacks(out: Path, epochs: int) -> dict:
    return {
        "pruning": GradualMagnitudePruning(SPARSITY, include=["fc1", "fc3"], start_epoch=0, end_epoch=(epochs - 1) / 2,
                                           update_every=0.25),
        "sharing": WeightSharing(BITS, include=["fc1", "fc3"], start_epoch=epochs - 1, eval_batches=1),
        "factorization": LowRankFactorization(rank=RANK, epoch=1, include=["fc2"], verbose=False),
        "monitor": CompressionMonitor(print_summary=False),
        "export": ExportCompressed(out / "model.lcz", compare_gzip=False),
    }


def trainer(strategy: str, devices: int, epochs: int, cbs: list, out: Path) -> pl.Trainer:
    return pl.Trainer(accelerator="gpu", devices=devices, strategy=strategy, max_epochs=epochs, callbacks=cbs,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out)


def check_fsdp_refusal(name: str, devices: int, epochs: int, out: Path) -> dict:
    pl.seed_everything(0, verbose=False)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = callbacks(out, epochs)[name]
    t = trainer("fsdp", devices, epochs, [cb], out)
    train, val = loaders()
    row = {"check": f"fsdp refuses {type(cb).__name__}", "ok": False}
    try:
        t.fit(model, train, val)
        row["detail"] = "fit finished: no refusal"
    except MisconfigurationException as err:
        untouched = all(torch.equal(before[k], v.cpu()) for k, v in model.state_dict().items() if k in before)
        named = type(cb).__name__ in str(err) and "FSDPStrategy" in str(err)
        row.update(ok=named and t.global_step == 0 and untouched, global_step=t.global_step,
                   weights_untouched=untouched, detail=str(err)[:200])
    except Exception as err:  # noqa: BLE001 - any other failure is a failed check, reported as such
        row["detail"] = f"{type(err).__name__}: {str(err)[:200]}"
    return row


def check_control(devices: int, epochs: int, out: Path) -> dict:
    pl.seed_everything(0, verbose=False)
    model = Net()
    cbs = callbacks(out, epochs)
    t = trainer("auto" if devices == 1 else "ddp", devices, epochs, list(cbs.values()), out)
    train, val = loaders()
    start = time.perf_counter()
    t.fit(model, train, val)
    seconds = time.perf_counter() - start
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    problems = []
    for name in ("fc1.weight", "fc3.weight"):
        w = sd[name]
        if int((w == 0).sum()) != round(SPARSITY * w.numel()):
            problems.append(f"{name}: {int((w == 0).sum())} zeros")
        if torch.unique(w[w != 0]).numel() > 2**BITS:
            problems.append(f"{name}: {torch.unique(w[w != 0]).numel()} values")
    if tuple(sd.get("fc2.first.weight", torch.empty(0)).shape) != (RANK, 64):
        problems.append("fc2 not factorized at rank 4")
    if t.is_global_zero:
        loaded = load_compressed(out / "model.lcz", Net()).state_dict()
        if any(not torch.equal(loaded[k], sd[k]) for k in sd):
            problems.append("exported file differs")
    return {"check": "control: all callbacks, default strategy", "ok": not problems, "seconds": round(seconds, 2),
            "detail": "; ".join(problems) or "invariants hold"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs per fit instead of 4")
    parser.add_argument("--devices", type=int, default=1, help="GPUs for FSDP (default 1)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/fsdp_check[_quick].json)")
    args = parser.parse_args(argv)
    epochs = 2 if args.quick else 4
    result = {"quick": args.quick, "devices": args.devices, "torch": torch.__version__, "lightning": pl.__version__,
              "python": platform.python_version(), "cuda": torch.cuda.is_available(), "rows": []}
    if not torch.cuda.is_available():
        try:
            pl.Trainer(accelerator="cpu", devices=2, strategy="fsdp", logger=False)
            result["cpu_fsdp"] = "Lightning built an FSDP Trainer on CPU: run the CPU tests under it"
        except Exception as err:  # noqa: BLE001 - recorded as what this Lightning version does
            result["cpu_fsdp"] = f"{type(err).__name__}: {err}"
        result["status"] = "not run: no CUDA device (the GPU checks need one)"
    else:
        result["gpu"] = torch.cuda.get_device_name(0)
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("pruning", "sharing", "factorization", "monitor", "export"):
                result["rows"].append(check_fsdp_refusal(name, args.devices, epochs, Path(tmp) / name))
            try:
                result["rows"].append(check_control(args.devices, epochs, Path(tmp) / "control"))
            except Exception:  # noqa: BLE001
                result["rows"].append({"check": "control", "ok": False, "detail": traceback.format_exc()[-300:]})
        result["status"] = "passed" if all(r["ok"] for r in result["rows"]) else "FAILED"

    if int(os.environ.get("LOCAL_RANK", "0")) != 0:  # Lightning's relaunch of this script on other GPUs
        return 0
    print(f"FSDP check ({'quick' if args.quick else 'full'}): {result['status']}")
    if "cpu_fsdp" in result:
        print(f"  Lightning on CPU: {result['cpu_fsdp']}")
    for row in result["rows"]:
        print(f"  {'ok ' if row['ok'] else 'BAD'}  {row['check']:<48} {row.get('detail', '')}")
    name = f"fsdp_check{'_quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0 if result["status"] != "FAILED" else 1


if __name__ == "__main__":
    sys.exit(main())
