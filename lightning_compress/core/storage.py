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

from lightning_compress.core.bitstream import BitstreamError, ByteReader, ByteWriter, pack_fixed, unpack_fixed
from lightning_compress.core.bitstream import encode_varint, varint_size
from lightning_compress.core.huffman import HuffmanCode, entropy_bits
from lightning_compress.core.stats import MAX_INDEX_BITS
from lightning_compress.format.errors import (  # noqa: F401 - re-exported for older imports
    ArchitectureMismatchError,
    CompressedFileError,
    CorruptedFileError,
    NotCompressedFileError,
    TruncatedFileError,
    UnsupportedVersionError,
)


# ---- dtypes -------------------------------------------------------------------------------------------

#: Stable codes for the file header (never renumber: files depend on them).
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float64: 2,
    torch.float16: 3,
    torch.bfloat16: 4,
    torch.int8: 5,
    torch.int16: 6,
    torch.int32: 7,
    torch.int64: 8,
    torch.uint8: 9,
    torch.bool: 10,
    torch.complex64: 11,
    torch.complex128: 12,
}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
_BITS_VIEW = {2: (torch.int16, np.int16), 4: (torch.int32, np.int32), 8: (torch.int64, np.int64)}

#: Codebook layouts are considered up to this many distinct values (index streams are at most 16 bits).
MAX_CODEBOOK = 1 << 16

RAW, LAYER = 0, 1  # tensor codecs in the file header
_SPARSE, _CODEBOOK = 1, 2  # bits of a layer payload's mode byte
_FIXED, _HUFFMAN = 0, 1  # stream tags


def dtype_code(dtype: torch.dtype) -> int:
    if dtype not in DTYPE_CODES:
        raise ValueError(f"dtype {dtype} is not supported by the compressed format ({sorted(map(str, DTYPE_CODES))})")
    return DTYPE_CODES[dtype]


def supports_layer_codec(tensor: torch.Tensor) -> bool:
    """Floating tensors of 16/32/64-bit elements can use the sparse/codebook codec; others are stored raw."""
    return tensor.dtype.is_floating_point and tensor.element_size() in _BITS_VIEW


def symbol_bits(alphabet: int) -> int:
    """Fixed width of an index into ``alphabet`` symbols (0 for a single symbol)."""
    return max(0, math.ceil(math.log2(alphabet))) if alphabet > 1 else 0


# ---- raw tensors --------------------------------------------------------------------------------------


def encode_raw(tensor: torch.Tensor) -> bytes:
    """The tensor's bytes as they are in memory (C order, little-endian)."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def decode_raw(payload: bytes | memoryview, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    numel = math.prod(shape)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if len(payload) != numel * itemsize:
        raise CorruptedFileError(f"raw tensor of shape {shape} and {dtype} needs {numel * itemsize} bytes, got {len(payload)}")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    return data.view(dtype).reshape(shape).clone()


# ---- index streams ------------------------------------------------------------------------------------


@dataclass
class StreamInfo:
    """What one index stream cost and what it could have cost."""

    count: int = 0  # symbols in the stream
    alphabet_bits: int = 0  # fixed width of a symbol
    huffman: bool = False  # stored Huffman-coded (else fixed width)
    bytes: int = 0  # stored bytes: tag + table + length + data
    table_bytes: int = 0  # Huffman table bytes (0 when fixed)
    data_bits: int = 0  # bits of the coded symbols
    entropy_bits: float = 0.0  # Shannon bound of the symbols

    @property
    def bits_per_symbol(self) -> float:
        return self.data_bits / self.count if self.count else 0.0


def _stream_plan(counts: np.ndarray, alphabet_bits: int) -> tuple[int, HuffmanCode | None]:
    """Bytes of the cheaper of fixed-width and Huffman coding for a stream with these counts."""
    n = int(counts.sum())
    fixed = 1 + (n * alphabet_bits + 7) // 8
    if n == 0:
        return fixed, None
    code = HuffmanCode.from_counts(counts)
    data = (code.coded_bits(counts) + 7) // 8
    huff = 1 + code.table_size(alphabet_bits) + varint_size(code.coded_bits(counts)) + data
    return (huff, code) if huff < fixed else (fixed, None)


def encode_stream(out: ByteWriter, symbols: np.ndarray, alphabet_bits: int, code: HuffmanCode | None) -> StreamInfo:
    """Write ``symbols`` fixed-width (``code is None``) or Huffman-coded with its table."""
    start = len(out)
    counts = np.bincount(symbols, minlength=1) if symbols.size else np.zeros(1, dtype=np.int64)
    info = StreamInfo(count=int(symbols.size), alphabet_bits=alphabet_bits, entropy_bits=entropy_bits(counts))
    if code is None:
        out.u8(_FIXED)
        out.write(pack_fixed(symbols, alphabet_bits))
        info.data_bits = int(symbols.size) * alphabet_bits
    else:
        out.u8(_HUFFMAN)
        table = code.write_table(alphabet_bits)
        data, nbits = code.encode(symbols)
        out.write(table)
        out.varint(nbits)
        out.write(data)
        info.huffman, info.table_bytes, info.data_bits = True, len(table), nbits
    info.bytes = len(out) - start
    return info


def decode_stream(reader: ByteReader, count: int, alphabet_bits: int) -> np.ndarray:
    tag = reader.u8()
    if tag == _FIXED:
        return unpack_fixed(reader.read((count * alphabet_bits + 7) // 8), alphabet_bits, count)
    if tag == _HUFFMAN:
        code = HuffmanCode.read_table(reader, alphabet_bits)
        nbits = reader.varint()
        return code.decode(reader.read((nbits + 7) // 8), nbits, count)
    raise BitstreamError(f"unknown stream tag {tag}")


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


def _bit_patterns(tensor: torch.Tensor) -> np.ndarray:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    torch_int, _ = _BITS_VIEW[t.element_size()]
    return t.view(torch_int).numpy()


def _gap_symbol_counts(gap_values: np.ndarray, gap_counts: np.ndarray, index_bits: int) -> tuple[np.ndarray, int]:
    """Histogram of relative-index symbols (``gap - 1``, fillers as ``2**bits - 1``) and the filler count."""
    span = 1 << index_bits
    fillers = (gap_values - 1) // span
    last = gap_values - 1 - fillers * span
    counts = np.bincount(last, weights=gap_counts, minlength=span).astype(np.int64)
    n_fill = int((fillers * gap_counts).sum())
    counts[span - 1] += n_fill
    return counts, n_fill


def _relative_indices(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative-index symbols with fillers, and for each entry the index of its non-zero (-1 for fillers)."""
    span = 1 << index_bits
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // span
    per = fillers + 1  # entries per non-zero
    total = int(per.sum())
    symbols = np.full(total, span - 1, dtype=np.int64)
    last_entry = np.cumsum(per) - 1
    symbols[last_entry] = gaps - 1 - fillers * span
    owner = np.full(total, -1, dtype=np.int64)
    owner[last_entry] = np.arange(positions.size)
    return symbols, owner


