"""Grouped codebooks (format version 2): one codebook per group of output rows, one index stream.

Per-channel or per-group weight sharing gives each group of ``rows_per_group`` rows (dim 0) its own few
values. One codebook per tensor would need all of them; here each group stores only its own, and every entry
stores a *local* index into its group's codebook. Payload::

    mode u8 (bit 0: sparse, bit 1: zero is symbol 0 of every codebook, stored in no codebook)
    varint rows_per_group
    [sparse: index_bits u8 | varint entries | relative-index stream]      (as in the layer codec)
    varint k_g for every group g, then every group's k_g distinct non-zero bit patterns, group after group
    value stream: local codebook index of every entry, fixed width index_bits(max k_g [+1]) or Huffman

Every codebook byte is in the payload, so the file's ratio counts it. The writer uses this codec only where
it is smaller than the per-tensor layer codec, so a file is version 2 only when a grouped layer pays off.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lightning_compress.core.bits import MAX_INDEX_BITS, index_bits
from lightning_compress.format.bitstream import ByteReader, ByteWriter
from lightning_compress.format.errors import CorruptedFileError, payload_errors
from lightning_compress.format.layer import _BITS_VIEW, LayerEncoding, _bit_patterns, _gap_histogram
from lightning_compress.format.layer import _gap_symbol_counts, _relative_indices, encode_layer, read_sparse_header, zeroed
from lightning_compress.format.raw import ITEM_SIZES
from lightning_compress.format.streams import StreamInfo, decode_stream, encode_stream, stream_plan

_SPARSE, _ZERO = 1, 2
MAX_GROUP_CODEBOOK = 1 << 16


class GroupedEncoding(LayerEncoding):
    """A layer encoding with ``groups`` codebooks of at most ``max_k`` values each."""

    groups: int = 0
    rows_per_group: int = 0

    @property
    def codec(self) -> str:
        base = super().codec
        return base.replace("codebook", f"{self.groups}x codebook", 1)


def _local_indices(bits_per_entry: np.ndarray, group_of: np.ndarray, groups: int):
    """Per-group sorted distinct non-zero values (flat), group offsets, and each entry's local index."""
    nz = bits_per_entry != 0
    key = (group_of[nz].astype(np.int64) << 32) | (bits_per_entry[nz].astype(np.int64) & 0xFFFFFFFF)
    uniq_key, inverse = np.unique(key, return_inverse=True)
    uniq_group = uniq_key >> 32
    sizes = np.bincount(uniq_group, minlength=groups)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    local = np.zeros(bits_per_entry.size, dtype=np.int64)
    local[nz] = inverse - offsets[uniq_group[inverse]]
    values = bits_per_entry[nz][np.unique(inverse, return_index=True)[1]] if inverse.size else bits_per_entry[:0]
    return values, sizes, local, nz


