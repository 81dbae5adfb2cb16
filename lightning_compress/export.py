"""The compressed artifact: write a model in the Deep Compression format, read it back bit-exactly.

The compression ratio we report is the size of this file, header included, to the byte::

    from lightning_compress import save_compressed, load_compressed

    report = save_compressed(model, "model.lcz")
    print(report.table())                 # per-layer table; the total row equals os.path.getsize
    load_compressed("model.lcz", fresh_model_of_the_same_architecture)

From the command line, for a Lightning checkpoint::

    lightning-compress-export LeNet5 epoch=9.ckpt -o lenet5.lcz --json report.json

This module gathers the public names; the format itself lives in ``lightning_compress/format/`` (layout and
trust model: ``docs/format.md``), the command line in ``lightning_compress/export_cli.py`` and the TensorBoard
logging of a report in ``lightning_compress/callbacks/export.py``.
"""

from __future__ import annotations

from typing import Any

from lightning_compress.format.api import (
    DEFAULT_MAX_BYTES,
    compressed_names,
    decode_file,
    encode_state_dict,
    gzip_state_dict_bytes,
    load_compressed,
    read_compressed,
    save_compressed,
    torch_save_bytes,
)
from lightning_compress.format.container import FORMAT_VERSION, MAGIC, SUPPORTED_VERSIONS, TensorEntry, parse_header
from lightning_compress.format.errors import (
    ArchitectureMismatchError,
    CompressedFileError,
    CorruptedFileError,
    MemoryLimitError,
    NotCompressedFileError,
    TruncatedFileError,
    UnsafeCheckpointError,
    UnsupportedVersionError,
)
from lightning_compress.format.model_check import check_architecture
from lightning_compress.format.report import AliasReport, CompressionReport, LayerReport, RawTensorReport, report_scalars


def main(argv=None) -> int:
    """``lightning-compress-export`` (kept here for ``python -m lightning_compress.export``)."""
    from lightning_compress.export_cli import main as cli_main

    return cli_main(argv)


def __getattr__(name: str) -> Any:
    if name == "log_report":  # TensorBoard logging belongs to the Lightning side; imported on demand
        from lightning_compress.callbacks.export import log_report

        return log_report
    raise AttributeError(f"module 'lightning_compress.export' has no attribute {name!r}")


__all__ = [
    "ArchitectureMismatchError",
    "CompressedFileError",
    "AliasReport",
    "CompressionReport",
    "CorruptedFileError",
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "LayerReport",
    "MAGIC",
    "MemoryLimitError",
    "NotCompressedFileError",
    "RawTensorReport",
    "SUPPORTED_VERSIONS",
    "TensorEntry",
    "TruncatedFileError",
    "UnsafeCheckpointError",
    "UnsupportedVersionError",
    "check_architecture",
    "compressed_names",
    "decode_file",
    "encode_state_dict",
    "gzip_state_dict_bytes",
    "load_compressed",
    "log_report",
    "main",
    "parse_header",
    "read_compressed",
    "report_scalars",
    "save_compressed",
    "torch_save_bytes",
]

if __name__ == "__main__":
    import sys

    sys.exit(main())