def encode_layer(tensor: torch.Tensor, keep_negative_zero: bool = False) -> LayerEncoding:
    """Encode a floating tensor in the cheapest of dense/sparse x raw/codebook layouts.

    ``keep_negative_zero=False`` stores -0.0 as a zero (decoded as +0.0); see the module docstring.
    """
    if not supports_layer_codec(tensor):
        raise ValueError(f"layer codec needs a 16/32/64-bit floating tensor, got {tensor.dtype}")
    itemsize = tensor.element_size()
    bits = _bit_patterns(tensor)
    if not keep_negative_zero:
        negative_zero = np.iinfo(bits.dtype).min  # sign bit only
        bits = np.where(bits == negative_zero, 0, bits).astype(bits.dtype)
    numel = bits.size
    positions = np.flatnonzero(bits)
    nnz = positions.size
    values = bits[positions]
    uniq, value_idx = np.unique(values, return_inverse=True)
    distinct = uniq.size
    has_zero = nnz < numel
    can_share = 0 < distinct and distinct + 1 <= MAX_CODEBOOK

    # Codebook order: zero first when the value stream holds zeros (dense zeros or sparse fillers), then the
    # distinct non-zero bit patterns as ``np.unique`` sorts them.
    value_counts = np.bincount(value_idx, minlength=distinct) if distinct else np.zeros(0, dtype=np.int64)

    plans: list[tuple[int, dict]] = []
    # dense / raw
    plans.append((1 + numel * itemsize, dict(sparse=False, codebook=False)))
    # dense / codebook
    if can_share:
        k = distinct + (1 if has_zero else 0)
        counts = np.concatenate([[numel - nnz], value_counts]) if has_zero else value_counts
        cost, code = _stream_plan(counts, symbol_bits(k))
        plans.append((1 + varint_size(k) + k * itemsize + cost, dict(sparse=False, codebook=True, value_code=code)))
    # sparse at every index width
    if has_zero:
        gap_values, gap_counts = np.unique(np.diff(positions, prepend=-1), return_counts=True)
        for ib in range(1, MAX_INDEX_BITS + 1):
            idx_counts, n_fill = _gap_symbol_counts(gap_values, gap_counts, ib)
            entries = nnz + n_fill
            idx_cost, idx_code = _stream_plan(idx_counts, ib)
            head = 1 + 1 + varint_size(entries) + idx_cost
            plans.append((head + entries * itemsize, dict(sparse=True, index_bits=ib, index_code=idx_code, codebook=False)))
            if can_share:
                k = distinct + (1 if n_fill else 0)
                counts = np.concatenate([[n_fill], value_counts]) if n_fill else value_counts
                cost, code = _stream_plan(counts, symbol_bits(k))
                plans.append(
                    (
                        head + varint_size(k) + k * itemsize + cost,
                        dict(sparse=True, index_bits=ib, index_code=idx_code, codebook=True, value_code=code),
                    )
                )
    _, plan = min(plans, key=lambda p: p[0])

    out = ByteWriter()
    out.u8((_SPARSE if plan["sparse"] else 0) | (_CODEBOOK if plan["codebook"] else 0))
    index_info = StreamInfo()
    if plan["sparse"]:
        ib = plan["index_bits"]
        idx_symbols, owner = _relative_indices(positions, ib)
        entries = idx_symbols.size
        out.u8(ib)
        out.varint(entries)
    else:
        ib, entries = 0, numel
    # Value of every entry as a bit pattern index: ``entry_value`` indexes ``uniq`` (-1 = zero).
    if plan["sparse"]:
        entry_value = np.where(owner >= 0, value_idx[np.maximum(owner, 0)], -1)
    else:
        entry_value = np.full(numel, -1, dtype=np.int64)
        entry_value[positions] = value_idx
    with_zero = bool(np.any(entry_value < 0))
    if plan["codebook"]:
        codebook = np.concatenate([[0], uniq]) if with_zero else uniq
        k = codebook.size
        out.varint(k)
        out.write(codebook.astype(values.dtype).tobytes())
        value_symbols = entry_value + (1 if with_zero else 0)
    if plan["sparse"]:
        index_info = encode_stream(out, idx_symbols, ib, plan["index_code"])
    value_info = StreamInfo()
    if plan["codebook"]:
        value_info = encode_stream(out, value_symbols, symbol_bits(k), plan["value_code"])
        value_bits = symbol_bits(k)
    else:
        raw = np.zeros(entries, dtype=values.dtype)
        keep = entry_value >= 0
        raw[keep] = uniq[entry_value[keep]]
        out.write(raw.tobytes())
        value_bits = itemsize * 8
    return LayerEncoding(
        payload=out.getvalue(),
        numel=numel,
        nonzeros=nnz,
        distinct=distinct,
        sparse=plan["sparse"],
        index_bits=ib,
        entries=entries,
        codebook=k if plan["codebook"] else 0,
        value_bits=value_bits,
        index_stream=index_info,
        value_stream=value_info,
    )