def _layout(tensor: torch.Tensor, rows_per_group: int, keep_negative_zero: bool) -> dict | None:
    if tensor.dim() < 1 or tensor.element_size() > 4 or not 1 <= rows_per_group < tensor.shape[0]:
        return None
    bits = _bit_patterns(tensor, keep_negative_zero)
    numel, cols = bits.size, bits.size // tensor.shape[0]
    groups = math.ceil(tensor.shape[0] / rows_per_group)
    positions = np.flatnonzero(bits != 0)
    sparse = positions.size < numel
    ib = 0
    if sparse:
        gap_values, gap_counts = _gap_histogram(positions)
        costs = [(stream_plan(_gap_symbol_counts(gap_values, gap_counts, w)[0], w)[0], w)
                 for w in range(1, MAX_INDEX_BITS + 1)]
        ib = min(costs)[1]
        idx_symbols, owner = _relative_indices(positions, ib)
        entry_pos = np.cumsum(idx_symbols + 1) - 1
        entry_bits = np.where(owner >= 0, bits[entry_pos], 0).astype(bits.dtype)
    else:
        idx_symbols, entry_pos, entry_bits = None, np.arange(numel), bits
    values, sizes, local, nz = _local_indices(entry_bits, entry_pos // (rows_per_group * cols), groups)
    if sizes.max(initial=0) + 1 > MAX_GROUP_CODEBOOK:
        return None
    zero = bool((~nz).any())
    symbols = local + 1 if zero else local
    symbols[~nz] = 0
    return dict(rows_per_group=rows_per_group, groups=groups, sparse=sparse, ib=ib, idx_symbols=idx_symbols,
                values=values, sizes=sizes, zero=zero, symbols=symbols, numel=numel, nnz=positions.size)


def _write(layout: dict) -> GroupedEncoding:
    out = ByteWriter()
    out.u8((_SPARSE if layout["sparse"] else 0) | (_ZERO if layout["zero"] else 0))
    out.varint(layout["rows_per_group"])
    index_info = StreamInfo()
    entries = layout["symbols"].size
    if layout["sparse"]:
        out.u8(layout["ib"])
        out.varint(entries)
        counts = np.bincount(layout["idx_symbols"], minlength=1)
        index_info = encode_stream(out, layout["idx_symbols"], layout["ib"], stream_plan(counts, layout["ib"])[1], counts)
    for k in layout["sizes"].tolist():
        out.varint(k)
    out.write(layout["values"].tobytes())  # group by group, each group's values sorted
    vbits = index_bits(int(layout["sizes"].max(initial=0)) + int(layout["zero"]), minimum=0)
    counts = np.bincount(layout["symbols"], minlength=1)
    value_info = encode_stream(out, layout["symbols"], vbits, stream_plan(counts, vbits)[1], counts)
    enc = GroupedEncoding(
        payload=out.getvalue(), numel=layout["numel"], nonzeros=layout["nnz"], distinct=int(layout["sizes"].sum()),
        sparse=layout["sparse"], index_bits=layout["ib"], entries=entries, codebook=int(layout["sizes"].max(initial=0)),
        value_bits=vbits, index_stream=index_info, value_stream=value_info,
    )
    enc.groups, enc.rows_per_group = layout["groups"], layout["rows_per_group"]
    return enc


def detect_rows_per_group(tensor: torch.Tensor, keep_negative_zero: bool = False) -> int | None:
    """The grouping a tensor shows: the most rows per group (a power of two, so the fewest groups) such that
    no group holds more distinct non-zero values than the fullest single row; ``None`` when the whole tensor
    fits that bound (one codebook suffices) or it has no rows to group."""
    if tensor.dim() < 1 or tensor.shape[0] < 2 or tensor.element_size() > 4 or not supports_grouping(tensor):
        return None
    bits = _bit_patterns(tensor, keep_negative_zero).reshape(tensor.shape[0], -1)
    row, col = np.nonzero(bits)
    if row.size == 0:
        return None
    key = (row.astype(np.int64) << 32) | (bits[row, col].astype(np.int64) & 0xFFFFFFFF)
    pairs = np.unique(key)  # distinct (row, value)
    rows_of, values = pairs >> 32, pairs & 0xFFFFFFFF
    k = int(np.bincount(rows_of).max())
    if np.unique(values).size <= k:
        return None
    best = 1
    g = 2
    while g < tensor.shape[0]:
        per_group = np.unique(((rows_of // g) << 32) | values) >> 32
        if int(np.bincount(per_group).max()) > k:
            break
        best, g = g, g * 2
    return best


def supports_grouping(tensor: torch.Tensor) -> bool:
    return tensor.dtype.is_floating_point and tensor.element_size() in (2, 4)


def encode_grouped(tensor: torch.Tensor, rows_per_group: int | str, keep_negative_zero: bool = False) -> LayerEncoding:
    """The smaller of the layer codec and grouped codebooks (``rows_per_group`` rows each, or ``"auto"``:
    :func:`detect_rows_per_group`). Returns a :class:`GroupedEncoding` only where grouping is strictly
    smaller, so nothing grows and a tensor without a grouping costs one extra scan."""
    best = encode_layer(tensor, keep_negative_zero=keep_negative_zero)
    if rows_per_group == "auto":
        rows_per_group = detect_rows_per_group(tensor, keep_negative_zero)
        if rows_per_group is None:
            return best
    elif not (isinstance(rows_per_group, int) and not isinstance(rows_per_group, bool) and rows_per_group >= 1):
        raise ValueError(f"groups: rows per group must be a positive int or 'auto', got {rows_per_group!r}")
    layout = _layout(tensor, rows_per_group, keep_negative_zero)
    if layout is not None:
        enc = _write(layout)
        if len(enc.payload) < len(best.payload):
            return enc
    return best


def decode_grouped(payload: bytes | memoryview, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of the grouped writer; every count checked against the tensor and the bytes left first."""
    with payload_errors("grouped payload"):
        return _decode(ByteReader(payload), shape, dtype)


def _decode(reader: ByteReader, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    numel, itemsize = math.prod(shape), ITEM_SIZES.get(dtype, 0)
    if not dtype.is_floating_point or itemsize not in _BITS_VIEW or len(shape) < 1 or shape[0] == 0:
        raise CorruptedFileError(f"grouped codec used for {dtype} of shape {shape}")
    np_int = _BITS_VIEW[itemsize][1]
    mode = reader.u8()
    if mode & ~(_SPARSE | _ZERO):
        raise CorruptedFileError(f"unknown grouped mode {mode}")
    rows_per_group = reader.varint()
    if not 1 <= rows_per_group <= shape[0]:
        raise CorruptedFileError(f"{rows_per_group} rows per group for {shape[0]} rows")
    groups, cols = math.ceil(shape[0] / rows_per_group), numel // shape[0]
    entries, positions = numel, None
    if mode & _SPARSE:
        ib, entries = read_sparse_header(reader, numel)
        positions = np.cumsum(decode_stream(reader, entries, ib) + 1) - 1
        if entries and positions[-1] >= numel:
            raise CorruptedFileError("relative indices run past the end of the tensor")
    zero = int(bool(mode & _ZERO))
    if groups > reader.remaining:
        raise CorruptedFileError(f"{groups} codebooks cannot fit in {reader.remaining} bytes")
    sizes = np.array([reader.varint() for _ in range(groups)], dtype=np.int64)
    if np.any(sizes > MAX_GROUP_CODEBOOK):
        raise CorruptedFileError("a group codebook is larger than the format allows")
    flat = np.frombuffer(reader.read(int(sizes.sum()) * itemsize), dtype=np_int)
    width = int(sizes.max(initial=0)) + zero
    table = np.zeros((groups, max(width, 1)), dtype=np_int)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    col = np.arange(flat.size) - np.repeat(offsets[:-1], sizes) + zero
    table[np.repeat(np.arange(groups), sizes), col] = flat
    symbols = decode_stream(reader, entries, index_bits(width, minimum=0))
    if reader.remaining:
        raise CorruptedFileError(f"{reader.remaining} unexpected bytes after the grouped payload")
    at = positions if positions is not None else np.arange(numel)
    group_of = at // (rows_per_group * cols)
    if symbols.size and np.any(symbols >= sizes[group_of] + zero):
        raise CorruptedFileError("codebook index out of range for its group")
    out = zeroed(numel, np_int)
    out[at] = table[group_of, symbols]
    return torch.from_numpy(out).view(dtype).reshape(shape)


__all__ = ["GroupedEncoding", "decode_grouped", "detect_rows_per_group", "encode_grouped"]
