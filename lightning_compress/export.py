"""The compressed artifact: write a model in the Deep Compression format, read it back bit-exactly.

The compression ratio we report is the size of this file, header included, to the byte::

    from lightning_compress import save_compressed, load_compressed

    report = save_compressed(model, "model.lcz")
    print(report.table())                 # per-layer table; the total row equals os.path.getsize
    load_compressed("model.lcz", fresh_model_of_the_same_architecture)

From the command line, for a Lightning checkpoint::

    lightning-compress-export LeNet5 epoch=9.ckpt -o lenet5.lcz --json report.json

File layout (format version 1, integers little-endian, ``varint`` = unsigned LEB128)::

    magic b"\\x89LCZ" | version u8 | file length u64
    header: varint n_tensors, then per tensor:
        name (varint length + UTF-8) | dtype code u8 | varint ndim | varint dims... | codec u8 | varint payload bytes
    payloads, in header order (codec 0: raw bytes; codec 1: ``core/storage`` layer codec)
    CRC-32 u32 of everything before it

Reading checks, in order: magic, version (newer -> :class:`UnsupportedVersionError`), length
(:class:`TruncatedFileError`), checksum and structure (:class:`CorruptedFileError`), and on loading the
model's names, shapes and dtypes (:class:`ArchitectureMismatchError`). No path returns wrong weights.

Compressed layers are the Linear/Conv weights of ``core.targets.find_targets`` (or the ``include``/
``exclude`` selection); everything else in ``state_dict`` (biases, norms, buffers) is stored raw. A -0.0 in
a compressed layer comes back as +0.0 unless ``keep_negative_zero=True`` (see ``core/storage``).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib
import io
import json
import math
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from lightning_compress.core.bitstream import BitstreamError, ByteReader, ByteWriter
from lightning_compress.core.storage import (
    CODE_DTYPES,
    LAYER,
    RAW,
    ArchitectureMismatchError,
    CompressedFileError,
    CorruptedFileError,
    LayerEncoding,
    NotCompressedFileError,
    TruncatedFileError,
    UnsupportedVersionError,
    decode_layer,
    decode_raw,
    dtype_code,
    encode_layer,
    encode_raw,
    supports_layer_codec,
)
from lightning_compress.core.targets import Target, find_targets

MAGIC = b"\x89LCZ"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sBQ")  # magic, version, file length
_CRC = struct.Struct("<I")
MIN_FILE_BYTES = _PREFIX.size + 1 + _CRC.size

ZOO = {"LeNet300100": "lightning_compress.zoo.models.LeNet300100", "LeNet5": "lightning_compress.zoo.models.LeNet5"}


# ---- report -------------------------------------------------------------------------------------------


@dataclass
class LayerReport:
    """One compressed layer, in the style of the Deep Compression tables."""

    name: str
    shape: tuple[int, ...]
    codec: str
    numel: int
    nonzeros: int
    value_bits: int  # fixed-width bits per stored value (codebook index width, or 32 for raw float32)
    value_bits_huffman: float  # average coded bits per stored value as written
    index_bits: int  # relative-index width, 0 when stored dense
    index_bits_huffman: float  # average coded bits per relative index as written (0 when dense)
    dense_bytes: int
    bytes: int  # payload bytes in the file
    coded_bytes: int  # bytes of the index streams (tables included)
    entropy_bits: float  # Shannon bound of the index streams

    @property
    def nonzero_fraction(self) -> float:
        return self.nonzeros / self.numel if self.numel else 0.0

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.bytes if self.bytes else math.inf

    @property
    def entropy_bound_bytes(self) -> int:
        """This layer's bytes with its index streams coded at their entropy and no tables."""
        return self.bytes - self.coded_bytes + math.ceil(self.entropy_bits / 8)

    def as_dict(self) -> dict:
        return {
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
            "shape": list(self.shape),
            "nonzero_fraction": self.nonzero_fraction,
            "ratio": self.ratio,
            "entropy_bound_bytes": self.entropy_bound_bytes,
        }


@dataclass
class RawTensorReport:
    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "bytes": self.bytes}