def decode_layer(payload: bytes | memoryview, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`encode_layer`; raises :class:`CorruptedFileError` on malformed payloads."""
    try:
        return _decode_layer(ByteReader(payload), shape, dtype)
    except (BitstreamError, IndexError, ValueError) as err:
        if isinstance(err, CompressedFileError):
            raise
        raise CorruptedFileError(f"cannot decode layer payload: {err}") from err


def _decode_layer(reader: ByteReader, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    numel = math.prod(shape)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if not dtype.is_floating_point or itemsize not in _BITS_VIEW:
        raise CorruptedFileError(f"layer codec used for unsupported dtype {dtype}")
    torch_int, np_int = _BITS_VIEW[itemsize]
    mode = reader.u8()
    if mode & ~(_SPARSE | _CODEBOOK):
        raise CorruptedFileError(f"unknown layer mode {mode}")
    sparse, shared = bool(mode & _SPARSE), bool(mode & _CODEBOOK)
    if sparse:
        ib = reader.u8()
        if not 1 <= ib <= MAX_INDEX_BITS:
            raise CorruptedFileError(f"relative-index width {ib} out of range")
        entries = reader.varint()
        if entries > numel:
            raise CorruptedFileError(f"{entries} sparse entries for a tensor of {numel} elements")
    else:
        entries = numel
    if shared:
        k = reader.varint()
        if not 1 <= k <= MAX_CODEBOOK:
            raise CorruptedFileError(f"codebook size {k} out of range")
        codebook = np.frombuffer(bytes(reader.read(k * itemsize)), dtype=np_int)
    if sparse:
        gaps = decode_stream(reader, entries, ib) + 1
        positions = np.cumsum(gaps) - 1
        if entries and positions[-1] >= numel:
            raise CorruptedFileError("relative indices run past the end of the tensor")
    if shared:
        symbols = decode_stream(reader, entries, symbol_bits(k))
        if symbols.size and symbols.max() >= k:
            raise CorruptedFileError("codebook index out of range")
        vals = codebook[symbols]
    else:
        vals = np.frombuffer(bytes(reader.read(entries * itemsize)), dtype=np_int)
    if reader.remaining:
        raise CorruptedFileError(f"{reader.remaining} unexpected bytes after the layer payload")
    if sparse:
        out = np.zeros(numel, dtype=np_int)
        out[positions] = vals
    else:
        out = np.ascontiguousarray(vals, dtype=np_int)
    return torch.from_numpy(out.copy()).view(dtype).reshape(shape)


__all__ = [
    "ArchitectureMismatchError",
    "CompressedFileError",
    "CorruptedFileError",
    "LayerEncoding",
    "NotCompressedFileError",
    "StreamInfo",
    "TruncatedFileError",
    "UnsupportedVersionError",
    "decode_layer",
    "decode_raw",
    "encode_layer",
    "encode_raw",
    "supports_layer_codec",
    "dtype_code",
]
