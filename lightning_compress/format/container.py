"""The ``.lcz`` container: prefix, tensor table, payloads, checksum; and its checks before any decoding.

Layout (integers little-endian, ``varint`` = unsigned LEB128)::

    magic b"\\x89LCZ" | version u8 | file length u64
    tensor table: varint n_tensors, then per tensor:
        name (varint length + UTF-8) | dtype code u8 | varint ndim | varint dims... | codec u8 | varint payload bytes
        (codec ALIAS, version 2: the payload is one varint, the table index of an earlier entry holding the tensor)
    payloads, in table order
    CRC-32 u32 of everything before it

A reader checks, in order: magic, version, length, checksum, then the whole tensor table (every count against
the bytes that remain, every shape against the memory limit) before a single payload is decoded.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Sequence

import torch

from lightning_compress.format.bitstream import BitstreamError, ByteReader, ByteWriter
from lightning_compress.format.errors import (
    CorruptedFileError,
    MemoryLimitError,
    NotCompressedFileError,
    TruncatedFileError,
    UnsupportedVersionError,
)
from lightning_compress.format.raw import CODE_DTYPES, ITEM_SIZES

MAGIC = b"\x89LCZ"
#: The newest version this package reads and writes. Version 1 is written whenever no version-2 codec is used.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
RAW, LAYER, GROUPED, ALIAS = 0, 1, 2, 3  # tensor codecs in the table; GROUPED and ALIAS need version 2
CODECS_BY_VERSION = {1: (RAW, LAYER), 2: (RAW, LAYER, GROUPED, ALIAS)}
#: Longest alias payload: one varint, the table index of the entry it names.
MAX_ALIAS_BYTES = 10
PREFIX = struct.Struct("<4sBQ")  # magic, version, file length
CRC = struct.Struct("<I")
MIN_FILE_BYTES = PREFIX.size + 1 + CRC.size
MAX_NDIM = 64
#: Largest dimension a table may declare (torch sizes are int64; this leaves room for products).
MAX_DIM = 1 << 48


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor table: what the payload at ``offset`` decodes to."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    codec: int
    offset: int
    nbytes: int
    alias_of: str | None = None  # ALIAS entries: the earlier entry holding this tensor's payload

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def decoded_bytes(self) -> int:
        return self.numel * ITEM_SIZES[self.dtype]


def write_container(rows: Sequence[tuple[str, int, tuple[int, ...], int, bytes]], version: int) -> tuple[bytes, int]:
    """File bytes for ``(name, dtype code, shape, codec, payload)`` rows, and the bytes that are not payload."""
    table = ByteWriter()
    table.varint(len(rows))
    for name, code, shape, codec, payload in rows:
        table.string(name)
        table.u8(code)
        table.varint(len(shape))
        for d in shape:
            table.varint(int(d))
        table.u8(codec)
        table.varint(len(payload))
    head = table.getvalue()
    total = PREFIX.size + len(head) + sum(len(r[4]) for r in rows) + CRC.size
    body = b"".join([PREFIX.pack(MAGIC, version, total), head, *(r[4] for r in rows)])
    return body + CRC.pack(zlib.crc32(body)), PREFIX.size + len(head) + CRC.size


def check_prefix(data: bytes | memoryview, source: str) -> int:
    """Magic, version, length and checksum; returns the format version."""
    if len(data) < len(MAGIC):
        if MAGIC.startswith(bytes(data)):
            raise TruncatedFileError(f"{source}: {len(data)} bytes, truncated before the end of the magic number")
        raise NotCompressedFileError(f"{source}: not a lightning-compress file (too short, wrong magic)")
    if bytes(data[: len(MAGIC)]) != MAGIC:
        raise NotCompressedFileError(f"{source}: not a lightning-compress file (magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    if len(data) < len(MAGIC) + 1:
        raise TruncatedFileError(f"{source}: truncated before the format version")
    version = data[len(MAGIC)]
    if version not in SUPPORTED_VERSIONS:
        newer = version > FORMAT_VERSION
        raise UnsupportedVersionError(
            f"{source}: format version {version} is {'newer than' if newer else 'not'} a supported version "
            f"{SUPPORTED_VERSIONS}" + (" — upgrade lightning-compress to read it" if newer else "")
            + " (or the file is corrupted)"
        )
    if len(data) < MIN_FILE_BYTES:
        raise TruncatedFileError(f"{source}: {len(data)} bytes, shorter than the smallest valid file")
    _, _, total = PREFIX.unpack_from(data)
    if len(data) < total:
        raise TruncatedFileError(f"{source}: {len(data)} bytes but the header says {total}: the file is truncated")
    if len(data) > total:
        raise CorruptedFileError(f"{source}: {len(data) - total} unexpected bytes after the end of the file ({total})")
    stored = CRC.unpack_from(data, total - CRC.size)[0]
    actual = zlib.crc32(memoryview(data)[: total - CRC.size])
    if stored != actual:
        raise CorruptedFileError(f"{source}: checksum mismatch (stored {stored:08x}, computed {actual:08x}): corrupted")
    return version


def _read_row(reader: ByteReader, version: int, source: str) -> tuple[str, torch.dtype, tuple[int, ...], int, int]:
    name = reader.string(max_len=reader.remaining)
    code = reader.u8()
    if code not in CODE_DTYPES:
        raise CorruptedFileError(f"{source}: tensor {name!r} has unknown dtype code {code}")
    ndim = reader.varint()
    if ndim > MAX_NDIM:
        raise CorruptedFileError(f"{source}: tensor {name!r} has {ndim} dimensions")
    shape = tuple(reader.varint() for _ in range(ndim))
    if any(d > MAX_DIM for d in shape):
        raise CorruptedFileError(f"{source}: tensor {name!r} has an impossible shape {shape}")
    codec = reader.u8()
    if codec not in CODECS_BY_VERSION[version]:
        raise CorruptedFileError(f"{source}: tensor {name!r} has unknown codec {codec} for format version {version}")
    dtype = CODE_DTYPES[code]
    if codec not in (RAW, ALIAS) and not dtype.is_floating_point:
        raise CorruptedFileError(f"{source}: tensor {name!r}: codec {codec} used for {dtype}")
    return name, dtype, shape, codec, reader.varint()


def parse_header(data: bytes | memoryview, source: str = "<bytes>", max_bytes: int | None = None) -> list[TensorEntry]:
    """Validate the whole file (magic, version, length, checksum, table) and return its tensor table.

    With ``max_bytes``, a file whose tensors would take more memory than that once decoded is refused
    (:class:`MemoryLimitError`) before anything is decoded.
    """
    version = check_prefix(data, source)
    end = len(data) - CRC.size
    reader = ByteReader(data, PREFIX.size, end)
    try:
        n = reader.varint()
        if n > reader.remaining // 4:  # a table row takes at least 4 bytes (name length, dtype, ndim, codec...)
            raise CorruptedFileError(f"{source}: the table declares {n} tensors, the file cannot hold them")
        rows = [_read_row(reader, version, source) for _ in range(n)]
    except BitstreamError as err:
        raise CorruptedFileError(f"{source}: malformed tensor table: {err}") from None
    entries, offset, seen = [], reader.pos, set()
    for name, dtype, shape, codec, nbytes in rows:
        if name in seen:
            raise CorruptedFileError(f"{source}: tensor {name!r} appears twice")
        seen.add(name)
        entries.append(TensorEntry(name, dtype, shape, codec, offset, nbytes))
        offset += nbytes
    if offset != end:
        raise CorruptedFileError(f"{source}: payload sizes add up to {offset - reader.pos} bytes, file holds {end - reader.pos}")
    entries = [_resolve_alias(data, entries, i, source) if e.codec == ALIAS else e for i, e in enumerate(entries)]
    for e in entries:
        if e.codec == RAW and e.nbytes != e.decoded_bytes:
            raise CorruptedFileError(f"{source}: raw tensor {e.name!r} of shape {e.shape} needs {e.decoded_bytes} "
                                     f"bytes, its payload has {e.nbytes}")
    if max_bytes is not None:
        check_memory(entries, max_bytes, source)
    return entries


def _resolve_alias(data: bytes | memoryview, entries: Sequence[TensorEntry], i: int, source: str) -> TensorEntry:
    """An ALIAS entry names an earlier, non-alias entry of the same shape and dtype (its payload: that index)."""
    e = entries[i]
    if not 1 <= e.nbytes <= MAX_ALIAS_BYTES:
        raise CorruptedFileError(f"{source}: alias {e.name!r} has a payload of {e.nbytes} bytes (one varint expected)")
    reader = ByteReader(data, e.offset, e.offset + e.nbytes)
    try:
        target = reader.varint()
    except BitstreamError as err:
        raise CorruptedFileError(f"{source}: alias {e.name!r}: malformed target index: {err}") from None
    if reader.remaining:
        raise CorruptedFileError(f"{source}: alias {e.name!r}: {reader.remaining} unexpected bytes after its target index")
    if target >= i:
        raise CorruptedFileError(f"{source}: alias {e.name!r} (entry {i}) names entry {target}: "
                                 "an alias must name an earlier entry")
    t = entries[target]
    if t.codec == ALIAS:
        raise CorruptedFileError(f"{source}: alias {e.name!r} names {t.name!r}, itself an alias")
    if (t.shape, t.dtype) != (e.shape, e.dtype):
        raise CorruptedFileError(f"{source}: alias {e.name!r} ({e.shape}, {e.dtype}) names {t.name!r} "
                                 f"of another shape or dtype ({t.shape}, {t.dtype})")
    return TensorEntry(e.name, e.dtype, e.shape, ALIAS, e.offset, e.nbytes, alias_of=t.name)


def check_memory(entries: Sequence[TensorEntry], max_bytes: int, source: str, what: str = "max_bytes") -> None:
    need = sum(e.decoded_bytes for e in entries if e.codec != ALIAS)  # an alias shares its target's tensor
    if need > max_bytes:
        raise MemoryLimitError(
            f"{source}: decoding needs {need:,} bytes of tensors, more than the limit {what}={max_bytes:,}; "
            f"pass a larger {what} if you trust this file"
        )


def file_version(data: bytes | memoryview) -> int:
    """The version byte of a file that passed :func:`check_prefix`."""
    return data[len(MAGIC)]


__all__ = [
    "ALIAS",
    "CODECS_BY_VERSION",
    "FORMAT_VERSION",
    "GROUPED",
    "LAYER",
    "MAGIC",
    "RAW",
    "SUPPORTED_VERSIONS",
    "TensorEntry",
    "check_memory",
    "check_prefix",
    "parse_header",
    "write_container",
]
