"""Which tensors of a model the file compresses (the rest is stored raw).

By default the same selection as every callback (``core.targets.find_targets`` with its defaults), so the
export compresses what the callbacks compressed. ``include`` may also name any other floating weight
tensor (an ``Embedding``, ``in_proj_weight``, ``weight_ih_l0``, ...): the layer codec takes any floating
tensor, so no layer type is hard-coded here.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

from torch import nn

from lightning_compress.core.targets import find_targets


def weight_tensors(model: nn.Module) -> dict[str, str]:
    """Every floating parameter whose own name contains ``weight``: qualified name -> its module's name."""
    out = {}
    for name, p in model.named_parameters():
        module, _, leaf = name.rpartition(".")
        if "weight" in leaf and p.dtype.is_floating_point and p.numel() > 0:
            out[name] = module
    return out


def _glob_select(model: nn.Module, include: list[str], exclude: list[str]) -> list[str]:
    candidates = weight_tensors(model)

    def hit(pattern: str, name: str) -> bool:
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(candidates[name], pattern)

    for what, patterns in (("include", include), ("exclude", exclude)):
        for pat in patterns:
            if not any(hit(pat, n) for n in candidates):
                raise ValueError(f"save_compressed: {what} pattern {pat!r} matches no eligible layer "
                                 f"(eligible weight tensors: {', '.join(candidates) or 'none'})")
    return [n for n in candidates if any(hit(p, n) for p in include) and not any(hit(p, n) for p in exclude)]


def compressed_names(
    model: nn.Module,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    targets: Sequence | None = None,
    also: Iterable[str] = (),
) -> list[str]:
    """State-dict names of the tensors to compress: ``targets``, the ``include``/``exclude`` selection, or
    ``find_targets`` with its defaults; plus ``also`` (minus ``exclude``), in state-dict order."""
    include = [include] if isinstance(include, str) else list(include or [])
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    excluded = set(_glob_select(model, exclude, [])) if exclude else set()
    if targets is not None:
        names = [t if isinstance(t, str) else t.name for t in targets]
    elif include:
        names = _glob_select(model, include, exclude)
    else:
        try:
            names = [t.name for t in find_targets(model, owner="save_compressed")]
        except ValueError:
            names = []  # no eligible layer at all: everything is stored raw (unless ``also`` names some)
    chosen = (set(names) | set(also)) - excluded
    return [k for k in model.state_dict() if k in chosen]


__all__ = ["compressed_names", "weight_tensors"]
