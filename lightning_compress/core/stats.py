"""Measure how compressed a model is, from its tensors alone.

This is the instrument every callback and the monitor reuse. It reads what pruning and weight sharing
leave behind (exact zeros, few distinct values) and estimates the storage size of the Deep Compression
format without writing it: per layer, the cheaper of dense or sparse-with-relative-indices positions and
the cheaper of raw 32-bit or codebook values. Huffman coding is *not* applied here (``export`` measures the
real file); the estimate is therefore an upper bound of the exported size up to the file header.

Ratios are *storage* ratios: 32-bit dense bytes divided by compressed bytes, biases and other tensors
counted at 32 bits. ``sparsity_ratio`` (|W| / |W != 0|) is a different metric and is named so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from lightning_compress.core.bits import FLOAT_BITS, MAX_INDEX_BITS, MAX_SHARED_VALUES, index_bits
from lightning_compress.core.distributed import full_tensor
from lightning_compress.core.targets import Target, find_targets


@dataclass
class LayerStats:
    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    distinct: int  # distinct non-zero values
    shared: bool  # values stored as codebook indices
    bits: int  # bits per stored value: log2 of the codebook size when shared, else 32
    index_bits: int  # relative-index width of the sparse encoding, 0 when stored dense
    dense_bytes: int
    compressed_bytes: int
    aliases: tuple[str, ...] = ()  # the tensor's other names when it is tied (counted once, under ``name``)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.compressed_bytes if self.compressed_bytes else math.inf

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(sparsity=self.sparsity, ratio=self.ratio)
        return d


@dataclass
class ModelStats:
    layers: list[LayerStats]
    other_numel: int  # parameters not compressed (biases, norms, ...), stored as 32-bit floats
    numel: int = field(init=False)
    nonzeros: int = field(init=False)
    dense_bytes: int = field(init=False)
    compressed_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        other_bytes = self.other_numel * FLOAT_BITS // 8
        self.numel = sum(s.numel for s in self.layers)
        self.nonzeros = sum(s.nonzeros for s in self.layers)
        self.dense_bytes = sum(s.dense_bytes for s in self.layers) + other_bytes
        self.compressed_bytes = sum(s.compressed_bytes for s in self.layers) + other_bytes

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over the compressed layers' weights."""
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0

    @property
    def sparsity_ratio(self) -> float:
        """|W| / |W != 0| over the compressed layers: the 'pruning only' factor, not a storage ratio."""
        return self.numel / self.nonzeros if self.nonzeros else math.inf

    @property
    def ratio(self) -> float:
        """Storage compression ratio: 32-bit dense bytes / estimated compressed bytes."""
        return self.dense_bytes / self.compressed_bytes if self.compressed_bytes else math.inf

    @property
    def bits_per_weight(self) -> float:
        """Average stored bits per original weight of the compressed layers (indices and codebooks included)."""
        layer_bytes = sum(s.compressed_bytes for s in self.layers)
        return 8.0 * layer_bytes / self.numel if self.numel else 0.0

    def table(self) -> str:
        """A Markdown table in the style of the Deep Compression paper."""
        rows = [
            "| layer | shape | weights | non-zero % | bits | index bits | dense bytes | bytes | ratio |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in self.layers:
            label = s.name + (f" (tied: {', '.join(s.aliases)})" if s.aliases else "")
            rows.append(
                f"| {label} | {'x'.join(map(str, s.shape))} | {s.numel:,} | {100 * (1 - s.sparsity):.2f} | "
                f"{s.bits} | {s.index_bits or '-'} | {s.dense_bytes:,} | {s.compressed_bytes:,} | {s.ratio:.1f}x |"
            )
        if self.other_numel:
            ob = self.other_numel * FLOAT_BITS // 8
            rows.append(f"| (other: biases, norms) | | {self.other_numel:,} | | 32 | - | {ob:,} | {ob:,} | 1.0x |")
        rows.append(
            f"| **total** | | {self.numel + self.other_numel:,} | {100 * (1 - self.sparsity):.2f} | | | "
            f"{self.dense_bytes:,} | {self.compressed_bytes:,} | **{self.ratio:.1f}x** |"
        )
        return "\n".join(rows)


def sparse_entries(flat_nonzero_positions: torch.Tensor, index_bits: int) -> int:
    """Entries of a relative-index encoding, filler zeros included.

    Each non-zero stores the gap to the previous one (the first one to position -1). A gap larger than
    ``2**index_bits`` is bridged by filler zeros, one per ``2**index_bits`` positions skipped.
    """
    if flat_nonzero_positions.numel() == 0:
        return 0
    prev = torch.cat([flat_nonzero_positions.new_tensor([-1]), flat_nonzero_positions[:-1]])
    gaps = flat_nonzero_positions - prev  # >= 1
    span = 1 << index_bits
    return int(torch.div(gaps + span - 1, span, rounding_mode="floor").sum())


def layer_stats(name: str, weight: torch.Tensor, aliases: Sequence[str] = ()) -> LayerStats:
    """Count non-zeros and distinct values of one tensor and estimate its compressed size in bytes."""
    w = weight.detach().reshape(-1)
    numel = w.numel()
    nz_mask = w != 0
    positions = nz_mask.nonzero().reshape(-1)
    nonzeros = positions.numel()
    distinct = int(torch.unique(w[nz_mask]).numel()) if nonzeros else 0
    shared = 0 < distinct <= MAX_SHARED_VALUES
    has_zeros = nonzeros < numel

    # Values: codebook indices (the codebook itself stored as floats) or raw floats.
    if shared:
        value_bits = index_bits(distinct + (1 if has_zeros else 0))
        codebook_bits = distinct * FLOAT_BITS
    else:
        value_bits, codebook_bits = FLOAT_BITS, 0

    # Positions: dense (every element, zeros included) or sparse relative indices; keep the cheaper.
    best_bits, best_index = numel * value_bits, 0
    if has_zeros:
        for ib in range(1, MAX_INDEX_BITS + 1):
            bits = sparse_entries(positions, ib) * (ib + value_bits)
            if bits < best_bits:
                best_bits, best_index = bits, ib
    total_bits = best_bits + codebook_bits
    return LayerStats(
        name=name,
        shape=tuple(weight.shape),
        numel=numel,
        nonzeros=nonzeros,
        distinct=distinct,
        shared=shared,
        bits=index_bits(distinct) if shared else FLOAT_BITS,
        index_bits=best_index,
        dense_bytes=numel * FLOAT_BITS // 8,
        compressed_bytes=math.ceil(total_bits / 8),
        aliases=tuple(aliases),
    )


def model_stats(model: nn.Module, targets: Sequence[Target] | None = None) -> ModelStats:
    """Per-layer and total statistics. ``targets`` defaults to every weight matrix (``find_targets``).

    Each tensor counts once, however many modules share it (a tied embedding and LM head is one layer).
    """
    if targets is None:
        try:
            targets = find_targets(model, owner="model_stats")
        except ValueError:
            targets = []
    unique = list({id(t.param): t for t in reversed(list(targets))}.values())[::-1]
    layers = [layer_stats(t.name, full_tensor(t.param), t.aliases) for t in unique]  # FSDP2: one layer gathered
    counted = {id(t.param) for t in unique}
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return ModelStats(layers=layers, other_numel=other)
