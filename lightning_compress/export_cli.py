"""``lightning-compress-export``: a Lightning checkpoint (or a ``state_dict`` file) to a ``.lcz`` file.

The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never
code. A checkpoint written after mid-fit factorization is rebuilt from its plan (or its keys) first.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pickle
import sys
from collections.abc import Mapping
from typing import Any, Sequence

import torch
from torch import nn

from lightning_compress.core.lowrank import apply_factorization_plan, infer_factorization_plan
from lightning_compress.format.api import read_compressed, save_compressed
from lightning_compress.format.errors import UnsafeCheckpointError
from lightning_compress.format.model_check import check_architecture
from lightning_compress.zoo.registry import MODELS, resolve_model_class

#: Top-level checkpoint key of ``LowRankFactorization``'s applied plan (see ``callbacks/factorization.py``).
PLAN_KEY = "lowrank_factorization"


def load_checkpoint(path: str) -> Mapping[str, Any]:
    """The checkpoint's contents, unpickling nothing but tensors and plain containers."""
    try:
        ckpt = torch.load(os.path.expanduser(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: the checkpoint holds objects other than tensors and plain containers, and loading them "
            f"would run code from the file, so it was not loaded ({str(err).splitlines()[0]}). If you trust "
            "the file: load the model yourself (torch.load(..., weights_only=False) or "
            "Model.load_from_checkpoint) and call lightning_compress.save_compressed(model, path)"
        ) from None
    if not isinstance(ckpt, Mapping):
        raise UnsafeCheckpointError(f"{path}: expected a checkpoint dict or a state_dict, got {type(ckpt).__name__}")
    return ckpt


def _build(cls: type[nn.Module], hparams: Mapping[str, Any]) -> nn.Module:
    """``cls(**hparams)``, keeping only the arguments its constructor takes (as ``load_from_checkpoint``).

    LightningCLI stores its own bookkeeping (``_class_path``, ``_instantiator``) among the hyper-parameters;
    those are never constructor arguments.
    """
    hparams = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        hparams = {k: v for k, v in hparams.items() if k in params}
    return cls(**hparams)


def model_from_checkpoint(model_spec: str, ckpt_path: str) -> tuple[nn.Module, list[str]]:
    """The model with the checkpoint's weights, and notes on what the checkpoint holds."""
    cls = resolve_model_class(model_spec)
    ckpt = load_checkpoint(ckpt_path)
    state_dict = ckpt.get("state_dict", ckpt)
    model = _build(cls, ckpt.get("hyper_parameters") or {})
    plan = ckpt.get(PLAN_KEY) or infer_factorization_plan(state_dict, model)
    notes = []
    if plan:
        apply_factorization_plan(model, plan)
        notes.append(f"rebuilt {len(plan)} factorized layer(s) from the checkpoint before loading its weights")
    elif any(str(k).startswith("LowRankFactorization") for k in (ckpt.get("callbacks") or {})):
        notes.append(
            "this checkpoint holds the DENSE weights: it was saved before LowRankFactorization factorized the "
            "model (post-hoc factorization runs when fit ends, after the last checkpoint). To export the "
            "factorized model, pass the factorized.ckpt LowRankFactorization wrote beside this checkpoint, add "
            "ExportCompressed to the same fit, or factorize mid-fit "
            "(LowRankFactorization(epoch=N)) so that checkpoints hold the factors"
        )
    model.load_state_dict(state_dict)
    return model, notes


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN matching NaN (and -0.0 matching +0.0, as the format stores it by default)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-compress-export",
        description="Export a Lightning checkpoint to the Deep Compression file format and print its size report.",
    )
    parser.add_argument("model", help=f"zoo name ({', '.join(MODELS)}) or model class path 'package.module.Class'")
    parser.add_argument("checkpoint", help="Lightning .ckpt file (or a torch.save'd state_dict)")
    parser.add_argument("-o", "--output", help="compressed file to write (default: checkpoint with .lcz suffix)")
    parser.add_argument("--include", nargs="*", default=None, help="globs of weight tensors to compress (default: "
                        "the callbacks' default selection)")
    parser.add_argument("--exclude", nargs="*", default=None, help="globs of layers to store raw")
    parser.add_argument("--keep-negative-zero", action="store_true", help="store -0.0 exactly (larger file)")
    parser.add_argument("--json", help="also write the report as JSON to this path")
    parser.add_argument("--gzip", action="store_true", help="also measure the gzip'd state_dict (slow on big models)")
    parser.add_argument("--no-gzip", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    parser.add_argument("--grouped", action="store_true", help="detect per-channel/per-group codebooks in the "
                        "compressed layers and store them grouped where smaller (format version 2)")
    parser.add_argument("--verify", action="store_true", help="reload the file into a fresh model and compare")
    return parser


def _verify(out: str, model: nn.Module) -> int:
    stored = read_compressed(out, max_bytes=None)
    check_architecture(stored, model, out)
    differing = [k for k, v in model.state_dict().items() if not _same_values(stored[k], v)]
    if differing:
        print(f"verify FAILED: tensors differ after reload: {differing}", file=sys.stderr)
        return 1
    print("verified: every tensor reloads with identical values")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = os.path.expanduser(args.output or os.path.splitext(args.checkpoint)[0] + ".lcz")
    try:
        if not os.path.isfile(os.path.expanduser(args.checkpoint)):
            raise FileNotFoundError(f"checkpoint: no such file {args.checkpoint!r}")
        model, notes = model_from_checkpoint(args.model, args.checkpoint)
        groups = {name: "auto" for name in model.state_dict()} if args.grouped else None
        report = save_compressed(model, out, include=args.include, exclude=args.exclude, groups=groups,
                                 keep_negative_zero=args.keep_negative_zero, compare_gzip=args.gzip)
    except (ValueError, OSError, RuntimeError, KeyError, TypeError) as err:  # bad class path, unreadable or mismatched ckpt
        print(f"lightning-compress-export: error: {err}", file=sys.stderr)
        return 2
    report.notes.extend(notes)
    print(f"wrote {out}: {report.ratio:.1f}x smaller than dense ({report.file_bytes:,} bytes)")
    for note in notes:
        print(f"note: {note}")
    print(report.table())
    status = _verify(out, model) if args.verify else 0
    if args.json:
        with open(os.path.expanduser(args.json), "w") as f:
            json.dump(report.as_dict(), f, indent=2)
    return status


__all__ = ["load_checkpoint", "main", "model_from_checkpoint"]

if __name__ == "__main__":
    sys.exit(main())
