"""Compare a file's tensor table with the model it is loaded into, before any payload is decoded.

The table gives names, dtypes and shapes; they become weightless ``meta`` tensors, so the factorization plan
can be inferred and the factorized architecture rebuilt on a weightless copy of the model (``meta`` copies of
its tensors), without touching the model or allocating its weights, however the keys are forged.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from lightning_compress.core.lowrank import apply_factorization_plan, infer_factorization_plan
from lightning_compress.format.container import TensorEntry
from lightning_compress.format.errors import ArchitectureMismatchError
from lightning_compress.format.ties import model_ties, same_values


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's own tensors (from shapes: works for a ``meta`` model too)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def specs(entries: Sequence[TensorEntry]) -> dict[str, torch.Tensor]:
    """Weightless stand-ins for the file's tensors."""
    return {e.name: torch.empty(e.shape, dtype=e.dtype, device="meta") for e in entries}


def weightless_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are ``meta`` tensors (no weight memory)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    trainer = model.__dict__.get("_trainer")
    if trainer is not None:
        memo[id(trainer)] = None
    return copy.deepcopy(model, memo)


def check_architecture(stored: Mapping[str, torch.Tensor], model: nn.Module, source: str = "file") -> None:
    """Raise :class:`ArchitectureMismatchError` listing every name, shape or dtype difference."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    if missing:
        problems.append(f"missing in the file: {missing}")
    if unexpected:
        problems.append(f"not in the model: {unexpected}")
    for k in expected:
        if k in stored:
            a, b = stored[k], expected[k]
            if tuple(a.shape) != tuple(b.shape):
                problems.append(f"{k}: shape {tuple(a.shape)} in the file, {tuple(b.shape)} in the model")
            elif a.dtype != b.dtype:
                problems.append(f"{k}: dtype {a.dtype} in the file, {b.dtype} in the model (convert the model first)")
    if problems:
        raise ArchitectureMismatchError(f"{source} does not match {type(model).__name__}: " + "; ".join(problems))


def check_against_model(entries: Sequence[TensorEntry], model: nn.Module, source: str, rebuild_factorized: bool) -> list:
    """The factorization plan the file implies (``[]`` for none), after checking the table against the model."""
    table = specs(entries)
    plan = []
    if rebuild_factorized:
        try:
            plan = infer_factorization_plan(table, model)
            target = apply_factorization_plan(weightless_copy(model), plan) if plan else model
        except (ValueError, IndexError, TypeError, RuntimeError, AttributeError, OverflowError) as err:
            raise ArchitectureMismatchError(f"{source}: its factorized layers do not fit {type(model).__name__}: {err}") from err
    else:
        target = model
    check_architecture(table, target, source)
    meta_only = [n for n, b in model.named_buffers() if b.is_meta and n not in model.state_dict()]
    if meta_only:
        raise ArchitectureMismatchError(
            f"{source}: buffers {meta_only} of the meta-device model are not saved in any file (non-persistent); "
            "build the model on a real device, or materialise them before loading"
        )
    return plan


def load_into(model: nn.Module, stored: dict[str, torch.Tensor], plan: list) -> None:
    """Put the checked, decoded tensors into ``model`` (``assign`` for a model built on ``meta``)."""
    if plan:
        apply_factorization_plan(model, plan)
    on_meta = any(t.is_meta for t in model.state_dict().values())
    if on_meta:  # ``assign`` wraps each key in its own Parameter: give a tied Parameter's names one, to keep the tie
        stored = dict(stored)
        for name, first in model_ties(model):
            if name in stored and first in stored and same_values(stored[name], stored[first]):
                if _is_param(model, first) and not isinstance(stored[first], nn.Parameter):
                    requires_grad = model.get_parameter(first).requires_grad
                    stored[first] = nn.Parameter(stored[first], requires_grad=requires_grad)
                stored[name] = stored[first]
    model.load_state_dict(stored, strict=True, assign=on_meta)


def _is_param(model: nn.Module, name: str) -> bool:
    try:
        model.get_parameter(name)
    except AttributeError:
        return False
    return True


__all__ = ["check_against_model", "check_architecture", "load_into", "specs", "state_bytes", "weightless_copy"]
