"""What every benchmark script shares: its flags, where results go, one Trainer factory and one meta block.

``python benchmarks/<name>.py`` works from a checkout without installing the package (the repository root is put
on ``sys.path`` here). Every script takes ``--quick`` (a smoke run that only shows the script works), ``--seeds``
and ``--out`` (the results folder, default ``benchmarks/results/``; the test suite points it at a temporary folder
so a smoke run never overwrites committed numbers), and writes ``meta(args)`` into its JSON: git commit,
torch/lightning versions, threads, machine, date and the arguments, spelled the same in every result file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from a checkout, package not installed
    sys.path.insert(0, str(ROOT))


def parser(doc: str | None, quick_help: str = "smoke run: shows the script works, not what the method reaches",
           seeds: tuple[int, ...] = (0,)) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every benchmark has: ``--quick``, ``--seeds``, ``--out``."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help=f"random seeds (default {list(seeds)})")
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="folder for the result files (default benchmarks/results/)")
    return ap


def result_path(args: argparse.Namespace, stem: str, suffix: str = ".json") -> Path:
    """``<out>/<stem>[_quick]<suffix>``, the folder created."""
    args.out.mkdir(parents=True, exist_ok=True)
    return args.out / f"{stem}{'_quick' if args.quick else ''}{suffix}"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def meta(args: argparse.Namespace | None = None, **extra: Any) -> dict[str, Any]:
    """The one meta block of a result file: what ran, where and when."""
    import lightning
    import torch

    return {
        "git_commit": _git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "quick": bool(getattr(args, "quick", False)),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} if args else {},
        **extra,
    }


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def trainer(max_epochs: int = 1, callbacks=(), **kwargs: Any):
    """A quiet CPU Trainer for measurements: no logger, checkpoints, progress bar, summary or sanity check."""
    import lightning.pytorch as pl

    settings: dict[str, Any] = dict(accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=list(callbacks),
                                    logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, num_sanity_val_steps=0)
    settings.update(kwargs)
    return pl.Trainer(**settings)


__all__ = ["RESULTS", "ROOT", "meta", "parser", "result_path", "trainer", "write_json"]
