"""Save a model in the compressed format and read it back bit-exactly, without Lightning::

    from lightning_compress import save_compressed, load_compressed

    report = save_compressed(model, "model.lcz")
    print(report.table())                 # per-layer table; the total row equals os.path.getsize
    load_compressed("model.lcz", fresh_model_of_the_same_architecture)

Files are data from strangers: reading never unpickles, checks the whole tensor table (against the model when
there is one) before decoding any payload, never allocates more than the model's own size (or ``max_bytes``)
however the header lies, and fails only with :class:`~lightning_compress.format.errors.CompressedFileError`.
"""

from __future__ import annotations

import gzip
import io
import os
import time
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from lightning_compress.format import model_check
from lightning_compress.format.bitstream import encode_varint
from lightning_compress.format.container import ALIAS, GROUPED, LAYER, RAW, TensorEntry, check_memory, parse_header
from lightning_compress.format.container import write_container
from lightning_compress.format.errors import CompressedFileError, CorruptedFileError, MemoryLimitError
from lightning_compress.format.grouped import decode_grouped, encode_grouped
from lightning_compress.format.layer import decode_layer, encode_layer, supports_layer_codec
from lightning_compress.format.raw import CODE_DTYPES, decode_raw, dtype_code, encode_raw
from lightning_compress.format.report import AliasReport, CompressionReport, RawTensorReport, layer_report
from lightning_compress.format.selection import compressed_names
from lightning_compress.format.ties import find_aliases, same_values

#: Default memory limit of :func:`read_compressed`: 4 GiB of decoded tensors (a billion float32 weights).
DEFAULT_MAX_BYTES = 4 << 30
#: Room for the tensor table on top of the tensors when a file's size is checked before it is read.
_TABLE_SLACK = 16 << 20


def encode_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    compress: Iterable[str] = (),
    keep_negative_zero: bool = False,
    groups: Mapping[str, int | str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> tuple[bytes, CompressionReport]:
    """The file's bytes for ``state_dict``; tensors named in ``compress`` use the layer codec.

    ``groups`` maps a compressed tensor to its rows per codebook group (an int, or ``"auto"`` to detect them;
    names not compressed are ignored): such a tensor is stored with one codebook per group of rows (format
    version 2) when that is smaller. A key whose tensor is the very tensor of an earlier key (a tied weight:
    same storage, offset, shape, stride and dtype in a plain ``dict``; or named in ``aliases``, ``{later key:
    earlier key}``, whose tensors are then not read) is stored once: the later key is an alias entry (version
    2) naming the earlier one. Without any grouped tensor or alias the file is version 1, byte for byte what
    earlier releases wrote.
    """
    start = time.perf_counter()
    aliases = dict(find_aliases(state_dict) if aliases is None else aliases)
    compress, groups = set(compress), dict(groups or {})
    for what, names in (("compress", compress), ("aliases", set(aliases) | set(aliases.values()))):
        unknown = names - set(state_dict)
        if unknown:
            raise ValueError(f"{what}: names not in the state_dict: {sorted(unknown)}")
    if isinstance(state_dict, dict):  # values at hand: an alias must really be its target's tensor
        wrong = [a for a, t in aliases.items() if a in state_dict and t in state_dict
                 and not same_values(state_dict[a], state_dict[t])]
        if wrong:
            raise ValueError(f"aliases: {wrong} do not hold the same tensor as the keys they name")
    for alias, target in aliases.items():  # the tensor is stored under its first name: compress it there
        if alias in compress:
            compress.add(target)
        if alias in groups:
            groups.setdefault(target, groups[alias])
    groups = {k: v for k, v in groups.items() if k in compress}
    rows, report = [], CompressionReport(layers=[], raw=[], header_bytes=0, file_bytes=0)
    position: dict[str, int] = {}
    for name in state_dict:
        position[name] = len(rows)
        if name in aliases:
            target = aliases[name]
            if target not in position:
                raise ValueError(f"aliases: {name!r} names {target!r}, which is not an earlier key")
            _, code, shape, _, _ = rows[position[target]]
            payload = encode_varint(position[target])
            report.aliases.append(AliasReport(name, target, shape, str(CODE_DTYPES[code]).replace("torch.", ""), len(payload)))
            rows.append((name, code, shape, ALIAS, payload))
            continue
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state_dict[{name!r}] is a {type(tensor).__name__}, not a tensor")
        rows.append(_encode_tensor(name, tensor.detach(), name in compress, groups.get(name), keep_negative_zero, report))
    version = 2 if any(r[3] in (GROUPED, ALIAS) for r in rows) else 1
    data, report.header_bytes = write_container(rows, version)
    report.file_bytes, report.format_version = len(data), version
    report.encode_seconds = time.perf_counter() - start
    if any(l.nonzeros < l.numel for l in report.layers) and not keep_negative_zero:
        report.notes.append("-0.0 in compressed layers is stored as +0.0 (keep_negative_zero=False)")
    return data, report


def _encode_tensor(name: str, tensor: torch.Tensor, compress: bool, group: int | str | None,
                   keep_negative_zero: bool, report: CompressionReport) -> tuple:
    """One table row ``(name, dtype code, shape, codec, payload)``; its size goes into ``report``."""
    if compress and supports_layer_codec(tensor):
        enc = encode_grouped(tensor, group, keep_negative_zero=keep_negative_zero) if group is not None else None
        enc = enc or encode_layer(tensor, keep_negative_zero=keep_negative_zero)
        codec = GROUPED if getattr(enc, "groups", 0) else LAYER
        payload = enc.payload
        report.layers.append(layer_report(name, tensor, enc))
    else:
        codec, payload = RAW, encode_raw(tensor)
        report.raw.append(RawTensorReport(name, tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""), len(payload)))
    return name, dtype_code(tensor.dtype), tuple(tensor.shape), codec, payload


