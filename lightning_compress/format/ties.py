"""Which state_dict keys hold the same tensor (weight tying), so that the file stores each tensor once.

Two sources, both by identity, never by name: the storage of a plain ``state_dict`` (``model.state_dict()``
keeps sharing: a tied Parameter appears under each of its names as views of one storage, like ``torch.save``
sees it), and the model's own Parameters and buffers (``named_parameters(remove_duplicate=False)``), which
still know their ties when the ``state_dict`` is gathered from FSDP2 shards one key at a time and the
gathered copies share nothing.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn


def storage_key(tensor: torch.Tensor) -> tuple | None:
    """What makes two tensors the same tensor: storage, offset, shape, stride, dtype (``None``: not comparable)."""
    if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0 or tensor.is_meta:
        return None
    try:
        ptr = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage (DTensor shards, ...)
        return None
    if ptr == 0:
        return None
    return (str(tensor.device), ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)


def storage_ties(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, str]]:
    """``(later key, first key)`` for every key whose tensor is the very tensor of an earlier key."""
    first: dict[tuple, str] = {}
    out = []
    for name, tensor in state_dict.items():
        key = storage_key(tensor)
        if key is None:
            continue
        if key in first:
            out.append((name, first[key]))
        else:
            first[key] = name
    return out


def model_ties(model: nn.Module) -> list[tuple[str, str]]:
    """``(other name, first name)`` of every Parameter or buffer reached under several names."""
    out = []
    for named in (model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        first: dict[int, str] = {}
        for name, t in named:
            if id(t) in first:
                out.append((name, first[id(t)]))
            else:
                first[id(t)] = name
    return out


def alias_map(keys: Sequence[str], pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``{key: the earliest key of its tie group}`` for every key but the earliest, in ``keys`` order."""
    order = {k: i for i, k in enumerate(keys)}
    root: dict[str, str] = {}

    def find(k: str) -> str:
        while root.get(k, k) != k:
            k = root[k]
        return k

    for a, b in pairs:
        if a in order and b in order:
            ra, rb = find(a), find(b)
            if ra != rb:
                first, other = (ra, rb) if order[ra] < order[rb] else (rb, ra)
                root[other] = first
    return {k: find(k) for k in keys if find(k) != k}


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal (NaNs included) tensors of one shape and dtype: safe to store once."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if storage_key(a) is not None and storage_key(a) == storage_key(b):
        return True
    a, b = a.detach().reshape(-1), b.detach().reshape(-1)
    if a.dtype.is_floating_point or a.dtype.is_complex:
        a, b = a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    return bool(torch.equal(a, b))


def find_aliases(state_dict: Mapping[str, torch.Tensor], model: nn.Module | None = None) -> dict[str, str]:
    """``{later key: earliest key}`` of the tied tensors of ``state_dict``.

    A plain ``dict`` is searched by storage identity, and a tie the model reports is kept only if the two
    values are bit-equal there (the caller may have edited one). Any other mapping (a gathered ``state_dict``
    whose values are produced when read) is not read: the model's ties are taken as they are.
    """
    keys = list(state_dict)
    if not isinstance(state_dict, dict):
        return alias_map(keys, model_ties(model)) if model is not None else {}
    pairs = storage_ties(state_dict)
    if model is not None:
        pairs += [(a, b) for a, b in model_ties(model)
                  if a in state_dict and b in state_dict and same_values(state_dict[a], state_dict[b])]
    return alias_map(keys, pairs)


__all__ = ["alias_map", "find_aliases", "model_ties", "same_values", "storage_key", "storage_ties"]
