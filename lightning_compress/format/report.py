"""What a save wrote: per-layer sizes in the style of the Deep Compression tables, exact to the byte.

``header_bytes + layer bytes + raw tensor bytes + alias bytes == file_bytes`` always; the ratio is the dense
bytes of the distinct tensors (a tied tensor once, as ``torch.save`` stores shared storage once) over the
file's bytes on disk. No Lightning, no TensorBoard here (``callbacks/export.py`` logs a report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lightning_compress.format.container import FORMAT_VERSION
from lightning_compress.format.layer import LayerEncoding


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
class AliasReport:
    """A tied tensor's later name: an alias entry naming the entry that holds the tensor (counted there)."""

    name: str
    target: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int

    def as_dict(self) -> dict:
        return {"name": self.name, "target": self.target, "shape": list(self.shape), "dtype": self.dtype,
                "bytes": self.bytes}


@dataclass
class CompressionReport:
    """What was written. ``header_bytes + layer bytes + raw tensor bytes + alias bytes == file_bytes`` exactly."""

    layers: list[LayerReport]
    raw: list[RawTensorReport]
    header_bytes: int  # magic, version, length, tensor table, checksum
    file_bytes: int
    gzip_bytes: int | None = None  # gzip -9 of ``torch.save(state_dict)``, what other toolkits ship
    path: str | None = None
    encode_seconds: float = 0.0
    format_version: int = FORMAT_VERSION
    #: What did not finish before the export (``Claim.unfinished`` of the compression callbacks).
    unfinished: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Tied tensors' later names, stored as alias entries (a few bytes each; no dense bytes of their own).
    aliases: list[AliasReport] = field(default_factory=list)

    @property
    def raw_bytes(self) -> int:
        return sum(r.bytes for r in self.raw)

    @property
    def alias_bytes(self) -> int:
        return sum(a.bytes for a in self.aliases)

    @property
    def layer_bytes(self) -> int:
        return sum(layer.bytes for layer in self.layers)

    @property
    def dense_bytes(self) -> int:
        """Every distinct tensor at its own dtype, uncompressed (32 bits per weight for a float32 model); a tied
        tensor counts once, as ``torch.save`` stores shared storage once."""
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
        for a in self.aliases:
            rows.append(f"| {a.name} | {'x'.join(map(str, a.shape))} | alias of {a.target} | | | | | | | 0 | {a.bytes:,} | |")
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
        extra += [f"UNFINISHED: {u}" for u in self.unfinished]
        return "\n".join(rows) + "\n\n" + "\n".join(f"- {e}" for e in extra + self.notes)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "format_version": self.format_version,
            "file_bytes": self.file_bytes,
            "header_bytes": self.header_bytes,
            "layer_bytes": self.layer_bytes,
            "raw_bytes": self.raw_bytes,
            "alias_bytes": self.alias_bytes,
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
            "aliases": [a.as_dict() for a in self.aliases],
            "notes": list(self.notes),
            "unfinished": list(self.unfinished),
        }


def layer_report(name: str, tensor: torch.Tensor, enc: LayerEncoding) -> LayerReport:
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


def report_scalars(report: CompressionReport, prefix: str = "compress") -> dict[str, float]:
    """The numbers a logger shows: the file's bytes and its real ratio (dense bytes / file bytes)."""
    out = {f"{prefix}/file_bytes": float(report.file_bytes), f"{prefix}/ratio": float(report.ratio)}
    if report.gzip_bytes:
        out[f"{prefix}/gzip_bytes"] = float(report.gzip_bytes)
    return out


__all__ = ["AliasReport", "CompressionReport", "LayerReport", "RawTensorReport", "layer_report", "report_scalars"]