@dataclass
class CompressionReport:
    """What was written. ``header_bytes + layer bytes + raw tensor bytes == file_bytes`` exactly."""

    layers: list[LayerReport]
    raw: list[RawTensorReport]
    header_bytes: int  # magic, version, length, tensor table, checksum
    file_bytes: int
    gzip_bytes: int | None = None  # gzip -9 of ``torch.save(state_dict)``, what other toolkits ship
    path: str | None = None
    encode_seconds: float = 0.0
    format_version: int = FORMAT_VERSION
    notes: list[str] = field(default_factory=list)

    @property
    def raw_bytes(self) -> int:
        return sum(r.bytes for r in self.raw)

    @property
    def layer_bytes(self) -> int:
        return sum(layer.bytes for layer in self.layers)

    @property
    def dense_bytes(self) -> int:
        """Every tensor at its own dtype, uncompressed (32 bits per weight for a float32 model)."""
        return sum(layer.dense_bytes for layer in self.layers) + self.raw_bytes

    @property
    def ratio(self) -> float:
        """Storage compression ratio: dense bytes / bytes of the file on disk."""
        return self.dense_bytes / self.file_bytes if self.file_bytes else math.inf

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def nonzeros(self) -> int:
        return sum(layer.nonzeros for layer in self.layers)

    @property
    def entropy_bound_bytes(self) -> int:
        """The file's size if every coded index stream took exactly its Shannon bound (no Huffman tables)."""
        return self.file_bytes - sum(l.bytes - l.entropy_bound_bytes for l in self.layers)

    @property
    def gzip_ratio(self) -> float | None:
        """Our file's bytes / gzip'd state_dict bytes (smaller is better)."""
        return self.file_bytes / self.gzip_bytes if self.gzip_bytes else None

    def table(self) -> str:
        """Markdown table: one row per compressed layer, then raw tensors, header and the total."""
        rows = [
            "| layer | shape | codec | weights | non-zero % | bits | bits (H) | index bits | index bits (H) "
            "| dense bytes | bytes | ratio |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for l in self.layers:
            rows.append(
                f"| {l.name} | {'x'.join(map(str, l.shape))} | {l.codec} | {l.numel:,} | "
                f"{100 * l.nonzero_fraction:.2f} | {l.value_bits} | {l.value_bits_huffman:.2f} | "
                f"{l.index_bits or '-'} | {f'{l.index_bits_huffman:.2f}' if l.index_bits else '-'} | "
                f"{l.dense_bytes:,} | {l.bytes:,} | {l.ratio:.1f}x |"
            )
        if self.raw:
            n = sum(math.prod(r.shape) for r in self.raw)
            rows.append(
                f"| ({len(self.raw)} raw tensors: biases, buffers) | | raw | {n:,} | | | | | | "
                f"{self.raw_bytes:,} | {self.raw_bytes:,} | 1.0x |"
            )
        rows.append(f"| (header, tensor table, checksum) | | | | | | | | | 0 | {self.header_bytes:,} | |")
        nz = 100 * self.nonzeros / self.numel if self.numel else 0.0
        rows.append(
            f"| **total (file)** | | | {self.numel:,} | {nz:.2f} | | | | | {self.dense_bytes:,} | "
            f"**{self.file_bytes:,}** | **{self.ratio:.1f}x** |"
        )
        extra = [f"entropy bound of the coded streams: {self.entropy_bound_bytes:,} bytes "
                 f"(file is {self.file_bytes / max(1, self.entropy_bound_bytes):.3f}x of it)"]
        if self.gzip_bytes:
            extra.append(f"gzip'd state_dict: {self.gzip_bytes:,} bytes (file is {self.gzip_ratio:.3f}x of it)")
        return "\n".join(rows) + "\n\n" + "\n".join(f"- {e}" for e in extra + self.notes)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "format_version": self.format_version,
            "file_bytes": self.file_bytes,
            "header_bytes": self.header_bytes,
            "layer_bytes": self.layer_bytes,
            "raw_bytes": self.raw_bytes,
            "dense_bytes": self.dense_bytes,
            "ratio": self.ratio,
            "numel": self.numel,
            "nonzeros": self.nonzeros,
            "entropy_bound_bytes": self.entropy_bound_bytes,
            "gzip_bytes": self.gzip_bytes,
            "gzip_ratio": self.gzip_ratio,
            "encode_seconds": self.encode_seconds,
            "layers": [l.as_dict() for l in self.layers],
            "raw": [r.as_dict() for r in self.raw],
            "notes": list(self.notes),
        }


def _layer_report(name: str, tensor: torch.Tensor, enc: LayerEncoding) -> LayerReport:
    vs, ix = enc.value_stream, enc.index_stream
    if enc.codebook:
        value_h = vs.bits_per_symbol
    else:
        value_h = float(enc.value_bits)
    return LayerReport(
        name=name,
        shape=tuple(tensor.shape),
        codec=enc.codec,
        numel=enc.numel,
        nonzeros=enc.nonzeros,
        value_bits=enc.value_bits,
        value_bits_huffman=value_h,
        index_bits=enc.index_bits,
        index_bits_huffman=ix.bits_per_symbol if enc.sparse else 0.0,
        dense_bytes=enc.numel * tensor.element_size(),
        bytes=len(enc.payload),
        coded_bytes=enc.coded_bytes,
        entropy_bits=enc.entropy_bits,
    )


