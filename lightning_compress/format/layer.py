"""Tensor codecs of the Deep Compression storage format.

A compressed layer is stored as the cheapest of four layouts (the same choice ``core/stats.py`` estimates,
here with Huffman coding and exact byte counts):

* positions **dense** (every element) or **sparse**: relative indices, i.e. the gap to the previous stored
  entry minus one, at ``index_bits`` per entry (1..16, chosen per layer to minimise the size). A gap larger
  than ``2**index_bits`` is bridged by *filler* entries that advance by ``2**index_bits`` and store a zero,
  exactly as in the paper, so decoding is a cumulative sum and a scatter (a filler writes a zero where
  there is one anyway);
* values **raw** (the tensor's own bit patterns) or **codebook**: the distinct values once, then one index
  per entry (shared layers have few distinct values).

Each index stream (relative indices, codebook indices) is stored fixed-width or Huffman-coded, whichever
is smaller, Huffman tables included. Everything else is stored raw with its dtype and shape.

Bit-exactness: values are handled as integer bit patterns, never as floats, so every value, NaN payloads
included, round-trips exactly. The one deliberate exception is the sign of zero: pruning by ``w * mask``
turns every negative pruned weight into -0.0, and keeping those apart from +0.0 would cost about a bit per
pruned weight. By default a -0.0 in a compressed layer is therefore a zero and comes back as +0.0
(numerically equal; only ``1/x`` and ``copysign`` can tell). ``keep_negative_zero=True`` stores -0.0 as an
ordinary value instead (fully bit-exact, larger). Raw tensors (biases, buffers) are always bit-exact.

Byte order is little-endian (what every current PyTorch platform uses).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from lightning_compress.core.bits import MAX_INDEX_BITS, index_bits
from lightning_compress.format.bitstream import ByteReader, ByteWriter, varint_size
from lightning_compress.format.errors import CorruptedFileError, payload_errors
from lightning_compress.format.raw import ITEM_SIZES
from lightning_compress.format.streams import StreamInfo, decode_stream, encode_stream, stream_plan

_BITS_VIEW = {2: (torch.int16, np.int16), 4: (torch.int32, np.int32), 8: (torch.int64, np.int64)}

#: Codebook layouts are considered up to this many distinct values (index streams are at most 16 bits).
MAX_CODEBOOK = 1 << 16

_SPARSE, _CODEBOOK = 1, 2  # bits of a layer payload's mode byte


def zeroed(n: int, dtype) -> np.ndarray:
    """``np.zeros`` for a buffer about to be scattered into: ``np.zeros`` (calloc) leaves page faults to the
    random scatter (4x slower on a 16 MiB layer here); ``empty`` + ``fill`` takes them in order, on huge pages."""
    out = np.empty(n, dtype=dtype)
    out.fill(0)
    return out


def supports_layer_codec(tensor: torch.Tensor) -> bool:
    """Floating tensors of 16/32/64-bit elements can use the sparse/codebook codec; others are stored raw."""
    return tensor.dtype.is_floating_point and tensor.element_size() in _BITS_VIEW


# ---- compressed layers --------------------------------------------------------------------------------


@dataclass
class LayerEncoding:
    """A compressed layer's payload and how it was laid out (for the report)."""

    payload: bytes
    numel: int
    nonzeros: int  # elements whose bit pattern is not +0.0
    distinct: int  # distinct non-zero bit patterns
    sparse: bool
    index_bits: int  # relative-index width, 0 when dense
    entries: int  # stored entries (non-zeros + fillers when sparse, numel when dense)
    codebook: int  # codebook size (0 when values are raw)
    value_bits: int  # fixed-width bits per stored value (codebook index width, or the element's bits)
    index_stream: StreamInfo = field(default_factory=StreamInfo)
    value_stream: StreamInfo = field(default_factory=StreamInfo)

    @property
    def codec(self) -> str:
        pos = f"sparse{self.index_bits}" + ("+huffman" if self.index_stream.huffman else "") if self.sparse else "dense"
        if self.codebook:
            val = f"codebook{self.codebook}" + ("+huffman" if self.value_stream.huffman else "")
        else:
            val = "raw"
        return f"{pos}/{val}"

    @property
    def coded_bytes(self) -> int:
        """Bytes of the index streams (tags, tables, lengths, data)."""
        return (self.index_stream.bytes if self.sparse else 0) + (self.value_stream.bytes if self.codebook else 0)

    @property
    def entropy_bits(self) -> float:
        return (self.index_stream.entropy_bits if self.sparse else 0.0) + (
            self.value_stream.entropy_bits if self.codebook else 0.0
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("payload")
        d["codec"] = self.codec
        return d


def _bit_patterns(tensor: torch.Tensor, keep_negative_zero: bool) -> np.ndarray:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    torch_int, _ = _BITS_VIEW[t.element_size()]
    bits = t.view(torch_int).numpy()
    if not keep_negative_zero:
        negative = bits == np.iinfo(bits.dtype).min  # -0.0: the sign bit only
        if negative.any():
            bits = np.where(negative, 0, bits).astype(bits.dtype, copy=False)
    return bits


def _gap_histogram(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct gaps between stored positions (first gap from -1) and how often each occurs."""
    gaps = np.diff(positions, prepend=-1)
    if gaps.size and int(gaps.max()) <= 1 << 20:
        counts = np.bincount(gaps)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(gaps, return_counts=True)


def _gap_symbol_counts(gap_values: np.ndarray, gap_counts: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """Histogram of relative-index symbols (``gap - 1``, fillers as ``2**width - 1``) and the filler count."""
    span = 1 << width
    fillers = (gap_values - 1) // span
    last = gap_values - 1 - fillers * span
    counts = np.bincount(last, weights=gap_counts, minlength=span).astype(np.int64)
    n_fill = int((fillers * gap_counts).sum())
    counts[span - 1] += n_fill
    return counts, n_fill


def _relative_indices(positions: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative-index symbols with fillers, and for each entry the index of its non-zero (-1 for fillers)."""
    span = 1 << width
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // span
    if not fillers.any():
        return gaps - 1, np.arange(positions.size, dtype=np.int64)
    per = fillers + 1  # entries per non-zero
    total = int(per.sum())
    symbols = np.full(total, span - 1, dtype=np.int64)
    last_entry = np.cumsum(per) - 1
    symbols[last_entry] = gaps - 1 - fillers * span
    owner = np.full(total, -1, dtype=np.int64)
    owner[last_entry] = np.arange(positions.size)
    return symbols, owner


@dataclass
class _Analysis:
    """What the layout choice needs to know about a layer's bit patterns."""

    numel: int
    itemsize: int
    positions: np.ndarray  # flat indices of the non-zeros
    values: np.ndarray  # their bit patterns
    uniq: np.ndarray  # distinct non-zero bit patterns, sorted
    value_idx: np.ndarray  # index into ``uniq`` of each non-zero
    value_counts: np.ndarray

    @property
    def nnz(self) -> int:
        return int(self.positions.size)

    @property
    def can_share(self) -> bool:
        return 0 < self.uniq.size and self.uniq.size + 1 <= MAX_CODEBOOK


def _analyse(bits: np.ndarray, itemsize: int) -> _Analysis:
    positions = np.flatnonzero(bits != 0)  # ~10x faster than on the integers themselves
    values = bits[positions]
    uniq = np.unique(values)
    if uniq.size <= MAX_CODEBOOK:
        value_idx = np.searchsorted(uniq, values)
        value_counts = np.bincount(value_idx, minlength=uniq.size)
    else:  # not shareable: the codebook layouts are never considered
        value_idx = value_counts = np.zeros(0, dtype=np.int64)
    return _Analysis(bits.size, itemsize, positions, values, uniq, value_idx, value_counts)


def _choose_layout(a: _Analysis) -> dict:
    """The cheapest of dense/sparse x raw/codebook (index widths 1..16), each stream fixed or Huffman."""
    k_bytes = a.uniq.size * a.itemsize
    has_zero = a.nnz < a.numel
    plans: list[tuple[int, dict]] = [(1 + a.numel * a.itemsize, dict(sparse=False, codebook=False))]
    if a.can_share:
        k = a.uniq.size + (1 if has_zero else 0)
        counts = np.concatenate([[a.numel - a.nnz], a.value_counts]) if has_zero else a.value_counts
        cost, code = stream_plan(counts, index_bits(k, minimum=0))
        plans.append((1 + varint_size(k) + k * a.itemsize + cost, dict(sparse=False, codebook=True, value_code=code)))
    if has_zero:
        gap_values, gap_counts = _gap_histogram(a.positions)
        for ib in range(1, MAX_INDEX_BITS + 1):
            idx_counts, n_fill = _gap_symbol_counts(gap_values, gap_counts, ib)
            entries = a.nnz + n_fill
            idx_cost, idx_code = stream_plan(idx_counts, ib)
            head = 1 + 1 + varint_size(entries) + idx_cost
            sparse = dict(sparse=True, index_bits=ib, index_code=idx_code, index_counts=idx_counts)
            plans.append((head + entries * a.itemsize, dict(sparse, codebook=False)))
            if a.can_share:
                k = a.uniq.size + (1 if n_fill else 0)
                counts = np.concatenate([[n_fill], a.value_counts]) if n_fill else a.value_counts
                cost, code = stream_plan(counts, index_bits(k, minimum=0))
                plans.append((head + varint_size(k) + k_bytes + (a.itemsize if n_fill else 0) + cost,
                              dict(sparse, codebook=True, value_code=code, value_counts=counts)))
    return min(plans, key=lambda p: p[0])[1]


def encode_layer(tensor: torch.Tensor, keep_negative_zero: bool = False) -> LayerEncoding:
    """Encode a floating tensor in the cheapest of dense/sparse x raw/codebook layouts.

    ``keep_negative_zero=False`` stores -0.0 as a zero (decoded as +0.0); see the module docstring.
    """
    if not supports_layer_codec(tensor):
        raise ValueError(f"layer codec needs a 16/32/64-bit floating tensor, got {tensor.dtype}")
    a = _analyse(_bit_patterns(tensor, keep_negative_zero), tensor.element_size())
    plan = _choose_layout(a)
    out = ByteWriter()
    out.u8((_SPARSE if plan["sparse"] else 0) | (_CODEBOOK if plan["codebook"] else 0))
    ib, entries, index_info, value_info = 0, a.numel, StreamInfo(), StreamInfo()
    if plan["sparse"]:
        ib = plan["index_bits"]
        idx_symbols, owner = _relative_indices(a.positions, ib)
        entries = idx_symbols.size
        out.u8(ib)
        out.varint(entries)
    # Value of every entry as an index into ``uniq`` (-1 = zero: a pruned weight or a filler).
    if plan["sparse"] and plan["codebook"]:
        entry_value = a.value_idx[owner] if owner.size == a.nnz else np.where(owner >= 0, a.value_idx[np.maximum(owner, 0)], -1)
    elif plan["codebook"]:
        entry_value = np.full(a.numel, -1, dtype=np.int64)
        entry_value[a.positions] = a.value_idx
    with_zero = entries > a.nnz
    if plan["codebook"]:
        # Codebook order: zero first when the value stream holds zeros, then ``uniq`` (sorted bit patterns).
        codebook = np.concatenate([np.zeros(1, a.uniq.dtype), a.uniq]) if with_zero else a.uniq
        k = codebook.size
        out.varint(k)
        out.write(codebook.tobytes())
    if plan["sparse"]:
        index_info = encode_stream(out, idx_symbols, ib, plan["index_code"], plan["index_counts"])
    if plan["codebook"]:
        value_bits = index_bits(k, minimum=0)
        value_info = encode_stream(out, entry_value + 1 if with_zero else entry_value, value_bits, plan["value_code"],
                                   plan.get("value_counts"))
    else:
        value_bits = a.itemsize * 8
        out.write(_raw_entries(a, plan, owner if plan["sparse"] else None).tobytes())
    return LayerEncoding(
        payload=out.getvalue(), numel=a.numel, nonzeros=a.nnz, distinct=int(a.uniq.size), sparse=plan["sparse"],
        index_bits=ib, entries=entries, codebook=k if plan["codebook"] else 0, value_bits=value_bits,
        index_stream=index_info, value_stream=value_info,
    )


def _raw_entries(a: _Analysis, plan: dict, owner: np.ndarray | None) -> np.ndarray:
    """Every stored entry's bit pattern: the dense tensor, or the sparse entries with zero fillers."""
    if owner is None:
        dense = np.zeros(a.numel, dtype=a.values.dtype)
        dense[a.positions] = a.values
        return dense
    if owner.size == a.nnz:
        return a.values
    raw = np.zeros(owner.size, dtype=a.values.dtype)
    keep = owner >= 0
    raw[keep] = a.values[owner[keep]]
    return raw


def read_sparse_header(reader: ByteReader, numel: int) -> tuple[int, int]:
    """``(relative-index width, entries)`` of a sparse payload, both checked before anything is allocated."""
    ib = reader.u8()
    if not 1 <= ib <= MAX_INDEX_BITS:
        raise CorruptedFileError(f"relative-index width {ib} out of range")
    entries = reader.varint()
    if entries > numel:
        raise CorruptedFileError(f"{entries} sparse entries for a tensor of {numel} elements")
    return ib, entries


def decode_layer(payload: bytes | memoryview, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`encode_layer`; raises :class:`CorruptedFileError` on malformed payloads.

    Every count in the payload is checked against the tensor's size (already bounded by the caller) and the
    bytes left before memory is allocated for it.
    """
    with payload_errors("layer payload"):
        return _decode_layer(ByteReader(payload), shape, dtype)


def _decode_layer(reader: ByteReader, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    numel = math.prod(shape)
    itemsize = ITEM_SIZES.get(dtype, 0)
    if not dtype.is_floating_point or itemsize not in _BITS_VIEW:
        raise CorruptedFileError(f"layer codec used for unsupported dtype {dtype}")
    np_int = _BITS_VIEW[itemsize][1]
    mode = reader.u8()
    if mode & ~(_SPARSE | _CODEBOOK):
        raise CorruptedFileError(f"unknown layer mode {mode}")
    sparse, shared = bool(mode & _SPARSE), bool(mode & _CODEBOOK)
    entries = numel
    if sparse:
        ib, entries = read_sparse_header(reader, numel)
    if shared:
        k = reader.varint()
        if not 1 <= k <= MAX_CODEBOOK:
            raise CorruptedFileError(f"codebook size {k} out of range")
        codebook = np.frombuffer(reader.read(k * itemsize), dtype=np_int)
    if sparse:
        positions = np.cumsum(decode_stream(reader, entries, ib) + 1) - 1
        if entries and positions[-1] >= numel:
            raise CorruptedFileError("relative indices run past the end of the tensor")
    if shared:
        symbols = decode_stream(reader, entries, index_bits(k, minimum=0))
        if symbols.size and symbols.max() >= k:
            raise CorruptedFileError("codebook index out of range")
        vals = codebook[symbols]
    else:
        vals = np.frombuffer(reader.read(entries * itemsize), dtype=np_int)
    if reader.remaining:
        raise CorruptedFileError(f"{reader.remaining} unexpected bytes after the layer payload")
    if sparse:
        out = zeroed(numel, np_int)
        out[positions] = vals
    else:
        out = np.array(vals, dtype=np_int)  # a copy: ``vals`` may view the file's bytes
    return torch.from_numpy(out).view(dtype).reshape(shape)


__all__ = ["LayerEncoding", "MAX_CODEBOOK", "decode_layer", "encode_layer", "supports_layer_codec"]