def torch_save_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """``torch.save(state_dict)`` in memory: what a ``.pt`` file of the model would hold."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    return buf.getvalue()


def gzip_state_dict_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Size of ``torch.save(state_dict)`` compressed with gzip -9: the usual way to ship a pruned model."""
    return len(gzip.compress(torch_save_bytes(state_dict), compresslevel=9, mtime=0))


def save_compressed(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    targets: Sequence | None = None,
    keep_negative_zero: bool = False,
    compare_gzip: bool = False,
    also: Iterable[str] = (),
    groups: Mapping[str, int | str] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> CompressionReport:
    """Write ``model.state_dict()`` (or ``state_dict``, e.g. gathered from FSDP2 parts) to ``path`` in the compressed format and return the size report.

    ``report.file_bytes == os.path.getsize(path)``. Compressed: ``targets``, else the ``include``/``exclude``
    selection (default: ``core.targets.find_targets``), plus the tensors named in ``also`` (what the
    compression callbacks changed). A tied tensor (one Parameter under several names, found from the model's
    Parameters by identity and, in a plain ``state_dict``, from storage identity) is stored once; its other
    names are alias entries, and only its first name is read from ``state_dict``. ``compare_gzip`` also measures the gzip'd ``state_dict`` for the report
    (a ``torch.save`` and a gzip pass: off by default, it costs far more than the export itself).
    """
    state_dict = model.state_dict() if state_dict is None else state_dict
    names = compressed_names(model, include, exclude, targets, also=also)
    data, report = encode_state_dict(state_dict, names, keep_negative_zero=keep_negative_zero, groups=groups,
                                     aliases=find_aliases(state_dict, model))
    path = os.path.expanduser(os.fspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # never leave a half-written file under the final name
    report.path = path
    if compare_gzip:
        report.gzip_bytes = gzip_state_dict_bytes(state_dict)
    return report


def _read_file(path: str | os.PathLike, limit: int | None, what: str) -> tuple[bytes, str]:
    source = os.fspath(path)
    with open(os.path.expanduser(source), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit + _TABLE_SLACK:
            raise MemoryLimitError(f"{source}: {size:,} bytes on disk, more than the limit {what}={limit:,} allows")
        return f.read(), source


def _decode_entry(view: memoryview, e: TensorEntry, source: str) -> torch.Tensor:
    payload = view[e.offset : e.offset + e.nbytes]
    try:
        if e.codec == LAYER:
            return decode_layer(payload, e.shape, e.dtype)
        if e.codec == GROUPED:
            return decode_grouped(payload, e.shape, e.dtype)
        return decode_raw(payload, e.shape, e.dtype)
    except CompressedFileError as err:
        raise CorruptedFileError(f"{source}: tensor {e.name!r}: {err}") from err
    except MemoryError as err:
        raise MemoryLimitError(f"{source}: tensor {e.name!r}: out of memory while decoding") from err
    except (ValueError, IndexError, OverflowError, TypeError, RuntimeError) as err:
        raise CorruptedFileError(f"{source}: tensor {e.name!r}: cannot decode: {err}") from err


def decode_entries(data: bytes, entries: Sequence[TensorEntry], source: str) -> dict[str, torch.Tensor]:
    """Decode tensor by tensor, in table order (the table was checked before); an alias is its target's tensor
    (one tensor under both names, as ``torch.load`` gives a tied state_dict)."""
    view, out = memoryview(data), {}
    for e in entries:
        out[e.name] = out[e.alias_of] if e.codec == ALIAS else _decode_entry(view, e, source)
    return out


def decode_file(data: bytes, source: str = "<bytes>", max_bytes: int | None = DEFAULT_MAX_BYTES) -> dict[str, torch.Tensor]:
    """Every tensor of a compressed file, in the order it was saved (at most ``max_bytes`` of tensors)."""
    return decode_entries(data, parse_header(data, source, max_bytes=max_bytes), source)


def read_compressed(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_BYTES) -> dict[str, torch.Tensor]:
    """The state_dict stored in a compressed file (CPU tensors).

    ``max_bytes`` bounds the memory of the decoded tensors (default 4 GiB); a file that needs more is refused
    with :class:`~lightning_compress.format.errors.MemoryLimitError` before anything is decoded. ``None``
    lifts the limit (only for files you trust).
    """
    data, source = _read_file(path, max_bytes, "max_bytes")
    return decode_file(data, source, max_bytes)


def load_compressed(path: str | os.PathLike, model: nn.Module, rebuild_factorized: bool = True) -> nn.Module:
    """Restore every tensor of ``model`` from ``path`` bit-exactly; returns ``model``.

    The model must have the same state_dict names, shapes and dtypes as the one saved; this is checked on the
    tensor table before any payload is decoded, and decoding never needs more than the model's own size. A
    file saved after low-rank factorization loads into the plain (dense) architecture too: with
    ``rebuild_factorized`` the factorized layers are rebuilt from the file's keys first (checked on a
    weightless copy of the model before the model itself is touched). A model built on the ``meta`` device is
    materialised with the file's tensors (``load_state_dict(assign=True)``). Nothing is modified unless the
    whole file checks out.
    """
    limit = model_check.state_bytes(model)
    data, source = _read_file(path, limit, "the model's own size")
    entries = parse_header(data, source)
    plan = model_check.check_against_model(entries, model, source, rebuild_factorized)
    check_memory(entries, limit, source, what="the model's own size")
    stored = decode_entries(data, entries, source)
    del data
    model_check.load_into(model, stored, plan)
    return model


__all__ = [
    "DEFAULT_MAX_BYTES",
    "compressed_names",
    "decode_entries",
    "decode_file",
    "encode_state_dict",
    "gzip_state_dict_bytes",
    "load_compressed",
    "read_compressed",
    "save_compressed",
    "torch_save_bytes",
]