# ---- writing ------------------------------------------------------------------------------------------


def encode_state_dict(
    state_dict: Mapping[str, torch.Tensor], compress: Iterable[str] = (), keep_negative_zero: bool = False
) -> tuple[bytes, CompressionReport]:
    """The file's bytes for ``state_dict``; tensors named in ``compress`` use the layer codec."""
    start = time.perf_counter()
    compress = set(compress)
    unknown = compress - set(state_dict)
    if unknown:
        raise ValueError(f"compress: names not in the state_dict: {sorted(unknown)}")
    header = ByteWriter()
    header.varint(len(state_dict))
    payloads: list[bytes] = []
    layers: list[LayerReport] = []
    raw: list[RawTensorReport] = []
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state_dict[{name!r}] is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach()
        code = dtype_code(tensor.dtype)
        if name in compress and supports_layer_codec(tensor):
            enc = encode_layer(tensor, keep_negative_zero=keep_negative_zero)
            payload, codec = enc.payload, LAYER
            layers.append(_layer_report(name, tensor, enc))
        else:
            payload, codec = encode_raw(tensor), RAW
            raw.append(RawTensorReport(name, tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""), len(payload)))
        header.string(name)
        header.u8(code)
        header.varint(tensor.dim())
        for d in tensor.shape:
            header.varint(int(d))
        header.u8(codec)
        header.varint(len(payload))
        payloads.append(payload)
    table = header.getvalue()
    total = _PREFIX.size + len(table) + sum(map(len, payloads)) + _CRC.size
    body = b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, total), table, *payloads])
    data = body + _CRC.pack(zlib.crc32(body))
    assert len(data) == total
    report = CompressionReport(
        layers=layers,
        raw=raw,
        header_bytes=_PREFIX.size + len(table) + _CRC.size,
        file_bytes=total,
        encode_seconds=time.perf_counter() - start,
    )
    if any(l.nonzeros < l.numel for l in layers) and not keep_negative_zero:
        report.notes.append("-0.0 in compressed layers is stored as +0.0 (keep_negative_zero=False)")
    return data, report


def torch_save_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """``torch.save(state_dict)`` in memory: what a ``.pt`` file of the model would hold."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getvalue()


def gzip_state_dict_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Size of ``torch.save(state_dict)`` compressed with gzip -9: the usual way to ship a pruned model."""
    return len(gzip.compress(torch_save_bytes(state_dict), compresslevel=9, mtime=0))


def compressed_names(
    model: nn.Module,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    targets: Sequence[Target] | None = None,
) -> list[str]:
    """State-dict names of the tensors to compress: ``targets``, or ``find_targets`` with its defaults."""
    if targets is None:
        try:
            targets = find_targets(model, include=include, exclude=exclude, owner="save_compressed")
        except ValueError:
            if include or exclude:
                raise
            targets = []  # no Linear/Conv at all: everything is stored raw
    return [t.name for t in targets]


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    targets: Sequence[Target] | None = None,
    keep_negative_zero: bool = False,
    compare_gzip: bool = True,
) -> CompressionReport:
    """Write ``model.state_dict()`` to ``path`` in the compressed format and return the size report.

    ``report.file_bytes == os.path.getsize(path)``. ``compare_gzip`` also measures the gzip'd
    ``state_dict`` for the report (costs a ``torch.save`` and a gzip pass).
    """
    state_dict = model.state_dict()
    names = compressed_names(model, include, exclude, targets)
    data, report = encode_state_dict(state_dict, names, keep_negative_zero=keep_negative_zero)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # never leave a half-written file under the final name
    report.path = os.fspath(path)
    if compare_gzip:
        report.gzip_bytes = gzip_state_dict_bytes(state_dict)
    return report


# ---- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    codec: int
    offset: int
    nbytes: int


def _check_prefix(data: bytes, source: str) -> None:
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data):
            raise TruncatedFileError(f"{source}: {len(data)} bytes, truncated before the end of the magic number")
        raise NotCompressedFileError(f"{source}: not a lightning-compress file (too short, wrong magic)")
    if data[: len(MAGIC)] != MAGIC:
        raise NotCompressedFileError(f"{source}: not a lightning-compress file (magic {data[:4]!r}, expected {MAGIC!r})")
    if len(data) < len(MAGIC) + 1:
        raise TruncatedFileError(f"{source}: truncated before the format version")
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise UnsupportedVersionError(
            f"{source}: format version {version} is {'newer than' if newer else 'not'} the supported version "
            f"{FORMAT_VERSION}" + (" — upgrade lightning-compress to read it" if newer else "")
            + " (or the file is corrupted)"
        )
    if len(data) < MIN_FILE_BYTES:
        raise TruncatedFileError(f"{source}: {len(data)} bytes, shorter than the smallest valid file")
    _, _, total = _PREFIX.unpack_from(data)
    if len(data) < total:
        raise TruncatedFileError(f"{source}: {len(data)} bytes but the header says {total}: the file is truncated")
    if len(data) > total:
        raise CorruptedFileError(f"{source}: {len(data) - total} unexpected bytes after the end of the file ({total})")
    stored = _CRC.unpack_from(data, total - _CRC.size)[0]
    actual = zlib.crc32(memoryview(data)[: total - _CRC.size])
    if stored != actual:
        raise CorruptedFileError(f"{source}: checksum mismatch (stored {stored:08x}, computed {actual:08x}): corrupted")


def parse_header(data: bytes, source: str = "<bytes>") -> list[TensorEntry]:
    """Validate the whole file (magic, version, length, checksum) and return its tensor table."""
    _check_prefix(data, source)
    end = len(data) - _CRC.size
    reader = ByteReader(data, _PREFIX.size, end)
    try:
        n = reader.varint()
        raw_entries = []
        for _ in range(n):
            name = reader.string()
            code = reader.u8()
            if code not in CODE_DTYPES:
                raise CorruptedFileError(f"{source}: tensor {name!r} has unknown dtype code {code}")
            ndim = reader.varint()
            if ndim > 64:
                raise CorruptedFileError(f"{source}: tensor {name!r} has {ndim} dimensions")
            shape = tuple(reader.varint() for _ in range(ndim))
            codec = reader.u8()
            if codec not in (RAW, LAYER):
                raise CorruptedFileError(f"{source}: tensor {name!r} has unknown codec {codec}")
            raw_entries.append((name, CODE_DTYPES[code], shape, codec, reader.varint()))
    except BitstreamError as err:
        raise CorruptedFileError(f"{source}: malformed tensor table: {err}") from None
    entries, offset, seen = [], reader.pos, set()
    for name, dtype, shape, codec, nbytes in raw_entries:
        if name in seen:
            raise CorruptedFileError(f"{source}: tensor {name!r} appears twice")
        seen.add(name)
        entries.append(TensorEntry(name, dtype, shape, codec, offset, nbytes))
        offset += nbytes
    if offset != end:
        raise CorruptedFileError(f"{source}: payload sizes add up to {offset - reader.pos} bytes, file holds {end - reader.pos}")
    return entries


def decode_file(data: bytes, source: str = "<bytes>") -> dict[str, torch.Tensor]:
    """Every tensor of a compressed file, in the order it was saved."""
    out: dict[str, torch.Tensor] = {}
    view = memoryview(data)
    for e in parse_header(data, source):
        payload = view[e.offset : e.offset + e.nbytes]
        try:
            if e.codec == LAYER:
                out[e.name] = decode_layer(payload, e.shape, e.dtype)
            else:
                out[e.name] = decode_raw(payload, e.shape, e.dtype)
        except CompressedFileError as err:
            raise CorruptedFileError(f"{source}: tensor {e.name!r}: {err}") from err
    return out


def read_compressed(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict stored in a compressed file (CPU tensors)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_file(data, os.fspath(path))


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
        raise ArchitectureMismatchError(
            f"{source} does not match {type(model).__name__}: " + "; ".join(problems)
        )


def load_compressed(path: str | os.PathLike, model: nn.Module, rebuild_factorized: bool = True) -> nn.Module:
    """Restore every tensor of ``model`` from ``path`` bit-exactly; returns ``model``.

    The model must have the same state_dict names, shapes and dtypes as the one saved. A file saved after
    low-rank factorization loads into the plain (dense) architecture too: with ``rebuild_factorized`` the
    factorized layers are rebuilt from the file's keys (``core.lowrank.infer_factorization_plan``) first.
    Nothing is modified unless the whole file checks out against the (rebuilt) architecture.
    """
    stored = read_compressed(path)
    target = model
    if rebuild_factorized:
        from lightning_compress.core.lowrank import apply_factorization_plan, infer_factorization_plan

        plan = infer_factorization_plan(stored, model)
        if plan:
            target = copy.deepcopy(model)
            apply_factorization_plan(target, plan)
    check_architecture(stored, target, os.fspath(path))
    if target is not model:
        apply_factorization_plan(model, plan)
    model.load_state_dict(stored, strict=True)
    return model


# ---- TensorBoard --------------------------------------------------------------------------------------


def log_report(report: CompressionReport, writer, step: int = 0, prefix: str = "compress") -> None:
    """Write the report to a ``SummaryWriter``-like object: the table as text, sizes as scalars."""
    writer.add_text(f"{prefix}/export", report.table(), global_step=step)
    for key, value in report_scalars(report, prefix).items():
        writer.add_scalar(key, value, global_step=step)


def report_scalars(report: CompressionReport, prefix: str = "compress") -> dict[str, float]:
    out = {f"{prefix}/file_bytes": float(report.file_bytes), f"{prefix}/file_ratio": float(report.ratio)}
    if report.gzip_bytes:
        out[f"{prefix}/gzip_bytes"] = float(report.gzip_bytes)
    return out


# ---- command line -------------------------------------------------------------------------------------


def import_model_class(spec: str) -> type:
    """``LeNet5`` (zoo short name), ``package.module.Class`` or ``package.module:Class``."""
    spec = ZOO.get(spec, spec)
    module_name, sep, cls_name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not cls_name:
        raise ValueError(f"model: expected a zoo name {sorted(ZOO)} or 'package.module.Class', got {spec!r}")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model: cannot import {spec!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"model: {spec!r} is not an nn.Module subclass")
    return cls


def load_checkpoint_model(model_spec: str, ckpt_path: str) -> nn.Module:
    """Build the model from a Lightning checkpoint (``load_from_checkpoint`` when available)."""
    cls = import_model_class(model_spec)
    if hasattr(cls, "load_from_checkpoint"):
        return cls.load_from_checkpoint(ckpt_path, map_location="cpu")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = cls()
    model.load_state_dict(ckpt.get("state_dict", ckpt))
    return model


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN matching NaN (and -0.0 matching +0.0, as the format stores it by default)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lightning-compress-export",
        description="Export a Lightning checkpoint to the Deep Compression file format and print its size report.",
    )
    parser.add_argument("model", help=f"zoo name ({', '.join(ZOO)}) or model class path 'package.module.Class'")
    parser.add_argument("checkpoint", help="Lightning .ckpt file")
    parser.add_argument("-o", "--output", help="compressed file to write (default: checkpoint with .lcz suffix)")
    parser.add_argument("--include", nargs="*", default=None, help="globs of layers to compress (default: Linear/Conv)")
    parser.add_argument("--exclude", nargs="*", default=None, help="globs of layers to store raw")
    parser.add_argument("--keep-negative-zero", action="store_true", help="store -0.0 exactly (larger file)")
    parser.add_argument("--json", help="also write the report as JSON to this path")
    parser.add_argument("--no-gzip", action="store_true", help="skip measuring the gzip'd state_dict")
    parser.add_argument("--verify", action="store_true", help="reload the file into a fresh model and compare")
    args = parser.parse_args(argv)
    out = args.output or os.path.splitext(args.checkpoint)[0] + ".lcz"
    try:
        model = load_checkpoint_model(args.model, args.checkpoint)
        report = save_compressed(
            model,
            out,
            include=args.include,
            exclude=args.exclude,
            keep_negative_zero=args.keep_negative_zero,
            compare_gzip=not args.no_gzip,
        )
    except (ValueError, OSError, RuntimeError, KeyError, TypeError) as err:  # bad class path, unreadable or mismatched ckpt
        print(f"lightning-compress-export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {report.file_bytes:,} bytes, {report.ratio:.1f}x smaller than dense")
    print(report.table())
    if args.verify:
        stored = read_compressed(out)
        check_architecture(stored, model, out)
        differing = [k for k, v in model.state_dict().items() if not _same_values(stored[k], v)]
        if differing:
            print(f"verify FAILED: tensors differ after reload: {differing}", file=sys.stderr)
            return 1
        print("verified: every tensor reloads with identical values")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.as_dict(), f, indent=2)
    return 0


__all__ = [
    "ArchitectureMismatchError",
    "CompressedFileError",
    "CompressionReport",
    "CorruptedFileError",
    "FORMAT_VERSION",
    "LayerReport",
    "NotCompressedFileError",
    "TruncatedFileError",
    "UnsupportedVersionError",
    "decode_file",
    "encode_state_dict",
    "load_compressed",
    "log_report",
    "main",
    "read_compressed",
    "save_compressed",
]

if __name__ == "__main__":
    sys.exit(main())
